"""SIGTERM with shadow calls in flight, through the running service (issue 14, item 3).

The model server answers slowly, so calls are in flight when the service is told to stop.
Every request the server received (a provider bills it) must have its row in
`shadow_attempts`: finished within `shadow.stop_grace_s` (`ok`, with the sample done), or, past
the grace, `cancelled` at its worst-case cost, its sample left pending and paid again after the
restart, which `paid_twice` shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb

import sql
from shadowroute.demo.broker import Broker
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import ServiceProcess
from tests.support.traffic import cheap_answer, make_records

SHADOW = "[shadow]\nconcurrency = 6\nstop_grace_s = {grace}\n"


def _start(tmp_path: Path, broker: Broker, topic: str, db: Path, url: str, grace: float,
           name: str) -> ServiceProcess:
    cfg = write_config(tmp_path / f"{name}.toml", bootstrap=broker.bootstrap, topic=topic,
                       group=f"g-{name}", db=db, model_url=url, default_rate=1.0, math_rate=1.0,
                       extra=SHADOW.format(grace=grace))
    return ServiceProcess(cfg, db, tmp_path / f"{name}.log")


def test_sigterm_lets_calls_in_flight_finish(broker: Broker, topic: str, db_path: Path,
                                             tmp_path: Path) -> None:
    values, _ = make_records(60, seed=31)
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=cheap_answer, delay_s=1.5)) as ms:
        svc = _start(tmp_path, broker, topic, db_path, ms.url, 10.0, "grace")
        svc.wait(lambda: len(ms.behaviour.requests) >= 8, what="calls in flight")
        assert svc.terminate() == 0
        sent = len(ms.behaviour.requests)
    con = duckdb.connect(str(db_path), read_only=True)
    rows = con.execute("SELECT outcome, count(*) FROM shadow_attempts GROUP BY ALL").fetchall()
    assert dict(rows) == {"ok": sent}, (rows, sent)  # every paid call finished and written
    assert con.execute("SELECT count(*) FROM samples WHERE status = 'done'").fetchall() \
        == [(sent,)]
    assert con.execute("SELECT count(*) FROM shadow_calls").fetchall() == [(sent,)]


def test_sigterm_past_the_grace_records_what_was_cut(broker: Broker, topic: str, db_path: Path,
                                                     tmp_path: Path) -> None:
    values, _ = make_records(40, seed=32)
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=cheap_answer, delay_s=4.0)) as ms:
        svc = _start(tmp_path, broker, topic, db_path, ms.url, 0.3, "cut")
        svc.wait(lambda: len(ms.behaviour.requests) >= 6, what="calls in flight")
        assert svc.terminate() == 0
        sent = len(ms.behaviour.requests)
        con = duckdb.connect(str(db_path), read_only=True)
        rows = dict(con.execute(
            "SELECT outcome, count(*) FROM shadow_attempts GROUP BY ALL").fetchall())
        assert rows.get("cancelled", 0) >= 1, rows
        assert sum(rows.values()) >= sent, (rows, sent)  # every request the server saw
        cancelled = {r[0] for r in con.execute(
            "SELECT sample_id FROM shadow_attempts WHERE outcome = 'cancelled'").fetchall()}
        assert all(s == "pending" for (s,) in con.execute(
            "SELECT status FROM samples WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(cancelled)]).fetchall())
        assert con.execute("SELECT min(spend_usd) FROM shadow_attempts WHERE outcome = "
                           "'cancelled'").fetchall()[0][0] > 0  # worst case, never 0
        con.close()
        # Restarted: the cut samples are replayed, and what was paid twice shows in SQL.
        ms.behaviour.delay_s = 0.0
        svc = _start(tmp_path, broker, topic, db_path, ms.url, 0.3, "cut2")
        svc.wait(lambda: svc.sql("SELECT count(*) FROM samples WHERE status = 'pending'")[0][0]
                 == 0 and svc.sql("SELECT count(*) FROM samples")[0][0] == 40, what="all done")
        assert svc.terminate() == 0
        sent = len(ms.behaviour.requests)
    con = duckdb.connect(str(db_path), read_only=True)
    assert con.execute("SELECT count(*) FROM shadow_attempts WHERE outcome <> 'error'"
                       ).fetchall()[0][0] >= sent
    twice = {r[0] for r in con.execute(sql.query("paid_twice")).fetchall()}
    assert cancelled <= twice, (cancelled, twice)
