"""Decoders from log formats to `Request`.

A decoder takes the parsed JSON object of one record and its `RawMessage` and returns the
requests it holds, or raises `DecodeError` with a reason a person understands. Decoders are
registered by name; `detect` picks one per message when a topic's format is `auto`.

Supported here: `openai_chat` — an OpenAI chat-completions request body and its response, with
timing, cost and tags around them::

    {"request_id": "...", "ts": "2026-11-27T12:00:00Z" | 1764244800.0,
     "request": {"model": "gpt-4o", "messages": [...], "temperature": 0, "max_tokens": 256},
     "response": {"id": "chatcmpl-...", "model": "...", "choices": [...], "usage": {...}},
     "latency_ms": 812, "cost_usd": 0.0123, "provider": "openai",
     "status": "ok" | "error", "error": "...", "tags": {"feature": "summarize"}}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from consumers.records import DecodeError, RawMessage, Request

Decoder = Callable[[dict[str, Any], RawMessage], list[Request]]

MAX_TOKENS_SANE = 100_000_000  # more than any context window: a count above this is corrupt
MAX_TS_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z in epoch milliseconds
PARAM_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "response_format",
              "stop", "seed", "presence_penalty", "frequency_penalty", "n")


def _req_str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key)
    if v is None:
        raise DecodeError(f"missing field {where}{key}")
    if not isinstance(v, str) or not v:
        raise DecodeError(f"field {where}{key} must be a non-empty string, got {type(v).__name__}")
    return v


def _opt_count(obj: dict[str, Any] | None, key: str, where: str) -> int | None:
    if not obj:
        return None
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DecodeError(f"field {where}{key} must be a count, got {v!r:.40}")
    if v < 0 or v > MAX_TOKENS_SANE or v != int(v):
        raise DecodeError(f"field {where}{key} is not a plausible token count: {v!r:.40}")
    return int(v)


def _opt_number(obj: dict[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise DecodeError(f"field {key} must be a finite non-negative number, got {v!r:.40}")
    return float(v)


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


def _tags(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError("field tags must be an object of strings")
    return {str(k): (x if isinstance(x, str) else str(x)) for k, x in v.items() if x is not None}


def decode_openai_chat(obj: dict[str, Any], msg: RawMessage) -> list[Request]:
    req = obj.get("request")
    if not isinstance(req, dict):
        raise DecodeError("missing field request (the chat-completions request body)")
    model = _req_str(req, "model", "request.")
    messages = normalize_messages(req.get("messages"), "request.")
    resp = obj.get("response")
    if resp is not None and not isinstance(resp, dict):
        raise DecodeError("field response must be an object")
    status = obj.get("status", "ok" if resp is not None else "error")
    if status not in ("ok", "error"):
        raise DecodeError(f"field status must be 'ok' or 'error', got {status!r:.40}")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = str(error)
    text: str | None = None
    finish: str | None = None
    usage: dict[str, Any] | None = None
    if resp is not None:
        choices = resp.get("choices")
        if not isinstance(choices, list):
            raise DecodeError("missing field response.choices")
        if choices:
            c0 = choices[0]
            if not isinstance(c0, dict) or not isinstance(c0.get("message", {}), dict):
                raise DecodeError("response.choices[0].message must be an object")
            text = message_text(c0.get("message", {}).get("content")) or None
            fr = c0.get("finish_reason")
            finish = fr if isinstance(fr, str) else None
        usage = resp.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise DecodeError("field response.usage must be an object")
        if isinstance(resp.get("model"), str) and resp["model"]:
            model = resp["model"]
    details = usage.get("prompt_tokens_details") if usage else None
    if details is not None and not isinstance(details, dict):
        raise DecodeError("field response.usage.prompt_tokens_details must be an object")
    rid = obj.get("request_id") or (resp or {}).get("id")
    if rid is not None and not isinstance(rid, str):
        rid = str(rid)
    if not rid:
        rid = f"{msg.topic}:{msg.partition}:{msg.offset}"
    provider = obj.get("provider", "openai")
    params = {k: req[k] for k in PARAM_KEYS if k in req}
    params["stream"] = bool(req.get("stream", False))
    params["tools"] = bool(req.get("tools") or req.get("functions"))
    return [Request(
        request_id=rid,
        ts_ms=parse_ts_ms(obj.get("ts", obj.get("timestamp")), msg.timestamp_ms),
        format="openai_chat",
        provider=provider if isinstance(provider, str) else "openai",
        model=model,
        messages=messages,
        params=params,
        response_text=text,
        finish_reason=finish,
        input_tokens=_opt_count(usage, "prompt_tokens", "response.usage."),
        output_tokens=_opt_count(usage, "completion_tokens", "response.usage."),
        cached_input_tokens=_opt_count(details, "cached_tokens",
                                       "response.usage.prompt_tokens_details."),
        cost_usd=_opt_number(obj, "cost_usd"),
        cost_source="log" if obj.get("cost_usd") is not None else None,
        latency_ms=_opt_number(obj, "latency_ms"),
        status=status,
        error=error,
        tags=_tags(obj.get("tags", obj.get("metadata"))),
    )]


DECODERS: dict[str, Decoder] = {"openai_chat": decode_openai_chat}


def detect(obj: Any) -> str:
    """Name of the decoder for a parsed record, or raise `DecodeError` if no format fits."""
    if isinstance(obj, dict) and isinstance(obj.get("request"), dict):
        return "openai_chat"
    kind = type(obj).__name__
    raise DecodeError(f"unrecognised log format (a JSON {kind} matching no supported format)")
