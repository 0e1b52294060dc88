"""The one typed interface to the service's store, and its thread backend.

Ingest, the shadow runner, the HTTP API and the CLI all reach the DuckDB store through
`ServiceStore`, whichever backend runs it:

- `StoreProcess` (`analytics.store_process`, `storage.writer = "process"`, the default): the
  `Store` lives in a child process that owns the file; the event loop only pickles calls;
- `StoreThread` (`storage.writer = "thread"`): the `Store` in this process, every write on one
  dedicated thread, in order.

Each stage sees only the narrow protocol it needs (`consumers.pipeline.AsyncIngestSink`,
`shadow.runner.ResultSink`), which both backends satisfy. The awaited calls run one at a time,
in the order sent; `reads` are blocking reads for code outside the event loop (the API's
queries run on threads), which do not wait behind the writes.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from analytics import lake
from analytics.config import REOPEN_EVERY_S
from analytics.store import Store, UserResult
from analytics.store_process import StoreProcess
from analytics.tiers import TierRow
from consumers.ingest import IngestBatch
from consumers.records import OffsetReset
from shadow.results import PendingSample, SampleResult

P = ParamSpec("P")
R = TypeVar("R")
Params = Mapping[str, Any] | Sequence[Any] | None


class StoreReads(Protocol):
    """Blocking reads, for threads and code outside the event loop."""

    def stored_offsets(self) -> dict[tuple[str, int], int]: ...
    def stored_marks(self) -> dict[tuple[str, int], tuple[int, int | None, int]]: ...
    def fetch(self, query: str, params: Params = None) -> list[tuple[Any, ...]]: ...
    def query_table(self, query: str, params: Params = None
                    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...
    def counts(self) -> dict[str, Any]: ...
    def user_query(self, query: str, *, max_rows: int, timeout_s: float,
                   max_bytes: int = 16 << 20) -> UserResult: ...
    def interrupt_user_queries(self) -> None: ...


class ServiceStore(Protocol):
    """The store as the running service uses it (both backends)."""

    @property
    def reads(self) -> StoreReads: ...

    async def write_ingest(self, batch: IngestBatch) -> int: ...
    async def record_resets(self, resets: Sequence[OffsetReset]) -> None: ...
    async def pending(self, limit: int, exclude: Collection[str] = ()) -> list[PendingSample]: ...
    async def write(self, results: Sequence[SampleResult]) -> None: ...
    async def shed(self, keep: int, reason: str) -> tuple[int, int]: ...
    async def recent_shadow_spend(self) -> list[tuple[float, float]]: ...
    async def lease_budget(self, run_id: str, nano: int) -> None: ...
    async def set_router_costs(self, costs: Sequence[tuple[str, str, float]]) -> None: ...
    async def set_tier_policies(self, rows: Sequence[TierRow]) -> None: ...
    async def export_lake(self, lake_dir: Path, instance: str) -> dict[str, int]: ...
    async def apply_retention(self, requests_before: datetime | None,
                              texts_before: Mapping[str, datetime] | None) -> tuple[int, int, bool]: ...
    async def learned_rows(self, model: str) -> list[tuple[Any, ...]]: ...
    async def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None: ...
    async def counts(self) -> dict[str, Any]: ...
    async def aclose(self) -> None: ...
    def close(self) -> None: ...


class StoreThread:
    """`ServiceStore` with the `Store` in this process: every awaited call on one dedicated
    thread, in order. One process fewer than `StoreProcess`, but DuckDB's binding takes the GIL
    between the steps of a statement, and every call in flight waits while it holds it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="duckdb-writer")

    @property
    def reads(self) -> StoreReads:
        return self.store

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        fut = asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, *args, **kwargs))
        if self.store.reopen_due():
            # Queued behind this call on the writer's thread: it answers first, and the reopen
            # runs between two calls (`Store.reopen`).
            self.pool.submit(self.store.maybe_reopen)
        return await fut

    async def write_ingest(self, batch: IngestBatch) -> int:
        return await self._run(self.store.write_ingest, batch)

    async def record_resets(self, resets: Sequence[OffsetReset]) -> None:
        await self._run(self.store.record_resets, resets)

    async def pending(self, limit: int, exclude: Collection[str] = ()) -> list[PendingSample]:
        return await self._run(self.store.pending_samples, limit, list(exclude))

    async def write(self, results: Sequence[SampleResult]) -> None:
        # Frames are built on the writer thread too: on the event loop, a flush of ~1,500
        # results held every call in flight for ~10 ms.
        await self._run(self.store.write_sample_results, results)

    async def shed(self, keep: int, reason: str) -> tuple[int, int]:
        return await self._run(self.store.shed_pending, keep, reason)

    async def recent_shadow_spend(self) -> list[tuple[float, float]]:
        return await self._run(self.store.recent_shadow_spend)

    async def lease_budget(self, run_id: str, nano: int) -> None:
        await self._run(self.store.lease_budget, run_id, nano)

    async def set_router_costs(self, costs: Sequence[tuple[str, str, float]]) -> None:
        await self._run(self.store.set_router_costs, list(costs))

    async def set_tier_policies(self, rows: Sequence[TierRow]) -> None:
        await self._run(self.store.set_tier_policies, list(rows))

    async def export_lake(self, lake_dir: Path, instance: str) -> dict[str, int]:
        return await self._run(lake.export, self.store, lake_dir, instance)

    async def apply_retention(self, requests_before: datetime | None,
                              texts_before: Mapping[str, datetime] | None) -> tuple[int, int, bool]:
        return await self._run(self.store.apply_retention, requests_before, texts_before)

    async def learned_rows(self, model: str) -> list[tuple[Any, ...]]:
        return await self._run(self.store.learned_rows, model)

    async def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None:
        await self._run(self.store.write_router_scores, list(rows))

    async def counts(self) -> dict[str, Any]:
        return await self._run(self.store.counts)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.store.close()

    async def aclose(self) -> None:
        self.close()


def open_store(path: str | os.PathLike[str], writer: str = "process", threads: int = 0,
               memory_limit: str = "", reopen_every_s: float = REOPEN_EVERY_S) -> ServiceStore:
    """The service's store: DuckDB in a child process (`storage.writer = "process"`) or on a
    thread of this one (`"thread"`); the same interface either way. `threads`: DuckDB's
    (`storage.threads`); `reopen_every_s`: how often its DuckDB instance is closed and opened
    again to give back the heap DuckDB keeps (`Store.reopen`; 0: never)."""
    if writer == "process":
        return StoreProcess(path, threads, memory_limit, reopen_every_s)
    store = Store(Path(path))
    store.prepare_writer(threads, memory_limit, reopen_every_s)
    return StoreThread(store)
