"""A cheap model that is down for good, and one that comes back: through the broker and the
service as a subprocess, as an operator would see it (/healthz, /metrics, the log, the samples)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from shadowroute.demo.broker import Broker
from tests.support.configs import write_config
from tests.support.kafka import produce
from tests.support.model_server import ModelBehaviour, ModelServer, closed_port_url
from tests.support.process import ServiceProcess
from tests.support.traffic import cheap_answer, make_records

FAST_HEALTH = """
[shadow]
concurrency = 2
allowed_fails = 1
first_probe_s = 0.2
cooldown_s = 1
max_wait_s = 2
max_retries = 0
"""


def _health(svc: ServiceProcess) -> dict:  # type: ignore[type-arg]
    return httpx.get(svc.url + "/healthz", timeout=5).json()  # type: ignore[no-any-return]


def test_a_model_that_stays_down_is_shown_and_its_samples_move_on(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    values, _ = make_records(300, seed=5)
    asyncio.run(produce(broker.bootstrap, topic, values))
    cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                       group="g-down", db=db_path, model_url=closed_port_url(),
                       default_rate=0.2, math_rate=0.2, extra=FAST_HEALTH)
    svc = ServiceProcess(cfg, db_path, tmp_path / "service.log")
    try:
        svc.wait(lambda: svc.sql("SELECT count(*) FROM requests")[0][0] == 300,
                 what="all records")
        svc.wait(lambda: not _health(svc)["models"]["cheap"]["up"], timeout=30,
                 what="the model shown down")
        health = _health(svc)
        assert health["shadow"] == "degraded"
        [dep] = health["models"]["cheap"]["deployments"].values()
        assert dep["state"] == "down" and "connection" in dep["last_error"]
        # Every sample ends: none waits behind a probe that keeps failing.
        t0 = time.monotonic()
        svc.wait(lambda: svc.sql("SELECT count(*) FROM samples WHERE status = 'pending'")[0][0]
                 == 0, timeout=60, what="no pending samples")
        waited = time.monotonic() - t0
        # Not one max_wait_s per sample in turn (~55 samples x 2 s / 2 workers): at once.
        assert waited < 20, waited
        statuses = dict(svc.sql("SELECT status, count(*) FROM samples GROUP BY ALL"))
        # Calls that reached the dead endpoint (the first ones, then one probe per cooldown)
        # failed; the others were given up without a call once it had been down max_wait_s.
        assert set(statuses) <= {"skipped_unavailable", "skipped_failed"}, statuses
        assert statuses["skipped_unavailable"] > 3 * statuses.get("skipped_failed", 0), statuses
        reasons = svc.sql("SELECT DISTINCT skip_reason FROM samples")
        assert all("down for" in r[0] or "connection" in r[0] for r in reasons), reasons
        # The gauges refresh every 5 s.
        svc.wait(lambda: re.search(r'shadowroute_shadow_deployment_up\{deployment="[^"]+",'
                                   r'model="cheap"\} 0\.0',
                                   httpx.get(svc.url + "/metrics", timeout=5).text) is not None,
                 timeout=15, what="deployment_up 0 in /metrics")
        # Still down after several probes, yet said once: not at every probe.
        time.sleep(2.5)
        log = svc.log.read_text()
        assert log.count("is down after") == 1, log[-3000:]
        assert svc.terminate() == 0
    finally:
        if svc.proc.poll() is None:
            svc.kill9()
    print(f"\nsamples ended {statuses} {waited:.1f}s after the model was shown down")


def test_a_model_back_after_a_while_is_used_again_within_seconds(
        broker: Broker, topic: str, db_path: Path, tmp_path: Path) -> None:
    """The cooldown is 60 s, but the first probes come after 0.2, 0.4, 0.8 ... s: a model back
    after ~3 s answers again well before a whole cooldown has passed."""
    values, _ = make_records(200, seed=6)
    with ModelServer(ModelBehaviour(answer=cheap_answer, fail_next=[503] * 10_000)) as ms:
        cfg = write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap, topic=topic,
                           group="g-back", db=db_path, model_url=ms.url, default_rate=0.3,
                           math_rate=0.3, extra=FAST_HEALTH.replace("cooldown_s = 1",
                                                                    "cooldown_s = 60")
                           .replace("max_wait_s = 2", "max_wait_s = 120"))
        svc = ServiceProcess(cfg, db_path, tmp_path / "service.log")
        try:
            asyncio.run(produce(broker.bootstrap, topic, values))
            svc.wait(lambda: not _health(svc)["models"]["cheap"]["up"], timeout=30,
                     what="the model shown down")
            time.sleep(3)
            ms.behaviour.fail_next.clear()  # the model is back
            back = time.monotonic()
            svc.wait(lambda: _health(svc)["models"]["cheap"]["up"], timeout=30,
                     what="the model shown up again")
            recovered = time.monotonic() - back
            assert recovered < 15  # the doubling probes: at most ~6.4 s apart by then
            svc.wait(lambda: svc.sql("SELECT count(*) FROM samples WHERE status = 'pending'")
                     [0][0] == 0, timeout=60, what="no pending samples")
            done = svc.sql("SELECT count(*) FROM samples WHERE status = 'done'")[0][0]
            assert done > 0
            assert "is up again after" in svc.log.read_text()
            assert svc.terminate() == 0
        finally:
            if svc.proc.poll() is None:
                svc.kill9()
    print(f"\nmodel used again {recovered:.1f}s after it came back (cooldown_s = 60)")
