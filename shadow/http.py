"""HTTP for shadow calls: a lean keep-alive HTTP/1.1 client on asyncio, or httpx behind a proxy.

The shadow stage makes thousands of small POSTs a second to a handful of origins. httpx costs
~1-1.5 ms of CPU per call here (anyio, h11, the pool's scans), which caps one process at ~600
calls/s on these cores; `PooledHttp` costs ~0.05 ms: one `asyncio.Protocol` per connection,
responses parsed by `httptools` (llhttp, the parser uvicorn uses: Content-Length, chunked and
read-until-close bodies), idle connections kept per origin, TLS from the standard library with
certifi's CA bundle. It does only what a shadow call needs: POST, HTTP/1.1, no redirects, no
cookies, no proxies. `HttpxHttp` wraps an `httpx.AsyncClient` for what it does not do (an HTTP
proxy from `HTTPS_PROXY` and friends); `make_http` picks one (`shadow.http_client`).

Failures are typed by what the caller needs to know: whether the request may have reached the
server (and may be billed). `sent` is false for `ConnectFailed` and `SendTimedOut`, true for
`ResponseTimedOut` and `ConnectionDropped` (a malformed response counts as a dropped one).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

USER_AGENT = b"shadowroute"
KEEPALIVE_S = 5.0  # an idle connection older than this is closed, not reused: servers drop them


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class HttpFailure(Exception):
    """A request that got no HTTP response. `sent`: the server may have received it."""

    sent = True


class ConnectFailed(HttpFailure):
    sent = False


class SendTimedOut(HttpFailure):
    """No connection free, or the connection or the write took longer than the timeout."""

    sent = False


class ResponseTimedOut(HttpFailure):
    pass


class ConnectionDropped(HttpFailure):
    pass


class HttpClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
                   ) -> HttpResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    head: bytes  # request line + Host + User-Agent


def _target(url: str) -> _Target:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    host = u.hostname
    host_header = host if u.port is None else f"{host}:{port}"
    if ":" in host:  # IPv6 literal
        host_header = f"[{host}]" if u.port is None else f"[{host}]:{port}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n").encode("ascii") \
        + b"User-Agent: " + USER_AGENT + b"\r\n"
    return _Target((u.scheme, host, port), host, port, tls, head)


def _header_lines(headers: Mapping[str, str]) -> bytes:
    out = []
    for k, v in headers.items():
        line = f"{k}: {v}\r\n"
        if line.count("\n") != 1 or "\r" in line[:-2]:
            raise ValueError(f"header {k!r} has a line break in its name or value")
        out.append(line)
    return "".join(out).encode("latin-1")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.got_headers = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionDropped(f"malformed HTTP response: {e}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.waiter is not None and not self.waiter.done():
            h = self.headers
            if self.got_headers and "content-length" not in h and "chunked" not in \
                    h.get("transfer-encoding", "").lower():
                self._finish(keep=False)  # a body that ends with the connection
            else:
                self._fail(ConnectionDropped(
                    "connection dropped before a full response"
                    + (f" ({type(exc).__name__})" if exc is not None else "")))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.got_headers = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self._reset()
            return
        self._finish(keep=self.parser.should_keep_alive())

    # the request
    def _finish(self, *, keep: bool) -> None:
        waiter = self.waiter
        content = b"".join(self.body)
        enc = self.headers.get("content-encoding", "").lower()
        if enc in ("gzip", "deflate"):
            try:
                content = zlib.decompress(content, 47)  # gzip or zlib header, detected
            except zlib.error as e:
                keep = False
                self._fail(ConnectionDropped(f"malformed {enc} response body: {e}"))
                waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self.status, self.headers, content))
        self._stop_timer()
        self.waiter = None
        self._reset()
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    def _fail(self, exc: HttpFailure) -> None:
        self._stop_timer()
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self, timeout: float) -> None:
        self.timer = None
        self._fail(ResponseTimedOut(f"timeout after {timeout:g}s with no response"))
        self.close()

    def send(self, data: bytes, wait: float, timeout: float) -> asyncio.Future[HttpResponse]:
        """Send a request; its answer is awaited `wait` seconds (what is left of `timeout`)."""
        assert self.transport is not None
        loop = self.pool.loop
        self.waiter = loop.create_future()
        self.timer = loop.call_later(wait, self._timed_out, timeout)
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.lost(self)
            if self.transport is not None:
                self.transport.close()


class _Pool:
    """The connections to one origin."""

    def __init__(self, target: _Target, max_connections: int, ssl_context: ssl.SSLContext | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.max = max_connections
        self.ssl = ssl_context
        self.loop = loop
        self.idle: list[_Conn] = []
        self.open: set[_Conn] = set()
        self.waiting: deque[asyncio.Future[None]] = deque()

    async def acquire(self, deadline: float) -> _Conn:
        while True:
            now = time.monotonic()
            while self.idle:
                c = self.idle.pop()
                if not c.closed and now - c.idle_since < KEEPALIVE_S:
                    return c
                c.close()
            if len(self.open) < self.max:
                break
            fut = self.loop.create_future()  # woken by a release or a closed connection
            self.waiting.append(fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - now))
            except TimeoutError:
                raise SendTimedOut(f"no free connection to {self.target.host} "
                                   f"within the timeout ({self.max} in use)") from None
            finally:
                if not fut.done():
                    fut.cancel()
        conn = _Conn(self)
        self.open.add(conn)
        t = self.target
        try:
            transport, _ = await asyncio.wait_for(self.loop.create_connection(
                lambda: conn, t.host, t.port, ssl=self.ssl if t.tls else None,
                server_hostname=t.host if t.tls else None),
                max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            self.lost(conn)
            raise SendTimedOut(f"connecting to {t.host}:{t.port} timed out") from None
        except (OSError, ssl.SSLError) as e:
            self.lost(conn)
            raise ConnectFailed(f"connection error: cannot connect to {t.host}:{t.port} "
                                f"({e.strerror or type(e).__name__})") from None
        except BaseException:
            conn.close()
            raise
        conn.transport = transport
        return conn

    def release(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake()

    def lost(self, conn: _Conn) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self._wake()

    def _wake(self) -> None:
        while self.waiting:
            w = self.waiting.popleft()
            if not w.done():
                w.set_result(None)
                return


class PooledHttp:
    """Keep-alive HTTP/1.1 POSTs, at most `max_connections` open per origin."""

    def __init__(self, max_connections: int = 256, *, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._targets: dict[str, _Target] = {}
        self._header_bytes: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                import certifi
                self._ssl = ssl.create_default_context(cafile=certifi.where())
            except ImportError:  # the system's CA store
                self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
                   ) -> HttpResponse:
        t = self._targets.get(url)
        if t is None:
            t = self._targets[url] = _target(url)
        pool = self._pools.get(t.key)
        if pool is None:
            pool = self._pools[t.key] = _Pool(
                t, self.max_connections, self._ssl_context() if t.tls else None,
                asyncio.get_running_loop())
        key = tuple(headers.items())
        lines = self._header_bytes.get(key)
        if lines is None:  # a handful of distinct header sets: one per deployment and key
            if len(self._header_bytes) > 256:
                self._header_bytes.clear()
            lines = self._header_bytes[key] = _header_lines(headers)
        data = b"".join((t.head, lines, b"Content-Length: %d\r\n\r\n" % len(body), body))
        deadline = time.monotonic() + timeout
        conn = await pool.acquire(deadline)
        fut = conn.send(data, max(0.001, deadline - time.monotonic()), timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            conn.close()  # the answer would arrive on a connection nobody reads
            raise

    async def aclose(self) -> None:
        for pool in self._pools.values():
            for c in list(pool.open):
                c.close()
        self._pools.clear()

    async def __aenter__(self) -> PooledHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HttpxHttp:
    """The same calls through httpx (HTTP proxies from the environment, HTTP/1.1)."""

    def __init__(self, client: httpx.AsyncClient | None = None, max_connections: int = 256
                 ) -> None:
        self.client = client or httpx.AsyncClient(trust_env=True, limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
                   ) -> HttpResponse:
        try:
            r = await self.client.post(url, content=body, headers=dict(headers), timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ConnectFailed(f"connection error: {type(e).__name__}") from None
        except (httpx.WriteTimeout, httpx.PoolTimeout) as e:
            raise SendTimedOut(f"timeout sending the request ({type(e).__name__})") from None
        except httpx.TimeoutException:
            raise ResponseTimedOut(f"timeout after {timeout:g}s with no response") from None
        except httpx.TransportError as e:
            raise ConnectionDropped(f"connection dropped: {type(e).__name__}") from None
        return HttpResponse(r.status_code, {k.lower(): v for k, v in r.headers.items()},
                            r.content)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> HttpxHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


HTTP_CLIENTS = ("auto", "builtin", "httpx")


def proxied() -> bool:
    """Whether the environment names an HTTP(S) proxy (`HTTPS_PROXY`, `ALL_PROXY`, ...)."""
    return any(k in ("http", "https", "all") for k in urllib.request.getproxies_environment())


def make_http(kind: str, max_connections: int) -> HttpClient:
    """`builtin`: `PooledHttp`; `httpx`: `HttpxHttp`; `auto`: httpx when the environment names a
    proxy (the builtin client does not speak to proxies), else builtin."""
    if kind not in HTTP_CLIENTS:
        raise ValueError(f"shadow.http_client must be one of {', '.join(HTTP_CLIENTS)}, "
                         f"not {kind!r}")
    if kind == "httpx" or (kind == "auto" and proxied()):
        return HttpxHttp(max_connections=max_connections)
    return PooledHttp(max_connections)
