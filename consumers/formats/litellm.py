"""`litellm`: LiteLLM's `StandardLoggingPayload`, the object every LiteLLM logging callback gets::

    {"id": "chatcmpl-...", "trace_id": "...", "call_type": "acompletion", "stream": false,
     "status": "success" | "failure", "response_cost": 0.00042, "custom_llm_provider": "openai",
     "prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
     "startTime": 1764244800.12, "endTime": 1764244800.93, "response_time": 0.81,
     "model": "gpt-4o", "model_group": "gpt-4o", "api_base": "https://api.openai.com/v1",
     "metadata": {"user_api_key_team_alias": "search", "spend_logs_metadata": {...}, ...},
     "cache_hit": false, "request_tags": ["feature:summarize", "beta"], "end_user": "u-42",
     "messages": [...], "response": {"choices": [...], "usage": {...}},
     "model_parameters": {"temperature": 0, "max_tokens": 256}, "hidden_params": {...},
     "error_str": null, "error_information": {"error_class": "RateLimitError", ...}}

It arrives as LiteLLM's `generic_api` callback sends it (`log_format` `single`: one object;
`json_array`: a JSON array; `ndjson`: one object a line), or wrapped as a custom logger writes
it: `{"standard_logging_object": {...}, ...}`.

Tags: each of `request_tags` (`"feature:summarize"` and `"team=search"` are key/value, a bare
`"beta"` is `beta=true`), the scalar values of `metadata.spend_logs_metadata`, the key's team
(`team`: its alias, else its id), team id (`team_id`), user id (`api_key_user_id`) and alias
(`api_key_alias`), `model_group`, `cache_hit` when true, and `end_user` as a
hash (raw end-user ids are never stored). Request tags win over metadata.

Calls that are not text generation (embeddings, images, audio, moderation, rerank, files and
batches) are counted as skipped, not rejected.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from consumers.formats.common import (
    PARAM_KEYS,
    Amount,
    ChatParams,
    Count,
    Scalar,
    TextChoice,
    Usage,
    decode_elements,
    json_reason,
    message_text,
    normalize_messages,
    parse_ts_ms,
    split_many,
    storable,
    stored_json,
    tool_params,
    whole,
)
from consumers.records import Decoded, DecodeError, RawMessage, Request

FORMAT = "litellm"
# What LiteLLM writes in place of content when message logging is turned off.
REDACTED = "redacted-by-litellm"
_REDACTED_JSON = b'"redacted-by-litellm"'

_NOT_GENERATION = frozenset(
    prefix + base
    for base in ("embedding", "image_generation", "image_edit", "image_variation", "moderation",
                 "transcription", "speech", "rerank", "create_batch", "retrieve_batch",
                 "list_batches", "cancel_batch", "create_file", "file_content", "file_retrieve",
                 "file_delete", "file_list", "create_fine_tuning_job", "vector_store_search",
                 "search", "ocr", "video_generation")
    for prefix in ("", "a"))


class _Usage(Usage, gc=False):
    cache_read_input_tokens: Count | None = None  # Anthropic usage, passed through by LiteLLM


class _Response(msgspec.Struct, gc=False):
    choices: list[TextChoice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None


class _Metadata(msgspec.Struct, gc=False):
    user_api_key_alias: Scalar = None
    user_api_key_team_alias: Scalar = None
    user_api_key_team_id: Scalar = None
    user_api_key_user_id: Scalar = None
    spend_logs_metadata: dict[str, Any] | None = None


class _ErrorInfo(msgspec.Struct, gc=False):
    error_code: Scalar = None
    error_class: str | None = None
    error_message: str | None = None
    llm_provider: str | None = None


class _Hidden(msgspec.Struct, gc=False):
    custom_llm_provider: str | None = None


class _Payload(msgspec.Struct, gc=False):
    # Required, but checked after parsing so the reason can name the wrapper's path.
    model: str | None = None
    id: str | int | None = None
    call_type: str | None = None
    stream: bool | None = None
    status: str | None = None
    response_cost: Amount | None = None
    # LiteLLM's note when it could not price the model; its `response_cost` is then 0.
    response_cost_failure_debug_info: Any = None
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    startTime: float | str | None = None
    endTime: float | str | None = None
    response_time: Amount | None = None
    model_group: str | None = None
    custom_llm_provider: str | None = None
    metadata: _Metadata | None = None
    cache_hit: bool | None = None
    request_tags: list[Scalar] | None = None
    end_user: str | int | None = None
    messages: list[Any] | str | dict[str, Any] | None = None
    response: _Response | str | list[Any] | None = None
    error_str: str | None = None
    error_information: _ErrorInfo | None = None
    model_parameters: ChatParams | None = None
    hidden_params: _Hidden | None = None


class _Wrapper(msgspec.Struct, gc=False):
    standard_logging_object: _Payload


class _PayloadOrWrapper(_Payload, gc=False):
    """A bare payload, unless the wrapper key is a top-level field: one parse for the usual case
    instead of a scan for the key and a second parse."""

    standard_logging_object: Any = msgspec.UNSET


_payload_decoder = msgspec.json.Decoder(_Payload)
_wrapper_decoder = msgspec.json.Decoder(_Wrapper)
_either_decoder = msgspec.json.Decoder(_PayloadOrWrapper)
_WRAPPER_KEY = b'"standard_logging_object"'

ObjDecoder = Callable[[Any, RawMessage], Decoded]


# -- entry points ------------------------------------------------------------------------------

def decode(value: bytes, msg: RawMessage) -> Decoded:
    """One payload, a wrapped payload, a JSON array of them or NDJSON."""
    if is_many(value):
        return decode_each(value, msg, decode_obj)
    try:
        p = _either_decoder.decode(value)
    except Exception:  # noqa: BLE001 - the path below gives the reason
        p = None
    # Errors as `decode_json_as` maps them, with a `try` (free when nothing is raised) rather
    # than a context object per record.
    try:
        if p is not None and p.standard_logging_object is msgspec.UNSET:
            # No wrapper at the top level: what the path below decodes too, key quoted or not.
            return _from_payload(p, msg, "")
        if _WRAPPER_KEY in value:
            try:
                return _from_payload(_wrapper_decoder.decode(value).standard_logging_object, msg,
                                     "standard_logging_object.")
            except msgspec.ValidationError as e:
                # The key may only be quoted inside a message; then this is a bare payload.
                if "missing required field `standard_logging_object`" not in str(e):
                    raise
        return _from_payload(_payload_decoder.decode(value), msg, "")
    except msgspec.ValidationError as e:  # first: a subclass of msgspec.DecodeError
        raise DecodeError(validation_reason(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise DecodeError(json_reason(value, e)) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None


def decode_obj(obj: Any, msg: RawMessage) -> Decoded:
    """The same decoder for an already parsed object (an element of an array, a file record)."""
    if not isinstance(obj, dict):
        raise DecodeError(f"a LiteLLM record must be a JSON object, got {type(obj).__name__}")
    try:
        if "standard_logging_object" in obj:
            return _from_payload(msgspec.convert(obj, _Wrapper).standard_logging_object, msg,
                                 "standard_logging_object.")
        return _from_payload(msgspec.convert(obj, _Payload), msg, "")
    except msgspec.ValidationError as e:
        raise DecodeError(validation_reason(e)) from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None


def decode_each(value: bytes, msg: RawMessage, decode_obj: ObjDecoder) -> Decoded:
    """A JSON array or NDJSON message of one format, each element decoded by `decode_obj` (a
    format fixed per topic gets the whole message, so the JSON formats that can arrive batched
    use this); see `split_many` and `decode_elements`."""
    return decode_elements(split_many(value), msg, decode_obj)


def is_many(value: bytes) -> bool:
    """A JSON array or NDJSON (memchr for a newline first: compact JSON has none)."""
    head = value[:1]
    if head in b" \t\r\n" and head:
        head = value.lstrip()[:1]
    return head == b"[" or (b"\n" in value and (b"}\n{" in value or b"}\r\n{" in value))


def validation_reason(e: msgspec.ValidationError) -> str:
    """msgspec's message phrased for people: `field prompt_tokens: Expected `int` >= 0`."""
    msg, _, where = str(e).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if msg.startswith("Object missing required field `"):
        name = msg.split("`")[1]
        return f"missing field {path + '.' if path else ''}{name}"
    return f"field {path}: {msg}" if path else f"record: {msg}"


# -- the payload -> Request ----------------------------------------------------------------------

def _from_payload(p: _Payload, msg: RawMessage, where: str) -> Decoded:
    call_type = (p.call_type or "").removeprefix("litellm.")
    if call_type in _NOT_GENERATION:
        return Decoded([], skipped=1)
    if p.model is None:
        raise DecodeError(f"missing field {where}model")
    if not p.model:
        raise DecodeError(f"field {where}model must be a non-empty string")
    hidden = p.hidden_params
    err_info = p.error_information
    provider = (p.custom_llm_provider or (hidden.custom_llm_provider if hidden else None)
                or (err_info.llm_provider if err_info else None)
                or (p.model.split("/", 1)[0] if "/" in p.model else "unknown"))
    # `openai/gpt-4o` -> `gpt-4o`, so models match the price table and other formats.
    model = p.model.removeprefix(f"{provider}/") or p.model

    messages, not_replayable, messages_json = _messages(p.messages, where)
    text = finish = None
    usage = None
    resp = p.response
    if isinstance(resp, _Response):
        usage = resp.usage
        if resp.choices:
            c0 = resp.choices[0]
            if c0.message is not None:
                text = message_text(c0.message.content) or None
            elif c0.text:
                text = c0.text
            finish = c0.finish_reason
    elif isinstance(resp, str) and resp:
        text = resp
    if text == REDACTED:
        text = None
        not_replayable = not_replayable or "response redacted by LiteLLM (turn_off_message_logging)"

    inp = whole(p.prompt_tokens, where + "prompt_tokens")
    out = whole(p.completion_tokens, where + "completion_tokens")
    cached = None
    if usage is not None:
        rw = where + "response.usage."
        if inp is None:
            inp = whole(usage.prompt_tokens, rw + "prompt_tokens")
        if out is None:
            out = whole(usage.completion_tokens, rw + "completion_tokens")
        if usage.prompt_tokens_details is not None:
            cached = whole(usage.prompt_tokens_details.cached_tokens,
                           rw + "prompt_tokens_details.cached_tokens")
        if cached is None:
            cached = whole(usage.cache_read_input_tokens, rw + "cache_read_input_tokens")

    error = p.error_str or _error_text(err_info)
    if p.status is not None:
        if p.status not in ("success", "failure"):
            raise DecodeError(f"field {where}status must be 'success' or 'failure', "
                              f"got {p.status!r:.40}")
        status = "ok" if p.status == "success" else "error"
    else:
        status = "error" if error else "ok"

    start_ms = _time_ms(p.startTime, where + "startTime", msg.timestamp_ms)
    latency = _latency_ms(p, start_ms, where)

    cost = p.response_cost
    cost_unknown = None
    if p.response_cost_failure_debug_info not in (None, "", {}) and not cost:
        # A 0 written because LiteLLM has no price for the model: unknown, never free.
        cost = None
        cost_unknown = "LiteLLM could not price the call (response_cost_failure_debug_info)"
    rid = p.id if p.id not in (None, "") else None
    return Decoded([Request(
        request_id=str(rid) if rid is not None else f"{msg.topic}:{msg.partition}:{msg.offset}",
        ts_ms=start_ms,
        format=FORMAT,
        provider=provider,
        model=model,
        messages=messages,
        params=_params(p),
        response_text=text,
        finish_reason=finish,
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        cost_usd=cost,
        cost_source="log" if cost is not None else None,
        latency_ms=latency,
        status=status,
        error=error or None,
        tags=_tags(p),
        not_replayable=not_replayable,
        cost_unknown=cost_unknown,
        messages_json=messages_json,
    )])


def _messages(v: Any, where: str) -> tuple[list[dict[str, Any]], str | None, bytes | None]:
    """The chat messages, why they cannot be replayed (None if they can), and their JSON when
    it was made (to check they can be stored; ingest then stores these bytes)."""
    if v is None:
        return [], "LiteLLM logged no messages", None
    if isinstance(v, str):
        if v == REDACTED:
            return [], "messages redacted by LiteLLM (turn_off_message_logging)", None
        # A text completion's prompt.
        return [{"role": "user", "content": v}], None, None
    if isinstance(v, dict):
        if "role" not in v:
            return [], "messages logged as an object, not a list of chat messages", None
        v = [v]
    if not v:
        return [], "LiteLLM logged an empty message list", None
    as_json = stored_json(v, where + "messages")
    messages = normalize_messages(v, where)
    # A scan of the JSON (C) rules the redaction out for almost every record.
    if _REDACTED_JSON in as_json and any(m.get("content") == REDACTED for m in messages):
        return messages, "messages redacted by LiteLLM (turn_off_message_logging)", as_json
    return messages, None, as_json


def _time_ms(v: float | str | None, name: str, fallback: int | None) -> int:
    """Epoch seconds (LiteLLM's own) or an ISO-8601 string; a time without a zone is UTC."""
    if type(v) is float and 0.0 <= v < 1e11:  # seconds, as LiteLLM writes: `parse_ts_ms`'s
        return round(v * 1000)               # result, without its checks for other kinds
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError(f"field {name} is not an ISO-8601 time: {v!r:.40}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        return round(d.timestamp() * 1000)
    try:
        return parse_ts_ms(v, fallback)
    except DecodeError as e:
        raise DecodeError(str(e).replace("field ts", f"field {name}", 1)) from None


def _latency_ms(p: _Payload, start_ms: int, where: str) -> float | None:
    start, end = p.startTime, p.endTime
    if start is not None and end is not None:
        end_ms = _time_ms(end, where + "endTime", None)
        if isinstance(start, float) and isinstance(end, float):
            # From the floats, not the rounded milliseconds (seconds, or ms past 1e11).
            latency = (end - start) * (1000.0 if start < 1e11 else 1.0)
        else:
            latency = float(end_ms - start_ms)
        if latency < 0:
            raise DecodeError(f"field {where}endTime is before {where}startTime "
                              f"({end!r:.30} < {start!r:.30})")
        return latency
    if p.response_time is not None:
        return p.response_time * 1000
    return None


def _params(p: _Payload) -> dict[str, Any]:
    mp = p.model_parameters
    params: dict[str, Any] = {}
    if mp is not None:
        for k in PARAM_KEYS:
            v = getattr(mp, k)
            if v is not None:
                params[k] = v
        if mp.response_format is not None:
            storable(mp.response_format, "model_parameters.response_format")
    params["stream"] = bool(p.stream or (mp is not None and mp.stream))
    if mp is not None:
        tool_params(params, mp.tools, mp.functions, mp.tool_choice, mp.function_call,
                    "model_parameters.")
    else:
        params["tools"] = False
    return params


def _error_text(e: _ErrorInfo | None) -> str | None:
    if e is None:
        return None
    head = ": ".join(_str(x) for x in (e.error_class, e.error_code) if x not in (None, ""))
    if e.error_message:
        return f"{head}: {e.error_message}" if head else e.error_message
    return head or None


def _str(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


@functools.lru_cache(maxsize=65536)  # request tags repeat from call to call
def split_tag(tag: str) -> tuple[str, str]:
    """`feature:summarize` / `team=search` -> (key, value); a bare `beta` -> (`beta`, `true`)."""
    i = tag.find(":")
    j = tag.find("=")
    if j > 0 and (i <= 0 or j < i):
        i = j
    if i > 0:
        key = tag[:i].strip()
        if key:
            return key, tag[i + 1:].strip()
    return tag.strip(), "true"


@functools.lru_cache(maxsize=65536)  # end users repeat; hashing is a third of the tag work
def hash_end_user(end_user: str) -> str:
    """End-user ids are personal data: only an 8-byte BLAKE2b hash of them is kept."""
    return hashlib.blake2b(end_user.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _tags(p: _Payload) -> dict[str, str]:
    tags: dict[str, str] = {}
    md = p.metadata
    if md is not None:
        if md.spend_logs_metadata:
            for k, v in md.spend_logs_metadata.items():
                if isinstance(v, (str, int, float, bool)):
                    tags[k] = _str(v)
        team = md.user_api_key_team_alias or md.user_api_key_team_id
        if team not in (None, ""):
            tags["team"] = _str(team)
        # Ids as well as the alias, so savings can be cut per key's user and per team.
        if md.user_api_key_team_id not in (None, ""):
            tags["team_id"] = _str(md.user_api_key_team_id)
        if md.user_api_key_user_id not in (None, ""):
            tags["api_key_user_id"] = _str(md.user_api_key_user_id)
        if md.user_api_key_alias not in (None, ""):
            tags["api_key_alias"] = _str(md.user_api_key_alias)
    if p.request_tags:
        for t in p.request_tags:
            if t is None or t == "":
                continue
            key, value = split_tag(t if type(t) is str else _str(t))
            if key:
                tags[key] = value
    if p.model_group:
        tags["model_group"] = p.model_group
    if p.cache_hit:
        tags["cache_hit"] = "true"
    if p.end_user not in (None, ""):
        tags["end_user"] = hash_end_user(_str(p.end_user))
    return tags
