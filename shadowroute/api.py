"""The service's local HTTP API: /healthz, /metrics, /v1/verdict, /v1/sql, /v1/status.

Bound to 127.0.0.1 by default, and guarded as if it were not (`Guard`): the Host header must be
one of the configured names (a DNS-rebinding guard), a cross-site Origin is refused, a POST must
say it carries JSON (a web page cannot send that without the browser asking first, and no CORS
header ever answers), bodies are capped, and a bearer token is required whenever one is
configured (always, on a non-loopback address). `/v1/sql` runs a person's SQL through
`Store.user_query`: one SELECT, in a read-only transaction on an instance without file access
or settings, interrupted after `server.sql_timeout_s`, at most `server.sql_max_rows` rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hmac
import math
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from analytics.calibrate import load as load_calibration
from analytics.gate import METHODS, WINDOWS, GateRequest, evaluate, parse_segment_bars
from analytics.store import UserResult
from shadowroute.config import Config, ServerConfig
from shadowroute.errors import StoreError
from shadowroute.metrics import Metrics

INT53 = 2**53  # beyond this a JSON number loses digits in most readers: sent as a string


def jsonable(v: Any) -> Any:
    """`v` as something JSON can carry without loss or surprise, for every type DuckDB returns:
    HUGEINT/UHUGEINT beyond 2^53 and DECIMAL as strings (exact), MAP as a list of {key, value}
    (keys need not be strings), STRUCT as an object, LIST/ARRAY as a list, UNION as its value,
    BLOB as hex, UUID, INTERVAL, TIMETZ and the other times as ISO strings, NaN/inf as null."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v if -INT53 <= v <= INT53 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None  # as orjson writes NaN and inf
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: jsonable(x) for k, x in v.items()}
        return [{"key": jsonable(k), "value": jsonable(x)} for k, x in v.items()]
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # numpy scalars and arrays
        return jsonable(v.tolist())
    return str(v)


def dumps(obj: Any) -> bytes:
    # Walked first, not left to `default=`: orjson refuses an int beyond 64 bits, a dict with
    # non-string keys or a time with a zone without asking `default`.
    return orjson.dumps(jsonable(obj))


class ORJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def allowed_hosts(server: ServerConfig, port: int) -> frozenset[str]:
    """Every Host header the API answers to: the loopback names, the bind address (unless it is
    a wildcard) and `server.host_names`, each with `port` (and bare on port 80)."""
    names = {"127.0.0.1", "localhost", "[::1]", *server.host_names}
    if server.host not in ("0.0.0.0", "::", ""):
        names.add(f"[{server.host}]" if ":" in server.host else server.host)
    out = {f"{n.lower()}:{port}" for n in names}
    if port == 80:
        out |= {n.lower() for n in names}
    return frozenset(out)


class Guard:
    """Refuses what a stranger would send, before any endpoint runs (see the module docstring).
    `/healthz` answers without the token (probes rarely carry one) but then says only whether
    the service is healthy."""

    def __init__(self, app: ASGIApp, hosts: Collection[str], token: str | None) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = frozenset(f"http://{h}" for h in self.hosts)
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        refusal = self._refuse(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refuse(self, scope: Scope, headers: dict[str, str]) -> Response | None:
        if headers.get("host", "").lower() not in self.hosts:
            return ORJSON({"error": "unknown Host header; add the name to server.host_names"},
                          status_code=421)
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return ORJSON({"error": "cross-origin requests are refused"}, status_code=403)
        if scope["path"] != "/healthz" and not self.authorised(headers):
            return ORJSON({"error": "a bearer token is required (Authorization: Bearer ...)"},
                          status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return ORJSON({"error": "the body must be JSON (Content-Type: application/json)"},
                              status_code=415)
        return None

    def authorised(self, headers: Any) -> bool:
        if self.token is None:
            return True
        scheme, _, value = str(headers.get("authorization", "")).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("latin-1", "replace"), self.token)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


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

    def query_table(self, query: str, params: Any = None
                    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def user_query(self, query: str, *, max_rows: int, timeout_s: float,
                   max_bytes: int = ...) -> UserResult: ...

    def interrupt_user_queries(self) -> None: ...


def user_answer(res: UserResult) -> dict[str, Any]:
    return {"columns": res.columns, "types": res.types, "rows": jsonable(res.rows),
            "truncated": res.truncated}


def build_app(store: Queries, cfg: Config, metrics: Metrics,
              status: Callable[[], dict[str, Any]], *, port: int | None = None,
              token: str | None = None) -> Guard:
    """The API behind its `Guard`. `port`: the one the socket is bound to (default:
    server.port); `token`: the bearer token required (see `shadowroute.config.api_token`)."""
    server = cfg.server
    # A thread of its own for people's queries, one at a time: a slow one never takes the
    # threads /v1/verdict runs on, and a second one is told to come back rather than queued.
    sql_pool = ThreadPoolExecutor(1, thread_name_prefix="user-sql")
    sql_busy = asyncio.Lock()
    guard: Guard

    async def healthz(request: Request) -> Response:
        st = status()
        healthy = st.get("healthy", True)
        body = {"ok": healthy, **st} if guard.authorised(request.headers) else {"ok": healthy}
        return ORJSON(body, status_code=200 if healthy else 503)

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
            body = await read_body(request, cfg.server.max_body_bytes)
            if body is None:
                return ORJSON({"error": f"body larger than server.max_body_bytes "
                                        f"({cfg.server.max_body_bytes})"}, status_code=413)
            try:
                webhook = orjson.loads(body)
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
        try:
            out = await asyncio.to_thread(evaluate, store.query_table, req)
        except StoreError as e:
            return ORJSON({"error": str(e)}, status_code=503)
        out["pass"] = out["verdict"] == "pass"
        if req.window is not None:
            metrics.quality_drop.labels(req.router, req.model, req.window).set(
                1 if out["quality_drop"] else 0)
        if webhook is None:
            return ORJSON(out)
        out["canary"] = {k: webhook.get(k) for k in ("name", "namespace", "phase")}
        return ORJSON(out, status_code=WEBHOOK_STATUS[out["verdict"]])

    async def sql_ep(request: Request) -> Response:
        raw = await read_body(request, server.max_body_bytes)
        if raw is None:
            return ORJSON({"error": f"the body is larger than server.max_body_bytes "
                                    f"({server.max_body_bytes})"}, status_code=413)
        try:
            body = orjson.loads(raw)
            query = body["sql"]
            if not isinstance(query, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ORJSON({"error": 'body must be JSON {"sql": "SELECT ..."}'}, status_code=400)
        if sql_busy.locked():
            return ORJSON({"error": "another query is running; try again when it is done"},
                          status_code=429, headers={"Retry-After": "1"})
        async with sql_busy:
            try:
                out = await asyncio.get_running_loop().run_in_executor(
                    sql_pool, lambda: user_answer(store.user_query(
                        query, max_rows=server.sql_max_rows, timeout_s=server.sql_timeout_s,
                        max_bytes=server.sql_max_bytes)))
            except StoreError as e:
                return ORJSON({"error": str(e)}, status_code=400)
        try:
            return ORJSON(out)
        except (TypeError, ValueError) as e:  # jsonable should have made that impossible
            return ORJSON({"error": f"the result cannot be sent as JSON: {e}"}, status_code=400)

    async def status_ep(request: Request) -> Response:
        return ORJSON(status())

    app = Starlette(routes=[
        Route("/healthz", healthz),
        Route("/metrics", metrics_ep),
        Route("/v1/verdict", verdict, methods=["GET", "POST"]),
        Route("/v1/sql", sql_ep, methods=["POST"]),
        Route("/v1/status", status_ep),
    ])
    guard = Guard(app, allowed_hosts(server, server.port if port is None else port), token)
    return guard
