"""`otlp_logs_proto` and `otlp_logs_json`: OpenTelemetry GenAI events as OTLP log records, as the
Collector's Kafka exporter writes logs (to `otlp_logs` by default) in either encoding.

With the GenAI instrumentations' default conventions the prompt and the answer are not on the
span: each message is an *event*, a log record named `gen_ai.system.message`,
`gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message` or `gen_ai.choice`
(in the record's `event_name`, or its `event.name` attribute with older SDKs), with the content
in the body (`{"content": ...}`; a choice `{"index", "finish_reason", "message": {...}}`) and the
span's trace id and span id on the record. One message is one `ExportLogsServiceRequest`:
``resourceLogs[] -> scopeLogs[] -> logRecords[]``.

Each GenAI event becomes part of a `SpanContent` keyed like the span's request id
(`{traceId}:{spanId}` in hex); the ingest joins it to its span (`consumers.join`). Every other log
record, and a GenAI event without a span context (nothing to join it to), is counted in
`Decoded.skipped`. A record with a malformed id rejects the message, naming the record.
"""

from __future__ import annotations

from typing import Any

import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from consumers.formats.common import convert_as, decode_json_as
from consumers.formats.otlp.conventions import _guarded, _hex_id
from consumers.formats.otlp.proto import _pv, not_protobuf
from consumers.formats.otlp.wire_json import _JAny, _JKv, _json_reason, _jv, _nanos
from consumers.records import Decoded, DecodeError, RawMessage, SpanContent

__all__ = ["GENAI_EVENTS", "decode_proto", "decode_json", "decode_json_obj", "looks_like_logs"]

GENAI_EVENTS = frozenset({"gen_ai.system.message", "gen_ai.user.message",
                          "gen_ai.assistant.message", "gen_ai.tool.message", "gen_ai.choice"})
# `event_name` is in opentelemetry-proto >= 1.28; older SDKs name the event in an attribute.
_HAS_EVENT_NAME = "event_name" in LogRecord.DESCRIPTOR.fields_by_name


class _Builder:
    """The GenAI events of one message, grouped by span, in the order they were written."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.skipped = 0
        self.records = 0

    def add(self, i: int, name: str, trace_id: Any, span_id: Any, time_ns: int, body: Any,
            attrs: dict[str, Any]) -> None:
        self.records += 1
        if name not in GENAI_EVENTS:
            self.skipped += 1
            return
        if not trace_id or not span_id:  # emitted outside a span: nothing to join it to
            self.skipped += 1
            return
        try:
            key = f"{_hex_id(trace_id, 16, 'traceId')}:{_hex_id(span_id, 8, 'spanId')}"
        except DecodeError as e:
            raise DecodeError(f"log record {i}: {e}") from None
        # The body holds the event's fields; attributes (gen_ai.system, ...) go under them.
        ea = {k: v for k, v in attrs.items() if k != "event.name"}
        if type(body) is dict:
            ea.update(body)
        elif body is not None:
            ea["content"] = body
        self.by_key.setdefault(key, []).append((time_ns, name, ea))

    def decoded(self) -> Decoded:
        if not self.records:
            raise DecodeError("OTLP message holds no log records")
        return Decoded([], self.skipped, tuple(SpanContent(k, tuple(v))
                                               for k, v in self.by_key.items()))


# -- otlp_logs_proto -----------------------------------------------------------------------------

def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise IndexError
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7


def _field(buf: memoryview, number: int) -> memoryview | None:
    """The first length-delimited field `number` of a serialized message, unparsed."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 2:
            size, pos = _varint(buf, pos)
            if tag >> 3 == number:
                return buf[pos:pos + size]
            pos += size
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return None
    return None


# The first tag of a serialized LogRecord: time (field 1, fixed64), severity number, attributes,
# observed time or event name. A Span starts with its trace id (field 1, bytes): 0x0a.
_LOG_FIRST_TAGS = frozenset({0x09, 0x10, 0x32, 0x59, 0x62})


def looks_like_logs(value: bytes) -> bool:
    """Whether protobuf bytes are a logs export rather than a trace export: both nest the same
    way (field 1 -> 2 -> 2), so the first field of the first record tells (~1 µs; a parse of
    the wrong kind succeeds with the fields as unknowns)."""
    try:
        buf: memoryview | None = memoryview(value)
        for number in (1, 2, 2):
            assert buf is not None
            buf = _field(buf, number)
            if buf is None:
                return False
        return bool(buf) and buf[0] in _LOG_FIRST_TAGS  # type: ignore[index]
    except IndexError:
        return False


def decode_proto(value: bytes, msg: RawMessage) -> Decoded:
    """An `ExportLogsServiceRequest` (or `LogsData`) in protobuf binary."""
    req = ExportLogsServiceRequest()
    try:
        req.ParseFromString(value)
    except Exception:  # protobuf's DecodeError or anything its C parser raises
        raise not_protobuf(value, "invalid protobuf wire format", "logs") from None
    if value and not req.resource_logs:
        raise not_protobuf(value, "no resourceLogs in it", "logs")
    return _guarded(_decode_proto, req, msg)


def _decode_proto(req: ExportLogsServiceRequest, msg: RawMessage) -> Decoded:
    out = _Builder()
    i = -1
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                i += 1
                attrs = {kv.key: _pv(kv.value, kv.key) for kv in rec.attributes}
                name = (rec.event_name if _HAS_EVENT_NAME else "") or attrs.get("event.name")
                if type(name) is not str or name not in GENAI_EVENTS:
                    out.records += 1
                    out.skipped += 1
                    continue
                body = _pv(rec.body, "body") if rec.HasField("body") else None
                out.add(i, name, rec.trace_id, rec.span_id,
                        rec.time_unix_nano or rec.observed_time_unix_nano, body, attrs)
    return out.decoded()


# -- otlp_logs_json ------------------------------------------------------------------------------

class _JLogRecord(msgspec.Struct, gc=False):
    timeUnixNano: int | str | None = None
    observedTimeUnixNano: int | str | None = None
    eventName: str | None = None
    body: _JAny | None = None
    attributes: list[_JKv] | None = None
    traceId: str = ""
    spanId: str = ""


class _JScopeLogs(msgspec.Struct, gc=False):
    logRecords: list[_JLogRecord] | None = None


class _JResourceLogs(msgspec.Struct, gc=False):
    scopeLogs: list[_JScopeLogs] | None = None


class _JLogs(msgspec.Struct, gc=False):
    resourceLogs: list[_JResourceLogs] | None = None


_json_decoder = msgspec.json.Decoder(_JLogs)


def decode_json(value: bytes, msg: RawMessage) -> Decoded:
    """OTLP/JSON: `{"resourceLogs": [...]}`."""
    return _guarded(_decode_json, decode_json_as(_json_decoder, value, _json_reason), msg)


def decode_json_obj(obj: Any, msg: RawMessage) -> Decoded:
    return _guarded(_decode_json, convert_as(obj, _JLogs, _json_reason), msg)


def _decode_json(logs: _JLogs, msg: RawMessage) -> Decoded:
    out = _Builder()
    i = -1
    for rl in logs.resourceLogs or ():
        for sl in rl.scopeLogs or ():
            for rec in sl.logRecords or ():
                i += 1
                name = rec.eventName
                if not name:
                    for kv in rec.attributes or ():
                        if kv.key == "event.name":
                            name = _jv(kv.value, kv.key)
                            break
                if type(name) is not str or name not in GENAI_EVENTS:
                    out.records += 1
                    out.skipped += 1
                    continue
                try:
                    attrs = {kv.key: _jv(kv.value, kv.key) for kv in rec.attributes or ()}
                    body = _jv(rec.body, "body")
                    time_ns = (_nanos(rec.timeUnixNano, "timeUnixNano")
                               or _nanos(rec.observedTimeUnixNano, "observedTimeUnixNano"))
                except DecodeError as e:
                    raise DecodeError(f"log record {i}: {e}") from None
                out.add(i, name, rec.traceId, rec.spanId, time_ns, body, attrs)
    return out.decoded()
