"""How commands read the data: the DuckDB file directly, or the running service's HTTP API.

DuckDB lets one process hold a file for writing. When the service is not running, `sql` and
`gate` open the file read-only. When it is, the file is locked; they then find the service's
address in `<db>.service.json` and ask it (`/v1/sql`, `/v1/verdict`), which answers from the
service's own connection: the data is as fresh as the last committed batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from analytics.gate import GateRequest, evaluate, query_params
from analytics.store import Store
from shadowroute.config import ServerConfig
from shadowroute.errors import ServiceUnreachable, StoreError, StoreLockedError
from shadowroute.service import service_file


def _service_url(db: Path) -> str:
    f = service_file(db)
    try:
        return str(orjson.loads(f.read_bytes())["url"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        raise ServiceUnreachable(
            f"{db} is locked by another process and no running service announced itself in "
            f"{f}; stop the other process or point --db at a copy") from None


def client_token(server: ServerConfig) -> str | None:
    """The API token the running service expects, from the variable `server.token_env` names."""
    return os.environ.get(server.token_env) or None if server.token_env else None


def _post(url: str, path: str, token: str | None, timeout: float = 60.0, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request("POST" if "json" in kw else "GET", url + path, timeout=timeout,
                             headers=headers, **kw)
    except httpx.HTTPError as e:
        raise ServiceUnreachable(f"the running service at {url} did not answer: {e}") from None
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        data = None
    if resp.status_code != 200 or not isinstance(data, dict):
        error = data.get("error") if isinstance(data, dict) else None
        hint = " (set the variable server.token_env names)" if resp.status_code == 401 else ""
        raise StoreError(f"the service answered {resp.status_code}: "
                         f"{error or resp.text[:200]}{hint}")
    return data


@dataclass(frozen=True)
class SqlAnswer:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    source: str


def run_sql(db: Path, query: str, server: ServerConfig | None = None) -> SqlAnswer:
    """A person's query, read-only and bounded as `server` says (see `Store.user_query`), on
    the file or through the running service."""
    server = server or ServerConfig()
    try:
        store = Store(db, read_only=True)
    except StoreLockedError:
        url = _service_url(db)
        data = _post(url, "/v1/sql", client_token(server), timeout=server.sql_timeout_s + 30,
                     json={"sql": query})
        return SqlAnswer(data["columns"], [tuple(r) for r in data["rows"]],
                         bool(data.get("truncated")), f"service {url}")
    try:
        res = store.user_query(query, max_rows=server.sql_max_rows,
                               timeout_s=server.sql_timeout_s, max_bytes=server.sql_max_bytes)
        return SqlAnswer(res.columns, res.rows, res.truncated, f"file {db}")
    finally:
        store.close()


def verdict(db: Path, req: GateRequest, server: ServerConfig | None = None) -> dict[str, Any]:
    try:
        store = Store(db, read_only=True)
    except StoreLockedError:
        url = _service_url(db)
        return _post(url, "/v1/verdict",  # type: ignore[no-any-return]
                     client_token(server or ServerConfig()), params=query_params(req))
    try:
        return evaluate(store.query_table, req)
    finally:
        store.close()
