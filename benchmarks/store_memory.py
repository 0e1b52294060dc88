"""Store memory: heap kept per call of `pending_samples`, as the service asks it, and the baseline.

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

as the growth of glibc's heap in use (`mallinfo2().uordblks`) and of RSS, per call. The last
line printed is one JSON object.

    python benchmarks/store_memory.py [--samples 5000] [--calls 3000] [--exclude 16]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sql  # noqa: E402
from analytics.store import Store  # noqa: E402
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
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="shadowroute-mem-") as tmp:
        store = Store(Path(tmp) / "m.duckdb")
        try:
            add_samples(store, args.samples)
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
        finally:
            store.close()
    print(f"pending_samples, {args.calls} calls, {args.exclude} ids left out, "
          f"{args.samples} pending (load {os.getloadavg()[0]:.1f}):")
    print(f"  no join (as it is): heap +{f_heap:7.0f} B/call  RSS +{f_rss:7.0f} B/call")
    print(f"  join (baseline):    heap +{j_heap:7.0f} B/call  RSS +{j_rss:7.0f} B/call")
    print(json.dumps({"calls": args.calls, "exclude": args.exclude, "samples": args.samples,
                      "filter_bytes_per_call": round(f_heap), "filter_rss_per_call": round(f_rss),
                      "join_bytes_per_call": round(j_heap), "join_rss_per_call": round(j_rss)}))


if __name__ == "__main__":
    main()
