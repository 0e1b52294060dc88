"""`otlp_json`: the walk over an OTLP/JSON trace export (`{"resourceSpans": [...]}`), parsed and
type-checked in one pass by msgspec, for the one span loop of `conventions`. Read as the OTLP
spec writes it (hex ids, `intValue` as a string, enums as numbers) and, leniently, as protobuf's
generic JSON mapping writes it (base64 ids, enum names)."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Iterator
from typing import Any, cast

import msgspec

from consumers.formats.common import convert_as, decode_json_as
from consumers.formats.otlp.conventions import (
    _INT64,
    _MAX_DEPTH,
    _STATUS_NAMES,
    MARKERS,
    Attrs,
    Events,
    _guarded,
    _resource_tags,
    decode_spans,
)
from consumers.records import Decoded, DecodeError, RawMessage


class _JAny(msgspec.Struct, gc=False):
    stringValue: str | None = None
    intValue: int | str | None = None  # int64 is a string in OTLP/JSON; numbers are accepted too
    doubleValue: float | str | None = None  # "NaN", "Infinity" as strings
    boolValue: bool | None = None
    arrayValue: _JArray | None = None
    kvlistValue: _JKvList | None = None
    bytesValue: str | None = None


class _JArray(msgspec.Struct, gc=False):
    values: list[_JAny] | None = None


class _JKv(msgspec.Struct, gc=False):
    key: str = ""  # proto3 JSON leaves out an empty key
    value: _JAny | None = None


class _JKvList(msgspec.Struct, gc=False):
    values: list[_JKv] | None = None


class _JEvent(msgspec.Struct, gc=False):
    name: str = ""
    attributes: list[_JKv] | None = None


class _JStatus(msgspec.Struct, gc=False):
    code: int | str | None = None
    message: str | None = None


class _JSpan(msgspec.Struct, gc=False):
    traceId: str = ""
    spanId: str = ""
    startTimeUnixNano: int | str | None = None
    endTimeUnixNano: int | str | None = None
    attributes: list[_JKv] | None = None
    events: list[_JEvent] | None = None
    status: _JStatus | None = None


class _JScopeSpans(msgspec.Struct, gc=False):
    spans: list[_JSpan] | None = None


class _JResource(msgspec.Struct, gc=False):
    attributes: list[_JKv] | None = None


class _JResourceSpans(msgspec.Struct, gc=False):
    resource: _JResource | None = None
    scopeSpans: list[_JScopeSpans] | None = None


class _JTraces(msgspec.Struct, gc=False):
    resourceSpans: list[_JResourceSpans] | None = None  # `{}` is an empty export, as in protobuf


_json_decoder = msgspec.json.Decoder(_JTraces)
_DOUBLE_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _jv(v: _JAny | None, key: str, depth: int = 0) -> Any:
    """An OTLP/JSON `AnyValue` as a Python value (None when unset)."""
    if v is None:
        return None
    if v.stringValue is not None:
        return v.stringValue
    if v.intValue is not None:
        n = v.intValue
        if type(n) is str:
            digits = n[1:] if n[:1] == "-" else n
            if not (digits.isdigit() and digits.isascii()):
                raise DecodeError(f"attribute {key:.100}: intValue {n!r:.40} is not an integer")
            n = int(n) if len(digits) <= 19 else _INT64  # more digits: out of range, not parsed
        if not -_INT64 <= n < _INT64:  # type: ignore[operator]
            raise DecodeError(f"attribute {key:.100}: intValue {v.intValue!r:.40} is out of the "
                              f"int64 range")
        return n
    if v.doubleValue is not None:
        d = v.doubleValue
        if type(d) is str:
            if d not in _DOUBLE_WORDS:
                raise DecodeError(f"attribute {key:.100}: doubleValue {d!r:.40} is not a number")
            return _DOUBLE_WORDS[d]
        return float(d)
    if v.boolValue is not None:
        return v.boolValue
    if depth > _MAX_DEPTH:
        raise DecodeError(f"attribute {key:.100} is nested too deeply")
    if v.arrayValue is not None:
        return [_jv(x, key, depth + 1) for x in v.arrayValue.values or ()]
    if v.kvlistValue is not None:
        return {kv.key: _jv(kv.value, key, depth + 1) for kv in v.kvlistValue.values or ()}
    if v.bytesValue is not None:
        try:
            return base64.b64decode(v.bytesValue, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(f"attribute {key:.100}: bytesValue is not base64") from None
    return None


def _nanos(v: int | str | None, name: str) -> int:
    if v is None:
        return 0
    if type(v) is str:
        if not v.isdigit() or not v.isascii() or len(v) > 20:
            raise DecodeError(f"{name} is not a time in nanoseconds: {v!r:.40}")
        v = int(v)
    if v < 0:  # type: ignore[operator]
        raise DecodeError(f"{name} is not a time in nanoseconds: {v!r:.40}")
    return v  # type: ignore[return-value]


def _status_code(s: _JStatus | None) -> int:
    if s is None or s.code is None:
        return 0
    if type(s.code) is str:
        if s.code not in _STATUS_NAMES:
            raise DecodeError(f"span status code {s.code!r:.40} is not a status code")
        return _STATUS_NAMES[s.code]
    return s.code  # type: ignore[return-value]


def _json_reason(e: Exception) -> str:
    """msgspec's message, phrased for people: `missing field resourceSpans`,
    `field resourceSpans[0].scopeSpans[0].spans[1].traceId: Expected str, got int`."""
    text = str(e)
    message, _, where = text.partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if message.startswith("Object missing required field `"):
        name = message.split("`")[1]
        return f"missing field {path + '.' if path else ''}{name}"
    if isinstance(e, msgspec.ValidationError):
        return (f"field {path}: {message}" if path else f"record: {message}").replace("`", "")
    return f"invalid JSON: {text}"[:300]


class _JResourceSpansRaw(_JResourceSpans, gc=False):
    """`_JResourceSpans` with its resource left as JSON text: a producer sends the same resource
    (~15 attributes) in every export, so it is parsed and its tags read once per distinct text
    (`_RESOURCES`) rather than once per export."""

    resource: msgspec.Raw = msgspec.Raw()  # type: ignore[assignment]


class _JTracesRaw(msgspec.Struct, gc=False):
    resourceSpans: list[_JResourceSpansRaw] | None = None


_raw_decoder = msgspec.json.Decoder(_JTracesRaw)
_resource_decoder = msgspec.json.Decoder(_JResource | None)
_RESOURCE_KEY = b'"resource"'
# Resource JSON text -> its tags, or None while they have not been needed. A key is there only
# once its text has type-checked as a `_JResource` (what the whole-export decoder checks).
_RESOURCES: dict[bytes, dict[str, str] | None] = {}
_MAX_RESOURCE_BYTES = 16_384


def _remember(raw: bytes, tags: dict[str, str] | None) -> None:
    if len(raw) <= _MAX_RESOURCE_BYTES:
        if len(_RESOURCES) >= 256 and raw not in _RESOURCES:
            _RESOURCES.clear()
        _RESOURCES[raw] = tags


def _resources_checked(export: _JTracesRaw, value: bytes) -> bool:
    """Whether every resource of `export` type-checks, as the whole-export decoder checks it.
    False also when `"resource"` occurs in the bytes other than once per resource kept (a key
    given twice, or the word in a string): such exports take the whole-export decoder."""
    resources = export.resourceSpans or ()
    kept = 0
    for rs in resources:
        raw = bytes(rs.resource)
        if not raw:
            continue
        kept += 1
        if raw in _RESOURCES:
            continue
        try:
            _resource_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError):  # incl. ValidationError
            return False
        _remember(raw, None)
    return value.count(_RESOURCE_KEY) == kept


def decode_json(value: bytes, msg: RawMessage) -> Decoded:
    """OTLP/JSON: `{"resourceSpans": [...]}`. Read with the resources as text (see
    `_JResourceSpansRaw`); an export that does not decode so, or whose resource does not
    type-check, is decoded whole, for the same result and the same reason."""
    try:
        export = _raw_decoder.decode(value)
        checked = _resources_checked(export, value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        checked = False
    if checked:
        return _guarded(decode_spans, _JSON_RAW, export, msg)
    return decode_json_whole(value, msg)


def decode_json_whole(value: bytes, msg: RawMessage) -> Decoded:
    """OTLP/JSON decoded whole into typed structs, resources too: what `decode_json` falls back
    to, and must always agree with."""
    return _guarded(decode_spans, _JSON, decode_json_as(_json_decoder, value, _json_reason), msg)


def decode_json_obj(obj: Any, msg: RawMessage) -> Decoded:
    """The same for an already parsed object (an element of a JSON array, a file record)."""
    return _guarded(decode_spans, _JSON, convert_as(obj, _JTraces, _json_reason), msg)


class _JsonWalk:
    """`SpanWalk` over an OTLP/JSON trace export, as msgspec parsed it."""

    format = "otlp_json"

    def resources(self, export: _JTraces) -> Iterable[_JResourceSpans]:
        return export.resourceSpans or ()

    def spans(self, resource: _JResourceSpans) -> Iterator[_JSpan]:
        for ss in resource.scopeSpans or ():
            yield from ss.spans or ()

    def attributes(self, span: _JSpan) -> Attrs | None:
        raw = {kv.key: kv.value for kv in span.attributes or ()}
        if MARKERS.isdisjoint(raw):
            return None
        return {k: v.stringValue if v is not None and v.stringValue is not None else _jv(v, k)
                for k, v in raw.items()}

    def resource_tags(self, resource: _JResourceSpans) -> dict[str, str]:
        attrs = resource.resource.attributes if resource.resource is not None else None
        return _resource_tags(attrs or (), _jv)

    def ids(self, span: _JSpan) -> tuple[Any, Any]:
        return span.traceId, span.spanId

    def timing(self, span: _JSpan) -> tuple[int, int, int, str]:
        status = span.status
        return (_nanos(span.startTimeUnixNano, "startTimeUnixNano"),
                _nanos(span.endTimeUnixNano, "endTimeUnixNano"), _status_code(status),
                (status.message or "") if status is not None else "")

    def events(self, span: _JSpan) -> Events:
        done: list[list[tuple[str, Attrs]]] = []

        def events() -> list[tuple[str, Attrs]]:  # converted once, only if attributes lack content
            if not done:
                done.append([(ev.name, {kv.key: _jv(kv.value, kv.key) for kv in ev.attributes or ()})
                             for ev in span.events or ()])
            return done[0]
        return events


_JSON = _JsonWalk()


class _JsonRawWalk(_JsonWalk):
    """`_JsonWalk` over an export read as `_JTracesRaw`: resources as checked JSON text."""

    def resource_tags(self, resource: _JResourceSpans) -> dict[str, str]:
        """The tags of a resource's text, read once per text; the dict is shared, never to be
        changed (as `proto._proto_resource_tags`)."""
        raw = bytes(cast(_JResourceSpansRaw, resource).resource)
        tags = _RESOURCES.get(raw)
        if tags is None:
            res = _resource_decoder.decode(raw) if raw else None
            # A tag's bad value raises here, every time, as the whole-export path does.
            tags = _resource_tags((res.attributes if res is not None else None) or (), _jv)
            _remember(raw, tags)
        return tags


_JSON_RAW = _JsonRawWalk()
