"""analytics.store.Store on a real DuckDB file: what the restarted shadow budget is seeded with."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics.store import Store


def test_a_killed_runs_unwritten_spend_seeds_the_budget(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        lease = "INSERT INTO budget_leases VALUES (?, current_timestamp::TIMESTAMP - ?::INTERVAL, ?)"
        call = ("INSERT INTO shadow_calls (sample_id, model, spend_usd, called_at) "
                "VALUES (?, 'cheap', ?, current_timestamp::TIMESTAMP - ?::INTERVAL)")
        # Run A, killed: leased $0.50 and wrote $0.10 of results.
        store.con.execute(lease, ["a", "50 minutes", 300_000_000])
        store.con.execute(lease, ["a", "45 minutes", 200_000_000])
        store.con.execute(call, ["s1", 0.10, "44 minutes"])
        # Run B, stopped cleanly: leased $0.30, gave $0.10 back, wrote $0.20.
        store.con.execute(lease, ["b", "30 minutes", 300_000_000])
        store.con.execute(call, ["s2", 0.20, "29 minutes"])
        store.con.execute(lease, ["b", "20 minutes", -100_000_000])
        # Run C, killed two days ago: outside the day's window.
        store.con.execute(lease, ["c", "2 days", 900_000_000])
        spend = store.recent_shadow_spend()
        written = sorted(u for a, u in spend if a > 0)
        assert written == pytest.approx([0.10, 0.20])
        assert [u for a, u in spend if a == 0] == pytest.approx([0.40])  # A's unwritten $0.40
    finally:
        store.close()


def test_pending_samples_leave_out_those_in_flight(tmp_path: Path) -> None:
    from tests.shadow.test_runner import add_samples
    store = Store(tmp_path / "s.duckdb")
    try:
        ids = add_samples(store, 30)
        got = [p.sample_id for p in store.pending_samples(5)]
        assert got == ids[:5]  # the oldest first
        # In flight: the first ten and two further on; the next five that are not.
        flying = [*ids[:10], ids[11], ids[13]]
        got = [p.sample_id for p in store.pending_samples(5, flying)]
        assert got == [ids[10], ids[12], *ids[14:17]]
        assert len(store.pending_samples(100, flying)) == 30 - len(flying)
        assert store.pending_samples(5, ids) == []
    finally:
        store.close()


def test_a_read_of_pending_samples_that_stops_early_leaves_the_writer_usable(
        tmp_path: Path) -> None:
    # 128 wanted with 10 in flight further on: the first chunk of 128 rows is enough and the
    # last 10 rows are never read. After a kill -9 the restarted service met exactly this (a
    # backlog of pending samples) and its next write failed ("unfinished result").
    from tests.analytics.test_store_process import done
    from tests.shadow.test_runner import add_samples
    store = Store(tmp_path / "s.duckdb")
    try:
        ids = add_samples(store, 300)
        store.prepare_writer(1)
        assert [p.sample_id for p in store.pending_samples(128, ids[200:210])] == ids[:128]
        store.write_sample_results([done(ids[0])])
        assert store.counts()["done"] == 1
    finally:
        store.close()
