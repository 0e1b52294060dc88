"""Sliding one-minute rate windows for a deployment's `rpm` and `tpm`.

A call counts when it starts: 1 request, and for tokens the estimate known before the call
(prompt estimate + `max_tokens`, as OpenAI's own limiter counts). `correct` replaces the
estimate with the `usage` the answer reported, so the window tracks what the provider counts.
"""

from __future__ import annotations

from collections import deque

MINUTE = 60.0


class Entry:
    __slots__ = ("t", "amount", "live")

    def __init__(self, t: float, amount: int) -> None:
        self.t = t
        self.amount = amount
        self.live = True


class RateWindow:
    """At most `limit` units over any sliding `span` seconds."""

    def __init__(self, limit: int, span: float = MINUTE) -> None:
        self.limit = limit
        self.span = span
        self.entries: deque[Entry] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        e = self.entries
        while e and e[0].t <= now - self.span:
            old = e.popleft()
            old.live = False
            self.total -= old.amount

    def wait_time(self, now: float, amount: int) -> float:
        """Seconds until `amount` more fits (0: now). An amount above the limit fits an empty
        window, so one oversized call cannot wait forever."""
        self._expire(now)
        if self.total + amount <= self.limit or self.total == 0:
            return 0.0
        excess = self.total + amount - self.limit
        freed = 0
        for entry in self.entries:
            freed += entry.amount
            if freed >= excess or freed == self.total:
                return max(entry.t + self.span - now, 0.001)
        return self.span  # unreachable: the loop frees everything at the latest

    def add(self, now: float, amount: int) -> Entry:
        entry = Entry(now, amount)
        self.entries.append(entry)
        self.total += amount
        return entry

    def correct(self, entry: Entry, actual: int) -> None:
        if entry.live:
            self.total += actual - entry.amount
        entry.amount = actual

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total
