"""Reuse of shadow answers for identical replays.

Two samples whose replay is byte-for-byte the same (same model, messages and parameters)
within `shadow.reuse_window_s` share one paid call: the later one records the earlier answer
with `reused_from` = the sample that paid. A replay identical to one still in flight waits for
it instead of paying twice. Only successful answers are kept, in memory (a restart starts
empty), at most `MAX_ENTRIES`, oldest dropped first.

Off by default: at temperature > 0 a reused answer is not an independent draw from the cheap
model, so it narrows the quality estimate's spread a little; it is a cost choice to make knowingly.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

MAX_ENTRIES = 50_000
T = TypeVar("T")


def reuse_key(group: str, body: bytes) -> bytes:
    return hashlib.blake2b(group.encode() + b"\0" + body, digest_size=16).digest()


class ReuseCache(Generic[T]):
    def __init__(self, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.window_s = window_s
        self.clock = clock
        self.max_entries = max_entries
        self._done: OrderedDict[bytes, tuple[float, str | None, T]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[None]] = {}

    def _expire(self, now: float) -> None:
        d = self._done
        while d:
            k, (t, _, _) = next(iter(d.items()))
            if t > now - self.window_s and len(d) <= self.max_entries:
                break
            d.popitem(last=False)

    def get(self, key: bytes) -> tuple[str | None, T] | None:
        self._expire(self.clock())
        hit = self._done.get(key)
        return (hit[1], hit[2]) if hit else None

    async def claim(self, key: bytes) -> tuple[str | None, T] | None:
        """The earlier (sample id, result) for `key`, or None when the caller should make the
        call itself (and then `release` the key)."""
        while True:
            hit = self.get(key)
            if hit is not None:
                return hit
            fut = self._inflight.get(key)
            if fut is None:
                self._inflight[key] = asyncio.get_running_loop().create_future()
                return None
            await asyncio.shield(fut)

    def release(self, key: bytes, sample_id: str | None, result: T | None) -> None:
        """Store `result` (None: the call failed, nothing to reuse) and wake the waiters."""
        if result is not None:
            self._done[key] = (self.clock(), sample_id, result)
            self._done.move_to_end(key)
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
