"""`shadowroute demo` end to end, as a newcomer runs it: embedded broker, real local model."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import duckdb

from tests.support.model_server import ModelBehaviour, ModelServer, closed_port_url
from tests.support.process import CLI, cli


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


def test_a_dead_local_model_stops_the_demo_within_seconds(tmp_path: Path) -> None:
    """The local model's server dies (here: kill -9) while the demo replays samples on it: the
    demo says what died, how, and where its log is, and exits non-zero at once, instead of
    waiting out cooldowns."""
    db = tmp_path / "demo.duckdb"
    proc = subprocess.Popen([*CLI, "demo", "--requests", "400", "--samples", "80", "--db",
                             str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout: float = 180) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}: {''.join(seen)}")

    try:
        pid = int(wait_for(r"pid (\d+), log ")[1])
        wait_for(r"shadowroute.kafka: assigned")  # the service runs and replays samples
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        rc = proc.wait(30)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(5)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert rc == 1, out[-3000:]
    assert elapsed < 15, f"took {elapsed:.1f}s"
    said = [line for line in out.splitlines() if line.startswith("shadowroute demo: the ")]
    assert said == [f"shadowroute demo: the local cheap model (smollm2-135m-instruct on "
                    f"llama.cpp's server, pid {pid}) killed by signal SIGKILL (9); its log: "
                    f"{db}.llama.log"], out[-3000:]
    assert "Gate:" not in out  # no estimate is shown from a run that broke off
    print(f"\ndemo exited {rc} {elapsed:.1f}s after the model was killed")


def test_demo_against_an_endpoint_that_stays_down_finishes(tmp_path: Path) -> None:
    """With the demo's own settings (max_wait_s = 20), samples end skipped_unavailable once the
    endpoint has been down that long: the run ends, saying nothing was answered, and why."""
    db = tmp_path / "demo.duckdb"
    t0 = time.monotonic()
    r = cli("demo", "--requests", "300", "--samples", "30", "--db", str(db), "--model-url",
            closed_port_url(), "--model-name", "gone", timeout=180, env={"COLUMNS": "200"})
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "cheap model gone is down" in r.stdout
    assert re.search(r"shadowroute demo: no sample was answered by gone \([^)]*\d+ "
                     r"skipped_unavailable", r.stdout), r.stdout[-2000:]
    assert "cannot connect to" in r.stdout
    con = duckdb.connect(str(db), read_only=True)
    try:
        statuses = dict(con.execute("SELECT status, count(*) FROM samples GROUP BY ALL").fetchall())
    finally:
        con.close()
    assert set(statuses) <= {"skipped_unavailable", "skipped_failed"} and statuses, statuses
    assert took < 120, took
    print(f"\ndemo against a dead endpoint ended in {took:.0f}s: {statuses}")
