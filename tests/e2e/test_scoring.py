"""Scorers through the broker and the running service: `auto` picks per sample from the
frontier answer, per-tag scorers win over it, and a scorer that cannot judge a pair records why
instead of a quality of 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.service import run_until_consumed

# feature -> (frontier answer, cheap answer, scorer auto picks, expected value)
CASES = {
    "number": ("1,234", "The total is 1234.", "final_number", 1.0),
    "json": ('{"city": "Paris", "zip": "75001"}', '```json\n{"city": "paris", "zip": "75002"}\n```',
             "json_match", 0.5),
    "code": ("```python\ndef f(x):\n    return x * 2\n```",
             "Sure:\n```python\ndef f(x): return x*2  # double\n```", "code", 1.0),
    "prose": ("The meeting moved to Tuesday because the room was booked",
              "The meeting moved to Tuesday", "token_f1", None),
    "label": ("Positive", "positive.", "exact_match", 1.0),
}


def _records(n_each: int) -> list[bytes]:
    out = []
    for feature, (frontier, _, _, _) in [*CASES.items(),
                                         ("fixed", ("Positive", "", "", None)),
                                         ("notjson", ("plain words", "", "", None))]:
        for i in range(n_each):
            out.append(orjson.dumps({
                "request_id": f"{feature}-{i}", "ts": 1764244800 + i,
                "request": {"model": "gpt-4o", "messages": [
                    {"role": "user", "content": f"[{feature}] question {i}"}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": frontier},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 20, "completion_tokens": 10}},
                "cost_usd": 0.001, "tags": {"feature": feature}}))
    return out


def _cheap(prompt: str) -> str:
    feature = prompt[1:prompt.index("]")]
    if feature == "fixed":
        return "Positive, I think"
    if feature == "notjson":
        return '{"a": 1}'
    return CASES[feature][1]


def test_auto_and_per_tag_scorers_through_the_service(broker: Broker, topic: str,
                                                     db_path: Path, tmp_path: Path) -> None:
    n_each = 6
    values = _records(n_each)
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=_cheap)) as ms:
        path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                            group="g-scoring", db=db_path, model_url=ms.url, default_rate=1.0,
                            math_rate=1.0)
        # The default becomes `auto`; two tags keep a scorer of their own.
        text = path.read_text().replace(
            'default = "exact_match"\nby_tag = { math = "final_number" }',
            'default = "auto"\nopen_ended = "token_f1"\n'
            'by_tag = { fixed = "exact_match", notjson = "json_match" }')
        assert 'default = "auto"' in text
        path.write_text(text)
        asyncio.run(run_until_consumed(load_config(path, env={}), len(values)))

    import duckdb
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT s.tags->>'feature', sc.scorer, sc.scorer_used, sc.value, sc.error "
            "FROM scores sc JOIN samples s USING (sample_id)").fetchall()
        outcomes = dict(con.execute(
            "SELECT s.tags->>'feature', count(*) FROM sample_outcomes o "
            "JOIN samples s USING (sample_id) GROUP BY ALL").fetchall())
        all_cheap = con.execute("SELECT samples, quality FROM savings "
                                "WHERE router = 'all_cheap'").fetchone()
    finally:
        con.close()
    by_feature: dict[str, set[tuple[object, ...]]] = {}
    for feature, *rest in rows:
        by_feature.setdefault(feature, set()).add(tuple(rest))
    assert len(rows) == 7 * n_each
    for feature, (_, _, picked, value) in CASES.items():
        [(scorer, used, v, error)] = by_feature[feature]  # the same for every sample
        assert (scorer, used, error) == ("auto", picked, None), feature
        if value is not None:
            assert v == pytest.approx(value), feature
    [(_, _, prose, _)] = by_feature["prose"]
    assert 0.0 < prose < 1.0  # graded: 5 of the frontier's 9 tokens
    # A tag's own scorer wins over the default.
    assert by_feature["fixed"] == {("exact_match", "exact_match", 0.0, None)}
    # A scorer that cannot judge the pair: a recorded failure, not a 0, and not in the estimates.
    assert by_feature["notjson"] == {("json_match", "json_match", None,
                                      "json_match: the frontier answer is not JSON")}
    assert "notjson" not in outcomes and outcomes["json"] == n_each
    assert all_cheap[0] == 6 * n_each


def test_tfidf_cosine_is_fitted_from_stored_answers_before_its_first_score(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    answers = [f"Your refund for order {i} will arrive in {i % 7 + 2} days." for i in range(30)]
    values = [orjson.dumps({
        "request_id": f"support-{i}", "ts": 1764244800 + i,
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"[q] {i}"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": a},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 20, "completion_tokens": 10}},
        "cost_usd": 0.001, "tags": {"feature": "support"}}) for i, a in enumerate(answers)]
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=lambda p: "Your refund will arrive soon.")) as ms:
        path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                            group="g-tfidf", db=db_path, model_url=ms.url, default_rate=1.0,
                            math_rate=1.0)
        path.write_text(path.read_text().replace('default = "exact_match"',
                                                 'default = "tfidf_cosine"'))
        asyncio.run(run_until_consumed(load_config(path, env={}), len(values)))
    import duckdb
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("SELECT scorer, scorer_used, value, error FROM scores").fetchall()
    finally:
        con.close()
    assert len(rows) == 30
    # Not one sample was scored before the vectorizer was fitted: every pair has a value.
    assert all(r[:2] == ("tfidf_cosine", "tfidf_cosine") and r[3] is None for r in rows), rows
    assert all(0.2 < r[2] < 1.0 for r in rows), rows  # shares refund/arrive, not the rest


def test_auto_sends_open_ended_answers_to_the_llm_judge_through_the_service(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    n_each = 4
    values = [v for v in _records(n_each)
              if orjson.loads(v)["tags"]["feature"] in ("number", "prose")]
    asyncio.run(produce(broker.bootstrap, topic, values))

    def judge(prompt: str) -> str:
        assert "[Reference answer]\nThe meeting moved to Tuesday because" in prompt
        return "Right, but it leaves out why. [[8]]"

    with ModelServer(ModelBehaviour(answer=_cheap)) as ms, \
            ModelServer(ModelBehaviour(answer=judge)) as js:
        path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                            group="g-judge", db=db_path, model_url=ms.url, default_rate=1.0,
                            math_rate=1.0)
        text = path.read_text().replace(
            'default = "exact_match"\nby_tag = { math = "final_number" }',
            'default = "auto"\nopen_ended = "judge"')
        path.write_text(text + f"""
[shadow.judge]
mode = "grade"

[shadow.judge.model]
name = "judge"
base_url = "{js.url}"
input_per_mtok = 2.5
output_per_mtok = 10.0
max_tokens = 64
""")
        asyncio.run(run_until_consumed(load_config(path, env={}), len(values)))
        asked = len(js.behaviour.requests)

    import duckdb
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT s.tags->>'feature', sc.scorer, sc.scorer_used, sc.value, sc.error "
            "FROM scores sc JOIN samples s USING (sample_id)").fetchall()
        judged = con.execute("SELECT count(*), sum(spend_usd) > 0, count(DISTINCT sample_id) "
                             "FROM judge_calls WHERE grade = 8 AND outcome = 'ok'").fetchone()
    finally:
        con.close()
    by_feature: dict[str, set[tuple[object, ...]]] = {}
    for feature, *rest in rows:
        by_feature.setdefault(feature, set()).add(tuple(rest))
    # Closed answers are scored by their deterministic scorer; only open-ended ones are judged.
    assert by_feature["number"] == {("auto", "final_number", 1.0, None)}
    [(scorer, used, value, error)] = by_feature["prose"]
    assert (scorer, used, error) == ("auto", "judge", None) and value == pytest.approx(7 / 9)
    assert asked == n_each and judged == (n_each, True, n_each)


def test_the_noise_floor_through_the_service(broker: Broker, topic: str, db_path: Path,
                                             tmp_path: Path) -> None:
    n = 12
    values = [orjson.dumps({
        "request_id": f"m-{i}", "ts": 1764244800 + i,
        "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"{i} + 1 = ?"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": str(i + 1)},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 20, "completion_tokens": 2}},
        "cost_usd": 0.001, "tags": {"feature": "math"}}) for i in range(n)]
    asyncio.run(produce(broker.bootstrap, topic, values))

    def cheap(prompt: str) -> str:
        return str(int(prompt.split()[0]) + 1)

    def frontier(prompt: str) -> str:  # disagrees with its production answer on every third
        i = int(prompt.split()[0])
        return str(i + 1) if i % 3 else str(i + 5)

    with ModelServer(ModelBehaviour(answer=cheap)) as ms, \
            ModelServer(ModelBehaviour(answer=frontier)) as fs:
        path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                            group="g-floor", db=db_path, model_url=ms.url, default_rate=1.0,
                            math_rate=1.0, extra=f"""
[shadow.noise_floor]
share = 1.0
[[shadow.noise_floor.models]]
name = "gpt-4o"
base_url = "{fs.url}"
input_per_mtok = 2.5
output_per_mtok = 10.0
""")
        asyncio.run(run_until_consumed(load_config(path, env={}), len(values)))
        asked = len(fs.behaviour.requests)

    import duckdb
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        floor = con.execute("SELECT stratum, scorer_used, n, floor FROM noise_floor_by_segment"
                            ).fetchall()
        vs = con.execute("SELECT model, quality, floor_n, floor, quality_vs_floor "
                         "FROM quality_vs_floor").fetchall()
    finally:
        con.close()
    assert asked == n
    assert floor == [("gpt-4o|math", "final_number", n, pytest.approx(8 / 12))]
    # The savings estimates show the floor beside the quality.
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        ((quality, fl, fl_n, rel),) = con.execute(
            "SELECT quality, floor, floor_samples, quality_vs_floor FROM savings "
            "WHERE router = 'all_cheap'").fetchall()
        seg = con.execute("SELECT segment, floor FROM segment_savings "
                          "WHERE router = 'all_cheap'").fetchall()
    finally:
        con.close()
    assert (quality, fl_n, rel) == (1.0, n, 1.0) and fl == pytest.approx(8 / 12)
    assert seg == [("math", pytest.approx(8 / 12))]
    assert vs == [("cheap", 1.0, n, pytest.approx(8 / 12), 1.0)]


def test_every_answer_also_scored_by_the_scorers_asked_for(broker: Broker, topic: str,
                                                           db_path: Path, tmp_path: Path) -> None:
    n_each = 3
    values = [v for v in _records(n_each)
              if orjson.loads(v)["tags"]["feature"] in ("number", "prose")]
    asyncio.run(produce(broker.bootstrap, topic, values))
    with ModelServer(ModelBehaviour(answer=_cheap)) as ms:
        path = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                            group="g-also", db=db_path, model_url=ms.url, default_rate=1.0,
                            math_rate=1.0)
        path.write_text(path.read_text().replace(
            'default = "exact_match"\nby_tag = { math = "final_number" }',
            'default = "auto"\nalso = ["embedding_cosine", "rouge_l"]'))
        asyncio.run(run_until_consumed(load_config(path, env={}), len(values)))
    import duckdb
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT s.tags->>'feature', sc.scorer, count(*), count(sc.value) "
            "FROM scores sc JOIN samples s USING (sample_id) GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        # The estimates still use each sample's own scorer; by_scorer picks another.
        own = con.execute("SELECT count(*) FROM completed_outcomes").fetchone()
        by = {name: con.execute(
            "SELECT samples, quality FROM savings_at([0.5], by_scorer := $s) "
            "WHERE router = 'all_cheap'", {"s": name}).fetchone()
            for name in (None, "rouge_l", "embedding_cosine")}
        means = dict(con.execute("SELECT scorer, avg(value) FROM scores GROUP BY 1").fetchall())
    finally:
        con.close()
    assert rows == [(f, s, n_each, n_each) for f in ("number", "prose")
                    for s in ("auto", "embedding_cosine", "rouge_l")]
    assert own == (2 * n_each,)
    # One sample per request in each of two strata of equal size: the quality is the mean score.
    for name, scorer in ((None, "auto"), ("rouge_l", "rouge_l"),
                         ("embedding_cosine", "embedding_cosine")):
        assert by[name][0] == 2 * n_each
        assert by[name][1] == pytest.approx(means[scorer]), name
    assert by["rouge_l"][1] != pytest.approx(by["embedding_cosine"][1])
