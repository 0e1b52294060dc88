"""A learned router through the broker and the running service: labels accumulate, the scheduler
trains a first version, out-of-fold scores appear, `savings` shows it beside random and oracle,
and a second version trained later scores only samples from after its training cutoff."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest

from analytics import lake
from shadow import learned
from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from shadowroute.service import Service
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer


def records(start: int, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        hard = rng.random() < 0.4
        verb = "prove that the sum of" if hard else "add"
        out.append(orjson.dumps({
            "request_id": f"r-{i}", "ts": 1764244800 + i,
            "request": {"model": "gpt-4o", "messages": [
                {"role": "user", "content": f"Please {verb} {i} and 1. {rng.choice('xyz')}"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": str(i + 1)},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 20, "completion_tokens": 2}},
            "cost_usd": 0.001, "tags": {"feature": "math"}}))
    return out


def right(prompt: str) -> str:
    return str(int(prompt.split(" and ")[0].split()[-1]) + 1)


def cheap(prompt: str) -> str:
    n = int(prompt.split(" and ")[0].split()[-1])
    return str(n + 9) if "prove" in prompt else str(n + 1)  # wrong on the hard ones


def test_a_learned_router_through_the_service(broker: Broker, topic: str, db_path: Path,
                                              tmp_path: Path) -> None:
    models = tmp_path / "models"

    async def main() -> None:
        await produce(broker.bootstrap, topic, records(0, 150, seed=1))
        # a second, dearer cheap model that is always right: a third tier for a policy
        with ModelServer(ModelBehaviour(answer=cheap)) as ms, \
                ModelServer(ModelBehaviour(answer=right)) as mid:
            path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                                group="g-learned", db=db_path, model_url=ms.url,
                                default_rate=1.0, math_rate=1.0, extra=f"""
[[routers]]
name = "learned"
kind = "learned"
model = "cheap"
bar = 1.0
min_rows = 100
retrain_every_s = 0
retrain_after_labels = 100
check_every_s = 0.3
folds = 4
models_dir = "{models}"

[[shadow.models]]
name = "mid"
base_url = "{mid.url}"
model = "mid"
input_per_mtok = 1.0
output_per_mtok = 4.0

[[policies]]
name = "three_tiers"
models = ["cheap", "mid"]
router = "learned"
thresholds = [0.3, 0.8]
""")
            # ... exporting to a lake at its stop
            svc = Service(load_config(path, env={
                "SHADOWROUTE_STORAGE__LAKE_DIR": str(tmp_path / "lake"),
                "SHADOWROUTE_STORAGE__INSTANCE_ID": "e2e-1"}))
            task = asyncio.create_task(svc.run(install_signals=False))
            try:
                await wait_for_versions(models, 1, task)
                await produce(broker.bootstrap, topic, records(150, 150, seed=2))
                await wait_for_versions(models, 2, task)
                while (await svc.store.counts())["pending"] or not await consumed(svc, 300):
                    await asyncio.sleep(0.2)
            finally:
                svc.stop_event.set()
                await task

    asyncio.run(main())
    v1, v2 = learned.list_versions(models, "learned")[:2]
    assert v1.rows >= 100 and v2.rows >= v1.rows + 100 and v1.cv_auc is not None
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        by_version = dict(con.execute(
            "SELECT version, count(*) FROM router_scores WHERE router = 'learned' GROUP BY 1"
        ).fetchall())
        late = con.execute(
            "SELECT rs.version, min(r.ts) FROM router_scores rs "
            "JOIN requests r ON r.request_id = rs.sample_id "
            "WHERE rs.router = 'learned' AND rs.version IN ('v1', 'v2') GROUP BY 1").fetchall()
        routers = {r[0] for r in con.execute("SELECT DISTINCT router FROM savings").fetchall()}
        learned_rows = con.execute(
            "SELECT count(*) FROM savings WHERE router = 'learned' AND samples > 0").fetchone()
        costs = con.execute("SELECT router, kind, usd_per_call FROM router_costs ORDER BY 1"
                            ).fetchall()
        policy = con.execute("SELECT model, samples, quality FROM savings "
                             "WHERE router = 'three_tiers'").fetchall()
        shares = con.execute("SELECT model, share FROM tier_shares ORDER BY tier").fetchall()
        efficient = con.execute("SELECT count(*) FROM policy_frontier WHERE on_frontier"
                                ).fetchone()
    finally:
        con.close()
    # Out-of-fold scores for the samples before the first version; versions for the rest.
    assert by_version.get("oof-forward/4", 0) > 50 and by_version.get("v1", 0) > 0
    # Every sample a version scored came after that version's training cutoff.
    cutoffs = {v.tag: datetime.fromisoformat(v.cutoff) for v in (v1, v2)}
    for tag, first_ts in late:
        assert first_ts.replace(tzinfo=UTC) > cutoffs[tag], (tag, first_ts, cutoffs[tag])
    assert {"learned", "random", "oracle", "all_cheap"} <= routers and learned_rows[0] > 0
    # The service recorded what each configured router costs per call (none priced here).
    assert costs == [("learned", "learned", 0.0), ("random", "random", 0.0),
                     ("rules", "rules", 0.0)]
    # The lake the service wrote when it stopped holds what its file holds.
    merged = lake.merge(tmp_path / "lake", tmp_path / "merged.duckdb")
    assert merged["requests"] == 300 and merged["samples"] > 100
    assert (tmp_path / "lake" / "instance=e2e-1" / "samples.parquet").exists()
    # The multi-tier policy the service wrote at start, estimated beside the routers.
    ((model, samples, quality),) = policy
    assert model == "cheap>mid" and samples > 100 and 0.0 <= quality <= 1.0
    assert [m for m, _ in shares] == ["cheap", "mid", "frontier"]
    assert sum(s for _, s in shares) == pytest.approx(1.0) and efficient is not None
    assert efficient[0] > 0


async def wait_for_versions(models: Path, n: int, task: asyncio.Task[None]) -> None:
    for _ in range(600):
        if task.done():
            task.result()
        if len(learned.list_versions(models, "learned")) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no version {n} after 120 s")


async def consumed(svc: Service, n: int) -> bool:
    _, rows = svc.store.reads.query_table("SELECT coalesce(sum(next_offset), 0) FROM offsets")
    return bool(rows[0][0] >= n)
