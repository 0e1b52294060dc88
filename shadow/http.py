"""HTTP for shadow calls: aiohttp behind a small protocol, failures typed by what billing needs.

The shadow stage keeps ~1,000 slow (0.3-5 s) POSTs in flight to a handful of origins.
`benchmarks/shadow_overhead.py` measured the candidates at 1,000 in flight and 1 s latency
(docs/architecture.md): aiohttp keeps up at a fraction of a millisecond of CPU per call, httpx
with a 1,000-connection pool does not (its pool's per-request scans grow with the pool). So
`AiohttpClient` wraps one `aiohttp.ClientSession` with a tuned pool, and adds what a shadow
call needs that aiohttp leaves to its caller:

- proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; HTTPS
  through a proxy with CONNECT), resolved once per URL;
- the CA bundle: `SSL_CERT_FILE`/`SSL_CERT_DIR` when set (else certifi's when installed, else
  the system's), or a per-deployment `ca_bundle` passed with each call;
- a response size cap (`max_response_bytes`, after decompression): beyond it the call fails;
- one safe retry: a request written onto a kept-alive connection that the server had just
  closed fails before any response byte. The server never handled it, so it is sent again,
  once, on a fresh connection, inside the client, and not charged (aiohttp does this itself
  only for idempotent methods, and a POST is not one). A server that died while handling a
  request on a reused connection looks the same: the rare price is one uncharged second call.
  On a fresh connection the same failure is `ConnectionDropped`, sent, never resent here.

Failures say whether the request may have reached the server (and may be billed): `sent` is
false for `ConnectFailed` and `SendTimedOut`, true for `ResponseTimedOut`, `ConnectionDropped`
(a malformed response counts as a dropped one) and `ResponseTooLarge`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from shadow.errors import (
    ConnectFailed,
    ConnectionDropped,
    ResponseTimedOut,
    ResponseTooLarge,
    SendTimedOut,
)

USER_AGENT = "shadowroute"
KEEPALIVE_S = 4.0  # an idle connection older than this is not reused: servers drop them (uvicorn: 5 s)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
HTTP_CLIENTS = ("aiohttp",)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # looked up case-insensitively
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class HttpClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
                   *, ca_bundle: str | None = None) -> HttpResponse: ...

    async def aclose(self) -> None: ...


def default_ssl_context() -> ssl.SSLContext:
    """`SSL_CERT_FILE`/`SSL_CERT_DIR` when set (as OpenSSL, curl and httpx read them), else
    certifi's bundle when installed, else the system's store."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Call:
    """What the connector learned about one request."""

    __slots__ = ("reused", "sent")

    def __init__(self) -> None:
        self.reused = False
        self.sent = False


# The call being made by the current task: the connector marks it (aiohttp's `TraceConfig`
# could too, but its per-request signals cost ~0.1 ms of CPU per call).
_CALL: ContextVar[_Call | None] = ContextVar("shadow_http_call", default=None)


class _Connector(aiohttp.TCPConnector):
    """Tells the current call whether its connection was reused from the pool. Once it has a
    connection, the request is written at once: from then on it counts as sent."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._used: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        call = _CALL.get()
        if call is not None:
            proto = conn.protocol
            call.reused = proto in self._used
            self._used.add(proto)
            call.sent = True
        return conn


class _Stale(Exception):
    """The request failed on a reused connection before any byte of a response."""


def _check_headers(headers: Mapping[str, str]) -> None:
    for k, v in headers.items():
        if "\n" in k or "\r" in k or "\n" in v or "\r" in v:
            raise ValueError(f"header {k!r} has a line break in its name or value")


class AiohttpClient:
    """Keep-alive POSTs through aiohttp, at most `max_connections` open (all origins)."""

    def __init__(self, max_connections: int = 256, *,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, keepalive_s: float = KEEPALIVE_S,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.max_response_bytes = max_response_bytes
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._ca: dict[str, ssl.SSLContext] = {}
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._checked: set[tuple[tuple[str, str], ...]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    def _new_session(self, *, force_close: bool) -> aiohttp.ClientSession:
        if self._ssl is None:
            self._ssl = default_ssl_context()
        connector = _Connector(
            limit=self.max_connections, limit_per_host=0, ssl=self._ssl,
            keepalive_timeout=None if force_close else self.keepalive_s, force_close=force_close,
            ttl_dns_cache=300)
        # The environment's proxies are looked up here, once per URL (`_proxy`), not per call.
        return aiohttp.ClientSession(
            connector=connector, trust_env=False,
            headers={"User-Agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Content-Type",))  # the caller's, or none: not octet-stream

    def _ssl_for(self, ca_bundle: str | None) -> ssl.SSLContext | bool:
        if not ca_bundle:
            return True  # the connector's context
        ctx = self._ca.get(ca_bundle)
        if ctx is None:
            try:
                ctx = self._ca[ca_bundle] = ssl.create_default_context(cafile=ca_bundle)
            except (OSError, ssl.SSLError) as e:
                raise ConnectFailed(f"connection error: cannot load CA bundle {ca_bundle!r} "
                                    f"({e.strerror or type(e).__name__})") from None
        return ctx

    def _proxy(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        p = self._proxies.get(url)
        if p is None:
            try:  # honours NO_PROXY
                p = get_env_proxy_for_url(URL(url))
            except LookupError:
                p = (None, None)
            if len(self._proxies) > 1024:
                self._proxies.clear()
            self._proxies[url] = p
        return p

    def _timeout(self, timeout: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(timeout)
        if t is None:
            if len(self._timeouts) > 256:
                self._timeouts.clear()
            t = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        return t

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
                   *, ca_bundle: str | None = None) -> HttpResponse:
        key = tuple(headers.items())
        if key not in self._checked:  # a handful of distinct header sets: one per deployment
            _check_headers(headers)
            if len(self._checked) > 256:
                self._checked.clear()
            self._checked.add(key)
        session = self._session
        if session is None:
            session = self._session = self._new_session(force_close=False)
        ssl_ctx = self._ssl_for(ca_bundle)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            return await self._send(session, url, body, headers, timeout, ssl_ctx)
        except _Stale:
            pass
        # Sent again once, on a connection of its own: the pool may hold more stale ones.
        if self._fresh is None:
            self._fresh = self._new_session(force_close=True)
        left = deadline - loop.time()
        if left <= 0:
            raise SendTimedOut(f"timeout after {timeout:g}s: a kept-alive connection was "
                               f"closed by the server, no time left to send again")
        try:
            return await self._send(self._fresh, url, body, headers, left, ssl_ctx)
        except _Stale:  # not reused: unreachable, but never loop
            raise ConnectionDropped("connection dropped before a full response") from None

    async def _send(self, session: aiohttp.ClientSession, url: str, body: bytes,
                    headers: Mapping[str, str], timeout: float, ssl_ctx: ssl.SSLContext | bool
                    ) -> HttpResponse:
        call = _Call()
        token = _CALL.set(call)
        proxy, proxy_auth = self._proxy(url)
        try:
            async with session.post(url, data=body, headers=headers, ssl=ssl_ctx,
                                    timeout=self._timeout(timeout), proxy=proxy,
                                    proxy_auth=proxy_auth, allow_redirects=False) as resp:
                return HttpResponse(resp.status, resp.headers, await self._read(resp))
        except aiohttp.ConnectionTimeoutError:
            host = URL(url).host
            raise SendTimedOut(f"connecting to {host} timed out") from None
        except aiohttp.ClientConnectorError as e:  # before ClientOSError: one of them
            reason = e.os_error.strerror or type(e.os_error).__name__
            if isinstance(e, aiohttp.ClientConnectorCertificateError):
                reason = f"certificate not trusted: {e.certificate_error.__class__.__name__}"
            raise ConnectFailed(f"connection error: cannot connect to {e.host}:{e.port} "
                                f"({reason})") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            if call.reused and _before_any_byte(e):
                raise _Stale from None
            raise ConnectionDropped(f"connection dropped before a full response "
                                    f"({type(e).__name__})") from None
        except TimeoutError:  # the total timeout (aiohttp.ServerTimeoutError is one too)
            if not call.sent:
                raise SendTimedOut(f"timeout after {timeout:g}s before the request was sent "
                                   f"(no free connection, or a slow connect)") from None
            raise ResponseTimedOut(f"timeout after {timeout:g}s with no response") from None
        except aiohttp.ClientPayloadError as e:
            raise ConnectionDropped(f"connection dropped before a full response "
                                    f"({_short(e)})") from None
        except aiohttp.ClientResponseError as e:  # the status line or headers did not parse
            raise ConnectionDropped(f"malformed HTTP response: {_short(e.message)}") from None
        except aiohttp.InvalidURL:
            raise ValueError(f"not an http(s) URL: {url!r}") from None
        except aiohttp.ClientError as e:
            raise ConnectionDropped(f"connection error: {type(e).__name__}") from None
        finally:
            _CALL.reset(token)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.max_response_bytes
        n = resp.content_length
        if n is not None and n > cap and "content-encoding" not in resp.headers:
            resp.close()
            raise ResponseTooLarge(f"response of {n} bytes is over the "
                                   f"{cap}-byte cap (shadow.max_response_bytes)")
        if n is not None and "content-encoding" not in resp.headers:
            return await resp.read()  # a known length within the cap: read in one go
        chunks: list[bytes] = []
        size = 0
        while chunk := await resp.content.readany():
            size += len(chunk)
            if size > cap:
                resp.close()  # the rest is not read: the connection is not reused
                raise ResponseTooLarge(f"response over the {cap}-byte cap "
                                       f"(shadow.max_response_bytes)")
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def aclose(self) -> None:
        for s in (self._session, self._fresh):
            if s is not None:
                await s.close()
        self._session = self._fresh = None

    async def __aenter__(self) -> AiohttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _before_any_byte(e: aiohttp.ClientError) -> bool:
    """Whether the connection failed before any byte of a response: a clean close with nothing
    parsed ("Server disconnected", not a partial message), or a reset/broken pipe."""
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return isinstance(e.message, str)
    return isinstance(e, aiohttp.ClientOSError) and e.errno in (errno.ECONNRESET, errno.EPIPE)


def _short(e: object) -> str:
    return " ".join(str(e).split())[:200]


def make_http(kind: str, max_connections: int, max_response_bytes: int = MAX_RESPONSE_BYTES
              ) -> HttpClient:
    """The configured client (`shadow.http_client`; `aiohttp` is the only one)."""
    if kind not in HTTP_CLIENTS:
        raise ValueError(f"shadow.http_client must be one of {', '.join(HTTP_CLIENTS)}, "
                         f"not {kind!r}")
    return AiohttpClient(max_connections, max_response_bytes=max_response_bytes)
