"""StoreProcess: the DuckDB store in a real child process, over real sockets and a real file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from analytics.errors import StoreError, StoreLockedError
from analytics.service_store import open_store
from analytics.store import Store
from analytics.store_process import StoreProcess
from shadow.results import CallResult, SampleResult
from tests.shadow.test_runner import add_samples

ROOT = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one nobody has reaped yet is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def filled(tmp_path: Path, n: int) -> Path:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, n)
    store.close()
    return db


def done(sample_id: str) -> SampleResult:
    return SampleResult(sample_id, "done", calls=[CallResult(
        model="cheap", answer="1", input_tokens=3, cached_input_tokens=0, output_tokens=1,
        cost_usd=1e-6, latency_ms=5.0, error=None, attempts=1, deployment="cheap#0",
        spend_usd=1e-6)], scores=[("cheap", "exact_match", 1.0, "exact_match", None)])


def test_calls_from_the_loop_answer_in_order_and_writes_land(tmp_path: Path) -> None:
    db = filled(tmp_path, 30)
    st = StoreProcess(db)
    try:
        async def main() -> None:
            # Many calls in flight at once: each gets its own answer back, not a neighbour's.
            limits = [i % 40 for i in range(200)]
            got = await asyncio.gather(*(st.pending(k) for k in limits))
            assert [len(rows) for rows in got] == [min(k, 30) for k in limits]
            await st.write([done("s0000"), done("s0001")])
            assert (await st.counts())["done"] == 2
            rows = await st.pending(100, exclude=["s0002"])
            assert {r.sample_id for r in rows} == {f"s{i:04d}" for i in range(3, 30)}
            assert all(isinstance(r.messages, list) and isinstance(r.tags, dict) for r in rows)
            assert await st.shed(20, "test") == (28, 8)

        asyncio.run(main())
        # The blocking reads see the same file, through the child.
        assert st.reads.fetch("SELECT count(*) FROM shadow_calls") == [(2,)]
        cols, rows = st.reads.query_table("SELECT status, count(*) n FROM samples GROUP BY ALL "
                                          "ORDER BY 1")
        assert (cols, rows) == (["status", "n"], [("done", 2), ("pending", 20),
                                                   ("skipped_shed", 8)])
    finally:
        st.close()
    assert st.proc.returncode == 0
    con = duckdb.connect(str(db))  # closed: the file is free again
    assert con.execute("SELECT count(*) FROM shadow_calls").fetchall() == [(2,)]
    con.close()


@pytest.mark.parametrize("writer", ["process", "thread"])
@pytest.mark.parametrize(("threads", "expected"), [(0, max(1, (os.cpu_count() or 2) - 1)), (3, 3)])
def test_the_services_store_caps_duckdbs_threads(tmp_path: Path, writer: str, threads: int,
                                                  expected: int) -> None:
    # One fewer than the cores by default: DuckDB never takes every core from the event loop.
    st = open_store(filled(tmp_path, 1), writer, threads)
    try:
        assert st.reads.fetch("SELECT current_setting('threads')") == [(expected,)]
        # The warm-up's registration is gone: users' /v1/sql sees only the tables.
        assert st.reads.fetch("SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '%warm%'"
                              ) == [(0,)]
    finally:
        st.close()


def test_aclose_answers_the_calls_sent_before_it(tmp_path: Path) -> None:
    db = filled(tmp_path, 6)

    async def main() -> None:
        st = StoreProcess(db)
        assert (await st.counts())["pending"] == 6
        calls = [asyncio.ensure_future(st.write([done(f"s{i:04d}")])) for i in range(5)]
        last = asyncio.ensure_future(st.counts())
        await asyncio.sleep(0)  # all six are sent
        await st.aclose()
        await asyncio.gather(*calls)
        assert (await last)["done"] == 5  # answered, in order, before the file was closed
        assert st.proc.returncode == 0
        with pytest.raises(StoreError, match="is closed"):
            await st.counts()

    asyncio.run(main())
    Store(db).close()  # the file is free


def test_errors_come_back_as_errors_and_the_store_goes_on(tmp_path: Path) -> None:
    st = StoreProcess(filled(tmp_path, 3))
    try:
        with pytest.raises(StoreError, match="read-only SELECT"):
            st.reads.user_query("DELETE FROM samples", max_rows=10, timeout_s=10)
        with pytest.raises(StoreError, match="no_such_table"):
            st.reads.query_table("SELECT * FROM no_such_table")

        async def main() -> None:
            with pytest.raises(AttributeError):
                await st.write(["not a result"])  # type: ignore[list-item]
            assert (await st.counts())["pending"] == 3

        asyncio.run(main())
        assert st.reads.counts()["pending"] == 3
    finally:
        st.close()


def test_each_channel_runs_only_the_store_methods_it_serves(tmp_path: Path) -> None:
    # The control channel reads; a write sent on it (or anything that is not a Store method)
    # is refused by the child, and the store goes on.
    st = StoreProcess(filled(tmp_path, 3))
    try:
        with pytest.raises(StoreError, match="does not serve"):
            st._call_sync(Store.shed_pending, 0, "sent on the control channel")
        with pytest.raises(StoreError, match="does not serve"):
            st._call_sync(os.getcwd)  # type: ignore[arg-type]
        assert st.reads.counts()["pending"] == 3  # nothing was shed
    finally:
        st.close()


def test_a_long_query_does_not_hold_up_the_consumers_positions(tmp_path: Path) -> None:
    st = StoreProcess(filled(tmp_path, 1))
    try:
        out: list[object] = []
        slow = threading.Thread(target=lambda: out.append(st.reads.query_table(
            "SELECT sum(i) FROM range(3000000000) t(i)")))  # seconds of DuckDB work
        slow.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert st.reads.stored_offsets() == {}
        assert st.reads.counts()["pending"] == 1
        took = time.monotonic() - t0
        assert slow.is_alive(), "the query was too quick to show anything"
        assert took < 1.0
        slow.join(120)
        assert out == [(["sum(i)"], [(4499999998500000000,)])]
    finally:
        st.close()


def test_signals_for_the_service_leave_its_store_working(tmp_path: Path) -> None:
    # Ctrl-C signals the whole process group, systemd every process of the unit: the service
    # handles them and still needs its store to write the last results.
    st = StoreProcess(filled(tmp_path, 2))
    try:
        st.reads.counts()
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(st.proc.pid, sig)
        time.sleep(0.3)
        assert st.proc.poll() is None

        async def main() -> None:
            await st.write([done("s0000")])
            assert (await st.counts())["done"] == 1

        asyncio.run(main())
    finally:
        st.close()
    assert st.proc.returncode == 0


def test_a_held_file_is_refused_plainly_and_leaves_no_process(tmp_path: Path) -> None:
    db = filled(tmp_path, 1)
    first = StoreProcess(db)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match="held by another process"):
            StoreProcess(db)
        assert time.monotonic() - t0 < 30
        assert first.reads.counts()["pending"] == 1  # the holder is undisturbed
    finally:
        first.close()
    # No child left behind holding anything: the file opens read-write again.
    Store(db).close()


def test_a_dead_store_process_fails_calls_at_once(tmp_path: Path) -> None:
    st = StoreProcess(filled(tmp_path, 2))
    try:
        async def main() -> None:
            assert (await st.counts())["pending"] == 2
            os.kill(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)
            with pytest.raises(StoreError, match=r"exited with code -9"):
                await asyncio.wait_for(st.counts(), 10)
            with pytest.raises(StoreError, match=r"exited with code -9"):
                await asyncio.wait_for(st.pending(5), 10)

        asyncio.run(main())
        with pytest.raises(StoreError, match="exited with code -9"):
            st.reads.counts()
    finally:
        st.close()


def test_the_file_is_released_when_the_service_process_dies(tmp_path: Path) -> None:
    db = filled(tmp_path, 2)
    service = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from analytics.store_process import StoreProcess
        st = StoreProcess({str(db)!r})
        print(st.proc.pid, flush=True)
        time.sleep(600)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        child = int(service.stdout.readline())
        with pytest.raises(StoreLockedError):
            Store(db)
        service.kill()  # no close, no cleanup: as a crash
        service.wait(10)
        deadline = time.monotonic() + 30
        while True:
            try:
                Store(db).close()
                break
            except StoreLockedError:
                assert time.monotonic() < deadline, "the orphaned store process kept the file"
                time.sleep(0.1)
        while running(child):  # and it has exited, not just let go
            assert time.monotonic() < deadline, "the orphaned store process is still running"
            time.sleep(0.1)
    finally:
        service.kill()
        service.wait(10)


def test_the_store_process_starts_and_closes_without_a_word_on_stderr(tmp_path: Path) -> None:
    # What the service prints is the service's: the child adds no warnings to it.
    db = filled(tmp_path, 1)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from analytics.store_process import StoreProcess
        st = StoreProcess({str(db)!r})
        print(st.reads.counts()["samples"])
        st.close()
        """)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (0, "1\n", "")
