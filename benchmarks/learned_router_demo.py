"""Does a learned router beat random on the demo's traffic? Savings at a quality bar, held out in
time, with intervals: the learned router against random (the baseline) and the oracle (the
ceiling), on the same samples.

The demo's generated traffic has task types a router can learn (extraction, classification and
short facts that a small model gets right; arithmetic, word problems and code that it gets
wrong). Run the demo first with enough samples to learn from, on its real local model
(SmolLM2-135M on llama.cpp; ~1-2 samples/s on 2 cores):

    shadowroute demo --requests 16000 --samples 800 --db demo.duckdb
    python benchmarks/learned_router_demo.py --db demo.duckdb [--bar 0.95] [--folds 5]

On a copy of the file, the service's own trainer (`shadow.training.Trainer`, as the scheduler
runs it) trains a learned router (`kind = "learned"`, label: the cheap answer scored 1) and
writes forward-chained out-of-fold scores: each sample scored by a model trained only on
samples before it. Then `shadowroute calibrate`'s procedure, per router: the largest-savings
threshold whose quality lower bound meets `--bar` on the first 70% of the samples in time,
verified on the last 30% (every sample there has an out-of-fold score). The same for a learned
router scored in sample (trained on every sample, scoring them): what an evaluation that lets a
router see its test rows would claim. The table is printed; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The repository first: this directory's analytics.py would hide the analytics package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.calibrate import calibrate  # noqa: E402
from analytics.store import Store  # noqa: E402
from shadow import learned  # noqa: E402
from shadow.routers import LearnedRouter, LearnedRouterConfig  # noqa: E402
from shadow.training import Trainer, prepare  # noqa: E402


class _AsyncStore:
    """The trainer's view of the store (the service gives it the store child's)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def learned_rows(self, model: str) -> list[tuple[Any, ...]]:
        return self.store.learned_rows(model)

    async def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None:
        self.store.write_router_scores(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="a DuckDB file `shadowroute demo` wrote")
    ap.add_argument("--bar", type=float, default=0.95, help="the quality bar (target)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--algorithm", default="logreg", choices=("logreg", "gbdt"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="learned-demo-"))
    db = work / "demo.duckdb"
    shutil.copy(args.db, db)
    store = Store(db)
    try:
        ((model,),) = store.fetch("SELECT DISTINCT model FROM shadow_calls WHERE error IS NULL")
        cfg = LearnedRouterConfig(name="learned", model=model, bar=1.0, min_rows=50,
                                  models_dir=str(work / "models"), folds=args.folds,
                                  algorithm=args.algorithm)
        info = asyncio.run(Trainer(LearnedRouter(cfg), _AsyncStore(store)).train())
        if info is None:
            raise SystemExit("too few labelled samples, or one class only: run the demo with "
                             "more --samples")
        # In sample: trained on every sample and scoring them (what not to do).
        ids, feats, labels, _ = prepare(store.learned_rows(model), 1.0)
        fitted = learned.fit(feats, labels, args.algorithm)
        store.write_router_scores([(i, "learned_in_sample", p, "in-sample") for i, p in
                                   zip(ids, learned.predict(fitted, feats), strict=True)])
        oof = dict(store.fetch("SELECT sample_id, score FROM router_scores "
                               "WHERE router = 'learned'"))
        scored = [(lab, oof[i]) for i, lab in zip(ids, labels, strict=True) if i in oof]
        oof_auc = learned.auc([lab for lab, _ in scored], [s for _, s in scored])
        results = {r: calibrate(store.query_table, r, model, args.bar, min_samples=50)
                   for r in ("learned", "learned_in_sample", "random", "oracle")}
    finally:
        store.close()

    # (v1's cross-validated AUC is the AUC of these same forward out-of-fold scores)
    print(f"{len(labels)} labelled samples on {model}, {sum(labels)} needing the strong model "
          f"({100 * sum(labels) / len(labels):.0f}%); {args.algorithm}, out-of-fold AUC "
          f"{oof_auc:.3f} on the {len(scored)} samples after the first fold")
    print(f"quality bar {args.bar}: threshold calibrated on the samples up to "
          f"{results['learned']['until']}, verified after\n")
    head = ("router", "threshold", "calib. savings", "verified savings [95%]",
            "verified quality [95%]", "n", "verdict")
    print("{:<18} {:>9} {:>14} {:>26} {:>26} {:>5}  {}".format(*head))
    for router, r in results.items():
        v = r.get("verification") or {}
        c = r.get("calibration") or {}

        def iv(e: dict[str, Any], k: str) -> str:
            if e.get(k) is None:
                return "-"
            return f"{e[k]:.3f} [{e[k + '_lower']:.3f}, {e[k + '_upper']:.3f}]"

        t = "-" if r["threshold"] is None else f"{r['threshold']:.2f}"
        cs = "-" if not c else f"{c['savings']:.3f}"
        print(f"{router:<18} {t:>9} {cs:>14} {iv(v, 'savings'):>26} {iv(v, 'quality'):>26} "
              f"{r['verification_samples']:>5}  {r.get('verified') or r.get('reason')}")
    print(json.dumps({"model": model, "labelled": len(labels), "strong_needed": sum(labels),
                      "cv_auc": info.cv_auc, "oof_auc": oof_auc, "bar": args.bar,
                      "routers": results}, default=str))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
