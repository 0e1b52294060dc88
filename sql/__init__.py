"""SQL lives here, in `*.sql` files, loaded by name.

A file holds one or more statements, each introduced by a `-- name: NAME` line (aiosql's
convention); `query("NAME")` returns that statement's text. Parameters are `$name` placeholders
bound by DuckDB, never formatted in. Files are package data, so this works from a wheel too.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["query", "names", "script"]

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][\w]*)\s*$", re.MULTILINE)


@functools.cache
def _load() -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in out:
                raise RuntimeError(f"SQL name {name!r} defined twice (second in {entry.name})")
            out[name] = body.strip()
    return out


def query(name: str) -> str:
    """The text of the statement called `name`."""
    try:
        return _load()[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r} in sql/*.sql") from None


def names() -> list[str]:
    return sorted(_load())


def script(prefix: str) -> list[str]:
    """Every statement whose name starts with `prefix`, in name order (e.g. the schema)."""
    return [body for name, body in sorted(_load().items()) if name.startswith(prefix)]
