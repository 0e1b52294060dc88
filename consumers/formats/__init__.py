"""Decoders from the log formats people already emit to `Request`.

Each format is a module with `decode(value: bytes, msg) -> Decoded` and, for JSON formats,
`decode_obj(obj, msg) -> Decoded` (one element of a JSON array or NDJSON message). A decoder
raises `DecodeError` with a reason a person understands; it never lets another exception out.

A topic's format is fixed in the config (`[formats] by_topic`) or `auto`: detected per message
from cheap byte checks (binary -> OTLP protobuf, traces or logs; a `resourceSpans` key -> OTLP
JSON, `resourceLogs` -> OTLP/JSON logs; a JSON array
or NDJSON -> per element; otherwise the keys that mark each JSON format).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.formats import litellm, openai_batch, openai_chat, otlp, otlp_logs
from consumers.formats.common import (
    MAX_TOKENS_SANE,
    decode_elements,
    json_reason,
    message_text,
    normalize_messages,
    parse_ts_ms,
    split_many,
)
from consumers.records import Decoded, DecodeError, RawMessage, Request

__all__ = ["Format", "Decoders", "FORMATS", "detect", "decode_openai_chat", "message_text",
           "normalize_messages", "parse_ts_ms", "MAX_TOKENS_SANE", "register"]

BytesDecoder = Callable[[bytes, RawMessage], Decoded]
ObjDecoder = Callable[[Any, RawMessage], Decoded]


@dataclass(frozen=True)
class Format:
    name: str
    decode: BytesDecoder
    decode_obj: ObjDecoder | None = None
    # Byte markers that identify the format in `auto` mode (any of them, in a JSON object).
    markers: tuple[bytes, ...] = ()
    # Top-level keys that identify it in a parsed object.
    keys: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {}
# Detection order: the most specific markers first; openai_chat's "request" key is the loosest.
_AUTO_ORDER: list[str] = []


_RESOURCE = b'"resource'  # what both OTLP/JSON markers start with: one scan rules both out
# `_AUTO_ORDER` as `_sniff` walks it: (name, markers, whether all of them start with
# `_RESOURCE`), worked out once here rather than for every record.
_SNIFF_PLAN: list[tuple[str, tuple[bytes, ...], bool]] = []


def register(fmt: Format, *, auto: bool = True, before: str | None = None) -> None:
    FORMATS[fmt.name] = fmt
    if auto and fmt.name not in _AUTO_ORDER:
        if before and before in _AUTO_ORDER:
            _AUTO_ORDER.insert(_AUTO_ORDER.index(before), fmt.name)
        else:
            _AUTO_ORDER.append(fmt.name)
    _SNIFF_PLAN[:] = [(name, FORMATS[name].markers,
                       bool(FORMATS[name].markers)
                       and all(m.startswith(_RESOURCE) for m in FORMATS[name].markers))
                      for name in _AUTO_ORDER]


register(Format("openai_chat", openai_chat.decode, openai_chat.decode_obj,
                markers=(b'"request"',), keys=("request",)))
register(Format("otlp_json", otlp.decode_json, otlp.decode_json_obj,  # first: most specific marker
                markers=(b'"resourceSpans"',), keys=("resourceSpans",)), before="openai_chat")
register(Format("otlp_proto", otlp.decode_proto), auto=False)  # binary: `Decoders.decode` routes it
register(Format("otlp_logs_json", otlp_logs.decode_json, otlp_logs.decode_json_obj,
                markers=(b'"resourceLogs"',), keys=("resourceLogs",)), before="openai_chat")
register(Format("otlp_logs_proto", otlp_logs.decode_proto), auto=False)
register(Format("litellm", litellm.decode, litellm.decode_obj,
                markers=(b'"response_cost"', b'"model_group"', b'"standard_logging_object"'),
                keys=("standard_logging_object", "model_group", "response_cost")),
         before="openai_chat")
register(Format("openai_batch", openai_batch.decode, openai_batch.decode_obj,
                markers=(b'"custom_id"',), keys=("custom_id",)),
         before="openai_chat")


def detect(obj: Any) -> str:
    """Name of the format of a parsed JSON object, or raise `DecodeError`."""
    if isinstance(obj, dict):
        for name in _AUTO_ORDER:
            if any(k in obj for k in FORMATS[name].keys):
                return name
    raise DecodeError(f"unrecognised log format (a JSON {type(obj).__name__} matching no "
                      f"supported format: {', '.join(_AUTO_ORDER)})")


def decode_openai_chat(obj: Any, msg: RawMessage) -> list[Request]:
    return openai_chat.decode_obj(obj, msg).requests


def _not_json(value: bytes) -> str:
    return json_reason(value, ValueError(f"starts with byte {value[0]:#04x}"))


def _sniff(value: bytes) -> str | None:
    # Each marker test scans the whole record (a few KB, ~0.5 µs a KB); most are not OTLP.
    otlp_possible: bool | None = None
    for name, markers, otlp_only in _SNIFF_PLAN:
        if otlp_only:
            if otlp_possible is None:
                otlp_possible = _RESOURCE in value
            if not otlp_possible:
                continue
        for m in markers:
            if m in value:
                return name
    return None


class Decoders:
    """Decoding as configured: a fixed format per topic, or auto-detection."""

    def __init__(self, by_topic: Mapping[str, str] | None = None,
                 extra: Mapping[str, Format] | None = None) -> None:
        self.formats = {**FORMATS, **(extra or {})}
        self.by_topic = dict(by_topic or {})
        for topic, name in self.by_topic.items():
            if name != "auto" and name not in self.formats:
                raise ValueError(f"unknown format {name!r} for topic {topic!r}")

    def decode(self, value: bytes, msg: RawMessage) -> Decoded:
        name = self.by_topic.get(msg.topic, "auto")
        if name != "auto":
            return self.formats[name].decode(value, msg)
        start = value[:1] if value[:1] not in b" \t\r\n" else value.lstrip()[:1]
        if not start:
            raise DecodeError("empty message")
        if start not in (b"{", b"["):
            # Why it is not JSON is worked out only when it is not protobuf either (~3 µs).
            if "otlp_proto" not in self.formats:
                raise DecodeError(f"not JSON ({_not_json(value)})")
            try:
                return self._decode_protobuf(value, msg)
            except otlp.NotOtlpProtobuf as e:
                raise DecodeError(f"neither JSON ({_not_json(value)}) nor OTLP protobuf ({e})"
                                  ) from None
        try:
            return self._decode_json(value, msg, start)
        except DecodeError:
            # A protobuf export starts with 0x0a (field 1), which reads as a newline: one whose
            # next byte is `{` or `[` looks like JSON. Only if it is not JSON, try it as OTLP.
            if value[:1] == b"\n" and "otlp_proto" in self.formats:
                with contextlib.suppress(otlp.NotOtlpProtobuf):
                    return self._decode_protobuf(value, msg)
            raise

    def _decode_protobuf(self, value: bytes, msg: RawMessage) -> Decoded:
        """A trace export, or a logs export. They nest alike, so a logs export may parse as a
        trace export whose "spans" hold nothing GenAI: only then (and when it does not parse)
        is it tried as logs, which keeps the usual trace export at one parse. Raises the trace
        decoder's `NotOtlpProtobuf` when it is neither."""
        logs = self.formats.get("otlp_logs_proto")
        try:
            out = self.formats["otlp_proto"].decode(value, msg)
        except otlp.NotOtlpProtobuf as e:
            if logs is not None:
                with contextlib.suppress(DecodeError):  # only a clean logs decode counts here
                    return logs.decode(value, msg)
            raise e from None
        if out.requests or logs is None or not otlp_logs.looks_like_logs(value):
            return out
        try:
            return logs.decode(value, msg)
        except DecodeError:
            return out

    def _decode_json(self, value: bytes, msg: RawMessage, start: bytes) -> Decoded:
        if start == b"[" or (b"\n" in value and (b"}\n{" in value or b"}\r\n{" in value)):
            return self._decode_many(value, msg)
        sniffed = _sniff(value)
        if sniffed is None:
            # Parse to tell a broken record from an unknown format.
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError as e:
                raise DecodeError(json_reason(value, e)) from None
            return self.formats[detect(obj)].decode_obj(obj, msg)  # type: ignore[misc]
        try:
            return self.formats[sniffed].decode(value, msg)
        except DecodeError as first:
            # The marker may sit in a nested object (a tag named `model_group`, metadata with a
            # `custom_id`): tell the format by the top-level keys, as for an array's elements.
            # Only records that fail pay for this second parse.
            try:
                actual = detect(orjson.loads(value))
            except (orjson.JSONDecodeError, DecodeError):
                raise first from None
            if actual == sniffed:
                raise
            return self.formats[actual].decode(value, msg)

    def _decode_many(self, value: bytes, msg: RawMessage) -> Decoded:
        """A JSON array or NDJSON: each element detected and decoded on its own; one bad element
        rejects the message (with the element's index), so nothing is half-stored."""
        return decode_elements(split_many(value), msg, self._decode_element)

    def _decode_element(self, obj: Any, msg: RawMessage) -> Decoded:
        fmt = self.formats[detect(obj)]
        if fmt.decode_obj is None:
            raise DecodeError(f"format {fmt.name} cannot be nested in an array")
        return fmt.decode_obj(obj, msg)
