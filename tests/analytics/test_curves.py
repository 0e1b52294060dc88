"""RouteLLM's metrics (analytics.curves and the router_metrics view): by hand, SQL against
numpy, reference routers, intervals, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sql
from analytics.curves import RouterSamples, from_rows, router_metrics
from analytics.store import Store
from tests.analytics.test_gate import MODEL, ROUTER, S, fill

GRID = [round(i * 0.05, 2) for i in range(21)]
# (quality, score): the weak model gets half right; at 0.2 / 0.5 / 0.8 the router sends 1 / 2 / 3
# of the 4 requests cheap, the first one right, the second wrong, the third right.
HAND = [S(1.0, 0.1), S(0.0, 0.3), S(1.0, 0.6), S(0.0, 0.9)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "curves.duckdb")
    yield s
    s.close()


def test_by_hand() -> None:
    s = RouterSamples(np.zeros(4, dtype=np.int64), np.array([4.0]),
                      np.array([x.q for x in HAND]), np.array([x.score for x in HAND]))
    m = router_metrics(s, [0.2, 0.5, 0.8], replicates=200)
    assert m["weak_quality"] == 0.5
    assert [(c["strong_share"], c["quality"], c["pgr"]["estimate"]) for c in m["curve"]] == [
        (0.75, 1.0, 1.0), (0.5, 0.75, 0.5), (0.25, 0.75, 0.5)]
    # Trapezoids over (0, 0), (.25, .5), (.5, .5), (.75, 1), (1, 1).
    assert m["apgr"]["estimate"] == pytest.approx(0.0625 + 0.125 + 0.1875 + 0.25)
    assert (m["cpt_50"]["estimate"], m["cpt_80"]["estimate"]) == (0.25, 0.75)
    # Every request of the stratum was sampled: nothing left to be uncertain about.
    assert m["apgr"]["lower"] == m["apgr"]["upper"] == pytest.approx(0.625)
    assert m["oracle"] == {"strong_share": {"estimate": 0.5, "lower": 0.5, "upper": 0.5},
                           "apgr": 0.75, "cpt_50": 0.25, "cpt_80": 0.4}
    assert m["random_expected"] == {"apgr": 0.5, "cpt_50": 0.5, "cpt_80": 0.8}


def test_the_view_gives_the_numpy_estimates(store: Store) -> None:
    rng = np.random.default_rng(3)
    strata = {}
    for h, big_n in (("gpt-4o|a", 900), ("gpt-4o|b", 300)):
        hard = rng.uniform(size=60)
        strata[h] = (big_n, [S(float(rng.uniform() > d * 0.6), float(np.clip(d + rng.normal(0, .2), 0, 1)))
                             for d in hard])
    fill(store, strata, noise=False)
    cols, rows = store.query_table(sql.query("router_samples"))
    m = router_metrics(from_rows(cols, rows)[(ROUTER, MODEL)], GRID, replicates=300)
    cols, rows = store.query_table("SELECT * FROM router_metrics WHERE model = $m", {"m": MODEL})
    view = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert set(view) == {ROUTER, "random_expected", "oracle"}
    for k in ("apgr", "cpt_50", "cpt_80"):
        assert view[ROUTER][k] == pytest.approx(m[k]["estimate"], abs=1e-9), k
        assert m[k]["lower"] <= m[k]["estimate"] <= m[k]["upper"]
        assert view["oracle"][k] == pytest.approx(m["oracle"][k], abs=1e-9), k
    cols, rows = store.query_table("SELECT threshold, pgr FROM router_pgr WHERE router = $r "
                                   "ORDER BY threshold", {"r": ROUTER})
    assert [r[1] for r in rows] == pytest.approx([c["pgr"]["estimate"] for c in m["curve"]])
    # An informative router recovers the gap faster than a random one.
    assert m["apgr"]["lower"] > 0.5


def test_a_random_router_scores_a_half() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    stratum = rng.integers(0, 3, n)
    s = RouterSamples(stratum, np.bincount(stratum) * 20.0,
                      (rng.uniform(size=n) < 0.7).astype(float), rng.uniform(size=n))
    m = router_metrics(s, GRID, replicates=500, seed=1)
    assert m["apgr"]["lower"] < 0.5 < m["apgr"]["upper"]
    assert m["apgr"]["upper"] - m["apgr"]["lower"] < 0.1
    # CPT is read on the grid: the first point past the bar, up to one grid step (~5%) late.
    assert 0.45 < m["cpt_50"]["estimate"] < 0.56
    assert router_metrics(s, GRID, replicates=500, seed=1) == m  # seeded


def test_router_metrics_from_the_cli(tmp_path: Path) -> None:
    from tests.support.process import cli

    db = tmp_path / "cli.duckdb"
    s = Store(db)
    fill(s, {"gpt-4o|a": (4, HAND)}, noise=False)
    s.close()
    r = cli("router-metrics", "--model", MODEL, "--replicates", "200", "--db", str(db))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(o["router"], o["model"]) for o in out] == [(ROUTER, MODEL)]
    assert out[0]["cpt_50"]["estimate"] == 0.25 and len(out[0]["curve"]) == 21
    r = cli("router-metrics", "--model", "nope", "--db", str(db))
    assert r.returncode == 1 and r.stderr.strip() == "shadowroute: no router scores for model 'nope'"
