"""`shadowroute demo` end to end, as a newcomer runs it: embedded broker, real local model."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import cli


def test_demo_with_the_local_model(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    r = cli("demo", "--requests", "150", "--samples", "6", "--db", str(db), timeout=600,
            env={"COLUMNS": "120"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "GENERATED" in out  # the demo says plainly that its traffic is generated
    assert "task type" in out and "All traffic" in out and "Gate:" in out
    assert str(db) in out
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (150,)
        assert con.execute("SELECT count(DISTINCT format) FROM requests").fetchone() == (4,)
        done, pending = con.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = "
            "'pending') FROM samples").fetchone()
        assert done > 0 and pending == 0
        # The answers came from the real model, not a canned server.
        models = con.execute("SELECT DISTINCT model FROM shadow_calls").fetchall()
        assert models == [("smollm2-135m-instruct",)]
        assert con.execute("SELECT count(*) FROM shadow_calls WHERE answer <> ''").fetchone()[0] > 0
    finally:
        con.close()


def test_demo_with_any_openai_compatible_endpoint(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    with ModelServer(ModelBehaviour(answer=lambda p: "Paris")) as ms:
        r = cli("demo", "--requests", "300", "--samples", "40", "--db", str(db),
                "--model-url", ms.url, "--model-name", "tiny", timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert len(ms.behaviour.requests) > 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        # "Paris" is right exactly for the factual questions about France.
        rows = dict(con.execute("SELECT segment, quality FROM segment_savings "
                                "WHERE router = 'all_cheap'").fetchall())
        assert rows.get("arithmetic", 0.0) == 0.0
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (300,)
    finally:
        con.close()


def test_demo_model_name_needs_a_url() -> None:
    r = cli("demo", "--model-name", "x")
    assert r.returncode == 2
    assert r.stderr.strip() == "shadowroute: --model-name goes with --model-url"
