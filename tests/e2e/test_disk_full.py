"""A full disk under the running service (issue 14, item 2), on a real small filesystem.

The DuckDB file lives on a tmpfs of a few MiB (mounted by the test: it needs root); a filler
file takes the rest of its space. Ingest must pause without committing while its writes fail,
resume by itself when space returns, and lose nothing; a stop while the disk is full must
report the real error in one line (not DuckDB's "cannot rollback") and still run every
shutdown step.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from analytics.errors import StoreWriteError
from shadowroute.config import Config, load_config
from shadowroute.demo.broker import Broker
from shadowroute.service import Service, service_file
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.traffic import cheap_answer, make_records


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem holding `path`."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:  # the last partial block
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


async def _until(cond: object, task: asyncio.Task[None], what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():  # type: ignore[operator]
        if task.done():
            task.result()
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _stored(svc: Service) -> int:
    _, rows = svc.store.reads.query_table("SELECT coalesce(sum(next_offset), 0) FROM offsets")
    return int(rows[0][0])


def _paused(svc: Service) -> float:
    return svc.metrics.registry.get_sample_value("shadowroute_ingest_paused") or 0.0


def _config(tmp_path: Path, broker: Broker, topic: str, db: Path, url: str) -> Config:
    return load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                                    group="g-disk", db=db, model_url=url), env={})


def test_disk_full_pauses_ingest_and_resumes(broker: Broker, topic: str, small_fs: Path,
                                             tmp_path: Path) -> None:
    db = small_fs / "s.duckdb"
    filler = small_fs / "filler"
    batches = [make_records(300, seed=s)[0] for s in (21, 22, 23)]

    async def main(cfg: Config) -> None:
        await produce(broker.bootstrap, topic, batches[0])
        svc = Service(cfg)
        task = asyncio.create_task(svc.run(install_signals=False))

        async def stored(n: int) -> bool:
            return _stored(svc) == n

        async def paused() -> bool:
            return _paused(svc) == 1

        try:
            await _until(lambda: stored(300), task, "the first 300 records")
            fill(filler)
            await produce(broker.bootstrap, topic, batches[1])
            await _until(paused, task, "ingest to pause")
            await asyncio.sleep(2)  # retries go on, nothing is committed, the service runs
            assert _stored(svc) == 300 and not task.done() and _paused(svc) == 1
            filler.unlink()
            await _until(lambda: stored(600), task, "ingest to resume")

            async def resumed() -> bool:
                return _paused(svc) == 0  # set once the write has returned

            await _until(resumed, task, "the paused gauge to clear")
            # Full again, and stopped while full: the real error, every shutdown step run.
            fill(filler)
            await produce(broker.bootstrap, topic, batches[2])
            await _until(paused, task, "ingest to pause again")
        finally:
            svc.stop_event.set()
            with pytest.raises(StoreWriteError) as err:
                await task
        msg = str(err.value)
        assert "\n" not in msg and "No space left on device" in msg and "MiB free" in msg, msg
        assert "rollback" not in msg.lower()
        assert str(db) in msg
        assert not service_file(db).exists()  # removed although the last writes failed
        assert getattr(svc.source, "consumer", "x") is None  # the Kafka consumer was closed
        assert svc.store.proc.poll() is not None  # type: ignore[union-attr]  # store closed
        filler.unlink()
        # Restarted with space: the 300 records that were never committed are read again.
        svc2 = Service(cfg)
        task2 = asyncio.create_task(svc2.run(install_signals=False))
        try:
            await _until(lambda: _stored_async(svc2, 900), task2, "the rest after a restart")
        finally:
            svc2.stop_event.set()
            await task2

    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        asyncio.run(main(_config(tmp_path, broker, topic, db, ms.url)))
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchall() \
        == [(900, 900)]
    assert os.path.getsize(db) > 0


async def _stored_async(svc: Service, n: int) -> bool:
    return _stored(svc) == n
