"""A local OpenAI-compatible model server for tests, on 127.0.0.1, with fault injection.

A small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies), run on its own
event loop in a thread, so a test controls every byte: it can answer, fail with a status and
`Retry-After`, hang past the client's timeout, answer malformed JSON or no `usage`, drop the
connection without answering, or be down entirely (`stop()`, or `closed_port_url()`).

`ModelBehaviour` decides what happens. `answer` maps the prompt to the reply. Per request,
the first entry of `script` wins (then it is removed); without a script: `fail_next` (status
codes answered before succeeding), then the standing flags `hang`, `drop`, `malformed`,
`no_usage`. `delay_s` is waited before every answer. Script entries:

    "ok" | 429 | (429, "2") | 500 | 503 | "hang" | "drop" | "malformed" | "no_usage"

Also runnable as a process (the benchmark's server): `python -m tests.support.model_server
--port P --delay-s 0.05`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from shadowroute.demo.broker import free_port

Step = str | int | tuple[int, str]


@dataclass
class ModelBehaviour:
    answer: Callable[[str], str] = lambda prompt: "ok"
    fail_next: list[int] = field(default_factory=list)
    retry_after: str | None = None
    malformed: bool = False
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    script: list[Step] = field(default_factory=list)
    hang: bool = False
    hang_s: float = 3600.0
    drop: bool = False
    no_usage: bool = False
    usage: Callable[[dict[str, Any], str], tuple[int, ...]] | None = None
    """(request body, answer) -> (prompt_tokens, completion_tokens[, cached_tokens]); default ~4
    chars a token, nothing cached."""
    headers: list[dict[str, str]] = field(default_factory=list)
    record: bool = True
    """Keep every request body and its headers (off for the benchmark)."""
    echo_auth: bool = False
    """Error bodies repeat the Authorization header, as some providers do."""
    echo_key_forms: bool = False
    """Error bodies repeat the key JSON-escaped with `\\/`, URL-encoded and cut to 24
    characters, as some gateways do (raw in the body, not re-escaped)."""

    def next_step(self) -> Step:
        if self.script:
            return self.script.pop(0)
        if self.fail_next:
            return self.fail_next.pop(0)
        for flag in ("hang", "drop", "malformed", "no_usage"):
            if getattr(self, flag):
                return flag
        return "ok"


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _response(status: int, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def completion(body: dict[str, Any], text: str, usage: tuple[int, ...] | None) -> bytes:
    out: dict[str, Any] = {
        "id": "cmpl-test", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}]}
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1]}
        if len(usage) > 2:
            out["usage"]["prompt_tokens_details"] = {"cached_tokens": usage[2]}
    return orjson.dumps(out)


class _App:
    def __init__(self, b: ModelBehaviour) -> None:
        self.b = b
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                out = await self.respond(method, path, headers, raw)
                if out is None:  # drop: close without a response
                    return
                writer.write(out)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def respond(self, method: str, path: str, headers: dict[str, str], raw: bytes
                      ) -> bytes | None:
        b = self.b
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            return _response(404, b'{"error": {"message": "not found"}}')
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _response(500, b'{"error": {"message": "bad JSON body"}}')
        if b.record:
            b.requests.append(body)
            b.auth_headers.append(headers.get("authorization"))
            b.headers.append(headers)
        step = b.next_step()
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if step == "hang":
            await asyncio.sleep(b.hang_s)
            return None
        if step == "drop":
            return None
        if isinstance(step, (int, tuple)):
            code, retry_after = step if isinstance(step, tuple) else (step, b.retry_after)
            extra = {"Retry-After": retry_after} if retry_after else {}
            msg = f"injected {code}"
            if b.echo_auth:
                msg += f" for {headers.get('authorization')}"
            if b.echo_key_forms:
                key = (headers.get("authorization") or "").removeprefix("Bearer ")
                escaped, quoted = key.replace("/", "\\/"), urllib.parse.quote(key, safe="")
                text = (f'{{"error": {{"message": "bad key {escaped}", "param": "{quoted}", '
                        f'"hint": "{key[:24]}..."}}}}')
                return _response(code, text.encode(), extra)
            return _response(code, orjson.dumps({"error": {"message": msg}}), extra)
        if step == "malformed":
            return _response(200, b'{"choices": [')
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        text = b.answer(prompt)
        usage = None
        if step != "no_usage":
            usage = b.usage(body, text) if b.usage else (len(prompt) // 4 + 1, len(text) // 4 + 1)
        return _response(200, completion(body, text, usage))


def closed_port_url() -> str:
    """The URL of a server that is down: nothing listens on that port."""
    return f"http://127.0.0.1:{free_port()}/v1"


class ModelServer:
    def __init__(self, behaviour: ModelBehaviour | None = None, port: int | None = None) -> None:
        self.behaviour = behaviour or ModelBehaviour()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._app = _App(self.behaviour)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ModelServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._app.handle, "127.0.0.1", self.port, backlog=1024))
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"model-server-{self.port}")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("model server did not start")
        if errors:
            raise RuntimeError(f"model server did not start: {errors[0]}")
        return self

    def stop(self) -> None:
        """Close the port and every open connection (hanging requests included)."""
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return

        async def shutdown() -> None:
            server.close()
            for w in list(self._app.writers):
                w.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _FastAnswer(asyncio.Protocol):
    """The benchmark's server: every request answered "ok" after `delay_s`, nothing recorded.

    A protocol, not streams, so that at thousands of calls a second the server is never what
    the benchmark measures (streams: ~4,000 answers/s on one core here)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            eol = head.find(b"\r\n", i)
            n = int(head[i + 15:eol if eol >= 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            try:
                req = orjson.loads(body)
                prompt = "\n".join(str(m.get("content", "")) for m in req.get("messages", []))
                out = _response(200, completion(req, "ok", (len(prompt) // 4 + 1, 1)))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                out = _response(500, b'{"error": {"message": "bad JSON body"}}')
            asyncio.get_running_loop().call_later(self.delay_s, self._send, out)

    def _send(self, out: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="A fake OpenAI-compatible model server.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-s", type=float, default=0.0)
    args = ap.parse_args()
    # The benchmark holds 1,000+ connections open: more descriptors than a soft limit of 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536 if hard == resource.RLIM_INFINITY
                                                    else hard, hard))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FastAnswer(args.delay_s), "127.0.0.1",
                                          args.port, backlog=4096)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # a faster loop when installed: the server should not be the bottleneck
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
