"""Analytics speed: savings curves over 1M samples and the bootstrap of 100k samples.

Measures in the same run, on a fresh DuckDB file (seeded synthetic data: 1M completed samples
in 50 strata, 2M eligible requests, 5 routers with scores on a 0.001 grid):
  (a) `savings_curve_s`: `savings_at` over 50 thresholds for every router and the two reference
      policies (each score binned between the thresholds, sums per bin on an integer key,
      running sums over the bins: see `routed_strata` in sql/schema.sql);
  (b) `baseline_cross_join_s`: the same estimate computed as before, every sample joined with
      every threshold (`savings_cross_join`);
  (c) `bootstrap_s`: `analytics.intervals.bootstrap` of 100k samples x 1,000 replicates;
  (d) with --continuous-scores, `savings_curve_continuous_s`: (a) again after every router
      score is redrawn uniformly (5M distinct scores, as learned routers give).
Each figure is the best of `--repeats` runs; the 1-minute load average is printed before and
after (the machine may be shared), and for (a) and (b) the CPU time of the process too (DuckDB's
threads included; the best of the runs): on a loaded machine it moves less than the wall time.
The last line printed is one JSON object.

    python benchmarks/analytics.py [--samples 1000000] [--repeats 3] [--continuous-scores]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sql  # noqa: E402
from analytics.intervals import StratifiedSample, bootstrap  # noqa: E402
from analytics.store import Store  # noqa: E402

CPU: dict[str, float] = {}  # the best CPU time of each figure measured by `best`


def best(fn: object, repeats: int, name: str = "") -> float:
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if name:
        CPU[name] = round(min(cpu), 3)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--routers", type=int, default=5)
    ap.add_argument("--thresholds", type=int, default=50)
    ap.add_argument("--boot-samples", type=int, default=100_000)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--continuous-scores", action="store_true")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.2f}", flush=True)
    extra: dict[str, float] = {}
    thresholds = [round(i / args.thresholds, 4) for i in range(args.thresholds)]

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        t0 = time.perf_counter()
        store.con.execute("SELECT setseed(0.42)")
        for stmt in sql.query("bench_fill").split(";"):
            if stmt.strip():
                store.con.execute(stmt, {k: v for k, v in {
                    "samples": args.samples, "strata": 50, "routers": args.routers}.items()
                    if f"${k}" in stmt})
        print(f"data: {args.samples:,} samples x {args.routers} routers in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        def curve() -> int:
            rows = store.con.execute("SELECT * FROM savings_at($t)", {"t": thresholds}).fetchall()
            return len(rows)

        def cross() -> int:
            rows = store.con.execute(sql.query("savings_cross_join"),
                                     {"thresholds": thresholds}).fetchall()
            return len(rows)

        n_curve, n_cross = curve(), cross()
        assert n_curve == n_cross == (args.routers + 2) * len(thresholds), (n_curve, n_cross)
        # Both give the same estimates.
        a = {(r[0], r[1]): r[6:9] for r in store.con.execute(
            "SELECT router, threshold, model, strata, samples, requests, quality, quality_se, "
            "savings FROM savings_at($t)", {"t": thresholds}).fetchall()}
        b = {(r[0], r[1]): r[6:9] for r in store.con.execute(
            sql.query("savings_cross_join"), {"thresholds": thresholds}).fetchall()}
        assert all(np.allclose(a[k], b[k]) for k in a), "the two computations disagree"
        curve_s = best(curve, args.repeats, "savings_curve_cpu_s")
        print(f"savings curve ({args.thresholds} thresholds, {args.routers} routers + 2 "
              f"reference policies): {curve_s:.3f} s ({CPU['savings_curve_cpu_s']:.3f} s CPU)",
              flush=True)
        cross_s = best(cross, args.repeats, "baseline_cross_join_cpu_s")
        print(f"baseline cross join: {cross_s:.3f} s ({cross_s / curve_s:.1f}x the curve; "
              f"{CPU['baseline_cross_join_cpu_s']:.3f} s CPU)", flush=True)
        if args.continuous_scores:
            store.con.execute("UPDATE router_scores SET score = random()")
            extra["savings_curve_continuous_s"] = round(best(curve, args.repeats), 3)
            print(f"savings curve, continuous scores: {extra['savings_curve_continuous_s']} s",
                  flush=True)
        store.close()

    rng = np.random.default_rng(0)
    n = args.boot_samples
    stratum = rng.integers(0, 50, n)
    s = StratifiedSample.build(stratum, np.bincount(stratum, minlength=50) * 5.0,
                               (rng.uniform(size=n) < 0.95).astype(float),
                               rng.uniform(0.001, 0.02, n), rng.uniform(0.0001, 0.002, n),
                               rng.uniform(size=n) < 0.6)
    boot_s = best(lambda: bootstrap(s, replicates=args.replicates, seed=1), args.repeats)
    print(f"bootstrap ({n:,} samples x {args.replicates:,} replicates): {boot_s:.3f} s")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_after:.2f}")
    print(json.dumps({"savings_curve_s": round(curve_s, 3), "bootstrap_s": round(boot_s, 3),
                      "baseline_cross_join_s": round(cross_s, 3), **CPU, **extra,
                      "samples": args.samples, "routers": args.routers,
                      "thresholds": args.thresholds, "boot_samples": n,
                      "replicates": args.replicates, "load_avg_1m_before": round(load_before, 2),
                      "load_avg_1m_after": round(load_after, 2)}))


if __name__ == "__main__":
    main()
