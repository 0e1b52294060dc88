"""Multi-tier policies in the savings estimates, on a real DuckDB file: which tier each request
goes to, quality, cost (with the routers' own cost), strong share and share per tier, each
checked against arithmetic done here; and the cost-quality frontier across every policy."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import sql
from analytics.report import build
from analytics.store import Store
from analytics.tiers import TierPolicyConfig, check_policies, grid, setting_count, settings
from consumers.errors import ConfigError

# stratum -> (eligible requests N_h, frontier cost each, samples: (score of router `r`,
# {model: (q, cost)}, {router: score}) for the per-model routers `ra`, `rb`)
S = tuple[float | None, dict[str, tuple[float, float]], dict[str, float]]
DATA: dict[str, tuple[int, float, list[S]]] = {
    "gpt-4o|a": (100, 0.01, [
        (0.1, {"a": (1.0, 0.001), "b": (1.0, 0.003)}, {"ra": 0.1, "rb": 0.05}),
        (0.4, {"a": (0.0, 0.001), "b": (1.0, 0.004)}, {"ra": 0.7, "rb": 0.2}),
        (0.65, {"a": (0.5, 0.002), "b": (0.5, 0.004)}, {"ra": 0.6, "rb": 0.5}),
        (0.9, {"a": (0.0, 0.001), "b": (0.0, 0.003)}, {"ra": 0.9, "rb": 0.8}),
        (None, {"a": (1.0, 0.001), "b": (1.0, 0.003)}, {"ra": 0.3}),  # no score from r or rb
        # b never answered: the policies leave this sample out
        (0.05, {"a": (1.0, 0.001)}, {"ra": 0.0, "rb": 0.0}),
    ]),
    "gpt-4o|b": (50, 0.02, [
        (0.2, {"a": (0.0, 0.003), "b": (1.0, 0.006)}, {"ra": 0.8, "rb": 0.1}),
        (0.6, {"a": (1.0, 0.002), "b": (1.0, 0.005)}, {"ra": 0.2, "rb": 0.3}),  # at t2
        (0.8, {"a": (1.0, 0.002), "b": (1.0, 0.005)}, {"ra": 0.5, "rb": 0.4}),
    ]),
}
SPLIT = TierPolicyConfig(name="split", models=("a", "b"), router="r", thresholds=(0.3, 0.6),
                         sweep_step=0.25)
CHEAPEST = TierPolicyConfig(name="cheapest_ok", kind="cheapest", models=("a", "b"),
                            routers=("ra", "rb"), bar=0.7, sweep_step=0.5)


def fill(store: Store, policies: tuple[TierPolicyConfig, ...] = (SPLIT, CHEAPEST)) -> None:
    con = store.con
    for stratum, (big_n, cf, samples) in DATA.items():
        for i in range(big_n):
            con.execute("INSERT INTO requests (request_id, model, stratum, eligible, sampled, "
                        "sample_rate, cost_usd) VALUES (?, 'gpt-4o', ?, true, ?, 0.1, ?)",
                        [f"{stratum}-{i}", stratum, i < len(samples), cf])
        for i, (score, answers, per_model) in enumerate(samples):
            rid = f"{stratum}-{i}"
            con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, scorer, "
                        "frontier_cost_usd, status) VALUES (?, ?, 'gpt-4o', 'exact_match', ?, "
                        "'done')", [rid, stratum, cf])
            for model, (q, cm) in answers.items():
                con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) "
                            "VALUES (?, ?, 'x', ?)", [rid, model, cm])
                con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES "
                            "(?, ?, 'exact_match', ?)", [rid, model, q])
            for router, value in [("r", score), *per_model.items()]:
                if value is not None:
                    con.execute("INSERT INTO router_scores (sample_id, router, score) VALUES "
                                "(?, ?, ?)", [rid, router, value])
    store.set_tier_policies([row for p in policies for row in settings(p)])


def tier_of(p: TierPolicyConfig, sample: S, thresholds: tuple[float, ...] | None = None,
            bar: float | None = None) -> int | None:
    """The tier (0-based) this sample goes to, None for the frontier: the rule, written out."""
    score, _, per_model = sample
    if p.kind == "thresholds":
        for i, t in enumerate(thresholds or p.thresholds):
            if score is not None and score < t:
                return i
        return None
    for i, r in enumerate(p.routers):
        s = per_model.get(r)
        if s is not None and 1.0 - s >= (p.bar if bar is None else bar):
            return i
    return None


def expected(p: TierPolicyConfig, router_usd: float = 0.0, **setting: object
             ) -> dict[str, float]:
    quality = cost = frontier = strong = exact = big = 0.0
    shares = [0.0] * (len(p.models) + 1)
    for big_n, cf, samples in DATA.values():
        covered = [s for s in samples if all(m in s[1] for m in p.models)]
        w = big_n / len(covered)
        big += big_n
        exact += big_n * cf
        for s in covered:
            t = tier_of(p, s, **setting)  # type: ignore[arg-type]
            q, cm = (1.0, cf) if t is None else s[1][p.models[t]]
            quality += w * q
            cost += w * (cm + router_usd)
            frontier += w * cf
            strong += w * (t is None)
            shares[len(p.models) if t is None else t] += w
    ratio = cost / frontier
    return {"quality": quality / big, "savings": 1 - ratio, "strong_share": strong / big,
            "projected_usd_saved": (1 - ratio) * exact, "shares": [x / big for x in shares]}


@pytest.mark.parametrize("policy", [SPLIT, CHEAPEST], ids=lambda p: p.name)
def test_policy_estimates(tmp_path: Path, policy: TierPolicyConfig) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        rows = store.fetch(
            "SELECT model, threshold, quality, savings, strong_share, projected_usd_saved, "
            "quality_lower, quality_upper, samples FROM savings WHERE router = $p",
            {"p": policy.name})
        shares = store.fetch("SELECT model, share, share_lower, share_upper FROM tier_shares "
                             "WHERE policy = $p ORDER BY tier", {"p": policy.name})
    finally:
        store.close()
    e = expected(policy)
    # One row in the savings view: the tiers as its model, the configured setting.
    ((model, threshold, quality, savings, strong, saved, lo, hi, samples),) = rows
    assert (model, threshold, samples) == ("a>b", None, 8)  # the sample b never answered: out
    assert quality == pytest.approx(e["quality"])
    assert savings == pytest.approx(e["savings"])
    assert strong == pytest.approx(e["strong_share"])
    assert saved == pytest.approx(e["projected_usd_saved"])
    assert lo <= quality <= hi
    assert [m for m, *_ in shares] == ["a", "b", "frontier"]
    assert [s for _, s, _, _ in shares] == pytest.approx(e["shares"])
    assert sum(s for _, s, _, _ in shares) == pytest.approx(1.0)
    for _, s, lo_s, hi_s in shares:
        assert lo_s <= s <= hi_s and hi_s - lo_s > 0.05  # 8 samples: never a point interval


def test_a_routers_own_cost_is_paid_on_every_request(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        store.set_router_costs([("r", "http", 0.0005), ("ra", "learned", 0.0001),
                                ("rb", "learned", 0.0002)])
        got = dict(store.fetch("SELECT router, savings FROM savings WHERE router IN "
                               "('split', 'cheapest_ok')"))
    finally:
        store.close()
    assert got["split"] == pytest.approx(expected(SPLIT, router_usd=0.0005)["savings"])
    # a cheapest-first policy consults both its routers on every request
    assert got["cheapest_ok"] == pytest.approx(expected(CHEAPEST, router_usd=0.0003)["savings"])


def test_the_frontier_sweeps_every_setting_and_marks_the_efficient_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        points = store.fetch("SELECT kind, policy, model, threshold, setting, label, quality, "
                             "savings, on_frontier FROM policy_frontier")
        configured = store.fetch("SELECT quality, savings FROM savings WHERE router = 'split'")
    finally:
        store.close()
    tiers = [p for p in points if p[0] == "multi_tier"]
    # every setting: the configured one and the sweep, per policy
    assert len([p for p in tiers if p[1] == "split"]) == setting_count(SPLIT) == 1 + 15
    assert len([p for p in tiers if p[1] == "cheapest_ok"]) == setting_count(CHEAPEST) == 1 + 3
    (zero,) = [p for p in tiers if p[1] == "split" and p[4] == 0]
    assert zero[5] == "t=0.3,0.6" and (zero[6], zero[7]) == pytest.approx(configured[0])
    # each swept setting against the rule written out here
    for _, policy, _, _, _, label, quality, savings, _ in tiers:
        if policy == "split":
            ts = tuple(float(x) for x in label.removeprefix("t=").split(","))
            e = expected(SPLIT, thresholds=ts)
        else:
            e = expected(CHEAPEST, bar=float(label.removeprefix("bar=")))
        assert (quality, savings) == pytest.approx((e["quality"], e["savings"])), label
    kinds = {p[0] for p in points}
    assert kinds == {"router", "single_model", "multi_tier", "reference"}
    # on_frontier: no other deployable point at least as good on both, better on one
    # (of points with the same figures, one is marked)
    deployable = [p for p in points if p[0] != "reference"]
    for q, s in {(p[6], p[7]) for p in deployable}:
        dominated = any(o[6] >= q and o[7] >= s and (o[6] > q or o[7] > s) for o in deployable)
        marked = [p[8] for p in deployable if (p[6], p[7]) == (q, s)]
        assert sorted(marked) == ([False] * len(marked) if dominated
                                  else [False] * (len(marked) - 1) + [True]), (q, s)
    assert any(p[8] for p in tiers)  # here a multi-tier setting is efficient
    assert all(p[8] is None for p in points if p[0] == "reference")


def test_no_policies_no_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store, policies=())
        assert store.fetch("SELECT count(*) FROM tier_shares") == [(0,)]
        assert store.fetch("SELECT count(*) FROM policy_frontier WHERE kind = 'multi_tier'"
                           ) == [(0,)]
        # the service writes what it runs with now: a restart without policies drops them
        store.set_tier_policies(settings(SPLIT))
        store.set_tier_policies([])
        assert store.fetch("SELECT count(*) FROM tier_policies") == [(0,)]
    finally:
        store.close()


def test_settings_and_grid() -> None:
    assert grid(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert grid(0.3) == [0.0, 0.3, 0.6, 0.9, 1.0]
    rows = settings(SPLIT)
    vectors = {s: tuple(r.threshold for r in rows if r.setting == s)
               for s in {r.setting for r in rows}}
    assert vectors[0] == (0.3, 0.6)
    assert sorted(v for s, v in vectors.items() if s) == sorted(
        itertools.combinations_with_replacement(grid(0.25), 2))
    assert all(a <= b for a, b in vectors.values())
    cheap = settings(CHEAPEST)
    assert {(r.setting, r.tier, r.router, r.threshold, r.on_success) for r in cheap} == {
        (0, 1, "ra", 0.7, True), (0, 2, "rb", 0.7, True), (1, 1, "ra", 0.0, True),
        (1, 2, "rb", 0.0, True), (2, 1, "ra", 0.5, True), (2, 2, "rb", 0.5, True),
        (3, 1, "ra", 1.0, True), (3, 2, "rb", 1.0, True)}


@pytest.mark.parametrize(("policy", "key", "problem"), [
    (TierPolicyConfig(name="p", models=("a", "z"), router="r", thresholds=(0.1, 0.2)),
     "policies[0].models[1]", "'z' is not one of the cheap models (a, b)"),
    (TierPolicyConfig(name="p", models=("a", "a"), router="r", thresholds=(0.1, 0.2)),
     "policies[0].models", "each model may be one tier only"),
    (TierPolicyConfig(name="p", models=("a", "b"), router="r", thresholds=(0.5, 0.2)),
     "policies[0].thresholds",
     "must not decrease (the cheapest model takes the lowest scores), got [0.5, 0.2]"),
    (TierPolicyConfig(name="p", models=("a", "b"), router="r", thresholds=(0.5,)),
     "policies[0].thresholds", "give one threshold per model (2), got 1"),
    (TierPolicyConfig(name="p", models=("a", "b"), router="x", thresholds=(0.1, 0.2)),
     "policies[0].router", "'x' is not one of the routers (r, ra, rb)"),
    (TierPolicyConfig(name="p", kind="cheapest", models=("a", "b"), routers=("ra",)),
     "policies[0].routers", "give one router per model (2), got 1"),
    (TierPolicyConfig(name="p", kind="cheapest", models=("a", "b"), routers=("ra", "rb"),
                      bar=1.5), "policies[0].bar", "must be in [0, 1], got 1.5"),
    (TierPolicyConfig(name="random", models=("a", "b"), router="r", thresholds=(0.1, 0.2)),
     "policies[0].name", "'random' is already the name of a router, cascade, policy or "
     "reference row in the savings views"),
    (TierPolicyConfig(name="p", kind="tree", models=("a",)), "policies[0].kind",
     "must be 'thresholds' or 'cheapest', got 'tree'"),
    (TierPolicyConfig(name="p", models=("a", "b"), router="r", thresholds=(0.1, 0.2),
                      sweep_step=0.01), "policies[0].sweep_step",
     "0.01 gives 5152 settings for 2 tiers (at most 2000): take a larger step"),
])
def test_policy_mistakes_name_the_key(policy: TierPolicyConfig, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_policies([policy], ["a", "b"], ["r", "ra", "rb"], ["random", "oracle"])
    assert (e.value.key, e.value.problem) == (key, problem)


def test_the_report_draws_the_frontier_across_policies(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    try:
        fill(store)
        page = build(store.query_table, None, min_quality=0.9)
        curves = store.fetch(sql.query("report_curves"))
    finally:
        store.close()
    assert "Cost vs quality across every policy, multi-tier included" in page
    assert '"name":"multi_tier"' in page and '"name":"frontier"' in page
    # the per-model curves keep to single-model policies
    assert not [r for r in curves if r[0] in ("split", "cheapest_ok")]
