"""The ingest pipeline: fetch -> decode -> persist, with the stages overlapped.

Fetching and decoding the next batch runs while the previous one is written: the write runs in
the store's own process by default (`storage.writer = "process"`), or on a thread while DuckDB
releases the GIL, so on two cores the stages overlap. When the writer falls
behind, the batches waiting for it are merged into one transaction, so the fixed cost of a
transaction (registering frames, commit) is spread over more records exactly when it matters.
Offsets are committed to the source only after the transaction that holds them. With a
dead-letter sink, a batch's rejected records are produced to it (whole) before that transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import polars as pl

from consumers.ingest import IngestBatch, Ingestor
from consumers.records import RawMessage


def merge_batches(batches: list[IngestBatch]) -> IngestBatch:
    offsets: dict[tuple[str, int], int] = {}
    for b in batches:
        for tp, o in b.offsets.items():
            offsets[tp] = max(offsets.get(tp, o), o)
    return IngestBatch(
        requests=pl.concat([b.requests for b in batches]),
        samples=pl.concat([b.samples for b in batches]),
        rejected=pl.concat([b.rejected for b in batches]),
        offsets=offsets,
        skipped=pl.concat([b.skipped for b in batches]),
        otlp_join=pl.concat([b.otlp_join for b in batches]))


class BatchSource(Protocol):
    async def batch(self) -> list[RawMessage]: ...
    async def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...


class AsyncIngestSink(Protocol):
    async def write_ingest(self, batch: IngestBatch) -> int: ...


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
                 max_waiting: int = 4, max_merge_records: int = 20_000) -> None:
        self.ingestor = ingestor
        self.sink = sink
        self.source = source
        self.on_persisted = on_persisted
        self.dead_letters = dead_letters
        # Decoded (or being decoded) batches, in fetch order, with their records, waiting for
        # the writer.
        self.queue: asyncio.Queue[tuple[Awaitable[IngestBatch], list[RawMessage]] | None] = (
            asyncio.Queue(maxsize=max_waiting))
        self.max_merge_records = max_merge_records
        self.exhausted = False
        self._decoding: asyncio.Future[IngestBatch] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (or a finite source is exhausted); the batch in hand is always
        persisted and committed before returning."""
        writer = asyncio.create_task(self._write_loop())
        try:
            while not stop.is_set() and not writer.done():
                msgs = await self.source.batch()
                if not msgs:
                    exhausted = getattr(self.source, "exhausted", False)
                    # Spans waiting for their content (OTel join) end at their window even when
                    # no record comes, and all of them when a finite source has ended (asked
                    # unconditionally then: the batches before may still be decoding).
                    if exhausted or (self.ingestor.holding and self.ingestor.due()):
                        await self.queue.put((self._decode([], flush_held=exhausted), []))
                    if exhausted:
                        self.exhausted = True
                        break
                    continue
                await self.queue.put((self._decode(msgs), msgs))
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
            head = await self.queue.get()
            if head is None:
                return
            first = await head[0]
            batches, done = [first], False
            dead = rejected_messages(first, head[1]) if self.dead_letters else []
            size = first.requests.height + first.rejected.height
            while not self.queue.empty() and size < self.max_merge_records:
                nxt = self.queue.get_nowait()
                if nxt is None:
                    done = True
                    break
                b = await nxt[0]
                batches.append(b)
                if self.dead_letters:
                    dead += rejected_messages(b, nxt[1])
                size += b.requests.height + b.rejected.height
            batch = merge_batches(batches) if len(batches) > 1 else first
            if dead and self.dead_letters:
                # Before the transaction that moves the offsets past them: a crash in between
                # sends them again, never loses them.
                await self.dead_letters(dead)
            duplicates = await self.sink.write_ingest(batch)
            await self.source.commit(batch.offsets)
            if self.on_persisted:
                self.on_persisted(batch, duplicates)
            if done:
                return
