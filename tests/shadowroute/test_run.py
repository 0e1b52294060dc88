"""`shadowroute run` fails plainly when its Kafka is not there."""

from __future__ import annotations

from pathlib import Path

from shadowroute.demo.broker import free_port
from shadowroute.service import service_file
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
