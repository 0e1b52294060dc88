"""consumers.ingest.Ingestor.process: whatever arrives, every message ends up somewhere, once."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.config import StorageConfig
from analytics.store import Store
from consumers.config import Price, SamplingConfig
from consumers.ingest import IngestBatch, Ingestor
from consumers.records import DecodeError, RawMessage
from shadowroute.config import Config

MAX_RAW = 64
MAX_RECORD = 20_000
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CFG = Config(
    storage=StorageConfig(max_raw_bytes=MAX_RAW, max_record_bytes=MAX_RECORD),
    # Sample everything so every row also goes through the samples path.
    sampling=SamplingConfig(default_rate=1.0),
    prices={"gpt-4o": Price(input=2.5, output=10.0)},
)


def good(rid: str = "r-1", **changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": rid, "ts": 1_764_244_800,
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is 2+2?"}]},
        "response": {"choices": [{"message": {"content": "4"}}],
                     "usage": {"prompt_tokens": 12, "completion_tokens": 1}},
        "tags": {"feature": "math"},
    }
    rec.update(changes)
    return rec


def msgs(*values: bytes | None, topic: str = "logs", partition: int = 0) -> list[RawMessage]:
    return [RawMessage(topic, partition, i, v) for i, v in enumerate(values)]


def process(values: list[RawMessage], cfg: Config = CFG) -> IngestBatch:
    return Ingestor(cfg).process(values)


def only_reason(value: bytes | None, cfg: Config = CFG) -> str:
    b = process(msgs(value), cfg)
    assert b.requests.height == 0
    assert b.rejected.height == 1
    return str(b.rejected["reason"][0])


# -- examples --------------------------------------------------------------------------------

def test_a_good_record_becomes_a_request_and_a_sample() -> None:
    b = process(msgs(orjson.dumps(good())))
    assert b.rejected.height == 0
    row = b.requests.row(0, named=True)
    assert row["request_id"] == "r-1"
    assert (row["topic"], row["partition"], row["offset"]) == ("logs", 0, 0)
    assert row["stratum"] == "gpt-4o|math"
    assert row["eligible"] is True and row["ineligible_reason"] is None
    assert row["sampled"] is True and row["sample_rate"] == 1.0
    # No cost in the log: priced from the table, (12 * 2.5 + 1 * 10) / 1e6.
    assert row["cost_usd"] == pytest.approx(40e-6)
    assert row["cost_source"] == "price_table"
    assert row["prompt_chars"] == len("What is 2+2?")
    assert b.samples["sample_id"].to_list() == ["r-1"]
    assert b.samples["scorer"].to_list() == ["exact_match"]
    assert b.offsets == {("logs", 0): 1}


@pytest.mark.parametrize(("served_by", "cost"), [
    ("gpt-4o-2024-08-06", 30e-6),  # a response names the dated snapshot; the table, the model
    ("openai/gpt-4o", 30e-6),  # LiteLLM's provider prefix
    ("claude-3-5-haiku-20241022", (4 * 0.8 + 8 * 0.08 + 1 * 4.0) / 1e6),
    ("gpt-4o-mini", None),  # another model, not a snapshot of gpt-4o: not priced as one
])
def test_the_price_table_prices_dated_and_prefixed_model_names(served_by: str,
                                                               cost: float | None) -> None:
    cfg = dataclasses.replace(CFG, prices={
        "gpt-4o": Price(input=2.5, cached_input=1.25, output=10.0),
        "claude-3-5-haiku": Price(input=0.8, cached_input=0.08, output=4.0)})
    # 12 prompt tokens of which 8 cached, 1 out: 4 x input + 8 x cached_input + 1 x output.
    rec = good(response={"model": served_by, "choices": [{"message": {"content": "4"}}],
                         "usage": {"prompt_tokens": 12, "completion_tokens": 1,
                                   "prompt_tokens_details": {"cached_tokens": 8}}})
    rec["request"]["model"] = served_by  # a request may name a snapshot itself
    row = process(msgs(orjson.dumps(rec)), cfg).requests.row(0, named=True)
    assert (row["model"], row["served_model"]) == (served_by, served_by)
    if cost is None:
        assert (row["cost_usd"], row["cost_source"], row["eligible"]) == (None, None, False)
        assert "no price for model 'gpt-4o-mini'" in row["ineligible_reason"]
    else:
        assert row["cost_usd"] == pytest.approx(cost) and row["cost_source"] == "price_table"


@pytest.mark.parametrize("nested", [
    {"tags": {"feature": "math", "model_group": "gpt-4o"}},  # litellm's markers
    {"tags": {"feature": "math", "response_cost": "0.1"}},
    {"metadata": {"custom_id": "c-1"}},  # openai_batch's
    {"request": {"model": "gpt-4o", "standard_logging_object": None,
                 "messages": [{"role": "user", "content": "What is 2+2?"}]}},
])
def test_another_formats_marker_nested_in_a_record_does_not_reject_it(
        nested: dict[str, Any]) -> None:
    # Auto-detection sniffs marker bytes anywhere in the message; the record's top-level keys
    # decide when the sniffed format does not fit.
    b = process(msgs(orjson.dumps(good(**nested))))
    assert b.rejected.height == 0, b.rejected["reason"].to_list()
    assert b.requests["format"].to_list() == ["openai_chat"]
    assert b.requests["request_id"].to_list() == ["r-1"]


def test_a_streamed_call_without_usage_is_no_token_counts_not_no_price() -> None:
    # Streamed responses carry no usage unless `stream_options.include_usage` was set.
    rec = good(response={"choices": [{"message": {"content": "4"}}]})
    rec["request"]["stream"] = True
    row = process(msgs(orjson.dumps(rec))).requests.row(0, named=True)
    assert (row["cost_usd"], row["eligible"], row["sampled"]) == (None, False, False)
    assert row["ineligible_reason"].startswith("no token counts")
    assert "no price" not in row["ineligible_reason"]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
     {"role": "user", "content": []}],
    [{"role": "user", "content": [{"type": "text", "text": ""}]}],
])
def test_a_prompt_with_an_empty_part_is_prompt_content_incomplete(
        messages: list[dict[str, Any]]) -> None:
    rec = good()
    rec["request"]["messages"] = messages
    b = process(msgs(orjson.dumps(rec)))
    assert b.rejected.height == 0, b.rejected["reason"].to_list()
    row = b.requests.row(0, named=True)
    assert (row["eligible"], row["ineligible_reason"], row["sampled"]) == (
        False, "prompt content incomplete", False)
    # An assistant turn that only called tools has no text, and is complete.
    rec["request"]["messages"] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    tools_ok = dataclasses.replace(CFG, shadow=dataclasses.replace(CFG.shadow, replay_tools=True))
    assert process(msgs(orjson.dumps(rec)), tools_ok).requests["eligible"].to_list() == [True]


def test_ineligible_requests_are_stored_but_not_sampled() -> None:
    no_price = good("r-2")
    no_price["request"]["model"] = "mystery"
    failed = good("r-3", status="error", error="rate limited")
    b = process(msgs(orjson.dumps(no_price), orjson.dumps(failed)))
    reasons = dict(zip(b.requests["request_id"], b.requests["ineligible_reason"], strict=True))
    assert reasons == {"r-2": "no cost in the log and no price for model 'mystery' in [prices]",
                       "r-3": "production call failed: no reference answer"}
    assert b.requests["sampled"].to_list() == [False, False]
    assert b.samples.height == 0


def test_invalid_utf8_reason_names_the_byte() -> None:
    value = b'{"request_id": "\xff"}'
    assert only_reason(value) == "invalid UTF-8 at byte 16"
    # Not JSON: it could only be OTLP protobuf, so the reason says why it is neither.
    assert only_reason(b"\xfe").startswith("neither JSON (invalid UTF-8 at byte 0) nor OTLP protobuf")


def test_too_large_records_are_rejected_unparsed() -> None:
    value = orjson.dumps(good(padding="x" * MAX_RECORD))
    reason = only_reason(value)
    assert reason == (f"message of {len(value):,} bytes exceeds "
                      f"storage.max_record_bytes ({MAX_RECORD:,})")
    b = process(msgs(value))
    assert b.rejected["raw"][0] == value[:MAX_RAW]
    assert b.rejected["raw_size"][0] == len(value)


def test_missing_model_reason() -> None:
    rec = good()
    del rec["request"]["model"]
    assert only_reason(orjson.dumps(rec)) == "missing field request.model"


def test_nan_and_infinity_literals_are_not_json() -> None:
    # Python's json writes NaN / Infinity; orjson (rightly) refuses them.
    reason = only_reason(json.dumps(good(cost_usd=float("nan"))).encode())
    assert reason.startswith("invalid JSON: ")
    reason = only_reason(json.dumps(good(latency_ms=float("inf"))).encode())
    assert reason.startswith("invalid JSON: ")


def test_other_reasons() -> None:
    assert only_reason(None) == "empty message (null value)"
    assert only_reason(b"") == "empty message"
    assert only_reason(b'{"request_id": "r", "request": ') .startswith("invalid JSON: ")
    assert only_reason(b"[1, 2, 3]").startswith(
        "element 0: unrecognised log format (a JSON int matching no supported format: ")
    assert only_reason(orjson.dumps(good(ts=2**64 - 1))) == (
        "field ts is not a valid time: 18446744073709551615")


@pytest.mark.parametrize("depth", [300, 1_100, 100_000])
def test_deeply_nested_json_is_rejected(depth: int) -> None:
    assert only_reason(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("where", ["content", "stop", "tag"])
def test_deep_nesting_inside_a_good_record_is_rejected_not_raised(where: str) -> None:
    # orjson reads 1024 levels but writes only 254: a record between the two must not crash.
    deep = [[]]
    for _ in range(400):
        deep = [deep]
    rec = good()
    if where == "content":
        rec["request"]["messages"][0]["content"] = deep
    elif where == "stop":
        rec["request"]["stop"] = deep
    else:
        rec["tags"]["feature"] = deep
    value = json.dumps(rec).encode()
    b = process(msgs(value, orjson.dumps(good("r-ok"))))
    assert b.requests.height + b.rejected.height == 2
    assert "r-ok" in b.requests["request_id"].to_list()
    if b.rejected.height:  # the type checks may catch it first; either way a plain reason
        reason = b.rejected["reason"].to_list()[0]
        assert reason == "JSON nested too deeply" or "Expected" in reason


def test_duplicate_ids_in_a_batch_are_stored_once() -> None:
    b = process(msgs(orjson.dumps(good("a")), orjson.dumps(good("b")),
                     orjson.dumps(good("a", ts=1_764_244_900)), b"junk"))
    assert b.requests["request_id"].to_list() == ["a", "b"]
    assert b.requests["offset"].to_list() == [0, 1]  # the first one wins
    assert b.samples["sample_id"].to_list() == ["a", "b"]
    assert b.rejected["offset"].to_list() == [3]
    assert b.offsets == {("logs", 0): 4}


def test_offsets_are_the_highest_offset_plus_one_per_partition() -> None:
    values = [RawMessage("a", 0, 10, b"x"), RawMessage("a", 0, 7, b"x"),
              RawMessage("a", 1, 3, orjson.dumps(good())), RawMessage("b", 0, 99, None)]
    b = process(values)
    assert b.offsets == {("a", 0): 11, ("a", 1): 4, ("b", 0): 100}
    assert not b.empty
    assert process([]).empty


def test_empty_batch_has_typed_empty_frames() -> None:
    b = process([])
    assert (b.requests.height, b.samples.height, b.rejected.height) == (0, 0, 0)
    assert b.requests.schema["ts"] == pl.Datetime("ms")
    assert b.rejected.schema["raw"] == pl.Binary


# -- properties ------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats() | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
numbers = (st.integers(min_value=-5, max_value=2**66) | st.floats()
           | st.sampled_from([0, 1, 100_000_001, 1e11, 1e300, -0.0]))


def _deep(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = [v]
    return v


text_parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}),
                      min_size=1, max_size=3)
content = st.one_of(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30), text_parts)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": content}),
    min_size=1, max_size=3)
counts = st.integers(0, 100_000)
response = st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries(
        {"message": st.fixed_dictionaries({"content": content}), "finish_reason": st.just("stop")}),
        min_size=1, max_size=2)},
    optional={"id": st.text(min_size=1, max_size=8), "model": st.just("gpt-4o-mini"),
              "usage": st.fixed_dictionaries({"prompt_tokens": counts, "completion_tokens": counts},
                                             optional={"prompt_tokens_details": st.fixed_dictionaries(
                                                 {"cached_tokens": counts})})})
plausible_records = st.fixed_dictionaries(
    {"request": st.fixed_dictionaries(
        {"model": st.sampled_from(["gpt-4o", "o3"]), "messages": messages},
        optional={"temperature": st.floats(0, 2), "stop": st.just(["\n"]),
                  "tools": st.just([{"type": "function"}]), "stream": st.booleans()}),
     "ts": st.one_of(st.integers(0, 10**13), st.integers(0, 2**64 - 1),
                     st.sampled_from(["2026-11-27T12:00:00Z", "9999-12-31T23:59:59-14:00",
                                      "0001-01-01T00:00:00+14:00", 1e20, 2**62])),
     "response": response},
    optional={
        # Few distinct ids, so batches hold duplicates.
        "request_id": st.sampled_from(["dup-1", "dup-2", "dup-3"]) | st.text(min_size=1, max_size=8),
        "cost_usd": st.floats(0, 10), "latency_ms": st.floats(0, 1e5),
        "status": st.sampled_from(["ok", "error"]),
        "tags": st.dictionaries(st.sampled_from(["feature", "tenant"]), st.text(max_size=5)),
        "error": st.text(max_size=5),
    })
# What a broken producer writes in place of a field.
weird = st.one_of(
    json_values, numbers, st.sampled_from([[], {}, "", -1, 2**64 - 1, 1e20, True]),
    st.sampled_from([300, 1_000]).map(_deep),                        # readable, not writable
    st.integers(5_000, 25_000).map(lambda n: "y" * n),                # huge strings
)


def _paths(v: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*prefix, i))
    return out


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible record with up to three fields replaced by something odd or removed."""
    rec = copy.deepcopy(draw(plausible_records))  # st.just values are shared: never mutate them
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        paths = _paths(rec)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = rec
        for p in path[:-1]:
            node = node[p]
        if isinstance(node, dict) and draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(weird)
    return rec


@st.composite
def encoded_records(draw: st.DrawFn) -> bytes:
    # Python's json writes what orjson will not read: NaN, Infinity, ints beyond 64 bits.
    text = json.dumps(draw(records()), ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def message_values(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["record"] * 6 + ["truncated", "bytes", "nested", "bad_utf8",
                                                  "none", "huge"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "nested":
        n = draw(st.sampled_from([10, 300, 1_025, 100_000]))
        return draw(st.sampled_from([b"[", b'{"a":'])) * n + b"1" + b"]" * n
    value = draw(encoded_records())
    if kind == "truncated":
        return value[: draw(st.integers(0, max(len(value) - 1, 0)))]
    if kind == "bad_utf8":
        i = draw(st.integers(0, len(value)))
        return value[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + value[i:]
    if kind == "huge":
        return value + b" " * draw(st.integers(MAX_RECORD - len(value), MAX_RECORD * 2))
    return value


@st.composite
def batches(draw: st.DrawFn) -> list[RawMessage]:
    values = draw(st.lists(message_values(), max_size=12))
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for v in values:
        tp = (draw(st.sampled_from(["logs", "other"])), draw(st.integers(0, 2)))
        off = next_offset.get(tp, draw(st.integers(0, 10**12))) + draw(st.integers(0, 3))
        next_offset[tp] = off + 1
        out.append(RawMessage(tp[0], tp[1], off, v, timestamp_ms=draw(
            st.none() | st.integers(0, 2_000_000_000_000))))
    # Kafka hands partitions over in offset order, but a batch interleaves partitions freely.
    return draw(st.permutations(out))


def check_batch(ing: Ingestor, ms: list[RawMessage], b: IngestBatch) -> None:
    where = lambda df: list(zip(df["topic"], df["partition"], df["offset"], strict=True))  # noqa: E731
    accepted = where(b.requests)
    rejected = where(b.rejected)
    assert len(set(accepted)) == len(accepted)
    assert not set(accepted) & set(rejected)
    ids = b.requests["request_id"].to_list()
    assert len(set(ids)) == len(ids), "a request id is stored once per batch"
    by_id = dict(zip(ids, accepted, strict=True))
    duplicates = 0
    for m in ms:
        place = (m.topic, m.partition, m.offset)
        if place in accepted or place in rejected:
            continue
        # Neither: only a repeat of an id already taken from an earlier message of the batch.
        [r] = ing.decode(m).requests
        assert r.request_id in by_id and by_id[r.request_id] != place
        duplicates += 1
    assert b.requests.height + b.rejected.height + duplicates == len(ms)
    assert b.skipped["items"].sum() == duplicates  # repeats are counted, not lost

    values = {(m.topic, m.partition, m.offset): m.value for m in ms}
    for row in b.rejected.iter_rows(named=True):
        assert isinstance(row["reason"], str) and row["reason"].strip()
        value = values[(row["topic"], row["partition"], row["offset"])] or b""
        assert row["raw"] == value[:MAX_RAW]
        assert row["raw_size"] == len(value)
        assert len(row["raw"]) <= MAX_RAW

    expected: dict[tuple[str, int], int] = {}
    for m in ms:
        expected[(m.topic, m.partition)] = max(expected.get((m.topic, m.partition), 0), m.offset + 1)
    assert b.offsets == expected

    sampled = b.requests.filter(pl.col("sampled"))["request_id"].to_list()
    assert sorted(b.samples["sample_id"].to_list()) == sorted(sampled)
    assert b.requests.filter(pl.col("sampled") & ~pl.col("eligible")).height == 0


@SETTINGS
@given(batches())
def test_every_message_is_a_request_or_a_rejection(ms: list[RawMessage]) -> None:
    ing = Ingestor(CFG)
    b = ing.process(ms)  # must not raise, whatever the bytes
    check_batch(ing, ms, b)


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_never_raise(values: list[bytes]) -> None:
    ms = msgs(*values)
    ing = Ingestor(CFG)
    check_batch(ing, ms, ing.process(ms))


@SETTINGS
@given(encoded_records())
def test_decode_raises_only_decode_error(value: bytes) -> None:
    msg = RawMessage("logs", 0, 0, value)
    try:
        out = Ingestor(CFG).decode(msg)
    except DecodeError as e:
        assert str(e)
    else:
        assert len(out.requests) == 1 and out.skipped == 0


@SETTINGS
@given(st.integers(1, 200), st.lists(message_values(), min_size=1, max_size=5))
def test_raw_bytes_are_cut_to_max_raw_bytes(max_raw: int, values: list[bytes | None]) -> None:
    cfg = dataclasses.replace(CFG, storage=StorageConfig(max_raw_bytes=max_raw,
                                                         max_record_bytes=MAX_RECORD))
    ms = msgs(*values)
    b = Ingestor(cfg).process(ms)
    for row in b.rejected.iter_rows(named=True):
        value = ms[row["offset"]].value or b""
        assert row["raw"] == value[:max_raw]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(Path(tmp_path_factory.mktemp("ingest")) / "ingest.duckdb")
    yield s
    s.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_every_batch_can_be_written(store: Store, ms: list[RawMessage]) -> None:
    # What the decoder lets through must also fit the tables (times, counts, JSON).
    b = Ingestor(CFG).process(ms)
    before = store.fetch("SELECT count(*) FROM rejected")[0][0]
    ids = b.requests["request_id"].to_list()
    # Ids stored by an earlier batch (the module's store sees every example): stored once,
    # counted as duplicates.
    known = store.fetch("SELECT count(*) FROM requests WHERE request_id IN (SELECT unnest($1))",
                        [ids])[0][0]
    stored_before = store.fetch("SELECT count(*) FROM requests")[0][0]
    assert store.write_ingest(b) == known
    assert store.fetch("SELECT count(*) FROM requests")[0][0] == stored_before + len(ids) - known
    assert store.fetch("SELECT count(*) FROM rejected")[0][0] == before + b.rejected.height
    for (topic, partition), nxt in b.offsets.items():
        [(stored,)] = store.fetch('SELECT next_offset FROM offsets WHERE topic = $1 '
                                  'AND "partition" = $2', [topic, partition])
        assert stored >= nxt


def test_a_batch_read_again_is_stored_once_and_counted(tmp_path: Path) -> None:
    # A producer retry or a re-read: every id already stored, nothing added, all counted.
    b = process(msgs(*(orjson.dumps(good(f"r-{i}")) for i in range(5)), b"not json"))
    store = Store(tmp_path / "s.duckdb")
    try:
        assert store.write_ingest(b) == 0
        assert store.write_ingest(b) == 5
        assert store.fetch("SELECT count(*) FROM requests") == [(5,)]
        assert store.fetch("SELECT count(*) FROM samples") == [(5,)]
    finally:
        store.close()
