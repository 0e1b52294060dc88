"""The noise floor (`shadow.noise_floor`): the frontier model asked again, in shadow, on a share
of samples, through real model servers on 127.0.0.1 and a real DuckDB file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from analytics.service_store import open_store
from analytics.store import Store
from consumers.errors import ConfigError
from consumers.sampling import UnitHash
from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import ModelConfig
from shadow.http import AiohttpClient
from shadow.routers import RandomRouterConfig, build_routers
from shadow.runner import ShadowRunner
from shadowroute.config import load_config
from tests.shadow.test_runner import add_samples, answer, finish, model, q
from tests.support.model_server import ModelBehaviour, ModelServer


def frontier_answer(prompt: str) -> str:
    # The frontier disagrees with its production answer on every third question.
    n = int(prompt.split()[2])
    return str(n + 1) if n % 3 else str(n + 2)


def run(db: Path, cheap_url: str, frontier_url: str | None, share: float,
        budget: Budget | None = None) -> None:
    async def main() -> None:
        st = open_store(db, "thread")
        try:
            async with AiohttpClient() as http:
                floor = ({} if frontier_url is None else {"gpt-4o": ModelClient(
                    ModelConfig(name="gpt-4o", base_url=frontier_url, input_per_mtok=2.5,
                                output_per_mtok=10.0, max_tokens=16, timeout_s=5),
                    http, budget=budget, backoff_s=0.01)})
                runner = ShadowRunner(st, build_routers((RandomRouterConfig("random"),)),
                                      [ModelClient(model(cheap_url), http, budget=budget)],
                                      concurrency=4, flush_every_s=0.05, floor=floor,
                                      floor_share=share)
                await finish(runner, asyncio.create_task(runner.run()), st)
        finally:
            st.close()
    asyncio.run(main())


def test_the_frontier_asked_again_on_a_share_of_samples_gives_the_floor(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    ids = add_samples(store, 30)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as cheap, \
            ModelServer(ModelBehaviour(answer=frontier_answer)) as frontier:
        run(db, cheap.url, frontier.url, share=0.5)
        asked = len(frontier.behaviour.requests)
    chosen = sorted(i for i in ids if UnitHash("noise-floor")(i) < 0.5)
    assert 5 < len(chosen) < 25 and asked == len(chosen)
    rows = q(db, "SELECT sample_id, model, scorer, scorer_used, value, error, spend_usd > 0 "
                 "FROM noise_floor ORDER BY 1")
    assert [r[0] for r in rows] == chosen
    for sid, m, scorer, used, value, error, paid in rows:
        n = int(sid[1:])
        assert (m, scorer, used, error, paid) == ("gpt-4o", "final_number", "final_number", None,
                                                 True)
        assert value == (1.0 if n % 3 else 0.0)
    # The floor's calls are itemised with every other attempt (the same budget's spend).
    assert q(db, "SELECT count(*) FROM shadow_attempts WHERE model = 'gpt-4o'") == [(len(chosen),)]
    # It never enters the estimates as a cheap candidate.
    assert q(db, "SELECT DISTINCT model FROM completed_outcomes") == [("cheap",)]
    expected = sum(1.0 if int(s[1:]) % 3 else 0.0 for s in chosen) / len(chosen)
    ((stratum, used, n, floor, se),) = q(db, "SELECT * FROM noise_floor_by_segment")
    assert (stratum, used, n) == ("gpt-4o|math", "final_number", len(chosen))
    assert floor == pytest.approx(expected) and se > 0
    ((m, quality, floor_n, floor2, rel),) = q(
        db, "SELECT model, quality, floor_n, floor, quality_vs_floor FROM quality_vs_floor")
    assert (m, quality, floor_n) == ("cheap", 1.0, len(chosen))
    assert floor2 == pytest.approx(expected) and rel == 1.0


def test_no_floor_without_a_frontier_endpoint_or_share(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 8)
    store.close()
    with ModelServer(ModelBehaviour(answer=answer)) as cheap, \
            ModelServer(ModelBehaviour(answer=frontier_answer)) as frontier:
        run(db, cheap.url, frontier.url, share=0.0)
        run(db, cheap.url, None, share=1.0)
        assert frontier.behaviour.requests == []
    assert q(db, "SELECT count(*) FROM noise_floor") == [(0,)]
    assert q(db, "SELECT count(*) FROM quality_vs_floor WHERE floor IS NULL") == [(1,)]


def test_the_budget_counts_floor_calls_and_a_restart_sees_their_spend(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 6)
    store.close()
    budget = Budget(usd_per_hour=10.0)
    with ModelServer(ModelBehaviour(answer=answer)) as cheap, \
            ModelServer(ModelBehaviour(answer=frontier_answer)) as frontier:
        run(db, cheap.url, frontier.url, share=1.0, budget=budget)
    store = Store(db)
    try:
        floor_usd = store.fetch("SELECT sum(spend_usd) FROM noise_floor")[0][0]
        cheap_usd = store.fetch("SELECT sum(spend_usd) FROM shadow_calls")[0][0]
        seeded = sum(usd for _, usd in store.recent_shadow_spend())
    finally:
        store.close()
    assert floor_usd > 0 and seeded == pytest.approx(floor_usd + cheap_usd)


def test_noise_floor_config() -> None:
    cfg = load_config(None, env={
        "SHADOWROUTE_SHADOW__NOISE_FLOOR__SHARE": "0.05",
        "SHADOWROUTE_SHADOW__NOISE_FLOOR__MODELS__0__NAME": "gpt-4o",
        "SHADOWROUTE_SHADOW__NOISE_FLOOR__MODELS__0__BASE_URL": "https://api.openai.com/v1"})
    assert cfg.shadow.noise_floor.share == 0.05
    assert cfg.shadow.noise_floor.models[0].name == "gpt-4o"
    with pytest.raises(ConfigError) as e:
        load_config(None, env={"SHADOWROUTE_SHADOW__NOISE_FLOOR__SHARE": "1.5"})
    assert str(e.value) == "shadow.noise_floor.share: must be between 0 and 1, got 1.5"
    with pytest.raises(ConfigError) as e:
        load_config(None, env={"SHADOWROUTE_SHADOW__NOISE_FLOOR__MODELS__0__NAME": "gpt-4o"})
    assert str(e.value) == "shadow.noise_floor.models[0].base_url: is required"
