"""Confidence intervals for the stratified estimates (numpy; no I/O).

For one (router, threshold, cheap model) the completed samples of stratum h (N_h eligible
requests, n_h samples, sampling fraction f_h = n_h / N_h) give, per sample, the routed loss
l_i = cheap ? 1 - q_i : 0 (quality = 1 - loss), the routed cost c_i, the frontier cost f_i and
the strong indicator s_i. Estimates (`point`):

- quality      = 1 - sum_h W_h mean_h(l),  W_h = N_h / sum N_h
- strong_share = sum_h W_h mean_h(s)
- savings      = 1 - R,  R = sum_h N_h mean_h(c) / sum_h N_h mean_h(f)  (a ratio estimator)
- projected_usd_saved = (1 - R) F when the frontier spend F of the covered strata is known
  exactly from `requests` (the ratio estimator of a total), else sum_h N_h mean_h(f - c).

Two interval methods, both with the finite-population correction (1 - f_h):

- `analytic`: savings and dollars by the delta method for the ratio (residuals c - R f);
  quality and strong share by a Wilson score interval on the stratified proportion with Kish's
  effective sample size (variance / p(1 - p)).
- `bootstrap`: a stratified Bayesian bootstrap (Rubin 1981): each replicate reweights the
  samples of every stratum with Dirichlet(1, ..., 1) weights, i.e. resamples within strata;
  percentile intervals; seeded.

**No degenerate proportions.** A stratum whose n samples all scored 1 has sample variance 0,
which would make any normal interval a point (200 perfect samples "prove" quality 1.0). Every
stratum's losses and strong indicators therefore carry Jeffreys' prior as pseudo-observations:
half an observation at 0 and half at 1. In the bootstrap these get Gamma(1/2) weights beside the
samples' Gamma(1) weights, so for 0/1 scores a stratum's replicate mean is exactly a draw from
the Jeffreys posterior Beta(k + 1/2, n - k + 1/2); in the analytic interval they give the
variance of a stratum whose samples all agree (the others keep their own variance) and the
effective n, but not the point estimate. With 200 perfect samples the 95%
two-sided lower bound of quality is ~0.98, not 1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["FIGURES", "Interval", "Method", "StratifiedSample", "analytic", "bootstrap",
           "point"]

Method = Literal["analytic", "bootstrap"]
Interval = tuple[float, float]
FIGURES = ("quality", "savings", "strong_share", "projected_usd_saved")

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class StratifiedSample:
    """Completed samples of one (router, threshold, model), grouped by stratum.

    `stratum` holds codes 0..H-1 into the per-stratum arrays `big_n` (eligible requests) and
    `frontier_usd` (exact frontier spend from `requests`, NaN where unknown).
    """

    stratum: NDArray[np.int64]
    big_n: F64
    loss: F64
    cost: F64
    frontier: F64
    strong: F64
    frontier_usd: F64

    @classmethod
    def build(cls, stratum: NDArray[np.int64], big_n: F64, q: F64, cf: F64, cm: F64,
              cheap: NDArray[np.bool_], frontier_usd: F64 | None = None) -> StratifiedSample:
        cheap = np.asarray(cheap, dtype=bool)
        q, cf, cm = (np.asarray(a, dtype=np.float64) for a in (q, cf, cm))
        big_n = np.asarray(big_n, dtype=np.float64)
        return cls(stratum=np.asarray(stratum, dtype=np.int64), big_n=big_n,
                   loss=np.where(cheap, 1.0 - q, 0.0), cost=np.where(cheap, cm, cf),
                   frontier=cf, strong=(~cheap).astype(np.float64),
                   frontier_usd=(np.full(big_n.shape, np.nan) if frontier_usd is None
                                 else np.asarray(frontier_usd, dtype=np.float64)))

    @property
    def n(self) -> F64:
        return np.bincount(self.stratum, minlength=len(self.big_n)).astype(np.float64)


def _sums(s: StratifiedSample, x: F64) -> F64:
    return np.bincount(s.stratum, weights=x, minlength=len(s.big_n)).astype(np.float64)


def _covered(s: StratifiedSample) -> NDArray[np.bool_]:
    return s.n > 0


def _exact_frontier(s: StratifiedSample) -> float | None:
    f = s.frontier_usd[_covered(s)]
    return float(f.sum()) if len(f) and np.isfinite(f).all() else None


def point(s: StratifiedSample) -> dict[str, float]:
    cov = _covered(s)
    n, big_n = s.n[cov], s.big_n[cov]
    w = big_n / big_n.sum()
    mean = {k: _sums(s, getattr(s, k))[cov] / n for k in ("loss", "cost", "frontier", "strong")}
    routed, frontier = float(big_n @ mean["cost"]), float(big_n @ mean["frontier"])
    ratio = routed / frontier if frontier > 0 else math.nan
    exact = _exact_frontier(s)
    return {
        "quality": 1.0 - float(w @ mean["loss"]),
        "strong_share": float(w @ mean["strong"]),
        "savings": 1.0 - ratio,
        "projected_usd_saved": ((1.0 - ratio) * exact if exact is not None
                                else frontier - routed),
        "frontier_usd": exact if exact is not None else frontier,
        "frontier_usd_exact": exact is not None,
    }


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _wilson(p: float, k: float) -> Interval:
    """Wilson's score interval for a proportion p, k = z^2 / (effective) n."""
    centre = (p + k / 2) / (1 + k)
    half = math.sqrt(max(k * p * (1 - p) + k * k / 4, 0.0)) / (1 + k)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _proportion(s: StratifiedSample, x: F64, z: float) -> Interval:
    """Stratified mean of x in [0, 1]: Wilson with Kish's effective n, Jeffreys-regularised."""
    cov = _covered(s)
    n, big_n = s.n[cov], s.big_n[cov]
    w = big_n / big_n.sum()
    fpc = np.clip(1.0 - n / big_n, 0.0, 1.0)
    sx, sxx = _sums(s, x)[cov], _sums(s, x * x)[cov]
    p = float(w @ (sx / n))
    # A stratum whose samples all agree (variance 0) takes the variance of its data with
    # Jeffreys' half observations at 0 and at 1 added (never 0 for a finite sample); the
    # others keep their own. The regularised means give Kish's effective n.
    m_reg = (sx + 0.5) / (n + 1)
    v_reg = np.maximum((sxx + 0.5) / (n + 1) - m_reg**2, 0.0)
    v = np.maximum(sxx / n - (sx / n) ** 2, 0.0)
    var = float(np.sum(w * w * fpc * np.where(v > 1e-15, v, v_reg) / n))
    p_reg = float(w @ m_reg)
    # Kish's effective n = p (1 - p) / variance, from the regularised figures (p_reg in (0, 1))
    return _wilson(p, z * z * var / (p_reg * (1 - p_reg)))


def analytic(s: StratifiedSample, level: float = 0.95) -> dict[str, Interval]:
    """Two-sided intervals at `level` (delta method for the ratios, Wilson-Kish for proportions)."""
    z = _z(level)
    est = point(s)
    cov = _covered(s)
    n, big_n = s.n[cov], s.big_n[cov]
    fpc = np.clip(1.0 - n / big_n, 0.0, 1.0)
    loss = _proportion(s, s.loss, z)
    out: dict[str, Interval] = {"quality": (1.0 - loss[1], 1.0 - loss[0]),
                                "strong_share": _proportion(s, s.strong, z)}
    ratio = 1.0 - est["savings"]
    frontier_hat = float(big_n @ (_sums(s, s.frontier)[cov] / n))

    def total_var(e: F64) -> float:
        # Var of sum_h N_h mean_h(e): N_h^2 (1 - f_h) s_h^2 / n_h; a lone sample's e^2 stands
        # in for the variance its stratum cannot estimate.
        se, see = _sums(s, e)[cov], _sums(s, e * e)[cov]
        s2 = np.where(n > 1, (see - se * se / n) / np.maximum(n - 1, 1), see / n)
        return float(np.sum(big_n * big_n * fpc * np.maximum(s2, 0.0) / n))

    if math.isfinite(ratio) and frontier_hat > 0:
        sd_ratio = math.sqrt(total_var(s.cost - ratio * s.frontier)) / frontier_hat
        out["savings"] = (est["savings"] - z * sd_ratio, est["savings"] + z * sd_ratio)
    else:
        out["savings"] = (math.nan, math.nan)
    if est["frontier_usd_exact"]:
        f = est["frontier_usd"]
        out["projected_usd_saved"] = (out["savings"][0] * f, out["savings"][1] * f)
    else:
        sd = math.sqrt(total_var(s.frontier - s.cost))
        usd = est["projected_usd_saved"]
        out["projected_usd_saved"] = (usd - z * sd, usd + z * sd)
    return out


def bootstrap(s: StratifiedSample, level: float = 0.95, replicates: int = 1000,
              seed: int = 0, chunk_cells: int = 4_000_000) -> dict[str, Interval]:
    """Percentile intervals from a seeded stratified Bayesian bootstrap (vectorised, chunked)."""
    cov_idx = np.flatnonzero(_covered(s))
    order = np.argsort(s.stratum, kind="stable")
    code = s.stratum[order]
    # Stratum h's samples are the slice starts[j]:starts[j+1] after sorting.
    starts = np.searchsorted(code, cov_idx)
    n, big_n = s.n[cov_idx], s.big_n[cov_idx]
    w = big_n / big_n.sum()
    fpc_sd = np.sqrt(np.clip(1.0 - n / big_n, 0.0, 1.0))
    cols = np.stack([s.loss[order], s.strong[order], s.cost[order], s.frontier[order]])
    base = np.stack([np.add.reduceat(c, starts) for c in cols]) / n    # 4 x H point means
    # Per stratum, one matrix product gives a replicate's sums of the weights and of the
    # weighted columns: g[:, slice] @ [1, loss, strong, cost, frontier] reads the weights once
    # (4x faster than a reduceat per column over g * column; benchmarks/analytics.py).
    design = np.concatenate([np.ones((1, len(code))), cols]).T.copy()   # n x 5
    bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), len(code)], strict=True))
    exact = _exact_frontier(s)
    rng = np.random.default_rng(seed)
    step = max(1, chunk_cells // max(len(code), 1))
    res: dict[str, list[F64]] = {k: [] for k in FIGURES}
    for lo in range(0, replicates, step):
        b = min(step, replicates - lo)
        g = rng.standard_exponential((b, len(code)))                    # Dirichlet(1) weights
        gs, *sums = np.stack([g[:, a:z] @ design[a:z] for a, z in bounds], axis=2
                             ).transpose(1, 0, 2)                         # 5 x b x H
        # Jeffreys' half observations at 1 (a1) and at 0 (a0) for the two proportions.
        a1 = rng.standard_gamma(0.5, (2, b, len(cov_idx)))
        a0 = rng.standard_gamma(0.5, (2, b, len(cov_idx)))
        loss = (sums[0] + a1[0]) / (gs + a1[0] + a0[0])
        strong = (sums[1] + a1[1]) / (gs + a1[1] + a0[1])
        cost, front = sums[2] / gs, sums[3] / gs
        # Finite-population correction: shrink each stratum's replicate towards its estimate.
        loss, strong, cost, front = (m + fpc_sd * (r - m) for r, m in
                                     zip((loss, strong, cost, front), base, strict=True))
        routed, frontier = cost @ big_n, front @ big_n
        ratio = routed / np.where(frontier > 0, frontier, np.nan)
        res["quality"].append(1.0 - loss @ w)
        res["strong_share"].append(strong @ w)
        res["savings"].append(1.0 - ratio)
        res["projected_usd_saved"].append((1.0 - ratio) * exact if exact is not None
                                          else frontier - routed)
    alpha = (1.0 - level) / 2
    est = point(s)
    out: dict[str, Interval] = {}
    for k, parts in res.items():
        v = np.concatenate(parts)
        if np.isnan(v).all():
            out[k] = (math.nan, math.nan)
            continue
        lo_v, hi_v = np.nanquantile(v, [alpha, 1 - alpha])
        # The interval holds the estimate (as Jeffreys' interval is widened to 0 when no
        # failure was seen): the posterior of a perfect stratum sits just below its 1.0.
        out[k] = (min(float(lo_v), est[k]), max(float(hi_v), est[k]))
    return out
