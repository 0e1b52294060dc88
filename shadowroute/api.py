"""The service's local HTTP API: /healthz, /metrics, /v1/verdict, /v1/sql, /v1/status.

Bound to 127.0.0.1 by default. `/v1/sql` runs read-only statements only, on a cursor of the
service's own connection: that is how `shadowroute sql` and `shadowroute gate` read live data
while the service holds the DuckDB file for writing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analytics.calibrate import load as load_calibration
from analytics.gate import METHODS, WINDOWS, GateRequest, evaluate, parse_segment_bars
from shadowroute.config import Config
from shadowroute.errors import StoreError
from shadowroute.metrics import Metrics


def _default(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (decimal.Decimal,)):
        return float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID | dt.timedelta):
        return str(v)
    return str(v)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class ORJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


# Flagger: 200 lets the canary proceed, anything else halts it (or counts a failed check).
WEBHOOK_STATUS = {"pass": 200, "fail": 412, "inconclusive": 425}


def gate_request_from(params: dict[str, Any], cfg: Config) -> GateRequest:
    """Build a `GateRequest` from query parameters; ValueError names the bad parameter."""
    def get(name: str, conv: Callable[[Any], Any], default: Any) -> Any:
        raw = params.get(name)
        if raw is None or raw == "":
            if default is ...:
                raise ValueError(f"parameter {name} is required")
            return default
        try:
            return conv(raw)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {name}: cannot read {raw!r}") from None

    target = cfg.gate.min_quality
    name = params.get("calibration")
    if name:
        try:
            cal = load_calibration(Path(cfg.storage.db_path), str(name))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"parameter calibration: {e.args[0] if isinstance(e, KeyError) else e}"
                             ) from None
        params = {**params, "router": cal["router"], "threshold": cal["threshold"],
                  "model": cal["model"]}
        target = float(cal["target"])
    return GateRequest(
        router=get("router", str, ...),
        threshold=get("threshold", float, ...),
        model=get("model", str, ...),
        min_quality=get("min_quality", float, target),
        min_samples=get("min_samples", int, cfg.gate.min_samples),
        confidence=get("confidence", float, cfg.gate.confidence),
        min_savings=get("min_savings", float, None),
        interval=get("interval", _interval, "analytic"),
        replicates=get("replicates", _replicates, 2000),
        seed=get("seed", int, 0),
        min_segment_samples=get("min_segment_samples", int, cfg.gate.min_segment_samples),
        segment_min_quality=get("segment_min_quality", parse_segment_bars,
                                dict(cfg.gate.segment_min_quality)),
        segment_by_model=get("segment_by_model", _bool, False),
        window=get("window", _window, None),
    )


def _window(raw: str) -> str:
    if raw not in WINDOWS:
        raise ValueError(raw)
    return raw


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValueError(raw)


def _interval(raw: str) -> str:
    if raw not in METHODS:
        raise ValueError(raw)
    return raw


def _replicates(raw: str) -> int:
    n = int(raw)
    if not 100 <= n <= 100_000:
        raise ValueError(raw)
    return n


class Queries(Protocol):
    """What the API reads through: `Store`, or the blocking reads of `StoreProcess`."""

    def query_table(self, query: str, params: Any = None, *, read_only_check: bool = False
                    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


def build_app(store: Queries, cfg: Config, metrics: Metrics,
              status: Callable[[], dict[str, Any]]) -> Starlette:
    async def healthz(request: Request) -> Response:
        st = status()
        return ORJSON({"ok": st.get("healthy", True), **st},
                      status_code=200 if st.get("healthy", True) else 503)

    async def metrics_ep(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def verdict(request: Request) -> Response:
        """GET: the verdict as JSON, always HTTP 200 (Argo Rollouts' `web` metric provider
        counts any other status as an error, not a failure; judge `result.verdict`). POST: a
        Flagger webhook, its JSON {name, namespace, phase, metadata} carrying the parameters
        in `metadata` (over the URL's query): HTTP 200 only on pass, 412 on fail, 425 while
        inconclusive (Flagger halts or counts a failed check on any status but 2xx)."""
        params: dict[str, Any] = dict(request.query_params)
        webhook: dict[str, Any] | None = None
        if request.method == "POST":
            try:
                webhook = orjson.loads(await request.body())
                if not isinstance(webhook, dict) or not isinstance(
                        webhook.get("metadata") or {}, dict):
                    raise TypeError
            except (orjson.JSONDecodeError, TypeError):
                return ORJSON({"error": "body must be a Flagger webhook payload: JSON "
                                        '{"name", "namespace", "phase", "metadata": {...}}'},
                              status_code=400)
            params.update({k: str(v) for k, v in (webhook.get("metadata") or {}).items()})
        try:
            req = gate_request_from(params, cfg)
        except ValueError as e:
            return ORJSON({"error": str(e)}, status_code=400)
        out = await asyncio.to_thread(evaluate, store.query_table, req)
        out["pass"] = out["verdict"] == "pass"
        if req.window is not None:
            metrics.quality_drop.labels(req.router, req.model, req.window).set(
                1 if out["quality_drop"] else 0)
        if webhook is None:
            return ORJSON(out)
        out["canary"] = {k: webhook.get(k) for k in ("name", "namespace", "phase")}
        return ORJSON(out, status_code=WEBHOOK_STATUS[out["verdict"]])

    async def sql_ep(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            query = body["sql"]
            if not isinstance(query, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ORJSON({"error": 'body must be JSON {"sql": "SELECT ..."}'}, status_code=400)
        try:
            cols, rows = await asyncio.to_thread(store.query_table, query, None,
                                                 read_only_check=True)
        except StoreError as e:
            return ORJSON({"error": str(e)}, status_code=400)
        return ORJSON({"columns": cols, "rows": rows})

    async def status_ep(request: Request) -> Response:
        return ORJSON(status())

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/metrics", metrics_ep),
        Route("/v1/verdict", verdict, methods=["GET", "POST"]),
        Route("/v1/sql", sql_ep, methods=["POST"]),
        Route("/v1/status", status_ep),
    ])
