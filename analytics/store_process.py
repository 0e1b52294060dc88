"""The store in a child process: DuckDB's work off the event loop's GIL.

`StoreThread` (`analytics.service_store`) runs DuckDB on a thread of the service's process.
That thread shares the GIL with the event loop, and DuckDB's Python binding takes the GIL back
between the steps of every
statement: each hand-over can hold the loop for up to the 5 ms switch interval, and every call
in flight waits it out (the shadow stage measured ~0.9 ms of overhead per call with no store,
2-8 ms with the store on a thread; docs/architecture.md). `StoreProcess` has the same interface
(`ServiceStore`), but the `Store` lives in a child process that owns the DuckDB file; the event
loop only pickles requests onto a socket and reads the answers.

A request is a `Store` method (pickled by reference, as the function itself), its arguments and
keyword arguments; the child runs only the methods of the channel's allow-list, and the parent's
calls are typed by the method they name (`_call(Store.pending_samples, limit, exclude)` returns
what `Store.pending_samples` returns).

Four socket pairs join the processes:

- the *async* channel carries the stages' calls (`write_ingest`, `pending`, `write`, `shed`,
  ...) from the event loop; the child runs them one at a time, in the order sent, and answers
  in that order (as the single writer thread of `StoreThread` does);
- the *control* channel carries short blocking calls: the stored Kafka positions (read when
  partitions are assigned, on the event loop), counts, `close`;
- the *queries* channel carries the HTTP API's `/v1/sql` and `/v1/verdict` queries, which run on
  a cursor in the child beside the writes. A channel of their own, so that a person's long query
  never holds up the positions the consumer waits for;
- the *user* channel carries a person's SQL (`/v1/sql`), run read-only, bounded in time and rows
  (`Store.user_query`): a channel of its own so that such a query never holds up `/v1/verdict`.

The child exits when told to close or when the parent goes away (its sockets reach EOF), and
closes the DuckDB file either way, so a crashed service never leaves the file locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from analytics import lake
from analytics.config import REOPEN_EVERY_S
from analytics.errors import StoreError
from analytics.store import Store, UserResult
from analytics.tiers import TierRow
from consumers.ingest import IngestBatch
from consumers.records import OffsetReset
from shadow.results import PendingSample, SampleResult

P = ParamSpec("P")
R = TypeVar("R")

HEADER = struct.Struct("!Q")  # payload length
START_TIMEOUT_S = 120.0  # opening a large file replays its write-ahead log first
CLOSE_TIMEOUT_S = 120.0  # closing checkpoints the write-ahead log into the file
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(HEADER.pack(len(data)))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    """The next message, or None at EOF."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    data = _recv_exact(sock, HEADER.unpack(head)[0])
    return None if data is None else pickle.loads(data)


def _portable(e: BaseException) -> BaseException:
    """`e` if it survives pickling (so the parent sees the same error type), else a StoreError
    that carries its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return StoreError(f"{type(e).__name__}: {e}")


# -- the child --------------------------------------------------------------------------------
# What each channel may run: Store methods, compared as the functions themselves.
ASYNC_CALLS: frozenset[Callable[..., Any]] = frozenset({
    Store.write_ingest, Store.record_resets, Store.pending_samples, Store.write_sample_results,
    Store.shed_pending, Store.recent_shadow_spend, Store.lease_budget, Store.counts,
    Store.learned_rows, Store.write_router_scores, Store.set_router_costs,
    Store.set_tier_policies, lake.export, Store.apply_retention})
CONTROL_CALLS: frozenset[Callable[..., Any]] = frozenset({
    Store.stored_offsets, Store.stored_marks, Store.fetch, Store.counts,
    Store.interrupt_user_queries})
QUERY_CALLS: frozenset[Callable[..., Any]] = frozenset({Store.query_table})
USER_CALLS: frozenset[Callable[..., Any]] = frozenset({Store.user_query})
USER_REPLY_GRACE_S = 10.0  # beyond a user query's own timeout, before the channel is given up
_CLOSE = ("close", ())
_CLOSE_CONTROL = ("close from the control channel", ())  # the child's own marker


def _answer(store: Store, allowed: frozenset[Callable[..., Any]], request: Any) -> tuple[str, Any]:
    try:
        fn, args, kwargs = request
        if fn not in allowed:
            raise StoreError(f"the store process does not serve {fn!r} on this channel")
        return "ok", fn(store, *args, **kwargs)
    except Exception as e:
        return "err", _portable(e)


def serve(path: str, threads: int, async_fd: int, control_fd: int, queries_fd: int,
          user_fd: int, memory_limit: str = "", reopen_every_s: float = 0.0) -> int:
    """The child's main: open the store, answer the channels until closed or orphaned."""
    # Ctrl-C reaches the whole process group and systemd signals every process of the unit:
    # the child outlives such signals so the service can write its last results and close it.
    # It ends when told to, or when the service is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.umask(0o077)  # the DuckDB file and its WAL: the owner's only
    a = socket.socket(fileno=async_fd)
    b = socket.socket(fileno=control_fd)
    c = socket.socket(fileno=queries_fd)
    d = socket.socket(fileno=user_fd)
    try:
        store = Store(path)
        store.prepare_writer(threads, memory_limit, reopen_every_s)
    except Exception as e:
        _send(b, ("err", _portable(e)))
        return 1
    _send(b, ("ok", os.getpid()))
    # Async requests and `close` meet in one queue, so `close` runs after everything sent before
    # it and the file is closed by the thread that writes it.
    work: queue.Queue[tuple[str, Any] | None] = queue.Queue()

    def read_async() -> None:
        while (req := _recv(a)) is not None:
            work.put(req)
            if req == _CLOSE:
                return
        work.put(None)  # the parent went away

    def serve_control() -> None:
        while (req := _recv(b)) is not None:
            if req == _CLOSE:
                work.put(_CLOSE_CONTROL)
                return
            _send(b, _answer(store, CONTROL_CALLS, req))
        work.put(None)

    def serve_queries() -> None:
        while (req := _recv(c)) is not None:
            _send(c, _answer(store, QUERY_CALLS, req))

    def serve_user() -> None:
        while (req := _recv(d)) is not None:
            _send(d, _answer(store, USER_CALLS, req))

    threading.Thread(target=read_async, daemon=True, name="store-async").start()
    threading.Thread(target=serve_user, daemon=True, name="store-user-sql").start()
    threading.Thread(target=serve_control, daemon=True, name="store-control").start()
    threading.Thread(target=serve_queries, daemon=True, name="store-queries").start()
    closer = None
    try:
        while (req := work.get()) is not None:
            if req in (_CLOSE, _CLOSE_CONTROL):
                closer = a if req == _CLOSE else b
                break
            reply = _answer(store, ASYNC_CALLS, req)
            try:
                _send(a, reply)
            except OSError:
                break  # the parent went away
            # Between two calls of the writer, after the answer went out: the safe point for
            # giving DuckDB's kept heap back (`Store.reopen`).
            store.maybe_reopen()
    finally:
        store.close()
    if closer is not None:
        with contextlib.suppress(OSError):
            _send(closer, ("ok", None))
    return 0


# -- the parent -------------------------------------------------------------------------------
class StoreProcess:
    """`ServiceStore` with the `Store` in a child process (see the module docstring). `reads`
    offers the blocking reads (`query_table`, `fetch`, `stored_offsets`, `counts`) for code that
    runs outside the event loop."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 0,
                 memory_limit: str = "", reopen_every_s: float = REOPEN_EVERY_S) -> None:
        """`threads`: DuckDB's worker threads in the child (0: one fewer than the cores);
        `memory_limit`: DuckDB's (`storage.memory_limit`; empty: DuckDB's default);
        `reopen_every_s`: how often the child reopens its DuckDB instance (`Store.reopen`;
        0: never)."""
        self.path = Path(path)
        a_parent, a_child = socket.socketpair()
        b_parent, b_child = socket.socketpair()
        c_parent, c_child = socket.socketpair()
        d_parent, d_child = socket.socketpair()
        children = (a_child, b_child, c_child, d_child)
        env = dict(os.environ)
        # The child imports this package, installed or not (benchmarks run from the checkout).
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                # `-c`, not `-m analytics.store_process`: the package imports this module, and
                # runpy warns on stderr when it runs a module that is already imported.
                [sys.executable, "-c", _CHILD_MAIN, str(self.path), str(threads),
                 *(str(x.fileno()) for x in children), memory_limit, repr(reopen_every_s)],
                pass_fds=tuple(x.fileno() for x in children), env=env,
                stdin=subprocess.DEVNULL)
        finally:
            for x in children:
                x.close()
        self._async_sock = a_parent
        self._sync_sock = b_parent  # control
        self._sync_lock = threading.Lock()
        self._queries_sock = c_parent
        self._queries_lock = threading.Lock()
        self._user_sock = d_parent
        self._user_lock = threading.Lock()
        self._user_broken: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._connect_lock: asyncio.Lock | None = None
        self._broken: str | None = None
        self._closed = False
        b_parent.settimeout(START_TIMEOUT_S)
        try:
            hello = _recv(b_parent)
        except (TimeoutError, OSError) as e:
            self._abandon()
            raise StoreError(f"the store process for {self.path} did not start: {e}") from None
        b_parent.settimeout(None)
        if hello is None:
            code = self._abandon()
            raise StoreError(f"the store process for {self.path} exited at start (code {code})")
        if hello[0] == "err":
            self._abandon()
            raise hello[1]
        self.reads = StoreProcessReads(self)

    # -- blocking channel ---------------------------------------------------------------------
    def _call_sync(self, fn: Callable[Concatenate[Store, P], R], *args: P.args,
                   **kwargs: P.kwargs) -> R:
        query = fn in QUERY_CALLS
        sock = self._queries_sock if query else self._sync_sock
        with self._queries_lock if query else self._sync_lock:
            if self._closed:
                raise StoreError(f"the store for {self.path} is closed")
            try:
                _send(sock, (fn, args, kwargs))
                reply = _recv(sock)
            except OSError as e:
                raise self._gone(str(e)) from None
        return cast(R, self._answer_of(reply))  # what `fn` returned, in the child

    def _answer_of(self, reply: Any) -> Any:
        """The child's answer to a blocking call: its value, or the error it raised."""
        if reply is None:
            raise self._gone("connection closed")
        kind, value = reply
        if kind == "err":
            raise value
        return value

    def _call_user(self, query: str, max_rows: int, timeout_s: float, max_bytes: int
                   ) -> UserResult:
        """A person's query on the user channel. The child interrupts it after `timeout_s`; if no
        answer comes even then, the channel is given up (a late answer would be read as the
        next query's) and later queries fail until the service restarts."""
        with self._user_lock:
            if self._closed:
                raise StoreError(f"the store for {self.path} is closed")
            if self._user_broken:
                raise StoreError(self._user_broken)
            try:
                self._user_sock.settimeout(timeout_s + USER_REPLY_GRACE_S)
                _send(self._user_sock, (Store.user_query, (query,), {
                    "max_rows": max_rows, "timeout_s": timeout_s, "max_bytes": max_bytes}))
                reply = _recv(self._user_sock)
            except TimeoutError:
                self._user_broken = (f"the store process for {self.path} did not finish a query "
                                     "it was told to interrupt; restart the service")
                raise StoreError(self._user_broken) from None
            except OSError as e:
                raise self._gone(str(e)) from None
        return cast(UserResult, self._answer_of(reply))

    def _gone(self, why: str) -> StoreError:
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else f"stopped answering ({why})"
        self._broken = f"the store process for {self.path} {state}"
        return StoreError(self._broken)

    # -- event-loop channel -------------------------------------------------------------------
    async def _connect(self) -> asyncio.StreamWriter:
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._writer is None:
                reader, writer = await asyncio.open_connection(sock=self._async_sock)
                self._reader_task = asyncio.create_task(self._read_answers(reader))
                self._writer = writer
        return self._writer

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                data = await reader.readexactly(HEADER.unpack(head)[0])
                kind, value = pickle.loads(data)
                fut = self._waiting.popleft()
                if fut.done():
                    continue  # its caller was cancelled; the child did the work anyway
                if kind == "ok":
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            err = self._gone(str(e) or "connection closed")
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(err)

    async def _call(self, fn: Callable[Concatenate[Store, P], R], *args: P.args,
                    **kwargs: P.kwargs) -> R:
        return cast(R, await self._request((fn, args, kwargs)))  # what `fn` returned, in the child

    async def _request(self, request: Any, *, closing: bool = False) -> Any:
        if self._closed and not closing:
            raise StoreError(f"the store for {self.path} is closed")
        if self._broken:
            raise StoreError(self._broken)
        writer = await self._connect()
        # Pickled here, on the event loop: ~1-2 us a result, cheaper than a thread's GIL share.
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        if self._broken:  # the answer reader has stopped: nobody would answer this call
            raise StoreError(self._broken)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            writer.write(HEADER.pack(len(data)))
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError) as e:
            with contextlib.suppress(ValueError):
                self._waiting.remove(fut)
            if not fut.cancel() and not fut.cancelled():
                fut.exception()  # failed by the answer reader already: retrieved here
            raise self._gone(str(e) or "connection lost") from None
        return await fut

    async def write_ingest(self, batch: IngestBatch) -> int:
        return await self._call(Store.write_ingest, batch)

    async def pending(self, limit: int, exclude: Collection[str] = ()) -> list[PendingSample]:
        return await self._call(Store.pending_samples, limit, list(exclude))

    async def record_resets(self, resets: Sequence[OffsetReset]) -> None:
        await self._call(Store.record_resets, list(resets))

    async def write(self, results: Sequence[SampleResult]) -> None:
        await self._call(Store.write_sample_results, list(results))

    async def shed(self, keep: int, reason: str) -> tuple[int, int]:
        return await self._call(Store.shed_pending, keep, reason)

    async def recent_shadow_spend(self) -> list[tuple[float, float]]:
        return await self._call(Store.recent_shadow_spend)

    async def lease_budget(self, run_id: str, nano: int) -> None:
        await self._call(Store.lease_budget, run_id, nano)

    async def set_router_costs(self, costs: Sequence[tuple[str, str, float]]) -> None:
        await self._call(Store.set_router_costs, list(costs))

    async def set_tier_policies(self, rows: Sequence[TierRow]) -> None:
        await self._call(Store.set_tier_policies, list(rows))

    async def export_lake(self, lake_dir: Path, instance: str) -> dict[str, int]:
        return await self._call(lake.export, lake_dir, instance)

    async def apply_retention(self, requests_before: datetime | None,
                              texts_before: Mapping[str, datetime] | None) -> tuple[int, int, bool]:
        return await self._call(Store.apply_retention, requests_before, texts_before)

    async def learned_rows(self, model: str) -> list[tuple[Any, ...]]:
        return await self._call(Store.learned_rows, model)

    async def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None:
        await self._call(Store.write_router_scores, list(rows))

    async def counts(self) -> dict[str, Any]:
        return await self._call(Store.counts)

    # -- lifetime -----------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the DuckDB file after every call sent before from the event loop, their answers
        delivered first, and wait for the child (without blocking the loop)."""
        if self._closed:
            return
        if self._writer is None or self._broken:
            self.close()  # nothing was sent from the loop: the control channel will do
            return
        self._closed = True
        try:
            with contextlib.suppress(StoreError):  # died meanwhile: nothing left to close
                await self._request(_CLOSE, closing=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.proc.wait, CLOSE_TIMEOUT_S)
        finally:
            self._abandon()  # also when cancelled: at EOF the child closes the file and exits

    def close(self) -> None:
        """Close the DuckDB file (after every request sent before) and wait for the child. From
        the event loop, prefer `aclose`: this one cannot deliver the answers of calls still in
        flight (they fail)."""
        with self._sync_lock:
            if self._closed:
                return
            self._closed = True
            try:
                _send(self._sync_sock, _CLOSE)
                self._sync_sock.settimeout(CLOSE_TIMEOUT_S)
                _recv(self._sync_sock)
            except OSError:
                pass  # already gone: nothing left to close
        self._abandon()

    def _abandon(self) -> int | None:
        """Close our ends and reap the child (it exits at EOF, closing the file)."""
        if self._writer is not None:
            with contextlib.suppress(RuntimeError):  # its event loop has already closed
                self._writer.close()
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(StoreError(f"the store for {self.path} is closed"))
                fut.exception()  # retrieved: a caller may have gone away already
        self._async_sock.close()
        self._sync_sock.close()
        self._queries_sock.close()
        self._user_sock.close()
        try:
            return self.proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class StoreProcessReads:
    """Blocking reads through the child (`StoreReads`), for threads and for code outside the
    event loop."""

    def __init__(self, owner: StoreProcess) -> None:
        self._owner = owner

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        return self._owner._call_sync(Store.stored_offsets)

    def stored_marks(self) -> dict[tuple[str, int], tuple[int, int | None, int]]:
        return self._owner._call_sync(Store.stored_marks)

    def fetch(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
              ) -> list[tuple[Any, ...]]:
        return self._owner._call_sync(Store.fetch, query, params)

    def query_table(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
                    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._owner._call_sync(Store.query_table, query, params)

    def counts(self) -> dict[str, Any]:
        return self._owner._call_sync(Store.counts)

    def user_query(self, query: str, *, max_rows: int, timeout_s: float,
                   max_bytes: int = 16 << 20) -> UserResult:
        return self._owner._call_user(query, max_rows, timeout_s, max_bytes)

    def interrupt_user_queries(self) -> None:
        """Stop people's queries now and refuse new ones: the service is stopping."""
        self._owner._call_sync(Store.interrupt_user_queries)


def child_main(argv: Sequence[str]) -> int:
    """The child's entry: PATH THREADS ASYNC_FD CONTROL_FD QUERIES_FD USER_FD [MEMORY_LIMIT
    [REOPEN_EVERY_S]]."""
    threads, async_fd, control_fd, queries_fd, user_fd = (int(x) for x in argv[1:6])
    return serve(argv[0], threads, async_fd, control_fd, queries_fd, user_fd,
                 (argv[6:7] or [""])[0], float((argv[7:8] or ["0"])[0]))


_CHILD_MAIN = "import sys; from analytics.store_process import child_main; sys.exit(child_main(sys.argv[1:]))"
