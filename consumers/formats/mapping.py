"""Mapping formats: an in-house JSON log format described by field paths in the config.

    [formats.mappings.inhouse]
    request_id = "$headers.x-request-id"
    model = "llm.model"
    messages = "data.messages"
    response_text = "data.choices.0.text"
    input_tokens = "usage.in"
    tags = { feature = "meta.feature" }

    [formats.by_topic]
    "inhouse-llm-logs" = "inhouse"

A path is keys separated by dots; a number indexes a list (`choices.0.text`, `-1` is the last
element); a key that itself holds dots (`attributes.gen_ai.request.model`) is found too.
`$headers.<name>` reads a Kafka message header (UTF-8; the name is matched exactly, then
ignoring case) and `$key` the message key. A path that leads nowhere, or to null, is missing.

A mapping is used only for the topics that name it; it has no byte signature to be detected by.
Its requests carry the mapping's name as their `format`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import orjson

from consumers.config import FormatsConfig, MappingConfig
from consumers.errors import ConfigError
from consumers.formats import FORMATS, Format
from consumers.formats.common import (
    MAX_TOKENS_SANE,
    PARAM_KEYS,
    json_reason,
    message_text,
    normalize_messages,
    parse_ts_ms,
    storable,
    tool_params,
)
from consumers.formats.litellm import decode_each, is_many
from consumers.records import Decoded, DecodeError, RawMessage, Request

__all__ = ["FieldPath", "MappingDecoder", "build_mapping_formats", "check_formats", "compile_path"]

_MAX_AMOUNT = 1e12
# MappingConfig fields that are not field paths.
NOT_PATHS = frozenset({"ok_values", "tags", "latency_unit", "default_provider"})


@dataclass(frozen=True)
class FieldPath:
    """A compiled field path; `get` returns the value or None when it is missing."""

    text: str
    steps: tuple[str, ...] = ()
    indexes: tuple[int | None, ...] = ()
    header: str | None = None
    key: bool = False

    def get(self, obj: Any, msg: RawMessage) -> Any:
        if self.header is not None:
            return _header(msg, self.header)
        if self.key:
            return _utf8(msg.key, "the message key") if msg.key is not None else None
        return self._walk(obj, 0)

    def find(self, obj: Any) -> Any:
        """The value at this path in a parsed JSON document (None when missing); not for
        `$headers`/`$key` paths, which need a message."""
        return self._walk(obj, 0)

    def _walk(self, node: Any, i: int) -> Any:
        steps = self.steps
        n = len(steps)
        while i < n:
            if isinstance(node, dict):
                s = steps[i]
                if s in node:
                    found = self._walk(node[s], i + 1) if i + 1 < n else node[s]
                    if found is not None:
                        return found
                for j in range(i + 2, n + 1):  # a key with dots in it: "gen_ai.request.model"
                    joined = ".".join(steps[i:j])
                    if joined in node:
                        found = self._walk(node[joined], j)
                        if found is not None:
                            return found
                return None
            if isinstance(node, list):
                idx = self.indexes[i]
                if idx is None or not -len(node) <= idx < len(node):
                    return None
                node = node[idx]
                i += 1
            else:
                return None
        return node


def compile_path(text: str) -> FieldPath:
    """Parse a field path, or raise ValueError saying what is wrong with it."""
    if not text or not text.strip():
        raise ValueError("must be a field path, e.g. \"llm.model\"")
    if text.startswith("$"):
        if text == "$key":
            return FieldPath(text, key=True)
        if text.startswith("$headers."):
            name = text[len("$headers."):]
            if not name:
                raise ValueError(f"{text!r} names no header, e.g. \"$headers.x-request-id\"")
            return FieldPath(text, header=name)
        raise ValueError(f"{text!r}: a path starting with $ must be \"$headers.<name>\" or \"$key\"")
    steps = tuple(text.split("."))
    if any(not s for s in steps):
        raise ValueError(f"{text!r} has an empty step (two dots, or a dot at an end)")
    indexes = tuple(int(s) if s.lstrip("-").isdigit() else None for s in steps)
    return FieldPath(text, steps, indexes)


def _utf8(v: bytes, what: str) -> str:
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"{what} is not valid UTF-8 (byte {e.start})") from None


def _header(msg: RawMessage, name: str) -> str | None:
    found: bytes | None = None
    for k, v in msg.headers:
        if k == name:
            found = v
            break
    else:
        low = name.lower()
        for k, v in msg.headers:
            if k.lower() == low:
                found = v
                break
    if found is None:
        return None
    return _utf8(found, f"header {name!r}")


class MappingDecoder:
    """Decodes records of one configured mapping into requests."""

    def __init__(self, name: str, cfg: MappingConfig) -> None:
        self.name = name
        # Only plain, compiled values: the decoder pickles (to decode in other processes).
        self.default_provider = cfg.default_provider
        self.paths: dict[str, FieldPath] = {}
        for f in fields(cfg):
            text = getattr(cfg, f.name)
            if f.name not in NOT_PATHS and text:
                self.paths[f.name] = compile_path(text)
        self.tag_paths = {tag: compile_path(p) for tag, p in cfg.tags.items()}
        self.ok_values = frozenset(v.lower() for v in cfg.ok_values)
        self.latency_scale = 1000.0 if cfg.latency_unit == "s" else 1.0
        # Ids from a header or the key describe a message, not the elements of an array in it.
        rid = self.paths.get("request_id")
        self.per_message_id = rid is not None and (rid.header is not None or rid.key)

    def format(self) -> Format:
        return Format(self.name, self.decode, self.decode_obj)

    def decode(self, value: bytes, msg: RawMessage) -> Decoded:
        if is_many(value):
            out = decode_each(value, msg, self.decode_obj)
            if self.per_message_id and len(out.requests) > 1:
                shared = self.paths["request_id"].get(None, msg)
                for i, r in enumerate(out.requests):  # one request per element
                    if r.request_id == shared:
                        r.request_id += f":{i}"
            return out
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise DecodeError(json_reason(value, e)) from None
        return self.decode_obj(obj, msg)

    def decode_obj(self, obj: Any, msg: RawMessage) -> Decoded:
        if not isinstance(obj, dict):
            raise DecodeError(f"a record of format {self.name!r} must be a JSON object, "
                              f"got {type(obj).__name__}")
        p = self.paths

        def get(name: str) -> Any:
            path = p.get(name)
            return path.get(obj, msg) if path is not None else None

        model_path = p["model"].text
        model = get("model")
        if model is None:
            raise DecodeError(f"missing field {model_path} (model)")
        if not isinstance(model, str) or not model:
            raise DecodeError(f"field {model_path} (model) must be a non-empty string, "
                              f"got {_kind(model)}")

        rid = get("request_id")
        if rid is None or rid == "":
            request_id = f"{msg.topic}:{msg.partition}:{msg.offset}"
        elif isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
            request_id = str(rid)
        else:
            raise DecodeError(f"field {p['request_id'].text} (request_id) must be a string or "
                              f"an integer, got {_kind(rid)}")

        messages, not_replayable = self._messages(get)
        error = get("error")
        if error is not None and not isinstance(error, str):
            error = orjson.dumps(storable(error, f"{p['error'].text} (error)")).decode()[:1000]
        error = error or None
        status = self._status(get("status"), error)
        provider = self._text(get, "provider") or self.default_provider
        latency = self._number(get, "latency_ms")
        cost = self._number(get, "cost_usd")

        return Decoded([Request(
            request_id=request_id,
            ts_ms=self._ts(get("ts"), msg),
            format=self.name,
            provider=provider,
            model=model,
            messages=messages,
            params=self._params(get("params")),
            response_text=self._response_text(get("response_text")),
            finish_reason=self._text(get, "finish_reason"),
            input_tokens=self._count(get, "input_tokens"),
            output_tokens=self._count(get, "output_tokens"),
            cached_input_tokens=self._count(get, "cached_input_tokens"),
            cost_usd=cost,
            cost_source="log" if cost is not None else None,
            latency_ms=latency * self.latency_scale if latency is not None else None,
            status=status,
            error=error,
            tags=self._tags(obj, msg),
            not_replayable=not_replayable,
        )])

    # -- fields --------------------------------------------------------------------------------

    def _where(self, name: str) -> str:
        return f"field {self.paths[name].text} ({name})"

    def _messages(self, get: Any) -> tuple[list[dict[str, Any]], str | None]:
        p = self.paths
        if "messages" in p:
            v = get("messages")
            if v is None:
                return [], f"no messages at {p['messages'].text}"
            try:
                return normalize_messages(storable(v, "messages"), ""), None
            except DecodeError as e:
                raise DecodeError(f"{e} (at {p['messages'].text})") from None
        if "prompt" in p:
            prompt = get("prompt")
            if prompt is None:
                return [], f"no prompt at {p['prompt'].text}"
            if not isinstance(prompt, str):
                raise DecodeError(f"{self._where('prompt')} must be a string, got {_kind(prompt)}")
            system = get("system")
            if system is not None and not isinstance(system, str):
                raise DecodeError(f"{self._where('system')} must be a string, got {_kind(system)}")
            head = [{"role": "system", "content": system}] if system else []
            return [*head, {"role": "user", "content": prompt}], None
        return [], f"mapping {self.name!r} has no messages or prompt path"

    def _ts(self, v: Any, msg: RawMessage) -> int:
        if "ts" not in self.paths and msg.timestamp_ms is None:
            raise DecodeError(f"no request time: mapping {self.name!r} has no ts path and the "
                              f"message has no timestamp")
        if isinstance(v, str):
            v = _numeric(v, v)
        try:
            return parse_ts_ms(v, msg.timestamp_ms)
        except DecodeError as e:
            if "ts" in self.paths:
                raise DecodeError(str(e).replace("field ts", self._where("ts"), 1)) from None
            raise

    def _text(self, get: Any, name: str) -> str | None:
        v = get(name)
        if v is None or isinstance(v, str):
            return v or None
        raise DecodeError(f"{self._where(name)} must be a string, got {_kind(v)}")

    def _response_text(self, v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v or None
        if isinstance(v, list):
            return message_text(v) or None
        raise DecodeError(f"{self._where('response_text')} must be a string or a list of text "
                          f"parts, got {_kind(v)}")

    def _count(self, get: Any, name: str) -> int | None:
        v = get(name)
        if v is None:
            return None
        if isinstance(v, str):
            v = _numeric(v, v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DecodeError(f"{self._where(name)} must be a token count, got {_kind(v)}")
        if v < 0 or v > MAX_TOKENS_SANE or v != int(v):
            raise DecodeError(f"{self._where(name)} is not a plausible token count: {v!r:.40}")
        return int(v)

    def _number(self, get: Any, name: str) -> float | None:
        v = get(name)
        if v is None:
            return None
        if isinstance(v, str):
            v = _numeric(v, v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DecodeError(f"{self._where(name)} must be a number, got {_kind(v)}")
        if not math.isfinite(v) or not 0 <= v <= _MAX_AMOUNT:
            raise DecodeError(f"{self._where(name)} must be a finite number between 0 and "
                              f"{_MAX_AMOUNT:g}, got {v!r:.40}")
        return float(v)

    def _status(self, v: Any, error: str | None) -> str:
        if v is None:
            return "error" if error else "ok"
        if isinstance(v, bool):
            s = "true" if v else "false"
        elif isinstance(v, float) and v.is_integer():
            s = str(int(v))
        elif isinstance(v, (str, int, float)):
            s = str(v)
        else:
            raise DecodeError(f"{self._where('status')} must be a string, number or boolean, "
                              f"got {_kind(v)}")
        return "ok" if s.lower() in self.ok_values else "error"

    def _params(self, v: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if v is not None:
            if not isinstance(v, dict):
                raise DecodeError(f"{self._where('params')} must be an object, got {_kind(v)}")
            params = {k: v[k] for k in PARAM_KEYS if v.get(k) is not None}
            storable(params, f"{self.paths['params'].text} (params)")
            stream = v.get("stream")
            params["stream"] = bool(stream) if isinstance(stream, (bool, int)) else False
            tool_params(params, v.get("tools"), v.get("functions"), v.get("tool_choice"),
                        v.get("function_call"), f"{self.paths['params'].text}.")
        else:
            params["stream"] = False
            params["tools"] = False
        return params

    def _tags(self, obj: Any, msg: RawMessage) -> dict[str, str]:
        tags: dict[str, str] = {}
        for tag, path in self.tag_paths.items():
            v = path.get(obj, msg)
            if v is None:
                continue
            if isinstance(v, bool):
                tags[tag] = "true" if v else "false"
            elif isinstance(v, (str, int, float)):
                tags[tag] = str(v)
            else:
                raise DecodeError(f"field {path.text} (tag {tag}) must be a string, number or "
                                  f"boolean, got {_kind(v)}")
        return tags


def _numeric(s: str, default: Any) -> Any:
    """A number written as a string (as every header value is), else `default`."""
    t = s.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return default


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return "an object" if isinstance(v, dict) else "a list"
    return f"{type(v).__name__} {v!r:.40}"


def build_mapping_formats(cfg: FormatsConfig) -> dict[str, Format]:
    """One `Format` per configured mapping, by name, for `Decoders(extra=...)`."""
    return {name: MappingDecoder(name, m).format() for name, m in cfg.mappings.items()}


def check_formats(fc: FormatsConfig, key: str = "formats") -> None:
    """The `[formats]` section: mapping names free, their paths compilable, every topic's
    format known."""
    for name, m in fc.mappings.items():
        mkey = f"{key}.mappings.{name}"
        if name == "auto" or name in FORMATS:
            raise ConfigError(mkey, f"name {name!r} is taken by a built-in format")
        for f in fields(m):
            path = getattr(m, f.name)
            if f.name in NOT_PATHS or (not path and f.name != "model"):
                continue
            try:
                compile_path(path)
            except ValueError as e:
                raise ConfigError(f"{mkey}.{f.name}", str(e)) from None
        for tag, path in m.tags.items():
            try:
                compile_path(path)
            except ValueError as e:
                raise ConfigError(f"{mkey}.tags.{tag}", str(e)) from None
        if m.messages and m.prompt:
            raise ConfigError(f"{mkey}.prompt", "set either messages or prompt, not both")
        if m.system and not m.prompt:
            raise ConfigError(f"{mkey}.system", "goes with prompt (a plain-string prompt); "
                              "with messages the system prompt is one of the messages")
        if m.latency_unit not in ("ms", "s"):
            raise ConfigError(f"{mkey}.latency_unit", f"must be 'ms' or 's', got {m.latency_unit!r}")
        if m.status and not m.ok_values:
            raise ConfigError(f"{mkey}.ok_values", "must list at least one value when status is set")
    if not 0 <= fc.otlp_join_window_s < float("inf"):  # also refuses NaN
        raise ConfigError(f"{key}.otlp_join_window_s",
                          f"must be a number of seconds >= 0, got {fc.otlp_join_window_s}")
    if not fc.otlp_join_max_pending >= 1:
        raise ConfigError(f"{key}.otlp_join_max_pending",
                          f"must be at least 1, got {fc.otlp_join_max_pending}")
    names = sorted({"auto", *FORMATS, *fc.mappings})
    for topic, fmt in fc.by_topic.items():
        if fmt not in names:
            raise ConfigError(f"{key}.by_topic.{topic}",
                              f"unknown format {fmt!r}; known: {', '.join(names)}")
