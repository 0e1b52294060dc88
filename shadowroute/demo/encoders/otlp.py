"""Generated calls as OpenTelemetry GenAI traces, the way the Collector's Kafka exporter writes
them: `otlp_proto` (an `ExportTraceServiceRequest` in protobuf binary, its default encoding) and
`otlp_json` (the same message in OTLP/JSON).

Each message holds one trace of a real-looking app: an HTTP server span, the GenAI span of the
model call under it and, for some calls, the HTTP client span of the call to the provider. The
GenAI span is written in one of four styles of instrumentation, picked per call from a hash of its
id (so a call is always encoded the same way):

    current   semconv >= 1.37: gen_ai.provider.name, gen_ai.input/output.messages with parts
    events    semconv 1.28-1.36: gen_ai.system + gen_ai.user.message / gen_ai.choice span events
    old       semconv <= 1.27: gen_ai.prompt / gen_ai.completion JSON, prompt/completion_tokens
    indexed   OpenLLMetry: gen_ai.prompt.0.role, gen_ai.prompt.0.content, ...

Messages are built with the `opentelemetry-proto` classes. For JSON, protobuf's `MessageToDict`
gives the proto3 JSON mapping that OTLP/JSON is based on (int64 as strings, camelCase), with
the two places where OTLP/JSON differs from it fixed: ids are hex, not base64, and enums are
numbers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from shadowroute.demo.calls import Call

__all__ = ["STYLES", "build_request", "encode_otlp_json", "encode_otlp_proto", "request_id_of",
           "style_of", "to_otlp_json", "any_value", "key_values", "build_logs", "logs_to_otlp_json"]

STYLES = ("current", "events", "old", "indexed")
_STYLE_BY_BUCKET = ("current",) * 12 + ("events",) * 3 + ("old",) * 3 + ("indexed",) * 2
FAILURE = "RateLimitError: 429 Too Many Requests"
_SERVER, _CLIENT = Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CLIENT


def _digest(call: Call, what: str, size: int) -> bytes:
    return hashlib.blake2b(f"{call.request_id}/{what}".encode(), digest_size=size).digest()


def style_of(call: Call) -> str:
    return _STYLE_BY_BUCKET[_digest(call, "style", 1)[0] % len(_STYLE_BY_BUCKET)]


def request_id_of(call: Call) -> str:
    """The request id the decoders give this call's GenAI span: `{traceId}:{spanId}` in hex."""
    return f"{_digest(call, 'trace', 16).hex()}:{_digest(call, 'genai', 8).hex()}"


def any_value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(v)))
    raise TypeError(f"no OTLP value for {type(v).__name__}")


def key_values(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items() if v is not None]


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()


@functools.cache
def _resource(app: str, replica: int) -> Resource:
    """One of a few pods per app; built once (protobuf copies it into each message)."""
    pod = hashlib.blake2b(f"{app}/{replica}".encode(), digest_size=3).hexdigest()
    return Resource(attributes=key_values({
        "service.name": f"assistant-{app}", "service.namespace": "shop",
        "service.version": "2.14.1", "service.instance.id": f"assistant-{app}-7d9f-{pod}",
        "deployment.environment.name": "production",
        "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.38.0", "process.runtime.name": "cpython",
        "process.runtime.version": "3.12.7", "host.name": f"ip-10-0-{pod[0:2]}-{pod[2:4]}",
        "cloud.provider": "aws", "cloud.region": "eu-west-1",
        "k8s.namespace.name": "assistant", "k8s.pod.name": f"assistant-{app}-7d9f-{pod}",
    }))


def _genai_attributes(call: Call, failed: bool, style: str, content: bool,
                      tag_prefix: str) -> tuple[dict[str, Any], list[Span.Event]]:
    """The GenAI span's attributes and events in the given instrumentation style."""
    ok = not failed
    system, prompt, answer = call.task.system, call.task.prompt, call.task.answer
    a: dict[str, Any] = {}
    events: list[Span.Event] = []
    if style == "current":
        a |= {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
              "gen_ai.request.model": call.model, "gen_ai.request.temperature": 0.0,
              "gen_ai.request.max_tokens": 512, "gen_ai.output.type": "text"}
        if content:
            a["gen_ai.system_instructions"] = _json([{"type": "text", "content": system}])
            a["gen_ai.input.messages"] = _json(
                [{"role": "user", "parts": [{"type": "text", "content": prompt}]}])
        if ok:
            a |= {"gen_ai.response.id": f"chatcmpl-{call.request_id}",
                  "gen_ai.response.model": call.model, "gen_ai.response.finish_reasons": ["stop"],
                  "gen_ai.usage.input_tokens": call.input_tokens,
                  "gen_ai.usage.output_tokens": call.output_tokens}
            if call.cached_input_tokens:
                a["gen_ai.usage.cache_read.input_tokens"] = call.cached_input_tokens
            if content:
                a["gen_ai.output.messages"] = _json([{
                    "role": "assistant", "parts": [{"type": "text", "content": answer}],
                    "finish_reason": "stop"}])
    elif style in ("events", "logs"):
        a |= {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
              "gen_ai.request.model": call.model, "gen_ai.request.temperature": 0.0,
              "gen_ai.request.max_tokens": 512}
        if ok:
            a |= {"gen_ai.response.id": f"chatcmpl-{call.request_id}",
                  "gen_ai.response.model": call.model, "gen_ai.response.finish_reasons": ["stop"],
                  "gen_ai.usage.input_tokens": call.input_tokens,
                  "gen_ai.usage.output_tokens": call.output_tokens}
        # Without content capture the instrumentation still emits the events, without content.
        events.append(Span.Event(name="gen_ai.system.message", attributes=key_values(
            {"gen_ai.system": "openai", "content": system if content else None})))
        events.append(Span.Event(name="gen_ai.user.message", attributes=key_values(
            {"gen_ai.system": "openai", "content": prompt if content else None})))
        if ok:
            message: dict[str, Any] = {"role": "assistant"}
            if content:
                message["content"] = answer
            events.append(Span.Event(name="gen_ai.choice", attributes=key_values(
                {"gen_ai.system": "openai", "index": 0, "finish_reason": "stop",
                 "message": message})))
    elif style == "old":
        a |= {"gen_ai.system": "openai", "llm.request.type": "chat",
              "gen_ai.request.model": call.model, "gen_ai.request.temperature": 0.0,
              "gen_ai.request.max_tokens": 512}
        if content:
            a["gen_ai.prompt"] = _json(call.messages)
        if ok:
            a |= {"gen_ai.response.id": f"chatcmpl-{call.request_id}",
                  "gen_ai.response.model": call.model, "gen_ai.response.finish_reasons": ["stop"],
                  "gen_ai.usage.prompt_tokens": call.input_tokens,
                  "gen_ai.usage.completion_tokens": call.output_tokens,
                  "gen_ai.usage.cost": call.cost_usd}
            if content:
                a["gen_ai.completion"] = _json([{"role": "assistant", "content": answer}])
    elif style == "indexed":
        a |= {"gen_ai.system": "openai", "llm.request.type": "chat",
              "gen_ai.request.model": call.model, "gen_ai.request.temperature": 0.0,
              "gen_ai.request.max_tokens": 512, "gen_ai.openai.api_base": "https://api.openai.com/v1/"}
        if content:
            for i, m in enumerate(call.messages):
                a[f"gen_ai.prompt.{i}.role"] = m["role"]
                a[f"gen_ai.prompt.{i}.content"] = m["content"]
        if ok:
            a |= {"gen_ai.response.model": call.model,
                  "gen_ai.usage.prompt_tokens": call.input_tokens,
                  "gen_ai.usage.completion_tokens": call.output_tokens,
                  "llm.usage.total_tokens": call.input_tokens + call.output_tokens,
                  "gen_ai.completion.0.finish_reason": "stop", "gen_ai.completion.0.role": "assistant"}
            if content:
                a["gen_ai.completion.0.content"] = answer
    else:
        raise ValueError(f"unknown style {style!r}; one of {', '.join(STYLES)}, logs")
    if style == "logs":
        events = []  # the default conventions: the content goes to log records (`build_logs`)
    a |= {"server.address": "api.openai.com", "server.port": 443}
    if failed:
        a["error.type"] = "RateLimitError"
    a |= {f"{tag_prefix}{k}": v for k, v in call.tags.items()}
    return a, events


def build_request(call: Call, failed: bool = False, *, style: str | None = None,
                  content: bool = True) -> ExportTraceServiceRequest:
    """The call as one trace: HTTP server span -> GenAI span (-> HTTP client span)."""
    style = style or style_of(call)
    trace_id = _digest(call, "trace", 16)
    root_id, genai_id, client_id = (_digest(call, "root", 8), _digest(call, "genai", 8),
                                    _digest(call, "client", 8))
    start = round(call.ts * 1000) * 1_000_000
    end = start + round(call.latency_ms * 1e6)
    feature = call.tags.get("feature", "chat")
    err = Status(code=Status.StatusCode.STATUS_CODE_ERROR, message=FAILURE) if failed else Status()

    attrs, events = _genai_attributes(call, failed, style, content,
                                      "app." if style in ("current", "events", "logs") else "tag.")
    for ev in events:
        ev.time_unix_nano = end
    genai = Span(trace_id=trace_id, span_id=genai_id, parent_span_id=root_id,
                 name=f"chat {call.model}" if style in ("current", "events", "logs")
                 else "openai.chat",
                 kind=_CLIENT, start_time_unix_nano=start, end_time_unix_nano=end,
                 attributes=key_values(attrs), events=events, status=err)
    root = Span(trace_id=trace_id, span_id=root_id, name=f"POST /v1/assist/{feature}", kind=_SERVER,
                start_time_unix_nano=start - 3_100_000, end_time_unix_nano=end + 4_700_000,
                attributes=key_values({
                    "http.request.method": "POST", "http.route": f"/v1/assist/{feature}",
                    "url.path": f"/v1/assist/{feature}", "url.scheme": "https",
                    "http.response.status_code": 502 if failed else 200,
                    "network.protocol.version": "1.1", "user_agent.original": "shop-web/5.2",
                    "client.address": "10.0.3.17"}),
                status=Status(code=Status.StatusCode.STATUS_CODE_ERROR) if failed else Status())
    scopes = [
        ScopeSpans(scope=InstrumentationScope(name="opentelemetry.instrumentation.fastapi",
                                              version="0.59b0"), spans=[root]),
        ScopeSpans(scope=InstrumentationScope(
            name=("opentelemetry.instrumentation.openai_v2" if style in ("current", "events", "logs")
                  else "opentelemetry.instrumentation.openai.v1"), version="2.1b0"), spans=[genai]),
    ]
    if _digest(call, "client?", 1)[0] % 2:
        scopes.append(ScopeSpans(
            scope=InstrumentationScope(name="opentelemetry.instrumentation.httpx", version="0.59b0"),
            spans=[Span(trace_id=trace_id, span_id=client_id, parent_span_id=genai_id, name="POST",
                        kind=_CLIENT, start_time_unix_nano=start + 1_200_000,
                        end_time_unix_nano=end - 800_000,
                        attributes=key_values({
                            "http.request.method": "POST",
                            "url.full": "https://api.openai.com/v1/chat/completions",
                            "server.address": "api.openai.com", "server.port": 443,
                            "http.response.status_code": 429 if failed else 200}),
                        status=Status(code=Status.StatusCode.STATUS_CODE_ERROR) if failed else Status())]))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=_resource(call.tags.get("app", "api"), _digest(call, "pod", 1)[0] % 4),
        scope_spans=scopes,
        schema_url="https://opentelemetry.io/schemas/1.37.0")])


def to_otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON of a message: protobuf's JSON mapping with hex ids and numeric enums."""
    d = MessageToDict(req, use_integers_for_enums=True)
    for rs in d.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in span:
                        span[k] = _b64_to_hex(span[k])
    return orjson.dumps(d)


def _b64_to_hex(v: str) -> str:
    return base64.b64decode(v).hex()


def encode_otlp_proto(call: Call, failed: bool = False, *, style: str | None = None,
                      content: bool = True) -> bytes:
    return build_request(call, failed, style=style, content=content).SerializeToString()


def encode_otlp_json(call: Call, failed: bool = False, *, style: str | None = None,
                     content: bool = True) -> bytes:
    return to_otlp_json(build_request(call, failed, style=style, content=content))


def build_logs(call: Call, failed: bool = False, *, content: bool = True,
               event_name_attribute: bool = False) -> ExportLogsServiceRequest:
    """The call's GenAI events as OTLP log records, as the instrumentations emit them by default
    (style `logs` is its span): one record per message and one for the choice, the content in
    the body and the GenAI span's ids on each record, plus an ordinary log line of the same
    span (not a GenAI event). `event_name_attribute`: name events in an `event.name` attribute,
    as SDKs before the LogRecord `event_name` field did."""
    trace_id, span_id = _digest(call, "trace", 16), _digest(call, "genai", 8)
    start = round(call.ts * 1000) * 1_000_000
    end = start + round(call.latency_ms * 1e6)
    events: list[tuple[str, int, dict[str, Any]]] = [
        ("gen_ai.system.message", start + 1_000, {"content": call.task.system} if content else {}),
        ("gen_ai.user.message", start + 2_000, {"content": call.task.prompt} if content else {}),
    ]
    if not failed:
        message: dict[str, Any] = {"role": "assistant"}
        if content:
            message["content"] = call.task.answer
        events.append(("gen_ai.choice", end - 1_000,
                       {"index": 0, "finish_reason": "stop", "message": message}))
    records = []
    for name, t, body in events:
        attrs: dict[str, Any] = {"gen_ai.system": "openai"}
        if event_name_attribute:
            attrs["event.name"] = name
        rec = LogRecord(time_unix_nano=t, observed_time_unix_nano=t, trace_id=trace_id,
                        span_id=span_id, attributes=key_values(attrs), body=any_value(body))
        if not event_name_attribute:
            rec.event_name = name
        records.append(rec)
    records.append(LogRecord(time_unix_nano=start + 500, severity_number=SeverityNumber.SEVERITY_NUMBER_INFO,
                             severity_text="INFO",
                             body=AnyValue(string_value="calling the model"),
                             trace_id=trace_id, span_id=span_id))
    return ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=_resource(call.tags.get("app", "api"), _digest(call, "pod", 1)[0] % 4),
        scope_logs=[ScopeLogs(scope=InstrumentationScope(
            name="opentelemetry.instrumentation.openai_v2", version="2.1b0"),
            log_records=records)])])


def logs_to_otlp_json(req: ExportLogsServiceRequest) -> bytes:
    """OTLP/JSON of a logs message: protobuf's JSON mapping with hex ids and numeric enums."""
    d = MessageToDict(req, use_integers_for_enums=True)
    for rl in d.get("resourceLogs", ()):
        for sl in rl.get("scopeLogs", ()):
            for rec in sl.get("logRecords", ()):
                for k in ("traceId", "spanId"):
                    if k in rec:
                        rec[k] = _b64_to_hex(rec[k])
    return orjson.dumps(d)
