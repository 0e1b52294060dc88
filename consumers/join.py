"""Joining OTel spans to their message content logged apart, as OTLP log records.

With the GenAI instrumentations' default conventions a span carries the call's metadata (model,
tokens, status) and its prompt and answer come as log records (`consumers.formats.otlp_logs`),
exported to another topic, in any order relative to the span. `SpanJoin` holds whichever side
comes first, keyed by `{traceId}:{spanId}`, until the other arrives:

- a span without content waits for its content, at most `formats.otlp_join_window_s`. A call
  that answered is complete with its `gen_ai.choice`: instrumentations write it after the input
  messages, so when a call's records arrive in the order written (one partition, as the
  Collector's exporter keyed by trace id writes them) all of its content is there. A failed call
  has no choice, so it waits the whole window (it is not replayed; its content only gives its
  prompt hash and size). Then it is stored with what came, or with `no_content_waited`;
- content without its span waits as long; if the span never comes it is counted in `skipped`
  (`ORPHAN_CONTENT`), as is content that comes after its span was stored (`LATE_CONTENT`, known
  for the last `max_pending` keys stored by this run).

Durable: every item held is also a row of `otlp_pending` written in the same transaction as the
offsets of the record it came from (`rows()`), and every item let go is deleted in the
transaction of the batch that let it go, so a restart (`restore`) loses and repeats nothing.
Rows carry a sequence number, and a deletion removes only rows older than itself, so content
held again after its key was let go survives the deletion.

Memory is bounded by `formats.otlp_join_max_pending` keys; past it the oldest are let go early,
with a reason that says so. The window is wall-clock time since the first part of a key was read
(the service checks it on every poll, also when no record comes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from consumers.formats.otlp import join_content
from consumers.records import RawMessage, Request, SpanContent

__all__ = ["SpanJoin", "Origin", "no_content_waited", "ORPHAN_CONTENT", "LATE_CONTENT",
           "JOIN_ROW_FIELDS"]

Origin = tuple[str, int, int]  # topic, partition, offset of the record a part came from
ORPHAN_CONTENT = "GenAI log events whose span never arrived"
LATE_CONTENT = "GenAI log events that came after their span was stored"
JOIN_ROW_FIELDS = ("op", "key", "seq", "kind", "topic", "partition", "offset", "first_seen_ms",
                   "payload")
_INPUT_EVENTS = frozenset({"gen_ai.system.message", "gen_ai.user.message",
                           "gen_ai.assistant.message", "gen_ai.tool.message"})


def no_content_waited(window_s: float, full: bool = False) -> str:
    why = (f"the join buffer was full (formats.otlp_join_max_pending) before "
           f"formats.otlp_join_window_s ({window_s:g} s) passed" if full
           else f"within formats.otlp_join_window_s ({window_s:g} s)")
    return ("no message content: none on the span, and no GenAI log records for it "
            f"({', '.join(sorted(_INPUT_EVENTS))}, gen_ai.choice) {why}; enable "
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT and consume the topic the "
            "Collector exports logs to (otlp_logs by default)")


@dataclass(slots=True)
class _Held:
    first_seen_ms: int
    span: Request | None = None
    span_origin: Origin | None = None
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    content_origin: Origin | None = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    raise TypeError


class SpanJoin:
    def __init__(self, window_s: float, max_pending: int) -> None:
        self.window_ms = window_s * 1000.0
        self.window_s = window_s
        self.max_pending = max_pending
        self.held: dict[str, _Held] = {}  # in the order first seen: the oldest first
        self._rows: list[tuple[Any, ...]] = []
        self._seq = 0
        # Content counted in `skipped` (orphans let go early, late content) until `expire`.
        self._skipped: list[tuple[Any, ...]] = []
        self._stored: dict[str, None] = {}  # keys let go lately, the oldest first

    @property
    def holding(self) -> int:
        return len(self.held)

    def due(self, now_ms: int) -> bool:
        """Whether a key waits past the window (or orphans wait to be counted). Asked from the
        event loop while a batch may be decoding: a glimpse, retried at the next poll."""
        if self._skipped:
            return True
        try:
            for h in self.held.values():
                return now_ms - h.first_seen_ms >= self.window_ms
        except RuntimeError:  # changed size while we looked
            return True
        return False

    # -- parts in ---------------------------------------------------------------------------
    def span(self, r: Request, origin: Origin, now_ms: int) -> list[tuple[Request, Origin]]:
        """A span without content: joined at once when its content is here and complete,
        else held. Returns what is ready to store (it, or nothing)."""
        h = self.held.get(r.request_id)
        if h is None:
            h = self.held[r.request_id] = _Held(now_ms)
        h.span, h.span_origin = r, origin
        if self._complete(h):
            return [self._release(r.request_id, h)]
        self._hold(r.request_id, "span", origin, h.first_seen_ms, orjson.dumps(r))
        return self._bound(now_ms)

    def content(self, c: SpanContent, origin: Origin, now_ms: int) -> list[tuple[Request, Origin]]:
        h = self.held.get(c.key)
        if h is None and c.key in self._stored:
            self._skipped.append((*origin, LATE_CONTENT, len(c.events)))
            return []
        if h is None:
            h = self.held[c.key] = _Held(now_ms)
        h.events.extend(c.events)
        if h.content_origin is None:
            h.content_origin = origin
        if h.span is not None and self._complete(h):
            return [self._release(c.key, h)]
        self._hold(c.key, "content", origin, h.first_seen_ms,
                   orjson.dumps(c.events, default=_jsonable))
        return self._bound(now_ms)

    # -- parts out --------------------------------------------------------------------------
    def expire(self, now_ms: int, *, everything: bool = False
               ) -> tuple[list[tuple[Request, Origin]], list[tuple[Any, ...]]]:
        """Keys held past the window (all of them with `everything`, when a finite source has
        ended): spans are let go with what came; content without a span is dropped and
        counted. Returns (requests to store, skipped rows)."""
        ready: list[tuple[Request, Origin]] = []
        skipped, self._skipped = self._skipped, []
        while self.held:
            key, h = next(iter(self.held.items()))
            if not everything and now_ms - h.first_seen_ms < self.window_ms:
                break  # keys are in the order first seen: the rest are younger
            self._let_go(key, h, ready, skipped, full=False)
        return ready, skipped

    def rows(self) -> list[tuple[Any, ...]]:
        """The `otlp_pending` changes since the last call (see `JOIN_ROW_FIELDS`)."""
        rows, self._rows = self._rows, []
        return rows

    def restore(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of `otlp_pending` (key, seq, kind, topic, partition, offset, first_seen_ms,
        payload), in seq order: what a previous run held."""
        for key, seq, kind, topic, partition, offset, first_seen_ms, payload in rows:
            self._seq = max(self._seq, int(seq) + 1)
            h = self.held.get(key)
            if h is None:
                h = self.held[key] = _Held(int(first_seen_ms))
            origin = (topic, int(partition), int(offset))
            if kind == "span":
                h.span, h.span_origin = Request(**orjson.loads(payload)), origin
            else:
                h.events.extend((int(t), str(n), dict(ea)) for t, n, ea in orjson.loads(payload))
                if h.content_origin is None:
                    h.content_origin = origin
        # The oldest first, as if they had been read in this run.
        self.held = dict(sorted(self.held.items(), key=lambda kv: kv[1].first_seen_ms))

    # -- inside -----------------------------------------------------------------------------
    def _complete(self, h: _Held) -> bool:
        r = h.span
        return (r is not None and r.status == "ok"
                and any(name == "gen_ai.choice" for _, name, _ in h.events)
                and any(name in _INPUT_EVENTS for _, name, _ in h.events))

    def _hold(self, key: str, kind: str, origin: Origin, first_seen_ms: int, payload: bytes) -> None:
        self._rows.append(("hold", key, self._next(), kind, *origin, first_seen_ms,
                           payload.decode()))

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _release(self, key: str, h: _Held) -> tuple[Request, Origin]:
        del self.held[key]
        self._rows.append(("done", key, self._next(), None, None, None, None, None, None))
        self._stored[key] = None
        if len(self._stored) > self.max_pending:
            del self._stored[next(iter(self._stored))]
        r, origin = h.span, h.span_origin
        assert r is not None and origin is not None
        events = h.events
        if events and all(t > 0 for t, _, _ in events):
            events = sorted(events, key=lambda e: e[0])  # stable: equal times keep their order
        join_content(r, [(name, ea) for _, name, ea in events])
        return r, origin

    def _let_go(self, key: str, h: _Held, ready: list[tuple[Request, Origin]],
                skipped: list[tuple[Any, ...]], *, full: bool) -> None:
        if h.span is not None:
            r, origin = self._release(key, h)
            if not h.events:
                r.not_replayable = no_content_waited(self.window_s, full)
            ready.append((r, origin))
            return
        del self.held[key]
        self._rows.append(("done", key, self._next(), None, None, None, None, None, None))
        if h.content_origin is not None:
            skipped.append((*h.content_origin, ORPHAN_CONTENT, len(h.events)))

    def _bound(self, now_ms: int) -> list[tuple[Request, Origin]]:
        """Let the oldest keys go while more than `max_pending` are held; orphan content let go
        here is counted by the next `expire`."""
        ready: list[tuple[Request, Origin]] = []
        while len(self.held) > self.max_pending:
            key, h = next(iter(self.held.items()))
            self._let_go(key, h, ready, self._skipped, full=True)
        return ready


def origin_of(msg: RawMessage) -> Origin:
    return (msg.topic, msg.partition, msg.offset)
