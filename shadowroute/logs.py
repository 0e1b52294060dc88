"""Log lines that do not flood: one per change of state, then a periodic summary.

While the broker is down, aiokafka logs an error for every failed fetch, connection attempt and
heartbeat (314 lines in 5 s, measured in issue 14); so does anything else that retries in a loop. A
`RepeatFilter` on the handlers lets the first record of each kind (logger, level, message
template) through, holds back the repeats, and every `period_s` logs one line for all it held
back: how many of each kind, and the last of each. A kind not seen for a period starts over, so
the next occurrence (a new outage) is logged again at once. A record logged with
`extra={"news": True}` always passes (each says something new: an offset reset).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Loggers whose records are folded: the Kafka client's and the source's, which repeat per retry.
FOLDED = ("aiokafka", "shadowroute.kafka")


@dataclass
class _Kind:
    first: float  # start of what is being counted
    last: float  # last seen
    held: int = 0  # held back since `first`
    record: logging.LogRecord | None = None  # the last held back


class RepeatFilter(logging.Filter):
    def __init__(self, period_s: float = 30.0, prefixes: Iterable[str] = FOLDED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period_s = period_s
        self.prefixes = tuple(prefixes)
        self.clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._last_summary = clock()
        self._summarising = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._summarising or record.levelno < logging.WARNING \
                or not record.name.startswith(self.prefixes) or getattr(record, "news", False):
            return True  # `extra={"news": True}`: each one says something new (a reset)
        now = self.clock()
        due: list[logging.LogRecord] = []
        with self._lock:
            if now - self._last_summary >= self.period_s:
                due = self._summaries(now)
            kind = (record.name, record.levelno, str(record.msg))
            seen = self._kinds.get(kind)
            if seen is None or (now - seen.last > self.period_s and not seen.held):
                self._kinds[kind] = _Kind(now, now)
                passed = True
            else:
                seen.last, seen.held, seen.record = now, seen.held + 1, record
                passed = False
        self._emit(due)
        return passed

    def summarise(self) -> None:
        """Log the summaries due now (also called on a timer, so they come while all is quiet)."""
        now = self.clock()
        with self._lock:
            due = self._summaries(now) if now - self._last_summary >= self.period_s else []
        self._emit(due)

    def _summaries(self, now: float) -> list[logging.LogRecord]:
        """One line for everything held back since the last summary."""
        held = [k for k in self._kinds.values() if k.held and k.record is not None]
        for key, k in list(self._kinds.items()):
            if k.held:
                self._kinds[key] = _Kind(now, k.last)
            elif now - k.last > self.period_s:
                del self._kinds[key]  # quiet for a period: its next record is news again
        since, self._last_summary = self._last_summary, now
        if not held:
            return []
        held.sort(key=lambda k: -k.held)
        parts = []
        for k in held[:4]:
            assert k.record is not None
            msg = (k.record.getMessage().splitlines() or [""])[0][:160]
            parts.append(f"{k.held}x {k.record.name}: {msg}")
        if len(held) > 4:
            parts.append(f"{sum(k.held for k in held[4:])} of {len(held) - 4} other kinds")
        top = max(held, key=lambda k: k.record.levelno if k.record else 0).record
        assert top is not None
        return [logging.LogRecord(
            "shadowroute.logs", top.levelno, top.pathname, top.lineno,
            "%d repeated lines held back over the last %.0f s: %s",
            (sum(k.held for k in held), now - since, "; ".join(parts)), None)]

    def _emit(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        self._summarising = True
        try:
            for r in records:
                logging.getLogger(r.name).handle(r)
        finally:
            self._summarising = False


def install(period_s: float) -> RepeatFilter | None:
    """Put a `RepeatFilter` on every handler of the root logger (0: none), with a daemon thread
    that logs its summaries every `period_s` even when nothing else is logged."""
    if period_s <= 0:
        return None
    f = RepeatFilter(period_s)
    for h in logging.getLogger().handlers:
        h.addFilter(f)

    def tick() -> None:
        while True:
            time.sleep(period_s)
            f.summarise()

    threading.Thread(target=tick, name="log-summaries", daemon=True).start()
    return f
