"""The service as a real subprocess: commands from another terminal while it runs, kill -9."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import duckdb

from analytics.errors import StoreLockedError
from shadowroute.demo.broker import Broker
from shadowroute.service import service_file
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import ServiceProcess, cli
from tests.support.traffic import cheap_answer, make_records


def test_sql_and_gate_while_service_runs(broker: Broker, topic: str, db_path: Path,
                                         tmp_path: Path) -> None:
    values, truth = make_records(600, seed=3)
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-cli", db=db_path, model_url=ms.url, default_rate=0.5,
                           math_rate=0.5)
        svc = ServiceProcess(cfg, db_path, tmp_path / "service.log")
        try:
            svc.wait(lambda: svc.sql("SELECT count(*) FROM requests")[0][0] == 600
                     and svc.sql("SELECT count(*) FROM samples WHERE status='pending'")[0][0] == 0,
                     what="all records and samples")
            # The file is locked by the service; the CLI must still answer, through the service.
            r = cli("sql", "SELECT count(*) AS n FROM requests", "--config", str(cfg), "--format", "json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout) == {"n": 600}
            r = cli("sql", "SELECT stratum, count(*) AS n FROM requests GROUP BY ALL ORDER BY 1",
                    "--db", str(db_path), "--format", "csv")
            assert r.returncode == 0, r.stderr
            rows = list(csv.reader(io.StringIO(r.stdout)))
            assert rows[0] == ["stratum", "n"]
            assert sum(int(n) for _, n in rows[1:]) == 600
            r = cli("sql", "SELECT router, count(*) FROM savings GROUP BY ALL", "--db", str(db_path))
            assert r.returncode == 0 and "rules" in r.stdout and "oracle" in r.stdout, r.stderr
            # Writes are refused through the service.
            r = cli("sql", "DELETE FROM requests", "--db", str(db_path))
            assert r.returncode == 1 and "read-only" in r.stderr
            assert svc.sql("SELECT count(*) FROM requests")[0][0] == 600

            n_samples = svc.sql("SELECT count(*) FROM samples")[0][0]
            r = cli("gate", "--router", "oracle", "--threshold", "0.5", "--model", "cheap",
                    "--min-quality", "0.9", "--min-samples", "50", "--db", str(db_path))
            out = json.loads(r.stdout)
            assert r.returncode == 0 and out["verdict"] == "pass" and out["samples"] == n_samples
            r = cli("gate", "--router", "all_cheap", "--threshold", "0.5", "--model", "cheap",
                    "--min-quality", "0.99", "--min-samples", "50", "--db", str(db_path))
            assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "fail"
            # (segments unjudged: a segment shown below the bar would fail the gate anyway)
            r = cli("gate", "--router", "rules", "--threshold", "0.5", "--model", "cheap",
                    "--min-samples", str(n_samples + 1), "--min-segment-samples", "100000",
                    "--db", str(db_path))
            assert r.returncode == 2 and json.loads(r.stdout)["verdict"] == "inconclusive"
            # The same verdict over HTTP, for Argo-style analysis.
            import httpx
            v = httpx.get(svc.url + "/v1/verdict", params={
                "router": "oracle", "threshold": 0.5, "model": "cheap", "min_quality": 0.9,
                "min_samples": 50}).json()
            assert v["verdict"] == "pass"
            assert httpx.get(svc.url + "/healthz").status_code == 200
            metrics = httpx.get(svc.url + "/metrics").text
            assert 'shadowroute_records_total{outcome="request"} 600.0' in metrics

            # Consumer lag per partition (refreshed every 5 s): every record read, none behind.
            def lag() -> dict[str, float]:
                out = {}
                for line in httpx.get(svc.url + "/metrics").text.splitlines():
                    if line.startswith("shadowroute_consumer_lag{") and f'topic="{topic}"' in line:
                        labels, value = line.rsplit(" ", 1)
                        out[labels.split('partition="')[1].split('"')[0]] = float(value)
                return out

            svc.wait(lambda: len(lag()) == 4, what="the consumer lag of all four partitions")
            assert lag() == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 0.0}
        finally:
            assert svc.terminate() == 0
    assert not service_file(db_path).exists()
    # After a clean stop the file opens directly again.
    r = cli("sql", "SELECT count(*) FROM requests", "--db", str(db_path), "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[1] == "600"


def test_kill_9_mid_stream_loses_and_duplicates_nothing(broker: Broker, topic: str,
                                                         db_path: Path, tmp_path: Path) -> None:
    n = 6000
    values, truth = make_records(n, seed=5, bad_every=101)
    with ModelServer(ModelBehaviour(answer=cheap_answer, delay_s=0.01)) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-crash", db=db_path, model_url=ms.url, default_rate=0.1,
                           math_rate=0.1,
                           extra="")
        cfg.write_text(cfg.read_text().replace("max_batch_records = 500", "max_batch_records = 150"))
        # Produce in a background thread while the service runs and is killed.
        import threading
        producer = threading.Thread(target=lambda: asyncio.run(produce(broker.bootstrap, topic, values)))
        producer.start()
        kills = 0
        log = tmp_path / "service.log"
        stored = "SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM rejected)"
        for target in (1000, 2500, 4000):  # kill once this many records are stored in all
            svc = ServiceProcess(cfg, db_path, log)
            try:
                svc.wait(lambda s=svc, t=target: s.sql(stored)[0][0] >= t,
                         what=f"{target} records stored before kill {kills + 1}")
            finally:
                svc.kill9()
            kills += 1
        producer.join()
        svc = ServiceProcess(cfg, db_path, log)
        try:
            svc.wait(lambda: svc.sql("SELECT (SELECT count(*) FROM requests) + "
                                     "(SELECT count(*) FROM rejected)")[0][0] >= n
                     and svc.sql("SELECT count(*) FROM samples WHERE status='pending'")[0][0] == 0,
                     what="all records after restarts")
        finally:
            assert svc.terminate() == 0
    assert kills == 3
    con = duckdb.connect(str(db_path), read_only=True)
    n_bad = n - len(truth)
    assert con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone() == (
        len(truth), len(truth))
    assert {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()} == set(truth)
    assert con.execute("SELECT count(*), count(DISTINCT (\"partition\", \"offset\")) FROM rejected"
                       ).fetchone() == (n_bad, n_bad)
    assert con.execute("SELECT sum(next_offset) FROM offsets").fetchone() == (n,)
    # Pending samples were resumed: every sample finished exactly once per model.
    assert con.execute("SELECT count(*) FROM samples WHERE status <> 'done'").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM samples").fetchone() == con.execute(
        "SELECT count(*) FROM shadow_calls").fetchone()
    con.close()


def test_calls_in_flight_at_a_kill_9_count_against_the_restarted_budget(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    # The model never answers: when the service is killed every call the provider received is
    # in flight, its result unwritten. Each was leased in the budget's journal before it was
    # sent, so the restarted budget counts at least their worst case as spent.
    import orjson

    from analytics.store import Store
    from shadow.tokens import prompt_token_bound
    from tests.support.configs import CHEAP_IN, CHEAP_OUT

    values, _ = make_records(300, seed=8)
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(hang=True)) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-budget", db=db_path, model_url=ms.url, default_rate=0.5,
                           math_rate=0.5, extra="[shadow.budget]\nusd_per_hour = 1.0\n")
        svc = ServiceProcess(cfg, db_path, tmp_path / "service.log")
        try:
            svc.wait(lambda: len(ms.behaviour.requests) >= 4, what="calls in flight")
        finally:
            svc.kill9()
        received = list(ms.behaviour.requests)
    worst = sum(prompt_token_bound(orjson.dumps(b), b["messages"]) * CHEAP_IN / 1e6
                + b["max_tokens"] * CHEAP_OUT / 1e6 for b in received)
    deadline = time.monotonic() + 30
    while True:  # the killed service's store process lets go of the file
        try:
            store = Store(db_path, read_only=True)
            break
        except StoreLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    try:
        assert store.fetch("SELECT count(*) FROM shadow_calls") == [(0,)]
        unwritten = sum(usd for age, usd in store.recent_shadow_spend() if age == 0)
    finally:
        store.close()
    assert unwritten >= worst > 0
