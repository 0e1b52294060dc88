"""`shadowroute replay FILE…` over real files, into a real DuckDB file, as a user runs it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import polars as pl

from shadowroute.demo.encoders.openai_chat import encode_openai_chat
from shadowroute.demo.traffic import TrafficGenerator
from tests.support.configs import write_config
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.process import cli


def _batch_files(tmp: Path, n: int) -> tuple[Path, Path]:
    inp, out = tmp / "batch_input.jsonl", tmp / "batch_output.jsonl"
    calls = list(TrafficGenerator(seed=9).calls(n))
    inp.write_bytes(b"\n".join(orjson.dumps({
        "custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": c.model, "messages": c.messages, "max_tokens": 64}})
        for i, c in enumerate(calls)) + b"\n")
    out.write_bytes(b"\n".join(orjson.dumps({
        "id": f"batch_req_{i}", "custom_id": f"c-{i}", "error": None,
        "response": {"status_code": 200, "request_id": f"req_{i}", "body": {
            "id": f"chatcmpl-b{i}", "object": "chat.completion", "model": c.model,
            "created": int(c.ts),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": c.task.answer}}],
            "usage": {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens}}}})
        for i, c in reversed(list(enumerate(calls)))) + b"\n")  # output order differs from input
    return inp, out


def test_replay_files_of_every_kind_and_rerun_adds_nothing(tmp_path: Path) -> None:
    gen = TrafficGenerator(seed=4, formats=("openai_chat", "litellm", "otlp_json"), error_rate=0)
    ndjson = tmp_path / "mixed.ndjson"
    values = list(gen.encoded(120))
    ndjson.write_bytes(b"\n".join(values) + b"\n{broken\n")
    array = tmp_path / "array.json"
    array.write_bytes(b"[" + b",".join(encode_openai_chat(c) for c in
                                       TrafficGenerator(seed=5).calls(30)) + b"]")
    parquet = tmp_path / "logs.parquet"
    rows = [orjson.loads(encode_openai_chat(c)) for c in TrafficGenerator(seed=6).calls(25)]
    pl.DataFrame({k: [orjson.dumps(r[k]).decode() if isinstance(r[k], dict) else r.get(k)
                      for r in rows] for k in ("request_id", "ts", "cost_usd", "latency_ms")}
                 ).with_columns(
        request=pl.Series([r["request"] for r in rows]),
        response=pl.Series([r["response"] for r in rows]),
        tags=pl.Series([r["tags"] for r in rows])).write_parquet(parquet)
    inp, out = _batch_files(tmp_path, 15)
    db = tmp_path / "replay.duckdb"
    with ModelServer(ModelBehaviour(answer=lambda p: "Paris")) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap="127.0.0.1:9", topic="unused",
                           group="g", db=db, model_url=ms.url, default_rate=0.2, math_rate=0.2)
        args = ["replay", str(ndjson), str(array), str(parquet), str(inp), str(out),
                "--config", str(cfg)]
        first = cli(*args, timeout=180)
        assert first.returncode == 0, first.stderr
        con = duckdb.connect(str(db), read_only=True)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM rejected), "
            "(SELECT count(*) FROM samples WHERE status = 'pending'), "
            "(SELECT count(*) FROM requests WHERE format = 'openai_batch')").fetchone()
        by_file = dict(con.execute(
            "SELECT split_part(topic, '/', -1), count(*) FROM requests GROUP BY 1").fetchall())
        batch_replayable = con.execute(
            "SELECT count(*) FROM requests WHERE format = 'openai_batch' "
            "AND (eligible OR ineligible_reason LIKE 'no cost in the log%')").fetchone()
        con.close()
        assert counts == (120 + 30 + 25 + 15, 1, 0, 15), counts
        assert by_file["mixed.ndjson"] == 120 and by_file["array.json"] == 30
        assert by_file["logs.parquet"] == 25
        # Joined to their input lines, the messages are known (gpt-4.1 has no test price).
        assert batch_replayable == (15,)
        second = cli(*args, timeout=180)
        assert second.returncode == 0, second.stderr
        assert "already stored" in second.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM rejected)"
                       ).fetchone() == (190, 1)
    con.close()


def test_replay_of_a_missing_file_says_so(tmp_path: Path) -> None:
    r = cli("replay", str(tmp_path / "nope.jsonl"), "--db", str(tmp_path / "x.duckdb"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"shadowroute: {tmp_path / 'nope.jsonl'}: no such file"


def test_replay_joins_otel_spans_to_their_log_records_and_ends_what_waits(tmp_path: Path) -> None:
    from consumers.join import no_content_waited
    from shadowroute.demo.encoders.otlp import (
        build_logs,
        build_request,
        logs_to_otlp_json,
        request_id_of,
        to_otlp_json,
    )

    calls = [c for c in TrafficGenerator(seed=8).calls(80) if c.model == "gpt-4o"][:12]
    spans, logs = tmp_path / "spans.ndjson", tmp_path / "logs.ndjson"
    # The last two spans have no log records: the end of the files ends their wait.
    spans.write_bytes(b"\n".join(to_otlp_json(build_request(c, style="logs")) for c in calls) + b"\n")
    logs.write_bytes(b"\n".join(logs_to_otlp_json(build_logs(c)) for c in calls[:10]) + b"\n")
    db = tmp_path / "replay.duckdb"
    with ModelServer(ModelBehaviour(answer=lambda p: "ok")) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap="127.0.0.1:9", topic="unused",
                           group="g", db=db, model_url=ms.url, default_rate=1.0, math_rate=1.0)
        run = cli("replay", str(spans), str(logs), "--config", str(cfg), timeout=180)
        assert run.returncode == 0, run.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = dict(con.execute("SELECT request_id, ineligible_reason FROM requests").fetchall())
        assert rows == {request_id_of(c): None for c in calls[:10]} | {
            request_id_of(c): no_content_waited(60) for c in calls[10:]}
        answers = dict(con.execute("SELECT sample_id, response_text FROM samples").fetchall())
        assert answers == {request_id_of(c): c.task.answer for c in calls[:10]}
        assert con.execute("SELECT count(*) FROM otlp_pending").fetchall() == [(0,)]
    finally:
        con.close()
