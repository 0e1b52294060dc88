"""The Kafka source: a consumer group whose positions come from the store, not from Kafka.

On every assignment each partition is sought to the next offset stored in DuckDB (written in
the same transaction as the rows), so a crash between the DuckDB commit and the Kafka commit
re-reads nothing twice. Kafka offsets are still committed after each persisted batch so lag
shows in ordinary Kafka tooling; they are used for partitions DuckDB has never seen, and where
another instance of the group committed past this file's position (the partition moved to it
and back: each instance keeps its own file).

Resets. A stored position can fall outside the partition's log: the broker restarted empty, the
topic was deleted and re-created (past the end), or retention removed records never read
(before the start). Every fetch checks the positions it fetched from against the range the
broker reports, so this is found right after each assignment and at any time later:

- real Kafka answers OFFSET_OUT_OF_RANGE; the consumer runs with `auto_offset_reset = "none"`
  so aiokafka raises it to us instead of resetting silently, and the log start and high water
  are asked with ListOffsets (`beginning_offsets` / `end_offsets`);
- Tansu answers a fetch past its end with no error and its (lower) high water, and its
  `end_offsets()` is wrong, so the high water comes from `highwater()` after the fetch;
- a log reset and refilled past the stored position while the service was away (the position
  is in range, but of another log) shows in the last record read: its timestamp and CRC-32 are
  stored with the offset, and on assignment the source reads it again and compares (one record
  per partition per assignment). Another record there is a reset of kind `replaced`.

A reset is logged once (topic, partition, stored offset, actual range), counted, recorded in
`offset_resets` with the position it moves to, and handled by policy: `kafka.reset_past_end`
(default `earliest`: records past a reset are new) or `kafka.auto_offset_reset` for a position
before the log start (records lost to retention are counted).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from consumers.config import KafkaConfig, secret_from_env
from consumers.errors import SourceUnavailable
from consumers.records import OffsetReset, RawMessage

log = logging.getLogger("shadowroute.kafka")


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass  # batches are persisted before the next fetch, so nothing is held across a revoke

    async def on_partitions_assigned(self, assigned: Any) -> None:
        stored = self.source.stored_offsets()
        marks = self.source.stored_marks() if self.source.stored_marks is not None else {}
        self.source._verify = {}
        consumer = self.source.consumer
        assert consumer is not None
        for tp in assigned:
            nxt = stored.get((tp.topic, tp.partition))
            # Another instance of the group may have owned the partition since this file's
            # rows: it committed after persisting past our position, so the further of the two
            # is where the records not yet stored by anyone start.
            committed = await self.source.committed(tp) if nxt is not None else None
            if nxt is not None and committed is not None and committed > nxt:
                log.info("%s[%d]: resuming at %d, committed by another instance of the group "
                         "(this file stored up to %d)", tp.topic, tp.partition, committed, nxt)
                consumer.seek(tp, committed)
            elif nxt is not None:
                mark = marks.get((tp.topic, tp.partition))
                if mark is not None and mark[0] == nxt and nxt > 0:
                    # Read the last record again: is it the one stored? (`_verified`)
                    self.source._verify[tp] = mark
                    consumer.seek(tp, nxt - 1)
                else:
                    consumer.seek(tp, nxt)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self.source.on_assigned is not None:
            total = sum(len(consumer.partitions_for_topic(t) or ()) for t in self.source.cfg.topics)
            self.source.on_assigned(len(assigned), total)


class KafkaSource:
    def __init__(self, cfg: KafkaConfig,
                 stored_offsets: Callable[[], dict[tuple[str, int], int]],
                 on_reset: Callable[[OffsetReset], None] | None = None,
                 stored_marks: Callable[[], dict[tuple[str, int], tuple[int, int | None, int]]]
                 | None = None,
                 on_assigned: Callable[[int, int], None] | None = None) -> None:
        self.cfg = cfg
        # (partitions this instance owns now, partitions of the topics): at every assignment,
        # so that a share of something global (the shadow budget) follows the group.
        self.on_assigned = on_assigned
        self.stored_offsets = stored_offsets
        self.stored_marks = stored_marks
        # Partitions sought to their last stored record, to compare it with what was stored:
        # (next offset, timestamp, CRC-32 of the value).
        self._verify: dict[TopicPartition, tuple[int, int | None, int]] = {}
        self.on_reset = on_reset
        # Found by `batch`, taken by the pipeline (`take_resets`), which records each one in
        # order with the batches around it.
        self._resets: list[OffsetReset] = []
        extra: dict[str, Any] = {}
        if cfg.security_protocol != "PLAINTEXT":
            extra["security_protocol"] = cfg.security_protocol
            if cfg.security_protocol.startswith("SASL"):
                extra["sasl_mechanism"] = cfg.sasl_mechanism
                extra["sasl_plain_username"] = secret_from_env(cfg.sasl_username_env)
                extra["sasl_plain_password"] = secret_from_env(cfg.sasl_password_env)
        self._producer_kwargs = dict(bootstrap_servers=cfg.bootstrap_servers,
                                     max_request_size=16 * 1024 * 1024, **extra)
        self._consumer_kwargs = dict(
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=cfg.group_id,
            group_instance_id=cfg.group_instance_id or None,
            enable_auto_commit=False,
            # "none": an out-of-range position is raised to `batch`, which records it as a reset
            # and applies the policy, instead of aiokafka resetting it silently.
            auto_offset_reset="none",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 5),
            max_partition_fetch_bytes=8 * 1024 * 1024,
            **extra,
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None  # dead letters, when configured

    async def start(self) -> None:
        # Built here, inside the running loop, never at construction or import time.
        self.consumer = AIOKafkaConsumer(**self._consumer_kwargs)
        try:
            await self.consumer.start()
            if self.cfg.dead_letter_topic:
                self.producer = AIOKafkaProducer(**self._producer_kwargs)
                await self.producer.start()
        except KafkaError as e:
            await self.stop()
            raise SourceUnavailable(
                f"cannot reach Kafka at {self.cfg.bootstrap_servers} ({type(e).__name__}); "
                "check kafka.bootstrap_servers and that the broker is up") from None
        self.consumer.subscribe(list(self.cfg.topics), listener=_SeekToStored(self))

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of `tp` (None: none, or the broker cannot say now)."""
        assert self.consumer is not None
        try:
            return await self.consumer.committed(tp)  # type: ignore[no-any-return]
        except KafkaError as e:
            log.warning("%s[%d]: the group's committed offset is unavailable (%s): resuming "
                        "at this file's", tp.topic, tp.partition, type(e).__name__)
            return None

    async def dead_letter(self, rejected: Sequence[tuple[RawMessage, str]]) -> int:
        """Produce rejected records to `kafka.dead_letter_topic`, whole, with their reason and
        origin in headers; waits for the broker's acks. Returns how many could not be produced
        (logged; they are still in the `rejected` table, so the pipeline goes on)."""
        if self.producer is None or not rejected:
            return 0
        topic = self.cfg.dead_letter_topic
        failed = 0
        futures = []
        for msg, reason in rejected:
            headers = [*msg.headers, ("shadowroute-reason", reason.encode()),
                       ("shadowroute-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode())]
            try:
                futures.append(await self.producer.send(topic, msg.value, key=msg.key,
                                                        headers=headers))
            except KafkaError as e:
                failed += 1
                log.warning("dead letter for %s not produced to %s: %s", msg.where, topic, e)
        for res in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(res, BaseException):
                failed += 1
                log.warning("a dead letter was not acknowledged by %s: %s", topic, res)
        return failed

    async def batch(self) -> list[RawMessage]:
        assert self.consumer is not None
        try:
            got = await self.consumer.getmany(timeout_ms=self.cfg.poll_timeout_ms,
                                              max_records=self.cfg.max_batch_records)
        except OffsetOutOfRangeError as e:  # real Kafka: the position is outside the log
            for tp, offset in e.args[0].items():
                await self._out_of_range(tp, offset)
            return []
        except NoOffsetForPartitionError as e:
            # Neither DuckDB nor Kafka holds a position: where `auto_offset_reset` says.
            await self._seek_policy(e.args[0], self.cfg.auto_offset_reset)
            return []
        out: list[RawMessage] = []
        for tp, recs in got.items():
            if tp in self._verify:
                recs = await self._verified(tp, recs)
            for r in recs:
                out.append(RawMessage(tp.topic, tp.partition, r.offset, r.value, r.key,
                                      tuple(r.headers or ()), r.timestamp))
        await self._check_past_end(got)
        return out

    async def _verified(self, tp: TopicPartition, recs: list[Any]) -> list[Any]:
        """The records of `tp` to keep, the first fetch after assignment: the one before the
        stored position is dropped when it is the record stored (timestamp, CRC-32 of its
        value); when it is another, the log was replaced under the position (the broker or
        topic was reset and refilled past it) and the partition resets like one past the end."""
        nxt, ts, crc = self._verify.pop(tp)
        first = recs[0]
        if first.offset == nxt - 1:
            same = first.timestamp == ts and zlib.crc32(first.value or b"") == crc
            if not same:
                assert self.consumer is not None
                await self._reset(tp, nxt, None, self.consumer.highwater(tp), "replaced")
                return []
        # Gone (compacted, or a transaction marker): nothing to compare; keep what is new.
        return [r for r in recs if r.offset >= nxt]

    def take_resets(self) -> list[OffsetReset]:
        """Resets found since the last call, in the order found."""
        out, self._resets = self._resets, []
        return out

    async def _seek_policy(self, tp: TopicPartition, policy: str) -> None:
        assert self.consumer is not None
        if policy == "latest":
            await self.consumer.seek_to_end(tp)
        else:
            await self.consumer.seek_to_beginning(tp)

    async def _check_past_end(self, got: dict[TopicPartition, list[Any]]) -> None:
        """Tansu: a fetch past the end answers no error and its high water; a position above
        the high water the fetch reported is a reset (after records were returned, a position is
        at most the high water, so only partitions without records need a look)."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            if tp in got:
                continue
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await asyncio.wait_for(self.consumer.position(tp), 0.1)
            except (KafkaError, TimeoutError):
                continue  # no valid position yet: nothing was fetched from it
            if pos > hw:
                stored = self._verify.pop(tp)[0] if tp in self._verify else pos
                await self._reset(tp, stored, None, hw, "past_end")

    async def _out_of_range(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None
        if tp in self._verify:
            offset = self._verify.pop(tp)[0]
        start = end = None
        try:
            start = (await self.consumer.beginning_offsets([tp])).get(tp)
            end = (await self.consumer.end_offsets([tp])).get(tp)
        except KafkaError as e:
            log.warning("%s[%s]: cannot read the log's range (%s)", tp.topic, tp.partition, e)
        kind = "before_start" if start is not None and offset < start else "past_end"
        await self._reset(tp, offset, start, end, kind)

    async def _reset(self, tp: TopicPartition, stored: int, start: int | None,
                     end: int | None, kind: str) -> None:
        assert self.consumer is not None
        policy = self.cfg.auto_offset_reset if kind == "before_start" else self.cfg.reset_past_end
        await self._seek_policy(tp, policy)
        new: int | None
        try:
            new = await asyncio.wait_for(self.consumer.position(tp), 10)
        except (KafkaError, TimeoutError):
            new = None
        if kind != "before_start" and policy == "earliest" and start is None:
            start = new
        lost = max(0, start - stored) if kind == "before_start" and start is not None else 0
        reset = OffsetReset(tp.topic, tp.partition, stored, start, end, kind, policy, new, lost)
        log.warning("offset reset: %s", reset.describe(), extra={"news": True})
        self._resets.append(reset)
        if self.on_reset is not None:
            self.on_reset(reset)

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Best effort: the store holds the authoritative positions."""
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except KafkaError as e:
            log.warning("Kafka offset commit failed (positions are safe in DuckDB): %s", e)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records between our position and the high water, per assigned partition. Negative
        when the position is past the high water (a reset not handled yet): never hidden as 0."""
        out: dict[tuple[str, int], int] = {}
        if self.consumer is None:
            return out
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await self.consumer.position(tp)
            except KafkaError:
                continue
            out[(tp.topic, tp.partition)] = hw - pos
        return out

    async def stop(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.stop()
