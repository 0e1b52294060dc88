"""A local OpenAI-compatible model server for tests, on 127.0.0.1, run by uvicorn in a thread.

`answer` decides what the "cheap model" replies to a prompt; faults can be injected per test:
`fail_next` (status codes answered before succeeding), `malformed`, `delay_s`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shadowroute.broker import free_port


@dataclass
class ModelBehaviour:
    answer: Callable[[str], str] = lambda prompt: "ok"
    fail_next: list[int] = field(default_factory=list)
    retry_after: str | None = None
    malformed: bool = False
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)


def build_model_app(b: ModelBehaviour) -> Starlette:
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        b.requests.append(body)
        b.auth_headers.append(request.headers.get("authorization"))
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.fail_next:
            code = b.fail_next.pop(0)
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            return Response(orjson.dumps({"error": {"message": f"injected {code}"}}),
                            status_code=code, headers=headers)
        if b.malformed:
            return Response(b'{"choices": [', media_type="application/json")
        prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
        text = b.answer(prompt)
        return Response(orjson.dumps({
            "id": "cmpl-test", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4 + 1, "completion_tokens": len(text) // 4 + 1,
                      "total_tokens": 0},
        }), media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class ModelServer:
    def __init__(self, behaviour: ModelBehaviour | None = None) -> None:
        self.behaviour = behaviour or ModelBehaviour()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(
            build_model_app(self.behaviour), host="127.0.0.1", port=self.port,
            log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ModelServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("model server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
