"""Two instances in one consumer group over 4 partitions, through the broker: one stops and
comes back (two rebalances; the partitions it owned were read by the other meanwhile), and the
union of their lake exports gives exactly the figures of one instance reading the same records.
The hard budget is split by the partitions each owns."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson

from analytics import lake
from analytics.store import Store
from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from shadowroute.service import Service
from tests.support.compare import assert_same_rows
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer


def records(start: int, n: int) -> list[bytes]:
    rng = random.Random(start)
    return [orjson.dumps({
        "request_id": f"r-{i}", "ts": 1764244800 + 60 * i,
        "request": {"model": "gpt-4o", "messages": [
            {"role": "user", "content": f"What is {i} plus 1? {rng.choice('xyz')}"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": str(i + 1)},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 20, "completion_tokens": 2}},
        "cost_usd": 0.001, "tags": {"feature": rng.choice(["math", "chat"])}})
        for i in range(start, start + n)]


def answer(prompt: str) -> str:
    n = int(prompt.split("What is ")[1].split()[0])
    return str(n + 1) if n % 3 else str(n)  # wrong on every third


class Instance:
    def __init__(self, name: str, path: Path, env: dict[str, str]) -> None:
        self.name, self.cfg = name, load_config(path, env=env)
        self.svc: Service | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.svc = Service(self.cfg)
        self.task = asyncio.create_task(self.svc.run(install_signals=False))

    async def stop(self) -> None:
        assert self.svc is not None and self.task is not None
        self.svc.stop_event.set()
        await self.task

    async def counts(self) -> dict[str, int]:
        assert self.svc is not None and self.task is not None
        if self.task.done():
            self.task.result()
        return await self.svc.store.counts()


async def until(check: object, what: str, timeout_s: float = 120) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout_s} s")


def test_two_instances_in_one_group_give_one_answer(broker: Broker, topic: str,
                                                     tmp_path: Path) -> None:
    lake_dir = tmp_path / "lake"

    def config(name: str, group: str, url: str) -> tuple[Path, dict[str, str]]:
        path = write_config(tmp_path / f"{name}.toml", bootstrap=broker.bootstrap, topic=topic,
                            group=group, db=tmp_path / f"{name}.duckdb", model_url=url,
                            default_rate=0.5, math_rate=0.5)
        return path, {"SHADOWROUTE_STORAGE__LAKE_DIR": str(lake_dir if group == "g-two"
                                                           else tmp_path / "lake-one"),
                      "SHADOWROUTE_STORAGE__INSTANCE_ID": name,
                      "SHADOWROUTE_SHADOW__BUDGET__USD_PER_DAY": "100.0"}

    async def main() -> dict[str, float]:
        shares: dict[str, float] = {}
        with ModelServer(ModelBehaviour(answer=answer)) as ms:
            a = Instance("a", *config("a", "g-two", ms.url))
            b = Instance("b", *config("b", "g-two", ms.url))

            async def stored(n: int, *xs: Instance) -> bool:
                cs = [await x.counts() for x in xs]
                return sum(c["requests"] for c in cs) >= n and not any(c["pending"] for c in cs)

            await produce(broker.bootstrap, topic, records(0, 300))
            a.start()
            b.start()


            async def split() -> bool:  # both in the group: two partitions each
                return all(getattr(x.svc, "budget", None) is not None
                           and x.svc.budget.share == 0.5 for x in (a, b))  # type: ignore[union-attr]

            await until(split, "the budget split between a and b")
            await until(lambda: stored(300, a, b), "300 stored by a and b")
            assert a.svc is not None and b.svc is not None
            shares["a"], shares["b"] = a.svc.budget.share, b.svc.budget.share
            await b.stop()  # a takes every partition; b's file keeps its stored positions
            await produce(broker.bootstrap, topic, records(300, 300))
            await until(lambda: _total(a, tmp_path / "b.duckdb", 600), "600 stored after b left")
            b.start()  # b is back: the partitions it gets were read by a since
            await produce(broker.bootstrap, topic, records(600, 200))
            await until(lambda: stored(800, a, b), "800 stored by a and b")
            await a.stop()
            await b.stop()
            # One instance alone reading the same records, for the answer to compare with.
            one = Instance("one", *config("one", "g-one", ms.url))
            one.start()
            await until(lambda: stored(800, one), "800 stored by one instance")
            await one.stop()
        return shares

    shares = asyncio.run(main())
    # The budget followed the partitions: two each of four while both ran.
    assert shares == {"a": 0.5, "b": 0.5}
    # Every record stored once across the two files: b resumed where a had committed, not at
    # its own stale positions.
    rows = [_rows(tmp_path / f"{n}.duckdb") for n in ("a", "b")]
    assert sum(rows) == 800 and min(rows) > 0, rows
    merged = tmp_path / "merged.duckdb"
    assert lake.merge(lake_dir, merged)["requests"] == 800
    one = tmp_path / "one.duckdb"
    for q in ("SELECT * EXCLUDE (quality_se) FROM savings ORDER BY router, threshold, model",
              "SELECT * FROM segment_savings ORDER BY router, threshold, model, segment",
              "SELECT status, count(*) FROM samples GROUP BY 1 ORDER BY 1"):
        want = _fetch(one, q)
        assert len(want) > 0
        assert_same_rows(_fetch(merged, q), want, q)


def _fetch(db: Path, q: str) -> list[tuple[object, ...]]:
    store = Store(db, read_only=True)
    try:
        return store.fetch(q)
    finally:
        store.close()


def _rows(db: Path) -> int:
    return int(_fetch(db, "SELECT count(*) FROM requests")[0][0])  # type: ignore[call-overload]


async def _total(a: Instance, b_db: Path, n: int) -> bool:
    c = await a.counts()
    return c["requests"] + _rows(b_db) >= n and not c["pending"]
