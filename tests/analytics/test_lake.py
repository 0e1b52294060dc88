"""The lake: two instances' DuckDB files exported as Parquet and merged give exactly the figures
of one file holding every record once, also where both instances stored the same records; and
`shadowroute sql|gate|report --lake` read the merged union."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analytics import lake
from analytics.errors import StoreError
from analytics.store import Store
from tests.support.compare import assert_same_rows
from tests.support.process import cli

T0 = datetime(2026, 5, 1)


def records(n: int = 400, seed: int = 3) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tag = rng.choice(["chat", "code", "legal"])
        sampled = rng.random() < 0.3
        out.append({
            "id": f"r{i}", "ts": T0 + timedelta(minutes=17 * i), "stratum": f"gpt-4o|{tag}",
            "cost": 0.01 + 0.001 * (i % 7), "sampled": sampled,
            "q": float(rng.random() < {"chat": 0.9, "code": 0.5, "legal": 0.7}[tag]),
            "cm": 0.001 * (1 + i % 3), "score": rng.random(), "accept": rng.random()})
    return out


def fill(store: Store, recs: list[dict[str, object]], pending: set[str] = frozenset()) -> None:
    con = store.con
    for r in recs:
        con.execute("INSERT INTO requests (request_id, ts, model, stratum, eligible, sampled, "
                    "sample_rate, cost_usd) VALUES (?, ?, 'gpt-4o', ?, true, ?, 0.3, ?)",
                    [r["id"], r["ts"], r["stratum"], r["sampled"], r["cost"]])
        if not r["sampled"]:
            continue
        done = r["id"] not in pending
        con.execute("INSERT INTO samples (sample_id, stratum, frontier_model, scorer, "
                    "frontier_cost_usd, status) VALUES (?, ?, 'gpt-4o', 'exact_match', ?, ?)",
                    [r["id"], r["stratum"], r["cost"], "done" if done else "pending"])
        if not done:
            continue
        con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) VALUES "
                    "(?, 'mini', 'a', ?)", [r["id"], r["cm"]])
        con.execute("INSERT INTO scores (sample_id, model, scorer, value) VALUES "
                    "(?, 'mini', 'exact_match', ?)", [r["id"], r["q"]])
        con.execute("INSERT INTO router_scores (sample_id, router, score) VALUES (?, 'r', ?)",
                    [r["id"], r["score"]])
        con.execute("INSERT INTO cascade_scores VALUES (?, 'frugal', 'mini', ?)",
                    [r["id"], r["accept"]])
    store.set_router_costs([("r", "http", 0.0001)])


ESTIMATES = ("SELECT * EXCLUDE (quality_se) FROM savings ORDER BY router, threshold, model",
             "SELECT * FROM segment_savings ORDER BY router, threshold, model, segment",
             "SELECT * FROM window_savings_at('day', [0.3, 0.6]) "
             "ORDER BY router, threshold, model, window_start")


def figures(db: Path) -> list[list[tuple[object, ...]]]:
    store = Store(db, read_only=True)
    try:
        return [store.fetch(q) for q in ESTIMATES]
    finally:
        store.close()


def same(a: list[list[tuple[object, ...]]], b: list[list[tuple[object, ...]]]) -> None:
    assert len(a) == len(b)
    for xs, ys in zip(a, b, strict=True):
        assert_same_rows(xs, ys)


@pytest.fixture
def two_instances(tmp_path: Path) -> tuple[Path, Path]:
    """(the lake of two instances, one file holding every record once)."""
    recs = records()
    # Partitions spread over two instances; 20 records were stored by both (a partition moved
    # while its batch was in flight), and one sample still pending on the second is done on the
    # first.
    a = [r for i, r in enumerate(recs) if i % 2 == 0]
    b = [r for i, r in enumerate(recs) if i % 2 == 1] + a[:20]
    pending = next(r["id"] for r in a[:20] if r["sampled"])
    sa, sb, whole = (Store(tmp_path / f"{n}.duckdb") for n in ("a", "b", "whole"))
    try:
        fill(sa, a)
        fill(sb, b, pending={str(pending)})
        fill(whole, recs)
        lake_dir = tmp_path / "lake"
        assert lake.export(sa, lake_dir, "a")["requests"] == 200
        assert lake.export(sb, lake_dir, "b")["requests"] == 220
    finally:
        for s in (sa, sb, whole):
            s.close()
    return lake_dir, tmp_path / "whole.duckdb"


def test_the_merged_lake_gives_the_figures_of_one_file(two_instances: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    lake_dir, whole = two_instances
    # Partitioned by instance and day of production time.
    days = sorted(p.name for p in (lake_dir / "instance=a" / "requests").iterdir())
    assert days[0] == "day=2026-05-01" and len(days) >= 4
    assert (lake_dir / "instance=b" / "samples.parquet").exists()
    merged = tmp_path / "merged.duckdb"
    counts = lake.merge(lake_dir, merged)
    assert counts["requests"] == 400  # the 20 stored twice, once
    same(figures(merged), figures(whole))
    store = Store(merged, read_only=True)
    try:
        # every sample numbered afresh, each key once; the twice-stored sample kept as done
        assert store.fetch("SELECT count(DISTINCT sample_key) = count(*), count(*) FILTER "
                           "(WHERE status = 'pending') FROM samples") == [(True, 0)]
        assert store.fetch("SELECT count(*) FROM shadow_calls WHERE sample_key IS NULL") == [(0,)]
    finally:
        store.close()


def test_an_export_replaces_the_instances_last_one(two_instances: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    lake_dir, _ = two_instances
    store = Store(tmp_path / "c.duckdb")
    try:
        fill(store, records(10, seed=9))
        lake.export(store, lake_dir, "a")  # instance a again, now with 10 requests
    finally:
        store.close()
    rows = sum(pq.read_table(f).num_rows
               for f in (lake_dir / "instance=a" / "requests").rglob("*.parquet"))
    assert rows == 10
    assert not [p for p in lake_dir.iterdir() if p.name.startswith(".")]  # nothing left over
    with pytest.raises(StoreError, match="letters, digits"):
        lake.export(store, lake_dir, "../x")


def test_no_exports_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no instance exports under"):
        lake.merge(tmp_path / "nothing", tmp_path / "m.duckdb")


def test_the_cli_reads_the_lake(two_instances: tuple[Path, Path], tmp_path: Path) -> None:
    lake_dir, whole = two_instances
    r = cli("sql", "--lake", str(lake_dir), "--format", "json",
            "SELECT count(*) AS n FROM requests")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 400}
    args = ("gate", "--router", "r", "--threshold", "0.5", "--model", "mini",
            "--min-quality", "0.5", "--min-samples", "10")
    from_lake = cli(*args, "--lake", str(lake_dir))
    from_file = cli(*args, "--db", str(whole))
    assert from_lake.returncode == from_file.returncode == 0, from_lake.stderr
    keep = ("verdict", "quality", "quality_lower", "savings", "samples")
    assert {k: json.loads(from_lake.stdout)[k] for k in keep} == pytest.approx(
        {k: json.loads(from_file.stdout)[k] for k in keep})
    out = tmp_path / "r.html"
    r = cli("report", "--lake", str(lake_dir), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Cost vs quality" in out.read_text()
    bad = cli("sql", "--lake", str(lake_dir), "--db", str(whole), "SELECT 1")
    assert bad.returncode == 2 and "--lake or --db, not both" in bad.stderr
    # export-lake: a stopped service's file into a lake of its own
    other = tmp_path / "other-lake"
    r = cli("export-lake", "--db", str(whole), "--lake", str(other), "--instance", "w")
    assert r.returncode == 0 and "400 requests" in r.stdout, r.stderr
    r = cli("sql", "--lake", str(other), "--format", "json", "SELECT count(*) AS n FROM samples "
            "WHERE status = 'done'")
    assert r.returncode == 0 and json.loads(r.stdout)["n"] > 100, r.stderr
