"""The GenAI semantic conventions: which spans are model calls, and one span's attributes (and
events) -> a `Request`; ids and status; and the one span loop every encoding shares
(`decode_spans`, over a `SpanWalk` of the encoding). See the package docstring for the
attribute table."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from consumers.formats.common import MAX_TOKENS_SANE, MAX_TS_MS
from consumers.records import Decoded, DecodeError, RawMessage, Request

NO_CONTENT = ("span has no captured message content "
              "(enable OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)")
# Operations that are not one model call: counted as skipped, like any non-GenAI span.
NOT_CALLS = frozenset({"execute_tool", "invoke_agent", "create_agent", "embeddings"})
MARKERS = frozenset({"gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name",
                      "gen_ai.request.model"})
_INT64 = 2**63
_MAX_DEPTH = 32  # nesting of array/kvlist attribute values; deeper is corrupt, not a prompt
_BUG = "this is a decoder bug"
_T = TypeVar("_T")
_E = TypeVar("_E", contravariant=True)
_R = TypeVar("_R")
_S = TypeVar("_S")


class _Unusable(Exception):
    """Message content that cannot be replayed; the request is kept, marked not replayable."""


# -- the shared part: one span's attributes -> Request ------------------------------------------

Attrs = dict[str, Any]
Events = Callable[[], list[tuple[str, Attrs]]]


def _kind(v: Any) -> str:
    """The OTLP name of a converted attribute value's type, for reasons."""
    return {str: "string", bool: "bool", int: "int", float: "double", list: "array",
            dict: "kvlist", bytes: "bytes"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    return f"{_kind(v)} {v!r:.40}"


def _opt_str(a: Attrs, key: str) -> str | None:
    v = a.get(key)
    if v is None or v == "":
        return None
    if type(v) is not str:
        raise DecodeError(f"attribute {key} must be a string, got {_show(v)}")
    return v


def _count(a: Attrs, *keys: str) -> int | None:
    for key in keys:
        v = a.get(key)
        if v is None:
            continue
        t = type(v)
        if t is float and math.isfinite(v) and v == int(v):
            v = int(v)
        elif t is not int:
            raise DecodeError(f"attribute {key} must be an int, got {_show(v)}")
        if v < 0 or v > MAX_TOKENS_SANE:
            raise DecodeError(f"attribute {key} is not a plausible token count: {v}")
        return int(v)
    return None


def _number(a: Attrs, key: str, lo: float, hi: float) -> float | int | None:
    v = a.get(key)
    if v is None:
        return None
    if type(v) not in (int, float) or not math.isfinite(v):
        raise DecodeError(f"attribute {key} must be a number, got {_show(v)}")
    if not lo <= v <= hi:
        raise DecodeError(f"attribute {key} is out of range [{lo:g}, {hi:g}]: {v!r:.40}")
    return v  # type: ignore[no-any-return]


def _seed(a: Attrs) -> int | None:
    v = a.get("gen_ai.request.seed")
    if v is None:
        return None
    if type(v) is float and math.isfinite(v) and v == int(v):
        v = int(v)
    if type(v) is not int:
        raise DecodeError(f"attribute gen_ai.request.seed must be an int, got {_show(v)}")
    return v  # type: ignore[no-any-return]


def _strings(a: Attrs, key: str) -> list[str] | None:
    v = a.get(key)
    if v is None:
        return None
    if type(v) is str:
        return [v]
    if type(v) is not list or not all(type(x) is str for x in v):
        raise DecodeError(f"attribute {key} must be an array of strings, got {_show(v)}")
    return v


def _tag_value(v: Any) -> str:
    if type(v) is str:
        return v
    if type(v) is bytes:
        return v.hex()
    try:
        return orjson.dumps(v, default=_jsonable).decode()
    except orjson.JSONEncodeError:
        return repr(v)[:200]


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    raise TypeError


_RESOURCE_TAGS = {"service.name": "service", "deployment.environment.name": "environment",
                  "deployment.environment": "environment"}


def _resource_tags(kvs: Iterable[Any], conv: Callable[[Any, str], Any]) -> dict[str, str]:
    """Tags from resource attributes (`KeyValue`s of either encoding); only those values are
    converted."""
    out: dict[str, str] = {}
    roles = _RESOURCE_ROLE
    for kv in kvs:
        k = kv.key
        name = roles.get(k)
        if name is None:
            name = _RESOURCE_TAGS.get(k) or (k[4:] if k.startswith(("app.", "tag.")) else "")
            if len(roles) < 10_000 and len(k) <= 200:
                roles[k] = name
        if name and name not in out:
            v = conv(kv.value, k)
            if v is not None:
                out[name] = v if type(v) is str else _tag_value(v)
    return out


_RESOURCE_ROLE: dict[str, str] = {}  # resource attribute key -> its tag name or ""


class _Plan(NamedTuple):
    """What a span's set of attribute keys holds beyond the fixed names: its tag attributes,
    the request parameters present, whether tools were offered."""

    tags: tuple[tuple[str, str], ...]  # (attribute key, tag name)
    params: tuple[tuple[str, str, Callable[[Attrs, str], Any]], ...]
    tools: bool
    prompt_indexed: bool  # gen_ai.prompt.0.content, ...
    completion_indexed: bool


# Spans of one instrumentation share their keys, so a plan is made once per set of keys.
_PLANS: dict[tuple[str, ...], _Plan] = {}


def _plan(keys: tuple[str, ...]) -> _Plan:
    plan = _PLANS.get(keys)
    if plan is None:
        present = set(keys)
        plan = _Plan(
            tags=tuple((k, k[4:]) for k in keys if k.startswith(("app.", "tag.")) and len(k) > 4),
            params=tuple(p for p in _PARAMS if p[0] in present),
            tools="gen_ai.tool.definitions" in present
            or any(k.startswith("llm.request.functions.") for k in keys),
            prompt_indexed=any(k.startswith("gen_ai.prompt.") for k in keys),
            completion_indexed=any(k.startswith("gen_ai.completion.") for k in keys))
        # Bounded: indexed prompt keys make many distinct sets, and keys come from the data.
        if len(keys) <= 64 and sum(map(len, keys)) <= 4096:
            if len(_PLANS) >= 1024:
                _PLANS.clear()
            _PLANS[keys] = plan
    return plan


def _is_call(a: Attrs) -> bool:
    op = a.get("gen_ai.operation.name")
    if op is None:
        return any(a.get(k) is not None for k in MARKERS)
    if type(op) is not str:
        raise DecodeError(f"attribute gen_ai.operation.name must be a string, got {_show(op)}")
    return op not in NOT_CALLS


def _request(a: Attrs, events: Events, trace_id: str, span_id: str, start_ns: int, end_ns: int,
             code: int, status_message: str, res_tags: Mapping[str, str], fmt: str,
             msg: RawMessage) -> Request:
    # The requested model names the call: a failure has no response model, and a success's
    # response model is a dated snapshot; one model must not split into two strata.
    served = _opt_str(a, "gen_ai.response.model")
    model = _opt_str(a, "gen_ai.request.model") or served
    if model is None:
        raise DecodeError("missing field gen_ai.request.model")
    provider = _opt_str(a, "gen_ai.provider.name") or _opt_str(a, "gen_ai.system") or "unknown"

    if start_ns <= 0:
        if msg.timestamp_ms is None:
            raise DecodeError("missing field startTimeUnixNano (and the message has no timestamp)")
        ts_ms = msg.timestamp_ms
    else:
        ts_ms = start_ns // 1_000_000
        if ts_ms >= MAX_TS_MS:
            raise DecodeError(f"startTimeUnixNano is not a valid time: {start_ns!r:.40}")
    latency = None
    if end_ns > 0 and start_ns > 0:
        if end_ns < start_ns:
            raise DecodeError(f"endTimeUnixNano ({end_ns}) is before startTimeUnixNano ({start_ns})")
        if end_ns // 1_000_000 >= MAX_TS_MS:
            raise DecodeError(f"endTimeUnixNano is not a valid time: {end_ns!r:.40}")
        latency = (end_ns - start_ns) / 1e6

    if code not in (0, 1, 2):
        raise DecodeError(f"span status code {code!r:.40} is not 0 (unset), 1 (ok) or 2 (error)")
    error_type = a.get("error.type")
    failed = code == 2 or (code == 0 and error_type not in (None, ""))
    error = (status_message or (_tag_value(error_type) if error_type not in (None, "") else "")
             or "span status ERROR") if failed else None

    plan = _plan(tuple(a))
    params: dict[str, Any] = {}
    for key, name, check in plan.params:
        if a[key] is not None:
            params[name] = check(a, key)
    finishes = _strings(a, "gen_ai.response.finish_reasons")
    tags = dict(res_tags)
    for key, name in plan.tags:
        v = a[key]
        if v is not None:
            tags[name] = v if type(v) is str else _tag_value(v)

    messages, not_replayable, tools_in_messages = _input(a, events, plan)
    # No content on the span, not even content-less events: it may come as log records.
    awaits = not_replayable == NO_CONTENT and not any(
        name in _ROLE_EVENTS or name == "gen_ai.choice" for name, _ in events())
    text, finish, problem = _output(a, events, plan)
    params["tools"] = plan.tools or tools_in_messages
    if not_replayable is None:
        not_replayable = problem
    cost = _number(a, "gen_ai.usage.cost", 0, 1e12)
    return Request(
        request_id=f"{trace_id}:{span_id}",
        ts_ms=ts_ms,
        format=fmt,
        provider=provider,
        model=model,
        served_model=served,
        messages=messages,
        params=params,
        response_text=text,
        finish_reason=finishes[0] if finishes else finish,
        input_tokens=_count(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
        output_tokens=_count(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
        cached_input_tokens=_count(a, "gen_ai.usage.cache_read.input_tokens"),
        cost_usd=float(cost) if cost is not None else None,
        cost_source="log" if cost is not None else None,
        latency_ms=latency,
        status="error" if failed else "ok",
        error=error,
        tags=tags,
        not_replayable=not_replayable,
        awaits_content=awaits,
    )


def join_content(r: Request, events: list[tuple[str, Attrs]]) -> None:
    """Fill a span's request with its content logged apart (`otlp_logs`): events named like
    span events, each with the fields of its log record's body."""
    plan = _plan(())
    messages, not_replayable, tools = _input({}, lambda: events, plan)
    text, finish, problem = _output({}, lambda: events, plan)
    r.messages = messages
    r.not_replayable = not_replayable or problem
    if r.response_text is None:
        r.response_text = text
    if r.finish_reason is None:
        r.finish_reason = finish
    r.params["tools"] = bool(r.params.get("tools")) or tools
    r.awaits_content = False


_PARAMS: tuple[tuple[str, str, Callable[[Attrs, str], Any]], ...] = (
    ("gen_ai.request.temperature", "temperature", lambda a, k: _number(a, k, 0.0, 100.0)),
    ("gen_ai.request.top_p", "top_p", lambda a, k: _number(a, k, 0.0, 1.0)),
    ("gen_ai.request.max_tokens", "max_tokens", lambda a, k: _count(a, k)),
    ("gen_ai.request.seed", "seed", lambda a, k: _seed(a)),
    ("gen_ai.request.stop_sequences", "stop", lambda a, k: _strings(a, k)),
    ("gen_ai.request.frequency_penalty", "frequency_penalty", lambda a, k: _number(a, k, -100.0, 100.0)),
    ("gen_ai.request.presence_penalty", "presence_penalty", lambda a, k: _number(a, k, -100.0, 100.0)),
    ("gen_ai.request.choice.count", "n", lambda a, k: _count(a, k)),
)


# -- message content: semconv shapes -> OpenAI-style chat messages ------------------------------

_ROLE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}


def _json_of(v: Any, key: str, plain_text_ok: bool = False) -> Any:
    """A content attribute: a JSON string, or already structured (array/kvlist values)."""
    if type(v) is not str:
        return v
    if plain_text_ok and v.lstrip()[:1] not in ("[", "{"):
        return v
    try:
        return orjson.loads(v)
    except orjson.JSONDecodeError:
        if plain_text_ok:
            return v  # e.g. a Llama prompt starting with "[INST]"
        raise _Unusable(f"attribute {key} is not valid JSON (cut by an attribute length limit?)"
                        ) from None


def _as_text(v: Any) -> str:
    if type(v) is str:
        return v
    if v is None:
        return ""
    try:
        return orjson.dumps(v, default=_jsonable).decode()
    except orjson.JSONEncodeError:
        raise _Unusable("content cannot be written as JSON") from None


def _writable(v: Any, where: str) -> None:
    """`v`, kept in a message as it came, must be JSON as it is: ingest writes the messages and
    the shadow stage sends them. An AnyValue's bytes (`bytes_value`; base64 text in OTLP/JSON)
    cannot be, and are nothing a model could be sent either."""
    try:
        orjson.dumps(v)
    except orjson.JSONEncodeError:
        raise _Unusable(f"{where} holds binary values (bytes)") from None


def _content(texts: list[str]) -> str | list[dict[str, str]]:
    if len(texts) == 1:
        return texts[0]
    if not texts:
        return ""
    return [{"type": "text", "text": t} for t in texts]


def _parts_messages(v: Any, key: str) -> list[dict[str, Any]]:
    """`[{"role": ..., "parts": [{"type": "text", "content": ...}, ...]}, ...]` (semconv >= 1.37)."""
    obj = _json_of(v, key)
    if type(obj) is dict:
        obj = [obj]
    if type(obj) is not list or not obj:
        raise _Unusable(f"attribute {key} must be a non-empty list of messages, got {_kind(obj)}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(obj):
        if type(m) is not dict:
            raise _Unusable(f"{key}[{i}] is not an object")
        role = m.get("role")
        if type(role) is not str or not role:
            raise _Unusable(f"{key}[{i}] has no role")
        parts = m.get("parts")
        if parts is None and "content" in m:  # the older {"role", "content"} shape under a new key
            out.append(_plain_message(m, f"{key}[{i}]"))
            continue
        if type(parts) is not list:
            raise _Unusable(f"{key}[{i}].parts must be a list")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        responses: list[dict[str, Any]] = []
        for j, p in enumerate(parts):
            t = p.get("type") if type(p) is dict else None
            if t == "text":
                c = p.get("content")
                if type(c) is not str:
                    raise _Unusable(f"{key}[{i}].parts[{j}].content must be a string")
                texts.append(c)
            elif t == "tool_call":
                calls.append({"id": _as_text(p.get("id")), "type": "function",
                              "function": {"name": _as_text(p.get("name")),
                                           "arguments": _as_text(p.get("arguments"))}})
            elif t == "tool_call_response":
                responses.append({"role": "tool", "tool_call_id": _as_text(p.get("id")),
                                  "content": _as_text(p.get("response"))})
            elif t == "reasoning":
                continue  # the model's own thinking, not part of what was asked
            elif type(t) is str:
                raise _Unusable(f"{key}[{i}] holds a {t[:30]!r} part: only text and tool calls "
                                f"can be replayed")
            else:
                raise _Unusable(f"{key}[{i}].parts[{j}] has no type")
        if responses:
            out.extend(responses)
            if texts:
                out.append({"role": role, "content": _content(texts)})
            continue
        msg: dict[str, Any] = {"role": role, "content": _content(texts) if texts or not calls else None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _plain_message(m: Any, where: str, role: str | None = None) -> dict[str, Any]:
    """`{"role": ..., "content": "..." | [text parts]}` (older semconv, OpenAI style)."""
    if type(m) is not dict:
        raise _Unusable(f"{where} is not an object")
    r = m.get("role", role)
    if type(r) is not str or not r:
        raise _Unusable(f"{where} has no role")
    content = m.get("content")
    if content is not None and type(content) is not str:
        if type(content) is not list or not all(type(p) is dict and type(p.get("text", "")) is str
                                                for p in content):
            raise _Unusable(f"{where}.content must be a string or a list of text parts")
        _writable(content, f"{where}.content")
    out: dict[str, Any] = {"role": r, "content": content}
    calls = m.get("tool_calls")
    if calls is not None:
        if type(calls) is not list or not all(type(c) is dict for c in calls):
            raise _Unusable(f"{where}.tool_calls must be a list of objects")
        _writable(calls, f"{where}.tool_calls")
        out["tool_calls"] = calls
    if m.get("tool_call_id") is not None or (m.get("id") is not None and r == "tool"):
        out["tool_call_id"] = _as_text(m.get("tool_call_id", m.get("id")))
    return out


def _old_messages(v: Any, key: str) -> list[dict[str, Any]]:
    """`gen_ai.prompt`: a JSON list of OpenAI-style messages, or plain text (one user message)."""
    obj = _json_of(v, key, plain_text_ok=True)
    if type(obj) is str:
        return [{"role": "user", "content": obj}]
    if type(obj) is dict:
        obj = [obj]
    if type(obj) is not list or not obj:
        raise _Unusable(f"attribute {key} must be text or a non-empty list of messages")
    if any(type(m) is dict and "parts" in m for m in obj):
        return _parts_messages(obj, key)
    return [_plain_message(m, f"{key}[{i}]") for i, m in enumerate(obj)]


def _indexed(a: Attrs, prefix: str) -> dict[int, dict[str, Any]]:
    """`gen_ai.prompt.0.role`, `gen_ai.prompt.0.content`, ... (OpenLLMetry) -> {0: {role, content}}."""
    out: dict[int, dict[str, Any]] = {}
    n = len(prefix)
    for k, v in a.items():
        if k.startswith(prefix):
            idx, _, field = k[n:].partition(".")
            if idx.isdigit() and field and len(idx) < 6:
                out.setdefault(int(idx), {})[field] = v
    return out


def _event_content(ea: Attrs, where: str) -> Any:
    c = ea.get("content")
    if c is None:
        body = ea.get("body")
        if type(body) is str:
            body = _json_of(body, f"{where}.body", plain_text_ok=True)
        c = body.get("content") if type(body) is dict else body
    if c is not None and type(c) is not str and type(c) is not list:
        raise _Unusable(f"{where} content must be a string or a list of text parts, got {_kind(c)}")
    return c


def _input(a: Attrs, events: Events, plan: _Plan) -> tuple[list[dict[str, Any]], str | None, bool]:
    """The prompt as chat messages, why it cannot be replayed (or None), whether it used tools."""
    try:
        msgs = _prompt(a, events, plan)
    except _Unusable as e:
        return [], str(e), False
    if not msgs:
        return [], NO_CONTENT, False
    return msgs, None, any("tool_calls" in m or m.get("role") == "tool" for m in msgs)


def _prompt(a: Attrs, events: Events, plan: _Plan) -> list[dict[str, Any]]:
    v = a.get("gen_ai.input.messages")
    if v is not None:
        msgs = _parts_messages(v, "gen_ai.input.messages")
        system = a.get("gen_ai.system_instructions")
        if system is not None:
            parts = _json_of(system, "gen_ai.system_instructions", plain_text_ok=True)
            if type(parts) is str:
                texts = [parts]
            elif type(parts) is list:
                texts = [p["content"] for p in parts if type(p) is dict and p.get("type") == "text"
                         and type(p.get("content")) is str]
            else:
                raise _Unusable("attribute gen_ai.system_instructions must be a list of parts")
            msgs.insert(0, {"role": "system", "content": _content(texts)})
        return msgs
    v = a.get("gen_ai.prompt")
    if v is not None:
        return _old_messages(v, "gen_ai.prompt")
    indexed = _indexed(a, "gen_ai.prompt.") if plan.prompt_indexed else None
    if indexed:
        return [_plain_message(indexed[i], f"gen_ai.prompt.{i}") for i in sorted(indexed)]
    out: list[dict[str, Any]] = []
    has_content = False
    for name, ea in events():
        if name == "gen_ai.content.prompt" and ea.get("gen_ai.prompt") is not None:
            return _old_messages(ea["gen_ai.prompt"], "event gen_ai.content.prompt")
        role = _ROLE_EVENTS.get(name)
        if role is None:
            continue
        content = _event_content(ea, f"event {name}")
        has_content = has_content or content is not None
        m = dict(ea)
        m["content"] = content
        if type(m.get("role")) is not str:
            m["role"] = role
        out.append(_plain_message(m, f"event {name}"))
    return out if has_content else []


def _text_of(content: Any) -> str | None:
    if type(content) is str:
        return content or None
    if type(content) is list:
        return "".join(p.get("text", "") for p in content if type(p) is dict
                       and type(p.get("text", "")) is str) or None
    return None


def _output(a: Attrs, events: Events, plan: _Plan) -> tuple[str | None, str | None, str | None]:
    """The answer's text, its finish reason, and why it cannot be used (or None)."""
    try:
        return (*_answer(a, events, plan), None)
    except _Unusable as e:
        return None, None, str(e)


def _answer(a: Attrs, events: Events, plan: _Plan) -> tuple[str | None, str | None]:
    v = a.get("gen_ai.output.messages")
    if v is not None:
        obj = _json_of(v, "gen_ai.output.messages")
        msgs = _parts_messages(obj, "gen_ai.output.messages")
        first = obj[0] if type(obj) is list else obj
        finish = first.get("finish_reason") if type(first) is dict else None
        return _text_of(msgs[0].get("content")), finish if type(finish) is str else None
    v = a.get("gen_ai.completion")
    if v is not None:
        return _old_answer(v, "gen_ai.completion")
    indexed = _indexed(a, "gen_ai.completion.") if plan.completion_indexed else None
    if indexed:
        first = indexed[min(indexed)]
        m = _plain_message(first, f"gen_ai.completion.{min(indexed)}", role="assistant")
        finish = first.get("finish_reason")
        return _text_of(m["content"]), finish if type(finish) is str else None
    for name, ea in events():
        if name == "gen_ai.content.completion" and ea.get("gen_ai.completion") is not None:
            return _old_answer(ea["gen_ai.completion"], "event gen_ai.content.completion")
        if name == "gen_ai.choice" and ea.get("index", 0) in (0, None):
            message = ea.get("message")
            if type(message) is str:
                message = _json_of(message, "event gen_ai.choice message", plain_text_ok=True)
            content = (message.get("content") if type(message) is dict
                       else message if message is not None else _event_content(ea, "event gen_ai.choice"))
            finish = ea.get("finish_reason")
            return _text_of(content), finish if type(finish) is str else None
    return None, None


def _old_answer(v: Any, key: str) -> tuple[str | None, str | None]:
    obj = _json_of(v, key, plain_text_ok=True)
    if type(obj) is str:
        return obj or None, None
    if type(obj) is list and obj:
        obj = obj[0]
    if type(obj) is not dict:
        raise _Unusable(f"attribute {key} must be text or a list of messages")
    finish = obj.get("finish_reason")
    return _text_of(obj.get("content")), finish if type(finish) is str else None


# -- ids, status ---------------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")
_B64_LEN = {16: 24, 8: 12}  # base64 length of a trace / span id


def _hex_id(v: str | bytes, size: int, name: str) -> str:
    """A trace (16 bytes) or span (8 bytes) id: raw bytes, hex (OTLP/JSON) or base64 (protobuf's
    generic JSON mapping, which some producers use)."""
    if type(v) is str and len(v) == 2 * size:  # the usual hex id, checked by its round trip
        try:
            b = bytes.fromhex(v)  # skips whitespace: then the round trip differs
        except ValueError:
            pass
        else:
            h = b.hex()
            if (h == v or h == v.lower()) and any(b):
                return h
    if type(v) is str and v:
        raw: bytes | None = None
        if len(v) % 2 == 0 and _HEX.issuperset(v):  # a base64 id is all hex digits ~never
            raw = bytes.fromhex(v)
        elif len(v) == _B64_LEN[size]:
            try:
                raw = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raw = None
        if raw is None:
            raise DecodeError(f"{name} is not a hex id: {v!r:.50}")
        v = raw
    if not v:
        raise DecodeError(f"missing field {name}")
    if len(v) != size:
        raise DecodeError(f"{name} must be {size} bytes, got {len(v)}")
    if not any(v):
        raise DecodeError(f"{name} is all zeros (an invalid id)")
    return v.hex()  # type: ignore[union-attr]


def _where(i: int, trace_id: Any, span_id: Any) -> str:
    t = trace_id.hex() if isinstance(trace_id, bytes) else str(trace_id)
    s = span_id.hex() if isinstance(span_id, bytes) else str(span_id)
    return f"span {i} (trace {t[:32] or '?'}, span {s[:16] or '?'})"


_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _guarded(decode: Callable[..., Decoded], *args: Any) -> Decoded:
    """`decode(*args)`, any exception but a `DecodeError` turned into one: never crash the ingest;
    the reason says it is ours to fix."""
    try:
        return decode(*args)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("OTLP message nested too deeply") from None
    except Exception as e:
        raise DecodeError(f"could not decode the OTLP message ({type(e).__name__}: {e!s:.200}); {_BUG}"
                          ) from None


class SpanWalk(Protocol[_E, _R, _S]):
    """How one encoding reaches an export's resources, their spans and a span's parts; the span
    loop (`decode_spans`) is the same for every encoding."""

    format: str

    def resources(self, export: _E) -> Iterable[_R]: ...
    def spans(self, resource: _R) -> Iterator[_S]: ...
    def attributes(self, span: _S) -> Attrs | None:
        """The span's attributes as Python values, or None when no key marks a GenAI span (a
        cheap check first: most spans of a trace are not model calls)."""
        ...
    def resource_tags(self, resource: _R) -> dict[str, str]: ...
    def ids(self, span: _S) -> tuple[Any, Any]:
        """(trace id, span id) as the encoding holds them (bytes, or hex/base64 text)."""
        ...
    def timing(self, span: _S) -> tuple[int, int, int, str]:
        """(start ns, end ns, status code, status message)."""
        ...
    def events(self, span: _S) -> Events: ...


def decode_spans(walk: SpanWalk[_E, _R, _S], export: _E, msg: RawMessage) -> Decoded:
    """Every model-call span of an export -> a `Request`; other spans counted as skipped. A bad
    model-call span rejects the whole message, with a reason that names it."""
    requests: list[Request] = []
    skipped = 0
    i = -1
    for resource in walk.resources(export):
        res_tags: dict[str, str] | None = None
        for span in walk.spans(resource):
            i += 1
            try:
                a = walk.attributes(span)
                if a is None or not _is_call(a):
                    skipped += 1
                    continue
                if res_tags is None:
                    res_tags = walk.resource_tags(resource)
                raw_trace, raw_span = walk.ids(span)
                trace_id = _hex_id(raw_trace, 16, "traceId")
                span_id = _hex_id(raw_span, 8, "spanId")
                start, end, code, message = walk.timing(span)
                requests.append(_request(a, walk.events(span), trace_id, span_id, start, end,
                                         code, message, res_tags, walk.format, msg))
            except DecodeError as e:
                raise DecodeError(f"{_where(i, *walk.ids(span))}: {e}") from None
    if i < 0:
        raise DecodeError("OTLP message holds no spans")
    return Decoded(requests, skipped)
