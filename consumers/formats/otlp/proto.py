"""`otlp_proto`: the walk over an OTLP protobuf trace export (`ExportTraceServiceRequest`, on the
wire the same as `TracesData`), for the one span loop of `conventions`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from consumers.formats.otlp.conventions import (
    _MAX_DEPTH,
    MARKERS,
    Attrs,
    Events,
    _guarded,
    _resource_tags,
    decode_spans,
)
from consumers.records import Decoded, DecodeError, RawMessage


def _pv(v: Any, key: str, depth: int = 0) -> Any:
    """A protobuf `AnyValue` as a Python value (None when unset)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if depth > _MAX_DEPTH:
        raise DecodeError(f"attribute {key:.100} is nested too deeply")
    if kind == "array_value":
        return [_pv(x, key, depth + 1) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pv(kv.value, key, depth + 1) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value
    return None


class NotOtlpProtobuf(DecodeError):
    """The bytes are not an OTLP protobuf export at all (as opposed to one with a bad span), so
    auto-detection can say what else they are not."""


def not_protobuf(value: bytes, detail: str, export: str = "trace") -> NotOtlpProtobuf:
    """`NotOtlpProtobuf` for an `export` ("trace", "logs"), quoting the bytes' start when it is
    text (a JSON record sent to a protobuf topic says so)."""
    head = value[:24]
    text = (f"; it starts with {head.decode()!r}"
            if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "")
    return NotOtlpProtobuf(f"not an OTLP protobuf {export} export ({detail}){text}")


def decode_proto(value: bytes, msg: RawMessage) -> Decoded:
    """An `ExportTraceServiceRequest` (or `TracesData`) in protobuf binary."""
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(value)
    except Exception:  # protobuf's DecodeError, or anything its C parser raises; its message
        # says no more than this and changes between protobuf versions
        raise not_protobuf(value, "invalid protobuf wire format") from None
    if value and not req.resource_spans:  # e.g. text that happens to parse as unknown fields
        raise not_protobuf(value, "no resourceSpans in it")
    return _guarded(decode_spans, _PROTO, req, msg)


# Serialized resource -> its tags: a producer sends the same resource in every export, and reading
# its ~15 attributes through protobuf costs more than serializing it.
_PROTO_RESOURCE_TAGS: dict[bytes, dict[str, str]] = {}


def _proto_resource_tags(resource: Any) -> dict[str, str]:
    """`_resource_tags` of a protobuf `Resource`; the dict is shared, never to be changed."""
    key = resource.SerializeToString()
    tags = _PROTO_RESOURCE_TAGS.get(key)
    if tags is None:
        tags = _resource_tags(resource.attributes, _pv)
        if len(key) <= 16_384:
            if len(_PROTO_RESOURCE_TAGS) >= 256:
                _PROTO_RESOURCE_TAGS.clear()
            _PROTO_RESOURCE_TAGS[key] = tags
    return tags


class _ProtoWalk:
    """`SpanWalk` over a parsed `ExportTraceServiceRequest`."""

    format = "otlp_proto"

    def resources(self, export: Any) -> Iterable[Any]:
        resources: Iterable[Any] = export.resource_spans
        return resources

    def spans(self, resource: Any) -> Iterator[Any]:
        for ss in resource.scope_spans:
            yield from ss.spans

    def attributes(self, span: Any) -> Attrs | None:
        attrs = span.attributes
        for kv in attrs:  # keys only: reading a value is as costly as a key
            if kv.key in MARKERS:
                break
        else:
            return None
        raw = {kv.key: kv.value for kv in attrs}
        # A non-empty `string_value` is the value set (a oneof): most values are strings, and
        # this skips a `WhichOneof` call for each (~5 µs a span of 20 attributes).
        return {k: v.string_value or _pv(v, k) for k, v in raw.items()}

    def resource_tags(self, resource: Any) -> dict[str, str]:
        return _proto_resource_tags(resource.resource)

    def ids(self, span: Any) -> tuple[Any, Any]:
        return span.trace_id, span.span_id

    def timing(self, span: Any) -> tuple[int, int, int, str]:
        status = span.status
        return span.start_time_unix_nano, span.end_time_unix_nano, status.code, status.message

    def events(self, span: Any) -> Events:
        done: list[list[tuple[str, Attrs]]] = []

        def events() -> list[tuple[str, Attrs]]:  # converted once, only if attributes lack content
            if not done:
                done.append([(ev.name, {kv.key: _pv(kv.value, kv.key) for kv in ev.attributes})
                             for ev in span.events])
            return done[0]
        return events


_PROTO = _ProtoWalk()
