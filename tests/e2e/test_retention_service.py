"""Retention in the running service, through the broker: the scheduler rolls up and deletes the
requests past the horizon while ingest goes on, and the estimates equal those of a run that kept
every row."""

from __future__ import annotations

import asyncio
from pathlib import Path

from analytics.store import Store
from shadowroute.demo.broker import Broker
from tests.e2e.test_two_instances import Instance, answer, records, until
from tests.support.compare import assert_same_rows
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer


def test_the_service_purges_old_requests_and_keeps_the_estimates(broker: Broker, topic: str,
                                                                 tmp_path: Path) -> None:
    def instance(name: str, url: str, env: dict[str, str]) -> Instance:
        path = write_config(tmp_path / f"{name}.toml", bootstrap=broker.bootstrap, topic=topic,
                            group=f"g-{name}", db=tmp_path / f"{name}.duckdb", model_url=url,
                            default_rate=0.3, math_rate=0.3)
        return Instance(name, path, env)

    async def main() -> None:
        # The records are a year old: past a 30-day horizon as soon as they are stored.
        await produce(broker.bootstrap, topic, records(0, 400))
        with ModelServer(ModelBehaviour(answer=answer)) as ms:
            kept = instance("kept", ms.url, {})
            purged = instance("purged", ms.url, {"SHADOWROUTE_RETENTION__REQUESTS_DAYS": "30",
                                                 "SHADOWROUTE_RETENTION__TEXTS_DAYS": "30",
                                                 "SHADOWROUTE_RETENTION__REJECTED_DAYS": "30",
                                                 "SHADOWROUTE_RETENTION__EVERY_S": "0.5"})
            for x in (kept, purged):
                x.start()

                async def done(x: Instance = x) -> bool:
                    c = await x.counts()
                    return c["requests"] == 400 and c["done"] > 50 and not c["pending"]

                await until(done, f"{x.name}: 400 stored, every sample done")

            async def rolled() -> bool:
                assert purged.svc is not None
                left = await asyncio.to_thread(purged.svc.store.reads.fetch,
                                               "SELECT count(*) FROM requests WHERE NOT sampled")
                return left == [(0,)]

            await until(rolled, "the unsampled requests rolled up")
            await asyncio.sleep(1.0)  # one more round of the job: nothing left to do
            for x in (kept, purged):
                await x.stop()

    asyncio.run(main())
    figures = {}
    for name in ("kept", "purged"):
        store = Store(tmp_path / f"{name}.duckdb", read_only=True)
        try:
            figures[name] = [store.fetch(q) for q in (
                "SELECT * EXCLUDE (quality_se) FROM savings ORDER BY router, threshold, model",
                "SELECT * FROM segment_savings ORDER BY router, threshold, model, segment",
                "SELECT requests, sampled FROM strata ORDER BY stratum, model")]
            rows = store.fetch("SELECT (SELECT count(*) FROM requests), "
                               "(SELECT coalesce(sum(requests), 0) FROM request_rollups), "
                               "(SELECT count(*) FROM samples WHERE messages IS NOT NULL)")[0]
            figures[name].append(rows)
        finally:
            store.close()
    detail, rolled_up, with_text = figures["purged"].pop()
    assert detail + rolled_up == 400 and rolled_up > 200 and with_text == 0
    assert figures["kept"].pop()[1] == 0
    for got, want in zip(figures["purged"], figures["kept"], strict=True):
        assert len(want) > 0
        assert_same_rows(got, want)
