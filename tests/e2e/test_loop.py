"""The whole loop on real parts: Kafka -> ingest -> sample -> shadow -> score -> DuckDB -> savings -> gate."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from analytics.gate import GateRequest, evaluate
from analytics.store import Store
from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from tests.support.configs import CHEAP_IN, CHEAP_OUT, write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.service import run_until_consumed
from tests.support.traffic import cheap_answer, cheap_cost, expected_quality, make_records

N = 2000
BAD_EVERY = 97  # 20 malformed records among the 2,000


def test_end_to_end(broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    values, truth = make_records(N, seed=11, bad_every=BAD_EVERY)
    n_bad = N - len(truth)
    assert n_bad == N // BAD_EVERY
    asyncio.run(produce(broker.bootstrap, topic, values))

    with ModelServer(ModelBehaviour(answer=cheap_answer)) as ms:
        cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap,
                                       topic=topic, group="g-e2e", db=db_path, model_url=ms.url),
                          env={})
        asyncio.run(run_until_consumed(cfg, N))
        replayed = len(ms.behaviour.requests)

    con = duckdb.connect(str(db_path), read_only=True)
    q = lambda s: con.execute(s).fetchall()  # noqa: E731
    assert q("SELECT count(*) FROM requests")[0][0] == len(truth)
    assert q("SELECT count(DISTINCT request_id) FROM requests")[0][0] == len(truth)
    assert q("SELECT count(*) FROM rejected")[0][0] == n_bad
    assert q("SELECT count(*) FROM rejected WHERE reason IS NULL OR raw IS NULL")[0][0] == 0
    assert q("SELECT sum(next_offset) FROM offsets")[0][0] == N

    # Sampled share within a binomial bound of each stratum's configured rate.
    for feature, rate in (("math", 0.3), ("extract", 0.2)):
        n, k = con.execute("SELECT count(*), count(*) FILTER (WHERE sampled) FROM requests "
                           "WHERE tags->>'feature' = ?", [feature]).fetchone()
        assert abs(k - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), (feature, n, k)
    sampled = {r[0] for r in q("SELECT request_id FROM requests WHERE sampled")}
    assert {r[0] for r in q("SELECT sample_id FROM samples")} == sampled
    assert q("SELECT count(*) FROM samples WHERE status <> 'done'")[0][0] == 0
    assert replayed == len(sampled)
    # Every sample: one shadow call, one score with the tag's scorer, one score per router.
    assert q("SELECT count(*) FROM shadow_calls WHERE error IS NULL")[0][0] == len(sampled)
    assert q("SELECT count(*) FROM router_scores")[0][0] == 2 * len(sampled)
    scores = dict(q("SELECT sample_id, value FROM scores"))
    assert set(scores) == sampled
    for sid in sampled:
        assert scores[sid] == expected_quality(truth[sid]), sid
    assert q("SELECT count(*) FROM scores s JOIN samples USING (sample_id) "
             "WHERE (tags->>'feature' = 'math') <> (s.scorer = 'final_number')")[0][0] == 0
    # Costs: half the records priced from the price table.
    assert q("SELECT count(*) FROM requests WHERE cost_source = 'price_table'")[0][0] > 0
    for rid, cost in q("SELECT request_id, cost_usd FROM requests"):
        assert cost == pytest.approx(truth[rid].cost_usd, rel=1e-9)

    # The savings view against an independent computation.
    feature_of = {rid: t.feature for rid, t in truth.items()}
    big_n: dict[str, int] = defaultdict(int)
    for rid in truth:
        big_n[feature_of[rid]] += 1
    router_scores = {(s, r): v for s, r, v in q("SELECT sample_id, router, score FROM router_scores")}

    def expect(router: str, thr: float) -> tuple[float, float, float, float]:
        by_h: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for sid in sampled:
            t = truth[sid]
            cm = cheap_cost(t.prompt, cheap_answer(t.prompt), CHEAP_IN, CHEAP_OUT)
            if router == "all_cheap":
                cheap = True
            elif router == "oracle":
                cheap = expected_quality(t) >= 1
            else:
                cheap = router_scores[(sid, router)] < thr
            by_h[t.feature].append((expected_quality(t) if cheap else 1.0,
                                    cm if cheap else t.cost_usd, t.cost_usd))
        tot = sum(big_n[h] for h in by_h)
        quality = sum(big_n[h] * sum(x[0] for x in v) / len(v) for h, v in by_h.items()) / tot
        routed = sum(big_n[h] * sum(x[1] for x in v) / len(v) for h, v in by_h.items())
        front = sum(big_n[h] * sum(x[2] for x in v) / len(v) for h, v in by_h.items())
        var = 0.0
        for h, v in by_h.items():
            xs = [x[0] for x in v]
            m = sum(xs) / len(xs)
            var += (big_n[h] / tot) ** 2 * (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) / len(xs)
        # The dollars: the savings ratio times the frontier spend every request logged.
        spend = sum(t.cost_usd for t in truth.values() if t.feature in by_h)
        return quality, 1 - routed / front, (1 - routed / front) * spend, math.sqrt(var)

    rows = q("SELECT router, threshold, model, quality, savings, projected_usd_saved, quality_se, "
             "samples FROM savings")
    assert {(r[0], r[1] is None) for r in rows} == {("random", False), ("rules", False),
                                                    ("all_cheap", True), ("oracle", True)}
    assert len(rows) == 2 * 21 + 2
    for router, thr, model, quality, savings, saved, se, samples in rows:
        assert model == "cheap" and samples == len(sampled)
        eq, es, esaved, ese = expect(router, thr if thr is not None else 0.5)
        assert quality == pytest.approx(eq, abs=1e-9), (router, thr)
        assert savings == pytest.approx(es, abs=1e-9), (router, thr)
        assert saved == pytest.approx(esaved, rel=1e-6, abs=1e-12), (router, thr)
        assert se == pytest.approx(ese, abs=1e-9), (router, thr)
    oracle = [r for r in rows if r[0] == "oracle"][0]
    assert oracle[3] == pytest.approx(1.0)

    # The gate on the same data: pass, fail and inconclusive, each decided independently.
    store = Store(db_path, read_only=True)
    try:
        def verdict(router: str, thr: float, min_q: float, min_n: int) -> str:
            out = evaluate(store.query_table, GateRequest(router, thr, "cheap", min_q, min_n))
            return str(out["verdict"])

        eq, _, _, _ = expect("rules", 0.3)
        # The gate's one-sided 95% bounds: the two-sided 90% interval of the view.
        _, bounds = store.query_table(
            "SELECT quality_lower, quality_upper FROM savings_at([0.3], z := 1.6449) "
            "WHERE router = 'rules' AND model = 'cheap'")
        lo, hi = bounds[0]
        assert lo < eq < hi
        assert verdict("rules", 0.3, round(lo - 0.01, 4), 10) == "pass"
        assert verdict("rules", 0.3, round(hi + 0.01, 4), 10) == "fail"
        assert verdict("rules", 0.3, round(eq, 4), 10) == "inconclusive"
        assert verdict("rules", 0.3, 0.5, len(sampled) + 1) == "inconclusive"
        assert verdict("oracle", 0.5, 0.99, 10) == "pass"
        assert verdict("nope", 0.5, 0.5, 10) == "inconclusive"
    finally:
        store.close()
    con.close()
