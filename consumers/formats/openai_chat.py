"""`openai_chat`: an OpenAI chat-completions request body and its response, with timing, cost
and tags around them::

    {"request_id": "...", "ts": "2026-11-27T12:00:00Z" | 1764244800.0,
     "request": {"model": "gpt-4o", "messages": [...], "temperature": 0, "max_tokens": 256},
     "response": {"id": "chatcmpl-...", "model": "...", "choices": [...], "usage": {...}},
     "latency_ms": 812, "cost_usd": 0.0123, "provider": "openai",
     "status": "ok" | "error", "error": "...", "tags": {"feature": "summarize"}}

The record is parsed and type-checked in one pass by msgspec (C), which is what keeps ingest
near the broker's own speed; the few checks a schema cannot say are done after.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from consumers.formats.common import (
    PARAM_KEYS,
    Amount,
    ChatParams,
    Choice,
    NonEmpty,
    Scalar,
    Usage,
    convert_as,
    decode_json_as,
    message_text,
    normalize_messages,
    parse_ts_ms,
    tool_params,
    whole,
)
from consumers.records import Decoded, RawMessage, Request


class _Response(msgspec.Struct, gc=False):
    choices: list[Choice]
    id: str | None = None
    model: str | None = None
    usage: Usage | None = None


class _Request(ChatParams, kw_only=True, gc=False):
    model: NonEmpty
    messages: list[Any]


class _Record(msgspec.Struct, gc=False):
    request: _Request
    response: _Response | None = None
    request_id: str | int | None = None
    ts: int | float | str | None = None
    timestamp: int | float | str | None = None
    latency_ms: Amount | None = None
    cost_usd: Amount | None = None
    provider: str | None = None
    status: Literal["ok", "error"] | None = None
    error: Any = None
    tags: dict[str, Scalar] | None = None
    metadata: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(_Record)


def validation_reason(e: msgspec.ValidationError | msgspec.DecodeError, root: str = "") -> str:
    """msgspec's message, phrased for people: `missing field request.model`,
    `field response.usage.prompt_tokens: Expected int >= 0, got -3`."""
    text = str(e)
    msg, _, where = text.partition(" - at `$")
    if len(msg) > 120:  # msgspec quotes the bad value whole
        msg = msg[:119] + "…"
    path = where.rstrip("`").lstrip(".")
    path = f"{root}.{path}".strip(".") if root else path
    if msg.startswith("Object missing required field `"):
        name = msg.split("`")[1]
        return f"missing field {path + '.' if path else ''}{name}"
    if isinstance(e, msgspec.ValidationError):
        return f"field {path or '(record)'}: {msg}" if path else f"record: {msg}"
    return f"invalid JSON: {text}"[:300]


def _from_struct(rec: _Record, msg: RawMessage) -> Decoded:
    req = rec.request
    messages = normalize_messages(req.messages, "request.")
    resp = rec.response
    status = rec.status or ("ok" if resp is not None else "error")
    text = finish = None
    usage = resp.usage if resp is not None else None
    model = req.model  # strata and prices by the model asked for; the snapshot goes beside it
    served = None
    if resp is not None:
        if resp.choices:
            c0 = resp.choices[0]
            if c0.message is not None:
                text = message_text(c0.message.content) or None
            finish = c0.finish_reason
        if resp.model:
            served = resp.model
    rid: Any = rec.request_id if rec.request_id not in (None, "") else (resp.id if resp else None)
    rid = str(rid) if rid else f"{msg.topic}:{msg.partition}:{msg.offset}"
    params: dict[str, Any] = {}
    for k in PARAM_KEYS:
        v = getattr(req, k)
        if v is not None:
            params[k] = v
    params["stream"] = bool(req.stream)
    tool_params(params, req.tools, req.functions, req.tool_choice, req.function_call, "request.")
    raw_tags = rec.tags if rec.tags is not None else rec.metadata
    tags = ({str(k): (v if isinstance(v, str) else str(v)) for k, v in raw_tags.items()
             if v is not None} if raw_tags else {})
    details = usage.prompt_tokens_details if usage is not None else None
    error = rec.error if rec.error is None or isinstance(rec.error, str) else str(rec.error)
    return Decoded([Request(
        request_id=rid,
        ts_ms=parse_ts_ms(rec.ts if rec.ts is not None else rec.timestamp, msg.timestamp_ms),
        format="openai_chat",
        provider=rec.provider or "openai",
        model=model,
        served_model=served,
        messages=messages,
        params=params,
        response_text=text,
        finish_reason=finish,
        input_tokens=whole(usage.prompt_tokens, "response.usage.prompt_tokens") if usage else None,
        output_tokens=(whole(usage.completion_tokens, "response.usage.completion_tokens")
                       if usage else None),
        cached_input_tokens=(whole(details.cached_tokens,
                                   "response.usage.prompt_tokens_details.cached_tokens")
                             if details else None),
        cost_usd=rec.cost_usd,
        cost_source="log" if rec.cost_usd is not None else None,
        latency_ms=rec.latency_ms,
        status=status,
        error=error,
        tags=tags,
    )])


def decode(value: bytes, msg: RawMessage) -> Decoded:
    return _from_struct(decode_json_as(_decoder, value, validation_reason), msg)


def decode_obj(obj: Any, msg: RawMessage) -> Decoded:
    """The same decoder for an already parsed object (a line of an array, a file record)."""
    return _from_struct(convert_as(obj, _Record, validation_reason), msg)
