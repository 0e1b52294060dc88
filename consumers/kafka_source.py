"""The Kafka source: a consumer group whose positions come from the store, not from Kafka.

On every assignment each partition is sought to the next offset stored in DuckDB (written in
the same transaction as the rows), so a crash between the DuckDB commit and the Kafka commit
re-reads nothing twice. Kafka offsets are still committed after each persisted batch so lag
shows in ordinary Kafka tooling; they are used only for partitions DuckDB has never seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.records import RawMessage
from shadowroute.config import KafkaConfig, secret_from_env
from shadowroute.errors import SourceUnavailable

log = logging.getLogger("shadowroute.kafka")


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass  # batches are persisted before the next fetch, so nothing is held across a revoke

    async def on_partitions_assigned(self, assigned: Any) -> None:
        stored = self.source.stored_offsets()
        for tp in assigned:
            nxt = stored.get((tp.topic, tp.partition))
            if nxt is not None:
                assert self.source.consumer is not None
                self.source.consumer.seek(tp, nxt)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class KafkaSource:
    def __init__(self, cfg: KafkaConfig,
                 stored_offsets: Callable[[], dict[tuple[str, int], int]]) -> None:
        self.cfg = cfg
        self.stored_offsets = stored_offsets
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
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
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
        got = await self.consumer.getmany(timeout_ms=self.cfg.poll_timeout_ms,
                                          max_records=self.cfg.max_batch_records)
        out: list[RawMessage] = []
        for tp, recs in got.items():
            for r in recs:
                out.append(RawMessage(tp.topic, tp.partition, r.offset, r.value, r.key,
                                      tuple(r.headers or ()), r.timestamp))
        return out

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Best effort: the store holds the authoritative positions."""
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except KafkaError as e:
            log.warning("Kafka offset commit failed (positions are safe in DuckDB): %s", e)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records between our position and the high water, per assigned partition."""
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
            out[(tp.topic, tp.partition)] = max(0, hw - pos)
        return out

    async def stop(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await producer.stop()
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.stop()
