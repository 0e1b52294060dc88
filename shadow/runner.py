"""The shadow stage: pending samples -> router scores, cheap answers, quality scores.

Ingest persists sampled requests as `pending`; this runner picks them up from the store (so
work resumes after a restart), asks every router for its score, replays the request through
every cheap model with bounded concurrency, scores each answer against the frontier answer and
writes all results of a sample, with its final status, in one transaction. Results are
buffered and written in batches (see `_flush_loop`). Ingest never waits for it: it only sets `wake`.

Backpressure: about once a second the runner asks the sink to keep at most `max_queue` pending
samples; the newest beyond that are shed (`skipped_shed`), never ingest slowed down.

A sample ends with one of these statuses (`SAMPLE_STATUSES`); only `done` samples count in
n_h, every sampled request stays in N_h:

- `done`: at least one cheap model answered (a model that did not has its reason in
  `shadow_calls.error` / `outcome`);
- `skipped_budget`: the shadow budget had no room for any model's worst-case cost;
- `skipped_unavailable`: no deployment of any model could take the call within `max_wait_s`;
- `skipped_failed`: every call failed (retries exhausted, or a 4xx);
- `skipped_shed`: the backlog was above `shadow.max_queue`;
- `skipped_tools`: the request offered tools and `shadow.replay_tools` is false;
- `skipped_no_models`: no cheap model is configured;
- `skipped_error`: an internal error (a bug) while processing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Protocol

from consumers.ingest import prompt_text
from consumers.sampling import UnitHash
from shadow.cascade import Acceptance
from shadow.client import ModelClient
from shadow.judge import Judge
from shadow.results import Attempt, CallResult, PendingSample, SampleResult
from shadow.routers import RouteInput, Router
from shadow.scorers import JUDGE, Scoring

log = logging.getLogger("shadowroute.shadow")


SHED_REASON = "shadow backlog above shadow.max_queue: newest samples shed"


class ResultSink(Protocol):
    async def pending(self, limit: int, exclude: Collection[str] = ()) -> list[PendingSample]:
        """The oldest `limit` pending samples whose ids are not in `exclude`."""
        ...
    async def write(self, results: Sequence[SampleResult]) -> None: ...

    async def shed(self, keep: int, reason: str) -> tuple[int, int]:
        """Mark pending samples beyond the oldest `keep` as `skipped_shed`; returns
        (pending before, shed)."""
        ...


class ShadowRunner:
    def __init__(self, sink: ResultSink, routers: Sequence[Router], models: Sequence[ModelClient],
                 *, concurrency: int, flush_every_s: float = 1.0, flush_at: int = 1024,
                 flush_max: int = 5000,
                 on_result: Callable[[SampleResult], None] | None = None,
                 replay_tools: bool = False, max_queue: int | None = None,
                 shed_every_s: float = 1.0, on_shed: Callable[[int], None] | None = None,
                 ramp_s: float = 0.5, scoring: Scoring | None = None,
                 score_tag: str = "feature",
                 fit_scorers: Callable[[], Awaitable[None]] | None = None,
                 floor: Mapping[str, ModelClient] | None = None, floor_share: float = 0.0,
                 judge: Judge | None = None, cascades: Sequence[Acceptance] = (),
                 also_score: Sequence[str] = ()) -> None:
        self.sink = sink
        self.also_score = list(also_score)
        self.cascades = list(cascades)
        self.judge = judge  # scores the samples whose scorer is `judge`
        # The noise floor: frontier model name -> its client, asked again on `floor_share` of
        # the samples (by a hash of the sample id, so a sample resumed after a restart is the
        # same choice).
        self.floor = dict(floor or {})
        self.floor_share = floor_share
        self._floor_hash = UnitHash("noise-floor")
        self.scoring = scoring or Scoring()
        # Fits `tfidf_cosine` on stored frontier answers when a sample needs it before the
        # scheduler did (the sample's own answer is stored by then): once, not per call.
        self.fit_scorers = fit_scorers
        self.score_tag = score_tag  # its value is the segment fitted scorers use
        self.replay_tools = replay_tools
        self.max_queue = max_queue
        self.shed_every_s = shed_every_s
        self.ramp_s = ramp_s  # workers start spread over this long
        self.on_shed = on_shed
        self.queue_depth = 0
        self.shed_total = 0
        self._last_shed = -1e18
        self.routers = list(routers)
        self.models = list(models)
        # Samples in flight at once: each makes one call per model.
        self.workers = max(1, concurrency // max(1, len(self.models)))
        self._work = asyncio.Event()  # set while `_queue` has samples
        self.wake = asyncio.Event()
        self.flush_every_s = flush_every_s
        self.flush_at = flush_at
        self.flush_max = flush_max
        self._flush_now = asyncio.Event()
        self._room = asyncio.Event()  # cleared while `flush_max` results wait for a write
        self._room.set()
        self.on_result = on_result
        self._buffer: list[SampleResult] = []
        self._writing = 0  # results in a write that has not returned yet
        self._inflight: set[str] = set()
        self._queue: deque[PendingSample] = deque()  # read from the store, not started yet
        self._queued: set[str] = set()  # their ids
        # The last read found every pending sample (fewer than asked for): the store holds no
        # more until ingest writes some (and sets `wake`), so a worker short of work does not
        # ask again. At a trickle, or at the end of a backlog, a read per finished sample cost
        # ~5-15 ms each (the in-flight ids are read and skipped every time).
        self._exhausted = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.completed = 0
        self._routers_failing: dict[str, int] = {}  # router -> samples failed since it last answered

    # -- one sample ---------------------------------------------------------------------------
    async def process(self, sample: PendingSample) -> SampleResult:
        sid = sample.sample_id
        messages, params, tags = sample.messages, sample.params, sample.tags
        reference = sample.response_text
        route_in = RouteInput(sid, sample.frontier_model, prompt_text(messages), tags, messages)
        result = SampleResult(sid, "done", sample_key=sample.sample_key)
        if params.get("tools") and not self.replay_tools:
            result.status = "skipped_tools"
            result.skip_reason = "request offered tools (shadow.replay_tools = false)"
            return result
        for r in self.routers:
            started = time.perf_counter()
            try:
                score = float(await r.score(route_in))
            except Exception as e:  # a broken router must not lose the sample's other results
                error = (str(e) or type(e).__name__)[:300]
                result.router_calls.append((r.name, (time.perf_counter() - started) * 1000, error))
                self._router_state(r.name, sid, error)
                continue
            # Read with the score (no await between): a retrained version swapped in later does
            # not relabel it.
            result.router_scores.append((r.name, score, getattr(r, "version", None)))
            result.router_calls.append((r.name, (time.perf_counter() - started) * 1000, None))
            if r.name in self._routers_failing:
                self._router_state(r.name, sid, None)
        if not self.models:
            result.status, result.skip_reason = "skipped_no_models", "no cheap models configured"
            return result

        floor = self.floor.get(sample.frontier_model) if self.floor else None
        if floor is not None and self._floor_hash(sid) >= self.floor_share:
            floor = None
        clients = [*self.models, floor] if floor is not None else self.models
        if len(clients) == 1:
            calls = [await clients[0].complete(messages, params, sample_id=sid)]
        else:
            calls = list(await asyncio.gather(
                *(m.complete(messages, params, sample_id=sid) for m in clients)))
        result.calls = calls[:len(self.models)]
        floor_call = calls[-1] if floor is not None else None
        scorer_name = sample.scorer
        if self.fit_scorers is not None and any(
                self.scoring.wants_fit(n, reference) for n in (scorer_name, *self.also_score)):
            await self.fit_scorers()
        answered = [c for c in result.calls if c.error is None]
        # The frontier against itself, by the same scorer: the noise floor.
        if floor_call is not None and floor_call.error is None:
            answered.append(floor_call)
        # Deterministic scorers in line; the judge's (paid, slow) scores awaited together.
        scored: Sequence[tuple[str, float | None, str | None]]
        if self._judged(sample):
            scored = await asyncio.gather(*(self._judge(sample, c, result) for c in answered))
        else:
            scored = [self.scoring.score(scorer_name, c.answer or "", reference,
                                         tags.get(self.score_tag)) for c in answered]
        for c, (used, value, failure) in zip(answered, scored, strict=True):
            if c is floor_call:
                result.floor = [(c, scorer_name, used, value, failure)]
            else:
                result.scores.append((c.model, scorer_name, value, used, failure))
        if floor_call is not None and floor_call.error is not None:
            result.floor = [(floor_call, scorer_name, scorer_name, None, None)]
        for c in result.calls:  # the other scorers asked for (`scoring.also`)
            if c.error is None:
                for name in self.also_score:
                    if name != scorer_name:
                        used, value, failure = self.scoring.score(
                            name, c.answer or "", reference, tags.get(self.score_tag))
                        result.scores.append((c.model, name, value, used, failure))
        for acc in self.cascades:  # from the request and the cheap answer only
            for c in result.calls:
                if c.model == acc.model and c.error is None:
                    result.cascade_scores.append(
                        (acc.name, c.model, acc.accept(messages, c.answer or "")))
        if all(c.error is not None for c in result.calls):
            outcomes = {c.outcome for c in result.calls}
            result.status = ("skipped_budget" if outcomes == {"budget"} else
                             "skipped_unavailable" if outcomes == {"unavailable"} else
                             "skipped_failed")
            result.skip_reason = "; ".join(f"{c.model}: {c.error}" for c in result.calls)[:500]
        return result

    def _judged(self, sample: PendingSample) -> bool:
        """Whether the LLM judge scores this sample's answers."""
        return self.judge is not None and self.scoring.pick(
            sample.scorer, sample.response_text) == JUDGE

    async def _judge(self, sample: PendingSample, call: CallResult, result: SampleResult
                     ) -> tuple[str, float | None, str | None]:
        """(scorer used, value, failure) of one answer by the LLM judge; its calls join the
        result."""
        assert self.judge is not None
        j = await self.judge.judge(sample.messages, sample.response_text, call.answer or "",
                                   model=call.model, sample_id=sample.sample_id)
        result.judge_calls.extend(j.calls)
        return j.used, j.value, j.failure

    def _router_state(self, name: str, sid: str, error: str | None) -> None:
        """One log line when a router starts failing and one when it answers again (every
        failure is in `router_calls`): a router down for an hour is not 100,000 lines."""
        if error is None:
            failed = self._routers_failing.pop(name)
            log.info("router %s answers again (after %d failed samples)", name, failed)
        elif name in self._routers_failing:
            self._routers_failing[name] += 1
        else:
            self._routers_failing[name] = 1
            log.warning("router %s failed on %s: %s (its samples get no score from it until it "
                        "answers again; each failure is in router_calls)", name, sid, error)

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """`workers` long-lived tasks take samples from `_queue`, which this loop keeps filled
        from the store ahead of need: a worker that finishes a sample starts the next at once
        (no task, no semaphore, no store read per sample)."""
        flusher = asyncio.create_task(self._flush_loop())
        for i in range(self.workers):
            self._spawn_worker(i * self.ramp_s / self.workers)
        try:
            while not self._stopping:
                self.wake.clear()  # before looking: a wake-up from now on is not lost
                await self._shed()
                # Finished samples waiting for (or in) a write do not hold a worker; while
                # writes fail, results pile up in the buffer, and past `flush_max` nothing new
                # is read.
                if len(self._queue) < self.workers and self._unwritten < self.flush_max:
                    # Read ahead for many samples, leaving out those in flight or queued (still
                    # pending in the store until their results are written).
                    want = self.workers * 4
                    fresh = await self.sink.pending(want, self._inflight | self._queued)
                    self._exhausted = len(fresh) < want
                    for smp in fresh:
                        sid = smp.sample_id
                        if sid not in self._inflight and sid not in self._queued:
                            self._queue.append(smp)
                            self._queued.add(sid)
                    if self._queue:
                        self._work.set()
                    if len(fresh) >= self.workers and not self._exhausted:
                        continue  # more may be waiting: top the queue up before sleeping
                else:
                    # A wake-up not acted on now (ingest's, perhaps): read when next short.
                    self._exhausted = False
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=1.0)
                except TimeoutError:
                    pass
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    def _spawn_worker(self, delay: float) -> None:
        task = asyncio.create_task(self._worker(delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker(self, delay: float) -> None:
        # Staggered starts: a backlog at startup does not reach the providers as `workers`
        # calls in the same instant (a burst that draws 429s), and calls that start spread out
        # keep finishing spread out, so the event loop is never handed them all at once.
        await asyncio.sleep(delay)
        queue, queued = self._queue, self._queued
        while not self._stopping:
            if not queue:
                self._work.clear()
                if not self._exhausted:
                    self.wake.set()  # the loop reads more
                await self._work.wait()
                continue
            if not self._room.is_set():  # writes are failing: start no new (paid) calls
                await self._room.wait()
                continue
            sample = queue.popleft()
            queued.discard(sample.sample_id)
            if len(queue) < self.workers and not self._exhausted:
                self.wake.set()  # read ahead before the queue runs dry
            await self._one(sample)

    async def _shed(self) -> None:
        if self.max_queue is None:
            return
        now = time.monotonic()
        if now - self._last_shed < self.shed_every_s:
            return
        self._last_shed = now
        try:
            pending, shed = await self.sink.shed(self.max_queue, SHED_REASON)
        except Exception:  # the store is unwell: shedding waits, the runner goes on
            log.exception("shedding the shadow backlog failed")
            return
        self.queue_depth = pending - shed
        if shed:
            self._queue.clear()  # it may hold shed samples; read again from the store
            self._queued.clear()
            self._exhausted = False
            self.shed_total += shed
            log.warning("shadow backlog %d above shadow.max_queue %d: shed the %d newest samples",
                        pending, self.max_queue, shed)
            if self.on_shed:
                self.on_shed(shed)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _one(self, sample: PendingSample) -> None:
        sid = sample.sample_id
        self._inflight.add(sid)
        try:
            res = await self.process(sample)
        except asyncio.CancelledError:
            self._inflight.discard(sid)  # stays pending in the store; resumed next start
            raise
        except Exception as e:
            log.exception("shadow processing of %s failed", sid)
            res = SampleResult(sid, "skipped_error",
                               f"internal error: {type(e).__name__}: {e}"[:300])
        self._buffer.append(res)
        if self.on_result:
            self.on_result(res)
        if len(self._buffer) >= self.flush_at:
            self._flush_now.set()
        if self._unwritten >= self.flush_max:
            self._room.clear()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self._writing += len(batch)
        try:
            await self.sink.write(batch)
        except BaseException:
            self._buffer[:0] = batch  # kept for the next flush: results are written once, later
            raise
        finally:
            self._writing -= len(batch)
        for r in batch:
            self._inflight.discard(r.sample_id)
        self.completed += sum(r.status != "pending" for r in batch)
        if self._unwritten < self.flush_max:
            self._room.set()
        if not self._exhausted:
            self.wake.set()  # room for more work now that these left the in-flight set

    @property
    def _unwritten(self) -> int:
        return len(self._buffer) + self._writing

    async def _flush_loop(self) -> None:
        # Every `flush_every_s`, or as soon as `flush_at` results wait. A write holds the GIL
        # in turns (frames, DuckDB taking it back between steps), and the calls finishing
        # meanwhile wait; but DuckDB's cost per write is mostly fixed (~20-30 ms of CPU for
        # ~500 results, ~75 ms for 5,000: ~60 µs a result against ~15). Overhead per call at
        # 256 in flight and 50 ms latency, same runs: ~6-18 ms writing every 1 s, ~2-5 ms every
        # 0.25 s, ~1.5-2.5 ms every ~500 results. At 1,000 calls/s and 1 s latency
        # (benchmarks/shadow_overhead.py, thread writer), batches of up to 1,024 (about one
        # write a second) took 0.043-0.049 ms of CPU a call against 0.060-0.065 for ~500, p99
        # no worse (two paired runs at load 4.2-4.6). At a trickle: once a second.
        failing_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=self.flush_every_s)
            self._flush_now.clear()
            try:
                await self.flush()
            except Exception as e:  # the store is unwell: keep the results, try again, never stop
                # No new (paid) call starts while their results could not be written.
                self._room.clear()
                if failing_since is None:  # one line when writes start failing, not one a try
                    failing_since = time.monotonic()
                    log.error("writing %d shadow results failed, no new shadow calls until a "
                              "write goes through: %s", len(self._buffer), e,
                              exc_info=not getattr(e, "retriable", False))
                await asyncio.sleep(min(5.0, 4 * self.flush_every_s))
                continue
            if failing_since is not None:
                log.warning("shadow results written again after %.1f s",
                            time.monotonic() - failing_since)
                failing_since = None
                if self._unwritten < self.flush_max:
                    self._room.set()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Start no new samples; let the calls in flight finish for up to `grace_s` seconds
        (`shadow.stop_grace_s`), then cancel the rest (their samples stay pending; what their
        attempts may have cost is written to `shadow_attempts`), and write every result."""
        self._stopping = True
        self.wake.set()
        self._work.set()
        self._room.set()
        if self._tasks and grace_s > 0:
            if self._inflight:
                log.info("stopping: %d samples in flight, waiting up to %.1f s for their calls",
                         len(self._inflight), grace_s)
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        cut = len(self._inflight) - len(self._buffer) - self._writing
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        clients = [*self.models, *self.floor.values(),
                   *((self.judge.client,) if self.judge is not None else ())]
        cancelled = [a for m in clients for a in m.take_cancelled()]
        if cancelled:
            log.warning("stopping: %d samples cut short after %.1f s; %d attempts in flight "
                        "recorded at their worst-case cost ($%.6f)", max(cut, 0), grace_s,
                        sum(a.outcome == "cancelled" for a in cancelled),
                        sum(a.spend_usd for a in cancelled))
            by_sample: dict[str, list[Attempt]] = {}
            for a in cancelled:
                by_sample.setdefault(a.sample_id, []).append(a)
            self._buffer.extend(SampleResult(sid, "pending", attempts=atts)
                                for sid, atts in by_sample.items())
        await self.flush()

    async def drain(self, idle: Callable[[], Awaitable[bool]]) -> None:
        """Wait until nothing is in flight and `idle()` says no more work is pending."""
        while True:
            if not self._inflight and not self._buffer and await idle():
                return
            if self._buffer and len(self._inflight) <= len(self._buffer):
                # Only finished results are left: write them now, not at the next flush.
                try:
                    await self.flush()
                except Exception:
                    log.exception("writing %d shadow results failed; retrying", len(self._buffer))
            await asyncio.sleep(0.05)
            if not self._inflight:
                self._exhausted = False  # idle() says some are pending: look for them now
            if not self._exhausted:
                self.wake.set()

