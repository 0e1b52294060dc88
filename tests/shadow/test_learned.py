"""Learned routers: features, honest out-of-fold scores, skops artefacts, the exported scorer,
and training from a real DuckDB file through the store."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics.service_store import open_store
from analytics.store import Store
from consumers.errors import ConfigError
from shadow import learned
from shadow.errors import RouterCallFailed
from shadow.routers import LearnedRouter, LearnedRouterConfig, RouteInput, check_routers
from shadow.training import Trainer
from shadowroute.config import load_config

WORDS = [f"w{i}" for i in range(60)]


def request(i: int, hard: bool, rng: random.Random) -> tuple[list[dict[str, Any]], str]:
    """A prompt with a planted pattern (hard ones ask to prove) and noise words."""
    noise = " ".join(rng.choice(WORDS) for _ in range(4))
    verb = "prove that" if hard else "tell me if"
    return [{"role": "user", "content": f"please {verb} claim {i} holds {noise}"}], noise


def dataset(n: int, seed: int, flip: float = 0.2) -> tuple[list[tuple[str, dict[str, float]]],
                                                           list[int]]:
    rng = random.Random(seed)
    rows, labels = [], []
    for i in range(n):
        hard = rng.random() < 0.4
        msgs, _ = request(i, hard, rng)
        rows.append(learned.features(msgs, "gpt-4o", {"feature": "qa"}))
        y = int(hard)
        labels.append(1 - y if rng.random() < flip else y)  # 20% of labels are noise
    return rows, labels


def test_features_see_the_request_only() -> None:
    text, meta = learned.features(
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "text", "text": "Fix ```x = 1``` in 3 lines?"}]}],
        "gpt-4o", {"team": "search"})
    assert text == "Be brief. Fix ```x = 1``` in 3 lines?"
    assert meta["turns"] == 2.0 and meta["system"] == 1.0 and meta["code_blocks"] == 1.0
    assert meta["questions"] == 1.0 and meta["model=gpt-4o"] == 1.0
    assert meta["tag:team=search"] == 1.0
    assert learned.label(0.9, 0.8) == 0 and learned.label(0.5, 0.8) == 1


def test_an_in_sample_evaluation_overstates_and_out_of_fold_does_not() -> None:
    rows, labels = dataset(800, seed=1)
    fresh_rows, fresh_labels = dataset(800, seed=2)  # the truth: traffic it never saw
    model = learned.fit(rows, labels, "gbdt")
    in_sample = learned.auc(labels, learned.predict(model, rows))
    truth = learned.auc(fresh_labels, learned.predict(model, fresh_rows))
    oof = learned.cross_fit(rows, labels, "gbdt", folds=5, scheme="forward")
    assert oof[:160] == [None] * 160  # the first fold: nothing came before it
    scored = [(y, p) for y, p in zip(labels, oof, strict=True) if p is not None]
    ours = learned.auc([y for y, _ in scored], [p for _, p in scored])
    assert in_sample is not None and truth is not None and ours is not None
    # Memorised noise: the in-sample figure is well above what new traffic gives; ours is not.
    assert in_sample - truth > 0.04
    assert abs(ours - truth) < 0.04, (in_sample, ours, truth)
    kfold = learned.cross_fit(rows, labels, "logreg", folds=4, scheme="kfold")
    assert all(p is not None for p in kfold)


def test_versions_are_skops_artefacts_and_the_export_scores_the_same(tmp_path: Path) -> None:
    rows, labels = dataset(300, seed=3)
    model, info = learned.train_version("r", "logreg", "cheap", 0.8, rows, labels,
                                        datetime(2026, 11, 30, tzinfo=UTC), 1)
    learned.save_version(tmp_path, model, info)
    (listed,) = learned.list_versions(tmp_path, "r")
    assert listed == info and info.rows == 300 and info.cv_auc is not None
    assert 0.6 < info.cv_auc <= 1.0 and 0.3 < info.strong_share < 0.6
    art, meta = learned.version_paths(tmp_path, "r", 1)
    assert art.name == "v0001.skops" and meta.name == "v0001.json"
    loaded = learned.load_model(art)
    assert learned.predict(loaded, rows[:20]) == pytest.approx(learned.predict(model, rows[:20]))
    # The exported scorer: its own copy of the features code, the same numbers.
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.skops").write_bytes(art.read_bytes())
    (out / "router.py").write_text(learned.export_source())
    msgs = [{"role": "user", "content": "please prove that claim 7 holds w1 w2 w3 w4"}]
    code = ("import json, router; print(json.dumps(router.score(json.loads(input()), 'gpt-4o', "
            "{'feature': 'qa'})))")
    r = subprocess.run([sys.executable, "-c", code], input=orjson.dumps(msgs).decode(),
                       capture_output=True, text=True, cwd=out, check=True)
    expected = learned.predict(model, [learned.features(msgs, "gpt-4o", {"feature": "qa"})])[0]
    assert float(r.stdout) == pytest.approx(expected)


# -- training from the store --------------------------------------------------------------------

def add_labelled(store: Store, start: int, n: int, t0: datetime, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(start, start + n):
        sid = f"s{i:04d}"
        hard = rng.random() < 0.4
        msgs, _ = request(i, hard, rng)
        store.con.execute(
            "INSERT INTO requests (request_id, ts, model, stratum, eligible, sampled, "
            "sample_rate, cost_usd) VALUES (?, ?, 'gpt-4o', 'gpt-4o|qa', true, true, 1.0, 0.01)",
            [sid, t0 + timedelta(seconds=i)])
        store.con.execute(
            "INSERT INTO samples (sample_id, stratum, frontier_model, messages, params, tags, "
            "response_text, frontier_cost_usd, scorer, status) VALUES (?, 'gpt-4o|qa', 'gpt-4o', "
            "?, '{}', '{\"feature\": \"qa\"}', 'a', 0.01, 'exact_match', 'done')",
            [sid, orjson.dumps(msgs).decode()])
        store.con.execute("INSERT INTO shadow_calls (sample_id, model, answer, cost_usd) "
                          "VALUES (?, 'cheap', 'a', 0.001)", [sid])
        store.con.execute("INSERT INTO scores (sample_id, model, scorer, value) "
                          "VALUES (?, 'cheap', 'exact_match', ?)", [sid, 0.0 if hard else 1.0])


def cfg(tmp_path: Path, **kw: Any) -> LearnedRouterConfig:
    return LearnedRouterConfig(name="learned", model="cheap", models_dir=str(tmp_path / "models"),
                               min_rows=100, retrain_after_labels=100, **kw)


def test_trainer_versions_and_out_of_fold_scores(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    t0 = datetime(2026, 11, 30, 9, 0)
    store = Store(db)
    add_labelled(store, 0, 60, t0, seed=5)
    store.close()
    router = LearnedRouter(cfg(tmp_path))
    ask = RouteInput("x", "gpt-4o", "", {"feature": "qa"},
                     [{"role": "user", "content": "please prove that claim 1 holds"}])

    async def go() -> list[Any]:
        st = open_store(db, "thread")
        try:
            trainer = Trainer(router, st)
            out: list[Any] = [await trainer.on_new_labels()]  # 60 < min_rows: nothing
            with pytest.raises(RouterCallFailed, match="no version trained yet"):
                await router.score(ask)
            await asyncio.to_thread(_more, st, 60, 140)
            out.append(await trainer.on_new_labels())  # the first version
            hard = await router.score(ask)
            out.append((hard, router.version))
            await asyncio.to_thread(_more, st, 200, 50)
            out.append(await trainer.on_new_labels())  # 50 new labels < 100: no retrain
            out.append(await trainer.train())  # the schedule's: retrains
            return out
        finally:
            st.close()

    none, v1, (hard, tag), skipped, v2 = asyncio.run(go())
    assert none is None and skipped is None
    assert (v1.version, v1.rows, tag) == (1, 200, "v1") and v2.version == 2 and v2.rows == 250
    assert v1.cutoff == (t0 + timedelta(seconds=199)).replace(tzinfo=UTC).isoformat()
    assert hard > 0.5
    # Out-of-fold scores for every sample but the first fold (forward: nothing before it).
    rows = dict(Store(db, read_only=True).fetch(
        "SELECT version, count(*) FROM router_scores WHERE router = 'learned' GROUP BY 1"))
    assert rows == {"oof-forward/5": 250 - 40}
    assert [v.version for v in learned.list_versions(tmp_path / "models", "learned")] == [1, 2]
    # A pinned version is the one scoring, after a restart too.
    pinned = LearnedRouter(cfg(tmp_path, pin_version=1))
    assert pinned.version == "v1" and LearnedRouter(cfg(tmp_path)).version == "v2"


def _more(st: Any, start: int, n: int) -> None:
    """More labelled samples, as the service's writes would add them (nothing else runs)."""
    add_labelled(st.store, start, n, datetime(2026, 11, 30, 9, 0), seed=start)


def test_learned_router_config() -> None:
    env = {"SHADOWROUTE_ROUTERS__0__NAME": "learned", "SHADOWROUTE_ROUTERS__0__KIND": "learned",
           "SHADOWROUTE_ROUTERS__0__MODEL": "cheap", "SHADOWROUTE_ROUTERS__0__ALGORITHM": "gbdt",
           "SHADOWROUTE_ROUTERS__0__RETRAIN_CRON": "0 3 * * *"}
    (r,) = load_config(None, env=env).routers
    assert isinstance(r, LearnedRouterConfig) and (r.algorithm, r.retrain_cron) == ("gbdt",
                                                                                    "0 3 * * *")

    with pytest.raises(ConfigError) as e:
        load_config(None, env={**env, "SHADOWROUTE_SHADOW__MODELS__0__NAME": "mini",
                               "SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "http://127.0.0.1:9"})
    assert str(e.value) == ("routers[0].model: 'cheap' is not one of the cheap models (mini): "
                            "its scores are the labels")

    def error(**kw: Any) -> str:
        with pytest.raises(ConfigError) as e:
            check_routers((LearnedRouterConfig(name="l", **{"model": "cheap", **kw}),))
        return str(e.value)

    assert error(model="") == ("routers[0].model: is required: the cheap model whose scores "
                               "label the samples")
    assert error(algorithm="svm") == "routers[0].algorithm: must be one of logreg, gbdt, got 'svm'"
    assert error(backfill="random") == ("routers[0].backfill: must be one of forward, kfold, "
                                        "got 'random'")
    assert error(retrain_cron="every day").startswith("routers[0].retrain_cron: not a crontab")
    assert error(bar=0.0) == "routers[0].bar: must be above 0 and at most 1, got 0.0"


def test_routers_and_export_router_commands(tmp_path: Path) -> None:
    rows, labels = dataset(200, seed=4)
    models = tmp_path / "models"
    for number in (1, 2):
        model, info = learned.train_version("learned", "logreg", "cheap", 0.8, rows, labels,
                                            datetime(2026, 11, 30, number, tzinfo=UTC), number)
        learned.save_version(models, model, info)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWROUTE_")}
    env.update({"SHADOWROUTE_ROUTERS__0__NAME": "learned",
                "SHADOWROUTE_ROUTERS__0__KIND": "learned",
                "SHADOWROUTE_ROUTERS__0__MODEL": "cheap",
                "SHADOWROUTE_ROUTERS__0__MODELS_DIR": str(models),
                "SHADOWROUTE_ROUTERS__0__PIN_VERSION": "1"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shadowroute.cli", *args],
                              capture_output=True, text=True, timeout=120, env=env,
                              cwd=Path(__file__).resolve().parents[2])

    listed = cli("routers", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    got = [(v["version"], v["active"], v["rows"]) for v in orjson.loads(listed.stdout)]
    assert got == [(1, True, 200), (2, False, 200)]  # pinned: v1 scores
    out = tmp_path / "export"
    done = cli("export-router", "learned", "--version", "v2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.skops", "router.py", "version.json"]
    assert orjson.loads((out / "version.json").read_text())["version"] == 2
    missing = cli("export-router", "learned", "--version", "v9", "--out", str(out))
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("has no version v9 in " + str(models)
                                           + " (versions: v1, v2)")
    bad = cli("export-router", "learned", "--version", "latest", "--out", str(out))
    assert bad.returncode == 2 and "--version: not a version: 'latest'" in bad.stderr
    assert cli("export-router", "nope", "--version", "1", "--out", str(out)).returncode == 1
