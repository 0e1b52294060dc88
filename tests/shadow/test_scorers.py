"""shadow.scorers: quality of a cheap answer relative to the frontier answer, in [0, 1]."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.scorers import SCORERS, exact_match, final_number, final_number_match, normalize, token_f1

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


# -- properties ------------------------------------------------------------------------------

def test_scorers_registry() -> None:
    assert {"exact_match", "final_number", "token_f1"} <= set(SCORERS)
    assert SCORERS["exact_match"] is exact_match and SCORERS["token_f1"] is token_f1
    assert SCORERS["final_number"] is final_number_match


@SETTINGS
@given(answers, answers)
def test_scores_are_in_unit_interval(cand: str, ref: str) -> None:
    for name, scorer in SCORERS.items():
        v = scorer(cand, ref)
        assert 0.0 <= v <= 1.0, name


@SETTINGS
@given(answers)
def test_a_text_scored_against_itself_is_one(text: str) -> None:
    for name, scorer in SCORERS.items():
        assert scorer(text, text) == 1.0, name


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
