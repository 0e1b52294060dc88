"""External routers over HTTP (`kind = "http"`), against real servers on 127.0.0.1: one that
speaks RouteLLM's OpenAI-compatible shape (the answer names the routed model) and a plain score
endpoint; failures give no score, are recorded in `router_calls`, and never hold a sample up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from analytics.service_store import open_store
from analytics.store import Store
from consumers.errors import ConfigError
from shadow.client import ModelClient
from shadow.errors import RouterCallFailed
from shadow.http import AiohttpClient
from shadow.routers import (
    HttpRouter,
    HttpRouterConfig,
    RandomRouterConfig,
    RouteInput,
    RouterContext,
    build_routers,
)
from shadow.runner import ShadowRunner
from shadowroute.config import load_config
from tests.shadow.test_runner import add_samples, answer, finish, model, q
from tests.support.model_server import ModelBehaviour, ModelServer

STRONG, WEAK = "gpt-4o", "mixtral-8x7b"


class RouterServer:
    """A real aiohttp server on a free loopback port, in a thread of its own."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.routellm)
        app.router.add_post("/score", self.score)
        app.router.add_post("/slow", self.slow)
        app.router.add_post("/error", self.error)
        app.router.add_post("/not-json", self.not_json)
        app.router.add_post("/out-of-range", self.out_of_range)
        self.app = app
        self.url = ""

    async def _seen(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return body  # type: ignore[no-any-return]

    async def routellm(self, request: web.Request) -> web.Response:
        # RouteLLM's server: `model` names the router and its threshold; the answer's `model` is
        # the model the request was routed to.
        body = await self._seen(request)
        assert body["model"].startswith("router-mf-")
        hard = "prove" in body["messages"][-1]["content"]
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": STRONG if hard else WEAK,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "..."}}]})

    async def score(self, request: web.Request) -> web.Response:
        body = await self._seen(request)
        return web.json_response({"result": {"p_strong": min(1.0, len(body["q"]) / 100)}})

    async def slow(self, request: web.Request) -> web.Response:
        await self._seen(request)
        await asyncio.sleep(5)
        return web.json_response({"score": 0.5})

    async def error(self, request: web.Request) -> web.Response:
        await self._seen(request)
        return web.Response(status=503, text="overloaded")

    async def not_json(self, request: web.Request) -> web.Response:
        await self._seen(request)
        return web.Response(text="<html>oops</html>")

    async def out_of_range(self, request: web.Request) -> web.Response:
        await self._seen(request)
        return web.json_response({"score": 7})


@pytest.fixture
def server() -> Iterator[RouterServer]:
    srv = RouterServer()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(srv.app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def route(text: str, rid: str = "r1") -> RouteInput:
    return RouteInput(rid, "gpt-4o", text, {"feature": "math"},
                      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}])


async def scores(cfg: HttpRouterConfig, *inputs: RouteInput) -> list[float | str]:
    async with AiohttpClient() as http:
        (r,) = build_routers((cfg,), RouterContext(http))
        out: list[float | str] = []
        for i in inputs:
            try:
                out.append(await r.score(i))
            except RouterCallFailed as e:
                out.append(str(e))
        return out


def test_a_routellm_server_routes_by_model_name(server: RouterServer) -> None:
    cfg = HttpRouterConfig(
        name="routellm-mf", url=f"{server.url}/v1/chat/completions",
        body_template='{"model": "router-mf-0.11593", "messages": "{messages}", "max_tokens": 1}',
        model_path="model", model_scores={STRONG: 1.0, WEAK: 0.0})
    got = asyncio.run(scores(cfg, route("prove that sqrt 2 is irrational"), route("hi")))
    assert got == [1.0, 0.0]
    # The request went out as the template says, with the whole conversation in it.
    assert server.bodies[0] == {"model": "router-mf-0.11593", "max_tokens": 1, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "prove that sqrt 2 is irrational"}]}


def test_a_score_endpoint_with_a_template_and_a_key(server: RouterServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_KEY", "sk-router-0123456789")
    cfg = HttpRouterConfig(name="svc", url=f"{server.url}/score",
                           body_template='{"q": "{prompt}", "id": "{request_id}", '
                                         '"meta": {"tags": "{tags}", "fixed": 3}}',
                           score_path="result.p_strong", api_key_env="ROUTER_KEY",
                           headers={"X-Team": "search"})
    assert asyncio.run(scores(cfg, route("x" * 25, "req-9"))) == [0.25]
    assert server.bodies[0] == {"q": "x" * 25, "id": "req-9",
                                "meta": {"tags": {"feature": "math"}, "fixed": 3}}
    assert server.headers[0]["Authorization"] == "Bearer sk-router-0123456789"
    assert server.headers[0]["X-Team"] == "search"


def test_a_prompt_cannot_break_out_of_the_template(server: RouterServer) -> None:
    # Values are put in as JSON values, never formatted into the text.
    evil = '", "score": 0, "x": "'
    cfg = HttpRouterConfig(name="svc", url=f"{server.url}/score", body_template='{"q": "{prompt}"}',
                           score_path="result.p_strong")
    asyncio.run(scores(cfg, route(evil)))
    assert server.bodies[0] == {"q": evil}


def test_failures_give_no_score_and_say_why(server: RouterServer) -> None:
    def cfg(path: str, **kw: Any) -> HttpRouterConfig:
        return HttpRouterConfig(name=path, url=f"{server.url}/{path}", score_path="score",
                                timeout_s=0.5, **kw)

    started = time.monotonic()
    got = asyncio.run(scores(cfg("slow"), route("a")))
    assert time.monotonic() - started < 3  # its own timeout, not the server's 5 s
    assert isinstance(got[0], str) and got[0].startswith("no answer: timeout")
    assert asyncio.run(scores(cfg("error"), route("a"))) == ["HTTP 503: 'overloaded'"]
    assert asyncio.run(scores(cfg("not-json"), route("a"))) == [
        "answer is not JSON: '<html>oops</html>'"]
    assert asyncio.run(scores(cfg("out-of-range"), route("a"))) == [
        "score 7 at 'score' is outside [0, 1]"]
    unknown = HttpRouterConfig(name="m", url=f"{server.url}/v1/chat/completions",
                               body_template='{"model": "router-mf-0.5", "messages": "{messages}"}',
                               model_path="model", model_scores={STRONG: 1.0})
    assert asyncio.run(scores(unknown, route("hi"))) == [
        f"model '{WEAK}' at 'model' is not in model_scores ({STRONG})"]
    closed = HttpRouterConfig(name="c", url="http://127.0.0.1:9/score", score_path="score")
    assert asyncio.run(scores(closed, route("a")))[0].startswith("no answer: connection error")


def test_the_runner_records_every_router_call_and_goes_on_without_a_failing_one(
        server: RouterServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "s.duckdb"
    store = Store(db)
    add_samples(store, 6)
    store.close()
    routers = (RandomRouterConfig("random"),
               HttpRouterConfig(name="down", url=f"{server.url}/error", score_path="score"),
               HttpRouterConfig(name="svc", url=f"{server.url}/score",
                                body_template='{"q": "{prompt}"}', score_path="result.p_strong"))

    async def main() -> None:
        st = open_store(db, "thread")
        try:
            async with AiohttpClient() as http:
                runner = ShadowRunner(st, build_routers(routers, RouterContext(http)),
                                      [ModelClient(model(ok.url), http)], concurrency=2,
                                      flush_every_s=0.05)
                await finish(runner, asyncio.create_task(runner.run()), st)
        finally:
            st.close()

    with ModelServer(ModelBehaviour(answer=answer)) as ok:
        asyncio.run(main())
    assert q(db, "SELECT status, count(*) FROM samples GROUP BY ALL") == [("done", 6)]
    assert q(db, "SELECT router, count(*) FROM router_scores GROUP BY ALL ORDER BY 1") == [
        ("random", 6), ("svc", 6)]
    calls = q(db, "SELECT router, count(*), count(error), min(error), min(latency_ms) >= 0 "
                  "FROM router_calls GROUP BY ALL ORDER BY 1")
    assert calls == [("down", 6, 6, "HTTP 503: 'overloaded'", True), ("random", 6, 0, None, True),
                     ("svc", 6, 0, None, True)]
    # One line when the router started failing, not one per sample.
    assert sum("router down failed" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(("env", "key", "message"), [
    ({"SHADOWROUTE_ROUTERS__0__URL": "http://r/score"}, "routers[0].score_path",
     "set either score_path (the answer holds a score) or model_path (it names the chosen model)"),
    ({"SHADOWROUTE_ROUTERS__0__URL": "r/score", "SHADOWROUTE_ROUTERS__0__SCORE_PATH": "s"},
     "routers[0].url", "must start with http:// or https://, got 'r/score'"),
    ({"SHADOWROUTE_ROUTERS__0__URL": "http://r", "SHADOWROUTE_ROUTERS__0__MODEL_PATH": "model"},
     "routers[0].model_scores", "must map each model the router may choose to a score"),
    ({"SHADOWROUTE_ROUTERS__0__URL": "http://r", "SHADOWROUTE_ROUTERS__0__SCORE_PATH": "s",
      "SHADOWROUTE_ROUTERS__0__BODY_TEMPLATE": "{not json"}, "routers[0].body_template",
     "must be JSON"),
    ({"SHADOWROUTE_ROUTERS__0__URL": "http://r", "SHADOWROUTE_ROUTERS__0__SCORE_PATH": "s",
      "SHADOWROUTE_ROUTERS__0__TIMEOUT_S": "0"}, "routers[0].timeout_s",
     "must be greater than 0, got 0.0"),
])
def test_http_router_config_mistakes_name_the_key(env: dict[str, str], key: str, message: str
                                                  ) -> None:
    base = {"SHADOWROUTE_ROUTERS__0__NAME": "ext", "SHADOWROUTE_ROUTERS__0__KIND": "http"}
    with pytest.raises(ConfigError) as e:
        load_config(None, env={**base, **env})
    assert e.value.key == key and message in e.value.problem


def test_an_http_router_loads_from_a_config_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[routers]]\nname = "routellm"\nkind = "http"\n'
                 'url = "http://127.0.0.1:6060/v1/chat/completions"\n'
                 'body_template = \'{"model": "router-mf-0.11593", "messages": "{messages}"}\'\n'
                 'model_path = "model"\nmodel_scores = { "gpt-4o" = 1.0, "mixtral-8x7b" = 0.0 }\n')
    (r,) = load_config(p, env={}).routers
    assert isinstance(r, HttpRouterConfig) and r.model_scores == {"gpt-4o": 1.0,
                                                                  "mixtral-8x7b": 0.0}
    assert isinstance(build_routers((r,), RouterContext(AiohttpClient()))[0], HttpRouter)

