"""analytics.gate.evaluate on a real DuckDB file: stratified estimates, bounds and verdicts."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sql
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
    con.execute("INSERT INTO router_scores (sample_id, router, score) "
                "SELECT sample_id, $r, x FROM t_routes", {"r": ROUTER})
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


def expected(strata: dict[str, tuple[int, list[S]]], threshold: float,
             z: float = Z95) -> dict[str, float]:
    """The stratified estimator and its analytic intervals written out, stratum by stratum.

    Quality: Wilson's interval on the stratified loss with Kish's effective n from the means
    with Jeffreys' half observations at 0 and 1, which also give the variance of a stratum
    whose samples all agree; savings: the delta method for
    the ratio of routed to frontier cost; both with the finite-population correction.
    """
    total_n = sum(big_n for big_n, _ in strata.values())
    loss = var = loss_reg = var_loss = cost = frontier = strong = 0.0
    for big_n, samples in strata.values():
        qs = [s.q if s.score < threshold else 1.0 for s in samples]
        cs = [s.cm if s.score < threshold else s.cf for s in samples]
        n = len(samples)
        w, fpc = big_n / total_n, max(0.0, 1 - n / big_n)
        ls = [1 - q for q in qs]
        loss += w * statistics.fmean(ls)
        m_reg = (sum(ls) + 0.5) / (n + 1)
        loss_reg += w * m_reg
        v = statistics.pvariance(ls)
        v = v if v > 1e-15 else (sum(x * x for x in ls) + 0.5) / (n + 1) - m_reg**2
        var_loss += w * w * fpc * v / n
        var += big_n**2 * (statistics.variance(qs) if n > 1 else 0.25) / n
        cost += big_n * statistics.fmean(cs)
        frontier += big_n * statistics.fmean(s.cf for s in samples)
        strong += big_n * sum(s.score >= threshold for s in samples) / n
    ratio = cost / frontier
    var_ratio = 0.0
    for big_n, samples in strata.values():
        n = len(samples)
        es = [(s.cm if s.score < threshold else s.cf) - ratio * s.cf for s in samples]
        s2 = statistics.variance(es) if n > 1 else es[0] ** 2
        var_ratio += big_n**2 * max(0.0, 1 - n / big_n) * s2 / n
    k = z * z * var_loss / (loss_reg * (1 - loss_reg))
    centre, half = (loss + k / 2) / (1 + k), math.sqrt(k * loss * (1 - loss) + k * k / 4) / (1 + k)
    half_savings = z * math.sqrt(var_ratio) / frontier
    return {"quality": 1 - loss, "quality_se": math.sqrt(var) / total_n,
            "quality_lower": max(0.0, 1 - (centre + half)),
            "quality_upper": min(1.0, 1 - (centre - half)),
            "savings": 1 - ratio, "savings_lower": 1 - ratio - half_savings,
            "savings_upper": 1 - ratio + half_savings, "strong_share": strong / total_n,
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
    # math: qualities routed [1, 0, 1, frontier 1] -> mean 0.75; chat: [1, frontier 1] -> 1
    assert out["quality"] == pytest.approx((300 * 0.75 + 100 * 1.0) / 400)          # 0.8125
    # Wilson on the loss 0.1875 with Kish's n: math's losses [0, 1, 0, 0] have variance 3/16;
    # chat's [0, 0] none, so its augmented losses (+ 1/2 of a 1 in 3) count: 1/6 - 1/36. The
    # augmented means (math 1.5 / 5, chat 0.5 / 3) give the effective n.
    w_m, w_c = 0.75, 0.25
    var = w_m**2 * (1 - 4 / 300) * 3 / 16 / 4 + w_c**2 * (1 - 2 / 100) * (1 / 6 - 1 / 36) / 2
    p_reg = w_m * 0.3 + w_c / 6
    k = Z95**2 * var / (p_reg * (1 - p_reg))
    centre, half = (0.1875 + k / 2) / (1 + k), math.sqrt(k * 0.1875 * 0.8125 + k * k / 4) / (1 + k)
    assert out["quality_lower"] == pytest.approx(1 - centre - half)
    assert out["quality_upper"] == pytest.approx(1 - centre + half)
    # Costs: math (3 cheap at 0.001 + 1 frontier at 0.01) / 4; chat (0.002 + 0.02) / 2.
    routed = 300 * (0.003 + 0.01) / 4 + 100 * (0.022 / 2)
    frontier = 300 * 0.01 + 100 * 0.02
    assert out["savings"] == pytest.approx(1 - routed / frontier)
    assert out["projected_usd_saved"] == pytest.approx(frontier - routed)
    assert out["frontier_usd_exact"] is False  # the requests carry no cost here
    assert out["strong_share"] == pytest.approx((300 * 0.25 + 100 * 0.5) / 400)
    assert (out["samples"], out["requests"], out["strata"]) == (6, 400, 2)
    e = expected(MIXED, 0.5)
    for k in ("quality", "quality_lower", "quality_upper", "savings", "savings_lower",
              "savings_upper"):
        assert out[k] == pytest.approx(e[k]), k


def test_the_views_give_the_gate_figures(store: Store) -> None:
    fill(store, MIXED)
    out = gate(store, 0.5, min_samples=1)
    # The gate's one-sided 95% bounds are the view's two-sided 90% interval.
    cols, rows = store.query_table(
        "SELECT * FROM savings_at([0.5], z := $z) WHERE router = $r AND model = $m",
        {"z": Z95, "r": ROUTER, "m": MODEL})
    view = dict(zip(cols, rows[0], strict=True))
    for k in ("samples", "requests", "strata", "quality", "quality_lower", "quality_upper",
              "savings", "savings_lower", "savings_upper", "strong_share",
              "strong_share_lower", "strong_share_upper", "projected_usd_saved",
              "projected_usd_saved_lower", "projected_usd_saved_upper", "frontier_usd",
              "frontier_usd_exact"):
        assert view[k] == pytest.approx(out[k]), k
    # The savings view keeps its columns and adds the intervals (at 95%: wider than 90%).
    cols, rows = store.query_table("SELECT * FROM savings WHERE router = $r AND threshold = 0.5 "
                                   "AND model = $m", {"r": ROUTER, "m": MODEL})
    row = dict(zip(cols, rows[0], strict=True))
    assert cols[:13] == ["router", "threshold", "model", "strata", "samples", "requests",
                         "quality", "quality_se", "savings", "strong_share", "frontier_usd",
                         "routed_usd", "projected_usd_saved"]
    assert row["quality_lower"] < out["quality_lower"] < out["quality_upper"] < row["quality_upper"]


def test_exact_frontier_spend_comes_from_requests(store: Store) -> None:
    fill(store, MIXED)
    # Every eligible request's frontier cost is in the log: 300 x 0.01 and 100 x 0.02 would be
    # the estimate; the log says otherwise, and the log is right.
    store.con.execute("UPDATE requests SET cost_usd = CASE WHEN stratum = 'gpt-4o|math' "
                      "THEN 0.012 ELSE 0.018 END WHERE eligible")
    out = gate(store, 0.5, min_samples=1)
    exact = 300 * 0.012 + 100 * 0.018
    assert out["frontier_usd_exact"] is True
    assert out["frontier_usd"] == pytest.approx(exact)
    assert out["projected_usd_saved"] == pytest.approx(out["savings"] * exact)
    assert out["projected_usd_saved_lower"] == pytest.approx(out["savings_lower"] * exact)
    # One request without a cost: back to the estimate.
    store.con.execute("UPDATE requests SET cost_usd = NULL WHERE request_id = 'gpt-4o-math-0'")
    assert gate(store, 0.5, min_samples=1)["frontier_usd_exact"] is False


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
    assert out["quality"] == pytest.approx(e["quality"])
    assert out["quality_upper"] == pytest.approx(e["quality_upper"])
    assert e["quality_upper"] < 0.95
    assert (out["verdict"], out["exit_code"]) == ("fail", 1)
    assert out["reasons"] == [f"quality upper bound {e['quality_upper']:.4f} < min_quality 0.95"]


def perfect(n: int, score: float = 0.1) -> list[S]:
    return [S(1.0, score) for _ in range(n)]


def test_pass_when_the_lower_bound_clears_min_quality(store: Store) -> None:
    good = {"gpt-4o|math": (3000, perfect(300) + [S(1.0, 0.9)] * 20),
            "gpt-4o|chat": (1000, perfect(150) + [S(0.0, 0.7)] * 80)}  # the bad ones stay strong
    fill(store, good)
    out = gate(store, 0.5, min_samples=5)
    assert out["quality"] == pytest.approx(1.0)
    assert 0.98 < out["quality_lower"] < 1.0  # type: ignore[operator]
    assert (out["verdict"], out["exit_code"]) == ("pass", 0)
    assert out["savings"] == pytest.approx(expected(good, 0.5)["savings"])
    # At threshold 0.8 the bad answers go cheap too: quality drops below the bar.
    out = gate(store, 0.8, min_samples=5)
    assert out["quality"] == pytest.approx(1 - 1000 * 80 / 230 / 4000)
    assert out["verdict"] == "fail"


@pytest.mark.parametrize("interval", ["analytic", "bootstrap"])
def test_200_perfect_samples_do_not_prove_perfection(store: Store, interval: str) -> None:
    # Every sample scored 1: the sample variance is 0, but three failures in a thousand would
    # go unseen in 200 samples, so the bound must stay below 1 (~0.987-0.990 one-sided).
    fill(store, {"gpt-4o|math": (100_000, perfect(200))}, noise=False)
    out = gate(store, 0.5, min_samples=1, interval=interval)
    assert out["quality"] == pytest.approx(1.0)
    assert out["quality_upper"] == pytest.approx(1.0)
    assert 0.98 < out["quality_lower"] < 0.995  # type: ignore[operator]
    assert gate(store, 0.5, min_samples=1, interval=interval,
                min_quality=0.95)["verdict"] == "pass"
    assert gate(store, 0.5, min_samples=1, interval=interval,
                min_quality=0.995)["verdict"] == "inconclusive"


def test_a_single_sample_stratum_is_not_certain(store: Store) -> None:
    one = {"gpt-4o|math": (100, [S(1.0, 0.1)]), "gpt-4o|chat": (100, [S(1.0, 0.1), S(1.0, 0.2)])}
    fill(store, one, noise=False)
    out = gate(store, 0.5, min_samples=1)
    assert out["quality"] == pytest.approx(1.0)
    assert out["quality_lower"] == pytest.approx(expected(one, 0.5)["quality_lower"])
    assert out["quality_lower"] < 0.8  # type: ignore[operator]
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


def test_min_savings_is_judged_on_its_bounds(store: Store) -> None:
    good = {"gpt-4o|math": (3000, perfect(300) + [S(1.0, 0.9, cf=0.02)] * 100),
            "gpt-4o|chat": (1000, perfect(150, 0.3) + [S(1.0, 0.8)] * 50)}
    fill(store, good)
    e = expected(good, 0.5, z=Z95)
    lo, hi = e["savings_lower"], e["savings_upper"]
    assert 0.3 < lo < e["savings"] < hi < 0.9
    out = gate(store, 0.5, min_samples=1, min_savings=lo - 0.01)
    assert out["verdict"] == "pass"
    assert out["savings_lower"] == pytest.approx(lo)
    assert out["reasons"][-1] == f"savings lower bound {lo:.4f} >= min_savings {lo - 0.01}"  # type: ignore[index]
    # The bar inside the interval: more samples needed, even with the point estimate above it.
    out = gate(store, 0.5, min_samples=1, min_savings=(lo + e["savings"]) / 2)
    assert (out["verdict"], out["exit_code"]) == ("inconclusive", 2)
    assert "savings interval" in out["reasons"][-1]  # type: ignore[index]
    out = gate(store, 0.5, min_samples=1, min_savings=hi + 0.01)
    assert (out["verdict"], out["exit_code"]) == ("fail", 1)
    assert out["reasons"][-1] == f"savings upper bound {hi:.4f} < min_savings {hi + 0.01}"  # type: ignore[index]
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
    # Every routed quality is 1, but six samples do not make that certain.
    assert oracle["quality_lower"] < 0.9  # type: ignore[operator]
    assert oracle["verdict"] == "inconclusive"


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
    assert out["quality_lower"] == pytest.approx(e["quality_lower"], abs=1e-9)
    assert out["quality_upper"] == pytest.approx(e["quality_upper"], abs=1e-9)
    assert out["savings"] == pytest.approx(e["savings"], abs=1e-9)
    assert out["savings_lower"] == pytest.approx(e["savings_lower"], abs=1e-7)
    assert out["savings_upper"] == pytest.approx(e["savings_upper"], abs=1e-7)
    cols, rows = shared_store.query_table(
        "SELECT * FROM savings_at([$t], z := $z) WHERE router = $r", {"t": threshold, "z": Z95,
                                                                       "r": ROUTER})
    view = dict(zip(cols, rows[0], strict=True))
    for k in ("quality", "quality_se", "quality_lower", "quality_upper", "savings",
              "savings_lower", "savings_upper", "strong_share"):
        # A bound's half-width is the square root of a variance that cancels to ~0 in a stratum
        # of one sample, where SQL's and numpy's rounding differ by ~1e-17: its square root
        # moves the bound by ~1e-8. Point estimates agree to 1e-9.
        assert view[k] == pytest.approx(e[k], abs=1e-7 if k.endswith(("_lower", "_upper"))
                                        else 1e-9), k
    assert out["strong_share"] == pytest.approx(e["strong_share"], abs=1e-9)
    assert 0.0 <= out["quality_lower"] <= out["quality"] <= out["quality_upper"] <= 1.0  # type: ignore[operator]
    assert out["verdict"] in EXIT_CODES


def test_running_sums_give_what_the_cross_join_gave(store: Store) -> None:
    # Scores equal to a threshold (strong: cheap means score < threshold), ties between
    # samples, and thresholds outside [0, 1].
    ties = {"gpt-4o|math": (50, [S(0.0, 0.5), S(1.0, 0.5), S(0.5, 0.25), S(1.0, 0.0),
                                 S(0.2, 1.0)]),
            "gpt-4o|chat": (30, [S(1.0, 0.5), S(0.0, 0.75), S(0.3, 0.75)])}
    fill(store, ties)
    thresholds = [-1.0, 0.0, 0.25, 0.5, 0.6, 0.75, 1.0, 2.0]
    key = ("router", "threshold", "model")
    cols, rows = store.query_table("SELECT * FROM savings_at($t)", {"t": thresholds})
    new = {tuple(r[cols.index(k)] for k in key): dict(zip(cols, r, strict=True)) for r in rows}
    cols, rows = store.query_table(sql.query("savings_cross_join"), {"thresholds": thresholds})
    old = {tuple(r[cols.index(k)] for k in key): dict(zip(cols, r, strict=True)) for r in rows}
    assert new.keys() == old.keys() and len(new) == 3 * 2 * len(thresholds)
    for k, o in old.items():
        for c in ("strata", "samples", "requests", "quality", "quality_se", "savings",
                  "strong_share"):
            assert new[k][c] == pytest.approx(o[c], abs=1e-12), (k, c)
    for t in thresholds:
        e = expected(ties, t, z=1.959963984540054)
        got = new[(ROUTER, t, MODEL)]
        assert got["quality"] == pytest.approx(e["quality"], abs=1e-12)
        # (variances from running sums of squares: equal up to rounding)
        assert got["quality_lower"] == pytest.approx(e["quality_lower"], abs=1e-7)
        assert got["savings_upper"] == pytest.approx(e["savings_upper"], abs=1e-7)



def test_binned_sums_give_what_the_cross_join_gave_for_many_routers_and_models(
        store: Store) -> None:
    # Two routers (one with a NULL score, which never goes cheap), a second cheap model with
    # its own scores, scores on and between thresholds, and thresholds given unsorted.
    fill(store, {"gpt-4o|math": (40, [S(0.0, 0.5), S(1.0, 0.1), S(0.5, 0.3), S(1.0, 0.9)]),
                 "gpt-4o|chat": (25, [S(1.0, 0.5), S(0.0, 0.05), S(0.25, 0.7)]),
                 "gpt-4o|code": (9, [S(0.75, 0.2)])})
    con = store.con
    con.execute("INSERT INTO router_scores (sample_id, router, score) SELECT sample_id, 'mf', "
                "CASE WHEN sample_id = 'gpt-4o-math-1' THEN NULL ELSE 1 - score END "
                "FROM router_scores WHERE router = $r", {"r": ROUTER})
    con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) "
                "SELECT sample_id, 'mini', 'a', cost_usd / 2 FROM shadow_calls WHERE model = $m",
                {"m": MODEL})
    con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                "SELECT sample_id, 'mini', scorer, value * value FROM scores "
                "WHERE model = $m AND scorer = $s", {"m": MODEL, "s": SCORER})
    thresholds = [0.7, 0.3, 0.0, 1.0, 0.5, 0.1, 0.95, 0.2]
    key = ("router", "threshold", "model")
    cols, rows = store.query_table("SELECT * FROM savings_at($t)", {"t": thresholds})
    new = {tuple(r[cols.index(k)] for k in key): dict(zip(cols, r, strict=True)) for r in rows}
    cols, rows = store.query_table(sql.query("savings_cross_join"), {"thresholds": thresholds})
    old = {tuple(r[cols.index(k)] for k in key): dict(zip(cols, r, strict=True)) for r in rows}
    # (fill adds a third model, "other", with one sample)
    assert new.keys() == old.keys() and len(new) == 4 * 3 * len(thresholds)
    for k, o in old.items():
        for c in ("strata", "samples", "requests", "quality", "quality_se", "savings",
                  "strong_share"):
            assert new[k][c] == pytest.approx(o[c], abs=1e-12), (k, c)
    # The NULL score is strong at every threshold: mf's strong share never reaches 0.
    assert min(v["strong_share"] for k, v in new.items() if k[0] == "mf" and k[2] == MODEL) > 0
    # A threshold given twice is estimated once, as if given once (its samples not counted
    # twice); a NULL threshold sends nothing cheap.
    cols, rows = store.query_table(
        "SELECT threshold, samples, quality, strong_share FROM savings_at([0.5, NULL, 0.5]) "
        "WHERE router = $r AND model = $m ORDER BY threshold NULLS LAST",
        {"r": ROUTER, "m": MODEL})
    once = new[(ROUTER, 0.5, MODEL)]
    assert rows[0] == (0.5, once["samples"], once["quality"], once["strong_share"])
    assert len(rows) == 2 and rows[1][0] is None and rows[1][3] == pytest.approx(1.0)
    # The binary search over the thresholds takes up to 1023 distinct ones, and says so.
    grid = [i / 1022 for i in range(1023)]
    cols, rows = store.query_table("SELECT threshold, quality, strong_share FROM savings_at($t) "
                                   "WHERE router = $r AND model = $m AND threshold IN (0.0, 1.0)",
                                   {"t": grid, "r": ROUTER, "m": MODEL})
    ends = {r[0]: r for r in rows}
    assert ends[0.0][2] == pytest.approx(1.0) and ends[1.0] == pytest.approx(
        (1.0, new[(ROUTER, 1.0, MODEL)]["quality"], new[(ROUTER, 1.0, MODEL)]["strong_share"]))
    with pytest.raises(duckdb.Error, match="at most 1023 distinct thresholds"):
        store.con.execute("SELECT * FROM savings_at($t)", {"t": [*grid, 2.0]}).fetchall()

# -- the per-segment guard ----------------------------------------------------------------------

HIDDEN = {
    "gpt-4o|chat": (20_000, perfect(400)),
    "gpt-4o|code": (20_000, perfect(400, 0.2)),
    # 2.4% of the traffic, 40% of it broken by the cheap model: overall quality still ~0.99.
    "gpt-4o|legal": (1_000, [S(1.0, 0.1)] * 90 + [S(0.0, 0.1)] * 60),
    # Worse still, but too few samples to judge on their own.
    "gpt-4o|tiny": (50, [S(0.0, 0.1)] * 10),
}


def test_one_bad_segment_hidden_in_good_overall_quality_fails_the_gate(store: Store) -> None:
    fill(store, HIDDEN, noise=False)
    out = gate(store, 0.5, min_samples=100)
    assert out["quality_lower"] > 0.98  # type: ignore[operator]
    assert out["reasons"][0].startswith("quality lower bound")  # type: ignore[index]
    assert (out["verdict"], out["exit_code"]) == ("fail", 1)
    assert out["failed_segments"] == ["legal"]
    seg = {g["segment"]: g for g in out["segments"]}  # type: ignore[attr-defined]
    assert set(seg) == {"chat", "code", "legal", "tiny"}
    legal = seg["legal"]
    assert legal["quality"] == pytest.approx(0.6)
    assert legal["quality_upper"] < 0.7 and legal["failed"] and legal["judged"]
    assert (legal["samples"], legal["requests"], legal["min_quality"]) == (150, 1000, 0.95)
    assert f"legal (quality upper bound {legal['quality_upper']:.4f} < 0.95, 150 samples)" \
        in out["reasons"][-1]  # type: ignore[index]
    # Every segment's figures, judged or not; tiny is worse but has 10 samples.
    assert seg["tiny"]["quality"] == pytest.approx(0.0)
    assert not seg["tiny"]["judged"] and not seg["tiny"]["failed"]
    assert seg["chat"]["quality_lower"] < 1.0 and not seg["chat"]["failed"]
    for g in seg.values():
        assert {"savings", "savings_lower", "savings_upper", "strong_share",
                "projected_usd_saved"} <= g.keys()
    # The figures are the segment's own: as if only its strata existed.
    alone = expected({"gpt-4o|legal": HIDDEN["gpt-4o|legal"]}, 0.5)
    assert legal["quality_upper"] == pytest.approx(alone["quality_upper"])
    assert legal["savings"] == pytest.approx(alone["savings"])


def test_segment_bars_sample_floor_and_model(store: Store) -> None:
    fill(store, HIDDEN, noise=False)
    # A lower bar of its own for legal: nothing fails any more.
    out = gate(store, 0.5, min_samples=100, segment_min_quality={"legal": 0.5})
    assert (out["verdict"], out["failed_segments"]) == ("pass", [])
    # The guard fails on evidence only: chat's 400 perfect samples cannot show 0.999, but
    # nothing shows chat below it either (its upper bound is 1).
    out = gate(store, 0.5, min_samples=100, segment_min_quality={"legal": 0.5, "chat": 0.999})
    assert out["failed_segments"] == []
    assert out["segments"][0]["min_quality"] == 0.999  # type: ignore[index]
    out = gate(store, 0.5, min_samples=100, segment_min_quality={"legal": 0.7})
    assert out["failed_segments"] == ["legal"]
    # Judge small segments too: tiny fails as well.
    out = gate(store, 0.5, min_samples=100, min_segment_samples=10)
    assert out["failed_segments"] == ["legal", "tiny"]
    out = gate(store, 0.5, min_samples=100, segment_by_model=True)
    assert out["failed_segments"] == ["gpt-4o|legal"]
    # The bootstrap judges segments as well.
    out = gate(store, 0.5, min_samples=100, interval="bootstrap", replicates=500)
    assert (out["verdict"], out["failed_segments"]) == ("fail", ["legal"])


def test_segment_guard_from_the_cli(tmp_path: Path) -> None:
    from tests.support.process import cli

    db = tmp_path / "seg.duckdb"
    s = Store(db)
    fill(s, HIDDEN, noise=False)
    s.close()
    base = ("gate", "--router", ROUTER, "--threshold", "0.5", "--model", MODEL,
            "--min-samples", "100", "--db", str(db))
    r = cli(*base)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["failed_segments"] == ["legal"]
    r = cli(*base, "--segment-bar", "legal=0.5")
    assert r.returncode == 0, r.stderr
    r = cli(*base, "--segment-bar", "legal")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "shadowroute: --segment-bar: 'legal' is not SEGMENT=QUALITY"
