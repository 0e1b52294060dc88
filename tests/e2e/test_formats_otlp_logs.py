"""OpenTelemetry's default GenAI conventions through the real broker and the running service:
the spans carry no content, the prompt and answer come as OTLP log records (events) on another
topic, in either order, in either encoding of the Collector's Kafka exporter, across a restart;
the service joins them by (trace id, span id). Spans whose content never comes end with an
accurate reason after the join window, and content whose span never comes is counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import orjson
import pytest

from consumers.join import ORPHAN_CONTENT, no_content_waited
from shadowroute.config import Config, load_config
from shadowroute.demo.broker import Broker
from shadowroute.demo.encoders.otlp import (
    build_logs,
    build_request,
    logs_to_otlp_json,
    request_id_of,
    to_otlp_json,
)
from shadowroute.demo.traffic import Call, TrafficGenerator
from shadowroute.service import Service
from tests.support.configs import write_config
from tests.support.kafka import create_topic, produce
from tests.support.model_server import ModelBehaviour, ModelServer

N = 24
FAILED = {5, 17}  # calls that failed in production: no choice event, so they wait the window
WINDOW = "[formats]\notlp_join_window_s = 6\n"
HELD = "SELECT count(*) = 0 FROM otlp_pending"


def calls(seed: int) -> list[Call]:
    """N generated calls of the model the test config prices."""
    cs = [c for c in TrafficGenerator(seed=seed).calls(N * 8) if c.model == "gpt-4o"][:N]
    assert len(cs) == N
    return cs


def spans(cs: list[Call], encoding: str, failed: set[int] = FAILED) -> list[bytes]:
    out = []
    for i, c in enumerate(cs):
        req = build_request(c, i in failed, style="logs")
        out.append(req.SerializeToString() if encoding == "proto" else to_otlp_json(req))
    return out


def logs(cs: list[Call], encoding: str, failed: set[int] = FAILED) -> list[bytes]:
    out = []
    for i, c in enumerate(cs):
        # Older SDKs name the event in an attribute: every third call is written that way.
        req = build_logs(c, i in failed, event_name_attribute=i % 3 == 0)
        out.append(req.SerializeToString() if encoding == "proto" else logs_to_otlp_json(req))
    return out


def config(tmp_path: Path, broker: Broker, topic: str, logs_topic: str, db: Path, url: str,
           extra: str = "") -> Config:
    return load_config(write_config(
        tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic, more_topics=(logs_topic,),
        group=f"g-{topic}", db=db, model_url=url, default_rate=1.0, math_rate=1.0, extra=extra),
        env={})


async def wait_for(svc: Service, task: asyncio.Task[None], messages: int, until: str,
                   timeout: float = 90) -> None:
    """Until every produced message is persisted, every sample finished and `until` (SQL) holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await asyncio.sleep(0.2)
        if task.done():
            task.result()
        _, rows = svc.store.reads.query_table(  # `until` is the test's own SQL
            f"SELECT (SELECT coalesce(sum(next_offset), 0) FROM offsets), ({until})")  # noqa: S608
        consumed, done = rows[0]
        c = await svc.store.counts()
        if consumed >= messages and c["pending"] == 0 and done:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {rows}, {c}"


async def serve(cfg: Config, bootstrap: str, steps: list[tuple[str, list[bytes]]],
                already: int = 0, until: str = "true") -> None:
    """Run the service; produce each step's messages once the previous ones are persisted;
    after the last, wait until `until` holds too."""
    svc = Service(cfg)
    task = asyncio.create_task(svc.run(install_signals=False))
    produced = already
    try:
        for i, (topic, values) in enumerate(steps):
            await produce(bootstrap, topic, values)
            produced += len(values)
            await wait_for(svc, task, produced, until if i == len(steps) - 1 else "true")
    finally:
        svc.stop_event.set()
        await task


def check_joined(db: Path, cs: list[Call], failed: set[int] = FAILED) -> None:
    con = duckdb.connect(str(db), read_only=True)
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    try:
        ids = {request_id_of(c): (i, c) for i, c in enumerate(cs)}
        assert q("SELECT count(*) FROM rejected") == [(0,)]
        assert q("SELECT count(*) FROM otlp_pending") == [(0,)]
        rows = q("SELECT request_id, status, eligible, ineligible_reason, model FROM requests")
        assert {r[0] for r in rows} == set(ids)
        for rid, status, eligible, reason, model in rows:
            i, c = ids[rid]
            assert model == c.model
            if i in failed:
                assert (status, eligible) == ("error", False)
            else:
                assert (status, eligible, reason) == ("ok", True, None)
        # Every eligible call was sampled (rate 1): the stored prompt and answer are the events'.
        samples = q("SELECT sample_id, messages, response_text, status FROM samples")
        assert len(samples) == N - len(failed)
        for sid, messages, answer, status in samples:
            _, c = ids[sid]
            assert orjson.loads(messages) == c.messages
            assert answer == c.task.answer
            assert status == "done"
        # Non-GenAI spans and log lines are counted, never rejected.
        assert {r[0] for r in q("SELECT DISTINCT reason FROM skipped")} == {"not an LLM call"}
        assert q("SELECT sum(items) FROM skipped WHERE topic LIKE '%-logs'") == [(N,)]
    finally:
        con.close()


@pytest.mark.parametrize("encoding", ["proto", "json"])
@pytest.mark.parametrize("first", ["spans", "logs"])
def test_spans_and_their_content_in_log_records_are_joined(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path, encoding: str, first: str) -> None:
    logs_topic = f"{topic}-logs"
    asyncio.run(create_topic(broker.bootstrap, logs_topic))
    cs = calls(seed=61)
    steps = [(topic, spans(cs, encoding)), (logs_topic, logs(cs, encoding))]
    if first == "logs":
        steps.reverse()
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = config(tmp_path, broker, topic, logs_topic, db_path, ms.url, extra=WINDOW)
        asyncio.run(serve(cfg, broker.bootstrap, steps, until=HELD))
    check_joined(db_path, cs)


@pytest.mark.parametrize(("encoding", "first"), [("proto", "spans"), ("json", "logs")])
def test_a_restart_between_span_and_content_loses_nothing(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path, encoding: str, first: str) -> None:
    logs_topic = f"{topic}-logs"
    asyncio.run(create_topic(broker.bootstrap, logs_topic))
    cs = calls(seed=62)
    steps = [(topic, spans(cs, encoding, set())), (logs_topic, logs(cs, encoding, set()))]
    if first == "logs":
        steps.reverse()
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = config(tmp_path, broker, topic, logs_topic, db_path, ms.url)
        asyncio.run(serve(cfg, broker.bootstrap, steps[:1]))
        # Stopped with one side only: it waits in DuckDB, nothing of it in `requests`.
        con = duckdb.connect(str(db_path), read_only=True)
        held = con.execute("SELECT count(DISTINCT key), any_value(kind) FROM otlp_pending").fetchall()
        assert held == [(N, "span" if first == "spans" else "content")]
        assert con.execute("SELECT count(*) FROM requests").fetchall() == [(0,)]
        con.close()
        asyncio.run(serve(cfg, broker.bootstrap, steps[1:], already=N, until=HELD))
    check_joined(db_path, cs, set())


def test_content_that_never_comes_ends_with_the_reason_after_the_window(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    logs_topic = f"{topic}-logs"
    asyncio.run(create_topic(broker.bootstrap, logs_topic))
    cs = calls(seed=63)
    lonely_spans, lonely_logs = cs[:10], cs[10:14]  # neither side ever gets the other
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = config(tmp_path, broker, topic, logs_topic, db_path, ms.url,
                     extra="[formats]\notlp_join_window_s = 1.5\n")
        # No record comes after these: the window must end on the service's own polls.
        asyncio.run(serve(cfg, broker.bootstrap, [
            (topic, [build_request(c, style="logs").SerializeToString() for c in lonely_spans]),
            (logs_topic, [logs_to_otlp_json(build_logs(c)) for c in lonely_logs])],
            until="SELECT count(*) = 0 FROM otlp_pending"))
    con = duckdb.connect(str(db_path), read_only=True)
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    stored = {r[0] for r in q("SELECT request_id FROM requests")}
    assert stored == {request_id_of(c) for c in lonely_spans}
    assert q("SELECT DISTINCT eligible, ineligible_reason FROM requests") == [
        (False, no_content_waited(1.5))]
    assert con.execute("SELECT count(*), sum(items) FROM skipped WHERE reason = ?", [ORPHAN_CONTENT]
                       ).fetchall() == [(len(lonely_logs), 3 * len(lonely_logs))]
    assert q("SELECT count(*) FROM otlp_pending") == [(0,)]
    assert q("SELECT count(*) FROM rejected") == [(0,)]
    con.close()
