"""The DuckDB store: one file, one writer.

DuckDB lets one process hold a database file for writing. The service opens it read-write (in
its store process, `analytics.store_process`, or on a thread) and every write goes through this
object, one at a time; other processes open it read-only when the
service is not running, or ask the service's local HTTP API (`/v1/sql`, `/v1/verdict`) when it
is (see `shadowroute.client`). Batches are handed to DuckDB as Arrow tables, never row by row.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

import sql
from consumers.ingest import IngestBatch
from shadowroute.errors import StoreError, StoreLockedError

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "SET"}
FETCH_CHUNK = 128  # rows per fetch of pending samples; see `pending_samples`


def open_connection(path: str | Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        # DuckDB draws a progress bar on the terminal for queries over ~2 s: not from a service
        # (or its store process), and not into the output of `shadowroute sql`.
        con.execute("SET enable_progress_bar = false")
        return con
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            raise StoreLockedError(f"{path} is held by another process: {msg.splitlines()[0]}") from None
        raise StoreError(f"cannot open {path}: {msg.splitlines()[0]}") from None
    except duckdb.Error as e:
        raise StoreError(f"cannot open {path}: {str(e).splitlines()[0]}") from None


class Store:
    """Owns the read-write connection of the service (or of a one-shot command)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"{self.path} does not exist (has the service run yet?)")
        self.con = open_connection(self.path, read_only=read_only)
        self._lock = threading.Lock()
        if not read_only:
            self.migrate()

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def prepare_writer(self, threads: int = 0) -> None:
        """Ready the service's writer connection before it serves: cap DuckDB's threads (0: one
        fewer than the cores, at least one; see `StorageConfig.threads`) and pay now the ~0.2 s
        of imports inside DuckDB that its first Arrow registration costs, rather than in the
        middle of the first batch of results."""
        n = threads or max(1, (os.cpu_count() or 2) - 1)
        with self._lock:
            self.con.execute(f"SET threads = {int(n)}")  # SET takes no bound parameter
            self.con.register("_shadowroute_warm_up", pa.table({"x": pa.array([], pa.int64())}))
            self.con.unregister("_shadowroute_warm_up")

    def migrate(self) -> None:
        with self._lock:
            for stmt in sql.script("schema_"):
                self.con.execute(stmt).fetchall()

    @contextmanager
    def _tx(self, frames: Mapping[str, pl.DataFrame]) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction with `frames` registered as views under their names."""
        with self._lock:
            con = self.con
            for name, df in frames.items():
                con.register(name, df.to_arrow())
            try:
                con.execute("BEGIN TRANSACTION").fetchall()
                try:
                    yield con
                    con.execute("COMMIT").fetchall()
                except BaseException:
                    con.execute("ROLLBACK").fetchall()
                    raise
            finally:
                for name in frames:
                    con.unregister(name)

    # -- ingest ---------------------------------------------------------------------------
    def write_ingest(self, batch: IngestBatch) -> int:
        """Rows and the offsets they came from, in one transaction. Returns how many requests
        were already stored (same request id) and so were not stored again."""
        try:
            return self._write_ingest(batch, ignore_known=False)
        except duckdb.ConstraintException:
            # A request id that is already stored (a re-read file, a producer retry): redo the
            # batch skipping known ids. Rare, so the common path pays no per-row lookup
            # (INSERT OR IGNORE costs about twice a plain INSERT here).
            return self._write_ingest(batch, ignore_known=True)

    def _write_ingest(self, batch: IngestBatch, *, ignore_known: bool) -> int:
        offsets = pl.DataFrame(
            [(t, p, o) for (t, p), o in batch.offsets.items()],
            schema={"topic": pl.Utf8, "partition": pl.Int32, "next_offset": pl.Int64}, orient="row")
        frames = {name: df for name, df in (
            ("batch_requests", batch.requests), ("batch_samples", batch.samples),
            ("batch_rejected", batch.rejected), ("batch_skipped", batch.skipped),
            ("batch_otlp_join", batch.otlp_join),
            ("batch_offsets", offsets)) if df.height}  # registering costs ~1 ms a frame
        suffix = "_ignore_known" if ignore_known else ""
        duplicates = 0
        with self._tx(frames) as con:
            if batch.requests.height:
                # fetchall, not fetchone: DuckDB 2 refuses other work on a connection whose
                # result was not read to the end.
                rows = con.execute(sql.query("insert_requests" + suffix)).fetchall()
                row = rows[0] if rows else None
                duplicates = batch.requests.height - (int(row[0]) if row else 0)
            if batch.samples.height:
                con.execute(sql.query("insert_samples" + suffix)).fetchall()
            if batch.rejected.height:
                con.execute(sql.query("insert_rejected")).fetchall()
            if batch.skipped.height:
                con.execute(sql.query("insert_skipped")).fetchall()
            if batch.otlp_join.height:
                con.execute(sql.query("hold_otlp_pending")).fetchall()
                con.execute(sql.query("release_otlp_pending")).fetchall()
            if offsets.height:
                con.execute(sql.query("upsert_offsets")).fetchall()
        return duplicates

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        rows = self.fetch(sql.query("stored_offsets"))
        return {(t, p): o for t, p, o in rows}

    # -- shadow results -------------------------------------------------------------------
    def pending_samples(self, limit: int, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The oldest `limit` pending samples, leaving out the ids in `exclude`."""
        with self._lock:
            cur = self.con.execute(sql.query("pending_samples"),
                                   {"limit": limit, "exclude": list(exclude)})
            cols = [d[0] for d in cur.description]
            out: list[dict[str, Any]] = []
            # In chunks: DuckDB builds the Python rows holding the GIL, and the event loop beside
            # this thread waits for it (1,024 rows at once held it ~5 ms).
            while rows := cur.fetchmany(FETCH_CHUNK):
                out.extend(dict(zip(cols, row, strict=True)) for row in rows)
            return out

    def write_results(self, frames: Mapping[str, pl.DataFrame]) -> None:
        """router_scores, shadow_calls, scores and the samples' final status in one transaction.
        A (sample, model) already stored is not stored again: results are written once."""
        try:
            self._write_results(frames, ignore_known=False)
        except duckdb.ConstraintException:
            # Already stored (a write that committed but was retried): redo skipping known
            # keys. Rare, so the common path does not pay INSERT OR IGNORE's lookups.
            self._write_results(frames, ignore_known=True)

    def _write_results(self, frames: Mapping[str, pl.DataFrame], *, ignore_known: bool) -> None:
        suffix = "_ignore_known" if ignore_known else ""
        with self._tx(frames) as con:
            for name, q in (("batch_router_scores", "insert_router_scores" + suffix),
                            ("batch_shadow_calls", "insert_shadow_calls" + suffix),
                            ("batch_scores", "insert_scores" + suffix),
                            ("batch_finished", "finish_samples")):
                if frames[name].height:
                    con.execute(sql.query(q)).fetchall()

    def shed_pending(self, keep: int, reason: str) -> tuple[int, int]:
        """Backpressure: mark pending samples beyond the oldest `keep` as `skipped_shed`.
        Returns (pending before, shed)."""
        with self._lock:
            # fetchall, not fetchone: DuckDB refuses `register` on a connection with an
            # unfinished result.
            pending = int(self.con.execute(sql.query("pending_count")).fetchall()[0][0])
            if pending <= keep:
                return pending, 0
            rows = self.con.execute(sql.query("shed_samples"),
                                    {"keep": keep, "reason": reason}).fetchall()
            return pending, int(rows[0][0]) if rows else 0

    def recent_shadow_spend(self) -> list[tuple[float, float]]:
        """(age in seconds, USD) of shadow spend over the last day, to seed the budget, with
        what killed runs leased but never wrote (at age 0)."""
        return [(float(a), float(u)) for a, u in self.fetch(sql.query("recent_shadow_spend"))]

    def lease_budget(self, run_id: str, nano: int) -> None:
        """Journal room the shadow budget is about to use (negative: room given back)."""
        with self._lock:
            self.con.execute(sql.query("insert_budget_lease"), {"run_id": run_id, "nano": nano})

    # -- reads ----------------------------------------------------------------------------
    def fetch(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
              ) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(query, params).fetchall()

    def query_table(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None,
                    *, read_only_check: bool = False) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query and return (column names, rows). With `read_only_check`, refuse anything
        but SELECT-like statements (the service's /v1/sql shares the writer's connection)."""
        # A cursor is its own connection to the same database: reads do not wait for writes.
        cur = self.con.cursor()
        try:
            if read_only_check:
                check_read_only(cur, query)
            try:
                res = cur.execute(query, params)
            except duckdb.Error as e:
                raise StoreError(str(e).splitlines()[0]) from None
            if res.description is None:
                return [], []
            return [d[0] for d in res.description], res.fetchall()
        finally:
            cur.close()

    def counts(self) -> dict[str, Any]:
        cols, rows = self.query_table(sql.query("counts"))
        return dict(zip(cols, rows[0], strict=True))


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as e:
        raise StoreError(str(e).splitlines()[0]) from None
    if not stmts:
        raise StoreError("empty query")
    for st in stmts:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY_STATEMENTS:
            raise StoreError(f"only read-only statements are allowed here, got {kind}")
