"""consumers.formats.otlp_logs and consumers.join: OTel GenAI events as OTLP log records, joined
to their spans in the ingest, in any order, across batches and restarts (a real DuckDB file)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

import sql
from analytics.store import Store
from consumers.config import Price
from consumers.formats import Decoders
from consumers.formats.otlp import NO_CONTENT
from consumers.formats.otlp_logs import decode_json, decode_proto, looks_like_logs
from consumers.ingest import IngestBatch, Ingestor
from consumers.join import LATE_CONTENT, ORPHAN_CONTENT, no_content_waited
from consumers.records import Decoded, DecodeError, RawMessage
from shadowroute.config import Config, load_config
from shadowroute.demo.encoders.otlp import (
    any_value,
    build_logs,
    build_request,
    key_values,
    logs_to_otlp_json,
    request_id_of,
)
from shadowroute.demo.traffic import Call, TrafficGenerator

MSG = RawMessage("otlp_logs", 0, 3, None)
T0 = 1_800_000_000_000  # ms


def cfg(window_s: float = 60.0, max_pending: int = 50_000) -> Config:
    c = load_config(None, env={})
    return c.replace(prices={"gpt-4o": Price(input=2.5, output=10.0)},
                     sampling=dataclasses.replace(c.sampling, default_rate=1.0, rates={}),
                     formats=dataclasses.replace(c.formats, otlp_join_window_s=window_s,
                                                 otlp_join_max_pending=max_pending))


def gpt4o_calls(n: int, seed: int = 5) -> list[Call]:
    cs = [c for c in TrafficGenerator(seed=seed).calls(n * 8) if c.model == "gpt-4o"][:n]
    assert len(cs) == n
    return cs


def both(req: ExportLogsServiceRequest) -> Decoded:
    p = decode_proto(req.SerializeToString(), MSG)
    j = decode_json(logs_to_otlp_json(req), MSG)
    assert p == j
    return p


# -- the decoder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attribute", [False, True])
def test_genai_events_become_content_of_their_span(attribute: bool) -> None:
    (c,) = gpt4o_calls(1)
    out = both(build_logs(c, event_name_attribute=attribute))
    assert out.requests == [] and out.skipped == 1  # the INFO log line of the same span
    (content,) = out.content
    assert content.key == request_id_of(c)
    assert [name for _, name, _ in content.events] == [
        "gen_ai.system.message", "gen_ai.user.message", "gen_ai.choice"]
    assert content.events[1][2]["content"] == c.task.prompt
    assert content.events[2][2]["message"] == {"role": "assistant", "content": c.task.answer}
    assert all(ea["gen_ai.system"] == "openai" and "event.name" not in ea
               for _, _, ea in content.events)


def record(name: str | None, body: Any = None, trace: bytes = b"\x01" * 16,
           span: bytes = b"\x02" * 8) -> LogRecord:
    rec = LogRecord(time_unix_nano=T0 * 10**6, trace_id=trace, span_id=span,
                    attributes=key_values({"gen_ai.system": "openai"}))
    if name:
        rec.event_name = name
    if body is not None:
        rec.body.CopyFrom(any_value(body))
    return rec


def export(*records: LogRecord) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(
        log_records=list(records))])])


def test_other_log_records_and_events_without_a_span_are_skipped_not_rejected() -> None:
    out = both(export(record(None, "GET /health 200"), record("app.started", {"x": 1}),
                      record("gen_ai.user.message", {"content": "hi"}, trace=b"", span=b""),
                      record("gen_ai.user.message", {"content": "hi"})))
    assert out.skipped == 3
    assert [c.key for c in out.content] == [f"{'01' * 16}:{'02' * 8}"]


def test_bad_log_exports_are_rejected_with_a_reason() -> None:
    with pytest.raises(DecodeError, match="OTLP message holds no log records"):
        decode_proto(export().SerializeToString(), MSG)
    with pytest.raises(DecodeError, match=r"log record 0: traceId must be 16 bytes, got 3"):
        decode_proto(export(record("gen_ai.user.message", "hi", trace=b"abc")).SerializeToString(),
                     MSG)
    with pytest.raises(DecodeError, match=r"log record 0: traceId is not a hex id"):
        decode_json(orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"eventName": "gen_ai.choice", "traceId": "zz", "spanId": "0202020202020202"}]}]}]}),
            MSG)


def test_auto_detection_tells_logs_from_traces_in_both_encodings() -> None:
    (c,) = gpt4o_calls(1)
    logs, trace = build_logs(c), build_request(c, style="logs")
    assert looks_like_logs(logs.SerializeToString())
    assert not looks_like_logs(trace.SerializeToString())
    d = Decoders()
    for value in (logs.SerializeToString(), logs_to_otlp_json(logs)):
        out = d.decode(value, MSG)
        assert [x.key for x in out.content] == [request_id_of(c)] and not out.requests
    out = d.decode(trace.SerializeToString(), MSG)
    (r,) = out.requests
    assert r.awaits_content and r.not_replayable == NO_CONTENT and not out.content
    pinned = Decoders({"otlp_logs": "otlp_logs_proto"})
    assert pinned.decode(logs.SerializeToString(), MSG).content == out_content(c)


def out_content(c: Call) -> Any:
    return decode_proto(build_logs(c).SerializeToString(), MSG).content


# -- the join in the ingest ----------------------------------------------------------------------

def span_msg(c: Call, offset: int, failed: bool = False) -> RawMessage:
    return RawMessage("spans", 0, offset, build_request(c, failed, style="logs").SerializeToString())


def logs_msg(c: Call, offset: int, failed: bool = False, **kw: Any) -> RawMessage:
    return RawMessage("logs", 0, offset, build_logs(c, failed, **kw).SerializeToString())


def sample_of(batch: IngestBatch, c: Call) -> dict[str, Any]:
    (s,) = batch.samples.filter(batch.samples["sample_id"] == request_id_of(c)).to_dicts()
    return s


@pytest.mark.parametrize("span_first", [True, False])
def test_a_span_and_its_content_join_in_either_order(span_first: bool) -> None:
    (c,) = gpt4o_calls(1)
    ing = Ingestor(cfg())
    first, second = (span_msg(c, 0), logs_msg(c, 0)) if span_first else (logs_msg(c, 0), span_msg(c, 0))
    b1 = ing.process([first], now_ms=T0)
    assert b1.requests.height == 0
    assert b1.otlp_join["op"].to_list() == ["hold"]
    b2 = ing.process([second], now_ms=T0 + 1000)
    (row,) = b2.requests.to_dicts()
    assert (row["request_id"], row["topic"], row["eligible"]) == (request_id_of(c), "spans", True)
    s = sample_of(b2, c)
    assert orjson.loads(s["messages"]) == c.messages and s["response_text"] == c.task.answer
    assert b2.otlp_join["op"].to_list() == ["done"] and ing.holding == 0


def test_a_span_waits_for_the_choice_when_the_events_come_in_parts() -> None:
    (c,) = gpt4o_calls(1)
    logs = build_logs(c)
    records = list(logs.resource_logs[0].scope_logs[0].log_records)
    head, tail = export(*records[:2]), export(*records[2:])  # messages, then the choice + a line
    ing = Ingestor(cfg())
    assert ing.process([span_msg(c, 0), RawMessage("logs", 0, 0, head.SerializeToString())],
                       now_ms=T0).requests.height == 0
    b = ing.process([RawMessage("logs", 0, 1, tail.SerializeToString())], now_ms=T0 + 10)
    assert sample_of(b, c)["response_text"] == c.task.answer
    assert orjson.loads(sample_of(b, c)["messages"]) == c.messages


def test_a_failed_call_has_no_choice_and_waits_the_window_for_all_its_messages() -> None:
    (c,) = gpt4o_calls(1)
    ing = Ingestor(cfg(window_s=10))
    ing.process([span_msg(c, 0, failed=True)], now_ms=T0)
    assert ing.process([logs_msg(c, 0, failed=True)], now_ms=T0 + 5).requests.height == 0
    b = ing.process([], now_ms=T0 + 10_000)
    (row,) = b.requests.to_dicts()
    assert (row["status"], row["eligible"]) == ("error", False)
    assert row["prompt_hash"] == prompt_hash(c)


def prompt_hash(c: Call) -> str:
    return hashlib.blake2b(orjson.dumps(c.messages), digest_size=12).hexdigest()


def test_content_after_its_span_was_stored_is_counted_late() -> None:
    (c,) = gpt4o_calls(1)
    records = list(build_logs(c).resource_logs[0].scope_logs[0].log_records)
    ing = Ingestor(cfg())
    ing.process([span_msg(c, 0)], now_ms=T0)
    b = ing.process([RawMessage("logs", 0, 0, export(*records[1:3]).SerializeToString()),
                     RawMessage("logs", 0, 1, export(records[0]).SerializeToString())], now_ms=T0)
    assert b.requests.height == 1 and ing.holding == 0
    assert b.skipped.select("offset", "reason", "items").rows() == [(1, LATE_CONTENT, 1)]


def test_what_never_comes_is_let_go_after_the_window_with_the_reason() -> None:
    a, b, c = gpt4o_calls(3)
    ing = Ingestor(cfg(window_s=30))
    ing.process([span_msg(a, 0), logs_msg(b, 0)], now_ms=T0)
    ing.process([span_msg(c, 1)], now_ms=T0 + 20_000)
    early = ing.process([], now_ms=T0 + 29_999)
    assert early.requests.height == 0 and early.skipped.height == 0
    late = ing.process([], now_ms=T0 + 30_000)
    (row,) = late.requests.to_dicts()
    assert (row["request_id"], row["eligible"], row["ineligible_reason"]) == (
        request_id_of(a), False, no_content_waited(30))
    assert late.skipped.select("topic", "offset", "reason", "items").rows() == [
        ("logs", 0, ORPHAN_CONTENT, 3)]
    assert ing.holding == 1  # c, 20 s younger
    final = ing.process([], now_ms=T0 + 20_001, flush_held=True)  # a finite source has ended
    assert final.requests["request_id"].to_list() == [request_id_of(c)]


def test_the_content_capture_turned_off_says_so() -> None:
    (c,) = gpt4o_calls(1)
    ing = Ingestor(cfg())
    ing.process([span_msg(c, 0)], now_ms=T0)
    b = ing.process([logs_msg(c, 0)], now_ms=T0)
    assert b.requests["eligible"].to_list() == [True]
    ing = Ingestor(cfg())
    ing.process([span_msg(c, 0)], now_ms=T0)
    no_content = build_logs(c, content=False)
    b = ing.process([RawMessage("logs", 0, 0, no_content.SerializeToString())], now_ms=T0)
    assert b.requests["ineligible_reason"].to_list() == [NO_CONTENT]


def test_memory_is_bounded_the_oldest_go_first_with_a_reason() -> None:
    cs = gpt4o_calls(5)
    ing = Ingestor(cfg(max_pending=3))
    b = ing.process([span_msg(x, i) for i, x in enumerate(cs)], now_ms=T0)
    assert ing.holding == 3
    assert b.requests["request_id"].to_list() == [request_id_of(x) for x in cs[:2]]
    assert set(b.requests["ineligible_reason"]) == {no_content_waited(60, full=True)}


def test_joining_off_stores_spans_at_once_and_counts_content() -> None:
    (c,) = gpt4o_calls(1)
    b = Ingestor(cfg(window_s=0)).process([span_msg(c, 0), logs_msg(c, 0)], now_ms=T0)
    assert b.requests["ineligible_reason"].to_list() == [NO_CONTENT]
    assert sorted(b.skipped.select("reason", "items").rows()) == [
        ("GenAI log events not joined (formats.otlp_join_window_s = 0)", 3), ("not an LLM call", 1),
        ("not an LLM call", 1)]


# -- durable: any order, any batching, any restarts, through a real DuckDB file ------------------

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 6), restarts=st.integers(0, 4))
def test_any_order_any_batching_and_restarts_join_every_call_once(
        tmp_path_factory: pytest.TempPathFactory, seed: int, batch: int, restarts: int) -> None:
    rnd = random.Random(seed)
    cs = gpt4o_calls(6, seed=seed % 1000)
    parts: list[tuple[str, bytes]] = []
    chunks: list[list[int]] = []  # per call, the positions of its log messages in `parts`
    for i, c in enumerate(cs):
        failed = i == 4
        parts.append(("spans", build_request(c, failed, style="logs").SerializeToString()))
        records = list(build_logs(c, failed).resource_logs[0].scope_logs[0].log_records)
        cut = rnd.randint(0, len(records))  # content split over two messages
        chunks.append([])
        for chunk in (records[:cut], records[cut:]):
            if chunk:
                value = export(*chunk)
                chunks[-1].append(len(parts))
                parts.append(("logs", value.SerializeToString() if rnd.random() < 0.5
                              else logs_to_otlp_json(value)))
    order = list(range(len(parts)))
    rnd.shuffle(order)  # spans and logs in any order; a call's own records in the order written
    for positions in chunks:
        slots = sorted(order.index(p) for p in positions)
        for slot, p in zip(slots, positions, strict=True):
            order[slot] = p
    parts = [parts[p] for p in order]
    offsets = {"spans": 0, "logs": 0}
    msgs = []
    for topic, value in parts:
        msgs.append(RawMessage(topic, 0, offsets[topic], value))
        offsets[topic] += 1
    cuts = sorted(rnd.sample(range(1, len(msgs) + 1), min(restarts, len(msgs))))
    store = Store(tmp_path_factory.mktemp("join") / "s.duckdb")
    try:
        ing = Ingestor(cfg())
        for start in range(0, len(msgs), batch):
            store.write_ingest(ing.process(msgs[start:start + batch], now_ms=T0))
            if cuts and start + batch >= cuts[0]:
                cuts.pop(0)  # a restart: the join state comes back from DuckDB alone
                ing = Ingestor(cfg())
                ing.restore(store.fetch(sql.query("otlp_pending_rows")))
        store.write_ingest(ing.process([], now_ms=T0 + 60_000))  # the failed call's window ends
        assert store.fetch("SELECT count(*) FROM otlp_pending") == [(0,)]
        assert store.fetch("SELECT count(*) FROM skipped WHERE reason <> 'not an LLM call'") == [(0,)]
        rows = {rid: (status, h) for rid, status, h in store.fetch(
            "SELECT request_id, status, prompt_hash FROM requests")}
        assert rows == {request_id_of(c): ("error" if i == 4 else "ok", prompt_hash(c))
                        for i, c in enumerate(cs)}
        samples = {sid: (orjson.loads(m), a) for sid, m, a in store.fetch(
            "SELECT sample_id, messages, response_text FROM samples")}
        assert samples == {request_id_of(c): (c.messages, c.task.answer)
                           for i, c in enumerate(cs) if i != 4}
    finally:
        store.close()


def test_messages_between_restarts_are_not_lost(tmp_path: Path) -> None:
    a, b = gpt4o_calls(2)
    store = Store(tmp_path / "s.duckdb")
    try:
        ing = Ingestor(cfg())
        store.write_ingest(ing.process([span_msg(a, 0), logs_msg(b, 0)], now_ms=T0))
        assert sorted(store.fetch("SELECT key, kind FROM otlp_pending")) == sorted(
            [(request_id_of(a), "span"), (request_id_of(b), "content")])
        ing = Ingestor(cfg())
        ing.restore(store.fetch(sql.query("otlp_pending_rows")))
        assert ing.holding == 2
        store.write_ingest(ing.process([logs_msg(a, 1), span_msg(b, 1)], now_ms=T0 + 5))
        assert store.fetch("SELECT count(*) FROM otlp_pending") == [(0,)]
        assert dict(store.fetch("SELECT request_id, topic || ':' || \"offset\" FROM requests")) == {
            request_id_of(a): "spans:0", request_id_of(b): "spans:1"}
    finally:
        store.close()
