"""`Store.user_query`: a person's SQL cannot write or reach beyond the file, in DuckDB itself.

Each layer is checked alone: with the parser check switched off, the engine still refuses (the
check is a second line of defence, never the only one).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import analytics.store as store_module
from analytics.errors import StoreError
from analytics.store import Store

RUNAWAY = "SELECT count(*) FROM range(10000000000000) a, range(1000) b WHERE a.range + b.range < 0"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "s.duckdb")
    st.prepare_writer(1)
    st.fetch("INSERT INTO offsets (topic, partition, next_offset) VALUES ('t', 0, 5)")
    return st


def ask(st: Store, query: str) -> list[tuple[object, ...]]:
    return st.user_query(query, max_rows=100, timeout_s=10).rows


def test_the_engine_refuses_without_the_parser_check(store: Store,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "check_single_select", lambda con, query: None)
    try:
        for query, refusal in [
            ("WITH x AS (DELETE FROM offsets RETURNING *) SELECT count(*) FROM x", "read-only"),
            ("UPDATE offsets SET next_offset = 0", "read-only"),
            ("EXPLAIN ANALYZE DELETE FROM offsets", "read-only"),
            ("SELECT * FROM read_text('/proc/self/environ')", "disabled by configuration"),
            ("SELECT * FROM glob('/*')", "disabled by configuration"),
            ("SET memory_limit = '40MB'", "locked"),
            ("PRAGMA profiling_output = '/tmp/x'", "locked"),
        ]:
            with pytest.raises(StoreError, match=refusal):
                ask(store, query)
        assert store.fetch("SELECT next_offset FROM offsets") == [(5,)]
    finally:
        store.close()


def test_the_parser_check_refuses_what_is_not_one_select(store: Store) -> None:
    try:
        for query, refusal in [("SELECT 1; SELECT 2", "one statement"),
                               ("DELETE FROM offsets", "got DELETE"),
                               ("EXPLAIN SELECT 1", "got EXPLAIN"), ("", "empty"),
                               ("SELEC 1", "syntax error")]:
            with pytest.raises(StoreError, match=refusal):
                ask(store, query)
        # The service's own connection still writes, and sees nothing left open.
        store.fetch("UPDATE offsets SET next_offset = 6")
        assert ask(store, "SELECT next_offset FROM offsets") == [(6,)]
    finally:
        store.close()


def test_caps_and_timeout(store: Store) -> None:
    try:
        res = store.user_query("SELECT * FROM range(1000)", max_rows=10, timeout_s=10)
        assert res.rows == [(i,) for i in range(10)] and res.truncated
        assert res.columns == ["range"] and res.types == ["BIGINT"]
        res = store.user_query("SELECT repeat('x', 1000) FROM range(100)", max_rows=100,
                               timeout_s=10, max_bytes=5000)
        assert 1 <= len(res.rows) <= 5 and res.truncated
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="interrupted after 0.5 s"):
            store.user_query(RUNAWAY, max_rows=1, timeout_s=0.5)
        assert time.monotonic() - t0 < 30
        assert ask(store, "SELECT 1") == [(1,)]
    finally:
        store.close()


def test_closing_interrupts_a_running_query(store: Store) -> None:
    out: list[BaseException] = []

    def run() -> None:
        try:
            store.user_query(RUNAWAY, max_rows=1, timeout_s=600)
        except BaseException as e:  # checked below
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    store.close()
    t.join(30)
    assert not t.is_alive()
    assert isinstance(out[0], StoreError) and "stopping" in str(out[0])
