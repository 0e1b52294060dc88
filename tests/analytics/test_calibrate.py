"""shadowroute calibrate: a threshold chosen on the samples up to a cutoff by its quality lower
bound, verified out-of-time on the samples after it; the gate uses it by name."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from analytics.calibrate import GRID, calibrate
from analytics.gate import GateRequest, evaluate
from analytics.store import Store
from tests.analytics.test_gate import MODEL, ROUTER, S, fill

BASE = dt.datetime(2026, 1, 1)
N_SAMPLES = 1600
CUTOFF = BASE + dt.timedelta(minutes=N_SAMPLES // 2 - 1)  # the first half of the samples


def traffic(drift: bool) -> dict[str, tuple[int, list[S]]]:
    """Easy requests (score < 0.6) the cheap model gets right; hard ones it gets right half the
    time. With drift, after the cutoff a third of the easy-looking ones from 0.3 up go wrong."""
    rng = np.random.default_rng(7)
    samples = []
    for i in range(N_SAMPLES):
        score = float(rng.uniform())
        ok = score < 0.6 or rng.uniform() < 0.5
        if drift and i >= N_SAMPLES // 2 and 0.3 <= score < 0.6 and rng.uniform() < 1 / 3:
            ok = False
        samples.append(S(1.0 if ok else 0.0, score))
    return {"gpt-4o|a": (4 * N_SAMPLES, samples)}


def with_times(store: Store) -> None:
    # Sample i was made at minute i; the unsampled requests spread over the same time.
    store.con.execute("UPDATE requests SET ts = $b + to_minutes("
                      "CAST(regexp_extract(request_id, '([0-9]+)$', 1) AS BIGINT) % $n)",
                      {"b": BASE, "n": N_SAMPLES})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "cal.duckdb")
    yield s
    s.close()


def test_chosen_by_the_lower_bound_and_verified_out_of_time(store: Store) -> None:
    fill(store, traffic(drift=False), noise=False)
    with_times(store)
    out = calibrate(store.query_table, ROUTER, MODEL, 0.95, CUTOFF, min_samples=100)
    assert (out["calibration_samples"], out["verification_samples"]) == (800, 800)
    t = out["threshold"]
    assert 0.55 <= t <= 0.75
    cal = out["calibration"]
    assert cal["quality_lower"] >= 0.95 and cal["samples"] == 800
    # The largest savings meeting the target: the next threshold's lower bound misses it
    # (savings grow with the threshold here).
    nxt = calibrate(store.query_table, ROUTER, MODEL, 0.95, CUTOFF, min_samples=100,
                    grid=[round(t + 0.01, 2)])
    assert nxt["threshold"] is None
    assert "no threshold's quality lower bound meets the target" in nxt["reason"]
    # The point estimate alone would have chosen a larger threshold.
    assert cal["quality"] > cal["quality_lower"]
    # Chosen at the edge of the target, the same threshold on as many new samples is not
    # shown worse; whether its own lower bound clears the bar again is a coin toss.
    assert out["verified"] in ("pass", "inconclusive")
    assert out["verification"]["quality_upper"] >= 0.95
    assert out["verification"]["samples"] == 800
    assert out["until"] == CUTOFF.isoformat()


def test_drift_after_the_cutoff_is_not_verified(store: Store) -> None:
    fill(store, traffic(drift=True), noise=False)
    with_times(store)
    out = calibrate(store.query_table, ROUTER, MODEL, 0.95, CUTOFF, min_samples=100)
    assert out["calibration"]["quality_lower"] >= 0.95
    assert out["verified"] == "fail"
    assert out["verification"]["quality_upper"] < 0.95
    # Without a cutoff: 70% of the samples to choose on.
    out = calibrate(store.query_table, ROUTER, MODEL, 0.95, min_samples=100)
    assert out["calibration_samples"] == 1120 and out["until"] is not None


def test_the_gate_uses_a_saved_calibration(tmp_path: Path) -> None:
    from tests.support.process import cli

    db = tmp_path / "cal.duckdb"
    s = Store(db)
    fill(s, traffic(drift=False), noise=False)
    with_times(s)
    s.close()
    r = cli("calibrate", "--router", ROUTER, "--model", MODEL, "--target", "0.95",
            "--until", CUTOFF.isoformat(), "--min-samples", "100", "--save", "rules95",
            "--db", str(db))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["saved_as"] == "rules95" and Path(out["saved_to"]).exists()
    r = cli("gate", "--calibration", "rules95", "--min-samples", "100", "--db", str(db))
    assert r.returncode in (0, 2), r.stderr
    verdict = json.loads(r.stdout)
    assert (verdict["router"], verdict["model"], verdict["threshold"], verdict["min_quality"]) \
        == (ROUTER, MODEL, out["threshold"], 0.95)
    s = Store(db, read_only=True)
    try:
        assert verdict == evaluate(s.query_table, GateRequest(
            ROUTER, out["threshold"], MODEL, min_quality=0.95, min_samples=100))
    finally:
        s.close()
    r = cli("gate", "--calibration", "nope", "--db", str(db))
    assert r.returncode == 1
    assert r.stderr.startswith("shadowroute: --calibration: no calibration named 'nope'")
    r = cli("gate", "--db", str(db))
    assert r.returncode == 1 and "--router, --threshold and --model" in r.stderr
    assert GRID[0] == 0.0 and GRID[-1] == 1.0
