"""PooledHttp against real servers on 127.0.0.1: each test's server writes exact bytes."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from shadow.http import (
    ConnectFailed,
    ConnectionDropped,
    HttpxHttp,
    PooledHttp,
    ResponseTimedOut,
    SendTimedOut,
    make_http,
)
from tests.support.model_server import closed_port_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def server(handler: Handler, ssl_ctx: ssl.SSLContext | None = None
                 ) -> AsyncIterator[tuple[str, list[int]]]:
    """Yields (base URL, connection count)."""
    conns = [0]

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns[0] += 1
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
    port = srv.sockets[0].getsockname()[1]
    scheme = "https" if ssl_ctx else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", conns
    finally:
        srv.close()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), extra)) + body


async def echo_keepalive(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(r)
        w.write(answer(b'{"echo": ' + body + b"}"))
        await w.drain()


def test_keeps_connections_alive_and_sends_the_request_as_given() -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(r)
            seen.append(head + body)
            w.write(answer(b'{"n": %d}' % len(seen)))
            await w.drain()

    async def go() -> tuple[list[bytes], int]:
        async with server(handler) as (url, conns), PooledHttp(4) as http:
            out = [await http.post(url + "/v1/chat/completions?x=1", b'{"a":1}',
                                   {"Authorization": "Bearer k", "X-Team": "t"}, 5)
                   for _ in range(5)]
            return [r.content for r in out], conns[0]

    contents, conns = asyncio.run(go())
    assert contents == [b'{"n": %d}' % i for i in range(1, 6)]
    assert conns == 1  # one connection, reused
    first = seen[0]
    assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in first and b"\r\nX-Team: t\r\n" in first
    assert b"\r\nContent-Length: 7\r\n\r\n" in first and first.endswith(b'{"a":1}')


def test_chunked_gzip_and_read_until_close_bodies() -> None:
    payload = b'{"choices": [{"message": {"content": "' + b"x" * 5000 + b'"}}]}'

    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 1000):
            part = payload[i:i + 1000]
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
        w.write(b"0\r\n\r\n")

    async def gzipped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(answer(gzip.compress(payload), b"Content-Encoding: gzip\r\n"))

    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload)
        await w.drain()

    async def go() -> list[bytes]:
        out = []
        for h in (chunked, gzipped, until_close):
            async with server(h) as (url, _), PooledHttp() as http:
                out.append((await http.post(url, b"{}", {}, 5)).content)
        return out

    assert asyncio.run(go()) == [payload] * 3


def test_status_and_headers_of_an_error_answer() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        body = b'{"error": "slow down"}'
        w.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))

    async def go() -> tuple[int, str | None, str]:
        async with server(handler) as (url, _), PooledHttp() as http:
            resp = await http.post(url, b"{}", {}, 5)
            return resp.status, resp.headers.get("retry-after"), resp.text

    assert asyncio.run(go()) == (429, "3", '{"error": "slow down"}')


def test_failures_say_whether_the_request_may_have_been_sent() -> None:
    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(30)

    async def drop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cut")  # then closed

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"SMTP ready\r\n\r\n")
        await asyncio.sleep(1)

    async def go() -> list[tuple[type[Exception], bool, str]]:
        out = []
        async with PooledHttp() as http:
            for h in (hang, drop, garbage):
                async with server(h) as (url, _):
                    try:
                        await http.post(url, b"{}", {}, 0.3)
                    except (ResponseTimedOut, ConnectionDropped) as e:
                        out.append((type(e), e.sent, str(e)))
            try:
                await http.post(closed_port_url(), b"{}", {}, 1)
            except ConnectFailed as e:
                out.append((type(e), e.sent, str(e)))
        return out

    (t1, s1, m1), (t2, s2, m2), (t3, s3, m3), (t4, s4, m4) = asyncio.run(go())
    assert (t1, s1) == (ResponseTimedOut, True) and m1 == "timeout after 0.3s with no response"
    assert (t2, s2) == (ConnectionDropped, True) and "before a full response" in m2
    assert (t3, s3) == (ConnectionDropped, True) and "malformed HTTP response" in m3
    assert (t4, s4) == (ConnectFailed, False) and m4.startswith("connection error: cannot connect")


def test_a_full_pool_waits_for_a_connection_then_times_out_unsent() -> None:
    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            await asyncio.sleep(0.2)
            w.write(answer(b"{}"))
            await w.drain()

    async def go() -> tuple[list[int], int, bool]:
        async with server(slow) as (url, conns), PooledHttp(2) as http:
            # 6 calls on 2 connections: they queue and all get an answer.
            rs = await asyncio.gather(*(http.post(url, b"{}", {}, 5) for _ in range(6)))
            opened = conns[0]
            # Both connections busy for 0.2 s; a call that may wait only 0.1 s never leaves.
            busy = [asyncio.create_task(http.post(url, b"{}", {}, 5)) for _ in range(2)]
            await asyncio.sleep(0.01)
            try:
                await http.post(url, b"{}", {}, 0.1)
                unsent = False
            except SendTimedOut as e:
                unsent = not e.sent
            await asyncio.gather(*busy)
            return [r.status for r in rs], opened, unsent

    statuses, conns, one_unsent = asyncio.run(go())
    assert statuses == [200] * 6 and conns == 2 and one_unsent


def test_a_cancelled_call_does_not_leave_its_answer_for_the_next() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            await read_request(r)
            n += 1
            await asyncio.sleep(0.2 if n == 1 else 0)
            w.write(answer(b'{"n": %d}' % n))
            await w.drain()

    async def go() -> bytes:
        async with server(handler) as (url, _), PooledHttp(1) as http:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(http.post(url, b"{}", {}, 5), 0.05)
            return (await http.post(url, b"{}", {}, 5)).content

    assert asyncio.run(go()) == b'{"n": 1}'  # a new connection, not the first call's late answer


def test_https_with_the_given_ca() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def go() -> tuple[bytes, str]:
        async with server(echo_keepalive, server_ctx) as (url, _):
            async with PooledHttp(ssl_context=client_ctx) as http:
                ok = (await http.post(url + "/v1", b'"hi"', {}, 5)).content
            async with PooledHttp() as untrusting:  # certifi's CAs do not know this one
                try:
                    await untrusting.post(url + "/v1", b'"hi"', {}, 5)
                    failed = ""
                except ConnectFailed as e:
                    failed = str(e)
        return ok, failed

    ok, failed = asyncio.run(go())
    assert ok == b'{"echo": "hi"}' and "cannot connect" in failed


def test_header_values_with_line_breaks_are_refused() -> None:
    async def go() -> None:
        async with server(echo_keepalive) as (url, _), PooledHttp() as http:
            await http.post(url, b"{}", {"X-Evil": "a\r\nX-Injected: 1"}, 5)

    with pytest.raises(ValueError, match="line break"):
        asyncio.run(go())


def test_make_http_picks_httpx_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)

    async def kinds() -> list[type]:
        out = []
        for kind in ("auto", "builtin", "httpx"):
            h = make_http(kind, 8)
            out.append(type(h))
            await h.aclose()
        return out

    assert asyncio.run(kinds()) == [PooledHttp, PooledHttp, HttpxHttp]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert asyncio.run(kinds()) == [HttpxHttp, PooledHttp, HttpxHttp]
    with pytest.raises(ValueError, match="shadow.http_client"):
        make_http("curl", 8)
