"""RouteLLM's router metrics (Ong et al. 2024) with bootstrap intervals (numpy; no I/O).

For a router scored on the completed samples of one cheap model, at threshold t (cheap when
score < t), with quality relative to the frontier (the strong model scores 1) and the weak
model's quality q_w (every request cheap, `all_cheap` on the same samples):

- PGR(t) = (quality(t) - q_w) / (1 - q_w): the share of the quality gap recovered;
- the curve PGR against strong share c(t) runs from (0, 0) (all cheap) to (1, 1) (all strong);
- APGR = the area under it (trapezoids over the thresholds' points);
- CPT(x) = the smallest strong share at which PGR >= x (among the thresholds' points).

Reference curves on the same samples: `random_expected` (a router that sends a random share c to the
frontier recovers c of the gap: APGR 1/2, CPT(x) = x) and `oracle` (strong exactly for the
answers that scored below 1: the gap is closed at its strong share c_o; APGR = 1 - c_o / 2,
CPT(x) = x c_o). Estimates are stratified (weights N_h); intervals come from the stratified
Bayesian bootstrap of `analytics.intervals` (the same Dirichlet weights for every threshold of
a replicate, so the curve moves as a whole), with the finite-population correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["RouterSamples", "from_rows", "router_metrics"]

F64 = NDArray[np.float64]
CPT_LEVELS = (0.5, 0.8)


@dataclass(frozen=True)
class RouterSamples:
    """One router's scores on the completed samples of one cheap model."""

    stratum: NDArray[np.int64]
    big_n: F64
    q: F64
    score: F64


def from_rows(cols: list[str], rows: list[tuple[Any, ...]]
              ) -> dict[tuple[str, str], RouterSamples]:
    """`router_samples` rows -> {(router, model): RouterSamples}."""
    c = {name: i for i, name in enumerate(cols)}
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for r in rows:
        groups.setdefault((r[c["router"]], r[c["model"]]), []).append(r)
    out = {}
    for key, rs in groups.items():
        names, codes = np.unique(np.array([r[c["stratum"]] for r in rs], dtype=object),
                                 return_inverse=True)
        first = np.unique(codes, return_index=True)[1]
        big_n = np.array([rs[i][c["big_n"]] for i in first], dtype=np.float64)
        out[key] = RouterSamples(codes.astype(np.int64), big_n,
                                 np.array([r[c["q"]] for r in rs], dtype=np.float64),
                                 np.array([r[c["score"]] for r in rs], dtype=np.float64))
    return out


def _stratum_curves(s: RouterSamples, thresholds: F64, g: F64) -> tuple[F64, F64, F64, F64]:
    """Per replicate row of weights g (b x n) and stratum: the cheap-routed loss and the cheap
    share at each threshold (b x H x K), the loss of all cheap and the oracle's strong share
    (b x H); weighted means within the stratum."""
    h_count, k = len(s.big_n), len(thresholds)
    # A sample goes cheap at threshold k when score < t_k, i.e. from bin #{t <= score} on.
    bins = np.searchsorted(thresholds, s.score, side="right")
    cell = s.stratum * (k + 1) + bins
    b = g.shape[0]
    order = np.argsort(cell, kind="stable")
    cells, starts = np.unique(cell[order], return_index=True)
    go = g[:, order]
    sums = []
    for x in (1.0 - s.q, np.ones(len(s.q)), (s.q < 1.0).astype(np.float64)):
        full = np.zeros((b, h_count * (k + 1)))
        full[:, cells] = np.add.reduceat(go * x[order], starts, axis=1)
        sums.append(full.reshape(b, h_count, k + 1))
    loss, count, imperfect = sums
    tot = count.sum(axis=2)                                         # b x H
    safe = np.where(tot > 0, tot, 1.0)
    return (np.cumsum(loss, axis=2)[:, :, :k] / safe[:, :, None],
            np.cumsum(count, axis=2)[:, :, :k] / safe[:, :, None],
            loss.sum(axis=2) / safe, imperfect.sum(axis=2) / safe)


def _curves(s: RouterSamples, parts: tuple[F64, F64, F64, F64]
            ) -> tuple[F64, F64, F64, F64]:
    """Stratified: quality and strong share (b x K), weak quality and oracle strong share (b,)."""
    cheap_loss, cheap_share, weak, perfect = parts
    cov = s.big_n * (np.bincount(s.stratum, minlength=len(s.big_n)) > 0)
    w = cov / cov.sum()
    quality = 1.0 - np.einsum("bhk,h->bk", cheap_loss, w)
    strong = 1.0 - np.einsum("bhk,h->bk", cheap_share, w)
    return quality, strong, 1.0 - weak @ w, perfect @ w


def _metrics(quality: F64, strong: F64, q_weak: F64) -> dict[str, F64]:
    gap = 1.0 - q_weak
    with np.errstate(divide="ignore", invalid="ignore"):
        pgr = (quality - q_weak[:, None]) / np.where(gap > 0, gap, np.nan)[:, None]
    # The curve's points by strong share, closed by (0, 0) and (1, 1).
    b = quality.shape[0]
    xs = np.concatenate([np.zeros((b, 1)), strong, np.ones((b, 1))], axis=1)
    ys = np.concatenate([np.zeros((b, 1)), pgr, np.ones((b, 1))], axis=1)
    order = np.argsort(xs, axis=1, kind="stable")
    xs, ys = np.take_along_axis(xs, order, 1), np.take_along_axis(ys, order, 1)
    apgr = np.sum((xs[:, 1:] - xs[:, :-1]) * (ys[:, 1:] + ys[:, :-1]) / 2, axis=1)
    out = {"pgr": pgr, "apgr": apgr}
    for x in CPT_LEVELS:
        out[f"cpt_{round(x * 100)}"] = np.where(ys >= x - 1e-12, xs, np.inf).min(axis=1)
    return out


def router_metrics(s: RouterSamples, thresholds: list[float], *, replicates: int = 1000,
                   seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """PGR per threshold, APGR, CPT(50%), CPT(80%) with percentile intervals, and the random
    and oracle references on the same samples."""
    t = np.asarray(sorted(thresholds), dtype=np.float64)
    n_h = np.bincount(s.stratum, minlength=len(s.big_n)).astype(np.float64)
    fpc_sd = np.sqrt(np.clip(1.0 - n_h / np.maximum(s.big_n, 1.0), 0.0, 1.0))
    base = _stratum_curves(s, t, np.ones((1, len(s.q))))
    q0, st0, w0, p0 = _curves(s, base)
    est = _metrics(q0, st0, w0)
    rng = np.random.default_rng(seed)
    step = max(1, 2_000_000 // max(len(s.q), 1))
    reps: dict[str, list[F64]] = {}
    for lo in range(0, replicates, step):
        g = rng.standard_exponential((min(step, replicates - lo), len(s.q)))
        cl, cs, wk, pf = _stratum_curves(s, t, g)
        # Finite-population correction: shrink each stratum towards its estimate.
        f3, f2 = fpc_sd[None, :, None], fpc_sd[None, :]
        q, st, w, p = _curves(s, (base[0] + f3 * (cl - base[0]), base[1] + f3 * (cs - base[1]),
                                  base[2] + f2 * (wk - base[2]), base[3] + f2 * (pf - base[3])))
        m = _metrics(q, st, w)
        m["oracle_strong"] = p
        for key, v in m.items():
            reps.setdefault(key, []).append(v)
    alpha = (1 - level) / 2

    def iv(key: str, point: float, col: int | None = None) -> dict[str, float | None]:
        v = np.concatenate(reps[key])
        v = v[:, col] if col is not None else v
        v = v[np.isfinite(v)]
        if not len(v) or not math.isfinite(point):
            return {"estimate": _f(point), "lower": None, "upper": None}
        lo_v, hi_v = np.quantile(v, [alpha, 1 - alpha])
        return {"estimate": point, "lower": min(float(lo_v), point),
                "upper": max(float(hi_v), point)}

    c_o = float(p0[0])
    oracle_draws = np.concatenate(reps["oracle_strong"])
    lo_o, hi_o = (np.quantile(oracle_draws, [alpha, 1 - alpha]) if len(oracle_draws)
                  else (c_o, c_o))
    out: dict[str, Any] = {
        "samples": int(n_h.sum()),
        "weak_quality": float(w0[0]),
        "curve": [{"threshold": float(t[k]), "strong_share": float(st0[0, k]),
                   "quality": float(q0[0, k]), "pgr": iv("pgr", float(est["pgr"][0, k]), k)}
                  for k in range(len(t))],
        "apgr": iv("apgr", float(est["apgr"][0])),
        **{f"cpt_{round(x * 100)}": iv(f"cpt_{round(x * 100)}",
                                       float(est[f"cpt_{round(x * 100)}"][0]))
           for x in CPT_LEVELS},
        "random_expected": {"apgr": 0.5, **{f"cpt_{round(x * 100)}": x for x in CPT_LEVELS}},
        "oracle": {"strong_share": {"estimate": c_o, "lower": min(float(lo_o), c_o),
                                    "upper": max(float(hi_o), c_o)},
                   "apgr": 1 - c_o / 2,
                   **{f"cpt_{round(x * 100)}": x * c_o for x in CPT_LEVELS}},
    }
    return out


def _f(v: float) -> float | None:
    return v if math.isfinite(v) else None
