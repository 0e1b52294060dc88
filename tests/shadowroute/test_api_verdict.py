"""/v1/verdict as rollout tools call it, on a real HTTP server (uvicorn on 127.0.0.1) over a
real DuckDB file: Argo Rollouts' `web` metric provider (GET, JSON, always 200, judged by a
successCondition on fields) and a Flagger webhook (POST {name, namespace, phase, metadata};
200 only on pass)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from analytics.calibrate import save
from analytics.store import Store
from shadowroute.api import build_app
from shadowroute.config import load_config
from shadowroute.metrics import Metrics
from tests.analytics.test_gate import MODEL, ROUTER, S, fill, perfect

DATA = {
    "gpt-4o|chat": (20_000, perfect(400)),
    "gpt-4o|code": (20_000, perfect(400, 0.2)),
    # Hard legal questions the router keeps on the frontier below 0.9: sent cheap at 0.95,
    # 40% of them go wrong.
    "gpt-4o|legal": (5_000, [S(1.0, 0.9)] * 90 + [S(0.0, 0.9)] * 60),
}
BASE = {"router": ROUTER, "model": MODEL, "min_samples": "100"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("api") / "verdict.duckdb"
    store = Store(db)
    fill(store, DATA, noise=False)
    # Day 1: half the chat and code traffic; day 2: the rest, and all the legal questions.
    store.con.execute("UPDATE requests SET ts = CASE WHEN stratum = 'gpt-4o|legal' OR "
                      "CAST(regexp_extract(request_id, '([0-9]+)$', 1) AS BIGINT) >= 200 "
                      "THEN TIMESTAMP '2026-01-02 12:00' ELSE TIMESTAMP '2026-01-01 12:00' END")
    cfg = load_config(env={"SHADOWROUTE_STORAGE__DB_PATH": str(db)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(store, cfg, Metrics(), lambda: {}, port=port),
                                        host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    save(db, "safe", {"router": ROUTER, "model": MODEL, "threshold": 0.5, "target": 0.97})
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)
    store.close()


def argo(url: str, params: dict[str, str]) -> tuple[int, Any]:
    """What Argo Rollouts' web provider does: GET the URL and parse the JSON body as `result`
    (no jsonPath), for successCondition `result.verdict == "pass"` and failureCondition
    `result.verdict == "fail"` (neither: Inconclusive). A status other than 2xx would be a
    measurement error, not a verdict."""
    r = httpx.get(url + "/v1/verdict", params=params, headers={"Accept": "application/json"})
    body = r.json()
    return r.status_code, body


def flagger(url: str, metadata: dict[str, str], query: str = "") -> httpx.Response:
    """What Flagger does for a webhook: POST its CanaryWebhookPayload as JSON."""
    return httpx.post(url + "/v1/verdict" + query, json={
        "name": "podinfo", "namespace": "test", "phase": "Progressing",
        "checksum": "6f6d7f1b", "metadata": metadata})


def test_argo_web_provider_reads_every_verdict_with_status_200(server: str) -> None:
    for threshold, bar, verdict in (("0.5", "0.95", "pass"), ("0.95", "0.95", "fail"),
                                    ("0.5", "0.999", "inconclusive")):
        status, body = argo(server, {**BASE, "threshold": threshold, "min_quality": bar})
        assert status == 200
        assert body["verdict"] == verdict, body["reasons"]
        assert body["pass"] is (verdict == "pass")
        # The fields a successCondition can use: the bounds, savings, the failed segments.
        assert {"quality_lower", "quality_upper", "savings_lower", "samples",
                "failed_segments", "segments"} <= body.keys()
    _, body = argo(server, {**BASE, "threshold": "0.95", "min_quality": "0.95"})
    assert body["failed_segments"] == ["legal"]


def test_query_parameters_set_the_bars(server: str) -> None:
    _, body = argo(server, {**BASE, "threshold": "0.95", "min_quality": "0.95",
                            "segment_min_quality": "legal=0.5"})
    assert body["failed_segments"] == [] and body["segment_min_quality"] == {"legal": 0.5}
    _, body = argo(server, {**BASE, "threshold": "0.5", "min_savings": "0.99"})
    assert body["verdict"] == "fail" and body["reasons"][-1].startswith("savings upper bound")
    _, body = argo(server, {**BASE, "threshold": "0.5", "interval": "bootstrap",
                            "replicates": "500", "confidence": "0.9"})
    assert (body["verdict"], body["interval"], body["confidence"]) == ("pass", "bootstrap", 0.9)
    _, body = argo(server, {"calibration": "safe", "min_samples": "100"})
    assert (body["threshold"], body["min_quality"], body["verdict"]) == (0.5, 0.97, "pass")
    for bad, message in (({"threshold": "x"}, "parameter threshold: cannot read 'x'"),
                         ({"interval": "magic"}, "parameter interval: cannot read 'magic'"),
                         ({"segment_min_quality": "legal"}, "parameter segment_min_quality"),
                         ({"calibration": "nope"}, "parameter calibration: no calibration")):
        r = httpx.get(server + "/v1/verdict", params={**BASE, "threshold": "0.5", **bad})
        assert r.status_code == 400 and r.json()["error"].startswith(message)


def test_flagger_webhook_gets_200_only_on_pass(server: str) -> None:
    meta = {**BASE, "min_quality": "0.95"}
    r = flagger(server, {**meta, "threshold": "0.5"})
    assert r.status_code == 200 and r.json()["verdict"] == "pass"
    assert r.json()["canary"] == {"name": "podinfo", "namespace": "test", "phase": "Progressing"}
    r = flagger(server, {**meta, "threshold": "0.95"})
    assert r.status_code == 412 and r.json()["failed_segments"] == ["legal"]
    r = flagger(server, {**meta, "threshold": "0.5", "min_quality": "0.999"})
    assert r.status_code == 425 and r.json()["verdict"] == "inconclusive"
    # Parameters in the webhook's URL, metadata over them.
    r = flagger(server, {"threshold": "0.5"},
                query=f"?router={ROUTER}&model={MODEL}&min_samples=100&threshold=0.95")
    assert r.status_code == 200
    # Not a webhook payload, or missing parameters: 400, which Flagger counts as a failure.
    assert httpx.post(server + "/v1/verdict", content=b"[1]",
                      headers={"Content-Type": "application/json"}).status_code == 400
    r = flagger(server, {"router": ROUTER})
    assert r.status_code == 400 and r.json()["error"] == "parameter threshold is required"


def test_a_drop_between_windows_is_flagged_in_the_verdict_and_metrics(server: str) -> None:
    # At 0.95 the legal questions go cheap, and they all came on day 2.
    _, body = argo(server, {**BASE, "threshold": "0.95", "window": "day"})
    assert body["window_start"] == "2026-01-02T00:00:00"
    assert [w["window"] for w in body["windows"]] == ["2026-01-01T00:00:00",
                                                      "2026-01-02T00:00:00"]
    day1, day2 = body["windows"]
    assert body["samples"] == day2["samples"] == 400 + 150
    assert body["quality"] == day2["quality"] < day1["quality_lower"]
    assert body["quality_drop"] is True
    assert "quality dropped from" in body["reasons"][-1]
    metrics = httpx.get(server + "/metrics").text
    assert 'shadowroute_quality_drop{model="cheap",router="rules",window="day"} 1.0' in metrics
    # At 0.5 they stay on the frontier: no drop, and the gauge says so.
    _, body = argo(server, {**BASE, "threshold": "0.5", "window": "day"})
    assert body["quality_drop"] is False and body["verdict"] == "pass"
    metrics = httpx.get(server + "/metrics").text
    assert 'shadowroute_quality_drop{model="cheap",router="rules",window="day"} 0.0' in metrics
    r = httpx.get(server + "/v1/verdict", params={**BASE, "threshold": "0.5", "window": "week"})
    assert r.status_code == 400 and r.json()["error"] == "parameter window: cannot read 'week'"
