"""consumers.formats: the openai_chat decoder, format detection and timestamp parsing."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.formats import MAX_TOKENS_SANE, decode_openai_chat, detect, parse_ts_ms
from consumers.records import DecodeError, RawMessage, Request

SETTINGS = settings(max_examples=200, deadline=None)
MSG = RawMessage(topic="llm-logs", partition=3, offset=41, value=b"{}", timestamp_ms=1_700_000_000_123)
# DuckDB TIMESTAMP is microseconds in an int64; Python datetimes end in the year 9999.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
YEAR_10000_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000) + 1000

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats() | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


def record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": "req-1",
        "ts": "2026-11-27T12:00:00Z",
        "request": {"model": "gpt-4o", "temperature": 0, "max_tokens": 256, "user": "u-9",
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is 2 + 2?"}]},
        "response": {"id": "chatcmpl-7", "model": "gpt-4o-2024-08-06",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "4"}}],
                     "usage": {"prompt_tokens": 20, "completion_tokens": 1,
                               "prompt_tokens_details": {"cached_tokens": 8}}},
        "latency_ms": 812, "cost_usd": 0.0123, "provider": "azure",
        "tags": {"feature": "math", "tenant": 7},
    }
    rec.update(changes)
    return rec


def decode(rec: dict[str, Any]) -> Request:
    out = decode_openai_chat(rec, MSG)
    assert len(out) == 1
    return out[0]


def reason(rec: dict[str, Any]) -> str:
    with pytest.raises(DecodeError) as e:
        decode_openai_chat(rec, MSG)
    return str(e.value)


# -- decode_openai_chat: good records --------------------------------------------------------

def test_decodes_a_full_record() -> None:
    r = decode(record())
    assert r.request_id == "req-1"
    assert r.ts_ms == 1_795_780_800_000  # 2026-11-27T12:00:00Z
    assert r.format == "openai_chat"
    assert r.provider == "azure"
    assert (r.model, r.served_model) == ("gpt-4o", "gpt-4o-2024-08-06")  # asked for; served by
    assert [m["content"] for m in r.messages] == ["Be brief.", "What is 2 + 2?"]
    # Only replay-relevant parameters are kept, plus the two flags.
    assert r.params == {"temperature": 0, "max_tokens": 256, "stream": False, "tools": False}
    assert r.response_text == "4"
    assert r.finish_reason == "stop"
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (20, 1, 8)
    assert r.cost_usd == pytest.approx(0.0123)
    assert r.cost_source == "log"
    assert r.latency_ms == 812.0
    assert r.status == "ok"
    assert r.error is None
    assert r.tags == {"feature": "math", "tenant": "7"}  # tag values become strings


def test_content_as_a_list_of_text_parts() -> None:
    rec = record()
    rec["request"]["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "Hello "}, {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "there"}]}]
    rec["response"]["choices"][0]["message"]["content"] = [{"type": "text", "text": "Hi"},
                                                           {"type": "text", "text": 5}]
    r = decode(rec)
    assert r.response_text == "Hi"
    assert r.messages[0]["content"][2]["text"] == "there"


def test_request_id_falls_back_to_response_id_then_to_the_message_position() -> None:
    rec = record()
    del rec["request_id"]
    assert decode(rec).request_id == "chatcmpl-7"
    del rec["response"]["id"]
    assert decode(rec).request_id == "llm-logs:3:41"
    assert decode(record(request_id=12345)).request_id == "12345"


def test_without_response_the_status_is_error_and_there_is_no_answer() -> None:
    rec = record(error={"code": 429})
    del rec["response"]
    r = decode(rec)
    assert r.status == "error"
    assert r.error == "{'code': 429}"
    assert (r.response_text, r.input_tokens, r.output_tokens) == (None, None, None)
    assert r.model == "gpt-4o"


def test_tools_and_stream_flags_and_missing_optional_fields() -> None:
    rec = record(cost_usd=None, latency_ms=None, tags=None)
    rec["request"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    rec["request"]["stream"] = 1
    r = decode(rec)
    assert r.params["tools"] is True and r.params["stream"] is True
    assert r.params["tool_definitions"] == rec["request"]["tools"]
    assert "tool_choice" not in r.params
    # Legacy `functions` / `function_call` are kept in today's `tools` / `tool_choice` form.
    del rec["request"]["tools"]
    rec["request"]["functions"] = [{"name": "f", "parameters": {"type": "object"}}]
    rec["request"]["function_call"] = {"name": "f"}
    r = decode(rec)
    assert r.params["tools"] is True
    assert r.params["tool_definitions"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert r.params["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    rec["request"]["function_call"] = "auto"
    assert decode(rec).params["tool_choice"] == "auto"
    assert (r.cost_usd, r.cost_source, r.latency_ms, r.tags) == (None, None, None, {})
    rec = record(metadata={"feature": "chat"})
    del rec["tags"]
    assert decode(rec).tags == {"feature": "chat"}


def test_timestamp_falls_back_to_the_message_timestamp() -> None:
    rec = record()
    del rec["ts"]
    assert decode(rec).ts_ms == MSG.timestamp_ms
    rec["timestamp"] = 1_764_244_800
    assert decode(rec).ts_ms == 1_764_244_800_000


def test_float_token_counts_that_are_whole_are_accepted() -> None:
    rec = record()
    rec["response"]["usage"]["prompt_tokens"] = 20.0
    assert decode(rec).input_tokens == 20


# -- decode_openai_chat: reasons -------------------------------------------------------------

def _without(path: tuple[str, ...]) -> dict[str, Any]:
    rec = record()
    node = rec
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return rec


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    rec = record()
    node = rec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return rec


@pytest.mark.parametrize(("rec", "expected"), [
    (_without(("request", "model")), "missing field request.model"),
    (_with(("request", "model"), ""), "field request.model: Expected `str` of length >= 1"),
    (_with(("request", "model"), 4), "field request.model: Expected `str`, got `int`"),
    (_without(("request",)), "missing field request"),
    (_with(("request",), "gpt-4o"), "field request: Expected `object`, got `str`"),
    (_with(("request", "messages"), []), "field request.messages must be a non-empty list"),
    (_with(("request", "messages"), "hi"), "field request.messages: Expected `array`, got `str`"),
    (_with(("request", "messages", 1), "hi"), "request.messages[1] must be an object"),
    (_with(("request", "messages", 1, "role"), None), "request.messages[1].role must be a string"),
    (_with(("request", "messages", 0, "content"), 3),
     "request.messages[0].content must be a string or a list of parts"),
    (_with(("response",), []), "field response: Expected `object | null`, got `array`"),
    (_without(("response", "choices")), "missing field response.choices"),
    (_with(("response", "choices", 0), "4"), "field response.choices[0]: Expected `object`, got `str`"),
    (_with(("response", "usage"), 7), "field response.usage: Expected `object | null`, got `int`"),
    (_with(("response", "usage", "prompt_tokens_details"), [1]),
     "field response.usage.prompt_tokens_details: Expected `object | null`, got `array`"),
    (_with(("response", "usage", "prompt_tokens"), -1),
     "field response.usage.prompt_tokens: Expected `int` >= 0"),
    (_with(("response", "usage", "completion_tokens"), 1.5),
     "field response.usage.completion_tokens is not a whole token count: 1.5"),
    (_with(("response", "usage", "completion_tokens"), MAX_TOKENS_SANE + 1),
     f"field response.usage.completion_tokens: Expected `int` <= {MAX_TOKENS_SANE}"),
    (_with(("response", "usage", "prompt_tokens"), True),
     "field response.usage.prompt_tokens: Expected `int | float | null`, got `bool`"),
    (_with(("response", "usage", "prompt_tokens"), "20"),
     "field response.usage.prompt_tokens: Expected `int | float | null`, got `str`"),
    (_with(("response", "usage", "prompt_tokens"), math.inf),
     f"field response.usage.prompt_tokens: Expected `float` <= {float(MAX_TOKENS_SANE)}"),
    (_with(("response", "usage", "prompt_tokens_details", "cached_tokens"), -5),
     "field response.usage.prompt_tokens_details.cached_tokens: Expected `int` >= 0"),
    (record(cost_usd=-0.5), "field cost_usd: Expected `float` >= 0.0"),
    (record(cost_usd=math.nan), "field cost_usd: Expected `float` >= 0.0"),
    (record(latency_ms="fast"), "field latency_ms: Expected `float | null`, got `str`"),
    (record(status="maybe"), "field status: Invalid enum value 'maybe'"),
    (record(tags=["a"]), "field tags: Expected `object | null`, got `array`"),
    (record(ts="yesterday"), "field ts is not an ISO-8601 time: 'yesterday'"),
])
def test_reasons_name_the_field(rec: dict[str, Any], expected: str) -> None:
    assert reason(rec) == expected


def test_long_values_are_cut_in_reasons() -> None:
    msg = reason(record(status="x" * 10_000))
    assert len(msg) < 160


@SETTINGS
@given(st.dictionaries(st.sampled_from(["request_id", "ts", "request", "response", "status",
                                        "tags", "cost_usd", "latency_ms", "error", "provider"]),
                       json_values))
def test_arbitrary_objects_decode_or_raise_decode_error(obj: dict[str, Any]) -> None:
    obj.setdefault("request", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    before = copy.deepcopy(obj) if not _has_nan(obj) else None
    try:
        out = decode_openai_chat(obj, MSG)
    except DecodeError as e:
        assert str(e)
        return
    finally:
        if before is not None:
            assert obj == before  # decoding does not modify the parsed record
    [r] = out
    assert isinstance(r.request_id, str) and r.request_id
    assert isinstance(r.model, str) and r.model
    assert r.status in ("ok", "error")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in r.tags.items())
    for n in (r.input_tokens, r.output_tokens, r.cached_input_tokens):
        assert n is None or 0 <= n <= MAX_TOKENS_SANE
    for x in (r.cost_usd, r.latency_ms):
        assert x is None or (math.isfinite(x) and x >= 0)
    assert 0 <= r.ts_ms < YEAR_10000_MS


def _has_nan(v: Any) -> bool:
    if isinstance(v, float):
        return math.isnan(v)
    if isinstance(v, list):
        return any(_has_nan(x) for x in v)
    if isinstance(v, dict):
        return any(_has_nan(x) for x in v.values())
    return False


@SETTINGS
@given(st.integers(min_value=-(2**70), max_value=2**70) | st.floats())
def test_arbitrary_token_counts_are_plausible_or_rejected(n: int | float) -> None:
    rec = _with(("response", "usage", "prompt_tokens"), n)
    try:
        r = decode(rec)
    except DecodeError as e:
        assert "response.usage.prompt_tokens" in str(e)
        assert not (isinstance(n, int) and 0 <= n <= MAX_TOKENS_SANE)
    else:
        assert r.input_tokens == n
        assert 0 <= n <= MAX_TOKENS_SANE


# -- detect ----------------------------------------------------------------------------------

def test_detect_openai_chat() -> None:
    assert detect(record()) == "openai_chat"
    assert detect({"request": {}}) == "openai_chat"


@pytest.mark.parametrize(("obj", "kind"), [
    ([1, 2, 3], "list"), ("text", "str"), (None, "NoneType"), (3.5, "float"),
    ({"prompt": "hi"}, "dict"),
])
def test_detect_rejects_other_shapes(obj: Any, kind: str) -> None:
    with pytest.raises(DecodeError, match="unrecognised log format") as e:
        detect(obj)
    assert f"a JSON {kind} matching" in str(e.value)


@SETTINGS
@given(json_values)
def test_detect_returns_a_known_name_or_raises_decode_error(obj: Any) -> None:
    try:
        name = detect(obj)
    except DecodeError as e:
        assert not (isinstance(obj, dict) and isinstance(obj.get("request"), dict))
        assert "unrecognised log format" in str(e)
    else:
        assert name == "openai_chat"


# -- parse_ts_ms -----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "ms"), [
    (1_764_244_800, 1_764_244_800_000),             # epoch seconds
    (1_764_244_800.25, 1_764_244_800_250),          # fractional seconds
    (1_764_244_800_123, 1_764_244_800_123),         # epoch milliseconds
    (0, 0),
    ("2026-11-27T12:00:00Z", 1_795_780_800_000),
    ("2026-11-27T13:00:00+01:00", 1_795_780_800_000),
    ("2026-11-27T12:00:00.5+00:00", 1_795_780_800_500),
])
def test_parse_ts_ms(value: Any, ms: int) -> None:
    assert parse_ts_ms(value, None) == ms


def test_parse_ts_ms_fallback() -> None:
    assert parse_ts_ms(None, 123) == 123
    with pytest.raises(DecodeError, match="missing field ts and the message has no timestamp"):
        parse_ts_ms(None, None)


@pytest.mark.parametrize(("value", "message"), [
    (True, "field ts must be a time, got bool"),
    (-1, "field ts is not a valid time: -1"),
    (math.nan, "field ts is not a valid time: nan"),
    (math.inf, "field ts is not a valid time: inf"),
    ("27/11/2026", "field ts is not an ISO-8601 time: '27/11/2026'"),
    ("0000-01-01", "field ts is not an ISO-8601 time: '0000-01-01'"),
    ([2026], "field ts must be a time, got list"),
    ({"s": 1}, "field ts must be a time, got dict"),
    # Absurd times: past the year 9999 even as milliseconds, they would overflow the tables.
    (1e20, "field ts is not a valid time: 1e+20"),
    (2**64 - 1, "field ts is not a valid time: 18446744073709551615"),
    (YEAR_10000_MS, f"field ts is not a valid time: {YEAR_10000_MS}"),
])
def test_parse_ts_ms_rejects(value: Any, message: str) -> None:
    with pytest.raises(DecodeError) as e:
        parse_ts_ms(value, 5)
    assert str(e.value) == message


@SETTINGS
@given(st.integers(min_value=0, max_value=10**11 - 1))
def test_whole_seconds_become_milliseconds(s: int) -> None:
    assert parse_ts_ms(s, None) == s * 1000


@SETTINGS
@given(st.integers(min_value=10**11, max_value=YEAR_10000_MS - 1))
def test_large_numbers_are_already_milliseconds(ms: int) -> None:
    assert parse_ts_ms(ms, None) == ms


@SETTINGS
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)))
def test_iso_strings_round_trip(dt: datetime) -> None:
    dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    ms = (dt - EPOCH) // timedelta(milliseconds=1)  # exact, no float rounding
    assert parse_ts_ms(dt.isoformat(), None) == ms
    assert parse_ts_ms(dt.isoformat().replace("+00:00", "Z"), None) == ms


@SETTINGS
@given(st.integers(min_value=10**9, max_value=10**14 - 1))
def test_fractional_seconds_keep_their_milliseconds(ms: int) -> None:
    # ms / 1000 is not exact in binary; the parsed time must still be the same millisecond.
    assert parse_ts_ms(ms / 1000, None) == ms


@SETTINGS
@given(json_values)
def test_any_value_is_a_storable_time_or_a_decode_error(v: Any) -> None:
    try:
        ms = parse_ts_ms(v, 7)
    except DecodeError as e:
        assert str(e).startswith("field ts ")
    else:
        assert isinstance(ms, int)
        # Negative only from ISO strings before 1970; never beyond what the tables hold.
        assert -62_135_596_800_000 - 86_400_000 <= ms < YEAR_10000_MS + 86_400_000
