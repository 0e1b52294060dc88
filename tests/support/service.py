"""Running the real service in the test's event loop until it has done its work."""

from __future__ import annotations

import asyncio

from shadowroute.config import Config
from shadowroute.service import Service


async def run_until_consumed(cfg: Config, messages: int, timeout: float = 120) -> None:
    """Run the service until every produced message is persisted (its offset is stored) and
    every sample is finished, then stop it as SIGTERM would."""
    svc = Service(cfg)
    task = asyncio.create_task(svc.run(install_signals=False))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            await asyncio.sleep(0.2)
            if task.done():
                task.result()
            _, rows = svc.store.reads.query_table("SELECT coalesce(sum(next_offset), 0) FROM offsets")
            c = await svc.store.counts()
            if rows[0][0] >= messages and c["pending"] == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {rows}, {c}"
    finally:
        svc.stop_event.set()
        await task
