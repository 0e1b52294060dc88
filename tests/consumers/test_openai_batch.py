"""consumers.formats.openai_batch: Batch API output lines alone (Kafka), input lines alone
(skipped), and the two files joined by custom_id for replay."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.config import FormatsConfig
from consumers.formats import Decoders, openai_batch
from consumers.formats.openai_batch import join_batch_files
from consumers.records import Decoded, DecodeError, RawMessage, Request
from shadowroute.config import Config
from tests.consumers.test_litellm import SETTINGS, dumps, ingest, json_values

MSG = RawMessage("batch-results", 1, 5, None, timestamp_ms=1_700_000_000_000)


def input_line(cid: str = "task-1", **body: Any) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 100,
                     "messages": [{"role": "system", "content": "You are a classifier."},
                                  {"role": "user", "content": f"Classify {cid}: 'great product'"}],
                     **body}}


def output_line(cid: str = "task-1", n: int = 1, **changes: Any) -> dict[str, Any]:
    """An output line as the Batch API writes it."""
    line: dict[str, Any] = {
        "id": f"batch_req_6798b4f0b1b88190a0c8d0c7d7a5b2c{n}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": f"2f6e1c0d8a7b4e3f9c1d0e2f3a4b5c6{n}",
            "body": {
                "id": f"chatcmpl-AxB{n}", "object": "chat.completion", "created": 1738061000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive",
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 22, "completion_tokens": 1, "total_tokens": 23,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
                "service_tier": "default", "system_fingerprint": "fp_72ed7ab54c",
            },
        },
        "error": None,
    }
    line.update(changes)
    return line


def one(value: Any, msg: RawMessage = MSG) -> Request:
    out = openai_batch.decode(value if isinstance(value, bytes) else orjson.dumps(value), msg)
    assert out.skipped == 0 and len(out.requests) == 1
    return out.requests[0]


def reason(value: Any) -> str:
    with pytest.raises(DecodeError) as e:
        openai_batch.decode(value if isinstance(value, bytes) else orjson.dumps(value), MSG)
    return str(e.value)


# -- output lines ----------------------------------------------------------------------------

def test_an_output_line_alone_is_counted_traffic_but_not_replayable() -> None:
    r = one(output_line())
    assert r.request_id == "batch_req_6798b4f0b1b88190a0c8d0c7d7a5b2c1"
    assert r.format == "openai_batch" and r.provider == "openai"
    assert r.model == "gpt-4o-mini-2024-07-18"
    assert r.ts_ms == 1_738_061_000_000
    assert r.messages == []
    assert r.not_replayable == "OpenAI Batch output without its input line (custom_id task-1)"
    assert (r.response_text, r.finish_reason) == ("positive", "stop")
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (22, 1, 0)
    assert (r.cost_usd, r.cost_source, r.latency_ms) == (None, None, None)
    assert (r.status, r.error) == ("ok", None)
    assert r.tags == {"custom_id": "task-1"}


def test_failed_output_lines() -> None:
    expired = output_line(response=None, error={
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired."})
    # Never ran, and no model to count it under: skipped. With its input line: a failed call.
    assert openai_batch.decode(orjson.dumps(expired), MSG) == Decoded([], 1)
    r = one({**input_line(), **expired})
    assert (r.status, r.model) == ("error", "gpt-4o-mini")
    assert r.error == ("batch request failed batch_expired: This request could not be executed "
                       "before the completion window expired.")
    r = one(output_line(response={"status_code": 400, "request_id": "req_1", "body": {
        "model": "gpt-4o-mini",
        "error": {"message": "Invalid value for 'max_tokens'", "type": "invalid_request_error",
                  "code": "invalid_value"}}}))
    assert (r.status, r.error) == ("error", "HTTP 400 invalid_value: Invalid value for 'max_tokens'")
    assert r.input_tokens is None


def test_the_message_timestamp_when_the_body_has_no_time() -> None:
    line = output_line()
    del line["response"]["body"]["created"]
    assert one(line).ts_ms == MSG.timestamp_ms


def test_embeddings_are_skipped_and_input_lines_are_skipped() -> None:
    emb = output_line(response={"status_code": 200, "body": {
        "object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 5, "total_tokens": 5}}})
    assert openai_batch.decode(orjson.dumps(emb), MSG) == Decoded([], 1)
    assert openai_batch.decode(orjson.dumps(input_line()), MSG) == Decoded([], 1)


def test_responses_api_and_text_completion_outputs() -> None:
    resp = output_line(response={"status_code": 200, "body": {
        "object": "response", "created_at": 1738061001, "model": "gpt-4.1-mini", "status": "completed",
        "output": [{"type": "reasoning", "summary": []},
                   {"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Paris", "annotations": []}]}],
        "usage": {"input_tokens": 12, "output_tokens": 2,
                  "input_tokens_details": {"cached_tokens": 4}}}})
    joined = {**{"custom_id": "task-1", "method": "POST", "url": "/v1/responses",
                 "body": {"model": "gpt-4.1-mini", "instructions": "Answer briefly.",
                          "input": "Capital of France?", "max_output_tokens": 20}}, **resp}
    r = one(joined)
    assert r.messages == [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": "Capital of France?"}]
    assert (r.response_text, r.finish_reason) == ("Paris", "completed")
    assert (r.input_tokens, r.output_tokens, r.cached_input_tokens) == (12, 2, 4)
    assert r.params["max_tokens"] == 20
    assert r.ts_ms == 1_738_061_001_000 and r.not_replayable is None
    text = output_line(response={"status_code": 200, "body": {
        "object": "text_completion", "model": "gpt-3.5-turbo-instruct", "created": 1738061000,
        "choices": [{"text": " 4", "index": 0, "finish_reason": "stop"}]}})
    r = one({**input_line(), "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "2+2="}, **text})
    assert r.messages == [{"role": "user", "content": "2+2="}] and r.response_text == " 4"


# -- joined lines and join_batch_files -------------------------------------------------------

def test_a_joined_line_is_a_whole_replayable_request() -> None:
    r = one({**input_line(), **output_line()})
    assert r.not_replayable is None
    assert [m["role"] for m in r.messages] == ["system", "user"]
    assert r.params == {"temperature": 0.0, "max_tokens": 100, "stream": False, "tools": False}
    assert r.response_text == "positive"


def test_join_batch_files() -> None:
    inputs = [orjson.dumps(input_line(f"t-{i}")) + b"\n" for i in range(5)]
    inputs.insert(2, b"\n")  # blank lines are ignored
    inputs.append(b"not json\n")
    # Output order differs from input order; t-3 never ran; one output has no input.
    outputs = [orjson.dumps(output_line(f"t-{i}", n=i)) + b"\n" for i in (4, 0, 2, 1, 9)]
    joined = list(join_batch_files(inputs, outputs))
    assert len(joined) == 7
    decoded = [Decoders().decode(v, MSG) if v.startswith(b"{") else None for v in joined]
    reqs = [d.requests[0] for d in decoded[:5] if d is not None]
    assert [r.tags["custom_id"] for r in reqs] == ["t-4", "t-0", "t-2", "t-1", "t-9"]
    assert [r.not_replayable is None for r in reqs] == [True, True, True, True, False]
    assert reqs[0].messages[1]["content"] == "Classify t-4: 'great product'"
    assert decoded[5] == Decoded([], 1)  # t-3: submitted, never answered
    assert joined[6] == b"not json"  # passed on, to be rejected with a reason
    with pytest.raises(DecodeError):
        Decoders().decode(joined[6], MSG)


def test_join_then_ingest_every_line_lands() -> None:
    inputs = [orjson.dumps(input_line(f"t-{i}")) for i in range(30)]
    outputs = [orjson.dumps(output_line(f"t-{i}", n=i)) for i in range(0, 30, 2)]
    b = ingest(list(join_batch_files(inputs, outputs)))
    assert b.requests.height == 15 and b.rejected.height == 0
    assert b.skipped["items"].sum() == 15
    assert b.requests["ineligible_reason"].null_count() == 0  # no cost in log, no price table


# -- shapes and reasons ----------------------------------------------------------------------

@pytest.mark.parametrize("by_topic", [{}, {"batch-results": "openai_batch"}], ids=["auto", "fixed"])
def test_jsonl_and_arrays(by_topic: dict[str, str]) -> None:
    lines = [orjson.dumps(output_line(f"t-{i}", n=i)) for i in range(3)] + [orjson.dumps(input_line("t-9"))]
    out = Decoders(by_topic).decode(b"\n".join(lines) + b"\n", MSG)
    assert len(out.requests) == 3 and out.skipped == 1
    out = Decoders(by_topic).decode(b"[" + b",".join(lines) + b"]", MSG)
    assert len(out.requests) == 3 and out.skipped == 1


@pytest.mark.parametrize(("value", "expected"), [
    ({"custom_id": "x"}, "OpenAI Batch line (custom_id 'x') has neither a body (input line) nor a "
                         "response or error (output line)"),
    ({"custom_id": ""}, "field custom_id: Expected `str` of length >= 1"),
    ({"custom_id": 7, "body": {}}, "field custom_id: Expected `str`, got `int`"),
    (output_line(response={"status_code": "200"}), "field response.status_code: Expected `int`, got `str`"),
    (output_line(response={"status_code": 200, "body": {"choices": []}}),
     "missing field response.body.model (and no input body with a model)"),
    (output_line(response={"status_code": 200, "body": {"model": "m", "usage": {"prompt_tokens": -1}}}),
     "field response.body.usage.prompt_tokens: Expected `int` >= 0"),
    (output_line(response={"status_code": 200, "body": {"model": "m", "created": -5}}),
     "field response.body.created is not a valid time: -5.0"),
    ({**input_line(), "body": {"model": "m", "messages": [{"role": 1}]}, **output_line()},
     "body.messages[0].role must be a string"),
])
def test_reasons(value: dict[str, Any], expected: str) -> None:
    assert reason(value) == expected


def test_reasons_for_broken_bytes() -> None:
    assert reason(b'{"custom_id": "\xff"}') == "invalid UTF-8 at byte 15"
    assert reason(orjson.dumps(output_line())[:-3]).startswith("invalid JSON: ")
    assert reason(b"[]") == "empty JSON array: no records"
    assert reason(b"[1]") == "element 0: an OpenAI Batch line must be a JSON object, got int"


# -- properties ------------------------------------------------------------------------------

FIELDS = ["custom_id", "id", "response", "error", "body", "method", "url"]


@st.composite
def batch_lines(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from([output_line, input_line, lambda: {**input_line(), **output_line()}]))()
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "del", "body"]))
        if action == "set":
            line[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif action == "del":
            line.pop(draw(st.sampled_from(FIELDS)), None)
        elif isinstance(line.get("response"), dict) and isinstance(line["response"].get("body"), dict):
            line["response"]["body"][draw(st.sampled_from(
                ["usage", "choices", "model", "created", "object", "output"]))] = draw(json_values)
    raw = dumps(line)
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@SETTINGS
@given(st.lists(batch_lines(), min_size=1, max_size=6), st.booleans(), st.booleans())
def test_every_line_lands_exactly_once(values: list[bytes], fixed: bool, as_jsonl: bool) -> None:
    if as_jsonl:
        values = [b"\n".join(values)]
    cfg = Config(formats=FormatsConfig(by_topic={"llm-logs": "openai_batch"})) if fixed else None
    ingest(values, cfg)


@SETTINGS
@given(st.lists(st.binary(max_size=120) | batch_lines(), max_size=8),
       st.lists(st.binary(max_size=120) | batch_lines(), max_size=8))
def test_join_never_raises_and_drops_nothing(inputs: list[bytes], outputs: list[bytes]) -> None:
    joined = list(join_batch_files(inputs, outputs))
    # Every non-blank line is in the result, alone or joined with its partner.
    assert len(joined) <= sum(1 for v in inputs + outputs if v.strip())
    assert len(joined) >= sum(1 for v in outputs if v.strip())
    ingest(joined)
