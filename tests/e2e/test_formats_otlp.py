"""OpenTelemetry GenAI spans through the real broker and the running service, in both encodings
of the Collector's Kafka exporter: `otlp_proto` (its default; the topic pinned to it, as for an
`otlp_spans` topic) and `otlp_json` (auto-detected). One message is one trace (or a batch of
traces); its GenAI span becomes a request and its HTTP spans are counted as skipped. Counts in
requests / rejected / skipped are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from consumers.formats.otlp import NO_CONTENT
from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from shadowroute.demo.encoders.otlp import (
    build_request,
    encode_otlp_json,
    encode_otlp_proto,
    request_id_of,
    style_of,
    to_otlp_json,
)
from shadowroute.demo.traffic import Call, TrafficGenerator
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.service import run_until_consumed

N_CALLS = 200
# Spans without content are stored at once, as when no logs topic is consumed (the join of
# content logged apart is tested in test_formats_otlp_logs.py).
NO_JOIN = "[formats]\notlp_join_window_s = 0\n"


def other_spans(req: ExportTraceServiceRequest) -> int:
    """Spans with no GenAI attribute at all: what the decoder must count as skipped."""
    return sum(1 for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans
               if not any(kv.key.startswith("gen_ai.") for kv in s.attributes))


def drop_attribute(req: ExportTraceServiceRequest, *keys: str) -> ExportTraceServiceRequest:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                kept = [kv for kv in s.attributes if kv.key not in keys]
                del s.attributes[:]
                s.attributes.extend(kept)
    return req


def set_int_attribute(req: ExportTraceServiceRequest, key: str, value: int) -> ExportTraceServiceRequest:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                for kv in s.attributes:
                    if kv.key == key:
                        kv.value.int_value = value
    return req


class Traffic:
    """Generated calls, which fail and which carry no content, and what the store must hold."""

    def __init__(self, seed: int) -> None:
        self.calls = list(TrafficGenerator(seed=seed).calls(N_CALLS))
        self.failed = {c.request_id for i, c in enumerate(self.calls) if i % 40 == 7}
        self.no_content = {c.request_id for i, c in enumerate(self.calls) if i % 25 == 3}
        assert not self.failed & self.no_content
        self.values: list[bytes] = []
        self.stored: list[Call] = []  # calls that must end up in `requests`
        self.skipped_items = 0
        self.skipped_rows = 0

    def request(self, c: Call) -> ExportTraceServiceRequest:
        return build_request(c, c.request_id in self.failed,
                             content=c.request_id not in self.no_content)

    def add(self, value: bytes, reqs: list[ExportTraceServiceRequest], calls: list[Call]) -> None:
        self.values.append(value)
        self.stored += calls
        n = sum(other_spans(r) for r in reqs)
        self.skipped_items += n
        self.skipped_rows += n > 0


def run(broker: Broker, topic: str, db_path: Path, tmp_path: Path, n_messages: int, extra: str,
        ) -> tuple[duckdb.DuckDBPyConnection, list[dict[str, object]]]:
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                                       group=f"g-{topic}", db=db_path, model_url=ms.url,
                                       default_rate=0.3, extra=extra), env={})
        asyncio.run(run_until_consumed(cfg, n_messages))
        replayed = list(ms.behaviour.requests)
    return duckdb.connect(str(db_path), read_only=True), replayed


def check_store(con: duckdb.DuckDBPyConnection, replayed: list[dict[str, object]], t: Traffic,
                fmt: str, bad_reasons: list[Callable[[str], bool]]) -> None:
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    stored_ids = {request_id_of(c) for c in t.stored}
    assert len(stored_ids) == len(t.stored)
    assert q("SELECT count(*), count(DISTINCT request_id) FROM requests")[0] == (len(t.stored),) * 2
    assert {r[0] for r in q("SELECT request_id FROM requests")} == stored_ids
    assert q("SELECT DISTINCT format FROM requests") == [(fmt,)]
    failed = {request_id_of(c) for c in t.stored if c.request_id in t.failed}
    assert {r[0] for r in q("SELECT request_id FROM requests WHERE status = 'error'")} == failed
    no_content = {request_id_of(c) for c in t.stored if c.request_id in t.no_content}
    assert {r[0] for r in con.execute("SELECT request_id FROM requests WHERE ineligible_reason = ?",
                                      [NO_CONTENT]).fetchall()} == no_content
    # The old-style spans carry gen_ai.usage.cost; gpt-4o is priced from [prices].
    logged = {request_id_of(c) for c in t.stored if style_of(c) == "old" and c.request_id not in t.failed}
    assert {r[0] for r in q("SELECT request_id FROM requests WHERE cost_source = 'log'")} == logged
    assert q("SELECT count(*) FROM requests WHERE cost_source = 'price_table' AND model <> 'gpt-4o'"
             )[0][0] == 0
    assert q("SELECT count(*) FROM requests WHERE tags->>'service' IS NULL OR tags->>'feature' IS NULL "
             "OR tags->>'environment' <> 'production'")[0][0] == 0
    by_id = {request_id_of(c): c for c in t.stored}
    for rid, ts, latency, inp in q("SELECT request_id, epoch_ms(ts), latency_ms, input_tokens "
                                   "FROM requests"):
        c = by_id[rid]
        assert ts == round(c.ts * 1000)
        assert abs(latency - c.latency_ms) < 1e-6
        assert inp == (None if c.request_id in t.failed else c.input_tokens)

    reasons = [r[0] for r in q("SELECT reason FROM rejected")]
    assert len(reasons) == len(bad_reasons), reasons
    for check in bad_reasons:
        assert sum(map(check, reasons)) == 1, reasons
    assert q("SELECT count(*) FROM rejected WHERE raw IS NULL")[0][0] == 0
    assert q("SELECT count(*), sum(items) FROM skipped WHERE reason = 'not an LLM call'")[0] == (
        t.skipped_rows, t.skipped_items)
    assert q("SELECT count(*) FROM skipped WHERE reason <> 'not an LLM call'")[0][0] == 0
    assert q("SELECT sum(next_offset) FROM offsets")[0][0] == len(t.values)

    # Sampled requests were replayed with the prompts the spans carried, and scored.
    sampled = q("SELECT count(*) FROM requests WHERE sampled")[0][0]
    assert sampled > 0
    assert q("SELECT count(*) FROM samples WHERE status <> 'done'")[0][0] == 0
    assert len(replayed) == sampled
    prompts = {orjson.dumps(c.messages) for c in t.stored}
    assert all(orjson.dumps(r["messages"]) in prompts for r in replayed)
    assert q("SELECT count(*) FROM scores")[0][0] == sampled
    con.close()


def test_otlp_proto_spans(broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    t = Traffic(seed=31)
    calls = t.calls
    for c in calls[:180]:                                   # 180 traces, one per message
        req = t.request(c)
        t.add(req.SerializeToString(), [req], [c])
    batch = ExportTraceServiceRequest()                     # 10 traces batched in one message
    reqs = [t.request(c) for c in calls[180:190]]
    for r in reqs:
        batch.resource_spans.extend(r.resource_spans)
    t.add(batch.SerializeToString(), reqs, calls[180:190])
    only_http = build_request(calls[190])                   # a trace without its GenAI span
    for ss in only_http.resource_spans[0].scope_spans:
        kept = [s for s in ss.spans if not any(kv.key.startswith("gen_ai.") for kv in s.attributes)]
        del ss.spans[:]
        ss.spans.extend(kept)
    t.add(only_http.SerializeToString(), [only_http], [])
    for c in calls[191:196]:
        req = t.request(c)
        t.add(req.SerializeToString(), [req], [c])
    no_model = drop_attribute(build_request(calls[196], style="current"),
                              "gen_ai.request.model", "gen_ai.response.model")
    absurd = set_int_attribute(build_request(calls[197], style="current"),
                               "gen_ai.usage.input_tokens", 10**15)
    whole = calls[198]
    truncated = encode_otlp_proto(whole)[:200]
    bad = [b"not a protobuf, not JSON", no_model.SerializeToString(), absurd.SerializeToString(),
           truncated, b""]
    t.values += bad
    asyncio.run(produce(broker.bootstrap, topic, t.values))

    extra = f'{NO_JOIN}[formats.by_topic]\n"{topic}" = "otlp_proto"\n'
    con, replayed = run(broker, topic, db_path, tmp_path, len(t.values), extra)
    check_store(con, replayed, t, "otlp_proto", [
        lambda r: r == "not an OTLP protobuf trace export (invalid protobuf wire format); "
                       "it starts with 'not a protobuf, not JSON'",
        lambda r: r == f"span 1 (trace {request_id_of(calls[196]).replace(':', ', span ')}): "
                       "missing field gen_ai.request.model",
        lambda r: r == f"span 1 (trace {request_id_of(calls[197]).replace(':', ', span ')}): "
                       "attribute gen_ai.usage.input_tokens is not a plausible token count: "
                       "1000000000000000",
        lambda r: r == "not an OTLP protobuf trace export (invalid protobuf wire format)",
        lambda r: r == "OTLP message holds no spans",
    ])


def test_otlp_json_spans(broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    t = Traffic(seed=32)
    calls = t.calls
    for c in calls[:185]:                                   # 185 traces, one per message
        req = t.request(c)
        t.add(to_otlp_json(req), [req], [c])
    reqs = [t.request(c) for c in calls[185:190]]           # a JSON array of 3, NDJSON of 2
    t.add(b"[" + b",".join(to_otlp_json(r) for r in reqs[:3]) + b"]", reqs[:3], calls[185:188])
    t.add(b"\n".join(to_otlp_json(r) for r in reqs[3:]) + b"\n", reqs[3:], calls[188:190])
    for c in calls[190:196]:
        req = t.request(c)
        t.add(to_otlp_json(req), [req], [c])
    good = encode_otlp_json(calls[196])
    bad_tokens = orjson.loads(encode_otlp_json(calls[197], style="current"))
    for ss in bad_tokens["resourceSpans"][0]["scopeSpans"]:
        for s in ss["spans"]:
            for a in s["attributes"]:
                if a["key"] == "gen_ai.usage.output_tokens":
                    a["value"] = {"intValue": "lots"}
    bad = [good[:-40], orjson.dumps(bad_tokens), b'{"resourceSpans": [{"scopeSpans": 5}]}',
           good.replace(b"assistant-", b"\xffssistant-", 1)]
    t.values += bad
    asyncio.run(produce(broker.bootstrap, topic, t.values))

    con, replayed = run(broker, topic, db_path, tmp_path, len(t.values), NO_JOIN)
    rid = request_id_of(calls[197]).replace(":", ", span ")
    check_store(con, replayed, t, "otlp_json", [
        lambda r: r.startswith("invalid JSON: "),
        lambda r: r == f"span 1 (trace {rid}): attribute gen_ai.usage.output_tokens: intValue 'lots' "
                       "is not an integer",
        lambda r: r == "field resourceSpans[0].scopeSpans: Expected array | null, got int",
        lambda r: r.startswith("invalid UTF-8 at byte "),
    ])
