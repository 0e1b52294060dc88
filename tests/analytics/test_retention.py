"""Retention on a real DuckDB file: requests past the horizon are rolled up per hour and
deleted, and every estimate over old windows is identical before and after; texts are cleared
with their figures kept; repeated purges keep the file from growing."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sql
from analytics.calibrate import calibrate
from analytics.gate import GateRequest, evaluate
from analytics.store import Store

T0 = datetime(2026, 5, 1)
HORIZON = T0 + timedelta(days=6, hours=5, minutes=30)  # mid-hour: that hour is split


def fill(store: Store, n: int = 1500, seed: int = 5) -> None:
    rng = random.Random(seed)
    con = store.con
    for i in range(n):
        tag = rng.choice(["chat", "code", "legal"])
        rid, ts = f"r{i}", T0 + timedelta(minutes=9.6 * i + rng.random())  # 10 days
        eligible = rng.random() < 0.9
        sampled = eligible and rng.random() < 0.25
        con.execute(
            "INSERT INTO requests (request_id, ts, model, stratum, eligible, ineligible_reason, "
            "sampled, sample_rate, cost_usd, input_tokens, output_tokens, latency_ms) "
            "VALUES (?, ?, 'gpt-4o', ?, ?, ?, ?, 0.25, ?, 500, 90, ?)",
            [rid, ts, f"gpt-4o|{tag}", eligible, None if eligible else "tools offered", sampled,
             None if rng.random() < 0.01 else 0.01 + 0.002 * (i % 5), 300 + i % 700])
        if not sampled:
            continue
        con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, messages, "
                    "response_text, scorer, frontier_cost_usd, status) VALUES (?, ?, 'gpt-4o', "
                    "'[{\"role\": \"user\", \"content\": \"q\"}]', 'a', 'exact_match', ?, 'done')",
                    [rid, f"gpt-4o|{tag}", 0.01 + 0.002 * (i % 5)])
        q = float(rng.random() < {"chat": 0.9, "code": 0.5, "legal": 0.75}[tag])
        con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) VALUES "
                    "(?, 'mini', 'x', ?)", [rid, 0.001 * (1 + i % 3)])
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES "
                    "(?, 'mini', 'exact_match', ?)", [rid, q])
        con.execute("INSERT INTO router_scores (sample_id, router, score) VALUES (?, 'r', ?)",
                    [rid, rng.random()])
    con.execute("INSERT INTO rejected (topic, reason, raw, rejected_at) VALUES "
                "('t', 'bad', 'xx'::BLOB, TIMESTAMP '2026-05-02')")


QUERIES = [
    "SELECT * EXCLUDE (quality_se) FROM savings ORDER BY router, threshold, model",
    "SELECT * FROM segment_savings ORDER BY router, threshold, model, segment",
    "SELECT * FROM window_savings_at('day', [0.3, 0.6]) ORDER BY router, threshold, model, "
    "window_start",
    "SELECT * FROM window_savings_at('hour', [0.5]) ORDER BY router, threshold, model, "
    "window_start",
    "SELECT * FROM strata ORDER BY stratum, model",
    "SELECT * FROM stratum_frontier ORDER BY stratum",
    sql.query("report_daily"),
    sql.query("report_ineligible"),
    "SELECT model, segment, requests, cost_usd, input_tokens, output_tokens, eligible, sampled "
    "FROM (" + sql.query("report_traffic").rstrip(";") + ") ORDER BY segment",
    "SELECT requests FROM (" + sql.query("counts").rstrip(";") + ")",  # noqa: S608
]


def figures(store: Store) -> list[Any]:
    out: list[Any] = [store.fetch(q) for q in QUERIES]
    for window in (None, "day"):
        req = GateRequest("r", 0.5, "mini", min_quality=0.7, min_samples=10, window=window)
        v = evaluate(store.query_table, req)
        out.append({k: v.get(k) for k in ("verdict", "quality", "quality_lower", "savings",
                                          "savings_upper", "requests", "windows")})
    # a cutoff on the hour (an hour rolled up counts as before when it ends by the cutoff)
    out.append(calibrate(store.query_table, "r", "mini", 0.7,
                         until=T0 + timedelta(days=5, hours=13), min_samples=10))
    return out


def same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_estimates_over_old_windows_stay_what_they_were(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        before = figures(store)
        detail0 = store.fetch("SELECT count(*) FROM requests")[0][0]
        old = store.fetch("SELECT count(*) FROM requests WHERE ts < $h AND NOT sampled",
                          {"h": HORIZON})[0][0]
        rolled, _, more = store.apply_retention(HORIZON, None, max_hours=24)
        assert rolled > 0 and more  # 24 hours a call: six days need more calls
        while more:
            r, _, more = store.apply_retention(HORIZON, None, max_hours=24)
            rolled += r
        assert rolled == old > 400
        after = figures(store)
        # what is left: the sampled requests and everything from the horizon on
        assert store.fetch("SELECT count(*) FROM requests")[0][0] == detail0 - old
        assert store.fetch("SELECT count(*) FROM requests WHERE ts < $h AND NOT sampled",
                           {"h": HORIZON}) == [(0,)]
        assert store.apply_retention(HORIZON, None) == (0, 0, False)  # nothing more to do
    finally:
        store.close()
    for i, (a, b) in enumerate(zip(after, before, strict=True)):
        same(a, b, f"figure {i}")


def test_texts_are_cleared_with_their_figures_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        before = store.fetch(QUERIES[0])
        rows_before = len(store.learned_rows("mini"))
        _, cleared, _ = store.apply_retention(None, {"texts": HORIZON})
        assert cleared > 100
        assert store.fetch("SELECT count(*) FROM rejected WHERE raw IS NULL") == [(0,)]
        assert store.apply_retention(None, {"rejected": HORIZON}) == (0, 1, False)
        assert store.fetch(
            "SELECT count(*) FROM samples s JOIN requests r ON r.request_id = s.sample_id "
            "WHERE r.ts < $h AND (s.messages IS NOT NULL OR s.response_text IS NOT NULL)",
            {"h": HORIZON}) == [(0,)]
        assert store.fetch("SELECT count(*) FROM shadow_calls WHERE answer IS NULL")[0][0] > 0
        assert store.fetch("SELECT count(*) FROM rejected WHERE raw IS NULL") == [(1,)]
        same(store.fetch(QUERIES[0]), before)
        # a learned router trains only on samples that still have their prompt
        assert 0 < len(store.learned_rows("mini")) < rows_before
    finally:
        store.close()


def test_repeated_purges_keep_the_file_from_growing(tmp_path: Path) -> None:
    """Six of eight days purged: the file shrinks after CHECKPOINT (by less than the rows: the
    primary key's index keeps much of its size). Then a day in, the oldest day out, again and
    again: DuckDB reuses the freed blocks, the file stays flat."""
    path = tmp_path / "s.duckdb"
    store = Store(path)
    day = 40_000

    def ingest(d: int) -> None:
        store.con.execute(
            "INSERT INTO requests (request_id, ts, model, stratum, eligible, sampled, cost_usd, "
            "tags, prompt_hash) SELECT 'r' || i, $t0 + to_seconds((i * 86400 // $day)::BIGINT), "
            "'gpt-4o', 'gpt-4o|' || (i % 7), true, false, 0.01, "
            "'{\"feature\": \"' || (i % 7) || '\"}', md5(i::VARCHAR) "
            "FROM range($lo, $hi) t(i)",
            {"t0": T0, "day": day, "lo": d * day, "hi": (d + 1) * day})

    def size() -> int:
        store.con.execute("CHECKPOINT")
        return path.stat().st_size

    try:
        for d in range(8):
            ingest(d)
        full = size()
        more = True
        while more:  # six of the eight days out: the file shrinks (the key index less so)
            _, _, more = store.apply_retention(T0 + timedelta(days=6), None, max_hours=48)
        assert size() < full * 0.95
        store.con.execute("DELETE FROM requests; DELETE FROM request_rollups")
        for d in range(3):
            ingest(d)
        sizes = []
        for d in range(3, 9):
            ingest(d)
            more = True
            while more:  # keep three days of detail
                _, _, more = store.apply_retention(T0 + timedelta(days=d - 2), None,
                                                   max_hours=48)
            sizes.append(size())
        assert store.fetch("SELECT count(*) FROM requests") == [(3 * day,)]
        assert store.fetch("SELECT sum(requests) FROM request_rollups") == [(6 * day,)]
    finally:
        store.close()
    assert max(sizes[2:]) <= sizes[1] * 1.15, sizes  # flat after the first purges
