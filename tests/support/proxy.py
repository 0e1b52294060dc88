"""An HTTP proxy on 127.0.0.1 for tests: CONNECT tunnels (HTTPS) and plain forwarding (HTTP).

Runs on its own event loop in a thread (like `ModelServer`), so sync and async tests can use
it. `seen` lists what went through it: `CONNECT host:port` for a tunnel, `POST
http://host:port/path` for a forwarded request. Plain forwarding handles what the tests'
servers send: requests and responses with a Content-Length body, keep-alive, one upstream
connection per client connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit

from shadowroute.demo.broker import free_port


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class Proxy:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head, body = await _read_message(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, rest = head.split(b"\r\n", 1)
                method, target, version = line.decode("latin-1").split(" ")
                self.seen.append(f"{method} {target}")
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    try:
                        ur, uw = await asyncio.open_connection(host, int(port))
                    except OSError:
                        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        return
                    self._writers.add(uw)
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(_pipe(reader, uw), _pipe(ur, writer))
                    return
                u = urlsplit(target)
                if upstream is None:
                    upstream = await asyncio.open_connection(u.hostname, u.port or 80)
                    self._writers.add(upstream[1])
                path = (u.path or "/") + (f"?{u.query}" if u.query else "")
                upstream[1].write(f"{method} {path} {version}\r\n".encode("latin-1") + rest + body)
                await upstream[1].drain()
                rhead, rbody = await _read_message(upstream[0])
                writer.write(rhead + rbody)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            self._writers.discard(writer)
            writer.close()

    def start(self) -> Proxy:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"proxy-{self.port}")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
