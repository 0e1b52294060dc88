"""Cascades (FrugalGPT): the rule-based acceptance scorer, and its scores through the runner
into a real DuckDB file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from analytics.service_store import open_store
from analytics.store import Store
from consumers.errors import ConfigError
from shadow.cascade import CascadeConfig, RulesAcceptance, check_cascades
from shadow.client import ModelClient
from shadow.http import AiohttpClient
from shadow.routers import RandomRouterConfig, build_routers
from shadow.runner import ShadowRunner
from tests.shadow.test_runner import add_samples, finish, model, q
from tests.support.model_server import ModelBehaviour, ModelServer

RULES = RulesAcceptance(CascadeConfig(name="c", model="cheap", min_chars=3))


@pytest.mark.parametrize(("answer", "accept"), [
    ("The capital of France is Paris.", 1.0),
    ("", 0.0),
    ("I'm sorry, but I can't help with that.", 0.0),
    ("As an AI, I cannot browse the web.", 0.0),
    ("I think it is 42.", 0.4),
    ("It is 42. Confidence: 0.85", 0.85),
    ("42 (confidence 70%)", 0.7),
    ("ok", 0.5),
])
def test_rules_acceptance(answer: str, accept: float) -> None:
    assert RULES.accept([{"role": "user", "content": "q"}], answer) == pytest.approx(accept)


def test_cascade_config_checks() -> None:
    with pytest.raises(ConfigError) as e:
        check_cascades([CascadeConfig(name="c", model="gpt-4o-mini")], ["cheap"])
    assert str(e.value) == "cascades[0].model: 'gpt-4o-mini' is not one of the cheap models (cheap)"
    with pytest.raises(ConfigError) as e:
        check_cascades([CascadeConfig(name="c", model="cheap", refusal_patterns=("(",))],
                       ["cheap"])
    assert str(e.value).startswith("cascades[0].refusal_patterns[0]: not a regular expression")
    with pytest.raises(ConfigError) as e:
        check_cascades([CascadeConfig(name="c", model="cheap"),
                        CascadeConfig(name="c", model="cheap")], ["cheap"])
    assert str(e.value) == "cascades[1].name: duplicate cascade name 'c'"


def test_acceptance_scores_are_written_with_the_results(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 6)
    store.close()

    def answer(prompt: str) -> str:  # refuses every third question
        n = int(prompt.split()[2])
        return "I'm sorry, I can't answer that." if n % 3 == 0 else str(n + 1)

    async def main(url: str) -> None:
        st = open_store(db, "thread")
        try:
            async with AiohttpClient() as http:
                runner = ShadowRunner(st, build_routers((RandomRouterConfig("random"),)),
                                      [ModelClient(model(url), http)], concurrency=4,
                                      flush_every_s=0.05,
                                      cascades=[RulesAcceptance(CascadeConfig("refusals",
                                                                              "cheap"))])
                await finish(runner, asyncio.create_task(runner.run()), st)
        finally:
            st.close()

    with ModelServer(ModelBehaviour(answer=answer)) as ms:
        asyncio.run(main(ms.url))
    rows = q(db, "SELECT sample_id, cascade, model, accept FROM cascade_scores ORDER BY 1")
    assert rows == [(f"s{i:04d}", "refusals", "cheap", 0.0 if i % 3 == 0 else 1.0)
                    for i in range(6)]
