"""`shadowroute plan`: the expected shadow spend from the observed traffic, the sampling rates
and the prices, beside the caps, on a real DuckDB file; figures computed here by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics.plan import StratumTraffic, plan
from analytics.store import Store
from consumers.sampling import Sampler
from shadow.config import JudgeConfig, ModelConfig, NoiseFloorConfig

ROOT = Path(__file__).resolve().parents[2]
MINI = ModelConfig(name="mini", base_url="http://x", input_per_mtok=0.15, output_per_mtok=0.6,
                   max_tokens=100)


def test_plan_arithmetic() -> None:
    # 7,200 eligible requests in 2 hours of math: 3,600/h; sampled at 10%: 360/h.
    t = [StratumTraffic("gpt-4o|math", 7200, 1000.0, 300.0, 0.01, 7200.0),
         StratumTraffic("gpt-4o|chat", 360, 2000.0, 50.0, 0.02, 7200.0)]
    sampler = Sampler(0.5, {"gpt-4o|math": 0.1}, "s")
    out = plan(t, sampler, [MINI], NoiseFloorConfig(share=0.1, models=(MINI.__class__(
        name="gpt-4o", base_url="http://f"),)), usd_per_hour=1.0, usd_per_day=5.0)
    math_h, chat_h = 360.0, 180 * 0.5
    exp = (math_h * (1000 * 0.15 + 100 * 0.6) + chat_h * (2000 * 0.15 + 50 * 0.6)) / 1e6
    res = (math_h * (1000 * 0.15 + 100 * 0.6) + chat_h * (2000 * 0.15 + 100 * 0.6)) / 1e6
    floor = (math_h * 0.1 * 0.01 + chat_h * 0.1 * 0.02)
    assert out["samples_per_hour"] == pytest.approx(math_h + chat_h)
    (m,) = out["models"]
    assert m["expected_usd_per_hour"] == pytest.approx(exp)
    assert m["reserved_usd_per_hour"] == pytest.approx(res)
    assert out["noise_floor_usd_per_hour"] == pytest.approx(floor)
    assert out["expected_usd_per_day"] == pytest.approx((exp + floor) * 24)
    assert out["hourly"] == "within the cap"  # 0.53 + 0.10 USD/h < 1
    share = 1 - 5.0 / ((exp + floor) * 24)
    assert out["daily"] == f"over the cap: about {share:.0%} of samples would end skipped_budget"


def test_plan_counts_the_judge_where_a_scorer_sends_answers_to_it() -> None:
    t = [StratumTraffic("gpt-4o|support", 3600, 1000.0, 300.0, 0.01, 3600.0),
         StratumTraffic("gpt-4o|math", 3600, 1000.0, 300.0, 0.01, 3600.0)]
    judge = JudgeConfig(model=ModelConfig(name="j", base_url="http://j", input_per_mtok=2.5,
                                          output_per_mtok=10.0, max_tokens=200),
                        mode="both", max_chars=2000)
    out = plan(t, Sampler(0.1, {}, "s"), [MINI], NoiseFloorConfig(), usd_per_hour=10.0,
               usd_per_day=100.0, judge=judge, judged=lambda stratum: stratum.endswith("support"))
    # 360 support samples/h; one cheap answer each, judged 3 times (a grade, two orders); each
    # prompt: 300 template + request (1,000 tokens, cut to 500) + reference 300 + answer 100.
    per_call = ((300 + 500 + 300 + 100) * 2.5 + 200 * 10.0) / 1e6
    assert out["judge_usd_per_hour"] == pytest.approx(360 * 3 * per_call)
    cheap = 720 * (1000 * 0.15 + 100 * 0.6) / 1e6
    assert out["expected_usd_per_hour"] == pytest.approx(cheap + 360 * 3 * per_call)
    assert plan(t, Sampler(0.1, {}, "s"), [MINI], NoiseFloorConfig(), 10.0, 100.0)[
        "judge_usd_per_hour"] == 0.0


def fill(db: Path) -> None:
    store = Store(db)
    try:
        # 240 eligible math requests over the last 2 hours (+ 10 ineligible, 30 from 3 days before).
        store.con.execute("""
            INSERT INTO requests (request_id, ts, model, stratum, eligible, sampled, sample_rate,
                                  input_tokens, output_tokens, cost_usd)
            SELECT 'r' || i, TIMESTAMP '2026-11-30 10:00:00' - to_seconds(i * 30), 'gpt-4o',
                   'gpt-4o|math', i < 240, false, 0.1, 500, 200, 0.003
            FROM range(250) t(i)
            UNION ALL
            SELECT 'old' || i, TIMESTAMP '2026-11-27 10:00:00', 'gpt-4o', 'gpt-4o|math', true,
                   false, 0.1, 500, 200, 0.003
            FROM range(30) t(i)""")
    finally:
        store.close()


def cli(*args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWROUTE_")}
    return subprocess.run([sys.executable, "-m", "shadowroute.cli", "plan", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**env, "SHADOWROUTE_SAMPLING__DEFAULT_RATE": "0.25",
                               "SHADOWROUTE_SHADOW__MODELS__0__NAME": "mini",
                               "SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "http://x",
                               "SHADOWROUTE_SHADOW__MODELS__0__INPUT_PER_MTOK": "0.15",
                               "SHADOWROUTE_SHADOW__MODELS__0__OUTPUT_PER_MTOK": "0.6",
                               "SHADOWROUTE_SHADOW__MODELS__0__MAX_TOKENS": "100",
                               "SHADOWROUTE_SHADOW__BUDGET__USD_PER_HOUR": "0.01"})


def test_plan_reads_the_file_and_says_where_the_caps_stand(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    fill(db)
    r = cli("--db", str(db), "--format", "json", "--hours", "24")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = orjson.loads(r.stdout)
    span_h = 249 * 30 / 3600  # first to last request in the window, eligible or not
    per_hour = 240 / span_h * 0.25
    assert out["samples_per_hour"] == pytest.approx(per_hour)
    (m,) = out["models"]
    assert m["expected_usd_per_hour"] == pytest.approx(per_hour * (500 * 0.15 + 100 * 0.6) / 1e6)
    assert out["cap_usd_per_hour"] == 0.01 and out["hourly"] == "within the cap"
    table = cli("--db", str(db))
    assert table.returncode == 0 and "mini" in table.stdout and "hourly cap: within the cap" \
        in table.stdout
    # The week's window takes the old requests in too: a longer span, a lower rate.
    week = orjson.loads(cli("--db", str(db), "--format", "json", "--hours", "168").stdout)
    assert week["samples_per_hour"] < per_hour


def test_plan_on_an_empty_file_says_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    Store(db).close()
    r = cli("--db", str(db))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"shadowroute: no eligible requests in {db} yet: run the service "
                                "(or replay logs) first")
