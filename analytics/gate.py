"""The rollout gate: may router R at threshold T send traffic to cheap model M?

The estimate comes from the `savings_at` macro (stratified by model x tag, weights N_h / n_h).
The gate compares a one-sided lower confidence bound of quality, not the point estimate:

- `inconclusive` (exit 2): fewer than `min_samples` scored samples, or the confidence interval
  still straddles `min_quality` (more data would decide);
- `pass` (exit 0): quality lower bound >= min_quality (and savings >= min_savings if given);
- `fail` (exit 1): quality upper bound < min_quality, or savings below `min_savings`.

The bound uses the stratified standard error (normal approximation), which DuckDB computes
exactly and repeatably; strata with a single sample count at maximal variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import sql

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}

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


def evaluate(query: QueryFn, req: GateRequest) -> dict[str, Any]:
    cols, rows = query(sql.query("gate_estimate"),
                       {"threshold": req.threshold, "router": req.router, "model": req.model})
    est: dict[str, Any] = dict(zip(cols, rows[0], strict=True)) if rows else {}
    samples = int(est.get("samples") or 0)
    quality = est.get("quality")
    se = est.get("quality_se")
    z = NormalDist().inv_cdf(req.confidence)
    lower = upper = None
    if quality is not None and se is not None:
        lower = max(0.0, quality - z * se)
        upper = min(1.0, quality + z * se)
    reasons: list[str] = []
    if samples < req.min_samples:
        verdict = "inconclusive"
        reasons.append(f"{samples} scored samples, fewer than min_samples={req.min_samples}"
                       + ("" if rows else " (no data for this router and model)"))
    else:
        assert lower is not None and upper is not None and quality is not None
        savings = est.get("savings")
        if upper < req.min_quality:
            verdict = "fail"
            reasons.append(f"quality upper bound {upper:.4f} < min_quality {req.min_quality}")
        elif lower >= req.min_quality:
            verdict = "pass"
            reasons.append(f"quality lower bound {lower:.4f} >= min_quality {req.min_quality}")
        else:
            verdict = "inconclusive"
            reasons.append(f"quality interval [{lower:.4f}, {upper:.4f}] contains "
                           f"min_quality {req.min_quality}: more samples needed")
        if req.min_savings is not None and (savings is None or savings < req.min_savings):
            reasons.append(f"savings {savings} < min_savings {req.min_savings}")
            if verdict == "pass":
                verdict = "fail"
    out: dict[str, Any] = {"verdict": verdict, "exit_code": EXIT_CODES[verdict],
                           "reasons": reasons, **asdict(req)}
    out.update({
        "samples": samples,
        "requests": est.get("requests"),
        "strata": est.get("strata"),
        "quality": quality,
        "quality_lower": lower,
        "quality_upper": upper,
        "savings": est.get("savings"),
        "strong_share": est.get("strong_share"),
        "projected_usd_saved": est.get("projected_usd_saved"),
    })
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}
