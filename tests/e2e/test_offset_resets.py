"""Broker and topic resets through a real broker and the running service (issue 14, item 1).

The broker is restarted empty in place (same port, Tansu's memory storage): the positions the
service stored are then past the new end of every partition (or, with more records produced
after the restart than before, inside a different log). New records must be ingested, the
reset recorded in `offset_resets`, counted in /metrics, and nothing stored twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import httpx

from shadowroute.config import load_config
from shadowroute.demo.broker import Broker, free_port
from shadowroute.service import Service
from tests.support.configs import write_config
from tests.support.kafka import create_topic, produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.traffic import cheap_answer, make_records

TOPIC = "resets"


async def _wait_offsets(svc: Service, task: asyncio.Task[None], total: int,
                        timeout: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if task.done():
            task.result()
        _, rows = svc.store.reads.query_table(
            "SELECT coalesce(sum(next_offset), 0) FROM offsets")
        if rows[0][0] == total:
            return
        assert asyncio.get_running_loop().time() < deadline, f"stored offsets {rows}, want {total}"
        await asyncio.sleep(0.2)


def test_broker_restarted_empty_while_running(tmp_path: Path) -> None:
    """Past the end: 400 records, the broker restarts empty, 120 new ones; all 520 stored."""
    port = free_port()
    db = tmp_path / "r.duckdb"
    old, _ = make_records(400, seed=1)
    new, _ = make_records(120, seed=2)
    brokers = [Broker(tmp_path / "b1.log", port=port)]

    async def main() -> str:
        await create_topic(brokers[0].bootstrap, TOPIC, partitions=4)
        await produce(brokers[0].bootstrap, TOPIC, old)
        with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
            cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=brokers[0].bootstrap,
                                           topic=TOPIC, group="g-reset", db=db,
                                           model_url=ms.url, default_rate=0.0, math_rate=0.0),
                              env={})
            svc = Service(cfg)
            task = asyncio.create_task(svc.run(install_signals=False))
            try:
                await _wait_offsets(svc, task, 400)
                brokers[0].stop()  # memory storage: topics, records, groups and offsets gone
                brokers.append(Broker(tmp_path / "b2.log", port=port))
                await create_topic(brokers[1].bootstrap, TOPIC, partitions=4)
                await produce(brokers[1].bootstrap, TOPIC, new)
                # Each partition now ends below the stored position (~100 vs ~30): a reset to
                # the earliest offset, then the 120 new records, stored after the old ones.
                deadline = asyncio.get_running_loop().time() + 90
                while True:
                    if task.done():
                        task.result()
                    c = await svc.store.counts()
                    if c["requests"] == 520:
                        break
                    assert asyncio.get_running_loop().time() < deadline, c
                    await asyncio.sleep(0.2)
                assert svc.url is not None
                async with httpx.AsyncClient() as client:
                    metrics = (await client.get(svc.url + "/metrics", timeout=5)).text
            finally:
                svc.stop_event.set()
                await task
            return metrics

    try:
        metrics = asyncio.run(main())
    finally:
        for b in brokers:
            b.stop()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchall() \
        == [(520, 520)]
    resets = con.execute(
        'SELECT "partition", stored, high_water, kind, policy, new_offset, lost '
        "FROM offset_resets ORDER BY 1").fetchall()
    parts = {r[0] for r in resets}
    assert parts == {0, 1, 2, 3}, resets  # every partition held ~100 > its new end (~30)
    for _p, stored, hw, kind, policy, new_offset, lost in resets:
        assert kind == "past_end" and policy == "earliest" and new_offset == 0 and lost == 0
        assert hw is not None and stored > hw
    # The stored positions are the new log's, not the old ones.
    assert con.execute("SELECT sum(next_offset) FROM offsets").fetchall()[0][0] == 120
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("shadowroute_offset_resets_total{"))
    assert counted == len(resets)


async def _run_until(cfg: object, requests: int, timeout: float = 90) -> None:
    svc = Service(cfg)  # type: ignore[arg-type]
    task = asyncio.create_task(svc.run(install_signals=False))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            if task.done():
                task.result()
            c = await svc.store.counts()
            if c["requests"] >= requests:
                break
            assert asyncio.get_running_loop().time() < deadline, c
            await asyncio.sleep(0.2)
    finally:
        svc.stop_event.set()
        await task


def test_log_replaced_past_the_stored_position_while_stopped(tmp_path: Path) -> None:
    """Inside the range: 400 records read; the service restarts on the same log (no reset,
    nothing read twice); then, while it is stopped, the broker restarts empty and 1,000 new
    records (more per partition than were read) are produced. The stored positions are inside
    the new log, but the records before them are others: a `replaced` reset, all 1,000 read."""
    port = free_port()
    db = tmp_path / "r.duckdb"
    first, _ = make_records(400, seed=3)
    more, _ = make_records(100, seed=4)
    new, _ = make_records(1000, seed=5)
    brokers = [Broker(tmp_path / "b1.log", port=port)]
    try:
        with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
            cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=brokers[0].bootstrap,
                                           topic=TOPIC, group="g-replaced", db=db,
                                           model_url=ms.url, default_rate=0.0, math_rate=0.0),
                              env={})
            asyncio.run(create_topic(brokers[0].bootstrap, TOPIC, partitions=4))
            asyncio.run(produce(brokers[0].bootstrap, TOPIC, first))
            asyncio.run(_run_until(cfg, 400))
            asyncio.run(produce(brokers[0].bootstrap, TOPIC, more))
            asyncio.run(_run_until(cfg, 500))  # the same log: verified, not reset
            con = duckdb.connect(str(db), read_only=True)
            assert con.execute("SELECT count(*) FROM offset_resets").fetchall() == [(0,)]
            con.close()
            brokers[0].stop()
            brokers.append(Broker(tmp_path / "b2.log", port=port))
            asyncio.run(create_topic(brokers[1].bootstrap, TOPIC, partitions=4))
            asyncio.run(produce(brokers[1].bootstrap, TOPIC, new))
            asyncio.run(_run_until(cfg, 1500))
    finally:
        for b in brokers:
            b.stop()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchall() \
        == [(1500, 1500)]
    assert con.execute("SELECT count(*) FROM requests WHERE request_id LIKE 'req-5-%'"
                       ).fetchall() == [(1000,)]
    resets = con.execute('SELECT kind, policy, new_offset, stored <= high_water '
                         'FROM offset_resets').fetchall()
    assert len(resets) == 4 and set(resets) == {("replaced", "earliest", 0, True)}, resets
    assert con.execute("SELECT sum(next_offset) FROM offsets").fetchall()[0][0] == 1000


def test_static_membership_restart(broker: Broker, topic: str, tmp_path: Path) -> None:
    """`kafka.group_instance_id`: a restarted service with the same id gets its partitions back
    (no duplicate, nothing skipped). Its speed is measured in benchmarks/rejoin.py."""
    db = tmp_path / "s.duckdb"
    a, _ = make_records(100, seed=41)
    b, _ = make_records(100, seed=42)
    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap,
                                       topic=topic, group="g-static", db=db, model_url=ms.url,
                                       default_rate=0.0, math_rate=0.0),
                          env={"SHADOWROUTE_KAFKA__GROUP_INSTANCE_ID": "svc-a"})
        assert cfg.kafka.group_instance_id == "svc-a"
        asyncio.run(produce(broker.bootstrap, topic, a))
        asyncio.run(_run_until(cfg, 100))
        asyncio.run(produce(broker.bootstrap, topic, b))
        asyncio.run(_run_until(cfg, 200))
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchall() \
        == [(200, 200)]
