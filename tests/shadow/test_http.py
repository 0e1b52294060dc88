"""The shadow HTTP client (aiohttp) against real servers on 127.0.0.1: each test's server writes
exact bytes; proxies, CAs, the size cap and the stale keep-alive retry included."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import ModelConfig
from shadow.errors import (
    ConnectFailed,
    ConnectionDropped,
    HttpFailure,
    ResponseTimedOut,
    ResponseTooLarge,
    SendTimedOut,
)
from shadow.http import AiohttpClient, make_http
from tests.support.model_server import closed_port_url, completion
from tests.support.proxy import Proxy

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
        async with server(handler) as (url, conns), AiohttpClient(4) as http:
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
            async with server(h) as (url, _), AiohttpClient() as http:
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
        async with server(handler) as (url, _), AiohttpClient() as http:
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
        async with AiohttpClient() as http:
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
        async with server(slow) as (url, conns), AiohttpClient(2) as http:
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
        async with server(handler) as (url, _), AiohttpClient(1) as http:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(http.post(url, b"{}", {}, 5), 0.05)
            return (await http.post(url, b"{}", {}, 5)).content

    assert asyncio.run(go()) == b'{"n": 1}'  # a new connection, not the first call's late answer


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def test_https_with_the_given_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def go() -> tuple[bytes, bytes, str]:
        async with server(echo_keepalive, tls_server_context(ca)) as (url, _):
            async with AiohttpClient(ssl_context=client_ctx) as http:
                ok = (await http.post(url + "/v1", b'"hi"', {}, 5)).content
            async with AiohttpClient() as http:  # the deployment's `ca_bundle`, per call
                per_call = (await http.post(url + "/v1", b'"yo"', {}, 5,
                                            ca_bundle=str(bundle))).content
            async with AiohttpClient() as untrusting:  # certifi's CAs do not know this one
                try:
                    await untrusting.post(url + "/v1", b'"hi"', {}, 5)
                    failed = ""
                except ConnectFailed as e:
                    failed = str(e)
        return ok, per_call, failed

    ok, per_call, failed = asyncio.run(go())
    assert ok == b'{"echo": "hi"}' and per_call == b'{"echo": "yo"}'
    assert "cannot connect" in failed and "certificate" in failed


def test_model_client_passes_the_deployments_ca_bundle(tmp_path: Path) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(r)
            w.write(answer(completion(orjson.loads(body), "secure", (3, 1))))
            await w.drain()

    async def go() -> list[Any]:
        async with server(handler, tls_server_context(ca)) as (url, _), AiohttpClient() as http:
            out = []
            for ca_bundle in (str(bundle), ""):
                cfg = ModelConfig(name="m", base_url=url + "/v1", ca_bundle=ca_bundle)
                out.append(await ModelClient(cfg, http, retries=0).complete(
                    [{"role": "user", "content": "hi"}], {}))
            return out

    trusted, untrusted = asyncio.run(go())
    assert (trusted.outcome, trusted.answer) == ("ok", "secure")
    assert untrusted.outcome == "error" and "certificate" in (untrusted.error or "")
    assert untrusted.spend_usd == 0  # never sent


def test_ssl_cert_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    async def go() -> bytes:
        async with server(echo_keepalive, tls_server_context(ca)) as (url, _), \
                AiohttpClient() as http:
            return (await http.post(url + "/v1", b'"env"', {}, 5)).content

    assert asyncio.run(go()) == b'{"echo": "env"}'


def test_header_values_with_line_breaks_are_refused() -> None:
    async def go() -> None:
        async with server(echo_keepalive) as (url, _), AiohttpClient() as http:
            await http.post(url, b"{}", {"X-Evil": "a\r\nX-Injected: 1"}, 5)

    with pytest.raises(ValueError, match="line break"):
        asyncio.run(go())


def test_make_http_builds_the_configured_client() -> None:
    http = make_http("aiohttp", 8, 1000)
    assert isinstance(http, AiohttpClient)
    assert (http.max_connections, http.max_response_bytes) == (8, 1000)
    for retired in ("builtin", "httpx", "auto", "curl"):
        with pytest.raises(ValueError, match="shadow.http_client"):
            make_http(retired, 8)


def test_an_answer_over_the_size_cap_fails_as_sent_and_is_not_retried() -> None:
    big = b'{"x": "' + b"y" * 5000 + b'"}'

    async def sized(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(answer(big))
            await w.drain()

    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(big), 1000):
            w.write(b"%x\r\n%s\r\n" % (len(big[i:i + 1000]), big[i:i + 1000]))
            await w.drain()
        w.write(b"0\r\n\r\n")

    async def gzip_bomb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)  # 5 kB on the wire, 1 MB once decompressed
        w.write(answer(gzip.compress(b"0" * 1_000_000), b"Content-Encoding: gzip\r\n"))

    async def go() -> list[tuple[bool, bool, str]]:
        out = []
        for h in (sized, chunked, gzip_bomb):
            async with server(h) as (url, _), AiohttpClient(max_response_bytes=4096) as http:
                with pytest.raises(ResponseTooLarge) as e:
                    await http.post(url, b"{}", {}, 5)
                out.append((e.value.sent, e.value.retriable, str(e.value)))
        async with server(sized) as (url, _), AiohttpClient(max_response_bytes=len(big)) as http:
            assert (await http.post(url, b"{}", {}, 5)).content == big  # at the cap: fine
        return out

    for sent, retriable, msg in asyncio.run(go()):
        assert sent and not retriable and "4096-byte cap" in msg


def test_model_client_charges_an_oversized_answer_in_full_once() -> None:
    async def huge(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            _, body = await read_request(r)
            w.write(answer(completion(orjson.loads(body), "z" * 10_000, (10, 5))))
            await w.drain()

    async def go() -> tuple[Any, list[int], Budget]:
        async with server(huge) as (url, conns), AiohttpClient(max_response_bytes=2048) as http:
            budget = Budget(usd_per_day=1.0)
            cfg = ModelConfig(name="m", base_url=url + "/v1", input_per_mtok=1.0,
                              output_per_mtok=2.0, max_tokens=100)
            client = ModelClient(cfg, http, budget=budget, backoff_s=0.01)
            return await client.complete([{"role": "user", "content": "hi"}], {}), conns, budget

    r, _, budget = asyncio.run(go())
    assert r.outcome == "error" and r.attempts == 1 and "cap" in (r.error or "")
    # Answered, so maybe billed: charged the worst case (prompt bound + all 100 output tokens).
    assert r.spend_usd > 100 * 2.0 / 1e6 and budget.spent_usd("day") == pytest.approx(r.spend_usd)


def clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
        monkeypatch.delenv(k.lower(), raising=False)


def test_calls_go_through_the_environments_proxy_except_no_proxy_hosts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_proxies(monkeypatch)
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def go() -> list[bytes]:
        async with server(echo_keepalive) as (plain, plain_conns), \
                server(echo_keepalive, tls_server_context(ca)) as (tls, _), \
                AiohttpClient() as http:
            out = [(await http.post(plain + "/v1", b"1", {}, 5)).content,
                   (await http.post(tls + "/v1", b"2", {}, 5, ca_bundle=str(bundle))).content]
            # NO_PROXY=localhost: the same plain server named `localhost` is called directly.
            direct = plain.replace("127.0.0.1", "localhost")
            out.append((await http.post(direct + "/v1", b"3", {}, 5)).content)
            out.append(b"%d" % plain_conns[0])
            return out

    with Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,example.internal")
        answers = asyncio.run(go())
        seen = list(proxy.seen)
    assert answers[:3] == [b'{"echo": 1}', b'{"echo": 2}', b'{"echo": 3}']
    assert answers[3] == b"2"  # one connection from the proxy, one direct
    assert len(seen) == 2
    assert seen[0].startswith("POST http://127.0.0.1:") and seen[0].endswith("/v1")
    assert seen[1].startswith("CONNECT 127.0.0.1:")
    assert not any("localhost" in s for s in seen)


def test_a_proxy_that_is_down_fails_unsent(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxies(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", closed_port_url().removesuffix("/v1"))

    async def go() -> HttpFailure:
        async with server(echo_keepalive) as (url, conns), AiohttpClient() as http:
            with pytest.raises(ConnectFailed) as e:
                await http.post(url, b"{}", {}, 5)
            assert conns[0] == 0
            return e.value

    assert asyncio.run(go()).sent is False


async def answer_once_per_connection(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                                     seen: list[bytes]) -> None:
    """Answers the first request of a connection as keep-alive, then closes the connection
    when the next one arrives, without a byte of answer: a server that dropped an idle
    connection just as the client reused it (the request was never handled)."""
    _, body = await read_request(r)
    seen.append(body)
    w.write(answer(completion(orjson.loads(body), "ok", (10, 2))))
    await w.drain()
    await read_request(r)
    seen.append(b"dropped")


def test_a_request_on_a_connection_the_server_closed_is_sent_again_on_a_fresh_one() -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await answer_once_per_connection(r, w, seen)

    async def go() -> tuple[list[bytes], int]:
        async with server(handler) as (url, conns), AiohttpClient() as http:
            out = []
            for i in range(4):
                body = b'{"model": "m", "n": %d}' % i
                out.append((await http.post(url, body, {}, 5)).content)
            return out, conns[0]

    out, conns = asyncio.run(go())
    assert len(out) == 4 and all(b'"content":"ok"' in o for o in out)
    # Call 0 on connection 1; call 1 on connection 1 (dropped), sent again on connection 2 (of
    # its own, closed after); call 2 on connection 3; call 3 on connection 3 (dropped), then 4.
    assert conns == 4
    assert [orjson.loads(b)["n"] if b != b"dropped" else "x" for b in seen] == \
        [0, "x", 1, 2, "x", 3]


def test_a_fresh_connection_dropped_without_an_answer_is_not_sent_again() -> None:
    seen: list[bytes] = []

    async def drop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await read_request(r)
        seen.append(body)  # handled, then the server died: it may have been billed

    async def go() -> HttpFailure:
        async with server(drop) as (url, _), AiohttpClient() as http:
            with pytest.raises(ConnectionDropped) as e:
                await http.post(url, b"{}", {}, 5)
            return e.value

    e = asyncio.run(go())
    assert e.sent and seen == [b"{}"]


def test_model_client_does_not_charge_the_stale_connection_retry() -> None:
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await answer_once_per_connection(r, w, seen)

    async def go() -> tuple[list[Any], Budget]:
        async with server(handler) as (url, _), AiohttpClient() as http:
            budget = Budget(usd_per_day=1.0)
            cfg = ModelConfig(name="m", base_url=url + "/v1", input_per_mtok=1.0,
                              output_per_mtok=2.0, max_tokens=100)
            client = ModelClient(cfg, http, budget=budget)
            return [await client.complete([{"role": "user", "content": "hi"}], {})
                    for _ in range(4)], budget

    results, budget = asyncio.run(go())
    cost = (10 * 1.0 + 2 * 2.0) / 1e6
    for r in results:
        assert (r.outcome, r.attempts, r.error) == ("ok", 1, None)
        assert r.spend_usd == pytest.approx(cost)  # what the answer cost, not a worst case
    assert budget.spent_usd("day") == pytest.approx(4 * cost)
    assert seen.count(b"dropped") == 2


def test_a_server_that_closes_each_connection_after_answering_costs_no_call() -> None:
    """It answers as keep-alive, then closes: the client either sees the close before reusing
    the connection, or sends onto it and sends again on a fresh one. Either way, no failure."""
    seen: list[bytes] = []

    async def close_after_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, body = await read_request(r)
        seen.append(body)
        w.write(answer(b'{"n": %d}' % len(seen)))
        await w.drain()

    async def go() -> tuple[list[bytes], int]:
        async with server(close_after_answer) as (url, conns), AiohttpClient() as http:
            out = []
            for _ in range(5):
                out.append((await http.post(url, b"{}", {}, 5)).content)
                await asyncio.sleep(0.01)
            return out, conns[0]

    out, conns = asyncio.run(go())
    assert out == [b'{"n": %d}' % i for i in range(1, 6)] and conns == 5 and len(seen) == 5
