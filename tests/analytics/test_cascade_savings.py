"""Cascades in the savings estimates, on a real DuckDB file: cost (cheap + frontier when
escalated), quality (the cheap score when kept, 1 when escalated), escalation share and latency,
each checked against arithmetic done here."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics.store import Store

# stratum -> (eligible requests N_h, frontier cost each, samples: (q, c^m, accept, lat_m, lat_f))
DATA = {
    "gpt-4o|a": (100, 0.01, [(1.0, 0.001, 0.9, 200.0, 900.0), (0.0, 0.001, 0.2, 250.0, 1000.0),
                             (0.5, 0.002, 0.7, 300.0, 800.0), (1.0, 0.001, 0.4, 220.0, 950.0)]),
    "gpt-4o|b": (50, 0.02, [(0.0, 0.003, 0.8, 400.0, 1500.0), (1.0, 0.002, 0.1, 350.0, 1200.0)]),
}


def fill(store: Store) -> None:
    con = store.con
    for stratum, (big_n, cf, samples) in DATA.items():
        for i in range(big_n):
            rid = f"{stratum}-{i}"
            lat_f = samples[i][4] if i < len(samples) else 1000.0
            con.execute("INSERT INTO requests (request_id, model, stratum, eligible, sampled, "
                        "sample_rate, cost_usd, latency_ms) VALUES (?, 'gpt-4o', ?, true, ?, 0.1, "
                        "?, ?)", [rid, stratum, i < len(samples), cf, lat_f])
        for i, (q, cm, accept, lat_m, _) in enumerate(samples):
            rid = f"{stratum}-{i}"
            con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, scorer, "
                        "frontier_cost_usd, status) VALUES (?, ?, 'gpt-4o', 'exact_match', ?, "
                        "'done')", [rid, stratum, cf])
            con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd, latency_ms)"
                        " VALUES (?, 'mini', 'a', ?, ?)", [rid, cm, lat_m])
            con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES "
                        "(?, 'mini', 'exact_match', ?)", [rid, q])
            con.execute("INSERT INTO cascade_scores VALUES (?, 'frugal', 'mini', ?)",
                        [rid, accept])


def expected(t: float) -> dict[str, float]:
    total_n = sum(n for n, _, _ in DATA.values())
    quality = cost = frontier = escalated = latency = 0.0
    exact = 0.0
    for big_n, cf, samples in DATA.values():
        w = big_n / len(samples)
        exact += big_n * cf
        for q, cm, accept, lat_m, lat_f in samples:
            kept = 1.0 - accept < t
            quality += w * (q if kept else 1.0)
            cost += w * (cm if kept else cm + cf)
            frontier += w * cf
            escalated += w * (0.0 if kept else 1.0)
            latency += w * (lat_m if kept else lat_m + lat_f)
    ratio = cost / frontier
    return {"quality": quality / total_n, "savings": 1 - ratio,
            "strong_share": escalated / total_n, "projected_usd_saved": (1 - ratio) * exact,
            "latency_ms": latency / total_n}


@pytest.mark.parametrize("t", [0.0, 0.35, 0.5, 0.75, 1.0])
def test_cascade_estimates(tmp_path: Path, t: float) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        ((quality, savings, strong, saved, lo, hi),) = store.fetch(
            "SELECT quality, savings, strong_share, projected_usd_saved, quality_lower, "
            "quality_upper FROM savings_at([$t]) WHERE router = 'frugal' AND model = 'mini'",
            {"t": t})
        if t in (0.0, 0.5, 1.0):  # on the view's grid
            ((lat,),) = store.fetch("SELECT latency_ms FROM cascade_latency WHERE cascade = "
                                    "'frugal' AND threshold = $t", {"t": t})
            assert lat == pytest.approx(expected(t)["latency_ms"])
        # The savings view lists it beside the routers.
        assert store.fetch("SELECT count(*) FROM savings WHERE router = 'frugal'") == [(21,)]
    finally:
        store.close()
    e = expected(t)
    assert quality == pytest.approx(e["quality"])
    assert savings == pytest.approx(e["savings"])
    assert strong == pytest.approx(e["strong_share"])
    assert saved == pytest.approx(e["projected_usd_saved"])
    assert lo <= quality <= hi


def test_an_all_escalating_cascade_costs_more_than_the_frontier(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        ((quality, savings),) = store.fetch(
            "SELECT quality, savings FROM savings_at([0.0]) WHERE router = 'frugal'")
    finally:
        store.close()
    # Nothing kept: every request paid twice, at the frontier's quality.
    assert quality == 1.0 and savings < 0


@pytest.mark.parametrize("usd_per_call", [0.0, 0.0005])
def test_a_routers_own_cost_enters_the_estimates(tmp_path: Path, usd_per_call: float) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        # A router routing as the cascade decides (score 1 - accept), at a price per call.
        store.con.execute("INSERT INTO router_scores (sample_id, router, score) "
                          "SELECT sample_id, 'priced', 1 - accept FROM cascade_scores")
        store.set_router_costs([("priced", "http", usd_per_call)])
        ((savings, saved),) = store.fetch(
            "SELECT savings, projected_usd_saved FROM savings_at([0.5]) WHERE router = 'priced'")
        store.con.execute("INSERT INTO router_calls (sample_id, router, latency_ms) "
                          "VALUES ('x', 'priced', 12.0), ('y', 'priced', 30.0)")
        overhead = store.fetch("SELECT router, calls, usd_per_call FROM router_overhead")
    finally:
        store.close()
    cost = frontier = exact = 0.0
    for big_n, cf, samples in DATA.values():
        w = big_n / len(samples)
        exact += big_n * cf
        for _, cm, accept, _, _ in samples:
            cost += w * ((cm if 1 - accept < 0.5 else cf) + usd_per_call)
            frontier += w * cf
    assert savings == pytest.approx(1 - cost / frontier)
    assert saved == pytest.approx((1 - cost / frontier) * exact)
    assert overhead == [("priced", 2, usd_per_call)]
