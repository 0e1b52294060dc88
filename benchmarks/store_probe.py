"""A probe inside the store process of a running service, for `benchmarks/soak.py --probe`.

Benchmark code only: the soak starts the service with a `sitecustomize.py` of its own on
`PYTHONPATH` (`sitecustomize_for`), which imports this file in the store process (and nowhere
else) when `SOAK_STORE_PROBE` names an output file (not `SHADOWROUTE_*`: those are config
keys). The probe then appends JSON lines:

- every `SOAK_STORE_PROBE_EVERY_S` (10 s) from a thread of its own: the process's RSS
  and glibc's heap (`mallinfo2`: bytes taken from the system, in use, free), pyarrow's pool,
  DuckDB's own account by tag and the rows held;
- after each reopen of the DuckDB instance (`Store.maybe_reopen`, after its `malloc_trim`: the
  trough of the sawtooth), from the writer's thread: the same, DuckDB's own account by tag
  (`duckdb_memory()`), the rows of the growing tables, the file's size, and, when Python's
  tracemalloc runs (`PYTHONTRACEMALLOC=1`), Python's heap and the lines whose allocations grew
  most since the previous reopen.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

# The rows of the tables that grow with the load (the others stay small), one column each.
TABLES = ("requests", "samples", "shadow_calls", "shadow_attempts", "scores", "router_scores",
          "budget_leases", "request_rollups")
ROWS = ("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM samples), "
        "(SELECT count(*) FROM shadow_calls), (SELECT count(*) FROM shadow_attempts), "
        "(SELECT count(*) FROM scores), (SELECT count(*) FROM router_scores), "
        "(SELECT count(*) FROM budget_leases), (SELECT count(*) FROM request_rollups)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_by_kind() -> dict[str, float]:
    """RSS (MiB) by kind of mapping: glibc's main heap (`[heap]`), anonymous mappings that start
    on a 64 MiB boundary (glibc's heaps of its other arenas, one per thread that allocates),
    other anonymous ones (large blocks glibc maps one by one, and other allocators: pyarrow's
    mimalloc, polars' jemalloc, Python's arenas of small objects), and files (code)."""
    kinds = {"heap": 0, "arena64": 0, "anon": 0, "file": 0}
    kind = "file"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
            name = head[5] if len(head) > 5 else ""
            start = int(head[0].split("-")[0], 16)
            kind = ("heap" if name == "[heap]" else "file" if name.startswith("/") else
                    "arena64" if not name and start % (64 << 20) == 0 else
                    "anon" if not name else "file")
        elif head[0] == "Rss:":
            kinds[kind] += int(head[1])
    return {k: round(v / 1024, 2) for k, v in kinds.items()}


def _memory(libc: Any) -> dict[str, float]:
    import pyarrow as pa

    mi = libc.mallinfo2()
    return {"rss": round(_rss_mib(), 2),
            "glibc_system": round((mi.arena + mi.hblkhd) / 2**20, 2),
            "glibc_in_use": round((mi.uordblks + mi.hblkhd) / 2**20, 2),
            "glibc_free": round(mi.fordblks / 2**20, 2),
            "arrow": round(pa.total_allocated_bytes() / 2**20, 2)}


def install(out: str) -> None:
    from analytics.store import Store

    if os.environ.get("SOAK_STORE_PROBE_TRACEMALLOC"):
        tracemalloc.start()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    t0 = time.monotonic()
    lock = threading.Lock()
    every = float(os.environ.get("SOAK_STORE_PROBE_EVERY_S", "10"))
    last: list[Any] = [None]  # the previous reopen's tracemalloc snapshot

    pid = os.getpid()  # a run with kills has a store process per start of the service

    def emit(rec: dict[str, Any]) -> None:
        with lock, open(out, "a") as f:
            f.write(json.dumps({"pid": pid, **rec}) + "\n")

    stores: list[Store] = []

    def periodic() -> None:
        while True:
            time.sleep(every)
            rec = {"kind": "tick", "t": round(time.monotonic() - t0, 1), **_memory(libc)}
            if stores:  # DuckDB's account, on a cursor of its own as `/v1/sql`'s queries are
                try:
                    rec["duckdb"] = {tag: round(b / 2**20, 2) for tag, b in stores[0].query_table(
                        "SELECT tag, memory_usage_bytes FROM duckdb_memory()")[1] if b}
                    rec["rows"] = sum(stores[0].query_table(ROWS)[1][0])
                except Exception as e:  # closing: the next tick or none
                    rec["error"] = str(e)
            emit(rec)

    prepare = Store.prepare_writer

    def prepare_writer(self: Store, *args: Any, **kwargs: Any) -> None:
        prepare(self, *args, **kwargs)
        stores.append(self)

    Store.prepare_writer = prepare_writer  # type: ignore[method-assign]
    original = Store.maybe_reopen

    def maybe_reopen(self: Store) -> bool:
        done = original(self)
        if not done:
            return done
        rec: dict[str, Any] = {"kind": "reopen", "t": round(time.monotonic() - t0, 1),
                               "reopens": self.reopens, **_memory(libc)}
        rec["duckdb"] = {tag: round(b / 2**20, 2) for tag, b in self.fetch(
            "SELECT tag, memory_usage_bytes FROM duckdb_memory()") if b}
        rec["rows"] = dict(zip(TABLES, self.fetch(ROWS)[0], strict=True))
        rec["file_mib"] = round(self.path.stat().st_size / 2**20, 2)
        rec["rss_by_kind"] = _rss_by_kind()
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])  # not the probe's own
            rec["python"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
            if last[0] is not None:
                rec["python_growth"] = [
                    f"{s.size_diff / 1024:+.0f} KiB {s.count_diff:+d} "
                    f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}"
                    for s in snap.compare_to(last[0], "lineno")[:8]]
            last[0] = snap
        emit(rec)
        return done

    Store.maybe_reopen = maybe_reopen  # type: ignore[method-assign]
    threading.Thread(target=periodic, daemon=True, name="store-probe").start()


def sitecustomize_for(directory: Path) -> Path:
    """Write a `sitecustomize.py` into `directory` that installs this probe in a store process
    (and nowhere else) when `SOAK_STORE_PROBE` is set. Put `directory` on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(f"""\
import os, sys
if os.environ.get("SOAK_STORE_PROBE") and "child_main" in " ".join(sys.orig_argv):
    import importlib.util
    spec = importlib.util.spec_from_file_location("store_probe", {str(Path(__file__))!r})
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    probe.install(os.environ["SOAK_STORE_PROBE"])
""")
    return directory
