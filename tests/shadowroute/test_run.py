"""`shadowroute run` fails plainly when its Kafka is not there; its store follows `[storage]`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shadowroute.config import load_config
from shadowroute.demo.broker import free_port
from shadowroute.service import Service, service_file
from tests.support.process import cli


def test_run_without_a_broker_says_what_to_fix(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    port = free_port()  # nothing listens there
    r = cli("run", timeout=60, env={"SHADOWROUTE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                                    "SHADOWROUTE_STORAGE__DB_PATH": str(db),
                                    "SHADOWROUTE_SERVER__PORT": "0"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"shadowroute: cannot reach Kafka at 127.0.0.1:{port} (KafkaConnectionError); "
        "check kafka.bootstrap_servers and that the broker is up")
    assert "Traceback" not in r.stderr
    assert not service_file(db).exists()  # the address of a dead service is not left behind


def test_the_service_reopens_its_store_every_storage_reopen_every_s(tmp_path: Path) -> None:
    cfg = load_config(None, env={"SHADOWROUTE_STORAGE__DB_PATH": str(tmp_path / "r.duckdb"),
                                 "SHADOWROUTE_STORAGE__REOPEN_EVERY_S": "0.05"})

    async def main() -> None:
        svc = Service(cfg)  # its Kafka consumer is built, not started: no broker needed
        try:
            # A temporary table lives as long as the store's DuckDB instance: gone, it reopened.
            svc.store.reads.fetch("CREATE TEMP TABLE marker AS SELECT 1 AS x")
            marker = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'marker'"
            assert svc.store.reads.fetch(marker) == [(1,)]
            deadline = time.monotonic() + 30
            while svc.store.reads.fetch(marker) != [(0,)]:
                assert time.monotonic() < deadline, "the store never reopened"
                await svc.store.lease_budget("run", 1)  # a reopen runs between two calls
                await asyncio.sleep(0.06)
        finally:
            await svc.store.aclose()

    asyncio.run(main())
