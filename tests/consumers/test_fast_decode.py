"""The fast ingest path gives, for every format, the rows the full decode gives.

`Ingestor.process` decodes each record from its bytes in one msgspec pass, stores the JSON a
decoder already made of the messages, skips the sample-only work (and the id hash of an
ineligible request) for requests that are not sampled, and builds the frames as typed series.
The reference here does it the plain way: each JSON record parsed whole by orjson and decoded by
its format's object path, every request's messages serialized from the objects, every id hashed,
rows built one by one into a frame by a dict of columns. Both must agree field by field, for
sampled and unsampled records alike."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from consumers.formats import FORMATS, Decoders, detect, message_text
from consumers.ingest import (
    REQUESTS_SCHEMA,
    SAMPLES_SCHEMA,
    IngestBatch,
    Ingestor,
    frontier_cost,
)
from consumers.records import RawMessage, Request
from consumers.sampling import stratum_of
from shadowroute.config import Config, load_config
from shadowroute.demo.traffic import TrafficGenerator
from tests.consumers.test_litellm import payload
from tests.consumers.test_mapping import record as mapping_record

MAPPING_TOML = """
[formats.by_topic]
"inhouse" = "inhouse"

[formats.mappings.inhouse]
request_id = "$headers.x-request-id"
ts = "event.time"
model = "llm.model"
provider = "llm.vendor"
messages = "data.messages"
response_text = "data.choices.0.text"
input_tokens = "usage.in"
output_tokens = "usage.out"
cost_usd = "billing.usd"
status = "result.code"
ok_values = ["200"]
params = "llm.params"
tags = { feature = "meta.feature" }

[prices.gpt-4o]
input = 2.5
output = 10.0

[prices."gpt-4.1"]
input = 2.0
output = 8.0
"""


def config(tmp_path: Path, rate: float) -> Config:
    p = tmp_path / "shadowroute.toml"
    p.write_text(MAPPING_TOML)
    # `feature` is the stratify tag of the default config: strata differ from record to record.
    return load_config(p, env={"SHADOWROUTE_SAMPLING__DEFAULT_RATE": str(rate)})


def litellm_edge_cases() -> list[bytes]:
    """Payloads that take the other branches of the LiteLLM decoder."""
    out = []
    for i, changes in enumerate([
        {"messages": "redacted-by-litellm"},
        {"messages": [{"role": "user", "content": "redacted-by-litellm"}]},
        {"messages": "Complete: 2+2="},
        {"messages": {"role": "user", "content": "one message as an object"}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"},
                                                   {"type": "image_url", "image_url": {}}]}]},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "user", "content": "é \u2028 \"quoted\" \\ back"}]},
        {"status": "failure", "error_str": "RateLimitError", "response": None},
        {"response_cost": 0, "response_cost_failure_debug_info": {"error": "no price"}},
        {"startTime": "2026-03-01T10:00:00", "endTime": "2026-03-01T10:00:01.5"},
        {"model_parameters": {"tools": [{"type": "function", "function": {"name": "f"}}]}},
    ]):
        out.append(orjson.dumps(payload(id=f"edge-{i}", **changes)))
    out.append(orjson.dumps({"standard_logging_object": payload(id="wrapped")}))
    out.append(orjson.dumps(payload(id="a")) + b"\n" + orjson.dumps(payload(id="b")))
    return out


def openai_chat_edge_cases() -> list[bytes]:
    base: dict[str, Any] = {
        "ts": "2026-03-01T10:00:00Z",
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "2+2?"}]},
        "response": {"model": "gpt-4o-2024-08-06", "choices": [{"message": {"content": "4"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    }
    cases = [
        {},
        {"request": {"model": "gpt-4o", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                         "text": "b"}]}]}},
        {"response": None, "status": "error", "error": {"code": 500}},
        {"cost_usd": 0.5, "tags": {"feature": "x", "n": 3}},
    ]
    return [orjson.dumps({**base, "request_id": f"chat-edge-{i}", **c})
            for i, c in enumerate(cases)]


def openai_batch_lines() -> list[bytes]:
    out = []
    for i in range(6):
        body = {"model": "gpt-4o", "created": 1_780_000_000 + i,
                "choices": [{"message": {"content": f"answer {i}"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20 + i, "completion_tokens": 3}}
        line: dict[str, Any] = {"id": f"batch_req_{i}", "custom_id": f"task-{i}",
                                "response": {"status_code": 200, "body": body}}
        if i % 2:  # joined with its input line: a whole request
            line.update(method="POST", url="/v1/chat/completions",
                        body={"model": "gpt-4o", "max_tokens": 64,
                              "messages": [{"role": "user", "content": f"question {i}"}]})
        out.append(orjson.dumps(line))
    return out


def records() -> dict[str, list[RawMessage]]:
    """Per format, the records of one batch (topic `inhouse` for the mapping)."""
    out: dict[str, list[RawMessage]] = {}
    for fmt in ("openai_chat", "litellm", "otlp_json", "otlp_proto"):
        values = list(TrafficGenerator(seed=7, formats=(fmt,), error_rate=0.05).encoded(300))
        if fmt == "litellm":
            values += litellm_edge_cases()
        if fmt == "openai_chat":
            values += openai_chat_edge_cases()
        out[fmt] = [RawMessage(fmt, 0, i, v, timestamp_ms=1_780_000_000_000)
                    for i, v in enumerate(values)]
    out["openai_batch"] = [RawMessage("batch", 0, i, v)
                           for i, v in enumerate(openai_batch_lines())]
    mapped = []
    for i in range(40):
        rec = mapping_record()
        rec["meta"] = {"feature": ["a", "b", "c"][i % 3]}
        if i % 4:  # a request that offered tools is not eligible: a few are kept
            del rec["llm"]["params"]["tools"]
        rec["data"]["messages"][0]["content"] = f"question {i}"
        mapped.append(RawMessage("inhouse", 0, i, orjson.dumps(rec),
                                 headers=(("x-request-id", f"in-{i}".encode()),),
                                 timestamp_ms=1_780_000_000_000))
    out["mapping"] = mapped
    return out


RECORDS = records()


# -- the plain way -------------------------------------------------------------------------------

def full_decode(ing: Ingestor, msg: RawMessage) -> list[Request]:
    """Every JSON record parsed whole, then decoded by its format's object path."""
    assert msg.value is not None
    decoders: Decoders = ing.decoders
    name = decoders.by_topic.get(msg.topic, "auto")
    if msg.value[:1] not in (b"{", b"["):  # protobuf: there is only the bytes path
        return decoders.decode(msg.value, msg).requests
    fmt = decoders.formats[name] if name != "auto" else None
    if b"\n" in msg.value:  # NDJSON: element by element, ids as the decoder numbers them
        requests = []
        lines = [line for line in msg.value.splitlines() if line.strip()]
        for i, line in enumerate(lines):
            obj = orjson.loads(line)
            f = fmt or FORMATS[detect(obj)]
            assert f.decode_obj is not None
            for r in f.decode_obj(obj, msg).requests:
                if r.request_id == f"{msg.topic}:{msg.partition}:{msg.offset}":
                    r.request_id += f":{i}"
                requests.append(r)
        return requests
    obj = orjson.loads(msg.value)
    f = fmt or FORMATS[detect(obj)]
    assert f.decode_obj is not None
    return f.decode_obj(obj, msg).requests


def full_rows(ing: Ingestor, r: Request, msg: RawMessage) -> tuple[tuple[Any, ...],
                                                                   tuple[Any, ...] | None]:
    if r.cost_usd is None and (price := ing.price_for(r.model)) is not None:
        r.cost_usd = frontier_cost(price, r.input_tokens, r.cached_input_tokens, r.output_tokens)
        r.cost_source = "price_table" if r.cost_usd is not None else None
    messages_json = orjson.dumps(r.messages)
    text = "\n".join(message_text(m.get("content")) for m in r.messages)
    stratum = stratum_of(r.model, r.tags.get(ing.tag))
    reason = ing._ineligible(r)
    hit, rate = ing.sampler.decide(r.request_id, stratum)
    sampled = hit and reason is None
    tags_json = orjson.dumps(r.tags).decode()
    row = (r.request_id, r.ts_ms, msg.topic, msg.partition, msg.offset, r.format, r.provider,
           r.model, r.input_tokens, r.output_tokens, r.cached_input_tokens, r.cost_usd,
           r.cost_source, r.latency_ms, r.status, r.error, tags_json,
           hashlib.blake2b(messages_json, digest_size=12).hexdigest(), len(text), stratum,
           reason is None, reason, sampled, rate, r.served_model)
    sample = None
    if sampled:
        scorer = ing.cfg.scoring.by_tag.get(r.tags.get(ing.score_tag, ""), ing.cfg.scoring.default)
        sample = (r.request_id, stratum, r.model, messages_json.decode(),
                  orjson.dumps(r.params).decode(), tags_json, r.response_text, r.cost_usd,
                  r.input_tokens, r.output_tokens, scorer)
    return row, sample


def plain_frame(rows: list[tuple[Any, ...]], schema: dict[str, Any]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame({name: [row[i] for row in rows] for i, name in enumerate(schema)},
                        schema=schema)


def full_batch(cfg: Config, msgs: list[RawMessage]) -> tuple[pl.DataFrame, pl.DataFrame]:
    ing = Ingestor(cfg)
    req_rows, sample_rows = [], []
    for msg in msgs:
        for r in full_decode(ing, msg):
            row, sample = full_rows(ing, r, msg)
            req_rows.append(row)
            if sample is not None:
                sample_rows.append(sample)
    return plain_frame(req_rows, REQUESTS_SCHEMA), plain_frame(sample_rows, SAMPLES_SCHEMA)


def assert_same(fast: pl.DataFrame, full: pl.DataFrame, what: str) -> None:
    assert fast.columns == full.columns
    assert fast.height == full.height, f"{what}: {fast.height} rows, the full decode {full.height}"
    for i, (a, b) in enumerate(zip(fast.iter_rows(named=True), full.iter_rows(named=True),
                                   strict=True)):
        for col in fast.columns:
            assert a[col] == b[col], f"{what} row {i} ({a.get('request_id') or a['sample_id']}) " \
                                     f"column {col}: {a[col]!r} != {b[col]!r}"
    assert fast.schema == full.schema


def fast_batch(cfg: Config, msgs: list[RawMessage]) -> IngestBatch:
    batch = Ingestor(cfg).process(msgs, now_ms=1_780_000_000_000)
    assert batch.rejected.height == 0, batch.rejected["reason"].to_list()
    return batch


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_the_fast_path_stores_what_the_full_decode_stores(tmp_path: Path, fmt: str) -> None:
    cfg = config(tmp_path, rate=0.2)
    msgs = RECORDS[fmt]
    batch = fast_batch(cfg, msgs)
    requests, samples = full_batch(cfg, msgs)
    # Both kinds are there: records sampled, and records that are not (eligible or not).
    assert 0 < samples.height < requests.height
    assert requests.filter(~pl.col("sampled") & pl.col("eligible")).height > 0
    assert_same(batch.requests, requests, f"{fmt} requests")
    assert_same(batch.samples, samples, f"{fmt} samples")


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_an_unsampled_request_is_stored_as_it_is_when_sampled(tmp_path: Path, fmt: str) -> None:
    """At rate 1 everything eligible goes through the sample path: the requests rows at a low
    rate differ from those only in `sampled` and `sample_rate`, and the samples a low rate keeps
    are exactly those of the same requests at rate 1."""
    low = fast_batch(config(tmp_path, rate=0.2), RECORDS[fmt])
    every = fast_batch(config(tmp_path, rate=1.0), RECORDS[fmt])
    keep = [c for c in REQUESTS_SCHEMA if c not in ("sampled", "sample_rate")]
    assert_same(low.requests.select(keep), every.requests.select(keep), f"{fmt} requests")
    assert every.samples.height == every.requests["eligible"].sum()
    kept = every.samples.filter(pl.col("sample_id").is_in(low.samples["sample_id"].implode()))
    assert_same(low.samples, kept, f"{fmt} samples")
