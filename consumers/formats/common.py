"""Helpers shared by the decoders: times, counts, chat messages, tags, and the msgspec types
the JSON formats have in common."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
import orjson

from consumers.records import Decoded, DecodeError, RawMessage, Request, SpanContent

T = TypeVar("T")

MAX_TOKENS_SANE = 100_000_000  # more than any context window: a count above this is corrupt
MAX_TS_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z in epoch milliseconds
PARAM_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "response_format",
              "stop", "seed", "presence_penalty", "frequency_penalty", "n")

# -- msgspec types ------------------------------------------------------------------------------
# The structs are `gc=False`: decoded JSON holds no cycles, and not tracking them is faster.

# Integral floats (`12.0`) are accepted as counts, as some loggers write them; see `whole`.
Count = (Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_SANE)]
         | Annotated[float, msgspec.Meta(ge=0, le=MAX_TOKENS_SANE)])
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e12)]  # also rejects 1e999 (inf)
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Scalar = str | int | float | bool | None


class UsageDetails(msgspec.Struct, gc=False):
    cached_tokens: Count | None = None


class Usage(msgspec.Struct, gc=False):
    """A chat completion's `usage`."""

    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    prompt_tokens_details: UsageDetails | None = None


class ChoiceMessage(msgspec.Struct, gc=False):
    content: str | list[Any] | None = None


class Choice(msgspec.Struct, gc=False):
    """A chat completion's choice."""

    message: ChoiceMessage | None = None
    finish_reason: str | None = None


class TextChoice(Choice, gc=False):
    """A choice of a chat or a text completion."""

    text: str | None = None  # text completions


class SamplingParams(msgspec.Struct, gc=False):
    """The request parameters `PARAM_KEYS` names."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None


class ChatParams(SamplingParams, gc=False):
    """A chat completion request's parameters: `PARAM_KEYS`, streaming and tools."""

    stream: bool | int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None


def storable(v: Any, where: str) -> Any:
    """`v` if it can be written back as JSON. msgspec keeps integers beyond 64 bits and nesting
    orjson will not write: say so here, naming the field, rather than fail when storing."""
    stored_json(v, where)
    return v


def stored_json(v: Any, where: str) -> bytes:
    """`v` as the JSON that will be stored, or `DecodeError` as `storable` says."""
    try:
        return orjson.dumps(v)
    except orjson.JSONEncodeError as e:
        raise DecodeError(f"field {where} cannot be stored as JSON: {e}") from None


def tool_params(params: dict[str, Any], tools: Any, functions: Any, tool_choice: Any,
                function_call: Any, where: str) -> None:
    """Set `params["tools"]`, whether the request offered tools (such requests are skipped unless
    `shadow.replay_tools`), and, so that a replay of it is faithful, `tool_definitions` (legacy
    `functions` in today's `tools` form) and `tool_choice` (from a legacy `function_call` too)."""
    defs = tools or ([{"type": "function", "function": f} for f in functions]
                     if isinstance(functions, list) and functions else None)
    params["tools"] = bool(defs)
    if not defs or not isinstance(defs, list):
        return  # an odd `tools` (a mapped in-house field) still marks the request, as before
    params["tool_definitions"] = storable(defs, f"{where}tools")
    if tool_choice is None and function_call is not None:  # legacy: "auto", "none", {"name": f}
        tool_choice = ({"type": "function", "function": function_call}
                       if isinstance(function_call, dict) else function_call)
    if tool_choice is not None:
        params["tool_choice"] = storable(tool_choice, f"{where}tool_choice")


def parse_ts_ms(v: Any, fallback_ms: int | None) -> int:
    """Epoch seconds, milliseconds or an ISO-8601 string -> epoch milliseconds."""
    if v is None:
        if fallback_ms is None:
            raise DecodeError("missing field ts and the message has no timestamp")
        return fallback_ms
    if isinstance(v, bool):
        raise DecodeError("field ts must be a time, got bool")
    if isinstance(v, (int, float)):
        # Past the year 9999 even as milliseconds: corrupt, and it would overflow the tables.
        if not math.isfinite(v) or v < 0 or v >= MAX_TS_MS:
            raise DecodeError(f"field ts is not a valid time: {v!r:.40}")
        # Seconds until the year 5138; anything larger is already milliseconds.
        # round, not int: 1764244800.123 * 1000 is 1764244800122.9998 in binary.
        return round(v * 1000) if v < 1e11 else int(v)
    if isinstance(v, str):
        try:
            return round(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            raise DecodeError(f"field ts is not an ISO-8601 time: {v!r:.40}") from None
    raise DecodeError(f"field ts must be a time, got {type(v).__name__}")


def normalize_messages(msgs: Any, where: str) -> list[dict[str, Any]]:
    """Validate a chat message list; content may be a string or a list of text parts."""
    if not isinstance(msgs, list) or not msgs:
        raise DecodeError(f"field {where}messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise DecodeError(f"{where}messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str):
            raise DecodeError(f"{where}messages[{i}].role must be a string")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise DecodeError(f"{where}messages[{i}].content must be a string or a list of parts")
        out.append(m)
    return out


def message_text(content: Any) -> str:
    """The text of a message content (string or list of `{"type": "text", "text": ...}` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text", ""), str))
    return ""


def json_reason(value: bytes, e: Exception) -> str:
    """Why bytes are not a JSON record: bad UTF-8 (with its byte) or the parser's message."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as u:
        return f"invalid UTF-8 at byte {u.start}"
    return f"invalid JSON: {e}"[:300]


def whole(v: int | float | None, where: str) -> int | None:
    """A token count that may have been written as a float: `12.0` is 12, `1.5` is corrupt."""
    if v is None or type(v) is int:
        return v  # type: ignore[return-value]
    if v != int(v):
        raise DecodeError(f"field {where} is not a whole token count: {v!r:.40}")
    return int(v)


def decode_json_as(decoder: msgspec.json.Decoder[T], value: bytes,
                   reason: Callable[[msgspec.ValidationError], str]) -> T:
    """`decoder.decode(value)`, its errors raised as `DecodeError`: a type error phrased by
    `reason`, a JSON error by `json_reason`, deep nesting as such (a `try`, which costs nothing
    when nothing is raised: this runs per record)."""
    try:
        return decoder.decode(value)
    except msgspec.ValidationError as e:  # first: a subclass of msgspec.DecodeError
        raise DecodeError(reason(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # bad UTF-8 in a string
        raise DecodeError(json_reason(value, e)) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None


def convert_as(obj: Any, type_: type[T], reason: Callable[[msgspec.ValidationError], str]) -> T:
    """`msgspec.convert(obj, type_)` for an already parsed object, errors as in `decode_json_as`."""
    try:
        return msgspec.convert(obj, type_)
    except msgspec.ValidationError as e:
        raise DecodeError(reason(e)) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None


def split_many(value: bytes) -> list[Any]:
    """The elements of a message holding a JSON array or NDJSON (the one splitter every format
    that can arrive batched uses). An NDJSON line that is no JSON is named by its number; an
    empty array holds nothing to store and is rejected, so every message ends somewhere."""
    if value.lstrip()[:1] == b"[":
        try:
            items = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise DecodeError(json_reason(value, e)) from None
        if not isinstance(items, list):  # `[` then garbage is a JSON error, but be sure
            raise DecodeError(f"expected a JSON array, got {type(items).__name__}")
    else:
        items = []
        for n, line in enumerate(value.splitlines(), 1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as e:
                    raise DecodeError(f"line {n}: {json_reason(line, e)}") from None
    if not items:
        raise DecodeError("empty JSON array: no records")
    return items


def decode_elements(items: list[Any], msg: RawMessage,
                    decode_one: Callable[[Any, RawMessage], Decoded]) -> Decoded:
    """Each element decoded on its own; one bad element rejects the whole message naming its
    index (nothing is half-stored), and elements without an id of their own get
    `topic:partition:offset:i`."""
    fallback = f"{msg.topic}:{msg.partition}:{msg.offset}"
    requests: list[Request] = []
    skipped = 0
    content: list[SpanContent] = []
    for i, obj in enumerate(items):
        try:
            out = decode_one(obj, msg)
        except DecodeError as e:
            raise DecodeError(f"element {i}: {e}") from None
        if len(items) > 1:
            for r in out.requests:
                if r.request_id == fallback:
                    r.request_id += f":{i}"
        requests.extend(out.requests)
        skipped += out.skipped
        content.extend(out.content)
    return Decoded(requests, skipped, tuple(content))
