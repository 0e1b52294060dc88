"""The hard spend budget of the shadow stage: a USD cap per sliding hour and per sliding day.

Every attempt reserves its worst-case cost (prompt token bound + `max_tokens`, at the
deployment's prices) before it is sent, and settles to its actual cost afterwards. A
reservation is granted only when, in both windows,

    settled spend in the window + outstanding reservations + this reservation <= cap,

so no interleaving of concurrent calls can overshoot: whatever is settled in any window of the
cap's length was either already settled, or reserved at least as large, when the last of those
calls reserved (settled costs are stamped at settle time or later, never earlier, so they stay
in the window at least as long as any window that contains the call; see `_Window`). The
guarantee needs actual <= reserved, i.e. a provider that honours `max_tokens`; an overrun is
still charged in full and reported.

When the settled spend alone leaves no room the budget is *exhausted* and `reserve` answers
None at once (the sample ends `skipped_budget`). When only outstanding reservations stand in
the way, `reserve` waits for them to settle: they are worst cases and usually release most of
what they hold. Amounts are kept in integer nano-dollars, rounded up, so sums never drift.

Across a crash: with a `journal`, the budget leases room in chunks (at least 1% of the smallest
cap) *before* a reservation that needs it is granted, and gives back the unused rest at a clean
`release()`. A run killed with calls in flight or results unwritten has leased at least what it
spent, so the restarted budget, seeded with what killed runs leased beyond what they wrote
(`Store.recent_shadow_spend`), cannot overshoot either. A lease that cannot be written refuses
the call.

Room that settlements free (a call reserves its worst case and usually costs far less) is given
back to the journal as soon as more than two chunks lie unused (a negative row, keeping one
chunk ahead), so what a killed run is charged beyond what it spent stays small: at most two
chunks of unused room plus, for the calls in flight at the kill, their worst case minus what
they were billed (a call cut off by the kill may still be billed in full: its worst case is
the only honest bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("shadowroute.shadow")

NANO = 1_000_000_000
WINDOWS = (("hour", 3600.0), ("day", 86400.0))


def to_nano(usd: float) -> int:
    return max(0, math.ceil(usd * NANO))


@dataclass
class Reservation:
    nano: int
    settled: bool = False

    @property
    def usd(self) -> float:
        return self.nano / NANO


class _Window:
    """Charges of the last `span` seconds, in time order. Charges less than `grain` (1/3600 of
    the span) after the one that opened the last entry join it, stamped with the newest time: a
    charge stays in the window up to `grain` longer than its own time would keep it (more
    conservative, never less), and the window holds at most ~3,600 entries instead of one per
    call (at 20 calls/s the day window held 1.7M, the service's memory growing ~0.15 MiB/min)."""

    __slots__ = ("span", "cap", "entries", "total", "grain", "_opened")

    def __init__(self, span: float, cap: int | None) -> None:
        self.span = span
        self.cap = cap
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0
        self.grain = span / 3600
        self._opened = -math.inf  # when the last entry's first charge was made

    def add(self, t: float, nano: int) -> None:
        e = self.entries
        if e and e[-1][0] <= t < self._opened + self.grain:
            e[-1] = (t, e[-1][1] + nano)
        else:
            e.append((t, nano))
            self._opened = t
        self.total += nano

    def expire(self, now: float) -> None:
        e = self.entries
        while e and e[0][0] <= now - self.span:
            self.total -= e.popleft()[1]


class Budget:
    def __init__(self, usd_per_hour: float = math.inf, usd_per_day: float = math.inf, *,
                 clock: Callable[[], float] = time.monotonic,
                 journal: Callable[[int], Awaitable[None]] | None = None) -> None:
        caps = {"hour": usd_per_hour, "day": usd_per_day}
        self._caps = caps
        self.share = 1.0
        # A cap is rounded down to whole nano-dollars: never above what was configured.
        self.windows = {name: _Window(span, None if math.isinf(caps[name])
                                      else math.floor(caps[name] * NANO))
                        for name, span in WINDOWS}
        self.clock = clock
        self.reserved = 0  # nano-dollars held by outstanding reservations
        self.overruns = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        capped = [w.cap for w in self.windows.values() if w.cap is not None]
        self.journal = journal if capped else None  # nothing to guarantee without a cap
        self.lease_nano = max(1, min(capped) // 100) if capped else 0
        self.used = 0  # nano-dollars this run has reserved (outstanding) or been charged
        self.leased = 0  # nano-dollars this run has journaled ahead of using them
        self._lease_lock = asyncio.Lock()
        self._ahead: asyncio.Future[None] | None = None
        self._back: asyncio.Future[None] | None = None

    def set_share(self, share: float) -> None:
        """This instance's share of the caps (several instances in one consumer group: the
        partitions it owns over all of them, set at every assignment), so that the instances'
        caps add up to the configured ones. Spend already in a window stays: an instance whose
        share shrank below its recent spend pays nothing more until the window rolls on."""
        self.share = min(1.0, max(0.0, share))
        for name, w in self.windows.items():
            if w.cap is not None:
                w.cap = math.floor(self._caps[name] * self.share * NANO)
        self._wake()

    def cap_usd(self, window: str) -> float:
        """This instance's cap on `window` now (its share of the configured one; inf: none)."""
        cap = self.windows[window].cap
        return math.inf if cap is None else cap / NANO

    @property
    def limited(self) -> bool:
        return any(w.cap is not None for w in self.windows.values())

    def seed(self, spends: Iterable[tuple[float, float]]) -> None:
        """Charge spend from before a restart: (age in seconds, USD) pairs."""
        now = self.clock()
        for age, usd in sorted(spends, key=lambda s: -s[0]):
            self._charge(now - max(age, 0.0), to_nano(usd))

    def _charge(self, t: float, nano: int) -> None:
        if nano <= 0:
            return
        for w in self.windows.values():
            w.add(t, nano)

    def spent_usd(self, window: str) -> float:
        w = self.windows[window]
        w.expire(self.clock())
        return w.total / NANO

    def left_usd(self, window: str) -> float:
        """Room left in `window` after settled spend and outstanding reservations."""
        w = self.windows[window]
        if w.cap is None:
            return math.inf
        w.expire(self.clock())
        return max(0, w.cap - w.total - self.reserved) / NANO

    def try_reserve(self, usd: float) -> Reservation | None | bool:
        """A reservation; None when the budget is exhausted for this amount; False when only
        outstanding reservations are in the way (try again after one settles)."""
        nano = to_nano(usd)
        now = self.clock()
        blocked = False
        for w in self.windows.values():
            if w.cap is None:
                continue
            w.expire(now)
            if w.total + nano > w.cap:
                return None
            if w.total + self.reserved + nano > w.cap:
                blocked = True
        if blocked:
            return False
        self.reserved += nano
        self.used += nano
        return Reservation(nano)

    async def reserve(self, usd: float) -> Reservation | None:
        """Reserve `usd`, waiting while outstanding reservations hold the room; None when the
        budget is exhausted."""
        while True:
            r = self.try_reserve(usd)
            if isinstance(r, Reservation) and self.journal is not None:
                if self.used > self.leased:
                    try:
                        await self._lease()
                    except Exception as e:  # the journal is the guarantee across a crash
                        log.error("the shadow budget could not journal its spend ahead of a "
                                  "call (%s): the call is refused", e)
                        self.settle(r, 0.0)
                        return None
                elif (self.used > self.leased - self.lease_nano // 2
                      and not self._lease_lock.locked()):
                    # Half a chunk left: lease the next one now, so calls rarely wait for it.
                    self._ahead = asyncio.ensure_future(self._lease_ahead())
            if r is not False:
                return r  # type: ignore[return-value]
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def lease_room(self) -> int:
        """Nano-dollars this run may lease beyond what it has used: in every capped window,
        settled spend + outstanding reservations + unused leased room stays within the cap, so
        the journal never holds more than the cap allows (after a kill, what a run leased
        beyond what it wrote is charged: never more than the cap could have let it spend)."""
        now = self.clock()
        room: int | None = None
        for w in self.windows.values():
            if w.cap is None:
                continue
            w.expire(now)
            left = w.cap - w.total - self.reserved
            room = left if room is None else min(room, left)
        return max(0, (room or 0) - max(0, self.leased - self.used))

    async def _lease(self) -> None:
        async with self._lease_lock:
            while self.used > self.leased:
                assert self.journal is not None
                need = self.used - self.leased
                # What the granted reservations need, plus room for the next calls up to a
                # chunk, never past the cap (a reservation was granted only within it).
                chunk = need + min(max(0, self.lease_nano - need), self.lease_room())
                await self.journal(chunk)
                self.leased += chunk

    async def _lease_ahead(self) -> None:
        try:
            async with self._lease_lock:
                if self.journal is not None and self.used > self.leased - self.lease_nano // 2:
                    chunk = min(self.lease_nano, self.lease_room())
                    if chunk > 0:
                        await self.journal(chunk)
                        self.leased += chunk
        except Exception as e:  # a call that needs the room will try again, or be refused
            log.warning("leasing shadow budget ahead failed: %s", e)

    async def _give_back(self) -> None:
        """Give the journal back the room beyond one chunk that settlements have freed."""
        try:
            async with self._lease_lock:
                back = self.leased - self.used - self.lease_nano
                if self.journal is None or back <= 0:
                    return
                # Down first: a reservation granted while the row is written must lease its
                # own room (it waits for the lock), never count on room being given back.
                self.leased -= back
                await self.journal(-back)
        except Exception as e:  # the room stays in the journal: counted as spent, never less
            log.warning("giving unused shadow budget back to the journal failed: %s", e)

    async def release(self) -> None:
        """At a clean stop, once every call is settled: give back leased room not used."""
        for task in (self._ahead, self._back):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self.journal is not None and self.leased > self.used:
            async with self._lease_lock:
                back = self.leased - self.used
                await self.journal(-back)
                self.leased -= back

    def settle(self, r: Reservation, actual_usd: float) -> None:
        """Release `r` and charge what the call actually cost (0 when nothing was billed)."""
        if r.settled:
            return
        r.settled = True
        self.reserved -= r.nano
        nano = to_nano(actual_usd)
        self.used += nano - r.nano
        if nano > r.nano:
            self.overruns += 1
            log.warning("shadow call cost $%.6f, above its reservation of $%.6f: the provider "
                        "did not honour max_tokens or the prompt bound", actual_usd, r.usd)
        self._charge(self.clock(), nano)
        if (self.journal is not None and self.leased - self.used > 2 * self.lease_nano
                and (self._back is None or self._back.done())):
            with contextlib.suppress(RuntimeError):  # no event loop: nothing is leased either
                self._back = asyncio.get_running_loop().create_task(self._give_back())
        self._wake()

    def _wake(self) -> None:
        while self._waiters:  # everyone re-checks; a released reservation may fit several
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
