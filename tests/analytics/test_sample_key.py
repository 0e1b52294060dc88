"""The integer sample key on real DuckDB files: a file written before the key (schema_80-87) is
upgraded when opened, every row gets its sample's key, and the savings estimates are the same
whether rows are joined on the key, on sample_id (rows without one), or by the cross join of
before (`savings_cross_join`, joined on sample_id throughout)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import duckdb
import pytest

import sql
from analytics.store import Store, _defines_view
from shadow.results import CallResult, SampleResult

THRESHOLDS = [-0.5, 0.0, 0.1, 0.25, 0.3333, 0.5, 0.5001, 0.75, 0.9, 1.0, 3.0]
# Rows of the tables the curve joins whose key is not their sample's (NULL counts as wrong).
WRONG_KEYS = """
SELECT 'shadow_calls', count(*) FROM shadow_calls t JOIN samples s USING (sample_id)
WHERE t.sample_key IS DISTINCT FROM s.sample_key
UNION ALL
SELECT 'scores', count(*) FROM scores t JOIN samples s USING (sample_id)
WHERE t.sample_key IS DISTINCT FROM s.sample_key
UNION ALL
SELECT 'router_scores', count(*) FROM router_scores t JOIN samples s USING (sample_id)
WHERE t.sample_key IS DISTINCT FROM s.sample_key
"""
FORGET_HALF = ["UPDATE shadow_calls SET sample_key = NULL WHERE hash(sample_id, model) % 2 = 0",
               "UPDATE scores SET sample_key = NULL WHERE hash(sample_id, model, scorer) % 2 = 0",
               "UPDATE router_scores SET sample_key = NULL WHERE hash(sample_id, router) % 2 = 0"]
FORGET_ALL = ["UPDATE shadow_calls SET sample_key = NULL", "UPDATE scores SET sample_key = NULL",
              "UPDATE router_scores SET sample_key = NULL"]
NEW_KEYS = """
SELECT (SELECT sample_key FROM shadow_calls WHERE sample_id = 'new-1'),
       (SELECT sample_key FROM scores WHERE sample_id = 'new-1'),
       (SELECT sample_key FROM router_scores WHERE sample_id = 'new-1')
"""


def old_format_file(path: Path) -> None:
    """A file as a version before the key wrote it: the tables without `sample_key` (and no
    views: an old file's views are replaced at every open anyway)."""
    con = duckdb.connect(str(path))
    for stmt in sql.script("schema_"):
        if not _defines_view(stmt) and "sample_key" not in stmt:
            con.execute(stmt)
    assert "sample_key" not in {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'samples'"
    ).fetchall()}
    fill(con)
    con.close()


def fill(con: duckdb.DuckDBPyConnection) -> None:
    """Seeded traffic in four strata, two cheap models and three routers, with the rows the
    estimates must leave out: pending samples, failed calls, scores by another scorer, scores
    that could not judge, a router that did not score every sample, NULL router scores."""
    rng = random.Random(19)
    for i in range(600):
        stratum = f"gpt-4o|t{i % 4}"
        cost = 0.001 + rng.random() * 0.02
        sampled = i % 3 == 0
        con.execute("INSERT INTO requests (request_id, stratum, eligible, sampled, cost_usd) "
                    "VALUES ($1, $2, $3, $4, $5)", [f"r{i}", stratum, i % 50 != 7, sampled, cost])
        if not sampled:
            continue
        status = "pending" if i % 37 == 0 else "done"
        con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, messages, params, "
                    "scorer, frontier_cost_usd, status) "
                    "VALUES ($1, $2, 'gpt-4o', '[]', '{}', 'exact_match', $3, $4)",
                    [f"r{i}", stratum, cost, status])
        for model in ("mini", "nano"):
            error = "timeout" if rng.random() < 0.05 else None
            con.execute("INSERT INTO shadow_calls (sample_id, model, cost_usd, error) "
                        "VALUES ($1, $2, $3, $4)", [f"r{i}", model, cost * rng.random() / 5, error])
            value = None if rng.random() < 0.03 else rng.choice([0.0, 0.4, 1.0, 1.0, 1.0])
            con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                        "VALUES ($1, $2, 'exact_match', $3)", [f"r{i}", model, value])
            if i % 5 == 0:  # another scorer's judgement: not the sample's, left out
                con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                            "VALUES ($1, $2, 'token_f1', 0.0)", [f"r{i}", model])
        for router in ("mf", "rules", "bert"):
            if router == "bert" and i % 4 == 0:
                continue  # a router that failed on some samples: no row
            score = None if rng.random() < 0.02 else round(rng.random(), 2)
            con.execute("INSERT INTO router_scores (sample_id, router, score) VALUES ($1, $2, $3)",
                        [f"r{i}", router, score])


def estimates(con: duckdb.DuckDBPyConnection) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    rows = con.execute("SELECT * FROM savings_at($t)", {"t": THRESHOLDS}).fetchall()
    assert rows
    return {r[:3]: r[3:] for r in rows}


def same(a: dict[tuple[Any, ...], tuple[Any, ...]], b: dict[tuple[Any, ...], tuple[Any, ...]]
         ) -> None:
    assert a.keys() == b.keys()
    for k, row in a.items():
        for x, y in zip(row, b[k], strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert x == pytest.approx(y, rel=1e-12, abs=1e-12) or (
                    math.isnan(x) and math.isnan(y)), k
            else:
                assert x == y, k


def test_an_old_file_is_upgraded_and_estimates_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old_format_file(path)
    store = Store(path)
    con = store.con
    # Every sample has a key of its own, in insertion order from 1; every row of the tables
    # the curve joins has its sample's.
    n, distinct, lo, hi = con.execute("SELECT count(*), count(DISTINCT sample_key), "
                                      "min(sample_key), max(sample_key) FROM samples").fetchall()[0]
    assert n == distinct == hi == 200 and lo == 1
    assert con.execute(WRONG_KEYS).fetchall() == [
        ("shadow_calls", 0), ("scores", 0), ("router_scores", 0)]
    upgraded = estimates(con)
    # The cross join of before (sample_id throughout) gives the same figures.
    cols = ["strata", "samples", "requests", "quality", "quality_se", "savings", "strong_share"]
    full = con.execute("SELECT * FROM savings_at($t)", {"t": THRESHOLDS}).fetchall()
    names = [d[0] for d in con.description]
    cross = {tuple(r[:3]): r[3:] for r in con.execute(sql.query("savings_cross_join"),
                                                      {"thresholds": THRESHOLDS}).fetchall()}
    assert len(cross) == len(full) == 5 * 2 * len(THRESHOLDS)
    for r in full:
        want = cross[tuple(r[:3])]
        for c, w in zip(cols, want, strict=True):
            assert r[names.index(c)] == pytest.approx(w, rel=1e-12, abs=1e-12), (r[:3], c)
    # Rows written without the key (by hand, or by a writer that does not know it) are found by
    # sample_id: the same estimates with half and with none of the keys.
    for stmt in FORGET_HALF:
        con.execute(stmt)
    assert all(n > 0 for _, n in con.execute(WRONG_KEYS).fetchall())
    same(estimates(con), upgraded)
    for stmt in FORGET_ALL:
        con.execute(stmt)
    same(estimates(con), upgraded)
    store.close()
    # The next open fills them in again; the keys stay what they were.
    store = Store(path)
    assert store.con.execute("SELECT max(sample_key) FROM samples").fetchall()[0][0] == 200
    assert store.con.execute(WRONG_KEYS).fetchall() == [
        ("shadow_calls", 0), ("scores", 0), ("router_scores", 0)]
    same(estimates(store.con), upgraded)
    store.close()


def test_new_samples_get_new_keys_and_results_carry_them(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old_format_file(path)
    store = Store(path)
    store.con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, messages, "
                      "params, scorer) VALUES ('new-1', 'gpt-4o|t0', 'gpt-4o', "
                      "'[{\"role\": \"user\", \"content\": \"hi\"}]', '{}', 'exact_match')")
    (pending,) = [p for p in store.pending_samples(10) if p.sample_id == "new-1"]
    assert pending.sample_key == 201  # after the 200 the upgrade numbered
    store.write_sample_results([SampleResult(
        "new-1", "done", router_scores=[("mf", 0.2, None)], scores=[("mini", "exact_match", 1.0,
                                                               "exact_match", None)],
        calls=[CallResult("mini", "a", 1, 0, 1, 0.0001, 5.0, None, 1)],
        sample_key=pending.sample_key)])
    assert store.con.execute(NEW_KEYS).fetchall() == [(201, 201, 201)]
    store.close()
