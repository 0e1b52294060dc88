"""Store memory: heap kept per call of `pending_samples` and per write, and what a reopen gives back.

DuckDB (2.0.1; 1.5.6 as well) keeps a few KB of heap after every join it runs, until the database
is closed; it is not in `duckdb_memory()` (not the buffer manager's) and not Python objects
(tracemalloc sees nothing grow). The runner asks for pending samples many times a second,
leaving out those in flight, and the old form of that query (`sample_id NOT IN (SELECT
unnest($exclude))`) plans a join: it made most of the store process's RSS growth in
`benchmarks/soak.py`. This measures, in the same run, on a fresh DuckDB file with `--samples`
pending samples, `--calls` calls of each form with `--exclude` ids left out:

  (a) `filter_bytes_per_call`: `Store.pending_samples` as it is (no join: the ids in flight are
      left out in Python, over the oldest `limit + len(exclude)` pending rows);
  (b) `join_bytes_per_call`: the same query in the old form (the baseline);
  (c) `write_bytes_per_call`: `Store.write_sample_results` of one finished sample (inserts and
      the `finish_samples` UPDATE, as the runner's flushes do), `--writes` calls;

as the growth of glibc's heap in use (`mallinfo2().uordblks`) and of RSS, per call; then
  (d) `reopen_returned_bytes`: the heap in use given back by `Store.reopen` (the store process
      reopens its DuckDB instance every `storage.reopen_every_s` for this), and the time it took.

The last line printed is one JSON object.

    python benchmarks/store_memory.py [--samples 5000] [--calls 3000] [--exclude 16]
                                      [--writes 2000]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sql  # noqa: E402
from analytics.store import Store  # noqa: E402
from tests.analytics.test_store_process import done  # noqa: E402
from tests.shadow.test_runner import add_samples  # noqa: E402


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def heap_in_use() -> int:
    return int(LIBC.mallinfo2().uordblks)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def per_call(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(heap bytes, RSS bytes) kept per call, after a warm-up of 200 calls."""
    for _ in range(200):
        fn()
    heap, rss = heap_in_use(), rss_bytes()
    for _ in range(calls):
        fn()
    return (heap_in_use() - heap) / calls, (rss_bytes() - rss) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--exclude", type=int, default=16, help="ids left out (calls in flight)")
    ap.add_argument("--writes", type=int, default=2000, help="results written, one per call")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="shadowroute-mem-") as tmp:
        store = Store(Path(tmp) / "m.duckdb")
        try:
            ids = add_samples(store, max(args.samples, args.writes + 200))
            store.prepare_writer(1)
            exclude = [f"s{i:04d}" for i in range(args.exclude)]
            query = sql.query("pending_samples")
            old = query.replace("WHERE status = 'pending'",
                                "WHERE status = 'pending' AND "
                                "sample_id NOT IN (SELECT unnest($exclude::VARCHAR[]))")
            assert old != query, "pending_samples no longer has the clause this extends"
            params = {"limit": 64, "exclude": exclude}
            # Both forms return the same rows.
            assert [r[0] for r in store.fetch(old, params)] == [
                p.sample_id for p in store.pending_samples(64, exclude)]
            f_heap, f_rss = per_call(lambda: store.pending_samples(64, exclude), args.calls)
            j_heap, j_rss = per_call(lambda: store.fetch(old, params), args.calls)
            unwritten = iter(ids)
            w_heap, w_rss = per_call(
                lambda: store.write_sample_results([done(next(unwritten))]), args.writes)
            before, t0 = heap_in_use(), time.perf_counter()
            assert store.reopen()
            reopen_s = time.perf_counter() - t0
            returned = before - heap_in_use()
        finally:
            store.close()
    print(f"pending_samples, {args.calls} calls, {args.exclude} ids left out, "
          f"{args.samples} pending (load {os.getloadavg()[0]:.1f}):")
    print(f"  no join (as it is): heap +{f_heap:7.0f} B/call  RSS +{f_rss:7.0f} B/call")
    print(f"  join (baseline):    heap +{j_heap:7.0f} B/call  RSS +{j_rss:7.0f} B/call")
    print(f"write_sample_results, {args.writes} calls of one result each:")
    print(f"  heap +{w_heap:7.0f} B/call  RSS +{w_rss:7.0f} B/call")
    print(f"reopen: {returned / 2**20:.2f} MiB of heap given back, in {reopen_s * 1000:.0f} ms")
    print(json.dumps({"calls": args.calls, "exclude": args.exclude, "samples": args.samples,
                      "filter_bytes_per_call": round(f_heap), "filter_rss_per_call": round(f_rss),
                      "join_bytes_per_call": round(j_heap), "join_rss_per_call": round(j_rss),
                      "writes": args.writes, "write_bytes_per_call": round(w_heap),
                      "write_rss_per_call": round(w_rss), "reopen_returned_bytes": returned,
                      "reopen_ms": round(reopen_s * 1000, 1),
                      "load1": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
