"""No log flood while the broker is down (issue 14, item 7), through the service process.

aiokafka logs an error for every failed fetch and connection attempt (hundreds in seconds);
the service must log one line per change of state and then a periodic summary of what it held
back, aiokafka's own loggers included.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from shadowroute.demo.broker import Broker, free_port
from tests.support.configs import write_config
from tests.support.kafka import create_topic, produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import ServiceProcess
from tests.support.traffic import cheap_answer, make_records

DOWN_S = 6.0
LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR) (\S+): ")


def test_broker_down_logs_state_changes_and_summaries(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "f.duckdb"
    log = tmp_path / "service.log"
    brokers = [Broker(tmp_path / "b1.log", port=port)]
    try:
        bootstrap = brokers[0].bootstrap
        asyncio.run(create_topic(bootstrap, "flood", 4))
        asyncio.run(produce(bootstrap, "flood", make_records(50, seed=51)[0]))
        with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
            cfg = write_config(tmp_path / "c.toml", bootstrap=bootstrap, topic="flood",
                               group="g-flood", db=db, model_url=ms.url, default_rate=0.0,
                               math_rate=0.0)
            svc = ServiceProcess(cfg, db, log, cli_args=("--log-summary-s", "2"))
            try:
                svc.wait(lambda: svc.sql("SELECT count(*) FROM requests")[0][0] == 50,
                         what="the first records")
                before = len(log.read_text().splitlines())
                brokers[0].stop()
                time.sleep(DOWN_S)
                brokers.append(Broker(tmp_path / "b2.log", port=port))
                asyncio.run(create_topic(bootstrap, "flood", 4))
                asyncio.run(produce(bootstrap, "flood", make_records(20, seed=52)[0]))
                svc.wait(lambda: svc.sql("SELECT count(*) FROM requests")[0][0] == 70,
                         what="records after the broker came back")
            finally:
                assert svc.terminate() == 0
    finally:
        for b in brokers:
            b.stop()
    lines = log.read_text().splitlines()[before:]
    loud = [m.group(2) for line in lines if (m := LINE.match(line))]
    kafka = [n for n in loud if n.startswith(("aiokafka", "shadowroute.kafka"))]
    summaries = [line for line in lines if "held back" in line]
    # One line per state change (a handful of distinct messages), plus a summary every 2 s:
    # without the filter this outage logged hundreds of lines.
    assert len(kafka) <= 25, "\n".join(lines[:60])
    assert summaries, "\n".join(lines[:60])
