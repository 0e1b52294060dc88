from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowroute.demo.broker import Broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port, for the whole session."""
    b = Broker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield b
    b.stop()


@pytest.fixture
def topic(broker: Broker, request: pytest.FixtureRequest) -> str:
    """A fresh, explicitly created topic (4 partitions) for one test."""
    from tests.support.kafka import create_topic

    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:60]
    asyncio.run(create_topic(broker.bootstrap, name, partitions=4))
    return name


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "shadowroute.duckdb"
