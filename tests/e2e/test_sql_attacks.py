# ruff: noqa: S608  (the probes are SQL text by design: that is what an attacker sends)
"""`/v1/sql` and `shadowroute sql` probed as an attacker on the same host would (issue 13).

One real service (broker, model server, DuckDB file) answers every probe. After all of them:
no row changed, no file was read or written outside the DuckDB file, no setting changed, no
secret of the service's environment came back. A runaway query neither blocks `/v1/verdict`
nor SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shadowroute.demo.broker import Broker
from shadowroute.service import service_file
from tests.support.configs import write_config
from tests.support.kafka import create_topic, produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import ServiceProcess, cli
from tests.support.traffic import cheap_answer, make_records

TOKEN_ENV = "SR_TEST_API_TOKEN"
TOKEN = "test-token-0123456789abcdef"
SECRET_ENV = "SR_TEST_CANARY_SECRET"
SECRET = "canary-secret-5f1d0c7e9b"  # in the service's environment: must never come back
N_RECORDS = 300
TABLES = ("requests", "rejected", "samples", "shadow_calls", "scores", "router_scores", "router_calls",
          "offsets", "budget_leases")
SETTINGS = ("memory_limit", "threads", "enable_external_access", "lock_configuration",
            "enable_profiling", "profiling_output", "max_temp_directory_size", "temp_directory")
RUNAWAY = "SELECT count(*) FROM range(10000000000000) a, range(1000) b WHERE a.range + b.range < 0"


@dataclass
class Live:
    svc: ServiceProcess
    config: Path
    dir: Path
    canary: Path

    def post(self, query: str, *, token: str | None = TOKEN, timeout: float = 30,
             **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return httpx.post(self.svc.url + "/v1/sql", json={"sql": query}, headers=headers,
                          timeout=timeout, **kw)

    def rows(self, query: str) -> list[list[Any]]:
        r = self.post(query)
        assert r.status_code == 200, r.text
        return r.json()["rows"]  # type: ignore[no-any-return]

    def verdict(self, timeout: float = 10) -> httpx.Response:
        return httpx.get(self.svc.url + "/v1/verdict", timeout=timeout,
                         headers={"Authorization": f"Bearer {TOKEN}"},
                         params={"router": "rules", "threshold": 0.5, "model": "cheap",
                                 "min_samples": 1})

    def snapshot(self) -> dict[str, Any]:
        """Every table's row count and content hash, and the settings that matter."""
        out: dict[str, Any] = {}
        for t in TABLES:
            out[t] = self.rows(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM {t} AS t")[0]
        names = ", ".join(f"'{s}'" for s in SETTINGS)
        out["settings"] = self.rows(
            f"SELECT name, value FROM duckdb_settings() WHERE name IN ({names}) ORDER BY name")
        out["files"] = sorted(p.name for p in self.dir.rglob("*")
                              if p.name != "service.log" and not p.name.endswith(".wal"))
        out["canary"] = self.canary.read_bytes()
        return out


@pytest.fixture(scope="module")
def live(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    d = tmp_path_factory.mktemp("attacks")
    topic = "t-sql-attacks"
    asyncio.run(create_topic(broker.bootstrap, topic, partitions=2))
    values, _ = make_records(N_RECORDS, seed=13)
    asyncio.run(produce(broker.bootstrap, topic, values))
    canary = d / "canary.txt"
    canary.write_text("untouched\n")
    db = d / "shadowroute.duckdb"
    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        cfg = write_config(d / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-attacks", db=db, model_url=ms.url, default_rate=0.3,
                           extra=f'token_env = "{TOKEN_ENV}"\nsql_timeout_s = 3\n'
                                 "sql_max_rows = 100\nsql_max_bytes = 65536\n"
                                 "max_body_bytes = 65536\n")
        svc = ServiceProcess(cfg, db, d / "service.log",
                             env={TOKEN_ENV: TOKEN, SECRET_ENV: SECRET})
        live = Live(svc, cfg, d, canary)
        try:
            svc.wait(lambda: live.rows("SELECT count(*) FROM requests")[0][0] == N_RECORDS
                     and live.rows("SELECT count(*) FROM samples WHERE status = 'pending'"
                                   )[0][0] == 0, what="every record stored and sample scored")
            yield live
        finally:
            if svc.proc.poll() is None:
                svc.terminate()


def writes(d: Path) -> list[str]:
    return [
        "WITH x AS (DELETE FROM requests RETURNING *) SELECT count(*) FROM x",
        "WITH x AS (UPDATE samples SET status = 'pending' RETURNING *) SELECT count(*) FROM x",
        "WITH x AS (INSERT INTO rejected SELECT * FROM rejected RETURNING *) SELECT count(*) FROM x",
        "SELECT * FROM (WITH x AS (DELETE FROM scores RETURNING *) SELECT count(*) FROM x) s",
        "SELECT (SELECT count(*) FROM (WITH x AS (DELETE FROM router_scores RETURNING 1) "
        "SELECT * FROM x))",
        "EXPLAIN ANALYZE DELETE FROM scores",
        "EXPLAIN ANALYZE WITH x AS (DELETE FROM shadow_calls RETURNING *) SELECT count(*) FROM x",
        "EXPLAIN ANALYZE UPDATE samples SET status = 'pending'",
        "SELECT * FROM query('DELETE FROM requests RETURNING *')",
        "SELECT * FROM query('WITH x AS (DELETE FROM requests RETURNING *) SELECT * FROM x')",
        "SELECT * FROM query_table('requests'); DELETE FROM requests",
        "SELECT 1; DELETE FROM requests",
        "DELETE FROM requests",
        "UPDATE samples SET status = 'pending'",
        "INSERT INTO rejected SELECT * FROM rejected",
        "DROP TABLE requests",
        "TRUNCATE requests",
        "ALTER TABLE requests RENAME TO gone",
        "CREATE TABLE evil AS SELECT 1",
        "CREATE TEMP TABLE evil AS SELECT 1",
        "CREATE MACRO evil() AS 1",
        "CREATE VIEW evil AS SELECT 1",
        "CHECKPOINT",
        "VACUUM",
        "BEGIN; DELETE FROM requests; COMMIT",
        "COMMIT",
        "ROLLBACK",
        f"ATTACH '{d}/other.duckdb' AS other",
        "DETACH shadowroute",
        "USE memory",
        f"COPY requests TO '{d}/out.csv'",
        f"COPY (SELECT 1) TO '{d}/out.parquet' (FORMAT parquet)",
        f"EXPORT DATABASE '{d}/export'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "PRAGMA enable_profiling = 'query_tree'",
        f"PRAGMA profiling_output = '{d}/canary.txt'",
        f"PRAGMA enable_profiling = 'query_tree'; PRAGMA profiling_output = '{d}/canary.txt'; "
        "SELECT 1",
        "SET memory_limit = '40MB'",
        "SET threads = 1",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "SET GLOBAL memory_limit = '40MB'",
        "SELECT * FROM enable_logging()",
        f"CALL enable_logging(storage = 'file', storage_path = '{d}/log')",
        "CALL disable_logging()",
        "SELECT * FROM force_checkpoint()",
        "PIVOT requests ON format USING count(*)",
    ]


def reads(d: Path, db: Path) -> list[str]:
    return [
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM read_blob('/proc/self/environ')",
        "SELECT * FROM read_blob('/etc/shadow')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/proc/self/environ')",
        "SELECT * FROM read_json('/proc/self/environ')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/root/*')",
        f"SELECT * FROM glob('{d}/*')",
        f"SELECT * FROM read_text('{d}/canary.txt')",
        f"SELECT * FROM read_text('{service_file(db)}')",
        f"SELECT * FROM read_parquet('{d}/x.parquet')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'http://127.0.0.1:9/x.csv'",
        "SELECT getenv('SR_TEST_CANARY_SECRET')",
        "SELECT * FROM query('SELECT * FROM read_text(''/proc/self/environ'')')",
    ]


def test_no_probe_changes_a_row_a_file_or_a_setting(live: Live) -> None:
    # (DuckDB always lets a database read its own file: `read_blob(<the DuckDB file>)` answers.
    # Nothing beside it does, service.json included.)
    db = live.svc.db
    before = live.snapshot()
    assert before["requests"][0] == N_RECORDS and before["scores"][0] > 0
    settings = dict(before["settings"])
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    for query in writes(live.dir) + reads(live.dir, db):
        r = live.post(query)
        assert r.status_code == 400, (query, r.status_code, r.text)
        assert "error" in r.json(), query
        assert SECRET not in r.text and "PATH=" not in r.text, query
    # The same through the command line, which asks the running service.
    for query in ("WITH x AS (DELETE FROM requests RETURNING *) SELECT count(*) FROM x",
                  "SELECT * FROM read_text('/proc/self/environ')", "SET memory_limit = '40MB'"):
        r = cli("sql", query, "--config", str(live.config), env={TOKEN_ENV: TOKEN})
        assert r.returncode == 1, (query, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and SECRET not in r.stdout + r.stderr
    after = live.snapshot()
    assert after == before
    assert live.canary.read_text() == "untouched\n"
    assert SECRET not in live.svc.log.read_text()


def test_what_reading_may_do_it_still_does(live: Live) -> None:
    # Views, CTEs, subqueries, query()/query_table(), SHOW/DESCRIBE/SUMMARIZE: all read-only.
    assert live.rows("WITH x AS (SELECT * FROM requests) SELECT count(*) FROM x") == [[N_RECORDS]]
    assert live.rows("SELECT count(*) FROM query_table('requests')") == [[N_RECORDS]]
    assert live.rows("SELECT * FROM query('SELECT count(*) FROM requests')") == [[N_RECORDS]]
    assert ["requests"] in live.rows("SHOW TABLES")
    assert live.rows("SELECT count(*) > 0 FROM (DESCRIBE requests)") == [[True]]
    assert len(live.rows("SELECT router FROM savings LIMIT 3")) == 3


def test_caps_on_rows_and_bodies(live: Live) -> None:
    r = live.post("SELECT range AS i FROM range(1000000)")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] is True and len(body["rows"]) == 100
    assert body["rows"][:2] == [[0], [1]]
    r = live.post("SELECT repeat('x', 10000) AS s FROM range(50)")
    assert r.json()["truncated"] is True and 1 <= len(r.json()["rows"]) <= 7, r.text[:200]
    r = live.post("SELECT 1 AS one")
    assert r.json()["truncated"] is False and r.json()["rows"] == [[1]]
    big = "SELECT 1 -- " + "x" * 300_000
    r = live.post(big)
    assert r.status_code == 413, r.text
    r = httpx.post(live.svc.url + "/v1/sql", content=b'{"sql": "SELECT 1"}' + b" " * 100_000,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 413


def test_strangers_are_refused(live: Live) -> None:
    url = live.svc.url + "/v1/sql"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"sql": "SELECT 1"})
    # A page in a browser can POST text/plain without asking first: refused.
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(url, content=body, headers=auth)  # no content type at all
    assert r.status_code == 415
    r = live.post("SELECT 1", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    # DNS rebinding: the request comes to our address under the attacker's name.
    r = live.post("SELECT 1", headers={"Host": "attacker.example:8787"})
    assert r.status_code == 421
    r = httpx.get(live.svc.url + "/v1/verdict", headers={**auth, "Host": "attacker.example"},
                  params={"router": "rules", "threshold": 0.5, "model": "cheap"})
    assert r.status_code == 421
    # No CORS: a preflight gets no permission.
    r = httpx.options(url, headers={"Origin": live.svc.url,
                                    "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    # The token, when one is configured: everywhere but /healthz, which then says only ok.
    assert live.post("SELECT 1", token=None).status_code == 401
    assert live.post("SELECT 1", token="wrong-token-0123456789").status_code == 401
    assert httpx.get(live.svc.url + "/metrics").status_code == 401
    assert httpx.get(live.svc.url + "/v1/status").status_code == 401
    h = httpx.get(live.svc.url + "/healthz")
    assert h.status_code == 200 and h.json() == {"ok": True}
    assert "db_path" in httpx.get(live.svc.url + "/healthz", headers=auth).json()
    assert live.post("SELECT 1").status_code == 200
    # The command line passes the token it finds in the variable the config names.
    r = cli("sql", "SELECT count(*) AS n FROM requests", "--config", str(live.config),
            "--format", "json", env={TOKEN_ENV: TOKEN})
    assert r.returncode == 0 and json.loads(r.stdout) == {"n": N_RECORDS}, r.stderr
    r = cli("sql", "SELECT 1", "--config", str(live.config), env={TOKEN_ENV: ""})
    assert r.returncode == 1 and "401" in r.stderr and "Traceback" not in r.stderr
    r = cli("gate", "--router", "rules", "--threshold", "0.5", "--model", "cheap",
            "--min-samples", "1", "--config", str(live.config), env={TOKEN_ENV: TOKEN})
    assert r.returncode in (0, 1) and json.loads(r.stdout)["verdict"] in ("pass", "fail"), r.stderr


TYPES = ("SELECT 170141183460469231731687303715884105727::HUGEINT AS huge, "
         "340282366920938463463374607431768211455::UHUGEINT AS uhuge, "
         "MAP {1: 'a', 2: 'b'} AS m, '10:00:00+02'::TIMETZ AS ttz, INTERVAL 1 DAY AS iv, "
         "union_value(k := 3)::UNION(k INT, s VARCHAR) AS u, {'x': 1, 'y': [1, 2]} AS st, "
         "[1, 2, 3] AS l, [1, 2]::INT[2] AS arr, '\\x00\\xff'::BLOB AS b, "
         "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID AS id, "
         "12345678901234567890.123456789::DECIMAL(38, 9) AS dec, 'inf'::DOUBLE AS inf, "
         "'2024-01-01 10:00:00+00'::TIMESTAMPTZ AS ts, 'x'::ENUM('x', 'y') AS e, "
         "1::BIT AS bit, 2::VARINT AS vi")


def test_every_result_type_converts(live: Live) -> None:
    r = live.post(TYPES)
    assert r.status_code == 200, r.text
    row = dict(zip(r.json()["columns"], r.json()["rows"][0], strict=True))
    assert row["huge"] == "170141183460469231731687303715884105727"
    assert row["uhuge"] == "340282366920938463463374607431768211455"
    assert row["m"] == [{"key": 1, "value": "a"}, {"key": 2, "value": "b"}]
    assert row["ttz"].startswith("10:00:00")
    assert row["st"] == {"x": 1, "y": [1, 2]} and row["l"] == [1, 2, 3] and row["arr"] == [1, 2]
    assert row["u"] == 3 and row["e"] == "x" and row["inf"] is None
    assert row["id"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["dec"] == "12345678901234567890.123456789"
    for fmt in ("table", "csv", "json"):
        r2 = cli("sql", TYPES, "--config", str(live.config), "--format", fmt,
                 env={TOKEN_ENV: TOKEN})
        assert r2.returncode == 0 and "Traceback" not in r2.stderr, (fmt, r2.stderr)


def test_files_are_the_owners_only(live: Live) -> None:
    db = live.svc.db
    for f in (db, service_file(db), Path(f"{db}.wal")):
        if f.exists():
            assert f.stat().st_mode & 0o777 == 0o600, f


def test_a_runaway_query_is_interrupted_and_blocks_nothing(live: Live) -> None:
    out: list[httpx.Response | BaseException] = []

    def run() -> None:
        try:
            out.append(live.post(RUNAWAY, timeout=60))
        except BaseException as e:  # reported by the assertion below
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    # Meanwhile the verdict and the ingest side answer.
    v = live.verdict()
    assert v.status_code == 200 and v.json()["verdict"] in ("pass", "fail"), v.text
    assert live.post("SELECT 1").status_code == 429  # one person's query at a time
    t.join(30)
    assert not t.is_alive()
    r = out[0]
    assert isinstance(r, httpx.Response) and r.status_code == 400, r
    assert "interrupted" in r.json()["error"]
    # A client that goes away does not leave the query running for ever either.
    with pytest.raises(httpx.ReadTimeout):
        live.post(RUNAWAY, timeout=0.5)
    time.sleep(4)  # past sql_timeout_s
    assert live.rows("SELECT 42") == [[42]]


def test_sigterm_stops_the_service_while_a_query_runs(broker: Broker, topic: str,
                                                      tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    asyncio.run(produce(broker.bootstrap, topic, make_records(50, seed=5)[0]))
    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        # A long statement timeout: only the stop can end the query.
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-sigterm", db=db, model_url=ms.url,
                           extra="sql_timeout_s = 600\n")
        svc = ServiceProcess(cfg, db, tmp_path / "service.log")
        threads = []
        for _ in range(3):  # one runs, the others are told to come back later
            t = threading.Thread(target=lambda: httpx.post(
                svc.url + "/v1/sql", json={"sql": RUNAWAY}, timeout=120), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(1.0)
        v = httpx.get(svc.url + "/v1/verdict", timeout=10, params={
            "router": "rules", "threshold": 0.5, "model": "cheap"})
        assert v.status_code == 200, v.text
        t0 = time.monotonic()
        code = svc.terminate(timeout=10)
        took = time.monotonic() - t0
        assert code == 0, svc.log.read_text()[-2000:]
        assert took < 10
        # The store process closed the file cleanly too (its errors would be in this log).
        assert "Traceback" not in svc.log.read_text() and "FATAL" not in svc.log.read_text()
        assert not service_file(db).exists()
        for t in threads:
            t.join(10)
            assert not t.is_alive()


def test_a_non_loopback_address_needs_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndb_path = "{tmp_path}/x.duckdb"\n[server]\nhost = "0.0.0.0"\n')
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "server.token_env" in r.stderr
    cfg.write_text(f'[storage]\ndb_path = "{tmp_path}/x.duckdb"\n[server]\nhost = "0.0.0.0"\n'
                   f'token_env = "{TOKEN_ENV}"\n')
    r = cli("run", "--config", str(cfg), env={TOKEN_ENV: "short"})
    assert r.returncode == 2 and "at least 16" in r.stderr, r.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_errors_name_the_real_cause(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\ndb_path = "{tmp_path}/plain/x.duckdb"\n')
    r = cli("run", "--config", str(cfg), env={"SHADOWROUTE_SERVER__PORT": "0"})
    assert r.returncode == 1, r.stderr
    assert "server.port" not in r.stderr and "plain" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_local_file_queries_are_read_only_too(tmp_path: Path) -> None:
    # Without the service (a copy of the file), the command opens the file itself: the same
    # rules apply.
    db = tmp_path / "copy.duckdb"
    r = cli("sql", "SELECT 1", "--db", str(db))
    assert r.returncode == 1 and "does not exist" in r.stderr
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(10)")
    con.close()
    for query in ("WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x",
                  "SELECT * FROM read_text('/proc/self/environ')",
                  f"COPY t TO '{tmp_path}/o.csv'", "SET memory_limit = '40MB'"):
        r = cli("sql", query, "--db", str(db))
        assert r.returncode == 1 and "Traceback" not in r.stderr, (query, r.stderr)
    assert not (tmp_path / "o.csv").exists()
    r = cli("sql", "SELECT count(*) AS n FROM t", "--db", str(db), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"n": 10}
