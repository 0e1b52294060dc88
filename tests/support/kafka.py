"""Producing and topic helpers over real aiokafka clients."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: Iterable[bytes],
                  compression: str | None = None) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=compression,
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    n = 0
    try:
        futs = []
        for i, v in enumerate(values):
            futs.append(await producer.send(topic, v, key=str(i).encode()))
            n += 1
        for f in futs:
            await f
    finally:
        await producer.stop()
    return n
