"""consumers.formats.litellm: LiteLLM's StandardLoggingPayload, as sent by its generic_api
callback (object, array, NDJSON) or wrapped by a custom logger; and bad input of every kind."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.config import FormatsConfig, Price, SamplingConfig
from consumers.formats import Decoders, litellm
from consumers.ingest import IngestBatch, Ingestor
from consumers.records import Decoded, DecodeError, RawMessage, Request
from shadowroute.config import Config, load_config
from shadowroute.demo.encoders.litellm import encode_litellm
from shadowroute.demo.traffic import TrafficGenerator

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MSG = RawMessage("llm-logs", 2, 17, None, timestamp_ms=1_700_000_000_000)


def payload(**changes: Any) -> dict[str, Any]:
    """A StandardLoggingPayload as LiteLLM's proxy logs a chat completion (v1.7x field set)."""
    p: dict[str, Any] = {
        "id": "chatcmpl-2b5d5f0e-6a3c-4d8e-9f51-0c1d2e3f4a5b",
        "trace_id": "8f0c1d2e-3f4a-4b5c-9d6e-7f8091a2b3c4",
        "call_type": "acompletion",
        "stream": False,
        "response_cost": 0.00043,
        "cost_breakdown": {"input_cost": 0.00013, "output_cost": 0.0003, "total_cost": 0.00043,
                           "tool_usage_cost": 0.0},
        "response_cost_failure_debug_info": None,
        "status": "success",
        "status_fields": {"llm_api_status": "success", "guardrail_status": "not_run"},
        "custom_llm_provider": "azure",
        "total_tokens": 82,
        "prompt_tokens": 52,
        "completion_tokens": 30,
        "startTime": 1764244800.25,
        "endTime": 1764244801.062,
        "completionStartTime": 1764244800.61,
        "response_time": 0.812,
        "model_map_information": {"model_map_key": "azure/gpt-4o-2024-08-06",
                                  "model_map_value": {"key": "azure/gpt-4o-2024-08-06",
                                                      "max_tokens": 16384,
                                                      "input_cost_per_token": 2.5e-06}},
        "model": "gpt-4o-2024-08-06",
        "model_id": "2ff3c0b56e3c2a0e1c5b6d1c9ac3b8a50f0d6b5f0a3d1e2c3b4a5968778695a4",
        "model_group": "gpt-4o",
        "api_base": "https://my-endpoint-eastus.openai.azure.com/",
        "metadata": {
            "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
            "user_api_key_alias": "checkout-svc",
            "user_api_key_org_id": None,
            "user_api_key_team_id": "5d0b2c4e-team",
            "user_api_key_user_id": "alice@example.com",
            "user_api_key_team_alias": "payments",
            "spend_logs_metadata": {"app": "checkout", "version": 3, "nested": {"x": 1}},
            "requester_ip_address": "10.1.2.3",
            "requester_metadata": {"trace": "abc"},
            "applied_guardrails": [],
            "usage_object": {"prompt_tokens": 52, "completion_tokens": 30},
        },
        "cache_hit": None,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": ["feature:summarize", "tier=gold", "beta", "User-Agent: curl/8.5.0"],
        "end_user": "customer-8812",
        "requester_ip_address": "10.1.2.3",
        "messages": [{"role": "system", "content": "Summarize in one sentence."},
                     {"role": "user", "content": [{"type": "text", "text": "The meeting moved "
                                                   "to Thursday at 3pm in room B."}]}],
        "response": {
            "id": "chatcmpl-AbC123", "created": 1764244801, "model": "gpt-4o-2024-08-06",
            "object": "chat.completion", "system_fingerprint": "fp_b705f0c291",
            "choices": [{"finish_reason": "stop", "index": 0,
                         "message": {"content": "The meeting is now Thursday at 3pm in room B.",
                                     "role": "assistant", "tool_calls": None,
                                     "function_call": None}}],
            "usage": {"completion_tokens": 30, "prompt_tokens": 52, "total_tokens": 82,
                      "completion_tokens_details": {"reasoning_tokens": 0},
                      "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 16}},
        },
        "error_str": None,
        "error_information": {"error_code": "", "error_class": "", "llm_provider": "",
                              "traceback": "", "error_message": ""},
        "model_parameters": {"temperature": 0.2, "max_tokens": 128, "stream": False,
                             "user": "customer-8812", "extra_body": {}},
        "hidden_params": {"model_id": "2ff3c0b5", "cache_key": None,
                          "api_base": "https://my-endpoint-eastus.openai.azure.com/",
                          "response_cost": 0.00043, "additional_headers": {},
                          "litellm_overhead_time_ms": 3.1,
                          "litellm_model_name": "azure/gpt-4o-2024-08-06"},
        "guardrail_information": None,
        "standard_built_in_tools_params": {"web_search_options": None, "file_search": None},
    }
    p.update(changes)
    return p


def one(value: Any, msg: RawMessage = MSG) -> Request:
    out = litellm.decode(value if isinstance(value, bytes) else orjson.dumps(value), msg)
    assert out.skipped == 0 and len(out.requests) == 1
    return out.requests[0]


def reason(value: Any) -> str:
    with pytest.raises(DecodeError) as e:
        litellm.decode(value if isinstance(value, bytes) else orjson.dumps(value), MSG)
    assert str(e.value).strip()
    return str(e.value)


def msgs(*values: bytes | None, topic: str = "llm-logs") -> list[RawMessage]:
    return [RawMessage(topic, 0, i, v, timestamp_ms=1_700_000_000_000) for i, v in enumerate(values)]


# -- a realistic payload ---------------------------------------------------------------------

def test_decodes_a_proxy_payload() -> None:
    r = one(payload())
    assert r.request_id == "chatcmpl-2b5d5f0e-6a3c-4d8e-9f51-0c1d2e3f4a5b"
    assert r.ts_ms == 1_764_244_800_250
    assert r.format == "litellm"
    assert r.provider == "azure"
    assert r.model == "gpt-4o-2024-08-06"
    assert [m["role"] for m in r.messages] == ["system", "user"]
    assert r.params == {"temperature": 0.2, "max_tokens": 128, "stream": False, "tools": False}
    assert r.response_text == "The meeting is now Thursday at 3pm in room B."
    assert r.finish_reason == "stop"
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (52, 30, 16)
    assert r.cost_usd == pytest.approx(0.00043) and r.cost_source == "log"
    assert r.latency_ms == pytest.approx(812.0)
    assert r.status == "ok" and r.error is None
    assert r.not_replayable is None
    assert r.tags == {
        "app": "checkout", "version": "3",  # spend_logs_metadata scalars
        "team": "payments", "team_id": "5d0b2c4e-team", "api_key_alias": "checkout-svc",
        "api_key_user_id": "alice@example.com",
        "feature": "summarize", "tier": "gold", "beta": "true", "User-Agent": "curl/8.5.0",
        "model_group": "gpt-4o",
        "end_user": hashlib.blake2b(b"customer-8812", digest_size=8).hexdigest(),
    }


def test_the_keys_user_and_team_ids_are_tags_next_to_the_team_alias() -> None:
    # So savings can be cut per user key and per team even where teams have no alias.
    r = one(payload())
    assert (r.tags["api_key_user_id"], r.tags["team_id"], r.tags["team"]) == (
        "alice@example.com", "5d0b2c4e-team", "payments")
    md = payload()["metadata"]
    r = one(payload(metadata={**md, "user_api_key_team_alias": None, "user_api_key_user_id": None}))
    assert (r.tags["team_id"], r.tags["team"]) == ("5d0b2c4e-team", "5d0b2c4e-team")
    assert "api_key_user_id" not in r.tags


def test_end_user_ids_are_never_stored_raw() -> None:
    b = Ingestor(load_config(None, env={})).process(msgs(orjson.dumps(payload())))
    assert b.requests.height == 1
    row = b.requests.row(0, named=True)
    assert "customer-8812" not in orjson.dumps(row, default=str).decode()
    assert len(orjson.loads(row["tags"])["end_user"]) == 16  # 8 bytes, hex


def test_a_failed_call() -> None:
    r = one(payload(
        status="failure", response=None, response_cost=0.0, prompt_tokens=0, completion_tokens=0,
        error_str="litellm.RateLimitError: AzureException - Rate limit exceeded, retry in 2s",
        error_information={"error_code": "429", "error_class": "RateLimitError",
                           "llm_provider": "azure", "error_message": "Rate limit exceeded"}))
    assert r.status == "error"
    assert r.error == "litellm.RateLimitError: AzureException - Rate limit exceeded, retry in 2s"
    assert r.response_text is None
    assert (r.input_tokens, r.output_tokens, r.cost_usd) == (0, 0, 0.0)


def test_error_information_alone_makes_the_error_text() -> None:
    r = one(payload(status="failure", response={}, error_str=None,
                    error_information={"error_code": 429, "error_class": "RateLimitError",
                                       "error_message": "slow down"}))
    assert (r.status, r.error) == ("error", "RateLimitError: 429: slow down")
    # No status at all: an error means failure.
    p = payload(error_str="boom")
    del p["status"]
    assert one(p).status == "error"


def test_the_encoder_round_trips() -> None:
    gen = TrafficGenerator(seed=5)
    for i, call in enumerate(gen.calls(300)):
        failed = i % 7 == 0
        r = one(encode_litellm(call, failed))
        assert r.request_id == call.request_id
        assert r.ts_ms == round(call.ts * 1000)
        assert r.model == call.model and r.provider == "openai"
        assert r.messages == call.messages
        assert r.latency_ms == pytest.approx(call.latency_ms, abs=0.01)
        assert {k: r.tags[k] for k in call.tags} == call.tags
        assert r.tags["model_group"] == call.model
        if failed:
            assert r.status == "error" and r.error and "RateLimitError" in r.error
            assert r.response_text is None
        else:
            assert r.status == "ok" and r.error is None
            assert r.response_text == call.task.answer
            assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (
                call.input_tokens, call.output_tokens, call.cached_input_tokens)
            assert r.cost_usd == pytest.approx(call.cost_usd) and r.cost_source == "log"


# -- shapes: object, array, NDJSON, wrapper; auto-detected and fixed per topic ----------------

def shapes() -> dict[str, bytes]:
    a, b, c = (payload(id=f"id-{k}") for k in "abc")
    return {
        "single": orjson.dumps(a),
        "array": orjson.dumps([a, b, c]),
        "ndjson": b"\n".join(orjson.dumps(x) for x in (a, b, c)) + b"\n",
        "ndjson_crlf": b"\r\n".join(orjson.dumps(x) for x in (a, b, c)),
        "pretty": json.dumps(a, indent=2).encode(),
        "wrapper": orjson.dumps({"standard_logging_object": a, "model": "azure/gpt-4o",
                                 "litellm_params": {"metadata": {}}, "optional_params": {}}),
        "wrapper_array": orjson.dumps([{"standard_logging_object": x} for x in (a, b)]),
    }


@pytest.mark.parametrize("by_topic", [{}, {"llm-logs": "litellm"}], ids=["auto", "fixed"])
@pytest.mark.parametrize("shape", list(shapes()))
def test_every_shape_auto_detected_or_fixed(shape: str, by_topic: dict[str, str]) -> None:
    value = shapes()[shape]
    n = {"array": 3, "ndjson": 3, "ndjson_crlf": 3, "wrapper_array": 2}.get(shape, 1)
    out = Decoders(by_topic).decode(value, MSG)
    assert [r.request_id for r in out.requests] == [f"id-{k}" for k in "abc"[:n]]
    assert all(r.format == "litellm" and r.response_text for r in out.requests)


def test_wrapper_key_quoted_in_a_message_is_still_a_bare_payload() -> None:
    p = payload(messages=[{"role": "user", "content": 'what is "standard_logging_object"?'}])
    assert one(p).request_id == p["id"]


def test_ids_of_array_elements_without_id_stay_distinct() -> None:
    a = payload()
    del a["id"]
    out = Decoders({"llm-logs": "litellm"}).decode(orjson.dumps([a, a]), MSG)
    assert [r.request_id for r in out.requests] == ["llm-logs:2:17:0", "llm-logs:2:17:1"]
    assert one(a).request_id == "llm-logs:2:17"


# -- the other kinds of calls and payloads ---------------------------------------------------

@pytest.mark.parametrize("call_type", ["embedding", "aembedding", "aimage_generation",
                                       "atranscription", "litellm.arerank", "amoderation"])
def test_calls_that_are_not_generations_are_skipped(call_type: str) -> None:
    out = litellm.decode(orjson.dumps(payload(call_type=call_type)), MSG)
    assert out == Decoded([], 1)
    b = Ingestor(load_config(None, env={})).process(msgs(orjson.dumps(payload(call_type=call_type))))
    assert (b.requests.height, b.rejected.height) == (0, 0)
    assert b.skipped.rows() == [("llm-logs", 0, 0, "not an LLM call", 1)]


def test_text_completion_prompt_string_and_choice_text() -> None:
    r = one(payload(call_type="atext_completion", messages="Say hi",
                    response={"choices": [{"text": "hi", "finish_reason": "length"}]}))
    assert r.messages == [{"role": "user", "content": "Say hi"}]
    assert (r.response_text, r.finish_reason) == ("hi", "length")


def test_provider_prefix_and_fallbacks() -> None:
    p = payload(model="openai/gpt-4o-mini", custom_llm_provider=None, hidden_params={})
    r = one(p)
    assert (r.provider, r.model) == ("openai", "gpt-4o-mini")
    r = one(payload(custom_llm_provider=None, hidden_params={"custom_llm_provider": "bedrock"},
                    model="bedrock/anthropic.claude-3-5-sonnet"))
    assert (r.provider, r.model) == ("bedrock", "anthropic.claude-3-5-sonnet")
    r = one(payload(custom_llm_provider=None, hidden_params=None, error_information=None))
    assert r.provider == "unknown"


def test_redacted_and_missing_messages_are_counted_but_not_replayable() -> None:
    r = one(payload(messages=[{"role": "user", "content": "redacted-by-litellm"}],
                    response={"choices": [{"message": {"content": "redacted-by-litellm"}}]}))
    assert r.not_replayable == "messages redacted by LiteLLM (turn_off_message_logging)"
    assert r.response_text is None
    assert one(payload(messages=None)).not_replayable == "LiteLLM logged no messages"
    assert one(payload(messages=[])).not_replayable == "LiteLLM logged an empty message list"
    assert one(payload(messages="redacted-by-litellm")).messages == []
    b = Ingestor(load_config(None, env={})).process(msgs(orjson.dumps(payload(messages=None))))
    assert b.requests["ineligible_reason"].to_list() == ["LiteLLM logged no messages"]


def test_cache_hits_tools_streaming_and_anthropic_cached_tokens() -> None:
    r = one(payload(cache_hit=True, stream=True,
                    model_parameters={"tools": [{"type": "function"}], "temperature": 0,
                                      "tool_choice": "required"},
                    response={"choices": [{"message": {"content": "x"}}],
                              "usage": {"cache_read_input_tokens": 40}},
                    prompt_tokens=None, completion_tokens=None))
    assert r.tags["cache_hit"] == "true"
    # The definitions are kept, so that a replay with shadow.replay_tools offers them too.
    assert r.params == {"temperature": 0.0, "stream": True, "tools": True,
                        "tool_definitions": [{"type": "function"}], "tool_choice": "required"}
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (None, None, 40)


def test_times_iso_without_zone_are_utc_and_response_time_is_a_fallback() -> None:
    r = one(payload(startTime="2025-11-27T12:00:00", endTime="2025-11-27T12:00:01.500"))
    assert r.ts_ms == 1_764_244_800_000
    assert r.latency_ms == 1500.0
    r = one(payload(startTime=None, endTime=None, response_time=0.25))
    assert r.ts_ms == MSG.timestamp_ms  # the Kafka message time
    assert r.latency_ms == 250.0


def test_no_cost_in_the_log_is_priced_from_the_table() -> None:
    cfg = Config(prices={"gpt-4o-2024-08-06": Price(input=2.5, output=10.0)},
                 sampling=SamplingConfig(default_rate=1.0))
    b = Ingestor(cfg).process(msgs(orjson.dumps(payload(response_cost=None))))
    row = b.requests.row(0, named=True)
    assert row["cost_source"] == "price_table"
    assert row["cost_usd"] == pytest.approx(((52 - 16) * 2.5 + 16 * 2.5 + 30 * 10.0) / 1e6)
    assert b.samples.height == 1


def unpriced(**changes: Any) -> bytes:
    """What LiteLLM logs when it cannot price a model: a cost of 0 and the reason why."""
    return orjson.dumps(payload(response_cost=0.0, response_cost_failure_debug_info={
        "error_message": "This model isn't mapped yet. model=gpt-4o-2024-08-06",
        "traceback_str": "...", "model": "gpt-4o-2024-08-06", "custom_llm_provider": "azure"},
        **changes))


def test_an_unpriced_call_takes_the_price_table_not_zero() -> None:
    cfg = Config(prices={"gpt-4o": Price(input=2.5, output=10.0)},
                 sampling=SamplingConfig(default_rate=1.0))
    row = Ingestor(cfg).process(msgs(unpriced())).requests.row(0, named=True)
    assert row["cost_source"] == "price_table"
    assert row["cost_usd"] == pytest.approx((52 * 2.5 + 30 * 10.0) / 1e6)
    assert row["eligible"]


def test_an_unpriced_call_without_a_price_is_unknown_cost_not_free() -> None:
    cfg = Config(sampling=SamplingConfig(default_rate=1.0))
    b = Ingestor(cfg).process(msgs(unpriced()))
    row = b.requests.row(0, named=True)
    assert row["cost_usd"] is None and row["cost_source"] is None
    assert not row["eligible"] and not row["sampled"] and b.samples.height == 0
    assert row["ineligible_reason"].startswith("unknown cost")
    # A real zero (a cache hit, a free model) with no failure info stays a logged zero.
    row = Ingestor(cfg).process(msgs(orjson.dumps(payload(response_cost=0.0)))).requests.row(
        0, named=True)
    assert (row["cost_usd"], row["cost_source"], row["eligible"]) == (0.0, "log", True)


# -- reasons ---------------------------------------------------------------------------------

def without(key: str) -> dict[str, Any]:
    p = payload()
    del p[key]
    return p


@pytest.mark.parametrize(("value", "expected"), [
    (without("model"), "missing field model"),
    (payload(model=""), "field model must be a non-empty string"),
    ({"standard_logging_object": without("model")}, "missing field standard_logging_object.model"),
    ({"standard_logging_object": None}, "field standard_logging_object: Expected `object`, got `null`"),
    (payload(prompt_tokens=-3), "field prompt_tokens: Expected `int` >= 0"),
    (payload(prompt_tokens=10**12), "field prompt_tokens: Expected `int` <= 100000000"),
    (payload(prompt_tokens=2.5), "field prompt_tokens is not a whole token count: 2.5"),
    (payload(prompt_tokens="12"), "field prompt_tokens: Expected `int | float | null`, got `str`"),
    (payload(response_cost=-1), "field response_cost: Expected `float` >= 0.0"),
    (payload(response_cost=1e300), "field response_cost: Expected `float` <= 1000000000000.0"),
    (payload(status="ok"), "field status must be 'success' or 'failure', got 'ok'"),
    (payload(messages=[{"content": "hi"}]), "messages[0].role must be a string"),
    (payload(messages=42), "field messages: Expected `str | object | array | null`, got `int`"),
    (payload(request_tags="feature:x"), "field request_tags: Expected `array | null`, got `str`"),
    (payload(endTime=1764244799.0), "field endTime is before startTime (1764244799.0 < 1764244800.25)"),
    (payload(startTime="yesterday"), "field startTime is not an ISO-8601 time: 'yesterday'"),
    (payload(startTime=1e20), "field startTime is not a valid time: 1e+20"),
    (payload(response={"choices": [{"message": {"content": 7}}]}),
     "field response.choices[0].message.content: Expected `str | array | null`, got `int`"),
    (payload(response={"usage": {"prompt_tokens_details": {"cached_tokens": -1}}}),
     "field response.usage.prompt_tokens_details.cached_tokens: Expected `int` >= 0"),
])
def test_reasons(value: Any, expected: str) -> None:
    assert reason(value) == expected


def test_reasons_for_broken_bytes() -> None:
    good = orjson.dumps(payload())
    assert reason(good[:-10]).startswith("invalid JSON: ")
    assert reason(b'{"model_group": "\xff\xfe"}') == "invalid UTF-8 at byte 17"
    assert reason(json.dumps(payload(response_cost=float("nan"))).encode()).startswith("invalid JSON")
    assert reason(json.dumps(payload(response_cost=float("inf"))).encode()).startswith("invalid JSON")
    assert reason(b"[]") == "empty JSON array: no records"
    assert reason(b"[" + good + b", 3]") == "element 1: a LiteLLM record must be a JSON object, got int"
    assert reason(good + b"\n" + good[:40] + b"\n").startswith("line 2: invalid JSON")
    assert reason(orjson.dumps([payload(), payload(model=None)])) == "element 1: missing field model"
    big = payload(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "n": 2**70}]}])
    assert reason(json.dumps(big).encode()) == ("field messages cannot be stored as JSON: "
                                                "Integer exceeds 64-bit range")
    deep = b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert reason(deep) == "JSON nested too deeply"


# -- properties: whatever arrives, every message ends in exactly one place --------------------

def check_every_message_lands(msgs_: Sequence[RawMessage], b: IngestBatch) -> None:
    """Each message is rejected (with a reason), or else stored and/or counted as skipped
    (not an LLM call, or a request id already taken) - never both, never neither."""
    place = lambda m: (m.topic, m.partition, m.offset)  # noqa: E731
    stored = {(r["topic"], r["partition"], r["offset"]) for r in b.requests.iter_rows(named=True)}
    rejected = [(r["topic"], r["partition"], r["offset"]) for r in b.rejected.iter_rows(named=True)]
    skipped = {(r["topic"], r["partition"], r["offset"]) for r in b.skipped.iter_rows(named=True)}
    assert len(rejected) == len(set(rejected))
    for m in msgs_:
        p = place(m)
        if p in set(rejected):
            assert p not in stored and p not in skipped, p
        else:
            assert p in stored or p in skipped, (p, m.value)
    assert all(r.strip() for r in b.rejected["reason"].to_list())
    assert b.requests["request_id"].n_unique() == b.requests.height


json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
FIELDS = list(payload()) + ["standard_logging_object"]
NESTED = [("response", "usage"), ("response", "choices"), ("metadata", "spend_logs_metadata"),
          ("model_parameters", "max_tokens"), ("error_information", "error_code")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real payload with fields set to random values, removed or nested; some written with
    NaN/Infinity literals, some cut short, some wrapped or batched."""
    p = payload(id=draw(st.sampled_from(["r1", "r2", "r3", None, "", 7])))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "del", "nested", "huge"]))
        if action == "set":
            p[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif action == "del":
            p.pop(draw(st.sampled_from(FIELDS)), None)
        elif action == "nested":
            outer, inner = draw(st.sampled_from(NESTED))
            if isinstance(p.get(outer), dict):
                p[outer] = {**p[outer], inner: draw(json_values)}
        else:
            p["messages"] = [{"role": "user", "content": "x" * draw(st.integers(0, 300_000))}]
    shape = draw(st.sampled_from(["single", "array", "ndjson", "wrapper", "cut"]))
    if shape == "array":
        return dumps([p, copy.deepcopy(p)])
    if shape == "ndjson":
        return dumps(p) + b"\n" + dumps(payload(id="other")) + b"\n"
    if shape == "wrapper":
        return dumps({"standard_logging_object": p})
    raw = dumps(p)
    if shape == "cut":
        return raw[: draw(st.integers(0, len(raw)))]
    return raw


def dumps(obj: Any) -> bytes:
    """Python's json: integers of any size, NaN / Infinity literals for non-finite floats, and
    lone surrogates from random text written as invalid UTF-8."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def ingest(values: Sequence[bytes | None], cfg: Config | None = None) -> IngestBatch:
    ms = msgs(*values)
    b = Ingestor(cfg or load_config(None, env={})).process(ms)  # must not raise
    check_every_message_lands(ms, b)
    return b


@SETTINGS
@given(st.lists(mutated(), min_size=1, max_size=6))
def test_mutated_payloads_land_exactly_once(values: list[bytes]) -> None:
    ingest(values)


@SETTINGS
@given(st.lists(mutated(), min_size=1, max_size=4))
def test_mutated_payloads_land_exactly_once_on_a_litellm_topic(values: list[bytes]) -> None:
    ingest(values, Config(formats=FormatsConfig(by_topic={"llm-logs": "litellm"})))


@SETTINGS
@given(st.lists(st.binary(max_size=200) | st.sampled_from(
    [b"[]", b"[ ]", b"{}", b"null", b"[null]", b'{"model_group": null}', b'{"response_cost": 1}',
     b'\n{"model": "m", "model_group": "g"}\n\n', b"{}\n{}"]), min_size=1, max_size=8),
       st.booleans())
def test_random_bytes_land_exactly_once(values: list[bytes], fixed: bool) -> None:
    ingest(values, Config(formats=FormatsConfig(by_topic={"llm-logs": "litellm"})) if fixed else None)


@SETTINGS
@given(st.integers(1, 3000), st.sampled_from(["[", "{\"a\":"]), st.booleans())
def test_deep_nesting_lands_exactly_once(depth: int, opener: str, wrapped: bool) -> None:
    closer = "]" if opener == "[" else "}"
    inner = (opener * depth + "1" + closer * depth).encode()
    value = b'{"model": "m", "model_group": "g", "messages": ' + inner + b"}"
    if wrapped:
        value = b'{"standard_logging_object": ' + value + b"}"
    ingest([value])


@SETTINGS
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=8))
def test_duplicate_ids_are_stored_once_and_counted(ids: list[str]) -> None:
    b = ingest([orjson.dumps(payload(id=i)) for i in ids])
    assert sorted(b.requests["request_id"].to_list()) == sorted(set(ids))
    dups = b.skipped.filter(b.skipped["reason"] == "duplicate request id")["items"].sum()
    assert (dups or 0) == len(ids) - len(set(ids))
