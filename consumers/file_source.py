"""A finite source over exported log files, for `shadowroute replay` (no Kafka needed).

Each file is a "topic" named `file:<absolute path>` with one partition whose offsets are record
numbers, so the same exactly-once machinery applies: positions are stored in DuckDB with the
rows, and re-running the same files resumes after the last stored record (adding nothing twice).
Accepted: NDJSON / JSON Lines, a JSON array or a single JSON object per file (any supported log
format, detected per record), Parquet (one row per record, columns as JSON keys), and OpenAI
Batch files — an input file and its output file given together are joined by `custom_id`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from consumers.errors import ReplayFileError
from consumers.formats.openai_batch import join_batch_files
from consumers.records import RawMessage

__all__ = ["FileSource", "ReplayFileError"]


def _topic(path: Path) -> str:
    return f"file:{path.resolve()}"


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        head = f.read(1 << 16).lstrip()
        f.seek(0)
        if head[:1] == b"[":
            # A JSON array: one record per element (re-encoded for the decoders).
            try:
                items = orjson.loads(f.read())
            except orjson.JSONDecodeError as e:
                raise ReplayFileError(f"{path}: not a valid JSON array: {e}") from None
            for item in items:
                yield orjson.dumps(item)
            return
        for line in f:
            if line.strip():
                yield line.rstrip(b"\r\n")


def _parquet_rows(path: Path) -> Iterator[bytes]:
    import polars as pl

    try:
        lf = pl.scan_parquet(path)
        for frame in lf.collect_batches() if hasattr(lf, "collect_batches") else [lf.collect()]:
            for row in frame.iter_rows(named=True):
                yield orjson.dumps(row, default=str)
    except pl.exceptions.PolarsError as e:
        raise ReplayFileError(f"{path}: cannot read Parquet: {e}") from None


def _batch_kind(path: Path) -> str | None:
    """'input' or 'output' for an OpenAI Batch file, judged by its first line."""
    try:
        with path.open("rb") as f:
            first = orjson.loads(f.readline() or b"{}")
    except (orjson.JSONDecodeError, OSError):
        return None
    if not isinstance(first, dict) or "custom_id" not in first:
        return None
    if "body" in first and "method" in first:
        return "input"
    if "response" in first or "error" in first:
        return "output"
    return None


class FileSource:
    """Yields batches of records from files in order; `exhausted` once all are read."""

    def __init__(self, paths: list[str | os.PathLike[str]],
                 stored_offsets: Callable[[], dict[tuple[str, int], int]],
                 batch_size: int = 2000) -> None:
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise ReplayFileError(f"{p}: no such file")
            if not os.access(p, os.R_OK):
                raise ReplayFileError(f"{p}: not readable")
        self.stored_offsets = stored_offsets
        self.batch_size = batch_size
        self.exhausted = False
        self.read = 0  # records handed out this run (for progress)
        self.resumed = 0  # records skipped because an earlier run stored them
        self._iter: Iterator[RawMessage] | None = None

    def _streams(self) -> list[tuple[str, Iterator[bytes]]]:
        inputs = [p for p in self.paths if _batch_kind(p) == "input"]
        outputs = [p for p in self.paths if _batch_kind(p) == "output"]
        streams: list[tuple[str, Iterator[bytes]]] = []
        joined: set[Path] = set()
        if inputs and outputs:
            def inp() -> Iterator[bytes]:
                for p in inputs:
                    yield from _lines(p)

            for out in outputs:
                streams.append((_topic(out) + "+batch-input",
                                join_batch_files(inp(), _lines(out))))
                joined.add(out)
            joined.update(inputs)
        for p in self.paths:
            if p in joined:
                continue
            reader = _parquet_rows(p) if p.suffix.lower() in (".parquet", ".pq") else _lines(p)
            streams.append((_topic(p), reader))
        return streams

    def _records(self) -> Iterator[RawMessage]:
        stored = self.stored_offsets()
        for topic, lines in self._streams():
            start = stored.get((topic, 0), 0)
            for offset, value in enumerate(lines):
                if offset < start:
                    self.resumed += 1
                    continue
                yield RawMessage(topic, 0, offset, value)

    async def start(self) -> None:
        self._iter = self._records()

    async def batch(self) -> list[RawMessage]:
        assert self._iter is not None, "start() first"
        out: list[RawMessage] = []
        for msg in self._iter:
            out.append(msg)
            if len(out) >= self.batch_size:
                break
        if not out:
            self.exhausted = True
        self.read += len(out)
        return out

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Positions live in DuckDB with the rows; nothing else to commit."""

    async def stop(self) -> None:
        self._iter = None
