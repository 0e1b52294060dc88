"""The DuckDB store: one file, one writer.

DuckDB lets one process hold a database file for writing. The service opens it read-write (in
its store process, `analytics.store_process`, or on a thread) and every write goes through this
object, one at a time; other processes open it read-only when the
service is not running, or ask the service's local HTTP API (`/v1/sql`, `/v1/verdict`) when it
is (see `shadowroute.client`). Batches are handed to DuckDB as Arrow tables, never row by row.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
import pyarrow as pa

import sql
from analytics.config import TEXT_RETENTION
from analytics.errors import StoreError, StoreLockedError, StoreWriteError
from analytics.frames import ROUTER_SCORES_SCHEMA, results_to_frames
from analytics.tiers import TIER_SCHEMA, TierRow
from consumers.ingest import IngestBatch, frame
from consumers.records import OffsetReset
from shadow.results import PendingSample, SampleResult

FETCH_CHUNK = 128  # rows per fetch of pending samples; see `pending_samples`
USER_CLOSE_WAIT_S = 10.0  # longest a close waits for interrupted user queries to end
REOPEN_READER_WAIT_S = 2.0  # longest a due reopen waits for open cursors before it tries later
REOPEN_RETRY_S = 15.0  # after a reopen that could not run (a cursor stayed open, or it failed)
REOPEN_OPEN_RETRY_S = 1.0  # after a reopen that closed the file but could not open it again

log = logging.getLogger(__name__)


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


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Close the database instance of `con` to the outside, for good: no file, extension or
    network access from SQL, and no setting can change any more (not even by us). Both settings
    are global to the instance: the service's own statements need neither, and once locked no
    person's `SET memory_limit`/`PRAGMA profiling_output` can reach the service's connections."""
    locked = con.execute("SELECT current_setting('lock_configuration')").fetchall()[0][0]
    if not locked:  # else locked already: the instance is shared by the connections of a file
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")


# The orders `Store.insert_arrow` takes: which copy of a key is kept (the first).
ARROW_ORDERS = ("", "ORDER BY status = 'done' DESC")


@dataclass(frozen=True)
class UserResult:
    """What a person's query returned: at most `max_rows` rows, `truncated` if there were more."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


class Store:
    """Owns the read-write connection of the service (or of a one-shot command)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the directory {self.path.parent} of the DuckDB "
                                 f"file: {e.strerror or e}") from None
        elif not self.path.exists():
            raise StoreError(f"{self.path} does not exist (has the service run yet?)")
        self.con = open_connection(self.path, read_only=read_only)
        if not read_only:
            # Prompts, answers and errors live here: the owner's only, also for a file created
            # under a looser umask by an older version. (New files: see the CLI's umask.)
            with contextlib.suppress(OSError):
                self.path.chmod(0o600)
        self._lock = threading.Lock()
        self._user_cursors: set[duckdb.DuckDBPyConnection] = set()
        self._user_done = threading.Condition()
        self._closing = False
        # Cursors open on the connection (our queries, people's): a reopen waits for none.
        self._cursors = threading.Condition()
        self._open_cursors = 0
        self._reopening = False
        self._writer_settings: tuple[int, str] | None = None  # threads, memory_limit
        self.reopen_every_s = 0.0  # 0: never (see `prepare_writer`)
        self._next_reopen = float("inf")
        self._con_closed = False  # by a reopen that could not open the file again
        self.reopens = 0
        if not read_only:
            self.migrate()

    def close(self) -> None:
        # A person's runaway query must not hold up the close: interrupted, it ends within
        # moments, and DuckDB refuses to close a connection whose cursor is still busy.
        self.interrupt_user_queries()
        with self._user_done:
            self._user_done.wait_for(lambda: not self._user_cursors, USER_CLOSE_WAIT_S)
        with self._lock:
            self.con.close()

    def interrupt_user_queries(self) -> None:
        """Stop people's queries now and refuse new ones (the store is about to close)."""
        with self._user_done:
            self._closing = True
            for cur in self._user_cursors:
                _interrupt(cur)

    def prepare_writer(self, threads: int = 0, memory_limit: str = "",
                       reopen_every_s: float = 0.0) -> None:
        """Ready the service's writer connection before it serves: cap DuckDB's threads (0: one
        fewer than the cores, at least one; see `StorageConfig.threads`) and its memory
        (`StorageConfig.memory_limit`, checked by the config: SET takes no bound parameter), and
        pay now the ~0.2 s of imports inside DuckDB that its first Arrow registration costs,
        rather than in the middle of the first batch of results. `reopen_every_s` (0: never):
        how often `maybe_reopen` closes the DuckDB instance and opens it again."""
        n = threads or max(1, (os.cpu_count() or 2) - 1)
        with self._lock:
            self._writer_settings = (n, memory_limit)
            self._set_up_writer(self.con)
            self.reopen_every_s = reopen_every_s
            self._next_reopen = (time.monotonic() + reopen_every_s if reopen_every_s > 0
                                 else float("inf"))

    def _set_up_writer(self, con: duckdb.DuckDBPyConnection) -> None:
        assert self._writer_settings is not None
        n, memory_limit = self._writer_settings
        con.execute(f"SET threads = {int(n)}")  # SET takes no bound parameter
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        con.register("_shadowroute_warm_up", pa.table({"x": pa.array([], pa.int64())}))
        con.unregister("_shadowroute_warm_up")
        lock_down(con)

    # -- reopening ------------------------------------------------------------------------
    def reopen_due(self) -> bool:
        return time.monotonic() >= self._next_reopen

    def maybe_reopen(self) -> bool:
        """Reopen (`reopen`) if it is due, from the writer's thread between two calls: a safe
        point, no transaction of ours is open. True if it reopened."""
        if not self.reopen_due():
            return False
        retry = REOPEN_RETRY_S
        try:
            done = self.reopen()
        except StoreError as e:
            # Closed but not open again (the file taken meanwhile by a reader in another
            # process): every call fails, and the callers pause and retry, until it opens.
            retry = REOPEN_OPEN_RETRY_S if self._con_closed else REOPEN_RETRY_S
            log.warning("%s; trying again in %g s", e, retry)
            done = False
        self._next_reopen = time.monotonic() + (self.reopen_every_s if done else retry)
        if done:
            trim_heap()
        return done

    def reopen(self, wait_s: float = REOPEN_READER_WAIT_S) -> bool:
        """Close the DuckDB instance and open the file again, with the writer's settings. DuckDB
        keeps a few KB of heap after every UPDATE and join until the database is closed
        (`benchmarks/store_memory.py`) and caches read blocks up to `memory_limit`; closing
        gives all of it back. It runs between transactions (it holds the writer's lock), so no
        write is cut: every committed one is in the file or its WAL and is there after the
        reopen, nothing is written twice. Cursors (our queries, people's `/v1/sql`) are never
        cut either: new ones wait for the reopen, and the reopen waits up to `wait_s` for the
        open ones to finish, else it gives up (False) and the caller tries later."""
        with self._lock, self._cursors:
            if self._closing or self.read_only:
                return False
            self._reopening = True
            try:
                if not self._cursors.wait_for(lambda: self._open_cursors == 0, wait_s):
                    return False
                if self._closing:
                    return False
                t0 = time.monotonic()
                try:
                    self.con.close()  # checkpoints the WAL into the file
                except duckdb.Error as e:
                    raise StoreError(f"reopening {self.path}: closing failed: "
                                     f"{str(e).splitlines()[0]}") from None
                self._con_closed = True
                self.con = open_connection(self.path, read_only=False)
                self._con_closed = False
                try:
                    locked = self.con.execute(
                        "SELECT current_setting('lock_configuration')").fetchall()[0][0]
                    if not locked and self._writer_settings is not None:
                        self._set_up_writer(self.con)
                    # else: the old instance outlived the close (another connection to it in
                    # this process) and is locked with the settings already in place.
                except duckdb.Error as e:
                    raise StoreError(f"reopening {self.path}: {str(e).splitlines()[0]}"
                                     ) from None
                self.reopens += 1
                log.debug("reopened %s in %.3f s", self.path, time.monotonic() - t0)
                return True
            finally:
                self._reopening = False
                self._cursors.notify_all()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the current connection, counted until `_release` (see `reopen`)."""
        with self._cursors:
            self._cursors.wait_for(lambda: not self._reopening)
            cur = self.con.cursor()
            self._open_cursors += 1
            return cur

    def _release(self, cur: duckdb.DuckDBPyConnection) -> None:
        cur.close()  # closing twice is harmless
        with self._cursors:
            self._open_cursors -= 1
            self._cursors.notify_all()

    def migrate(self) -> None:
        """The schema statements in name order, tables and their columns before views and
        macros: DuckDB binds a view's or macro's query when it is created, so one may use a
        column that a later migration adds to an existing file (e.g. `sample_key`)."""
        stmts = sql.script("schema_")
        with self._lock:
            for stmt in sorted(stmts, key=_defines_view):  # stable: name order within each
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
                except BaseException as e:
                    try:
                        con.execute("ROLLBACK").fetchall()
                    except duckdb.Error:
                        pass  # a failed COMMIT has ended the transaction: its error is the one
                    if isinstance(e, duckdb.Error) and not isinstance(
                            e, duckdb.ConstraintException):  # the caller handles constraints
                        raise self.write_error(e) from None
                    raise
            finally:
                for name in frames:
                    con.unregister(name)

    def write_error(self, e: BaseException) -> StoreWriteError:
        """One line: what failed, where, and the free space there."""
        try:
            free = f"{shutil.disk_usage(self.path.parent).free / 2**20:.1f} MiB free"
        except OSError as du:
            free = f"free space unknown: {du}"
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return StoreWriteError(f"writing {self.path} failed: {first} ({free} in "
                               f"{self.path.parent})")

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
            [(t, p, o, *batch.marks.get((t, p), (None, None)))
             for (t, p), o in batch.offsets.items()],
            schema={"topic": pl.Utf8, "partition": pl.Int32, "next_offset": pl.Int64,
                    "last_ts_ms": pl.Int64, "last_crc": pl.Int64}, orient="row")
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

    def record_resets(self, resets: Sequence[OffsetReset]) -> None:
        """Offset resets and the positions they move to, in one transaction."""
        with self._tx({}) as con:
            for r in resets:
                con.execute(sql.query("insert_offset_reset"), {
                    "topic": r.topic, "partition": r.partition, "stored": r.stored,
                    "log_start": r.log_start, "high_water": r.high_water, "kind": r.kind,
                    "policy": r.policy, "new_offset": r.new_offset, "lost": r.lost}).fetchall()
                if r.new_offset is not None:
                    con.execute(sql.query("reset_offset"), {
                        "topic": r.topic, "partition": r.partition,
                        "new_offset": r.new_offset}).fetchall()

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        rows = self.fetch(sql.query("stored_offsets"))
        return {(t, p): o for t, p, o in rows}

    def stored_marks(self) -> dict[tuple[str, int], tuple[int, int | None, int]]:
        """(next offset, timestamp, CRC-32) of the last record read, per partition."""
        rows = self.fetch(sql.query("stored_marks"))
        return {(t, p): (o, ts, crc) for t, p, o, ts, crc in rows}

    # -- shadow results -------------------------------------------------------------------
    def pending_samples(self, limit: int, exclude: Sequence[str] = ()) -> list[PendingSample]:
        """The oldest `limit` pending samples, leaving out the ids in `exclude`; their messages,
        parameters and tags parsed here, once, off the event loop."""
        # The ids in `exclude` are left out here, not in SQL: a join keeps heap in DuckDB after
        # every run (benchmarks/store_memory.py) and a list filter costs pending x excluded
        # (4,000 of 20,000 pending past 5,000 in flight: 318 ms against 72 ms with none). The
        # excluded are pending too, so the oldest `limit + len(exclude)` rows hold every row
        # wanted; they are skipped before their JSON is parsed.
        skip = set(exclude)
        with self._lock:
            cur = self.con.execute(sql.query("pending_samples"), {"limit": limit + len(skip)})
            out: list[PendingSample] = []
            try:
                # In chunks: DuckDB builds the Python rows holding the GIL, and the event loop
                # beside this thread waits for it (1,024 rows at once held it ~5 ms).
                while len(out) < limit and (rows := cur.fetchmany(FETCH_CHUNK)):
                    out.extend(PendingSample(
                        sample_id=sid, stratum=stratum, frontier_model=model,
                        messages=orjson.loads(messages), params=orjson.loads(params),
                        tags=orjson.loads(tags or "{}"), response_text=answer or "",
                        frontier_cost_usd=cost, input_tokens=inp, scorer=scorer, sample_key=key)
                        for sid, stratum, model, messages, params, tags, answer, cost, inp,
                        scorer, key in rows if sid not in skip)
            finally:
                # The rows not read (those past `limit` when fewer were in flight among the
                # oldest): DuckDB 2 refuses any other work on a connection whose result is
                # unfinished, and every later write would fail.
                cur.abort()
            return out[:limit]

    def write_sample_results(self, results: Sequence[SampleResult]) -> None:
        """The shadow stage's results, built into frames here (on the writer's thread or in the
        store's process: every millisecond on the event loop delays the calls in flight)."""
        self.write_results(results_to_frames(results))

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
        # Only the frames with rows are registered: each registration is a catalog change
        # (~1.4 ms with its unregister), and most batches leave some tables untouched.
        frames = {name: df for name, df in frames.items() if df.height}
        with self._tx(frames) as con:
            for name, q in (("batch_router_scores", "insert_router_scores" + suffix),
                            ("batch_router_calls", "insert_router_calls" + suffix),
                            ("batch_noise_floor", "insert_noise_floor" + suffix),
                            ("batch_shadow_calls", "insert_shadow_calls" + suffix),
                            ("batch_scores", "insert_scores" + suffix),
                            ("batch_finished", "finish_samples"),
                            ("batch_attempts", "insert_shadow_attempts" + suffix),
                            ("batch_judge_calls", "insert_judge_calls" + suffix),
                            ("batch_cascade_scores", "insert_cascade_scores" + suffix)):
                if name in frames:
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

    def set_router_costs(self, costs: Sequence[tuple[str, str, float]]) -> None:
        """(router, kind, USD per call) of the routers configured now, replacing the last."""
        with self._tx({}) as con:
            con.execute(sql.query("clear_router_costs")).fetchall()
            for router, kind, usd in costs:
                con.execute(sql.query("insert_router_cost"),
                            {"router": router, "kind": kind, "usd": usd}).fetchall()

    def set_tier_policies(self, rows: Sequence[TierRow]) -> None:
        """The multi-tier policies configured now (`analytics.tiers.settings`), replacing the
        last."""
        with self._tx({"tier_rows": pl.DataFrame(
                [tuple(r) for r in rows], schema=list(TIER_SCHEMA.items()), orient="row")}) as con:
            con.execute(sql.query("clear_tier_policies")).fetchall()
            con.execute(sql.query("insert_tier_policies")).fetchall()

    def apply_retention(self, requests_before: datetime | None,
                        texts_before: Mapping[str, datetime] | None = None,
                        max_hours: int = 6) -> tuple[int, int, bool]:
        """Retention (`[retention]`). Requests older than `requests_before` (production time,
        UTC) that were never sampled are rolled up per hour into `request_rollups` and deleted,
        the oldest hour first, at most `max_hours` hours a call, each hour in a transaction of
        its own so that ingest's writes go between. `texts_before`: per kind of text
        (`TEXT_RETENTION`: the samples' prompts and answers, judge outputs, rejected records'
        raw bytes) the time before which it is cleared; the figures stay.
        Returns (requests rolled up, rows whose text was cleared, whether older hours remain)."""
        rolled = cleared = 0
        more = False
        if requests_before is not None:
            for i in range(max_hours + 1):
                with self._lock:
                    lo = self.con.execute(sql.query("retention_next_hour"),
                                          {"before": requests_before}).fetchall()[0][0]
                if lo is None:
                    break
                if i == max_hours:
                    more = True
                    break
                span = {"lo": lo, "hi": min(lo + timedelta(hours=1), requests_before)}
                with self._tx({}) as con:
                    con.execute(sql.query("rollup_requests"), span).fetchall()
                    rolled += int(con.execute(sql.query("purge_requests"), span).fetchall()[0][0])
        if texts_before:
            with self._tx({}) as con:
                for kind, before in texts_before.items():
                    for q in TEXT_RETENTION[kind]:
                        cleared += int(con.execute(sql.query(q), {"before": before}
                                                   ).fetchall()[0][0])
        return rolled, cleared, more

    def fetch_arrow(self, query: str) -> pa.Table:
        """A query's result as one Arrow table (for the lake's Parquet)."""
        with self._lock:
            return self.con.sql(query).to_arrow_table()

    def insert_arrow(self, table: str, data: pa.Table, order: str = "") -> None:
        """`data` into `table` by column name; with a primary key, rows whose key is stored
        already are left out. `table` and `order` come from code (analytics.lake), never from
        input: DuckDB binds no identifiers."""
        if order not in ARROW_ORDERS:
            raise ValueError(f"order {order!r} is not one of {ARROW_ORDERS}")
        with self._lock:
            if not self.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = $t",
                                    {"t": table}).fetchall()[0][0]:
                raise ValueError(f"no table {table!r}")
            keyed = self.con.execute(
                "SELECT count(*) FROM duckdb_constraints() WHERE table_name = $t "
                "AND constraint_type = 'PRIMARY KEY'", {"t": table}).fetchall()[0][0]
            self.con.register("_arrow_rows", data)
            try:
                self.con.execute(  # a table that exists, an order of ARROW_ORDERS: both checked
                    f"INSERT {'OR IGNORE ' if keyed else ''}INTO {table} BY NAME "  # noqa: S608
                    f"SELECT * FROM _arrow_rows {order}").fetchall()
            finally:
                self.con.unregister("_arrow_rows")

    def learned_rows(self, model: str) -> list[tuple[Any, ...]]:
        """A learned router's training rows (`learned_router_rows`): the completed samples
        scored for `model`, in the order they arrived."""
        return self.fetch(sql.query("learned_router_rows"), {"model": model})

    def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None:
        """(sample_id, router, score, version) for samples without a score from that router
        (a learned router's out-of-fold scores); a score already stored stays."""
        if not rows:
            return
        with self._tx({"batch_oof": frame([(*r, None) for r in rows],  # key: by sample_id
                                          ROUTER_SCORES_SCHEMA)}) as con:
            con.execute(sql.query("insert_oof_router_scores")).fetchall()

    def lease_budget(self, run_id: str, nano: int) -> None:
        """Journal room the shadow budget is about to use (negative: room given back)."""
        with self._lock:
            self.con.execute(sql.query("insert_budget_lease"), {"run_id": run_id, "nano": nano})

    # -- reads ----------------------------------------------------------------------------
    def fetch(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
              ) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(query, params).fetchall()

    def query_table(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
                    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one of our own queries and return (column names, rows). Never for a person's
        SQL: that is `user_query`."""
        # A cursor is its own connection to the same database: reads do not wait for writes.
        cur = self._cursor()
        try:
            try:
                res = cur.execute(query, params)
            except duckdb.Error as e:
                raise StoreError(str(e).splitlines()[0]) from None
            if res.description is None:
                return [], []
            return [d[0] for d in res.description], res.fetchall()
        finally:
            self._release(cur)

    def user_query(self, query: str, *, max_rows: int, timeout_s: float,
                   max_bytes: int = 16 << 20) -> UserResult:
        """Run a person's SQL (`shadowroute sql`, `/v1/sql`) so that it can neither write nor
        reach beyond the file, whatever it says: DuckDB itself refuses both. The query runs in
        a READ ONLY transaction on its own cursor (writes hidden in CTEs, `EXPLAIN ANALYZE` or
        `nextval` fail in the engine), on an instance locked by `lock_down` (no file access, no
        settings); it must be a single SELECT (checked with DuckDB's parser as well, never
        instead). It is interrupted after `timeout_s`; at most `max_rows` rows and about
        `max_bytes` of values are returned (`truncated` says there was more)."""
        # A cursor of its own from the start: the writer's connection refuses a second caller.
        cur = self._cursor()
        try:
            lock_down(cur)  # the instance's settings: the cursor's are the writer's
            check_single_select(cur, query)
        except duckdb.Error as e:
            self._release(cur)
            raise StoreError(str(e).splitlines()[0]) from None
        except BaseException:
            self._release(cur)
            raise
        with self._user_done:
            if self._closing:
                self._release(cur)
                raise StoreError("the store is closing")
            self._user_cursors.add(cur)
        timer = threading.Timer(timeout_s, _interrupt, (cur,))
        timer.daemon = True
        timer.start()
        try:
            cur.execute("BEGIN TRANSACTION READ ONLY")
            try:
                rel = cur.sql(query)
                if rel is None:  # not a query after all (the parser check should have said)
                    raise StoreError("only a single SELECT statement is allowed here")
                # LIMIT on the relation: DuckDB stops producing rows at the cap. Rows become
                # Python objects a batch at a time, up to `max_bytes` of their values.
                rows: list[tuple[Any, ...]] = []
                size, truncated = 0, False
                for row in rel.limit(max_rows + 1).iter_rows(batch_size=FETCH_CHUNK):
                    size += _approx_bytes(row)
                    if len(rows) == max_rows or size > max_bytes:
                        truncated = True
                        break
                    rows.append(row)
                return UserResult(list(rel.columns), [str(t) for t in rel.types], rows,
                                  truncated)
            finally:
                cur.execute("ROLLBACK")
        except duckdb.InterruptException:
            if self._closing:
                raise StoreError("the query was interrupted: the service is stopping") from None
            raise StoreError(f"the query was interrupted after {timeout_s:g} s "
                             "(server.sql_timeout_s)") from None
        except duckdb.Error as e:
            raise StoreError(str(e).splitlines()[0]) from None
        finally:
            timer.cancel()
            self._release(cur)
            with self._user_done:
                self._user_cursors.discard(cur)
                self._user_done.notify_all()

    def counts(self) -> dict[str, Any]:
        cols, rows = self.query_table(sql.query("counts"))
        return dict(zip(cols, rows[0], strict=True))


_VIEW = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:VIEW|MACRO)\b", re.IGNORECASE)


def _defines_view(stmt: str) -> bool:
    """Whether a schema statement creates a view or macro (its comment lines aside)."""
    code = "\n".join(line for line in stmt.splitlines() if not line.lstrip().startswith("--"))
    return bool(_VIEW.match(code))


def _approx_bytes(v: Any) -> int:
    """About how much `v` weighs as text: strings and blobs by length, containers summed."""
    if isinstance(v, (str, bytes, bytearray)):
        return len(v) + 2
    if isinstance(v, (list, tuple)):
        return sum(_approx_bytes(x) for x in v) + 2
    if isinstance(v, dict):
        return sum(_approx_bytes(k) + _approx_bytes(x) for k, x in v.items()) + 2
    return 8


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere
    nothing): after a reopen, what DuckDB freed is mostly scattered free chunks that glibc
    would otherwise keep in RSS (measured: ~2 MiB after 2,000 writes)."""
    global _malloc_trim
    if _malloc_trim is None:
        name = ctypes.util.find_library("c")
        fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        _malloc_trim = fn if fn is not None else False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None  # glibc's malloc_trim, False where there is none; found at first use


def _interrupt(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.interrupt()
    except duckdb.Error:
        pass  # finished and closed meanwhile


def check_single_select(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """One SELECT statement, as DuckDB's own parser reads `query` (a second line of defence:
    the engine refuses writes and file access whatever this says)."""
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as e:
        raise StoreError(str(e).splitlines()[0]) from None
    if not stmts:
        raise StoreError("empty query")
    if len(stmts) > 1:
        raise StoreError(f"one statement per query, got {len(stmts)}")
    kind = str(stmts[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise StoreError(f"only a single read-only SELECT statement is allowed here, got {kind}")
