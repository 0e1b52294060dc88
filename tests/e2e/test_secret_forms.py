"""A key echoed back by a failing endpoint, in any form, is stored and logged nowhere (issue 13).

The model server answers every call with an error that repeats the key JSON-escaped (`\\/`),
URL-encoded and cut to its first 24 characters. After the service has run every sample through
it, every column of every table of the DuckDB file and every line of the service's log are
searched for each of those forms and for the first 8 characters of each.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

import duckdb

from shadowroute.demo.broker import Broker
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import ServiceProcess
from tests.support.traffic import make_records

KEY_ENV = "SR_TEST_MODEL_KEY"
KEY = "sk-test/Zq9+Lm2=Hx7/Pw4Kc8Vb1Nd6Tr3Ys5"


def forms(key: str) -> list[str]:
    quoted = urllib.parse.quote(key, safe="")
    whole = [key, key.replace("/", "\\/"), quoted, quoted.replace("%2F", "%2f")]
    return whole + [key[:24]] + [f[:8] for f in whole]


def test_no_form_of_an_echoed_key_is_stored_or_logged(broker: Broker, topic: str,
                                                      db_path: Path, tmp_path: Path) -> None:
    values, _ = make_records(120, seed=21)
    asyncio.run(produce(broker.bootstrap, topic, values))
    # Errors that are retried (500: cooldown lines in the log) and final ones (400: stored).
    behaviour = ModelBehaviour(echo_key_forms=True, fail_next=[500, 400] * 5000)
    with ModelServer(behaviour) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-secrets", db=db_path, model_url=ms.url, default_rate=0.5)
        cfg.write_text(cfg.read_text().replace('model = "tiny"',
                                               f'model = "tiny"\napi_key_env = "{KEY_ENV}"'))
        svc = ServiceProcess(cfg, db_path, tmp_path / "service.log", env={KEY_ENV: KEY,
                                  # short cooldowns and backoffs: every sample fails, soon
                                  "SHADOWROUTE_SHADOW__COOLDOWN_S": "0.2",
                                  "SHADOWROUTE_SHADOW__BACKOFF_S": "0.01",
                                  "SHADOWROUTE_SHADOW__MAX_BACKOFF_S": "0.05"})
        try:
            svc.wait(lambda: svc.sql("SELECT count(*) FROM requests")[0][0] == 120
                     and svc.sql("SELECT count(*) FROM samples WHERE status = 'pending'"
                                 )[0][0] == 0, what="every sample failed")
        finally:
            assert svc.terminate() == 0
    assert behaviour.auth_headers and behaviour.auth_headers[0] == f"Bearer {KEY}"
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        # The endpoint did echo the key: the stored errors are where it would be.
        errors = con.execute("SELECT error FROM shadow_calls WHERE error IS NOT NULL").fetchall()
        assert errors and all("bad key ***" in e for (e,) in errors), errors[:3]
        reasons = con.execute(
            "SELECT skip_reason FROM samples WHERE skip_reason IS NOT NULL").fetchall()
        assert reasons and any("***" in r for (r,) in reasons)
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = 'main'").fetchall()
        swept = 0
        for table, column in columns:
            rows = con.execute(
                f'SELECT CAST("{column}" AS VARCHAR) FROM "{table}"').fetchall()  # noqa: S608
            for (value,) in rows:
                swept += 1
                for f in forms(KEY):
                    assert value is None or f not in value, (table, column, f, value)
        assert swept > 1000
    finally:
        con.close()
    log = (tmp_path / "service.log").read_text()
    assert "bad key ***" in log  # the cooldown lines carry the (redacted) error
    for line in log.splitlines():
        for f in forms(KEY):
            assert f not in line, (f, line)
