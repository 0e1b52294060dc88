"""shadow.routers: the probability that the strong model is needed, in [0, 1]."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.routers import (
    ROUTER_KINDS,
    RandomRouter,
    RandomRouterConfig,
    RouteInput,
    RulesRouter,
    RulesRouterConfig,
    build_routers,
)

SETTINGS = settings(max_examples=200, deadline=None)


def score(router: Any, prompt: str = "", *, rid: str = "r-1", model: str = "gpt-4o",
          tags: dict[str, str] | None = None) -> float:
    return asyncio.run(router.score(RouteInput(rid, model, prompt, tags or {})))


def scores(router: Any, inputs: list[RouteInput]) -> list[float]:
    async def run() -> list[float]:
        return [await router.score(i) for i in inputs]
    return asyncio.run(run())


# -- random ----------------------------------------------------------------------------------

def test_random_router_is_deterministic_per_seed_and_id() -> None:
    a = RandomRouter(RandomRouterConfig(name="random", seed=1))
    b = RandomRouter(RandomRouterConfig(name="random", seed=1))
    c = RandomRouter(RandomRouterConfig(name="random", seed=2))
    assert a.name == "random"
    assert score(a, rid="x") == score(b, rid="x")
    assert score(a, rid="x") == score(a, "a different prompt", rid="x", model="o3")
    assert score(a, rid="x") != score(c, rid="x")
    assert score(a, rid="x") != score(a, rid="y")


def test_random_router_is_uniform() -> None:
    r = RandomRouter(RandomRouterConfig(name="random"))
    n = 10_000
    xs = scores(r, [RouteInput(f"req-{i}", "gpt-4o", "") for i in range(n)])
    assert all(0.0 <= x < 1.0 for x in xs)
    assert abs(sum(xs) / n - 0.5) < 5 * math.sqrt(1 / 12 / n)
    # Ten bins: chi-square with 9 degrees of freedom stays far below 40 (p < 1e-5).
    bins = [0] * 10
    for x in xs:
        bins[int(x * 10)] += 1
    chi2 = sum((b - n / 10) ** 2 / (n / 10) for b in bins)
    assert chi2 < 40


# -- rules -----------------------------------------------------------------------------------

def rules(**kw: Any) -> RulesRouter:
    return RulesRouter(RulesRouterConfig(name="rules", **kw))


def test_rules_length_part() -> None:
    r = rules(long_prompt_chars=100)
    assert score(r, "") == 0.0
    assert score(r, "x" * 50) == pytest.approx(0.25)
    assert score(r, "x" * 100) == pytest.approx(0.5)
    assert score(r, "x" * 10_000) == pytest.approx(0.5)  # the length part is capped at 0.5


def test_rules_strong_keyword_adds_half() -> None:
    r = rules(long_prompt_chars=100, strong_keywords=("prove", "step by step"))
    assert score(r, "Prove it" + "x" * 42) == pytest.approx(0.75)
    assert score(r, "think STEP BY STEP") == pytest.approx(0.5 + 0.5 * 18 / 100)
    assert score(r, "x" * 200 + " prove") == pytest.approx(1.0)
    # Whole words only.
    assert score(r, "improvement" + "x" * 39) == pytest.approx(0.25)


def test_rules_weak_keyword_halves_unless_a_strong_one_is_present() -> None:
    r = rules(long_prompt_chars=100, strong_keywords=("prove",), weak_keywords=("extract",))
    prompt = "Extract the city" + "x" * 34  # 50 characters
    assert score(r, prompt) == pytest.approx(0.125)
    prompt = "Extract and prove " + "x" * 32
    assert score(r, prompt) == pytest.approx(0.75)


@pytest.mark.parametrize(("kw", "request_kw"), [
    ({"force_strong_tags": {"tenant": ("acme",)}}, {"tags": {"tenant": "acme"}}),
    ({"force_strong_models": ("o3",)}, {"model": "o3"}),
    ({"force_strong_keywords": ("legal",)}, {"prompt": "a LEGAL question"}),
    ({"force_strong_keywords": ("c++",)}, {"prompt": "fix my c++ code"}),
    ({"force_strong_keywords": ("c++",)}, {"prompt": "c++"}),
    ({"force_strong_keywords": ("#urgent",)}, {"prompt": "please look #urgent"}),
])
def test_rules_forced_strong_gives_one(kw: dict[str, Any], request_kw: dict[str, Any]) -> None:
    r = rules(weak_keywords=("question", "fix", "please"), **kw)
    prompt = request_kw.pop("prompt", "a short question")
    assert score(r, prompt, **request_kw) == 1.0


def test_rules_force_only_matching_requests() -> None:
    r = rules(long_prompt_chars=100, force_strong_tags={"tenant": ("acme",)},
              force_strong_models=("o3",), force_strong_keywords=("legal", "c++"))
    assert score(r, "x" * 10, tags={"tenant": "other", "feature": "acme"}) == pytest.approx(0.05)
    assert score(r, "x" * 10, model="gpt-4o") == pytest.approx(0.05)
    assert score(r, "paralegal" + "x") == pytest.approx(0.05)
    assert score(r, "c+" + "x" * 8) == pytest.approx(0.05)


def test_rules_ignores_empty_keywords() -> None:
    # An empty keyword (e.g. a trailing comma in an environment list) must not match everything.
    r = rules(long_prompt_chars=100, strong_keywords=("",), weak_keywords=("",),
              force_strong_keywords=("",))
    assert score(r, "x" * 50) == pytest.approx(0.25)
    assert score(r, "two words and more" + "x" * 32) == pytest.approx(0.25)


def test_rules_zero_length_setting_does_not_divide_by_zero() -> None:
    assert score(rules(long_prompt_chars=0), "x") == 0.5


words = st.sampled_from(["prove", "extract", "legal", "c++", "step by step", "x", "", " ", "\\b"])


@SETTINGS
@given(prompt=st.text(max_size=300) | st.lists(words, max_size=10).map(" ".join),
       long=st.integers(-5, 500),
       strong=st.lists(words, max_size=3), weak=st.lists(words, max_size=3),
       force=st.lists(words, max_size=2), tags=st.dictionaries(st.text(max_size=3), st.text(max_size=3)))
def test_rules_score_is_in_unit_interval(prompt: str, long: int, strong: list[str], weak: list[str],
                                         force: list[str], tags: dict[str, str]) -> None:
    r = rules(long_prompt_chars=long, strong_keywords=tuple(strong), weak_keywords=tuple(weak),
              force_strong_keywords=tuple(force), force_strong_tags={"t": ("a",)})
    s = score(r, prompt, tags=tags)
    assert 0.0 <= s <= 1.0
    assert s == score(r, prompt, tags=tags)


@SETTINGS
@given(st.text(max_size=40), st.integers(-(2**31), 2**31))
def test_random_score_is_in_unit_interval(rid: str, seed: int) -> None:
    r = RandomRouter(RandomRouterConfig(name="random", seed=seed))
    assert 0.0 <= score(r, rid=rid) < 1.0


def test_build_routers_by_kind() -> None:
    assert set(ROUTER_KINDS) == {"http", "learned", "random", "rules"}
    built = build_routers((RandomRouterConfig(name="a"),
                           RulesRouterConfig(name="b")))
    assert [type(r) for r in built] == [RandomRouter, RulesRouter]
    assert [r.name for r in built] == ["a", "b"]
