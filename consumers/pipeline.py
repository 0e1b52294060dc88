"""The ingest pipeline: fetch -> decode -> persist, with the stages overlapped.

Fetching and decoding the next batch runs while the previous one is written: the write runs in
the store's own process by default (`storage.writer = "process"`), or on a thread while DuckDB
releases the GIL, so on two cores the stages overlap. When the writer falls
behind, the batches waiting for it are merged into one transaction, so the fixed cost of a
transaction (registering frames, commit) is spread over more records exactly when it matters.
Offsets are committed to the source only after the transaction that holds them. With a
dead-letter sink, a batch's rejected records are produced to it (whole) before that transaction.

A write that fails with a retriable error (disk full) pauses ingest: nothing is committed, the
fetch loop stops at the full queue, the same batch is written again with backoff and ingest
resumes by itself once it goes through. A stop meanwhile ends with that error; the batches not
written are read again after the restart (their positions were never stored).

Offset resets the source found (`take_resets`) are recorded in fetch order with the batches
around them, never merged across: the reset's new position replaces the stored one only after
the batches read before it are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import polars as pl

from consumers.ingest import IngestBatch, Ingestor
from consumers.records import OffsetReset, RawMessage

log = logging.getLogger("shadowroute.ingest")

T = TypeVar("T")
RETRY_FIRST_S = 0.5  # first wait after a failed write; doubles up to RETRY_MAX_S
RETRY_MAX_S = 30.0


def record_marks(msgs: Sequence[RawMessage]) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(timestamp, CRC-32 of the value) of the last record per partition."""
    out: dict[tuple[str, int], tuple[int | None, int]] = {}
    last: dict[tuple[str, int], RawMessage] = {}
    for m in msgs:
        last[(m.topic, m.partition)] = m
    for tp, m in last.items():
        out[tp] = (m.timestamp_ms, zlib.crc32(m.value or b""))
    return out


def merge_batches(batches: list[IngestBatch]) -> IngestBatch:
    offsets: dict[tuple[str, int], int] = {}
    marks: dict[tuple[str, int], tuple[int | None, int]] = {}
    for b in batches:
        for tp, o in b.offsets.items():
            offsets[tp] = max(offsets.get(tp, o), o)
        marks.update(b.marks)  # batches are in fetch order: the last one read wins
    return IngestBatch(
        requests=pl.concat([b.requests for b in batches]),
        samples=pl.concat([b.samples for b in batches]),
        rejected=pl.concat([b.rejected for b in batches]),
        offsets=offsets,
        skipped=pl.concat([b.skipped for b in batches]),
        marks=marks,
        otlp_join=pl.concat([b.otlp_join for b in batches]))


class BatchSource(Protocol):
    async def batch(self) -> list[RawMessage]: ...
    async def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...


class AsyncIngestSink(Protocol):
    async def write_ingest(self, batch: IngestBatch) -> int: ...
    async def record_resets(self, resets: Sequence[OffsetReset]) -> None: ...


_Item = tuple[Awaitable[IngestBatch] | None, list[RawMessage], list[OffsetReset]]


DeadLetters = Callable[[Sequence[tuple[RawMessage, str]]], Awaitable[int]]
"""Takes (record, reason) pairs; returns how many could not be delivered."""


def rejected_messages(batch: IngestBatch, msgs: Sequence[RawMessage]) -> list[tuple[RawMessage, str]]:
    """The whole records behind `batch.rejected` (whose `raw` is cut to a bound), with reasons."""
    if not batch.rejected.height:
        return []
    by_pos = {(m.topic, m.partition, m.offset): m for m in msgs}
    return [(by_pos[(t, p, o)], reason) for t, p, o, reason in batch.rejected.select(
        "topic", "partition", "offset", "reason").iter_rows()]


class IngestPipeline:
    def __init__(self, ingestor: Ingestor, sink: AsyncIngestSink, source: BatchSource, *,
                 on_persisted: Callable[[IngestBatch, int], None] | None = None,
                 dead_letters: DeadLetters | None = None,
                 max_waiting: int = 4, max_merge_records: int = 20_000,
                 on_paused: Callable[[bool], None] | None = None) -> None:
        self.ingestor = ingestor
        self.sink = sink
        self.source = source
        self.on_persisted = on_persisted
        self.dead_letters = dead_letters
        # Decoded (or being decoded) batches, in fetch order, with their records, waiting for
        # the writer.
        # Resets found by the fetch that returned them come first.
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=max_waiting)
        self._held: _Item | None = None  # taken from the queue, not merged: written next
        self.max_merge_records = max_merge_records
        self.exhausted = False
        self.on_paused = on_paused  # told True when writes start failing, False when they work
        self.paused = False
        self._stop = asyncio.Event()
        self._decoding: asyncio.Future[IngestBatch] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (or a finite source is exhausted); the batch in hand is always
        persisted and committed before returning (or, while writes fail, left unread)."""
        self._stop = stop
        writer = asyncio.create_task(self._write_loop())
        take_resets = getattr(self.source, "take_resets", None)
        try:
            while not stop.is_set() and not writer.done():
                msgs = await self.source.batch()
                resets = take_resets() if take_resets is not None else []
                if not msgs:
                    exhausted = getattr(self.source, "exhausted", False)
                    if resets:
                        await self.queue.put((None, [], resets))
                    # Spans waiting for their content (OTel join) end at their window even when
                    # no record comes, and all of them when a finite source has ended (asked
                    # unconditionally then: the batches before may still be decoding).
                    if exhausted or (self.ingestor.holding and self.ingestor.due()):
                        await self.queue.put((self._decode([], flush_held=exhausted), [], []))
                    if exhausted:
                        self.exhausted = True
                        break
                    continue
                await self.queue.put((self._decode(msgs), msgs, resets))
        finally:
            if not writer.done():
                await self.queue.put(None)
            await writer  # re-raises a failed write: the service must not go on without it

    def _decode(self, msgs: list[RawMessage], flush_held: bool = False) -> Awaitable[IngestBatch]:
        # A thread, so the event loop stays responsive; decoding is Python and holds the GIL,
        # but the DuckDB write of the previous batch (GIL released) runs beside it. A process
        # pool was tried: with one worker it gained nothing measurable on two cores.
        # One batch at a time, in fetch order: the OTel join's state must change in the order
        # the batches are written (two decoding threads gained nothing anyway: the GIL).
        prev = self._decoding

        async def decode() -> IngestBatch:
            if prev is not None:
                await asyncio.wait([prev])
            return await asyncio.to_thread(self.ingestor.process, msgs, flush_held=flush_held)

        self._decoding = fut = asyncio.ensure_future(decode())
        return fut

    async def _write_loop(self) -> None:
        while True:
            if self._held is not None:
                head, self._held = self._held, None
            else:
                got = await self.queue.get()
                if got is None:
                    return
                head = got
            if head[2]:
                await self._retrying(functools.partial(self.sink.record_resets, head[2]))
                await self.source.commit({(r.topic, r.partition): r.new_offset for r in head[2]
                                          if r.new_offset is not None})
            if head[0] is None:
                continue
            first = await head[0]
            first.marks = record_marks(head[1])
            batches, done = [first], False
            dead = rejected_messages(first, head[1]) if self.dead_letters else []
            size = first.requests.height + first.rejected.height
            while not self.queue.empty() and size < self.max_merge_records:
                nxt = self.queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                if nxt[2] or nxt[0] is None:
                    self._held = nxt  # a reset: the batches before it are written first
                    break
                b = await nxt[0]
                b.marks = record_marks(nxt[1])
                batches.append(b)
                if self.dead_letters:
                    dead += rejected_messages(b, nxt[1])
                size += b.requests.height + b.rejected.height
            batch = merge_batches(batches) if len(batches) > 1 else first
            if dead and self.dead_letters:
                # Before the transaction that moves the offsets past them: a crash in between
                # sends them again, never loses them.
                await self.dead_letters(dead)
            duplicates = await self._retrying(functools.partial(self.sink.write_ingest, batch))
            await self.source.commit(batch.offsets)
            if self.on_persisted:
                self.on_persisted(batch, duplicates)
            if done:
                return

    async def _retrying(self, write: Callable[[], Awaitable[T]]) -> T:
        """`write()`, again with backoff while it fails with a retriable error (disk full); one
        log line when writes start failing, one a minute while they do, one when they work."""
        delay, since, tries, told = RETRY_FIRST_S, 0.0, 0, 0.0
        while True:
            try:
                out = await write()
            except Exception as e:
                if not getattr(e, "retriable", False) or self._stop.is_set():
                    raise
                tries += 1
                now = time.monotonic()
                if not self.paused:
                    self.paused, since, told = True, now, now
                    log.error("ingest paused, nothing committed: %s; retrying with backoff "
                              "up to %.0f s", e, RETRY_MAX_S)
                    if self.on_paused:
                        self.on_paused(True)
                elif now - told >= 60:
                    told = now
                    log.error("ingest still paused after %.0f s (%d tries): %s", now - since,
                              tries, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            if self.paused:
                self.paused = False
                log.warning("ingest resumed: the write went through after %.1f s (%d tries)",
                            time.monotonic() - since, tries)
                if self.on_paused:
                    self.on_paused(False)
            return out
