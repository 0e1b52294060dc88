"""The LLM judge (`shadow.judge`): parsing its output, and judging through real model servers on
127.0.0.1 (a scripted judge), the runner, the budget and a real DuckDB file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analytics.service_store import open_store
from analytics.store import Store
from consumers.errors import ConfigError
from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import JudgeConfig, ModelConfig
from shadow.http import AiohttpClient
from shadow.judge import Judge, Unparseable, clip, parse_grade, parse_verdict, request_text
from shadow.routers import RandomRouterConfig, build_routers
from shadow.runner import ShadowRunner
from shadowroute.config import load_config
from tests.shadow.test_runner import add_samples, finish, model, q
from tests.support.model_server import ModelBehaviour, ModelServer

# -- parsing ----------------------------------------------------------------------------------


def test_a_grade_is_the_last_bracketed_number_from_1_to_10() -> None:
    assert parse_grade("Good but misses a step. [[7]]") == 7.0
    assert parse_grade("I first thought [[3]], but on reflection [[8]]") == 8.0
    assert parse_grade("Rating: [[ 9.5 ]]") == 9.5
    assert parse_grade("The answer is right.\nGrade: 6") == 6.0  # the loose form, when no [[N]]
    assert parse_grade("Score: 4/10") == 4.0
    for bad in ("It is correct.", "[[11]]", "[[0]]", "[[A]]", ""):
        with pytest.raises(Unparseable):
            parse_grade(bad)


def test_a_verdict_is_the_last_bracketed_letter() -> None:
    assert parse_verdict("B is more accurate. [[B]]") == "B"
    assert parse_verdict("[[A]] ... no, they are equal: [[C]]") == "C"
    for bad in ("A is better.", "[[D]]", "[[1]]", ""):
        with pytest.raises(Unparseable):
            parse_verdict(bad)


def test_the_request_as_the_judge_reads_it_and_long_texts_cut() -> None:
    text = request_text([{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                      {"type": "image_url", "image_url": {}}]}])
    assert text == "system: Be brief.\n\nuser: What is this?\n[image_url]"
    assert clip("x" * 50, 100) == "x" * 50
    assert clip("x" * 150, 100) == "x" * 100 + "\n[... 50 characters cut]"


# -- a scripted judge server -------------------------------------------------------------------

def section(prompt: str, name: str) -> str:
    m = re.search(rf"\[{re.escape(name)}\]\n(.*?)\n\n(?:\[|The reference|Which answer)", prompt,
                  re.DOTALL)
    assert m, f"no [{name}] in the judge prompt"
    return m.group(1)


def number(text: str) -> str:
    return re.findall(r"-?\d+", text)[-1]


def fair_judge(prompt: str) -> str:
    """Grades 9 an answer with the reference's number, else 2; prefers the right number."""
    if "[Answer to grade]" in prompt:
        right = number(section(prompt, "Answer to grade")) == number(section(prompt,
                                                                            "Reference answer"))
        return f"Compared with the reference. [[{9 if right else 2}]]"
    a, b = number(section(prompt, "Answer A")), number(section(prompt, "Answer B"))
    return "Both say the same. [[C]]" if a == b else "They differ. [[C]]"


def cheap_answer(prompt: str) -> str:
    """Right (in other words than the frontier's) except on every fourth question."""
    n = int(prompt.split()[2])
    return f"The result is {n + 1 if n % 4 else n + 7}."


def judge_cfg(url: str, **kw: Any) -> JudgeConfig:
    return JudgeConfig(model=ModelConfig(name="judge", base_url=url, input_per_mtok=5.0,
                                         output_per_mtok=15.0, max_tokens=64, timeout_s=5), **kw)


def run(db: Path, cheap_url: str, judge_url: str, *, budget: Budget | None = None,
        cheap: ModelConfig | None = None, judge_model: ModelConfig | None = None,
        **kw: Any) -> None:
    async def main() -> None:
        st = open_store(db, "thread")
        try:
            async with AiohttpClient() as http:
                jc = judge_cfg(judge_url, **kw)
                if judge_model is not None:
                    jc = JudgeConfig(model=judge_model, **kw)
                judge = Judge(jc, ModelClient(jc.model, http, budget=budget, backoff_s=0.01))
                runner = ShadowRunner(st, build_routers((RandomRouterConfig("random"),)),
                                      [ModelClient(cheap or model(cheap_url), http, budget=budget)],
                                      concurrency=4, flush_every_s=0.05, judge=judge)
                await finish(runner, asyncio.create_task(runner.run()), st)
        finally:
            st.close()
    asyncio.run(main())


def judged_samples(tmp_path: Path, n: int) -> Path:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, n)
    store.con.execute("UPDATE samples SET scorer = 'judge'")
    store.close()
    return db


def servers(judge: Callable[[str], str], cheap: Callable[[str], str] = cheap_answer,
            **kw: Any) -> tuple[ModelServer, ModelServer]:
    return (ModelServer(ModelBehaviour(answer=cheap)),
            ModelServer(ModelBehaviour(answer=judge, **kw)))


# -- grading -----------------------------------------------------------------------------------

def test_graded_answers_score_the_grade_and_every_judge_call_is_kept(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 8)
    cheap, judge = servers(fair_judge)
    with cheap, judge:
        run(db, cheap.url, judge.url)
        prompts = [r["messages"][1]["content"] for r in judge.behaviour.requests]
    assert len(prompts) == 8
    # The judge saw the request, the frontier answer as reference and the cheap answer.
    assert any("user: What is 3 + 1?" in p and "[Reference answer]\n4\n" in p
               and "[Answer to grade]\nThe result is 4.\n" in p for p in prompts)
    rows = q(db, "SELECT sample_id, scorer, scorer_used, value, error FROM scores ORDER BY 1")
    for sid, scorer, used, value, error in rows:
        n = int(sid[1:])
        assert (scorer, used, error) == ("judge", "judge", None)
        assert value == pytest.approx(8 / 9 if n % 4 else 1 / 9)
    calls = q(db, "SELECT model, judge, mode, position, template, grade, parse_error, "
                  "output LIKE 'Compared%', spend_usd > 0, outcome FROM judge_calls ORDER BY "
                  "sample_id")
    assert len(calls) == 8
    assert {c[:5] for c in calls} == {("cheap", "judge", "grade", None, "grade-v1")}
    assert sorted(c[5] for c in calls) == [2.0, 2.0] + [9.0] * 6
    assert all(c[6:] == (None, True, True, "ok") for c in calls)
    # The judge's spend: in its own table, in the itemised attempts and in what seeds the
    # budget after a restart, beside the cheap model's.
    store = Store(db)
    try:
        judge_usd = store.fetch("SELECT sum(spend_usd) FROM judge_calls")[0][0]
        cheap_usd = store.fetch("SELECT sum(spend_usd) FROM shadow_calls")[0][0]
        seeded = sum(usd for _, usd in store.recent_shadow_spend())
        attempts = store.fetch("SELECT model, count(*) FROM shadow_attempts GROUP BY 1 ORDER BY 1")
        summary = store.fetch("SELECT judge, mode, calls, parsed, unparseable, failed, "
                              "round(mean_grade, 3) FROM judge_summary")
    finally:
        store.close()
    assert seeded == pytest.approx(judge_usd + cheap_usd) and judge_usd > cheap_usd > 0
    assert attempts == [("cheap", 8), ("judge", 8)]
    assert summary == [("judge", "grade", 8, 8, 0, 0, round((2 * 2 + 6 * 9) / 8, 3))]


def test_an_answer_the_prefilter_accepts_is_not_judged(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 6)
    # The cheap model answers the frontier's exact words on even questions.
    cheap, judge = servers(fair_judge, cheap=lambda p: (str(int(p.split()[2]) + 1)
                                                        if int(p.split()[2]) % 2 == 0
                                                        else f"It is {int(p.split()[2]) + 1}"))
    with cheap, judge:
        run(db, cheap.url, judge.url)
        asked = len(judge.behaviour.requests)
    assert asked == 3
    rows = q(db, "SELECT sample_id, scorer_used, value FROM scores ORDER BY 1")
    for sid, used, value in rows:
        if int(sid[1:]) % 2 == 0:
            assert (used, value) == ("exact_match", 1.0)
        else:
            assert (used, value) == ("judge", pytest.approx(8 / 9))
    assert q(db, "SELECT count(*) FROM judge_calls") == [(3,)]


def test_unparseable_output_is_a_recorded_failure_not_a_score(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 4)
    cheap, judge = servers(lambda prompt: "This answer seems fine to me.")
    with cheap, judge:
        run(db, cheap.url, judge.url)
    rows = q(db, "SELECT value, error FROM scores")
    assert len(rows) == 4
    for value, error in rows:
        assert value is None
        assert error == "judge output unparseable: no grade in the judge's output (asked for " \
                        "[[N]], 1-10)"
    assert q(db, "SELECT DISTINCT output, grade, parse_error IS NOT NULL, outcome "
                 "FROM judge_calls") == [("This answer seems fine to me.", None, True, "ok")]
    # No completed outcome is made of a failed score.
    assert q(db, "SELECT count(*) FROM completed_outcomes") == [(0,)]


def test_a_rate_limited_or_slow_judge_is_retried(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 2)
    cheap, judge = servers(fair_judge, script=[(429, "0"), "ok"])
    with cheap, judge:
        run(db, cheap.url, judge.url)
    assert sorted(q(db, "SELECT attempts, outcome FROM judge_calls")) == [(1, "ok"), (2, "ok")]
    assert q(db, "SELECT count(*) FROM scores WHERE value IS NOT NULL") == [(2,)]
    assert q(db, "SELECT count(*) FROM shadow_attempts WHERE model = 'judge'") == [(3,)]


def test_a_judge_that_times_out_is_retried_and_charged_its_worst_case(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 1)
    cheap, judge = servers(fair_judge, script=["hang", "ok"], hang_s=5.0)
    jm = ModelConfig(name="judge", base_url="", input_per_mtok=5.0, output_per_mtok=15.0,
                     max_tokens=64, timeout_s=0.5)
    with cheap, judge:
        jm = ModelConfig(**{**jm.__dict__, "base_url": judge.url})
        run(db, cheap.url, judge.url, judge_model=jm)
    # (s0000: the cheap answer is wrong, graded 2)
    assert q(db, "SELECT attempts, outcome, grade FROM judge_calls") == [(2, "ok", 2.0)]
    assert q(db, "SELECT outcome, spend_usd > 0 FROM shadow_attempts WHERE model = 'judge' "
                 "ORDER BY attempt") == [("unknown", True), ("ok", True)]
    assert q(db, "SELECT value FROM scores") == [(pytest.approx(1 / 9),)]


def test_a_judge_the_budget_cannot_pay_for_is_skipped_with_its_status(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 3)
    cheap, judge = servers(fair_judge)
    # usd_per_hour = 0: only free models are called; the cheap one is free, the judge is not.
    with cheap, judge:
        run(db, cheap.url, judge.url, budget=Budget(usd_per_hour=0.0),
            cheap=ModelConfig(name="cheap", base_url=cheap.url, max_tokens=16, timeout_s=5))
        assert judge.behaviour.requests == []
    assert q(db, "SELECT DISTINCT outcome, spend_usd FROM judge_calls") == [("budget", 0.0)]
    rows = q(db, "SELECT value, error FROM scores")
    assert len(rows) == 3
    for value, error in rows:
        assert value is None and error.startswith("judge budget: shadow budget exhausted")
    assert q(db, "SELECT count(*) FROM shadow_calls WHERE outcome = 'ok'") == [(3,)]


# -- pairwise ----------------------------------------------------------------------------------

def preferring_right(prompt: str) -> str:
    """A fair pairwise judge: the answer with the reference's number wins (the frontier's, on
    the questions the cheap model gets wrong), a tie when both have it."""
    a, b = number(section(prompt, "Answer A")), number(section(prompt, "Answer B"))
    if a == b:
        return "Equivalent. [[C]]"
    question = int(re.search(r"What is (\d+)", prompt).group(1))  # type: ignore[union-attr]
    return "[[A]]" if a == str(question + 1) else "[[B]]"


def test_pairwise_asks_both_orders_and_a_consistent_winner_wins(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 8)
    cheap, judge = servers(preferring_right)
    with cheap, judge:
        run(db, cheap.url, judge.url, mode="pairwise")
        prompts = [r["messages"][1]["content"] for r in judge.behaviour.requests]
    assert len(prompts) == 16
    # Each answer was shown first once and second once.
    firsts = [section(p, "Answer A") for p in prompts if "What is 1 +" in p]
    assert sorted(firsts) == ["2", "The result is 2."]
    values = dict(q(db, "SELECT sample_id, value FROM scores"))
    # Same number (a tie, as good) scores 1; a wrong cheap answer loses in both orders: 0.
    assert values == {f"s{i:04d}": (1.0 if i % 4 else 0.0) for i in range(8)}
    ((pairs, wins, ties, losses, inconsistent, rate),) = q(
        db, "SELECT pairs, cheap_wins, ties, frontier_wins, inconsistent, cheap_win_rate "
            "FROM judge_pairwise")
    assert (pairs, wins, ties, losses, inconsistent) == (8, 0, 6, 2, 0)
    assert rate == pytest.approx(6 * 0.5 / 8)
    ((decisive, position_bias, n_pairs, inconsistency, length_verdicts, length_bias),) = q(
        db, "SELECT decisive_verdicts, position_bias, pairs, inconsistency, length_verdicts, "
            "length_bias FROM judge_bias")
    # 2 losses x 2 orders: the winner was first once and second once each time.
    assert (decisive, position_bias, n_pairs, inconsistency) == (4, 0.0, 8, 0.0)
    # The frontier's short answers won every decisive verdict: the judge did not favour length.
    assert (length_verdicts, length_bias) == (4, -0.5)


def test_a_judge_that_always_picks_the_first_answer_ties_and_shows_its_bias(tmp_path: Path
                                                                             ) -> None:
    db = judged_samples(tmp_path, 6)
    cheap, judge = servers(lambda prompt: "The first one. [[A]]")
    with cheap, judge:
        run(db, cheap.url, judge.url, mode="pairwise")
    # Inconsistent in every pair: a tie each time, never a win for either answer.
    assert q(db, "SELECT DISTINCT value FROM scores") == [(1.0,)]
    assert q(db, "SELECT pairs, cheap_wins, ties, frontier_wins, inconsistent "
                 "FROM judge_pairwise") == [(6, 0, 6, 0, 6)]
    assert q(db, "SELECT decisive_verdicts, position_bias, inconsistency FROM judge_bias") == [
        (12, 0.5, 1.0)]


def test_both_modes_grade_for_the_score_and_compare_for_the_biases(tmp_path: Path) -> None:
    db = judged_samples(tmp_path, 4)

    def judge_both(prompt: str) -> str:
        return fair_judge(prompt) if "[Answer to grade]" in prompt else preferring_right(prompt)

    cheap, judge = servers(judge_both)
    with cheap, judge:
        run(db, cheap.url, judge.url, mode="both")
        assert len(judge.behaviour.requests) == 12
    assert dict(q(db, "SELECT sample_id, value FROM scores")) == pytest.approx(
        {f"s{i:04d}": (8 / 9 if i % 4 else 1 / 9) for i in range(4)})
    assert q(db, "SELECT mode, count(*) FROM judge_calls GROUP BY 1 ORDER BY 1") == [
        ("grade", 4), ("pairwise", 8)]
    ((grades, corr),) = q(db, "SELECT grades, grade_length_corr FROM judge_bias")
    assert grades == 4 and corr is not None


# -- configuration -----------------------------------------------------------------------------

JUDGE_ENV = {"SHADOWROUTE_SHADOW__JUDGE__MODEL__NAME": "judge-4o",
             "SHADOWROUTE_SHADOW__JUDGE__MODEL__BASE_URL": "https://api.openai.com/v1",
             "SHADOWROUTE_SHADOW__JUDGE__MODEL__MODEL": "gpt-4o",
             "SHADOWROUTE_SCORING__BY_TAG__SUPPORT": "judge"}


def test_judge_config() -> None:
    cfg = load_config(None, env={**JUDGE_ENV, "SHADOWROUTE_SHADOW__JUDGE__MODE": "both"})
    assert cfg.shadow.judge is not None
    assert (cfg.shadow.judge.model.name, cfg.shadow.judge.mode) == ("judge-4o", "both")
    assert load_config(None, env={}).shadow.judge is None

    def error(env: dict[str, str]) -> str:
        with pytest.raises(ConfigError) as e:
            load_config(None, env=env)
        return str(e.value)

    assert error({"SHADOWROUTE_SCORING__BY_TAG__SUPPORT": "judge"}) == (
        "scoring.by_tag.support: is 'judge' but no judge is configured: add [shadow.judge] "
        "with its endpoint in [shadow.judge.model]")
    assert error({"SHADOWROUTE_SCORING__OPEN_ENDED": "judge"}).startswith("scoring.open_ended:")
    assert error({**JUDGE_ENV, "SHADOWROUTE_SHADOW__JUDGE__MODE": "vote"}) == (
        "shadow.judge.mode: must be 'grade', 'pairwise' or 'both', got 'vote'")
    assert error({**JUDGE_ENV, "SHADOWROUTE_SHADOW__JUDGE__PREFILTER": "tfidf_cosine"}).startswith(
        "shadow.judge.prefilter: must be empty or a deterministic scorer")
    assert error({"SHADOWROUTE_SHADOW__JUDGE__MODE": "grade"}) == (
        "shadow.judge.model: is required")
    # The judge is one of the candidates (same endpoint and model): refused unless allowed.
    same = {**JUDGE_ENV, "SHADOWROUTE_SHADOW__MODELS__0__NAME": "cheap-4o",
            "SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "https://api.openai.com/v1/",
            "SHADOWROUTE_SHADOW__MODELS__0__MODEL": "gpt-4o"}
    assert error(same) == (
        "shadow.judge.model: is also the candidate model 'cheap-4o': a model judging its own "
        "answers favours them (set shadow.judge.allow_candidate = true to allow it)")
    allowed = load_config(None, env={**same, "SHADOWROUTE_SHADOW__JUDGE__ALLOW_CANDIDATE": "true"})
    assert allowed.shadow.judge is not None and allowed.shadow.judge.allow_candidate
