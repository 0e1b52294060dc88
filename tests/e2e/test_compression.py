"""Topics compressed with each codec Kafka producers use, through the real broker and the
running service: every record of every format arrives, decoded as if it had not been."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shadowroute.demo.broker import Broker
from shadowroute.demo.traffic import TrafficGenerator
from tests.e2e.test_formats_json import run
from tests.support.kafka import produce

FORMATS = ("openai_chat", "litellm", "otlp_json", "otlp_proto")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_topics(codec: str, broker: Broker, topic: str, db_path: Path,
                           tmp_path: Path) -> None:
    values = list(TrafficGenerator(seed=5, formats=FORMATS).encoded(80))
    asyncio.run(produce(broker.bootstrap, topic, values, compression=codec))
    con = run(broker, topic, db_path, tmp_path, len(values))
    try:
        assert con.execute("SELECT count(*) FROM rejected").fetchone() == (0,)
        by_format = dict(con.execute("SELECT format, count(*) FROM requests GROUP BY ALL").fetchall())
        assert by_format == {f: 20 for f in FORMATS}, by_format
    finally:
        con.close()
