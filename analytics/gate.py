"""The rollout gate: may router R at threshold T send traffic to cheap model M?

The estimate is stratified (model x tag, weights N_h / n_h; `analytics.intervals`), computed
from the completed samples of (R, M) (`gate_samples`). The gate compares one-sided confidence
bounds at `confidence`, not point estimates:

- `inconclusive` (exit 2): fewer than `min_samples` scored samples, or an interval still
  straddles its bar (quality vs `min_quality`; savings vs `min_savings` when given): more data
  would decide;
- `pass` (exit 0): the quality lower bound >= min_quality (and the savings lower bound >=
  min_savings when given);
- `fail` (exit 1): the quality upper bound < min_quality, or the savings upper bound <
  min_savings.

Bounds come from the analytic interval (Wilson with Jeffreys' half observations for quality,
delta method for savings; the same figures as the `savings` view) or, with `interval =
"bootstrap"`, from a seeded stratified bootstrap. Neither is ever a point: 200 perfect samples do
not prove a quality of 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import sql
from analytics.intervals import FIGURES, Method, StratifiedSample, analytic, bootstrap, point

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}
METHODS: tuple[Method, ...] = ("analytic", "bootstrap")

QueryFn = Callable[[str, dict[str, Any]], tuple[list[str], list[tuple[Any, ...]]]]


@dataclass(frozen=True)
class GateRequest:
    router: str
    threshold: float
    model: str
    min_quality: float = 0.95
    min_samples: int = 200
    confidence: float = 0.95
    min_savings: float | None = None
    interval: Method = "analytic"
    replicates: int = 2000
    seed: int = 0


def load_samples(query: QueryFn, router: str, threshold: float,
                 model: str) -> tuple[list[str], StratifiedSample] | None:
    """The (router, model)'s completed samples at `threshold`; None when there are none."""
    cols, rows = query(sql.query("gate_samples"),
                       {"threshold": threshold, "router": router, "model": model})
    if not rows:
        return None
    c = {name: i for i, name in enumerate(cols)}
    names, codes = np.unique(np.array([r[c["stratum"]] for r in rows], dtype=object),
                             return_inverse=True)
    first = np.unique(codes, return_index=True)[1]

    def col(name: str) -> np.ndarray:
        return np.array([np.nan if r[c[name]] is None else r[c[name]] for r in rows],
                        dtype=np.float64)

    return [str(n) for n in names], StratifiedSample.build(
        codes, col("big_n")[first], col("q"), col("cf"), col("cm"),
        np.array([bool(r[c["cheap"]]) for r in rows]), col("frontier_usd")[first])


def estimate(s: StratifiedSample, req: GateRequest) -> dict[str, Any]:
    """Point estimates and one-sided bounds at req.confidence (two-sided level 2c - 1)."""
    level = 2 * req.confidence - 1
    iv = (bootstrap(s, level, replicates=req.replicates, seed=req.seed)
          if req.interval == "bootstrap" else analytic(s, level))
    est = point(s)
    cov = s.n > 0
    out: dict[str, Any] = {"samples": int(s.n.sum()), "requests": int(s.big_n[cov].sum()),
                           "strata": int(cov.sum())}
    for k in FIGURES:
        out[k] = est[k]
        out[f"{k}_lower"], out[f"{k}_upper"] = iv[k]
    out["frontier_usd"] = est["frontier_usd"]
    out["frontier_usd_exact"] = est["frontier_usd_exact"]
    return out


def _judge(name: str, lower: float, upper: float, bar: float) -> tuple[str, str]:
    if upper < bar:
        return "fail", f"{name} upper bound {upper:.4f} < min_{name} {bar}"
    if lower >= bar:
        return "pass", f"{name} lower bound {lower:.4f} >= min_{name} {bar}"
    return "inconclusive", (f"{name} interval [{lower:.4f}, {upper:.4f}] contains "
                            f"min_{name} {bar}: more samples needed")


def _worst(verdicts: list[str]) -> str:
    return ("fail" if "fail" in verdicts else
            "inconclusive" if "inconclusive" in verdicts else "pass")


def judge(est: dict[str, Any], req: GateRequest) -> tuple[str, list[str]]:
    """The verdict and its reasons from `estimate`'s figures (pure)."""
    samples = int(est["samples"])
    if samples < req.min_samples:
        return "inconclusive", [f"{samples} scored samples, fewer than "
                                f"min_samples={req.min_samples}"]
    judged = [_judge("quality", est["quality_lower"], est["quality_upper"], req.min_quality)]
    if req.min_savings is not None:
        judged.append(_judge("savings", est["savings_lower"], est["savings_upper"],
                             req.min_savings))
    return _worst([v for v, _ in judged]), [r for _, r in judged]


def evaluate(query: QueryFn, req: GateRequest) -> dict[str, Any]:
    if req.interval not in METHODS:
        raise ValueError(f"interval must be one of {', '.join(METHODS)}, not {req.interval!r}")
    loaded = load_samples(query, req.router, req.threshold, req.model)
    est: dict[str, Any] = {"samples": 0, "requests": None, "strata": None}
    if loaded is not None:
        est = estimate(loaded[1], req)
    verdict, reasons = judge(est, req)
    if loaded is None:
        reasons[0] += " (no data for this router and model)"
    out: dict[str, Any] = {"verdict": verdict, "exit_code": EXIT_CODES[verdict],
                           "reasons": reasons, **asdict(req)}
    out.update({k: est.get(k) for k in (
        "samples", "requests", "strata", *(f"{k}{s}" for k in FIGURES
                                           for s in ("", "_lower", "_upper")),
        "frontier_usd", "frontier_usd_exact")})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}
