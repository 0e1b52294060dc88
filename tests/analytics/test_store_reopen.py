"""Store.reopen on a real DuckDB file: the writer's instance closed and opened again between
writes (to give back the heap DuckDB keeps) loses nothing, repeats nothing, keeps its settings,
and never cuts a query that is running."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import orjson
import pytest

from analytics.service_store import open_store
from analytics.store import Store
from analytics.store_process import StoreProcess
from consumers.records import RawMessage
from tests.analytics.test_store_process import done, filled
from tests.consumers.test_ingest import good, process
from tests.shadow.test_runner import add_samples

LONG_QUERY = "SELECT sum(i) FROM range({n}) t(i)"  # seconds of DuckDB work for n ~ 1e9


def records(start: int, n: int) -> list[RawMessage]:
    """n good records at offsets start.. of logs[0]."""
    return [RawMessage("logs", 0, o, orjson.dumps(good(f"r-{o}"))) for o in range(start, start + n)]


def test_writes_across_reopens_are_all_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    try:
        ids = add_samples(store, 40)
        store.prepare_writer(1, "64MB")
        for k in range(8):  # 8 rounds of ingest, results and leases, a reopen after each
            assert store.write_ingest(process(records(10 * k, 10))) == 0
            store.write_sample_results([done(s) for s in ids[5 * k:5 * k + 5]])
            store.lease_budget("run", 1_000 + k)
            assert store.reopen()
        assert store.reopens == 8
        # A batch read again after a reopen (a retry of a write that committed): stored once.
        assert store.write_ingest(process(records(70, 10))) == 10
        store.write_sample_results([done(s) for s in ids[35:40]])
        assert store.fetch("SELECT count(*), count(DISTINCT request_id) FROM requests "
                           "WHERE request_id LIKE 'r-%'") == [(80, 80)]
        assert store.fetch("SELECT next_offset FROM offsets") == [(80,)]
        assert store.fetch("SELECT count(*), count(DISTINCT sample_id) FROM shadow_calls"
                           ) == [(40, 40)]
        assert store.fetch("SELECT count(*) FROM samples WHERE status = 'done'") == [(40,)]
        assert store.fetch("SELECT count(*), sum(nano) FROM budget_leases") == [
            (8, sum(1_000 + k for k in range(8)))]
        # The writer's settings hold on the new instance, locked as before.
        assert store.fetch("SELECT current_setting('threads'), current_setting('memory_limit'), "
                           "current_setting('lock_configuration'), "
                           "current_setting('enable_external_access')") == [
            (1, "61.0 MiB", True, False)]
        with pytest.raises(duckdb.Error):
            store.con.execute("SET memory_limit = '1GB'")
    finally:
        store.close()
    con = duckdb.connect(str(db), read_only=True)  # and all of it is in the file
    assert con.execute("SELECT count(*) FROM shadow_calls").fetchall() == [(40,)]
    con.close()


def test_a_query_open_during_a_reopen_completes_and_the_reopen_waits_for_it(
        tmp_path: Path) -> None:
    store = Store(filled(tmp_path, 4))
    try:
        store.prepare_writer(1)
        out: list[object] = []
        ended: list[float] = []

        def person() -> None:
            out.append(store.user_query(LONG_QUERY.format(n=400_000_000), max_rows=5,
                                        timeout_s=120).rows)
            ended.append(time.monotonic())

        q = threading.Thread(target=person)
        q.start()
        time.sleep(0.3)
        assert q.is_alive(), "the query was too quick to show anything"
        assert store.reopen(wait_s=120)
        reopened = time.monotonic()
        q.join(120)
        assert out == [[(79999999800000000,)]]
        assert ended[0] <= reopened  # it waited for the query, which was not cut
        store.write_sample_results([done("s0000")])  # and the store goes on
        assert store.counts()["done"] == 1
    finally:
        store.close()


def test_a_reopen_that_would_wait_too_long_gives_up_and_cuts_nothing(tmp_path: Path) -> None:
    store = Store(filled(tmp_path, 2))
    try:
        store.prepare_writer(1)
        out: list[object] = []
        q = threading.Thread(target=lambda: out.append(store.query_table(
            LONG_QUERY.format(n=400_000_000))))
        q.start()
        time.sleep(0.3)
        assert q.is_alive(), "the query was too quick to show anything"
        assert not store.reopen(wait_s=0.1)
        store.write_sample_results([done("s0000")])  # writes go on meanwhile
        q.join(120)
        assert out == [(["sum(i)"], [(79999999800000000,)])]
        assert store.reopen(wait_s=0.1)  # nothing open now
        assert store.reopens == 1
        assert store.counts()["done"] == 1
    finally:
        store.close()


def test_a_due_reopen_runs_between_calls_and_not_after_close(tmp_path: Path) -> None:
    store = Store(filled(tmp_path, 2))
    try:
        store.prepare_writer(1, reopen_every_s=0.05)
        assert not store.maybe_reopen()  # not due yet
        time.sleep(0.1)
        assert store.maybe_reopen()
        assert not store.maybe_reopen()  # the next one is 0.05 s away again
    finally:
        store.close()
    time.sleep(0.1)
    assert not store.maybe_reopen()  # closed: nothing to reopen


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_the_services_store_reopens_itself_while_writing_and_querying(
        tmp_path: Path, writer: str) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    ids = add_samples(store, 60)
    store.close()
    st = open_store(db, writer, 1, reopen_every_s=0.05)
    try:
        # A temporary table lives as long as the writer's connection: gone, it was reopened.
        st.reads.fetch("CREATE TEMP TABLE marker AS SELECT 1 AS x")
        marker = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'marker'"
        out: list[object] = []
        q = threading.Thread(target=lambda: out.append(st.reads.user_query(
            LONG_QUERY.format(n=200_000_000), max_rows=5, timeout_s=120).rows))

        async def main() -> None:
            q.start()
            for k in range(12):
                await st.write_ingest(process(records(10 * k, 10)))
                await st.write([done(s) for s in ids[5 * k:5 * k + 5]])
                await asyncio.sleep(0.06)
            deadline = time.monotonic() + 60
            while st.reads.fetch(marker) != [(0,)]:  # a reopen retries after a long query
                assert time.monotonic() < deadline, "the store never reopened"
                await st.lease_budget("run", 1)
                await asyncio.sleep(0.2)

        asyncio.run(main())
        q.join(120)
        assert out == [[(19999999900000000,)]]  # the query ran through the reopens
        assert st.reads.fetch("SELECT count(*), count(DISTINCT request_id) FROM requests "
                              "WHERE request_id LIKE 'r-%'") == [(120, 120)]
        assert st.reads.fetch("SELECT next_offset FROM offsets") == [(120,)]
        assert st.reads.fetch("SELECT count(*), count(DISTINCT sample_id) FROM shadow_calls"
                              ) == [(60, 60)]
        assert st.reads.counts()["done"] == 60
    finally:
        st.close()
    if isinstance(st, StoreProcess):
        assert st.proc.returncode == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM shadow_calls").fetchall() == [(60,)]
    con.close()


def test_a_reopen_that_finds_the_file_taken_fails_writes_until_it_opens_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between the close and the open, another process takes the file (a reader opening it
    # read-only): the open fails, writes fail (their callers pause and retry), and the next
    # try, a second later, opens it again; nothing written before is lost.
    import analytics.store as store_mod

    db = filled(tmp_path, 4)
    holder: list[subprocess.Popen[str]] = []
    real_open = store_mod.open_connection

    def open_after_a_reader_took_the_file(path: str | Path, *, read_only: bool
                                          ) -> duckdb.DuckDBPyConnection:
        if not holder:
            holder.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import time, duckdb
                con = duckdb.connect({str(db)!r}, read_only=True)
                print("held", flush=True)
                time.sleep(1.5)
                """)], stdout=subprocess.PIPE, text=True))
            assert holder[0].stdout is not None
            assert holder[0].stdout.readline() == "held\n"
        return real_open(path, read_only=read_only)

    store = Store(db)
    try:
        store.prepare_writer(1, reopen_every_s=0.01)
        store.write_sample_results([done("s0000")])
        monkeypatch.setattr(store_mod, "open_connection", open_after_a_reader_took_the_file)
        time.sleep(0.02)
        assert not store.maybe_reopen()  # the file is held: closed, not open again
        with pytest.raises(Exception):  # noqa: B017 - whatever DuckDB says of a closed connection
            store.write_sample_results([done("s0001")])
        holder[0].wait(30)
        deadline = time.monotonic() + 30
        while not store.maybe_reopen():
            assert time.monotonic() < deadline, "the store never opened its file again"
            time.sleep(0.1)
        store.write_sample_results([done("s0001")])
        assert store.fetch("SELECT sample_id FROM shadow_calls ORDER BY 1") == [
            ("s0000",), ("s0001",)]
    finally:
        store.close()
