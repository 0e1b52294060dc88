"""shadow.scorers: quality of a cheap answer relative to the frontier answer, in [0, 1]."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.scorers import (
    SCORERS,
    EmbeddingCosine,
    ScoreFailed,
    Scoring,
    TfidfCosine,
    code_match,
    exact_match,
    final_number,
    final_number_match,
    json_match,
    known,
    normalize,
    pick,
    resolve,
    rouge_l,
    score,
    token_f1,
)

SETTINGS = settings(max_examples=200, deadline=None)
# Texts made of the pieces the scorers care about, plus anything at all.
answers = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["The", "a", "answer", "is", "42", "-3", "1,234", "$12", "12%", "0.5",
                              ".", ",", "**", "\n", " ", "Paris", "“", "−7", "1/2"]),
             max_size=12).map(" ".join),
)


# -- normalize / exact_match -----------------------------------------------------------------

@pytest.mark.parametrize(("text", "norm"), [
    ("Paris", "paris"),
    ("  Paris.\n", "paris"),
    ('"Paris"', "paris"),
    ("“Paris”", "paris"),
    ("**Paris**", "paris"),
    ("`paris`", "paris"),
    ("The Eiffel   Tower", "eiffel tower"),
    ("an apple a day", "apple day"),
    ("Theatre", "theatre"),  # articles only as whole words
    ("", ""),
])
def test_normalize(text: str, norm: str) -> None:
    assert normalize(text) == norm


@pytest.mark.parametrize(("cand", "ref", "score"), [
    ("Paris", "paris", 1.0),
    ("The answer.", "answer", 1.0),
    ("**Lima**", '"Lima"', 1.0),
    ("Paris", "Paris, France", 0.0),
    ("Oslo", "Lima", 0.0),
    ("", "", 1.0),
    ("", "x", 0.0),
])
def test_exact_match(cand: str, ref: str, score: float) -> None:
    assert exact_match(cand, ref) == score


# -- final_number ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "number"), [
    ("The answer is 42.", 42.0),
    ("1,234", 1234.0),
    ("Total: 1,234,567.89 units", 1234567.89),
    ("-3", -3.0),
    ("It dropped to −3", -3.0),  # unicode minus
    ("+2", 2.0),
    ("0.50", 0.5),
    (".5", 0.5),
    ("$12", 12.0),
    ("-$12", -12.0),
    ("costs $ 12", 12.0),
    ("€1,000", 1000.0),
    ("12%", 12.0),
    ("first 3, then 7", 7.0),
    ("1/2", 2.0),              # two numbers; the last wins
    ("12-3", 3.0),             # a dash between numbers is not a sign
    ("version x12", None),     # digits glued to letters are not a number
    ("no numbers here", None),
    ("", None),
])
def test_final_number(text: str, number: float | None) -> None:
    assert final_number(text) == number


@pytest.mark.parametrize(("cand", "ref", "score"), [
    ("The answer is 1234", "1,234", 1.0),
    ("It is $12.00", "12", 1.0),
    ("12%", "12", 1.0),
    ("-3", "−3", 1.0),
    ("3", "-3", 0.0),
    ("41", "The answer is 42.", 0.0),
    ("no idea", "42", 0.0),
    ("Paris", "paris", 1.0),    # no number in the reference: text equality
    ("Paris", "Lima", 0.0),
    ("7", "seven", 0.0),
])
def test_final_number_match(cand: str, ref: str, score: float) -> None:
    assert final_number_match(cand, ref) == score


# -- token_f1 --------------------------------------------------------------------------------

@pytest.mark.parametrize(("cand", "ref", "score"), [
    ("the cat sat", "cat sat on mat", 2 * 1.0 * 0.5 / 1.5),
    ("cat sat on mat", "the cat sat", 2 * 1.0 * 0.5 / 1.5),
    ("cat cat", "cat", 2 * 0.5 * 1.0 / 1.5),   # repeated tokens count once each
    ("dog", "cat", 0.0),
    ("The Cat.", "cat", 1.0),
    ("", "", 1.0),
    ("", "cat", 0.0),
    ("cat", "", 0.0),
])
def test_token_f1(cand: str, ref: str, score: float) -> None:
    assert token_f1(cand, ref) == pytest.approx(score)


def test_token_f1_ignores_punctuation_attached_to_words() -> None:
    # SQuAD-style: "France," and "France" are the same token.
    assert token_f1("Paris, France.", "Paris France") == 1.0
    assert token_f1("It's in Paris, I think.", "Paris") == pytest.approx(2 * 0.2 / 1.2)
    assert token_f1("- , ;", "") == 1.0  # nothing but punctuation is an empty answer


def test_token_f1_is_graded() -> None:
    ref = "The capital of France is Paris"
    assert token_f1("Paris is the capital of France", ref) == 1.0  # order does not matter
    assert 0.0 < token_f1("capital is Paris", ref) < 1.0


# -- rouge_l ---------------------------------------------------------------------------------

def test_rouge_l_is_the_lcs_f_measure() -> None:
    # Lin's example, after normalisation drops "the": cand [police, kill, gunman], ref [police,
    # killed, gunman]: LCS 2 (police, gunman), P = R = 2/3.
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(2 / 3)
    # Order matters, unlike token_f1: the same words reversed share an LCS of one.
    assert token_f1("alpha beta gamma", "gamma beta alpha") == 1.0
    assert rouge_l("alpha beta gamma", "gamma beta alpha") == pytest.approx(1 / 3)
    # Gaps are allowed: a longer answer holding the reference in order keeps recall 1.
    assert rouge_l("alpha x beta y gamma", "alpha beta gamma") == pytest.approx(
        2 * (3 / 5) * 1.0 / (3 / 5 + 1.0))
    assert rouge_l("", "alpha") == 0.0 and rouge_l("", "") == 1.0


# -- json_match ------------------------------------------------------------------------------

REF_JSON = '{"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetry"], "alive": false}'


@pytest.mark.parametrize(("cand", "value"), [
    (REF_JSON, 1.0),
    ('{"alive": false, "tags": ["math", "poetry"], "born": 1815.0, "name": "ada lovelace"}', 1.0),
    ('```json\n' + REF_JSON + '\n```', 1.0),  # fenced, as chat models write it
    ('{"name": "Ada Lovelace", "born": 1816, "tags": ["math", "poetry"], "alive": false}', 4 / 5),
    ('{"name": "Ada Lovelace", "born": 1815, "tags": ["math"], "alive": false}', 4 / 5),
    ('{"name": "Ada Lovelace", "born": 1815, "tags": ["math", "poetry"], "alive": false, '
     '"extra": 1}', 5 / 6),  # an extra key costs too
    ('{"name": "Ada Lovelace", "born": "1815", "tags": ["math", "poetry"], "alive": 0}', 3 / 5),
    ("Ada Lovelace, born 1815", 0.0),  # not JSON while the frontier's was
    ('{"name": "Ada Lovelace",', 0.0),
])
def test_json_match(cand: str, value: float) -> None:
    assert json_match(cand, REF_JSON) == pytest.approx(value)


def test_json_match_on_chosen_paths_and_failures() -> None:
    only = resolve("json_match:name,born")
    assert only('{"name": "Ada Lovelace", "born": 1815, "tags": []}', REF_JSON) == 1.0
    assert only('{"name": "Ada", "born": 1815}', REF_JSON) == 0.5
    with pytest.raises(ScoreFailed, match="has no nope"):
        resolve("json_match:nope")(REF_JSON, REF_JSON)
    with pytest.raises(ScoreFailed, match="frontier answer is not JSON"):
        json_match("{}", "Ada Lovelace")
    assert score("json_match", "{}", "not json") == ("json_match", None,
                                                     "json_match: the frontier answer is not JSON")
    assert known("json_match:a.b") and not known("json_match:") and not known("bleu")


# -- code --------------------------------------------------------------------------------------

REF_CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"


@pytest.mark.parametrize(("cand", "value"), [
    (REF_CODE, 1.0),
    # Formatting, comments and the prose around it do not count: the AST is the same.
    ("```py\ndef add(a,b):  # sum\n\n    return (a + b)\n```", 1.0),
    ("```python\ndef add(a, b):\n    return a - b\n```", 0.0),  # a different program
    ("```python\ndef add(a, b)\n    return a + b\n```", 0.0),  # does not parse
    ("def add(a, b): return a + b", 1.0),  # no fence: the whole answer is the code
    ("Use the + operator.", 0.0),
])
def test_code_match_python(cand: str, value: float) -> None:
    assert code_match(cand, REF_CODE) == value


def test_code_match_other_languages_and_failures() -> None:
    ref = "```js\n// add two numbers\nconst add = (a, b) => a + b;\n```"
    assert code_match("```javascript\nconst add = (a, b) =>\n  a + b;  /* sum */\n```", ref) == 1.0
    assert code_match("```js\nconst add = (a, b) => a * b;\n```", ref) == 0.0
    with pytest.raises(ScoreFailed, match="no fenced code block"):
        code_match("x", "The answer is 4.")
    with pytest.raises(ScoreFailed, match="does not parse"):
        code_match("x", "```python\ndef (:\n```")


def test_code_is_never_executed(tmp_path: pytest.TempPathFactory) -> None:
    marker = f"{tmp_path}/ran"
    evil = f"```python\nopen({marker!r}, 'w').write('x')\n```"
    assert code_match(evil, evil) == 1.0
    import os
    assert not os.path.exists(marker)


# -- auto --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reference", "picked"), [
    ("42", "final_number"),
    ("-1,234.5", "final_number"),
    ("$12", "final_number"),
    ("positive", "exact_match"),
    ("New York", "exact_match"),
    ('{"a": 1}', "json_match"),
    ('```json\n[1, 2]\n```', "json_match"),
    (REF_CODE, "code"),
    ("Paris is the capital of France. It is on the Seine.", "token_f1"),
    ("The meeting moved to Tuesday because the room was booked", "token_f1"),
])
def test_auto_picks_from_the_frontier_answer(reference: str, picked: str) -> None:
    assert pick(reference) == picked
    assert pick(reference, open_ended="rouge_l") == ("rouge_l" if picked == "token_f1"
                                                      else picked)
    used, value, failure = score("auto", reference, reference)
    assert used == picked and value == 1.0 and failure is None


# -- properties ------------------------------------------------------------------------------

def test_scorers_registry() -> None:
    assert {"exact_match", "final_number", "token_f1"} <= set(SCORERS)
    assert SCORERS["exact_match"] is exact_match and SCORERS["token_f1"] is token_f1
    assert SCORERS["final_number"] is final_number_match


@SETTINGS
@given(answers, answers)
def test_scores_are_in_unit_interval_or_a_recorded_failure(cand: str, ref: str) -> None:
    for name in [*SCORERS, "auto"]:
        used, v, failure = score(name, cand, ref)
        assert (v is None) != (failure is None), name
        assert v is None or 0.0 <= v <= 1.0, name
        assert used in SCORERS


@SETTINGS
@given(answers)
def test_a_text_scored_against_itself_is_one(text: str) -> None:
    for name in [*SCORERS, "auto"]:
        _, v, failure = score(name, text, text)
        assert v == 1.0 or (v is None and failure), name


@SETTINGS
@given(answers, answers)
def test_exact_match_and_token_f1_are_symmetric(a: str, b: str) -> None:
    assert exact_match(a, b) == exact_match(b, a)
    assert token_f1(a, b) == pytest.approx(token_f1(b, a))


@SETTINGS
@given(answers, answers)
def test_exact_match_implies_full_token_f1(a: str, b: str) -> None:
    if exact_match(a, b) == 1.0:
        assert token_f1(a, b) == 1.0


@SETTINGS
@given(st.integers(-(10**15), 10**15), st.sampled_from(["{}", "The answer is {}.", "**{}**",
                                                        "= {}", "{} apples"]))
def test_final_number_reads_back_integers(n: int, template: str) -> None:
    assert final_number(template.format(n)) == n
    assert final_number(template.format(f"{n:,}")) == n
    assert final_number_match(template.format(f"{n:,}"), str(n)) == 1.0


# -- tfidf_cosine ------------------------------------------------------------------------------

# "your", "will" and "in" are in every answer of both segments; "refund" and "arrive" only in
# the support answers.
SUPPORT = [f"Your refund for order {i} will arrive in {i % 7 + 2} days." for i in range(25)]
RECIPES = [f"Your bread {i} will be golden in {i % 5 + 20} minutes." for i in range(25)]


def test_tfidf_cosine_needs_a_fit_and_records_why_before() -> None:
    sc = Scoring("tfidf_cosine")
    used, value, failure = sc.score("tfidf_cosine", "a refund", "the refund")
    assert (used, value) == ("tfidf_cosine", None) and "no vectorizer fitted yet" in (failure or "")
    assert sc.wants_fit("tfidf_cosine", "x") and sc.wants_fit("auto", "a long open answer here x")
    assert not sc.wants_fit("auto", "42") and not sc.wants_fit("token_f1", "x")
    sc.tfidf.fit({"support": SUPPORT})
    assert not sc.wants_fit("tfidf_cosine", "x")
    assert sc.score("tfidf_cosine", SUPPORT[0], SUPPORT[0])[1] == pytest.approx(1.0)
    with pytest.raises(ScoreFailed, match="no term the vectorizer knows"):
        sc.tfidf("anything", "zzz qqq")


def test_tfidf_cosine_weighs_rare_words_and_fits_per_segment() -> None:
    t = TfidfCosine(min_docs=20)
    fitted = t.fit({"support": SUPPORT, "recipes": RECIPES, "tiny": ["one answer"]})
    assert fitted == {"": 51, "support": 25, "recipes": 25}  # "tiny" uses the one fitted on all
    ref = "Your refund will arrive."
    # Sharing the topical words beats sharing the common ones.
    assert t("refund arrive", ref) > t("Your will.", ref)
    # In the support segment "refund" is in every answer, so it says little there; over all
    # answers (half are recipes) it is a rare word and says more.
    assert t("refund", ref, "support") < t("refund", ref, None)
    assert t("refund", ref, "tiny") == t("refund", ref, None)
    # Disjoint answers score 0, and values stay in [0, 1].
    assert t("golden bread minutes", ref) == 0.0
    assert 0.0 <= t("refund bread arrive golden", ref) <= 1.0


EMBED = EmbeddingCosine()


def test_embedding_cosine_rewards_the_same_meaning_in_other_words() -> None:
    ref = "The meeting moved to Tuesday because the room was booked."
    paraphrase = "We had to push the meeting to Tuesday, since someone else had the room."
    unrelated = "Paris is the capital of France and its largest city."
    assert EMBED(ref, ref) == pytest.approx(1.0, abs=1e-5)
    # Other words, same meaning: well above an unrelated answer, and above what token overlap
    # gives the same pair.
    assert EMBED(paraphrase, ref) > 0.5 > 0.2 > EMBED(unrelated, ref)
    assert EMBED(paraphrase, ref) > token_f1(paraphrase, ref) + 0.1
    assert EMBED("", ref) == 0.0
    with pytest.raises(ScoreFailed, match="the frontier answer is empty"):
        EMBED(paraphrase, "  ")


def test_embedding_cosine_through_scoring_and_auto() -> None:
    s = Scoring(open_ended="embedding_cosine", embedding=EMBED)
    used, value, failure = s.score("auto", "Sure, we can ship it next week.",
                                   "Yes, shipping next week works for us.")
    assert used == "embedding_cosine" and failure is None and value is not None
    assert 0.3 < value < 1.0
    # A closed answer still goes to its own scorer under auto.
    assert s.score("auto", "The answer is 42.", "42")[:2] == ("final_number", 1.0)
    assert known("embedding_cosine")


def test_embedding_cosine_without_its_extra_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from consumers.errors import ConfigError
    from shadow.config import ScoringConfig
    from shadow.scorers import check_scoring
    monkeypatch.setattr(EmbeddingCosine, "available", staticmethod(lambda: False))
    with pytest.raises(ConfigError) as e:
        check_scoring(ScoringConfig(by_tag={"support": "embedding_cosine"}))
    assert str(e.value) == ("scoring.by_tag.support: embedding_cosine needs its model: "
                            "pip install 'shadowroute[embed]'")
    check_scoring(ScoringConfig(default="token_f1"))  # not asked for: nothing to install
