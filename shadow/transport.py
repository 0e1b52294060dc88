"""An httpx transport for many calls in flight: several small connection pools instead of one.

httpcore's connection pool scans every connection it holds on each request and each response
(`_assign_requests_to_connections`), so with n calls in flight it costs O(n) per call: measured
here, ~1.4 ms of CPU per call at 16 connections and ~6 ms at 256, several times the rest of
the shadow stage together (pools of 2-4 connections: ~0.8 ms, which is httpx itself).
`ShardedTransport` spreads calls over pools of at most `per_shard` connections (the least
loaded pool takes the next call), which keeps every scan short. It is
still httpx underneath (same timeouts, TLS, HTTP/1.1 keep-alive); the client is built once by
the service and handed to every `ModelClient`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx

PER_SHARD = 4


class _Tracked(httpx.AsyncByteStream):
    """The response body; tells the transport when the connection is free again."""

    def __init__(self, inner: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self.inner = inner
        self.done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done()


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, *, per_shard: int = PER_SHARD,
                 max_keepalive_connections: int | None = None) -> None:
        n = max(1, math.ceil(max_connections / per_shard))
        keep = max_keepalive_connections
        # Twice the even share: an uneven moment never makes a call wait for a connection.
        limits = httpx.Limits(max_connections=2 * per_shard,
                              max_keepalive_connections=2 * per_shard if keep is None
                              else max(1, math.ceil(keep / n)))
        # One TLS context for all: loading the CA bundle costs ~30 ms of CPU per context.
        ssl_context = httpx.create_ssl_context()
        self.shards = [httpx.AsyncHTTPTransport(limits=limits, verify=ssl_context)
                       for _ in range(n)]
        self.load = [0] * n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        load = self.load
        i = min(range(len(load)), key=load.__getitem__)
        load[i] += 1

        def done() -> None:
            load[i] -= 1

        try:
            resp = await self.shards[i].handle_async_request(request)
        except BaseException:
            done()
            raise
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        resp.stream = _Tracked(resp.stream, done)
        return resp

    async def aclose(self) -> None:
        for s in self.shards:
            await s.aclose()


def pooled_client(max_connections: int) -> httpx.AsyncClient:
    """The service's httpx client for shadow calls, good for `max_connections` in flight."""
    return httpx.AsyncClient(transport=ShardedTransport(max_connections))
