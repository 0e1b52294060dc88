"""The `window_savings` view and `window_savings_at` macro on a real DuckDB file: estimates per
hour and per day of production time, checked against a hand computation, the interval
formulas (analytics.intervals.analytic) and the gate's --window figures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from analytics.gate import GateRequest, evaluate
from analytics.intervals import StratifiedSample, analytic
from analytics.store import Store

ROUTER, MODEL, SCORER = "rules", "cheap", "exact_match"
DAY1, DAY2 = datetime(2026, 11, 1), datetime(2026, 11, 2)
H10, H11, H09 = (datetime(2026, 11, 1, 10), datetime(2026, 11, 1, 11),
                 datetime(2026, 11, 2, 9))
CHAT, CODE = "gpt-4o|chat", "gpt-4o|code"
# request id -> (stratum, production time, frontier cost); eligible.
REQUESTS = {
    "c1": (CHAT, "2026-11-01 10:05", 0.01), "c2": (CHAT, "2026-11-01 10:20", 0.01),
    "c3": (CHAT, "2026-11-01 10:30", 0.01), "c4": (CHAT, "2026-11-01 10:59", 0.01),
    "k1": (CODE, "2026-11-01 10:10", 0.02), "k2": (CODE, "2026-11-01 10:40", 0.02),
    "c5": (CHAT, "2026-11-01 11:00", 0.01), "c6": (CHAT, "2026-11-01 11:30", 0.01),
    "c7": (CHAT, "2026-11-02 09:01", 0.01), "c8": (CHAT, "2026-11-02 09:02", 0.01),
    "c9": (CHAT, "2026-11-02 09:03", 0.01), "k3": (CODE, "2026-11-02 09:04", 0.02),
}
# completed samples: id -> (cheap answer's quality, router score); the cheap call costs cf / 10.
SAMPLES = {"c1": (1.0, 0.2), "c2": (0.0, 0.8), "k1": (0.5, 0.1), "c5": (1.0, 0.3),
           "c7": (1.0, 0.1), "c8": (0.5, 0.4), "k3": (0.0, 0.9)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "windows.duckdb")
    con = s.con
    for rid, (stratum, ts, cost) in REQUESTS.items():
        con.execute("INSERT INTO requests (request_id, ts, stratum, eligible, sampled, cost_usd) "
                    "VALUES ($1, $2::TIMESTAMP, $3, true, $4, $5)",
                    [rid, ts, stratum, rid in SAMPLES, cost])
    # Left out of every window: an eligible request without a time (even when it is a completed
    # sample) and an ineligible request.
    con.execute("INSERT INTO requests (request_id, ts, stratum, eligible, sampled, cost_usd) "
                "VALUES ('x1', NULL, $1, true, true, 0.01), "
                "('x2', '2026-11-01 10:00'::TIMESTAMP, $1, false, false, 0.5)", [CHAT])
    for sid, (q, score) in [*SAMPLES.items(), ("x1", (0.0, 0.0))]:
        stratum, cf = (CHAT, 0.01) if sid == "x1" else (REQUESTS[sid][0], REQUESTS[sid][2])
        con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, scorer, "
                    "frontier_cost_usd, status) VALUES ($1, $2, 'gpt-4o', $3, $4, 'done')",
                    [sid, stratum, SCORER, cf])
        con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) "
                    "VALUES ($1, $2, 'a', $3)", [sid, MODEL, cf / 10])
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES ($1, $2, $3, $4)",
                    [sid, MODEL, SCORER, q])
        con.execute("INSERT INTO router_scores (sample_id, router, score) VALUES ($1, $2, $3)",
                    [sid, ROUTER, score])
    yield s
    s.close()


def rows(store: Store, query: str, params: dict[str, Any] | None = None
         ) -> list[dict[str, Any]]:
    cols, rs = store.query_table(query, params)
    return [dict(zip(cols, r, strict=True)) for r in rs]


def test_daily_figures_by_hand(store: Store) -> None:
    got = {(r["window_start"], r["router"]): r for r in rows(
        store, "SELECT * FROM window_savings WHERE width = 'day' AND model = $m "
               "AND (threshold = 0.5 OR threshold IS NULL)", {"m": MODEL})}
    assert {w for w, _ in got} == {DAY1, DAY2}
    # Day 1 at 0.5: chat (N 6) samples c1 cheap q 1, c2 strong, c5 cheap q 1: loss 0, strong 1/3,
    # routed cost mean (0.001 + 0.01 + 0.001) / 3; code (N 2) k1 cheap q 0.5: loss 0.5.
    d1 = got[(DAY1, ROUTER)]
    assert (d1["requests"], d1["samples"], d1["strata"]) == (8, 4, 2)
    assert d1["quality"] == pytest.approx(1 - (6 / 8 * 0 + 2 / 8 * 0.5))          # 0.875
    assert d1["strong_share"] == pytest.approx(6 / 8 * (1 / 3))                   # 0.25
    routed, frontier = 6 * 0.012 / 3 + 2 * 0.002, 6 * 0.01 + 2 * 0.02             # 0.028, 0.1
    assert d1["savings"] == pytest.approx(1 - routed / frontier)                 # 0.72
    # The day's frontier spend is known exactly from its requests (x2 is ineligible).
    assert d1["frontier_usd_exact"] and d1["frontier_usd"] == pytest.approx(0.10)
    assert d1["projected_usd_saved"] == pytest.approx(0.72 * 0.10)
    # Day 2: chat (N 3) c7 cheap q 1, c8 cheap q 0.5: loss 0.25; code (N 1) k3 strong.
    d2 = got[(DAY2, ROUTER)]
    assert (d2["requests"], d2["samples"], d2["strata"]) == (4, 3, 2)
    assert d2["quality"] == pytest.approx(1 - 3 / 4 * 0.25)                       # 0.8125
    assert d2["strong_share"] == pytest.approx(1 / 4)
    assert d2["savings"] == pytest.approx(1 - (3 * 0.001 + 0.02) / (3 * 0.01 + 0.02))  # 0.54
    assert d2["projected_usd_saved"] == pytest.approx(0.54 * 0.05)
    # all_cheap on day 1 (threshold NULL): chat losses [0, 1, 0], code 0.5, every call cheap.
    a1 = got[(DAY1, "all_cheap")]
    assert a1["threshold"] is None
    assert a1["quality"] == pytest.approx(1 - (6 / 8 * (1 / 3) + 2 / 8 * 0.5))   # 0.625
    assert a1["savings"] == pytest.approx(1 - (6 * 0.001 + 2 * 0.002) / 0.1)     # 0.9
    assert a1["strong_share"] == pytest.approx(0.0)


def test_hourly_figures_by_hand(store: Store) -> None:
    got = {r["window_start"]: r for r in rows(
        store, "SELECT * FROM window_savings WHERE width = 'hour' AND router = $r AND model = $m "
               "AND threshold = 0.5", {"r": ROUTER, "m": MODEL})}
    assert sorted(got) == [H10, H11, H09]
    # 10:00: chat (N 4) c1 cheap q 1, c2 strong; code (N 2) k1 cheap q 0.5.
    assert got[H10]["quality"] == pytest.approx(1 - 2 / 6 * 0.5)
    assert got[H10]["strong_share"] == pytest.approx(4 / 6 * 0.5)
    assert got[H10]["savings"] == pytest.approx(1 - (4 * 0.0055 + 2 * 0.002) / 0.08)   # 0.675
    # 11:00: chat (N 2) c5 cheap q 1.
    assert (got[H11]["requests"], got[H11]["samples"]) == (2, 1)
    assert got[H11]["quality"] == pytest.approx(1.0)
    assert got[H11]["savings"] == pytest.approx(0.9)
    # A perfect window of one sample is not a certainty: its lower bound is below 1.
    assert got[H11]["quality_lower"] < 0.9
    # 09:00 on day 2 holds all of day 2.
    assert got[H09]["quality"] == pytest.approx(0.8125)


def window_sample(window: dict[str, tuple[str, str, float]], threshold: float
                  ) -> StratifiedSample:
    """The completed samples of a window's requests, N_h and exact spend from those requests."""
    strata = sorted({h for h, _, _ in window.values()})
    ids = [i for i in window if i in SAMPLES]
    cf = np.array([REQUESTS[i][2] for i in ids])
    return StratifiedSample.build(
        np.array([strata.index(REQUESTS[i][0]) for i in ids]),
        np.array([sum(v[0] == h for v in window.values()) for h in strata], dtype=float),
        np.array([SAMPLES[i][0] for i in ids]), cf, cf / 10,
        np.array([SAMPLES[i][1] < threshold for i in ids]),
        np.array([sum(c for s, _, c in window.values() if s == h) for h in strata]))


@pytest.mark.parametrize("z", [NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.95)])
def test_bounds_are_the_interval_formulas(store: Store, z: float) -> None:
    # Day 2 alone: its strata, N_h and exact spend are those of day 2's requests.
    (got,) = rows(store, "SELECT * FROM window_savings_at('day', [0.5], z := $z) "
                         "WHERE router = $r AND model = $m AND window_start = $w",
                  {"z": z, "r": ROUTER, "m": MODEL, "w": DAY2})
    s = window_sample({k: v for k, v in REQUESTS.items() if v[1].startswith("2026-11-02")}, 0.5)
    assert list(s.big_n) == [3, 1] and float(s.frontier_usd.sum()) == pytest.approx(0.05)
    iv = analytic(s, level=2 * NormalDist().cdf(z) - 1)
    for k in ("quality", "savings", "strong_share", "projected_usd_saved"):
        assert (got[f"{k}_lower"], got[f"{k}_upper"]) == pytest.approx(iv[k], abs=1e-7), k


def test_the_gate_judges_the_same_windows(store: Store) -> None:
    verdict = evaluate(store.query_table, GateRequest(router=ROUTER, threshold=0.5, model=MODEL,
                                                      min_samples=1, window="day"))
    view = {r["window_start"].isoformat(): r for r in rows(
        store, "SELECT * FROM window_savings_at('day', [0.5], z := $z) "
               "WHERE router = $r AND model = $m", {"z": NormalDist().inv_cdf(0.95), "r": ROUTER,
                                                    "m": MODEL})}
    assert [w["window"] for w in verdict["windows"]] == sorted(view)
    for w in verdict["windows"]:
        v = view[w["window"]]
        for k in ("samples", "requests", "quality", "quality_lower", "quality_upper", "savings",
                  "savings_lower", "savings_upper", "strong_share", "projected_usd_saved"):
            assert v[k] == pytest.approx(w[k], abs=1e-7), (w["window"], k)
