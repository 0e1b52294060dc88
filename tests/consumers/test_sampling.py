"""consumers.sampling: deterministic, stratified, with the probability known for every row."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.sampling import Sampler, stratum_of, unit_hash

SETTINGS = settings(max_examples=200, deadline=None)
IDS = [f"req-{i}" for i in range(20_000)]


def test_stratum_of() -> None:
    assert stratum_of("gpt-4o", "math") == "gpt-4o|math"
    assert stratum_of("gpt-4o", None) == "gpt-4o|-"
    assert stratum_of("gpt-4o", "") == "gpt-4o|-"


@SETTINGS
@given(st.text(max_size=80), st.text(max_size=40))
def test_unit_hash_is_in_unit_interval_and_deterministic(request_id: str, salt: str) -> None:
    u = unit_hash(salt, request_id)
    assert 0.0 <= u < 1.0
    assert unit_hash(salt, request_id) == u


def test_unit_hash_depends_on_salt_and_id() -> None:
    assert unit_hash("a", "req-1") != unit_hash("b", "req-1")
    assert unit_hash("a", "req-1") != unit_hash("a", "req-2")
    # Lone surrogates (possible in ids from odd sources) hash instead of raising.
    assert 0.0 <= unit_hash("a", "\ud800") < 1.0


@SETTINGS
@given(st.lists(st.text(max_size=20), max_size=50), st.floats(0, 1), st.text(max_size=10))
def test_decisions_are_deterministic_across_samplers(ids: list[str], rate: float, salt: str) -> None:
    a = Sampler(rate, {}, salt)
    b = Sampler(rate, {}, salt)
    first = [a.decide(i, "m|t") for i in ids]
    assert first == [b.decide(i, "m|t") for i in reversed(ids)][::-1]
    assert first == [a.decide(i, "m|t") for i in ids]
    assert all(p == rate for _, p in first)


def test_a_different_salt_draws_a_different_sample() -> None:
    a = {i for i in IDS[:2000] if Sampler(0.5, {}, "one").decide(i, "m|t")[0]}
    b = {i for i in IDS[:2000] if Sampler(0.5, {}, "two").decide(i, "m|t")[0]}
    assert a != b
    # Independent draws overlap about rate * rate = 25 % of the ids.
    assert abs(len(a & b) - 500) < 5 * math.sqrt(2000 * 0.25 * 0.75)


RATES = {"gpt-4o|math": 0.9, "gpt-4o|*": 0.5, "*|math": 0.3, "*|chat": 0.2, "o3|*": 0.0}


@pytest.mark.parametrize(("stratum", "rate"), [
    ("gpt-4o|math", 0.9),    # exact 'model|tag'
    ("gpt-4o|chat", 0.5),    # 'model|*' beats '*|tag'
    ("gpt-4o|-", 0.5),
    ("claude|math", 0.3),    # '*|tag'
    ("claude|chat", 0.2),
    ("claude|other", 0.05),  # default
    ("claude|-", 0.05),
    ("o3|math", 0.0),        # 'model|*' beats '*|tag' even when it is 0
])
def test_rate_lookup_precedence(stratum: str, rate: float) -> None:
    s = Sampler(0.05, RATES, "salt")
    assert s.rate(stratum) == rate
    assert s.rate(stratum) == rate  # cached value agrees
    assert s.decide("any", stratum)[1] == rate


def test_a_rate_table_change_is_not_hidden_by_another_samplers_cache() -> None:
    s1 = Sampler(0.05, {"m|t": 0.4}, "x")
    s2 = Sampler(0.05, {}, "x")
    assert (s1.rate("m|t"), s2.rate("m|t")) == (0.4, 0.05)


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2, 0.5, 0.9])
def test_sampled_share_is_within_a_binomial_bound(rate: float) -> None:
    s = Sampler(rate, {}, "shadowroute")
    n = len(IDS)
    k = sum(s.decide(i, "gpt-4o|chat")[0] for i in IDS)
    # Five standard deviations: the hash is fixed, so this either always or never passes.
    assert abs(k - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate))


def test_samples_are_nested_as_the_rate_grows() -> None:
    # The same hash is compared with the rate, so raising a rate only adds requests.
    low = {i for i in IDS[:5000] if Sampler(0.1, {}, "s").decide(i, "m|t")[0]}
    high = {i for i in IDS[:5000] if Sampler(0.3, {}, "s").decide(i, "m|t")[0]}
    assert low < high


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=10))
def test_rate_zero_samples_nothing_and_rate_one_everything(request_id: str, salt: str) -> None:
    assert Sampler(0.0, {}, salt).decide(request_id, "m|t") == (False, 0.0)
    assert Sampler(1.0, {}, salt).decide(request_id, "m|t") == (True, 1.0)
    s = Sampler(0.5, {"m|zero": 0.0, "m|one": 1.0}, salt)
    assert s.decide(request_id, "m|zero") == (False, 0.0)
    assert s.decide(request_id, "m|one") == (True, 1.0)


def test_rate_zero_and_one_over_many_ids() -> None:
    assert not any(Sampler(0.0, {}, "s").decide(i, "m|t")[0] for i in IDS)
    assert all(Sampler(1.0, {}, "s").decide(i, "m|t")[0] for i in IDS)
