"""ShadowRunner on a real DuckDB file and a real local model server: sample statuses, shedding,
restart safety, budget seeding, reuse records and schema upgrades."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from analytics.service_store import StoreThread, open_store
from analytics.store import Store
from analytics.store_process import StoreProcess
from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import ModelConfig
from shadow.http import AiohttpClient
from shadow.results import SAMPLE_STATUSES
from shadow.routers import RandomRouterConfig, build_routers
from shadow.runner import ShadowRunner
from tests.support.model_server import ModelBehaviour, ModelServer, closed_port_url


def add_samples(store: Store, n: int, *, start: int = 0, tools: bool = False,
                prompt: str | None = None) -> list[str]:
    ids = []
    for i in range(start, start + n):
        sid = f"s{i:04d}"
        ids.append(sid)
        text = prompt or f"What is {i} + 1?"
        store.con.execute(
            "INSERT INTO requests (request_id, model, stratum, eligible, sampled, sample_rate, "
            "cost_usd) VALUES (?, 'gpt-4o', 'gpt-4o|math', true, true, 1.0, 0.001)", [sid])
        store.con.execute(
            "INSERT INTO samples (sample_id, stratum, frontier_model, messages, params, tags, "
            "response_text, frontier_cost_usd, scorer) VALUES (?, 'gpt-4o|math', 'gpt-4o', ?, ?, "
            "'{\"feature\": \"math\"}', ?, 0.001, 'final_number')",
            [sid, orjson.dumps([{"role": "user", "content": text}]).decode(),
             orjson.dumps({"temperature": 0, "max_tokens": 16, "tools": tools}).decode(),
             str(i + 1)])
    return ids


def model(url: str, **kw: Any) -> ModelConfig:
    return ModelConfig(name="cheap", base_url=url, input_per_mtok=1.0, output_per_mtok=2.0,
                       max_tokens=16, timeout_s=5, **kw)


async def finish(runner: ShadowRunner, task: asyncio.Task[None], store: StoreThread | StoreProcess,
                 timeout_s: float = 60) -> None:
    """Drain the runner until no sample is pending, then stop it."""
    async def idle() -> bool:
        return (await store.counts())["pending"] == 0

    await asyncio.wait_for(runner.drain(idle), timeout_s)
    await runner.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_all(db: Path, models: Sequence[ModelConfig], *, budget: Budget | None = None,
                  max_queue: int | None = None, concurrency: int = 4, replay_tools: bool = False,
                  writer: str = "thread", **client_kw: Any) -> ShadowRunner:
    store = open_store(db, writer)
    try:
        async with AiohttpClient() as http:
            clients = [ModelClient(m, http, budget=budget, backoff_s=0.01, **client_kw)
                       for m in models]
            runner = ShadowRunner(store, build_routers((RandomRouterConfig("random"),)),
                                  clients, concurrency=concurrency, flush_every_s=0.05,
                                  max_queue=max_queue, replay_tools=replay_tools)
            await finish(runner, asyncio.create_task(runner.run()), store)
            return runner
    finally:
        store.close()


def q(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def answer(prompt: str) -> str:
    return str(int(prompt.split()[2]) + 1)


WRITERS = pytest.mark.parametrize("writer", ["thread", "process"])  # storage.writer


@WRITERS
def test_every_sample_ends_in_one_status_and_one_row_per_model(tmp_path: Path, writer: str
                                                                ) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 6)
    add_samples(store, 2, start=100, tools=True)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as ok, \
            ModelServer(ModelBehaviour(fail_next=[400] * 100)) as bad:
        asyncio.run(run_all(db, [model(ok.url), ModelConfig(name="broken", base_url=bad.url)],
                            writer=writer))
    statuses = dict(q(db, "SELECT sample_id, status FROM samples"))
    assert set(statuses.values()) <= set(SAMPLE_STATUSES)
    assert [statuses[f"s{i:04d}"] for i in range(6)] == ["done"] * 6
    assert statuses["s0100"] == statuses["s0101"] == "skipped_tools"
    rows = q(db, "SELECT sample_id, model, outcome, deployment, error IS NULL, spend_usd > 0 "
                 "FROM shadow_calls ORDER BY 1, 2")
    assert len(rows) == 12  # one row per (sample, model), whatever happened
    for _sid, m, outcome, dep, ok_, paid in rows:
        if m == "cheap":
            assert (outcome, dep, ok_, paid) == ("ok", "cheap#0", True, True)
        else:
            assert (outcome, dep, ok_, paid) == ("error", "broken#0", False, False)
    # The estimator counts only what answered: 6 done samples, and only for `cheap`.
    assert q(db, "SELECT model, count(*) FROM sample_outcomes GROUP BY ALL") == [("cheap", 6)]
    err = q(db, "SELECT error FROM shadow_calls WHERE model = 'broken' LIMIT 1")[0][0]
    assert err.startswith("broken#0: HTTP 400: ")


def test_budget_and_unavailable_skips(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 4)
    store.close()
    # Each call costs $52e-6 (20 prompt + 16 output tokens) and reserves ~$122e-6 (a ~90-byte
    # body + 16 output tokens): under a $200e-6 cap two calls fit, then the budget is exhausted.
    with ModelServer(ModelBehaviour(answer=answer, usage=lambda body, text: (20, 16))) as ms:
        asyncio.run(run_all(db, [model(ms.url)], budget=Budget(usd_per_day=200e-6),
                            concurrency=1))
    counts = dict(q(db, "SELECT status, count(*) FROM samples GROUP BY ALL"))
    assert counts == {"done": 2, "skipped_budget": 2}
    assert q(db, "SELECT sum(spend_usd) FROM shadow_calls")[0][0] == pytest.approx(104e-6)
    reason = q(db, "SELECT skip_reason FROM samples WHERE status = 'skipped_budget' LIMIT 1")[0][0]
    assert "budget exhausted" in reason
    assert q(db, "SELECT count(*) FROM sample_outcomes")[0][0] == counts["done"]

    db2 = tmp_path / "u.duckdb"
    store = Store(db2)
    add_samples(store, 3)
    store.close()
    # The first call fails and puts the only deployment on cooldown; the next ones find the
    # whole group down for longer than max_wait_s.
    asyncio.run(run_all(db2, [model(closed_port_url())], allowed_fails=1, cooldown_s=60,
                        max_wait_s=0.2, concurrency=1))
    counts = dict(q(db2, "SELECT status, count(*) FROM samples GROUP BY ALL"))
    assert counts == {"skipped_failed": 1, "skipped_unavailable": 2}


def test_backlog_above_max_queue_sheds_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    ids = add_samples(store, 40)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as ms:
        runner = asyncio.run(run_all(db, [model(ms.url)], max_queue=10, concurrency=2))
    statuses = dict(q(db, "SELECT sample_id, status FROM samples"))
    assert [statuses[i] for i in ids[:10]] == ["done"] * 10
    assert [statuses[i] for i in ids[10:]] == ["skipped_shed"] * 30
    assert runner.shed_total == 30
    # The weights stay right: N_h still counts all 40 requests, n_h only the 10 done.
    assert q(db, "SELECT DISTINCT n_stratum, n_samples FROM sample_outcomes") == [(40, 10)]


@WRITERS
def test_a_restart_resumes_pending_samples_and_writes_each_result_once(tmp_path: Path,
                                                                       writer: str) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 30)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer, delay_s=0.05)) as ms:
        async def interrupted() -> None:
            st = open_store(db, writer)
            async with AiohttpClient() as http:
                runner = ShadowRunner(st, [], [ModelClient(model(ms.url), http)], concurrency=3,
                                      flush_every_s=0.05)
                task = asyncio.create_task(runner.run())
                while runner.completed < 5:
                    await asyncio.sleep(0.01)
                await runner.stop()  # cancels calls in flight: their samples stay pending
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            st.close()

        asyncio.run(interrupted())
        assert 5 <= q(db, "SELECT count(*) FROM samples WHERE status = 'done'")[0][0] < 30
        asyncio.run(run_all(db, [model(ms.url)], writer=writer))
    assert q(db, "SELECT count(*) FROM samples WHERE status = 'done'") == [(30,)]
    assert q(db, "SELECT count(*), count(DISTINCT (sample_id, model)) FROM shadow_calls") == [(30, 30)]


def test_reuse_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 5, prompt="What is 41 + 1?")
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as ms:
        asyncio.run(run_all(db, [model(ms.url)], reuse_window_s=600))
        assert len(ms.behaviour.requests) == 1
    rows = q(db, "SELECT outcome, reused_from, spend_usd, cost_usd FROM shadow_calls ORDER BY sample_id")
    first = rows[0]
    assert first[0] == "ok" and first[1] is None
    paid_by = q(db, "SELECT sample_id FROM shadow_calls WHERE outcome = 'ok'")[0][0]
    for outcome, reused_from, spend, cost in rows[1:]:
        assert (outcome, reused_from, spend, cost) == ("reused", paid_by, 0.0, first[3])
    assert q(db, "SELECT count(*) FROM sample_outcomes")[0][0] == 5


def test_spend_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    store.con.execute("INSERT INTO shadow_calls (sample_id, model, cost_usd, spend_usd, called_at) "
                      "VALUES ('a', 'm', 0.1, 0.3, current_timestamp::TIMESTAMP), "
                      "('b', 'm', 0.2, NULL, current_timestamp::TIMESTAMP - INTERVAL 2 HOUR), "
                      "('c', 'm', 5.0, 5.0, current_timestamp::TIMESTAMP - INTERVAL 2 DAY)")
    budget = Budget(usd_per_hour=1.0, usd_per_day=2.0)
    budget.seed(store.recent_shadow_spend())
    store.close()
    assert budget.spent_usd("hour") == pytest.approx(0.3)
    assert budget.spent_usd("day") == pytest.approx(0.5)


def test_shedding_leaves_the_connection_usable(tmp_path: Path) -> None:
    from analytics.frames import results_to_frames
    from shadow.results import SampleResult

    store = Store(tmp_path / "s.duckdb")
    add_samples(store, 5)
    assert store.shed_pending(3, "x") == (5, 2)
    assert store.shed_pending(3, "x") == (3, 0)
    store.write_results(results_to_frames([SampleResult("s0000", "done")]))  # no unfinished result
    assert store.fetch("SELECT status FROM samples WHERE sample_id = 's0000'") == [("done",)]
    store.close()


def test_results_are_written_when_flush_at_wait_not_only_on_the_timer(
        tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 20)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as ms:
        async def go() -> int:
            st = StoreThread(Store(db))
            try:
                async with AiohttpClient() as http:
                    runner = ShadowRunner(st, [], [ModelClient(model(ms.url), http)],
                                          concurrency=4, flush_every_s=60, flush_at=4, ramp_s=0.0)
                    task = asyncio.create_task(runner.run())

                    async def written(n: int) -> None:
                        while runner.completed < n:
                            await asyncio.sleep(0.01)

                    await asyncio.wait_for(written(16), 20)  # the 60 s timer never fired
                    early = runner.completed
                    await finish(runner, task, st, 20)  # the rest, at once
                    return early
            finally:
                st.close()

        early = asyncio.run(go())
    assert early >= 16
    assert q(db, "SELECT count(*) FROM samples WHERE status = 'done'") == [(20,)]


def test_results_written_again_are_stored_once(tmp_path: Path) -> None:
    """A write whose commit landed but was retried (or a result written twice) must neither
    fail nor duplicate: the plain INSERT meets the keys and the batch is redone skipping them."""
    from analytics.frames import results_to_frames
    from shadow.results import CallResult, SampleResult

    store = Store(tmp_path / "s.duckdb")
    add_samples(store, 3)

    def result(sid: str, answer: str) -> SampleResult:
        call = CallResult("cheap", answer, 10, 0, 2, 0.001, 50.0, None, 1, deployment="d0")
        return SampleResult(sid, "done", None, [("random", 0.5, None)], [call],
                            [("cheap", "exact_match", 1.0, "exact_match", None)],
                            router_calls=[("random", 0.01, None)])

    store.write_results(results_to_frames([result("s0000", "first")]))
    store.write_results(results_to_frames([result("s0000", "again"), result("s0001", "new")]))
    assert store.fetch("SELECT sample_id, answer, deployment FROM shadow_calls ORDER BY 1") == [
        ("s0000", "first", "d0"), ("s0001", "new", "d0")]
    for query in ("SELECT sample_id, count(*) FROM router_scores GROUP BY 1 ORDER BY 1",
                  "SELECT sample_id, count(*) FROM router_calls GROUP BY 1 ORDER BY 1",
                  "SELECT sample_id, count(*) FROM scores GROUP BY 1 ORDER BY 1"):
        assert store.fetch(query) == [("s0000", 1), ("s0001", 1)]
    assert store.fetch("SELECT sample_id, status FROM samples ORDER BY 1") == [
        ("s0000", "done"), ("s0001", "done"), ("s0002", "pending")]
    store.close()


def test_an_old_file_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE shadow_calls (sample_id VARCHAR, model VARCHAR, answer VARCHAR, "
                "input_tokens BIGINT, cached_input_tokens BIGINT, output_tokens BIGINT, "
                "cost_usd DOUBLE, latency_ms DOUBLE, error VARCHAR, attempts INTEGER, "
                "called_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (sample_id, model))")
    con.execute("INSERT INTO shadow_calls (sample_id, model, cost_usd) VALUES ('x', 'm', 0.5)")
    con.close()
    Store(db).close()
    cols = {r[0] for r in q(db, "DESCRIBE shadow_calls")}
    assert {"deployment", "outcome", "spend_usd", "usage_estimated", "reused_from"} <= cols
    assert q(db, "SELECT cost_usd, spend_usd FROM shadow_calls") == [(0.5, None)]


class _NoSource:
    """A source with nothing to read (the service needs one; this test is about metrics)."""

    async def start(self) -> None: ...
    async def batch(self) -> list[Any]:
        return []
    async def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...
    async def stop(self) -> None: ...


def test_metrics_of_the_shadow_stage(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from analytics.config import StorageConfig
    from shadow.results import CallResult, SampleResult
    from shadowroute.config import Config
    from shadowroute.service import Service

    async def go() -> str:
        svc = Service(Config(storage=StorageConfig(db_path=str(tmp_path / "m.duckdb"))),
                      source=_NoSource())
        try:
            svc.budget = Budget(usd_per_hour=1.0)
            svc.budget.settle(svc.budget.try_reserve(0.4), 0.25)  # type: ignore[arg-type]
            svc._on_result(SampleResult("s1", "done", calls=[
                CallResult("cheap", "4", 10, 0, 1, 0.001, 120.0, None, 1, "ok", "cheap#0", 0.001),
                CallResult("other", "4", 10, 0, 1, 0.001, 120.0, None, 0, "reused", "o#0", 0.0,
                           reused_from="s0")],
                router_calls=[("random", 0.01, None), ("ext", 2000.0, "no answer: timeout")],
                floor=[(CallResult("gpt-4o", "4", 10, 0, 1, 0.01, 300.0, None, 1, "ok",
                                   "gpt-4o#0", 0.01), "exact_match", "exact_match", 1.0, None)]))
            svc._on_result(SampleResult("s2", "skipped_budget", calls=[
                CallResult("cheap", None, None, None, None, None, 0.1, "budget", 0, "budget")]))
            svc._on_shed(3)
            async with AiohttpClient() as http:
                client = ModelClient(model("http://127.0.0.1:9/v1"), http)
                client.deployments[0].cooldown_until = 1e18
                svc.runner = ShadowRunner(svc.store, [], [client], concurrency=1)
                svc._shadow_gauges()
            return generate_latest(svc.metrics.registry).decode()
        finally:
            svc.store.close()

    text = asyncio.run(go())
    for line in ('shadowroute_shadow_calls_total{model="cheap",outcome="ok"} 1.0',
                 'shadowroute_shadow_calls_total{model="cheap",outcome="budget"} 1.0',
                 'shadowroute_shadow_reused_total{model="other"} 1.0',
                 'shadowroute_shadow_spend_usd_total{model="cheap"} 0.001',
                 'shadowroute_shadow_spend_usd_total{model="gpt-4o"} 0.01',
                 'shadowroute_noise_floor_calls_total{model="gpt-4o",outcome="ok"} 1.0',
                 'shadowroute_router_calls_total{outcome="ok",router="random"} 1.0',
                 'shadowroute_router_calls_total{outcome="error",router="ext"} 1.0',
                 'shadowroute_shadow_budget_left_usd{window="hour"} 0.75',
                 'shadowroute_shadow_budget_left_usd{window="day"} +Inf',
                 'shadowroute_shadow_budget_spent_usd{window="hour"} 0.25',
                 'shadowroute_shadow_shed_total 3.0',
                 'shadowroute_shadow_deployment_cooldown{deployment="cheap#0",model="cheap"} 1.0',
                 'shadowroute_shadow_queue_depth 0.0',
                 'shadowroute_samples_finished_total{status="skipped_budget"} 1.0',
                 'shadowroute_samples_finished_total{status="skipped_shed"} 3.0'):
        assert line in text, line
    assert 'shadowroute_shadow_call_seconds_count{model="cheap"} 1.0' in text
    assert 'shadowroute_shadow_call_seconds_count{model="other"}' not in text


class FlakyStore(StoreThread):
    """The real store, whose first `fail` writes raise (a full disk, a locked file)."""

    def __init__(self, store: Store, fail: int) -> None:
        super().__init__(store)
        self.fail = fail
        self.attempts = 0

    async def write(self, results: Sequence[Any]) -> None:
        self.attempts += 1
        if self.attempts <= self.fail:
            raise duckdb.IOException("injected: disk full")
        await super().write(results)


def test_failing_writes_hold_new_work_and_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 60)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as ms:
        async def go() -> tuple[int, int]:
            st = FlakyStore(Store(db), fail=3)
            try:
                async with AiohttpClient() as http:
                    runner = ShadowRunner(st, [], [ModelClient(model(ms.url), http)],
                                          concurrency=4, flush_every_s=0.02, flush_max=10,
                                          ramp_s=0.0)
                    task = asyncio.create_task(runner.run())
                    most_unwritten = 0
                    while st.attempts <= st.fail:  # while writes fail, work stops piling up
                        most_unwritten = max(most_unwritten, len(runner._buffer))
                        await asyncio.sleep(0.005)
                    await finish(runner, task, st, 30)
                    return most_unwritten, len(ms.behaviour.requests)
            finally:
                st.close()

        most_unwritten, calls = asyncio.run(go())
    # At most flush_max results plus the calls in flight when it filled: no worker starts a
    # new call while flush_max results wait for a write.
    assert most_unwritten <= 10 + 4
    assert calls == 60  # every sample called once: none re-run after a failed write
    assert q(db, "SELECT count(*), count(DISTINCT sample_id) FROM shadow_calls") == [(60, 60)]
    assert q(db, "SELECT count(*) FROM samples WHERE status = 'done'") == [(60,)]


def test_with_replay_tools_the_replay_offers_the_tools_production_offered(tmp_path: Path) -> None:
    # A real OpenAI chat record that offered a tool, ingested with shadow.replay_tools = true,
    # sampled, stored, and replayed: the cheap model is offered the same tool and tool_choice.
    from consumers.ingest import Ingestor
    from consumers.records import RawMessage
    from shadowroute.config import load_config
    from tests.consumers.test_formats import record

    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}
    rec = record()
    rec["request"].update(tools=[tool], tool_choice="auto")
    cfg = load_config(None, env={"SHADOWROUTE_SHADOW__REPLAY_TOOLS": "true",
                                 "SHADOWROUTE_SAMPLING__DEFAULT_RATE": "1.0"})
    batch = Ingestor(cfg).process([RawMessage("logs", 0, 0, orjson.dumps(rec))])
    assert batch.samples.height == 1, batch.requests.to_dicts()
    db = tmp_path / "s.duckdb"
    store = Store(db)
    store.write_ingest(batch)
    store.close()
    with ModelServer(ModelBehaviour(answer=lambda p: "4")) as ms:
        asyncio.run(run_all(db, [model(ms.url)], replay_tools=True))
        [body] = ms.behaviour.requests
    assert body["tools"] == [tool] and body["tool_choice"] == "auto"
    assert body["messages"] == rec["request"]["messages"] and body["temperature"] == 0


def test_keys_never_reach_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A provider that repeats the Authorization header in its error bodies: the errors stored
    # for the samples name the failure, never the key, in any text column of any table.
    secret = "sk-duck-secret-0123456789"
    monkeypatch.setenv("CHEAP_KEY", secret)
    db = tmp_path / "s.duckdb"
    st = Store(db)
    add_samples(st, 4)
    st.close()
    behaviour = ModelBehaviour(script=[400, 401, 500, 500, 500], echo_auth=True)
    with ModelServer(behaviour) as ms:
        asyncio.run(run_all(db, [model(ms.url, api_key_env="CHEAP_KEY")], concurrency=1,
                            cooldown_s=0.05))
        assert any(secret in (h.get("authorization") or "") for h in behaviour.headers)
    con = duckdb.connect(str(db), read_only=True)
    try:
        errors = [e for (e,) in con.execute("SELECT error FROM shadow_calls WHERE error IS NOT NULL"
                                            ).fetchall()]
        assert len(errors) >= 2 and all(secret not in e for e in errors)
        assert any("Bearer ***" in e for e in errors)  # the echo was there, redacted
        cols = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE data_type = 'VARCHAR' AND table_schema = 'main'").fetchall()
        for table, col in cols:  # names from information_schema: identifiers cannot be bound
            q = f'SELECT count(*) FROM "{table}" WHERE contains("{col}", ?)'  # noqa: S608
            hits = con.execute(q, [secret]).fetchall()[0][0]
            assert hits == 0, f"{table}.{col} holds the key"
    finally:
        con.close()
