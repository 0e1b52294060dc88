"""Each JSON log format through the real broker and the running service: LiteLLM payloads
(single, array, NDJSON, wrapped), OpenAI Batch lines, and a mapping fixed per topic that reads
its request id from a Kafka header. Counts in requests / rejected / skipped are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import AIOKafkaProducer

from consumers.formats.openai_batch import join_batch_files
from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from shadowroute.demo.encoders.litellm import encode_litellm
from shadowroute.demo.traffic import TrafficGenerator
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.service import run_until_consumed

Headers = list[tuple[str, bytes]]


async def produce_with_headers(bootstrap: str, topic: str,
                               records: Sequence[tuple[bytes, Headers]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, v, key=str(i).encode(), headers=h)
                for i, (v, h) in enumerate(records)]
        for f in futs:
            await f
    finally:
        await producer.stop()


def run(broker: Broker, topic: str, db_path: Path, tmp_path: Path, n_messages: int,
        extra: str = "") -> duckdb.DuckDBPyConnection:
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                                       group=f"g-{topic}", db=db_path, model_url=ms.url,
                                       extra=extra), env={})
        asyncio.run(run_until_consumed(cfg, n_messages))
    return duckdb.connect(str(db_path), read_only=True)


def skipped(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(con.execute("SELECT reason, sum(items)::INT FROM skipped GROUP BY reason").fetchall())


def test_litellm_payloads(broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    calls = list(TrafficGenerator(seed=21).calls(240))
    failed = {c.request_id for i, c in enumerate(calls) if i % 40 == 7}
    enc = {c.request_id: encode_litellm(c, c.request_id in failed) for c in calls}
    ids = list(enc)
    values: list[bytes] = [enc[i] for i in ids[:200]]                      # 200 single objects
    values.append(b"[" + b",".join(enc[i] for i in ids[200:210]) + b"]")   # a JSON array of 10
    values.append(b"\n".join(enc[i] for i in ids[210:220]) + b"\n")        # NDJSON of 10
    values.append(b"\n".join([enc[ids[220]], enc[ids[220]], enc[ids[221]]]))  # a repeated id
    for i in ids[222:240]:                                                 # 18 wrapped
        values.append(b'{"standard_logging_object": ' + enc[i] + b', "call_type": "acompletion"}')
    embedding = orjson.loads(enc[ids[0]])
    embedding.update(id="emb-1", call_type="aembedding")
    values.append(orjson.dumps(embedding))                                 # skipped
    bad = [b"[]", b'{"model_group": 7, "model": "gpt-4o"}', enc[ids[1]][:-20],
           b'{"id": "x", "model": "gpt-4o", "model_group": "g", "prompt_tokens": -5}',
           b"[" + enc[ids[2]] + b', {"model_group": "g"}]']
    values += bad
    asyncio.run(produce(broker.bootstrap, topic, values))

    con = run(broker, topic, db_path, tmp_path, len(values))
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    assert q("SELECT count(*), count(DISTINCT request_id) FROM requests")[0] == (240, 240)
    assert {r[0] for r in q("SELECT request_id FROM requests")} == set(ids)
    assert q("SELECT DISTINCT format FROM requests") == [("litellm",)]
    assert q("SELECT count(*) FROM requests WHERE status = 'error'")[0][0] == len(failed)
    assert q("SELECT count(*) FROM requests WHERE cost_source = 'log'")[0][0] == 240
    assert q("SELECT count(*) FROM requests WHERE tags->>'model_group' IS NULL "
             "OR tags->>'feature' IS NULL OR length(tags->>'end_user') <> 16")[0][0] == 0
    reasons = {r[0] for r in q("SELECT reason FROM rejected")}
    truncated = [r for r in reasons if r.startswith("invalid JSON: ")]
    assert len(truncated) == 1
    assert reasons - set(truncated) == {
        "empty JSON array: no records",
        "field model_group: Expected `str | null`, got `int`",
        "field prompt_tokens: Expected `int` >= 0",
        "element 1: missing field model",
    }
    assert q("SELECT count(*) FROM rejected")[0][0] == len(bad)
    assert skipped(con) == {"not an LLM call": 1, "duplicate request id": 1}
    assert q("SELECT sum(next_offset) FROM offsets")[0][0] == len(values)
    # Sampled requests were replayed and scored.
    sampled = q("SELECT count(*) FROM requests WHERE sampled")[0][0]
    assert sampled > 0
    assert q("SELECT count(*) FROM samples WHERE status <> 'pending'")[0][0] == sampled
    assert q("SELECT count(*) FROM shadow_calls")[0][0] > 0
    con.close()


def output_line(cid: str, n: int, model: str = "gpt-4o") -> dict[str, Any]:
    return {"id": f"batch_req_{n:06d}", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": f"req_{n}", "body": {
                "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1764244800 + n,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"answer {n}"}}],
                "usage": {"prompt_tokens": 30 + n % 7, "completion_tokens": 4,
                          "prompt_tokens_details": {"cached_tokens": 0}}}}}


def input_line(cid: str) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "max_tokens": 32,
                     "messages": [{"role": "user", "content": f"Question {cid}?"}]}}


def test_openai_batch_lines(broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    outputs = [orjson.dumps(output_line(f"c-{n}", n)) for n in range(120)]
    values = list(outputs[:100])                                      # 100 output lines alone
    values.append(b"\n".join(outputs[100:110]))                        # JSONL chunk of 10
    values.append(b"\n".join([outputs[110], orjson.dumps(input_line("c-999"))]))  # 1 + skip 1
    values += [orjson.dumps(input_line(f"in-{n}")) for n in range(5)]  # 5 input lines: skipped
    # Joined by join_batch_files (as file replay does): whole, replayable requests.
    joined = list(join_batch_files([orjson.dumps(input_line(f"c-{n}")) for n in range(111, 120)],
                                   outputs[111:120]))
    values += joined                                                   # 9
    values.append(orjson.dumps({**output_line("c-exp", 500), "response": None,
                                "error": {"code": "batch_expired", "message": "expired"}}))  # skip
    bad = [b'{"custom_id": "lonely"}', b'{"custom_id": 5, "body": {}}', outputs[0][:30]]
    values += bad
    asyncio.run(produce(broker.bootstrap, topic, values))

    con = run(broker, topic, db_path, tmp_path, len(values))
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    assert q("SELECT count(*), count(DISTINCT request_id) FROM requests")[0] == (120, 120)
    assert q("SELECT DISTINCT format FROM requests") == [("openai_batch",)]
    assert q("SELECT count(*) FROM requests WHERE ineligible_reason LIKE "
             "'OpenAI Batch output without its input line (custom_id c-%)'")[0][0] == 111
    assert q("SELECT count(*) FROM requests WHERE eligible")[0][0] == 9
    # No cost in the log: priced from [prices] (gpt-4o: 2.5 in, 10 out per 1M).
    assert q("SELECT count(*) FROM requests WHERE cost_source = 'price_table' AND "
             "abs(cost_usd - (input_tokens * 2.5 + output_tokens * 10.0) / 1e6) < 1e-12")[0][0] == 120
    assert len(q("SELECT * FROM rejected")) == len(bad)
    assert skipped(con) == {"not an LLM call": 1 + 5 + 1}
    assert q("SELECT sum(next_offset) FROM offsets")[0][0] == len(values)
    con.close()


MAPPING = """
[formats.by_topic]
"{topic}" = "inhouse"

[formats.mappings.inhouse]
request_id = "$headers.x-request-id"
ts = "ts"
model = "llm.model"
messages = "llm.input"
response_text = "llm.output.text"
input_tokens = "llm.usage.prompt"
output_tokens = "llm.usage.completion"
cost_usd = "billing.usd"
latency_ms = "llm.ms"
status = "outcome"
ok_values = ["completed"]
tags = {{ feature = "ctx.feature", tenant = "$headers.tenant" }}
"""


def inhouse(n: int, **changes: Any) -> bytes:
    rec: dict[str, Any] = {
        "ts": 1764244800000 + n,
        "llm": {"model": "gpt-4o", "ms": 300 + n,
                "input": [{"role": "user", "content": f"Extract the number from 'item {n}'."}],
                "output": {"text": str(n)}, "usage": {"prompt": 12, "completion": 2}},
        "billing": {"usd": 0.00005}, "outcome": "completed" if n % 25 else "timeout",
        "ctx": {"feature": "extract"},
    }
    rec.update(changes)
    return orjson.dumps(rec)


def test_mapping_fixed_per_topic_with_header_ids(broker: Broker, topic: str, db_path: Path,
                                                 tmp_path: Path) -> None:
    records: list[tuple[bytes, Headers]] = [
        (inhouse(n), [("x-request-id", f"inh-{n}".encode()), ("tenant", b"acme")])
        for n in range(150)]
    records.append((b"[" + inhouse(150) + b"," + inhouse(151) + b"]", [("X-Request-ID", b"inh-arr")]))
    records.append((inhouse(152), []))                                  # no header: topic:p:offset
    bad = [(inhouse(153, llm={"ms": 1}), [("x-request-id", b"bad-1")]),
           (inhouse(154), [("x-request-id", b"\xff\xfe")]),
           (b'{"llm": {"model": "gpt-4o", "usage": {"prompt": "lots"}}}', [])]
    records += bad
    asyncio.run(produce_with_headers(broker.bootstrap, topic, records))

    con = run(broker, topic, db_path, tmp_path, len(records), extra=MAPPING.format(topic=topic))
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    ids = {r[0] for r in q("SELECT request_id FROM requests")}
    assert len(ids) == 153
    assert {f"inh-{n}" for n in range(150)} | {"inh-arr:0", "inh-arr:1"} <= ids
    [(no_header,)] = q("SELECT request_id FROM requests WHERE request_id NOT LIKE 'inh-%'")
    assert no_header.startswith(f"{topic}:")
    assert q("SELECT DISTINCT format FROM requests") == [("inhouse",)]
    assert q("SELECT count(*) FROM requests WHERE status = 'error'")[0][0] == 7  # n % 25 == 0
    assert q("SELECT count(*) FROM requests WHERE tags->>'tenant' = 'acme'")[0][0] == 150
    assert q("SELECT min(latency_ms), max(epoch_ms(ts)) FROM requests")[0] == (300.0, 1764244800152)
    assert sorted(r[0] for r in q("SELECT reason FROM rejected")) == sorted([
        "missing field llm.model (model)",
        "header 'x-request-id' is not valid UTF-8 (byte 0)",
        "field llm.usage.prompt (input_tokens) must be a token count, got str 'lots'",
    ])
    assert skipped(con) == {}
    assert q("SELECT sum(next_offset) FROM offsets")[0][0] == len(records)
    con.close()
