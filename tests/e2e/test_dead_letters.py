"""kafka.dead_letter_topic through the real broker and the running service: every rejected
record is produced to the dead-letter topic whole (value, key, headers) with its reason and
origin, is in the `rejected` table too, and the good records around it are stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import duckdb
from aiokafka import AIOKafkaConsumer, TopicPartition

from shadowroute.config import load_config
from shadowroute.demo.broker import Broker
from shadowroute.demo.traffic import TrafficGenerator
from tests.e2e.test_formats_json import produce_with_headers
from tests.support.configs import write_config
from tests.support.kafka import create_topic
from tests.support.model_server import ModelBehaviour, ModelServer
from tests.support.service import run_until_consumed


async def read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 30) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list = []  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(recs)
        return got
    finally:
        await consumer.stop()


def test_rejected_records_go_to_the_dead_letter_topic_whole(broker: Broker, topic: str,
                                                            db_path: Path, tmp_path: Path) -> None:
    dlq = f"{topic}-dead"
    asyncio.run(create_topic(broker.bootstrap, dlq, partitions=1))
    good = list(TrafficGenerator(seed=9).encoded(30))
    big = b'{"request": ' + b"x" * 10_000  # longer than storage.max_raw_bytes (4,096)
    bad = [(b'{"request": {"model": "gpt-4o"', [("trace", b"t-1")]),  # truncated JSON
           (b"\xff\xfe not utf-8", []),
           (big, [("trace", b"t-3")])]
    records = [(v, []) for v in good[:15]] + bad + [(v, []) for v in good[15:]]
    asyncio.run(produce_with_headers(broker.bootstrap, topic, records))  # type: ignore[arg-type]
    with ModelServer(ModelBehaviour(answer=lambda prompt: "ok")) as ms:
        cfg = load_config(write_config(tmp_path / "c.toml", bootstrap=broker.bootstrap,
                                       topic=topic, group="g-dead", db=db_path, model_url=ms.url),
                          env={"SHADOWROUTE_KAFKA__DEAD_LETTER_TOPIC": dlq})
        asyncio.run(run_until_consumed(cfg, len(records)))

    dead = asyncio.run(read_all(broker.bootstrap, dlq, len(bad)))
    assert sorted(r.value for r in dead) == sorted(v for v, _ in bad)  # whole, not cut
    letters = set()
    for r in dead:
        headers = dict(r.headers)
        t, p, o = headers["shadowroute-source"].decode().rsplit("/", 2)
        letters.add((t, int(p), int(o), headers["shadowroute-reason"].decode()))
        if r.value == big:
            assert headers["trace"] == b"t-3"  # the record's own headers and key travel with it
            assert r.key == str(records.index((big, [("trace", b"t-3")]))).encode()
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rejected = con.execute('SELECT topic, partition, "offset", reason, raw_size FROM rejected'
                               ).fetchall()
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (len(good),)
    finally:
        con.close()
    # The same records with the same reasons in both places; the table keeps the size.
    assert {(t, p, o, reason) for t, p, o, reason, _ in rejected} == letters
    assert len(letters) == len(bad) and max(size for *_, size in rejected) == len(big)
