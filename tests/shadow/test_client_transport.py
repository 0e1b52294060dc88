"""ShardedTransport: many calls in flight over small httpx pools, on a real local server."""

from __future__ import annotations

import asyncio

import httpx

from shadow.transport import ShardedTransport, pooled_client
from tests.support.model_server import ModelBehaviour, ModelServer, closed_port_url


def test_many_calls_in_flight_spread_over_small_pools() -> None:
    with ModelServer(ModelBehaviour(delay_s=0.05, record=False)) as ms:
        async def go() -> tuple[list[int], ShardedTransport]:
            transport = ShardedTransport(64, per_shard=4)
            async with httpx.AsyncClient(transport=transport) as http:
                async def one(i: int) -> int:
                    r = await http.post(ms.url + "/chat/completions", json={
                        "model": "m", "messages": [{"role": "user", "content": str(i)}]})
                    return r.status_code

                codes = await asyncio.gather(*(one(i) for i in range(200)))
                return list(codes), transport

        codes, transport = asyncio.run(go())
    assert codes == [200] * 200
    assert len(transport.shards) == 16 and transport.load == [0] * 16  # every connection freed


def test_a_failed_request_frees_its_slot() -> None:
    async def go() -> list[int]:
        async with pooled_client(8) as http:
            for _ in range(3):
                try:
                    await http.post(closed_port_url() + "/chat/completions", content=b"{}")
                except httpx.ConnectError:
                    pass
            transport = http._transport
            assert isinstance(transport, ShardedTransport)
            return transport.load

    assert asyncio.run(go()) == [0, 0]
