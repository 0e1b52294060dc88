"""consumers.formats.otlp: OpenTelemetry GenAI spans in OTLP protobuf and OTLP/JSON.

Every message here is built with the `opentelemetry-proto` classes and encoded by protobuf itself
(binary, and JSON through `json_format` with the OTLP/JSON differences applied: hex ids, numeric
enums), so the decoders are tested against the real wire formats, not hand-typed fixtures alone.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict, MessageToJson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from consumers.formats import Decoders
from consumers.formats.common import MAX_TOKENS_SANE, MAX_TS_MS
from consumers.formats.otlp import (
    NO_CONTENT,
    NotOtlpProtobuf,
    decode_json,
    decode_json_obj,
    decode_proto,
)
from consumers.ingest import Ingestor
from consumers.records import Decoded, DecodeError, RawMessage, Request
from shadowroute.config import load_config
from shadowroute.demo.encoders.otlp import (
    FAILURE,
    STYLES,
    any_value,
    build_request,
    encode_otlp_json,
    encode_otlp_proto,
    request_id_of,
    style_of,
)
from shadowroute.demo.traffic import TrafficGenerator

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MSG = RawMessage(topic="otlp_spans", partition=1, offset=7, value=None, timestamp_ms=1_700_000_000_123)
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN = bytes.fromhex("00f067aa0ba902b7")
START = 1_780_000_000_250_000_000  # ns
RID = f"{TRACE.hex()}:{SPAN.hex()}"


# -- building OTLP messages with the real classes -----------------------------------------------

def av(v: Any) -> AnyValue:
    """An attribute value as the real encoder builds it; a ready AnyValue (e.g. of a wrong
    type, for the rejection tests) is taken as it is."""
    return v if isinstance(v, AnyValue) else any_value(v)


def kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=av(v)) for k, v in attrs.items()]


def span(attrs: dict[str, Any], *, events: tuple[tuple[str, dict[str, Any]], ...] = (),
         trace_id: bytes = TRACE, span_id: bytes = SPAN, start: int = START,
         end: int | None = None, code: int = 0, message: str = "", name: str = "chat gpt-4o") -> Span:
    return Span(trace_id=trace_id, span_id=span_id, name=name, kind=Span.SpanKind.SPAN_KIND_CLIENT,
                start_time_unix_nano=start, end_time_unix_nano=start + 812_500_000 if end is None else end,
                attributes=kvs(attrs),
                events=[Span.Event(name=n, time_unix_nano=start, attributes=kvs(a)) for n, a in events],
                status=Status(code=code, message=message))  # type: ignore[arg-type]


def http_span(i: int = 0) -> Span:
    return Span(trace_id=TRACE, span_id=bytes([9, 9, 9, 9, 9, 9, 9, i]), name="POST /v1/assist",
                kind=Span.SpanKind.SPAN_KIND_SERVER, start_time_unix_nano=START - 10**6,
                end_time_unix_nano=START + 10**9,
                attributes=kvs({"http.request.method": "POST", "http.route": "/v1/assist",
                                "http.response.status_code": 200}))


RESOURCE = {"service.name": "checkout", "deployment.environment.name": "prod",
            "telemetry.sdk.language": "python", "app.team": "growth"}


def export(*spans: Span, resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=kvs(RESOURCE if resource is None else resource)),
        scope_spans=[ScopeSpans(spans=list(spans))])])


def otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the Collector writes it: protobuf's JSON mapping, hex ids, numeric enums."""
    d = MessageToDict(req, use_integers_for_enums=True)
    for rs in d.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for s in ss.get("spans", ()):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        s[k] = base64.b64decode(s[k]).hex()
    return orjson.dumps(d)


def outcome(fn: Any, value: bytes) -> Decoded | str:
    try:
        return fn(value, MSG)  # type: ignore[no-any-return]
    except DecodeError as e:
        return f"rejected: {e}"


def both(req: ExportTraceServiceRequest) -> Decoded:
    """Decode the message in both encodings, check they agree, return one."""
    p = outcome(decode_proto, req.SerializeToString())
    j = outcome(decode_json, otlp_json(req))
    assert same(p, j), (p, j)
    assert isinstance(p, Decoded), p
    for r in p.requests:
        assert_valid(r)
    return p


def same(p: Decoded | str, j: Decoded | str) -> bool:
    if isinstance(p, str) or isinstance(j, str):
        return p == j
    for r in j.requests:
        assert r.format == "otlp_json"
        r.format = "otlp_proto"
    return p == j


def one(req: ExportTraceServiceRequest) -> Request:
    out = both(req)
    assert len(out.requests) == 1, out
    return out.requests[0]


def reason(req: ExportTraceServiceRequest) -> str:
    p = outcome(decode_proto, req.SerializeToString())
    j = outcome(decode_json, otlp_json(req))
    assert isinstance(p, str), p
    assert p == j
    return p.removeprefix("rejected: ")


def assert_valid(r: Request) -> None:
    """What a decoded request must be, whatever the input was."""
    assert re.fullmatch(r"[0-9a-f]{32}:[0-9a-f]{16}", r.request_id), r.request_id
    assert isinstance(r.model, str) and r.model
    assert isinstance(r.provider, str) and r.provider
    assert r.format in ("otlp_proto", "otlp_json")
    assert 0 <= r.ts_ms < MAX_TS_MS
    assert r.latency_ms is None or (r.latency_ms >= 0 and math.isfinite(r.latency_ms))
    for n in (r.input_tokens, r.output_tokens, r.cached_input_tokens):
        assert n is None or (type(n) is int and 0 <= n <= MAX_TOKENS_SANE)
    assert r.cost_usd is None or (math.isfinite(r.cost_usd) and r.cost_usd >= 0)
    assert r.status in ("ok", "error")
    assert (r.error is not None) == (r.status == "error")
    assert all(type(k) is str and type(v) is str for k, v in r.tags.items())
    assert all(isinstance(m, dict) and type(m.get("role")) is str for m in r.messages)
    assert r.response_text is None or type(r.response_text) is str
    assert r.finish_reason is None or type(r.finish_reason) is str
    assert r.not_replayable is None or (type(r.not_replayable) is str and r.not_replayable)
    assert r.messages or r.not_replayable
    orjson.dumps(r.messages)
    orjson.dumps(r.params)


def current(**changes: Any) -> dict[str, Any]:
    """A chat span in the current semantic conventions (>= 1.37), content captured."""
    a: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.request.temperature": 0.2, "gen_ai.request.max_tokens": 256,
        "gen_ai.request.top_p": 0.9, "gen_ai.request.seed": 42,
        "gen_ai.request.stop_sequences": ["\n\n"],
        "gen_ai.response.id": "chatcmpl-1", "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 1,
        "gen_ai.usage.cache_read.input_tokens": 8,
        "gen_ai.system_instructions": orjson.dumps([{"type": "text", "content": "Be brief."}]).decode(),
        "gen_ai.input.messages": orjson.dumps([
            {"role": "user", "parts": [{"type": "text", "content": "What is 2 + 2?"}]}]).decode(),
        "gen_ai.output.messages": orjson.dumps([
            {"role": "assistant", "parts": [{"type": "text", "content": "4"}],
             "finish_reason": "stop"}]).decode(),
        "server.address": "api.openai.com", "app.feature": "math", "tag.tenant": 7,
    }
    return _changed(a, changes)


def _changed(a: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `key__part=value` changes (None removes the attribute)."""
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            a.pop(k, None)
        else:
            a[k] = v
    return a


def old(**changes: Any) -> dict[str, Any]:
    """The same call in the older conventions (<= 1.27): gen_ai.system, prompt/completion."""
    a: dict[str, Any] = {
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o",
        "gen_ai.usage.prompt_tokens": 20, "gen_ai.usage.completion_tokens": 1,
        "gen_ai.request.temperature": 0.0, "gen_ai.request.max_tokens": 64,
        "gen_ai.prompt": orjson.dumps([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is 2 + 2?"}]).decode(),
        "gen_ai.completion": orjson.dumps([{"role": "assistant", "content": "4"}]).decode(),
        "gen_ai.usage.cost": 0.00006,
    }
    return _changed(a, changes)


PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


# -- current semantic conventions ----------------------------------------------------------------

def test_a_current_semconv_span_becomes_a_request() -> None:
    out = both(export(http_span(), span(current())))
    assert out.skipped == 1  # the HTTP server span is counted, not rejected
    (r,) = out.requests
    assert r.request_id == RID
    assert r.ts_ms == START // 1_000_000
    assert r.latency_ms == pytest.approx(812.5)
    assert r.format == "otlp_proto"
    assert (r.provider, r.model, r.served_model) == ("openai", "gpt-4o", "gpt-4o-2024-08-06")
    assert r.messages == PROMPT
    assert r.params == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, "seed": 42,
                        "stop": ["\n\n"], "tools": False}
    assert (r.response_text, r.finish_reason) == ("4", "stop")
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (20, 1, 8)
    assert (r.cost_usd, r.cost_source) == (None, None)  # priced by the ingest
    assert (r.status, r.error, r.not_replayable) == ("ok", None, None)
    assert r.tags == {"service": "checkout", "environment": "prod", "team": "growth",
                      "feature": "math", "tenant": "7"}


def test_one_model_identity_the_requested_model_with_the_served_snapshot_beside_it() -> None:
    # A success names the dated snapshot that answered, a failure only the requested model:
    # both must land in the same stratum, priced as the model asked for.
    ok = one(export(span(current())))
    failed = one(export(span(current(gen_ai__response__model=None, gen_ai__output__messages=None,
                                     gen_ai__usage__input_tokens=None,
                                     gen_ai__usage__output_tokens=None), code=2,
                             message="429 Too Many Requests")))
    assert (ok.model, ok.served_model) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert (failed.model, failed.served_model) == ("gpt-4o", None)
    assert one(export(span(current(gen_ai__request__model=None)))).model == "gpt-4o-2024-08-06"
    batch = Ingestor(load_config(None, env={})).process([
        RawMessage("otlp_spans", 0, 0, export(span(current())).SerializeToString())])
    row = batch.requests.row(0, named=True)
    assert (row["model"], row["served_model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert row["stratum"].startswith("gpt-4o|")


def test_a_prompt_with_an_empty_or_dropped_part_is_not_replayable() -> None:
    # The instrumentation drops image parts, leaving `parts: []`: replaying the rest would ask
    # the cheap model another question than production was asked.
    dropped = orjson.dumps([{"role": "user", "parts": [{"type": "text", "content": "What is in"}]},
                            {"role": "user", "parts": []}]).decode()
    empty = orjson.dumps([{"role": "user", "parts": [{"type": "text", "content": ""}]}]).decode()
    cfg = load_config(None, env={})
    for attrs in (current(gen_ai__input__messages=dropped), current(gen_ai__input__messages=empty)):
        row = Ingestor(cfg).process([RawMessage("otlp_spans", 0, 0, export(span(
            attrs)).SerializeToString())]).requests.row(0, named=True)
        assert (row["eligible"], row["sampled"]) == (False, False)
        assert row["ineligible_reason"] == "prompt content incomplete"


def test_the_json_encoding_names_its_format() -> None:
    out = decode_json(otlp_json(export(span(current()))), MSG)
    assert out.requests[0].format == "otlp_json"


def test_structured_message_attributes_are_read_like_json_strings() -> None:
    # Newer SDKs record gen_ai.input.messages as an array of kvlists rather than a JSON string.
    r = one(export(span(current(**{
        "gen_ai.input.messages": [{"role": "user", "parts": [
            {"type": "text", "content": "What is "}, {"type": "text", "content": "2 + 2?"}]}],
        "gen_ai.system_instructions": None}))))
    assert r.messages == [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                                        {"type": "text", "text": "2 + 2?"}]}]


def test_tool_calls_and_responses_become_openai_messages() -> None:
    msgs = [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather",
                                         "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "18C"}]},
    ]
    r = one(export(span(current(**{"gen_ai.input.messages": orjson.dumps(msgs).decode(),
                                   "gen_ai.system_instructions": None}))))
    assert r.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather",
                                                          "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ]
    assert r.params["tools"] is True
    assert r.not_replayable is None
    r = one(export(span(current(**{"gen_ai.tool.definitions": '[{"name": "weather"}]'}))))
    assert r.params["tools"] is True


# -- older conventions ----------------------------------------------------------------------------

def test_old_attribute_names() -> None:
    r = one(export(span(old())))
    assert (r.provider, r.model) == ("openai", "gpt-4o")
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (20, 1, None)
    assert r.messages == PROMPT
    assert r.response_text == "4"
    assert (r.cost_usd, r.cost_source) == (pytest.approx(0.00006), "log")
    assert r.params == {"temperature": 0.0, "max_tokens": 64, "tools": False}


@pytest.mark.parametrize("text", ["What is 2 + 2?", "[INST] What is 2 + 2? [/INST]", "{not json"])
def test_old_prompt_as_plain_text(text: str) -> None:
    r = one(export(span(old(gen_ai__prompt=text, gen_ai__completion="4"))))
    assert r.messages == [{"role": "user", "content": text}]
    assert r.response_text == "4"
    assert r.not_replayable is None


def test_indexed_prompt_attributes() -> None:
    a = old(gen_ai__prompt=None, gen_ai__completion=None)
    a |= {"gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "What is 2 + 2?",
          "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
          "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "4",
          "gen_ai.completion.0.finish_reason": "stop"}
    r = one(export(span(a)))
    assert r.messages == PROMPT
    assert (r.response_text, r.finish_reason) == ("4", "stop")


def test_message_events() -> None:
    a = old(gen_ai__prompt=None, gen_ai__completion=None)
    a["gen_ai.operation.name"] = "chat"
    events = (("gen_ai.system.message", {"gen_ai.system": "openai", "content": "Be brief."}),
              ("gen_ai.user.message", {"content": "What is 2 + 2?"}),
              ("gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "4"}}))
    r = one(export(span(a, events=events)))
    assert r.messages == PROMPT
    assert (r.response_text, r.finish_reason) == ("4", "stop")
    assert r.not_replayable is None


def test_message_events_with_a_json_body_and_content_events() -> None:
    a = old(gen_ai__prompt=None, gen_ai__completion=None)
    events = (("gen_ai.user.message", {"body": '{"content": "What is 2 + 2?"}'}),
              ("gen_ai.choice", {"message": '{"content": "4"}'}))
    r = one(export(span(a, events=events)))
    assert r.messages == [{"role": "user", "content": "What is 2 + 2?"}]
    assert r.response_text == "4"
    events = (("gen_ai.content.prompt", {"gen_ai.prompt": orjson.dumps(PROMPT).decode()}),
              ("gen_ai.content.completion", {"gen_ai.completion": "4"}))
    r = one(export(span(a, events=events)))
    assert r.messages == PROMPT
    assert r.response_text == "4"


@pytest.mark.parametrize("where", ["content", "tool_calls"])
def test_binary_values_in_a_message_make_it_not_replayable(where: str) -> None:
    # An AnyValue's bytes inside a message's content parts or tool calls (found by the property
    # test below): nothing a model can be sent, and no JSON to store. The span counts, with the
    # reason, the same in both encodings.
    a = old(gen_ai__prompt=None, gen_ai__completion=None)
    message: dict[str, Any] = {"content": [{"type": "text", "text": "What is 2 + 2?", "raw": b"\x89P"}]}
    if where == "tool_calls":
        message = {"content": "What is 2 + 2?",
                   "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": b""}}]}
    events = (("gen_ai.user.message", message),
              ("gen_ai.choice", {"index": 0, "message": {"role": "assistant", "content": "4"}}))
    r = one(export(span(a, events=events)))
    assert_valid(r)
    assert r.messages == [] and r.response_text == "4"
    assert r.not_replayable == f"event gen_ai.user.message.{where} holds binary values (bytes)"
    assert r.input_tokens == 20  # still counted, with its tokens


# -- content not captured: traffic, not replayable ---------------------------------------------

@pytest.mark.parametrize("attrs", [
    current(gen_ai__input__messages=None, gen_ai__output__messages=None,
            gen_ai__system_instructions=None),
    old(gen_ai__prompt=None, gen_ai__completion=None),
], ids=["current", "old"])
def test_spans_without_content_count_but_are_not_replayable(attrs: dict[str, Any]) -> None:
    r = one(export(span(attrs)))
    assert r.not_replayable == NO_CONTENT
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in NO_CONTENT
    assert r.messages == [] and r.response_text is None
    assert r.input_tokens == 20  # still counted, with its tokens


def test_events_without_content_are_not_replayable() -> None:
    # What the instrumentation emits when content capture is off: the events, without content.
    events = (("gen_ai.system.message", {"gen_ai.system": "openai"}),
              ("gen_ai.user.message", {"gen_ai.system": "openai"}),
              ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}))
    r = one(export(span(old(gen_ai__prompt=None, gen_ai__completion=None), events=events)))
    assert r.not_replayable == NO_CONTENT
    assert r.finish_reason == "stop"


@pytest.mark.parametrize(("changes", "why"), [
    ({"gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text", "content": "Wh'},
     "attribute gen_ai.input.messages is not valid JSON (cut by an attribute length limit?)"),
    ({"gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "blob", "content": "AAAA"}]}]'},
     "gen_ai.input.messages[0] holds a 'blob' part: only text and tool calls can be replayed"),
    ({"gen_ai.input.messages": '[{"parts": []}]'}, "gen_ai.input.messages[0] has no role"),
    ({"gen_ai.input.messages": "[]"},
     "attribute gen_ai.input.messages must be a non-empty list of messages, got array"),
    ({"gen_ai.input.messages": 5},
     "attribute gen_ai.input.messages must be a non-empty list of messages, got int"),
    ({"gen_ai.output.messages": '{"role": "assistant", "parts": [{"type": "text", "content": 4}]}'},
     "gen_ai.output.messages[0].parts[0].content must be a string"),
])
def test_unusable_content_marks_the_request_not_replayable(changes: dict[str, Any], why: str) -> None:
    r = one(export(span(current(**changes))))
    assert r.not_replayable == why
    assert r.input_tokens == 20 and r.model == "gpt-4o"


# -- skipped spans -------------------------------------------------------------------------------

def test_non_genai_and_non_call_genai_spans_are_skipped() -> None:
    tool = span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "weather"},
                span_id=b"\x01" * 8)
    agent = span({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o"},
                 span_id=b"\x02" * 8)
    embed = span({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e-3"},
                 span_id=b"\x03" * 8)
    out = both(export(http_span(0), agent, span(current()), tool, embed, http_span(1)))
    assert [r.request_id for r in out.requests] == [RID]
    assert out.skipped == 5


def test_a_message_of_only_other_spans_is_all_skipped() -> None:
    assert both(export(http_span(0), http_span(1))) == Decoded([], 2)


def test_spans_across_resources_and_scopes() -> None:
    req = export(span(current()))
    second = ResourceSpans(resource=Resource(attributes=kvs({"service.name": "search"})),
                           scope_spans=[ScopeSpans(spans=[http_span()]),
                                        ScopeSpans(spans=[span(old(), span_id=b"\x05" * 8)])])
    req.resource_spans.append(second)
    out = both(req)
    assert out.skipped == 1
    assert [r.tags.get("service") for r in out.requests] == ["checkout", "search"]


def test_a_message_without_spans_is_rejected() -> None:
    assert reason(ExportTraceServiceRequest()) == "OTLP message holds no spans"
    assert reason(export()) == "OTLP message holds no spans"


# -- status, time, tags ----------------------------------------------------------------------------

def test_error_status_with_its_message() -> None:
    a = current(gen_ai__output__messages=None, gen_ai__usage__output_tokens=None)
    r = one(export(span(a, code=2, message=FAILURE)))
    assert (r.status, r.error) == ("error", FAILURE)
    r = one(export(span(a | {"error.type": "timeout"})))
    assert (r.status, r.error) == ("error", "timeout")
    r = one(export(span(a, code=2)))
    assert (r.status, r.error) == ("error", "span status ERROR")
    r = one(export(span(a, code=1)))
    assert (r.status, r.error) == ("ok", None)


def test_a_span_without_start_time_takes_the_message_timestamp() -> None:
    r = one(export(span(current(), start=0, end=0)))
    assert (r.ts_ms, r.latency_ms) == (MSG.timestamp_ms, None)
    req = export(span(current(), start=0, end=0))
    with pytest.raises(DecodeError, match="missing field startTimeUnixNano"):
        decode_proto(req.SerializeToString(), RawMessage("t", 0, 0, None))


def test_float_token_counts_that_are_whole_are_accepted() -> None:
    assert one(export(span(current(gen_ai__usage__input_tokens=20.0)))).input_tokens == 20


# -- rejections --------------------------------------------------------------------------------------

W = f"span 1 (trace {TRACE.hex()}, span {SPAN.hex()})"


@pytest.mark.parametrize(("changes", "kw", "why"), [
    ({"gen_ai.request.model": None, "gen_ai.response.model": None}, {},
     "missing field gen_ai.request.model"),
    ({"gen_ai.response.model": None, "gen_ai.request.model": ""}, {},
     "missing field gen_ai.request.model"),
    ({"gen_ai.request.model": 4}, {}, "attribute gen_ai.request.model must be a string, got int 4"),
    ({"gen_ai.provider.name": ["openai"]}, {},
     "attribute gen_ai.provider.name must be a string, got array ['openai']"),
    ({"gen_ai.operation.name": True}, {},
     "attribute gen_ai.operation.name must be a string, got bool True"),
    ({"gen_ai.usage.input_tokens": "20"}, {},
     "attribute gen_ai.usage.input_tokens must be an int, got string '20'"),
    ({"gen_ai.usage.output_tokens": -3}, {},
     "attribute gen_ai.usage.output_tokens is not a plausible token count: -3"),
    ({"gen_ai.usage.input_tokens": 10**12}, {},
     "attribute gen_ai.usage.input_tokens is not a plausible token count: 1000000000000"),
    ({"gen_ai.usage.cache_read.input_tokens": 1.5}, {},
     "attribute gen_ai.usage.cache_read.input_tokens must be an int, got double 1.5"),
    ({"gen_ai.request.temperature": "hot"}, {},
     "attribute gen_ai.request.temperature must be a number, got string 'hot'"),
    ({"gen_ai.request.temperature": math.nan}, {},
     "attribute gen_ai.request.temperature must be a number, got double nan"),
    ({"gen_ai.request.top_p": 7.0}, {}, "attribute gen_ai.request.top_p is out of range [0, 1]: 7.0"),
    ({"gen_ai.request.seed": "x"}, {}, "attribute gen_ai.request.seed must be an int, got string 'x'"),
    ({"gen_ai.request.stop_sequences": [1, 2]}, {},
     "attribute gen_ai.request.stop_sequences must be an array of strings, got array [1, 2]"),
    ({"gen_ai.response.finish_reasons": {"a": 1}}, {},
     "attribute gen_ai.response.finish_reasons must be an array of strings, got kvlist {'a': 1}"),
    ({"gen_ai.usage.cost": -1.0}, {}, "attribute gen_ai.usage.cost is out of range [0, 1e+12]: -1.0"),
    ({}, {"code": 7}, "span status code 7 is not 0 (unset), 1 (ok) or 2 (error)"),
    ({}, {"end": START - 1},
     f"endTimeUnixNano ({START - 1}) is before startTimeUnixNano ({START})"),
])
def test_invalid_attributes_reject_the_message_naming_the_span(
        changes: dict[str, Any], kw: dict[str, Any], why: str) -> None:
    assert reason(export(http_span(), span(current(**changes), **kw))) == f"{W}: {why}"


@pytest.mark.parametrize(("kw", "why"), [
    ({"trace_id": b""}, "missing field traceId"),
    ({"span_id": b"\x00" * 8}, "spanId is all zeros (an invalid id)"),
    ({"trace_id": b"\x01" * 5}, "traceId must be 16 bytes, got 5"),
])
def test_invalid_ids(kw: dict[str, Any], why: str) -> None:
    assert reason(export(span(current(), **kw))).endswith(f": {why}")


def test_one_bad_span_rejects_the_whole_message() -> None:
    good = span(current(), span_id=b"\x07" * 8)
    bad = span(current(gen_ai__request__model=None, gen_ai__response__model=None))
    assert reason(export(good, http_span(), bad)) == (
        f"span 2 (trace {TRACE.hex()}, span {SPAN.hex()}): missing field gen_ai.request.model")


# -- OTLP/JSON specifics -----------------------------------------------------------------------------

def test_json_as_protobufs_generic_mapping_writes_it() -> None:
    # MessageToJson's defaults: base64 ids and enum names, not OTLP/JSON's hex and numbers.
    req = export(http_span(), span(current(), code=2, message="boom"))
    p = decode_proto(req.SerializeToString(), MSG)
    j = decode_json(MessageToJson(req).encode(), MSG)
    assert same(p, j)
    assert j.requests[0].status == "error"


def test_json_int_values_as_strings_or_numbers() -> None:
    d = orjson.loads(otlp_json(export(span(current()))))
    attrs = d["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    tokens = next(a for a in attrs if a["key"] == "gen_ai.usage.input_tokens")
    assert tokens["value"] == {"intValue": "20"}  # int64 is a string in OTLP/JSON
    tokens["value"] = {"intValue": 21}
    assert decode_json(orjson.dumps(d), MSG).requests[0].input_tokens == 21
    assert decode_json_obj(d, MSG).requests[0].input_tokens == 21
    tokens["value"] = {"intValue": "2x"}
    with pytest.raises(DecodeError, match=r"gen_ai.usage.input_tokens: intValue '2x' is not an integer"):
        decode_json(orjson.dumps(d), MSG)
    tokens["value"] = {"intValue": 1.5}
    with pytest.raises(DecodeError) as e:
        decode_json(orjson.dumps(d), MSG)
    assert str(e.value) == ("field resourceSpans[0].scopeSpans[0].spans[0].attributes[11].value"
                            ".intValue: Expected int | str | null, got float")


@pytest.mark.parametrize(("value", "why"), [
    (b'{"resourceSpans": [', "invalid JSON: Input data was truncated"),
    (b'{"resourceSpans": "x"}', "field resourceSpans: Expected array | null, got str"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
     "field resourceSpans[0].scopeSpans[0].spans[0].traceId: Expected str, got int"),
    (b'{"resourceSpan": []}', "OTLP message holds no spans"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon", "attributes": '
     b'[{"key": "gen_ai.request.model", "value": {"stringValue": "m"}}]}]}]}]}',
     "span 0 (trace ?, span ?): missing field traceId"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "attributes": '
     b'[{"key": "gen_ai.request.model", "value": {"stringValue": "m"}}]}]}]}]}',
     "span 0 (trace zz, span ?): traceId is not a hex id: 'zz'"),
    (b'\xff{"resourceSpans": []}', "invalid UTF-8 at byte 0"),
])
def test_json_reasons(value: bytes, why: str) -> None:
    with pytest.raises(DecodeError) as e:
        decode_json(value, MSG)
    assert str(e.value) == why


def test_not_protobuf() -> None:
    with pytest.raises(NotOtlpProtobuf) as e:
        decode_proto(b"hello, this is plain text", MSG)
    assert str(e.value) == ("not an OTLP protobuf trace export (invalid protobuf wire format); "
                            "it starts with 'hello, this is plain tex'")
    with pytest.raises(NotOtlpProtobuf, match=r"^not an OTLP protobuf trace export \(no resourceSpans"):
        decode_proto(b"\x08\x01", MSG)  # a valid protobuf, of something else
    # An export with a bad span is OTLP protobuf: a plain DecodeError, for auto-detection.
    bad = export(span(current(gen_ai__request__model=None, gen_ai__response__model=None)))
    with pytest.raises(DecodeError) as bad_span:
        decode_proto(bad.SerializeToString(), MSG)
    assert not isinstance(bad_span.value, NotOtlpProtobuf)


# -- routing through the format registry ------------------------------------------------------------

def test_auto_detection_routes_both_encodings() -> None:
    req = export(http_span(), span(current()))
    decoders = Decoders()
    assert decoders.decode(req.SerializeToString(), MSG).requests[0].format == "otlp_proto"
    j = otlp_json(req)
    assert decoders.decode(j, MSG).requests[0].format == "otlp_json"
    # A JSON array or NDJSON of exports (the Collector's file exporter writes one per line).
    other = otlp_json(export(span(old(), span_id=b"\x05" * 8)))
    for many in (b"[" + j + b"," + other + b"]", j + b"\n" + other + b"\n"):
        out = decoders.decode(many, MSG)
        assert (len(out.requests), out.skipped) == (2, 1)
    pinned = Decoders(by_topic={"otlp_spans": "otlp_proto"})
    assert pinned.decode(req.SerializeToString(), MSG).requests[0].request_id == RID


# -- the encoder of the traffic generator -------------------------------------------------------------

@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("content", [True, False])
@pytest.mark.parametrize("failed", [False, True])
def test_encoded_calls_decode_to_what_was_encoded(style: str, content: bool, failed: bool) -> None:
    for call in TrafficGenerator(seed=4).calls(6):
        p = decode_proto(encode_otlp_proto(call, failed, style=style, content=content), MSG)
        j = decode_json(encode_otlp_json(call, failed, style=style, content=content), MSG)
        assert same(p, j), (p, j)
        (r,) = p.requests
        assert_valid(r)
        assert p.skipped in (1, 2)
        assert r.request_id == request_id_of(call)
        assert r.model == call.model and r.provider == "openai"
        assert r.ts_ms == round(call.ts * 1000)
        assert r.latency_ms == pytest.approx(call.latency_ms)
        assert {k: r.tags[k] for k in call.tags} == call.tags
        assert r.tags["service"] == f"assistant-{call.tags['app']}"
        if failed:
            assert (r.status, r.error) == ("error", FAILURE)
            assert (r.response_text, r.input_tokens) == (None, None)
        else:
            assert (r.status, r.input_tokens, r.output_tokens) == ("ok", call.input_tokens,
                                                                   call.output_tokens)
        if not content:
            assert r.not_replayable == NO_CONTENT
        else:
            assert r.not_replayable is None
            assert r.messages == call.messages
            if not failed:
                assert (r.response_text, r.finish_reason) == (call.task.answer, "stop")
        if style == "old" and not failed:
            assert r.cost_usd == pytest.approx(call.cost_usd)


def test_encoder_styles_and_json_follow_otlp() -> None:
    calls = list(TrafficGenerator(seed=2).calls(400))
    seen = {style_of(c) for c in calls}
    assert seen == set(STYLES)
    d = orjson.loads(encode_otlp_json(calls[0]))
    spans = [s for ss in d["resourceSpans"][0]["scopeSpans"] for s in ss["spans"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", s["traceId"]) for s in spans)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s["spanId"]) for s in spans)
    assert all(isinstance(s["kind"], int) for s in spans)
    assert isinstance(spans[0]["startTimeUnixNano"], str)
    assert build_request(calls[0]).SerializeToString() == encode_otlp_proto(calls[0])


# -- property tests: whatever arrives, a valid Decoded or a DecodeError ------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # protobuf strings are UTF-8
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = (TEXT | INT64 | st.floats() | st.booleans() | st.binary(max_size=8)
           | st.sampled_from(["", "chat", "gpt-4o", "[", '[{"role": "user"}]', "NaN"]))
any_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(TEXT | st.sampled_from(["role", "content", "parts", "type"]),
                                            inner, max_size=3), max_leaves=8)
KEYS = sorted({*current(), *old(), "gen_ai.tool.definitions", "error.type", "gen_ai.prompt.0.content",
               "gen_ai.prompt.0.role", "gen_ai.completion.0.content", "gen_ai.request.choice.count",
               "gen_ai.request.frequency_penalty", "gen_ai.request.presence_penalty"})
EVENTS = ["gen_ai.user.message", "gen_ai.system.message", "gen_ai.assistant.message",
          "gen_ai.tool.message", "gen_ai.choice", "gen_ai.content.prompt", "gen_ai.content.completion",
          "exception"]


@st.composite
def mutated_attrs(draw: st.DrawFn) -> dict[str, Any]:
    """A good span's attributes with some dropped and some given values of any OTLP type."""
    a = draw(st.sampled_from([current(), old(), current(gen_ai__input__messages=None)]))
    for k in draw(st.lists(st.sampled_from(KEYS), max_size=5)):
        if draw(st.booleans()):
            a.pop(k, None)
        else:
            a[k] = draw(any_values | st.integers(min_value=-(2**40), max_value=2**40))
    return a


@st.composite
def spans(draw: st.DrawFn) -> Span:
    """Mostly well-formed spans with mutated attributes; now and then broken ids, times, status."""
    def rare() -> bool:
        return draw(st.integers(min_value=0, max_value=19)) == 5  # not a bound, which Hypothesis favours

    start = draw(st.sampled_from([0, 2**64 - 1]) | st.integers(min_value=0, max_value=2**64 - 1)
                 ) if rare() else START
    attrs = draw(st.dictionaries(st.sampled_from(KEYS) | TEXT, any_values, max_size=6)
                 ) if rare() else draw(mutated_attrs())
    events = draw(st.lists(st.tuples(st.sampled_from(EVENTS), st.dictionaries(
        st.sampled_from(["content", "body", "message", "index", "finish_reason", "role",
                         "gen_ai.prompt", "gen_ai.completion"]), any_values, max_size=3)), max_size=3))
    return span(
        attrs, events=tuple(events),
        trace_id=draw(st.sampled_from([b"", b"\x00" * 16]) | st.binary(max_size=17)) if rare() else TRACE,
        span_id=draw(st.binary(max_size=9)) if rare() else SPAN,
        start=start,
        end=draw(st.integers(min_value=0, max_value=2**64 - 1)) if rare() else min(start + 10**9, 2**64 - 1),
        code=draw(st.integers(min_value=-5, max_value=2**31 - 1)) if rare() else draw(
            st.sampled_from([0, 1, 2])))


exports = st.builds(lambda ss, res: export(*ss, resource=res),
                    st.lists(spans() | st.just(http_span()), min_size=1, max_size=4),
                    st.dictionaries(st.sampled_from([*RESOURCE, "tag.x"]), any_values, max_size=3))


@SETTINGS
@given(exports)
def test_any_otlp_message_decodes_the_same_in_both_encodings_or_is_rejected(
        req: ExportTraceServiceRequest) -> None:
    p = outcome(decode_proto, req.SerializeToString())
    j = outcome(decode_json, otlp_json(req))
    assert same(p, j), (p, j)
    if isinstance(p, Decoded):
        n_spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        assert len(p.requests) + p.skipped == n_spans
        for r in p.requests:
            assert_valid(r)
    else:
        assert "decoder bug" not in p
        assert len(p) < 600


def mutate(value: bytes, rnd: random.Random) -> bytes:
    b = bytearray(value)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        i = rnd.randrange(len(b) + 1)
        if op < 0.4 and b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif op < 0.6:
            del b[i:i + rnd.randint(1, 8)]
        elif op < 0.8:
            b[i:i] = rnd.randbytes(rnd.randint(1, 4))
        else:
            del b[i:]
    return bytes(b)


def check_decoded(fn: Any, value: bytes) -> None:
    try:
        out = fn(value, MSG)
    except DecodeError as e:
        assert str(e) and "decoder bug" not in str(e), str(e)
        return
    assert isinstance(out, Decoded) and out.skipped >= 0
    for r in out.requests:
        assert_valid(r)


GOOD = [encode_otlp_proto(c, i % 7 == 0) for i, c in enumerate(TrafficGenerator(seed=8).calls(20))]
GOOD_JSON = [encode_otlp_json(c, i % 7 == 0) for i, c in enumerate(TrafficGenerator(seed=8).calls(20))]


@SETTINGS
@given(st.sampled_from(GOOD), st.randoms(use_true_random=False))
def test_mutated_protobuf_bytes_decode_or_raise_decode_error(value: bytes, rnd: random.Random) -> None:
    check_decoded(decode_proto, mutate(value, rnd))


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_decode_error(value: bytes) -> None:
    check_decoded(decode_proto, value)


def json_mutations(obj: Any, rnd: random.Random, new: Any) -> Any:
    """Replace one value somewhere in a JSON tree."""
    path: list[Any] = []
    node = obj
    while isinstance(node, (dict, list)) and node and rnd.random() < 0.85:
        key = rnd.choice(list(node)) if isinstance(node, dict) else rnd.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        return new
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = new
    return obj


json_any = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                        | st.floats() | TEXT | st.sampled_from(["1", "-0", "NaN", "AAAA", "ab" * 16]),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.sampled_from(["stringValue", "intValue", "doubleValue",
                                                           "boolValue", "arrayValue", "kvlistValue",
                                                           "bytesValue", "values", "key", "value"])
                                          | TEXT, inner, max_size=3), max_leaves=8)


@SETTINGS
@given(st.sampled_from(GOOD_JSON), st.randoms(use_true_random=False), json_any)
def test_mutated_otlp_json_decodes_or_raises_decode_error(value: bytes, rnd: random.Random,
                                                         new: Any) -> None:
    obj = json_mutations(orjson.loads(value), rnd, new)
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # an int past 64 bits, which no JSON log holds
        return
    check_decoded(decode_json, data)
    try:
        out = decode_json_obj(obj, MSG)
    except DecodeError:
        return
    for r in out.requests:
        assert_valid(r)


# -- through the ingest: every message ends in exactly one place ----------------------------------

def messages(rnd: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        kind = rnd.randrange(6)
        if kind == 0:
            yield mutate(rnd.choice(GOOD), rnd)
        elif kind == 1:
            yield rnd.choice(GOOD)
        elif kind == 2:
            yield rnd.choice(GOOD_JSON)
        elif kind == 3:
            yield mutate(rnd.choice(GOOD_JSON), rnd)
        elif kind == 4:
            yield export(http_span()).SerializeToString()
        else:
            yield rnd.randbytes(rnd.randrange(40))


@SETTINGS
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=30))
def test_ingest_puts_every_message_in_exactly_one_place(rnd: random.Random, n: int) -> None:
    values = list(messages(rnd, n))
    batch = Ingestor(load_config(None, env={})).process(
        [RawMessage("otlp_spans", 0, i, v) for i, v in enumerate(values)])
    rejected = set(batch.rejected["offset"].to_list())
    accepted = set(batch.requests["offset"].to_list()) | set(batch.skipped["offset"].to_list())
    assert not rejected & accepted
    # A message whose spans were all seen before in the batch is a duplicate skip: still accepted.
    assert rejected | accepted == set(range(n))
    assert all(r and "decoder bug" not in r for r in batch.rejected["reason"].to_list())


def test_ingest_rows_of_a_decoded_message() -> None:
    req = export(http_span(0), span(current()), http_span(1))
    not_replayable = export(span(current(gen_ai__input__messages=None), span_id=b"\x03" * 8))
    cfg = load_config(None, env={})
    # The span without content may get it from log records: by default it waits for them.
    held = Ingestor(cfg).process([RawMessage("otlp_spans", 0, 1, otlp_json(not_replayable))])
    assert held.requests.height == 0
    assert held.otlp_join.select("op", "key", "kind").rows() == [
        ("hold", f"{TRACE.hex()}:{'03' * 8}", "span")]
    no_join = cfg.replace(formats=dataclasses.replace(cfg.formats, otlp_join_window_s=0))
    batch = Ingestor(no_join).process([
        RawMessage("otlp_spans", 0, 0, req.SerializeToString()),
        RawMessage("otlp_spans", 0, 1, otlp_json(not_replayable)),
        RawMessage("otlp_spans", 0, 2, export(http_span()).SerializeToString()),
        RawMessage("otlp_spans", 0, 3, ExportTraceServiceRequest(
            resource_spans=[ResourceSpans()]).SerializeToString()),
    ])
    rows = batch.requests.sort("offset").to_dicts()
    assert [r["request_id"] for r in rows] == [RID, f"{TRACE.hex()}:{'03' * 8}"]
    assert [r["format"] for r in rows] == ["otlp_proto", "otlp_json"]
    assert rows[1]["eligible"] is False and rows[1]["ineligible_reason"] == NO_CONTENT
    assert batch.skipped.select("offset", "reason", "items").rows() == [
        (0, "not an LLM call", 2), (2, "not an LLM call", 1)]
    [(offset, why)] = batch.rejected.select("offset", "reason").rows()
    assert offset == 3 and "OTLP message holds no spans" in why
