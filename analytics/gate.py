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

The per-segment guard (the GPT-5 lesson: a good average can hide a task type that got much
worse): every segment (the stratifying tag's value, optionally with the frontier model) with at
least `min_segment_samples` samples whose quality upper bound is below its bar (per-segment
bars, else `min_quality`) fails the gate, and the reasons name it. The verdict lists every
segment's figures (`segments`).

Bounds come from the analytic interval (Wilson with Jeffreys' half observations for quality,
delta method for savings; the same figures as the `savings` view) or, with `interval =
"bootstrap"`, from a seeded stratified bootstrap. Neither is ever a point: 200 perfect samples do
not prove a quality of 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
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
    # The per-segment guard: a segment (the stratifying tag's value, or `model|tag` with
    # by_model) with at least min_segment_samples samples fails the gate when its quality upper
    # bound is below its bar (segment_min_quality, else min_quality).
    min_segment_samples: int = 100
    segment_min_quality: Mapping[str, float] = field(default_factory=dict)
    segment_by_model: bool = False
    # Over time: with a window ("hour" or "day"), the verdict judges the latest window of
    # production time, lists every window's figures, and flags a quality drop from the window
    # before beyond what the two intervals allow.
    window: str | None = None


def query_params(req: GateRequest) -> dict[str, str]:
    """`req` as /v1/verdict's query parameters (segment bars as `seg=0.9,other=0.99`)."""
    out: dict[str, str] = {}
    for k, v in asdict(req).items():
        if v is None or (k == "segment_min_quality" and not v):
            continue
        out[k] = (",".join(f"{s}={q}" for s, q in v.items()) if isinstance(v, dict)
                  else str(v).lower() if isinstance(v, bool) else str(v))
    return out


def parse_segment_bars(raw: str) -> dict[str, float]:
    """`seg=0.9,other=0.99` -> {"seg": 0.9, "other": 0.99}; ValueError names what is wrong."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        seg, sep, q = part.rpartition("=")
        if not sep or not seg:
            raise ValueError(f"{part!r} is not SEGMENT=QUALITY")
        bar = float(q)
        if not 0 <= bar <= 1:
            raise ValueError(f"{part!r}: the bar must be within [0, 1]")
        out[seg] = bar
    return out


def load_samples(query: QueryFn, router: str, threshold: float,
                 model: str) -> tuple[list[str], StratifiedSample] | None:
    """The (router, model)'s completed samples at `threshold`; None when there are none."""
    cols, rows = query(sql.query("gate_samples"),
                       {"threshold": threshold, "router": router, "model": model})
    return _rows_to_sample(cols, rows) if rows else None


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


def segments(names: list[str], s: StratifiedSample, req: GateRequest) -> list[dict[str, Any]]:
    """Every segment's figures and whether the guard fails it (judged when it has at least
    min_segment_samples samples; failed when its quality upper bound is below its bar)."""
    keys = [n if req.segment_by_model else n.split("|", 1)[-1] for n in names]
    out = []
    for key in sorted(set(keys)):
        codes = [i for i, k in enumerate(keys) if k == key]
        keep = np.isin(s.stratum, codes)
        sub = StratifiedSample(s.stratum[keep], s.big_n, s.loss[keep], s.cost[keep],
                               s.frontier[keep], s.strong[keep], s.frontier_usd)
        est = estimate(sub, req)
        bar = float(req.segment_min_quality.get(key, req.min_quality))
        judged = est["samples"] >= req.min_segment_samples
        failed = judged and est["quality_upper"] < bar
        out.append({"segment": key, "min_quality": bar, "judged": judged,
                    "failed": failed, **est})
    return out


WINDOWS = ("hour", "day")


def _rows_to_sample(cols: list[str], rows: list[tuple[Any, ...]]
                    ) -> tuple[list[str], StratifiedSample]:
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


def windows(query: QueryFn, req: GateRequest) -> list[tuple[str, list[str], StratifiedSample]]:
    """The (router, model)'s samples per window of production time, oldest first."""
    if req.window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {req.window!r}")
    cols, rows = query(sql.query("window_samples"), {"threshold": req.threshold,
                                                     "router": req.router, "model": req.model,
                                                     "width": req.window})
    by: dict[Any, list[tuple[Any, ...]]] = {}
    for r in rows:
        by.setdefault(r[0], []).append(r)
    return [(w.isoformat() if hasattr(w, "isoformat") else str(w), *_rows_to_sample(cols, rs))
            for w, rs in sorted(by.items())]


def drop(prev: dict[str, Any], last: dict[str, Any]) -> bool:
    """Did quality fall from `prev` to `last` by more than the two intervals allow? (The
    difference against the root of the summed squares of the one-sided half-widths.)"""
    if prev.get("quality") is None or last.get("quality") is None:
        return False
    down = prev["quality"] - prev["quality_lower"]
    up = last["quality_upper"] - last["quality"]
    return bool(prev["quality"] - last["quality"] > math.hypot(down, up))


def evaluate(query: QueryFn, req: GateRequest) -> dict[str, Any]:
    if req.interval not in METHODS:
        raise ValueError(f"interval must be one of {', '.join(METHODS)}, not {req.interval!r}")
    if req.window is not None:
        return _evaluate_windows(query, req)
    loaded = load_samples(query, req.router, req.threshold, req.model)
    return _verdict(req, loaded)


def _evaluate_windows(query: QueryFn, req: GateRequest) -> dict[str, Any]:
    wins = windows(query, req)
    figures = [{"window": w, **estimate(s, req)} for w, _, s in wins]
    out = _verdict(req, (wins[-1][1], wins[-1][2]) if wins else None)
    out["window_start"] = wins[-1][0] if wins else None
    out["windows"] = [_finite(f) for f in figures]
    out["quality_drop"] = len(figures) > 1 and drop(figures[-2], figures[-1])
    if out["quality_drop"]:
        prev, last = figures[-2], figures[-1]
        out["reasons"].append(
            f"quality dropped from {prev['quality']:.4f} ({prev['window']}) to "
            f"{last['quality']:.4f} ({last['window']}), beyond the two intervals")
    return out


def _verdict(req: GateRequest, loaded: tuple[list[str], StratifiedSample] | None
             ) -> dict[str, Any]:
    est: dict[str, Any] = {"samples": 0, "requests": None, "strata": None}
    segs: list[dict[str, Any]] = []
    if loaded is not None:
        est = estimate(loaded[1], req)
        segs = segments(*loaded, req)
    verdict, reasons = judge(est, req)
    if loaded is None:
        reasons[0] += " (no data for this router and model)"
    bad = [g for g in segs if g["failed"]]
    if bad:
        # A segment's failure stands even when the overall figure cannot be decided yet.
        verdict = "fail"
        reasons.append("segments below their bar: " + ", ".join(
            f"{g['segment']} (quality upper bound {g['quality_upper']:.4f} < "
            f"{g['min_quality']}, {g['samples']} samples)" for g in bad))
    out: dict[str, Any] = {"verdict": verdict, "exit_code": EXIT_CODES[verdict],
                           "reasons": reasons, **asdict(req)}
    out.update({k: est.get(k) for k in (
        "samples", "requests", "strata", *(f"{k}{s}" for k in FIGURES
                                           for s in ("", "_lower", "_upper")),
        "frontier_usd", "frontier_usd_exact")})
    out["segment_min_quality"] = dict(req.segment_min_quality)
    out["failed_segments"] = [g["segment"] for g in bad]
    out["segments"] = [_finite(g) for g in segs]
    return _finite(out)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}
