"""analytics.intervals on synthetic traffic with a known truth: coverage, A/A, no false certainty.

A fixed population of requests (strata of different sizes, sampled at different rates, as the
sampler does) has a known quality and savings at the router's threshold. Every repetition draws
a new sample (seeded) and checks whether the 95% interval covers the population's figures; a
well-calibrated interval covers them in ~95% of repetitions (93-97% allows for the Monte Carlo
error of 400+ repetitions). The interval's own randomness (the bootstrap) is seeded too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from analytics.gate import GateRequest, estimate, judge
from analytics.intervals import StratifiedSample, analytic, bootstrap, point
from consumers.sampling import UnitHash

THRESHOLD = 0.6


@dataclass(frozen=True)
class Population:
    stratum: np.ndarray
    big_n: np.ndarray
    score: np.ndarray
    q: np.ndarray
    cf: np.ndarray
    cm: np.ndarray
    frontier_usd: np.ndarray

    @property
    def cheap(self) -> np.ndarray:
        return self.score < THRESHOLD

    def truth(self) -> dict[str, float]:
        routed = np.where(self.cheap, self.cm, self.cf).sum()
        return {"quality": 1 - np.where(self.cheap, 1 - self.q, 0).mean(),
                "savings": 1 - routed / self.cf.sum(),
                "strong_share": 1 - self.cheap.mean(),
                "projected_usd_saved": self.cf.sum() - routed}

    def sample(self, keep: np.ndarray) -> StratifiedSample:
        i = np.flatnonzero(keep)
        return StratifiedSample.build(self.stratum[i], self.big_n, self.q[i], self.cf[i],
                                      self.cm[i], self.cheap[i], self.frontier_usd)


def population(failures: list[int], sizes: tuple[int, ...] = (4000, 2000, 1000, 1000),
               seed: int = 11, fractional: bool = False) -> Population:
    """`failures[h]` cheap-routed requests of stratum h fail (score 0), the rest score 1, so the
    population's quality is exactly 1 - sum(failures) / sum(sizes)."""
    rng = np.random.default_rng(seed)
    stratum = np.repeat(np.arange(len(sizes)), sizes)
    score = rng.uniform(size=len(stratum))
    q = np.ones(len(stratum))
    for h, k in enumerate(failures):
        cheap_h = np.flatnonzero((stratum == h) & (score < THRESHOLD))
        q[rng.choice(cheap_h, size=k, replace=False)] = 0.0
    if fractional:  # graded scores (e.g. token F1) instead of 0/1
        q = np.where(q == 1.0, rng.beta(20, 1, size=len(q)), rng.beta(2, 5, size=len(q)))
    cf = rng.lognormal(-4, 0.8, size=len(stratum)) * (1 + stratum)
    cm = cf * rng.uniform(0.03, 0.15, size=len(stratum))
    return Population(stratum, np.array(sizes, dtype=np.float64), score, q, cf, cm,
                      np.bincount(stratum, weights=cf))


RATES = np.array([0.03, 0.06, 0.15, 0.3])  # ~120 + 120 + 150 + 300 samples


def coverage(pop: Population, method: str, reps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = pop.truth()
    hits = dict.fromkeys(truth, 0)
    for r in range(reps):
        s = pop.sample(rng.uniform(size=len(pop.stratum)) < RATES[pop.stratum])
        iv = analytic(s) if method == "analytic" else bootstrap(s, replicates=1000, seed=r)
        for k, t in truth.items():
            hits[k] += iv[k][0] <= t <= iv[k][1]
    return {k: v / reps for k, v in hits.items()}


@pytest.mark.parametrize(("failures", "method", "reps"), [
    ([30, 30, 10, 10], "analytic", 2000),    # true quality 0.99
    ([30, 30, 10, 10], "bootstrap", 400),
    ([400, 100, 100, 200], "analytic", 2000),  # true quality 0.90
    ([400, 100, 100, 200], "bootstrap", 400),
])
def test_95_percent_intervals_cover_the_truth_95_percent_of_the_time(
        failures: list[int], method: str, reps: int) -> None:
    pop = population(failures)
    assert pop.truth()["quality"] == pytest.approx(1 - sum(failures) / 8000)
    cov = coverage(pop, method, reps, seed=sum(failures))
    assert 0.93 <= cov["quality"] <= 0.97, cov
    assert 0.93 <= cov["savings"] <= 0.97, cov
    assert 0.93 <= cov["projected_usd_saved"] <= 0.97, cov


def test_coverage_with_graded_scores() -> None:
    pop = population([400, 100, 100, 200], fractional=True)
    cov = coverage(pop, "analytic", 2000, seed=3)
    assert 0.93 <= cov["quality"] <= 0.97, cov


def test_all_perfect_samples_do_not_give_a_lower_bound_of_one() -> None:
    s = StratifiedSample.build(np.zeros(200, dtype=np.int64), np.array([50_000.0]),
                               np.ones(200), np.full(200, 0.01), np.full(200, 0.001),
                               np.ones(200, dtype=bool))
    assert point(s)["quality"] == 1.0
    a, b = analytic(s)["quality"], bootstrap(s, seed=1)["quality"]
    # Jeffreys' posterior for 0 failures in 200: 97.5% quantile of the loss ~0.0125; Wilson's
    # interval ~0.019. Either way a bound the sample size supports, not 1.0.
    assert 0.975 < a[0] < 0.99 and a[1] == 1.0
    assert 0.98 < b[0] < 0.995 and b[1] == 1.0
    # A census of the stratum (every request sampled) is exact.
    census = StratifiedSample.build(s.stratum, np.array([200.0]), np.ones(200),
                                    np.full(200, 0.01), np.full(200, 0.001),
                                    np.ones(200, dtype=bool))
    assert analytic(census)["quality"] == (1.0, 1.0)
    assert bootstrap(census)["quality"] == (1.0, 1.0)


def test_the_bootstrap_is_seeded() -> None:
    pop = population([30, 30, 10, 10])
    s = pop.sample(np.random.default_rng(0).uniform(size=len(pop.stratum)) < RATES[pop.stratum])
    assert bootstrap(s, seed=5) == bootstrap(s, seed=5)
    assert bootstrap(s, seed=5) != bootstrap(s, seed=6)


@pytest.mark.parametrize(("failures", "bar", "verdict"), [
    ([20, 10, 5, 5], 0.95, "pass"),           # true quality 0.995, well above the bar
    ([500, 200, 100, 200], 0.95, "fail"),     # true quality 0.875, well below
])
def test_a_a_two_salts_give_the_same_verdict(failures: list[int], bar: float,
                                             verdict: str) -> None:
    # Half the population at twice the rates: the same sample sizes, half the hashing.
    pop = population([f // 2 for f in failures], sizes=(2000, 1000, 500, 500))
    ids = [f"req-{i}" for i in range(len(pop.stratum))]
    req = GateRequest("r", THRESHOLD, "m", min_quality=bar, min_samples=50)
    same = 0
    reps = 200
    verdicts = []
    for r in range(reps):
        pair = []
        for salt in (f"aa-{r}-a", f"aa-{r}-b"):
            h = UnitHash(salt)
            keep = np.array([h(i) for i in ids]) < 2 * RATES[pop.stratum]
            pair.append(judge(estimate(pop.sample(keep), req), req)[0])
        same += pair[0] == pair[1]
        verdicts += pair
    assert same / reps >= 0.95
    assert verdicts.count(verdict) / len(verdicts) >= 0.95
