"""analytics.gate.evaluate on a real DuckDB file: stratified estimates, bounds and verdicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.gate import EXIT_CODES, GateRequest, evaluate
from analytics.store import Store

ROUTER, MODEL, SCORER = "rules", "cheap", "exact_match"
Z95 = NormalDist().inv_cdf(0.95)


@dataclass
class S:
    """One completed sample: the router's score, the cheap answer's quality, both costs."""

    q: float
    score: float
    cf: float = 0.010  # frontier cost
    cm: float = 0.001  # cheap cost


def fill(store: Store, strata: dict[str, tuple[int, list[S]]], *, noise: bool = True) -> None:
    """Write `strata` = {stratum: (eligible requests N_h, completed samples)} as the pipeline would."""
    con = store.con
    rows: dict[str, list[tuple[object, ...]]] = {"samples": [], "calls": [], "scores": [],
                                                 "routes": []}
    for h, (big_n, samples) in strata.items():
        tag = h.replace("|", "-")
        con.execute("INSERT INTO requests (request_id, stratum, eligible, sampled) "
                    "SELECT $tag || '-' || i, $h, true, i < $n FROM range($big_n) t(i)",
                    {"tag": tag, "h": h, "n": len(samples), "big_n": big_n})
        for i, s in enumerate(samples):
            sid = f"{tag}-{i}"
            rows["samples"].append((sid, h, s.cf))
            rows["calls"].append((sid, s.cm))
            rows["scores"].append((sid, s.q))
            rows["routes"].append((sid, s.score))
    frames = {name: pl.DataFrame(r, schema=["sample_id", "x"] if name != "samples"
                                 else ["sample_id", "stratum", "cf"], orient="row")
              for name, r in rows.items()}
    for name, df in frames.items():
        con.register(f"t_{name}", df.to_arrow())
    con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, scorer, "
                "frontier_cost_usd, status) "
                "SELECT sample_id, stratum, 'gpt-4o', $s, cf, 'done' FROM t_samples", {"s": SCORER})
    con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) "
                "SELECT sample_id, $m, 'a', x FROM t_calls", {"m": MODEL})
    con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                "SELECT sample_id, $m, $s, x FROM t_scores",
                {"m": MODEL, "s": SCORER})
    con.execute("INSERT INTO router_scores SELECT sample_id, $r, x FROM t_routes", {"r": ROUTER})
    for name in frames:
        con.unregister(f"t_{name}")
    if noise:
        # Rows the estimate must ignore: ineligible requests, a pending sample, a failed call,
        # a score by another scorer, another model's call.
        con.execute("INSERT INTO requests (request_id, stratum, eligible) "
                    "SELECT 'inel-' || i, 'gpt-4o|a', false FROM range(50) t(i)")
        con.execute("INSERT INTO samples (sample_id, stratum, scorer, frontier_cost_usd, status) "
                    "VALUES ('pending-1', 'gpt-4o|a', $1, 1.0, 'pending'), "
                    "('failed-1', 'gpt-4o|a', $1, 1.0, 'done')", [SCORER])
        con.execute("INSERT INTO shadow_calls (sample_id, model, cost_usd, error) VALUES "
                    "('pending-1', $1, 0.5, NULL), ('failed-1', $1, 0.5, 'timeout')", [MODEL])
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES ('pending-1', $1, $2, 0.0), "
                    "('failed-1', $1, $2, 0.0)", [MODEL, SCORER])
        first = next(iter(strata)).replace("|", "-") + "-0"
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                    "VALUES ($1, $2, 'token_f1', 0.0)", [first, MODEL])
        con.execute("INSERT INTO shadow_calls (sample_id, model, cost_usd) VALUES ($1, 'other', 9)",
                    [first])
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                    "VALUES ($1, 'other', $2, 0.0)", [first, SCORER])


def expected(strata: dict[str, tuple[int, list[S]]], threshold: float) -> dict[str, float]:
    """The stratified estimator written out: weights N_h, per-stratum means and variances."""
    total_n = sum(big_n for big_n, _ in strata.values())
    quality = var = cost = frontier = strong = 0.0
    for big_n, samples in strata.values():
        qs = [s.q if s.score < threshold else 1.0 for s in samples]
        cs = [s.cm if s.score < threshold else s.cf for s in samples]
        n = len(samples)
        quality += big_n * statistics.fmean(qs)
        var += big_n**2 * (statistics.variance(qs) if n > 1 else 0.25) / n
        cost += big_n * statistics.fmean(cs)
        frontier += big_n * statistics.fmean(s.cf for s in samples)
        strong += big_n * sum(s.score >= threshold for s in samples) / n
    return {"quality": quality / total_n, "quality_se": math.sqrt(var) / total_n,
            "savings": 1 - cost / frontier, "strong_share": strong / total_n,
            "projected_usd_saved": frontier - cost, "requests": total_n,
            "samples": sum(len(s) for _, s in strata.values()), "strata": len(strata)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "gate.duckdb")
    yield s
    s.close()


def gate(store: Store, threshold: float = 0.5, **kw: object) -> dict[str, object]:
    req = GateRequest(router=kw.pop("router", ROUTER), threshold=threshold,  # type: ignore[arg-type]
                      model=kw.pop("model", MODEL), **kw)  # type: ignore[arg-type]
    return evaluate(store.query_table, req)


# Two strata. At threshold 0.5 the cheap model takes scores < 0.5.
MIXED = {
    "gpt-4o|math": (300, [S(1.0, 0.1), S(0.0, 0.2), S(1.0, 0.3), S(1.0, 0.9)]),
    "gpt-4o|chat": (100, [S(1.0, 0.1, cf=0.02, cm=0.002), S(0.5, 0.6, cf=0.02, cm=0.002)]),
}


def test_stratified_estimate_by_hand(store: Store) -> None:
    fill(store, MIXED)
    out = gate(store, 0.5, min_samples=1)
    # math: qualities routed [1, 0, 1, frontier 1] -> mean 0.75, variance 0.25
    # chat: [1, frontier 1] -> mean 1, variance 0
    assert out["quality"] == pytest.approx((300 * 0.75 + 100 * 1.0) / 400)          # 0.8125
    se = math.sqrt(300**2 * 0.25 / 4) / 400                                           # 0.1875
    assert out["quality_lower"] == pytest.approx(0.8125 - Z95 * se)
    assert out["quality_upper"] == pytest.approx(min(1.0, 0.8125 + Z95 * se))
    # Costs: math (3 cheap at 0.001 + 1 frontier at 0.01) / 4; chat (0.002 + 0.02) / 2.
    routed = 300 * (0.003 + 0.01) / 4 + 100 * (0.022 / 2)
    frontier = 300 * 0.01 + 100 * 0.02
    assert out["savings"] == pytest.approx(1 - routed / frontier)
    assert out["projected_usd_saved"] == pytest.approx(frontier - routed)
    assert out["strong_share"] == pytest.approx((300 * 0.25 + 100 * 0.5) / 400)
    assert (out["samples"], out["requests"], out["strata"]) == (6, 400, 2)
    e = expected(MIXED, 0.5)
    assert out["quality"] == pytest.approx(e["quality"])
    assert out["quality_lower"] == pytest.approx(e["quality"] - Z95 * e["quality_se"])


def test_inconclusive_when_the_interval_contains_min_quality(store: Store) -> None:
    fill(store, MIXED)
    out = gate(store, 0.5, min_samples=1, min_quality=0.8)
    assert out["verdict"] == "inconclusive"
    assert out["exit_code"] == 2
    assert "contains min_quality 0.8: more samples needed" in out["reasons"][0]  # type: ignore[index]


def test_fail_when_the_upper_bound_is_below_min_quality(store: Store) -> None:
    bad = {"gpt-4o|math": (200, [S(0.0, 0.1), S(0.1, 0.1), S(0.0, 0.2)]),
           "gpt-4o|chat": (200, [S(0.2, 0.1), S(0.2, 0.3)])}
    fill(store, bad)
    out = gate(store, 0.5, min_samples=5)
    e = expected(bad, 0.5)
    upper = e["quality"] + Z95 * e["quality_se"]
    assert out["quality"] == pytest.approx(e["quality"])
    assert out["quality_upper"] == pytest.approx(upper)
    assert upper < 0.95
    assert (out["verdict"], out["exit_code"]) == ("fail", 1)
    assert out["reasons"] == [f"quality upper bound {upper:.4f} < min_quality 0.95"]


def test_pass_when_the_lower_bound_clears_min_quality(store: Store) -> None:
    good = {"gpt-4o|math": (300, [S(1.0, 0.1), S(1.0, 0.2), S(1.0, 0.9)]),
            "gpt-4o|chat": (100, [S(1.0, 0.1), S(0.0, 0.7)])}  # the bad one stays on the frontier
    fill(store, good)
    out = gate(store, 0.5, min_samples=5)
    assert out["quality"] == pytest.approx(1.0)
    assert out["quality_lower"] == pytest.approx(1.0)
    assert (out["verdict"], out["exit_code"]) == ("pass", 0)
    assert out["savings"] == pytest.approx(expected(good, 0.5)["savings"])
    # At threshold 0.8 the bad answer goes cheap too: quality drops below the bar.
    out = gate(store, 0.8, min_samples=5)
    assert out["quality"] == pytest.approx((300 * 1.0 + 100 * 0.5) / 400)
    assert out["verdict"] in ("fail", "inconclusive")


def test_a_single_sample_stratum_counts_at_maximal_variance(store: Store) -> None:
    one = {"gpt-4o|math": (100, [S(1.0, 0.1)]), "gpt-4o|chat": (100, [S(1.0, 0.1), S(1.0, 0.2)])}
    fill(store, one, noise=False)
    out = gate(store, 0.5, min_samples=1)
    se = math.sqrt(100**2 * 0.25 / 1) / 200
    assert out["quality"] == pytest.approx(1.0)
    assert out["quality_lower"] == pytest.approx(1.0 - Z95 * se)
    assert out["verdict"] == "inconclusive"


def test_inconclusive_below_min_samples(store: Store) -> None:
    fill(store, MIXED)
    out = gate(store, 0.5, min_samples=7)
    assert (out["verdict"], out["exit_code"]) == ("inconclusive", 2)
    assert out["reasons"] == ["6 scored samples, fewer than min_samples=7"]
    assert out["samples"] == 6


def test_inconclusive_without_data(store: Store) -> None:
    fill(store, MIXED)
    for kw in ({"router": "nope"}, {"model": "other-model"}):
        out = gate(store, 0.5, min_samples=1, **kw)
        assert out["verdict"] == "inconclusive"
        assert out["samples"] == 0
        assert out["quality"] is None and out["quality_lower"] is None
        assert out["reasons"] == ["0 scored samples, fewer than min_samples=1 "
                                  "(no data for this router and model)"]


def test_min_savings(store: Store) -> None:
    good = {"gpt-4o|math": (300, [S(1.0, 0.1), S(1.0, 0.2), S(1.0, 0.9)]),
            "gpt-4o|chat": (100, [S(1.0, 0.1), S(1.0, 0.3)])}
    fill(store, good)
    savings = expected(good, 0.5)["savings"]
    assert 0.5 < savings < 0.9
    out = gate(store, 0.5, min_samples=1, min_savings=savings - 0.01)
    assert out["verdict"] == "pass"
    assert out["min_savings"] == pytest.approx(savings - 0.01)
    out = gate(store, 0.5, min_samples=1, min_savings=savings + 0.01)
    assert (out["verdict"], out["exit_code"]) == ("fail", 1)
    assert out["reasons"][-1] == f"savings {out['savings']} < min_savings {savings + 0.01}"  # type: ignore[index]
    # Threshold 0: nothing goes cheap, no savings.
    out = gate(store, 0.0, min_samples=1, min_savings=0.1)
    assert out["savings"] == pytest.approx(0.0)
    assert out["verdict"] == "fail"


def test_min_savings_does_not_turn_inconclusive_into_pass(store: Store) -> None:
    fill(store, MIXED)
    out = gate(store, 0.5, min_samples=1, min_quality=0.8, min_savings=0.0)
    assert out["verdict"] == "inconclusive"


def test_reference_policies(store: Store) -> None:
    fill(store, MIXED)
    # all_cheap routes everything; oracle keeps exactly the imperfect answers on the frontier.
    cheap = gate(store, 0.5, router="all_cheap", min_samples=1)
    assert cheap["strong_share"] == pytest.approx(0.0)
    assert cheap["quality"] == pytest.approx((300 * 0.75 + 100 * 0.75) / 400)
    oracle = gate(store, 0.5, router="oracle", min_samples=1)
    assert oracle["quality"] == pytest.approx(1.0)
    # Every stratum has two or more samples, all of quality 1 after routing: zero variance.
    assert oracle["quality_lower"] == pytest.approx(1.0)
    assert (oracle["verdict"], oracle["exit_code"]) == ("pass", 0)


# -- property: the SQL estimator is the textbook stratified estimator ---------------------------

samples_st = st.lists(st.builds(S, q=st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1),
                                score=st.floats(0, 1),
                                cf=st.floats(0.001, 1), cm=st.floats(0, 0.01)),
                      min_size=1, max_size=5)
strata_st = st.dictionaries(st.sampled_from(["m|a", "m|b", "m|c", "o3|-"]),
                            st.tuples(st.integers(5, 1000), samples_st), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("gate") / "prop.duckdb")
    yield s
    s.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strata=strata_st, threshold=st.floats(0, 1))
def test_sql_estimate_matches_the_formula(shared_store: Store,
                                          strata: dict[str, tuple[int, list[S]]],
                                          threshold: float) -> None:
    shared_store.con.execute("DELETE FROM router_scores; DELETE FROM scores; "
                             "DELETE FROM shadow_calls; DELETE FROM samples; DELETE FROM requests")
    fill(shared_store, strata, noise=False)
    out = gate(shared_store, threshold, min_samples=1)
    e = expected(strata, threshold)
    assert (out["samples"], out["requests"], out["strata"]) == (e["samples"], e["requests"],
                                                                 e["strata"])
    assert out["quality"] == pytest.approx(e["quality"], abs=1e-9)
    assert out["quality_lower"] == pytest.approx(max(0.0, e["quality"] - Z95 * e["quality_se"]),
                                                 abs=1e-9)
    assert out["quality_upper"] == pytest.approx(min(1.0, e["quality"] + Z95 * e["quality_se"]),
                                                 abs=1e-9)
    assert out["savings"] == pytest.approx(e["savings"], abs=1e-9)
    assert out["strong_share"] == pytest.approx(e["strong_share"], abs=1e-9)
    assert 0.0 <= out["quality_lower"] <= out["quality"] <= out["quality_upper"] <= 1.0  # type: ignore[operator]
    assert out["verdict"] in EXIT_CODES
