"""Composition root of the running service: source -> ingest -> store, shadow runner, HTTP API.

Everything that talks to the outside (Kafka consumer, HTTP client, DuckDB connection, HTTP
server) is built here and handed to the stages, never built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import errno
import functools
import gc
import inspect
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

import sql
from analytics import lake, tiers
from analytics.service_store import open_store
from consumers.ingest import IngestBatch, Ingestor
from consumers.pipeline import DeadLetters, IngestPipeline
from consumers.records import OffsetReset, RawMessage
from shadow.budget import Budget
from shadow.cascade import build_cascades
from shadow.client import ModelClient
from shadow.http import HttpClient, make_http
from shadow.judge import Judge
from shadow.routers import LearnedRouter, RouterContext, build_routers
from shadow.runner import SampleResult, ShadowRunner
from shadow.scorers import EMBEDDING, TFIDF, Scoring, TfidfCosine
from shadow.training import Trainer
from shadowroute.api import build_app
from shadowroute.config import Config, api_token
from shadowroute.errors import ConfigError
from shadowroute.metrics import Metrics

log = logging.getLogger("shadowroute.service")

T = TypeVar("T")
# Collect the young generation every 50,000 net allocations (default 700): ~1 ms each.
GC_THRESHOLDS = (50_000, 20, 100)


class Source(Protocol):
    """Yields batches of raw messages; `commit` is told what was persisted."""

    async def start(self) -> None: ...
    async def batch(self) -> list[RawMessage]: ...
    async def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...
    async def stop(self) -> None: ...


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the service's event loop: uvloop when installed (its loop, futures, timers and
    sockets are C; the shadow stage's per-call overhead at 256 in flight falls ~40%, see
    benchmarks/shadow_overhead.py), else asyncio's.

    The garbage collector is tuned for a service that allocates many short-lived objects per
    call: what exists at startup (modules, the config) is frozen out of collections, and
    collections run less often. With the defaults, collections stopped the event loop for tens
    of milliseconds at a time, which every call in flight waited out (p99 call latency at 256
    in flight: ~147 ms with the defaults, ~65 ms tuned).

    Python's GIL switch interval is left at 5 ms: 0.5 ms made no measurable difference to the
    shadow stage once its writes were small, and cost ingest ~20% (two decode-heavy threads
    handing the GIL over ten times as often)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        os.write(fd, data)
    finally:
        os.close(fd)


def service_file(db_path: str | os.PathLike[str]) -> Path:
    """Where the running service announces its HTTP address, beside the DuckDB file."""
    return Path(f"{db_path}.service.json")


class Service:
    def __init__(self, cfg: Config, source: Source | None = None,
                 source_factory: Callable[[Callable[[], dict[tuple[str, int], int]]], Source]
                 | None = None) -> None:
        """`source` defaults to the Kafka consumer group of `cfg.kafka`; `source_factory` builds
        one from the store's stored positions (the file source of `replay`)."""
        self.cfg = cfg
        self.token = api_token(cfg.server)  # first: never serve a non-loopback port without one
        self.metrics = Metrics()
        self.store = open_store(cfg.storage.db_path, cfg.storage.writer, cfg.storage.threads,
                                cfg.storage.memory_limit, cfg.storage.reopen_every_s)
        self.ingestor = Ingestor(cfg)
        try:
            # What the OTel join held when the last run stopped: spans waiting for content.
            self.ingestor.restore(self.store.reads.fetch(sql.query("otlp_pending_rows")))
        except BaseException:
            self.store.close()
            raise
        if source_factory is not None:
            try:
                source = source_factory(self.store.reads.stored_offsets)
            except BaseException:
                self.store.close()
                raise
        if source is None:
            from consumers.kafka_source import KafkaSource

            source = KafkaSource(cfg.kafka, self.store.reads.stored_offsets,
                                 on_reset=self._on_reset,
                                 stored_marks=self.store.reads.stored_marks,
                                 on_assigned=self._on_assigned)
        self.source = source
        self._budget_share = 1.0  # of the budget's caps: this instance's partitions of all
        self.stop_event = asyncio.Event()
        self.http: HttpClient | None = None
        self.runner: ShadowRunner | None = None
        self.url: str | None = None
        self.started_at = time.time()
        self.consumed = 0
        self.rejected = 0
        sc = cfg.scoring
        self._score_tag = sc.tag or cfg.sampling.stratify_tag
        self.scoring = Scoring(sc.open_ended, TfidfCosine(sc.tfidf_min_docs))
        if EMBEDDING in (sc.default, sc.open_ended, *sc.by_tag.values(), *sc.also):
            self.scoring.embedding.load()  # now, not on the event loop at the first sample
        self._last_fit = -float("inf")
        self._fitting = asyncio.Lock()  # the scheduler's job and the runner's first need

    # -- wiring ---------------------------------------------------------------------------------
    def _on_result(self, res: SampleResult) -> None:
        m = self.metrics
        m.samples_finished.labels(res.status).inc()
        for c in res.calls:
            m.shadow_calls.labels(c.model, c.outcome).inc()
            if c.outcome == "ok":
                m.shadow_latency.labels(c.model).observe(c.latency_ms / 1000)
            elif c.outcome == "reused":
                m.reused.labels(c.model).inc()
            if c.spend_usd:
                m.spend.labels(c.model).inc(c.spend_usd)
        for c, *_ in res.floor:
            m.floor_calls.labels(c.model, c.outcome).inc()
            if c.spend_usd:  # the same budget: the spend metric counts all of it
                m.spend.labels(c.model).inc(c.spend_usd)
        for j in res.judge_calls:
            result = j.call.outcome if j.call.error else "unparseable" if j.parse_error else "ok"
            m.judge_calls.labels(j.judge, j.mode, result).inc()
            if j.call.spend_usd:
                m.spend.labels(j.judge).inc(j.call.spend_usd)
        for router, _, error in res.router_calls:
            m.router_calls.labels(router, "ok" if error is None else "error").inc()

    @staticmethod
    def _schedule_training(scheduler: AsyncIOScheduler, trainer: Trainer) -> None:
        """A learned router trains on its schedule (a crontab line, else every N s) and as
        soon as enough new samples are labelled (counted every `check_every_s`)."""
        cfg = trainer.cfg
        if cfg.retrain_cron:
            scheduler.add_job(trainer.train, CronTrigger.from_crontab(cfg.retrain_cron),
                              max_instances=1, coalesce=True)
        elif cfg.retrain_every_s:
            scheduler.add_job(trainer.train, "interval", seconds=cfg.retrain_every_s,
                              max_instances=1, coalesce=True)
        scheduler.add_job(trainer.on_new_labels, "interval", seconds=cfg.check_every_s,
                          max_instances=1, coalesce=True)

    def _on_reset(self, reset: OffsetReset) -> None:
        self.metrics.offset_resets.labels(reset.topic, reset.kind).inc()
        self.metrics.offset_reset_lost.labels(reset.topic).inc(reset.lost)

    def _on_shed(self, n: int) -> None:
        self.metrics.shed.inc(n)
        self.metrics.samples_finished.labels("skipped_shed").inc(n)

    def _shadow_gauges(self) -> None:
        m = self.metrics
        budget = getattr(self, "budget", None)
        if budget is not None:
            for window in ("hour", "day"):
                m.budget_left.labels(window).set(budget.left_usd(window))
                m.budget_spent.labels(window).set(budget.spent_usd(window))
        if self.runner is not None:
            m.queue_depth.set(self.runner.queue_depth)
            m.inflight.set(self.runner.inflight)
            now = time.monotonic()
            for client in self.runner.models:
                for d in client.deployments:
                    m.cooldown.labels(client.name, d.name).set(1 if d.on_cooldown(now) else 0)
                    m.deployment_up.labels(client.name, d.name).set(d.down_since is None)
                    m.cooldowns.labels(client.name, d.name).set(d.cooldowns)

    def models_health(self) -> dict[str, Any]:
        """Each cheap model's deployments, up or down (see `Deployment.health`)."""
        if self.runner is None:
            return {}
        now = time.monotonic()
        return {c.name: {"up": not c.group.is_down(),
                         "deployments": {d.name: d.health(now) for d in c.deployments}}
                for c in self.runner.models}

    def status(self) -> dict[str, Any]:
        models = self.models_health()
        # The service itself is healthy while a model is down (restarting it would not help),
        # but says so: `shadow` is `degraded` and `models` names what is down since when.
        return {"healthy": True, "pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 1),
                "consumed": self.consumed, "rejected": self.rejected,
                "shadow_completed": self.runner.completed if self.runner else 0,
                "shadow": "degraded" if any(not m["up"] for m in models.values()) else "ok",
                "models": models,
                "db_path": str(self.cfg.storage.db_path)}

    def _on_assigned(self, owned: int, total: int) -> None:
        """The hard budget stays global across the instances of one consumer group: each
        takes the share of the caps that its partitions are of all."""
        budget = getattr(self, "budget", None)
        share = owned / total if total else 1.0
        self._budget_share = share
        if budget is not None and budget.limited:
            budget.set_share(share)
            log.info("shadow budget: this instance owns %d of %d partitions, so %.0f%% of the "
                     "caps ($%.4g/hour, $%.4g/day)", owned, total, 100 * share,
                     budget.cap_usd("hour"), budget.cap_usd("day"))

    async def _apply_retention(self) -> None:
        """`[retention]`: an hour of requests at a time, each its own transaction, with the
        event loop (and ingest's writes) free between them."""
        rt = self.cfg.retention
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # stored times: naive UTC
        requests_before = now - datetime.timedelta(days=rt.requests_days) \
            if rt.requests_days else None
        texts_before = {kind: now - datetime.timedelta(days=days) for kind, days in (
            ("texts", rt.texts_days), ("judge", rt.judge_days), ("rejected", rt.rejected_days))
            if days}
        rolled = cleared = 0
        more = True
        while more and not self.stop_event.is_set():
            r, c, more = await self.store.apply_retention(requests_before, texts_before)
            rolled, cleared, texts_before = rolled + r, cleared + c, {}
        if rolled or cleared:
            log.info("retention: %d requests rolled up per hour and deleted, %d texts cleared",
                     rolled, cleared)

    async def _export_lake(self) -> None:
        """This instance's tables to `storage.lake_dir` (see analytics.lake)."""
        st = self.cfg.storage
        instance = lake.instance_name(st.instance_id)
        t0 = time.monotonic()
        counts = await self.store.export_lake(Path(st.lake_dir), instance)
        log.info("exported %d requests and %d samples to the lake %s as instance %s in %.1f s",
                 counts.get("requests", 0), counts.get("samples", 0), st.lake_dir, instance,
                 time.monotonic() - t0)

    async def _refresh_gauges(self) -> None:
        self._shadow_gauges()
        counts = await self.store.counts()
        self.metrics.pending.set(counts["pending"])
        lag = getattr(self.source, "lag", None)
        if lag is not None:
            for (t, p), v in (await lag()).items():
                self.metrics.lag.labels(t, str(p)).set(v)

    def _fits_scorers(self) -> bool:
        sc = self.cfg.scoring
        used = {sc.default, *sc.by_tag.values(), *sc.also}
        return TFIDF in used or ("auto" in used and sc.open_ended == TFIDF)

    async def _refit_scorers(self) -> None:
        """Fit `tfidf_cosine`'s vectorizers on the newest stored frontier answers per segment:
        while none is fitted yet, every `scoring.refit_s`, and whenever the stored answers have
        doubled since the last fit (the first fits see few)."""
        async with self._fitting:
            await self._refit_once()

    async def _refit_once(self) -> None:
        sc = self.cfg.scoring
        tfidf = self.scoring.tfidf
        if tfidf.fitted and time.monotonic() - self._last_fit < sc.refit_s:
            if tfidf.fitted_docs >= sc.tfidf_max_docs:
                return
            if (await self.store.counts())["samples"] < 2 * tfidf.fitted_docs:
                return
        _, rows = await asyncio.to_thread(
            self.store.reads.query_table, sql.query("frontier_answers_by_segment"),
            {"tag": self._score_tag, "per_segment": sc.tfidf_max_docs})
        corpus: dict[str, list[str]] = {}
        for segment, answer in rows:
            corpus.setdefault(segment, []).append(answer)
        fitted = await asyncio.to_thread(tfidf.fit, corpus)
        if fitted:
            self._last_fit = time.monotonic()
            log.info("tfidf_cosine fitted on %d frontier answers (%d segments of their own)",
                     fitted[""], len(fitted) - 1)

    async def _serve_http(self) -> tuple[_QuietServer, asyncio.Task[None]]:
        sock = socket.socket(socket.AF_INET6 if ":" in self.cfg.server.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.cfg.server.host, self.cfg.server.port))
        except OSError as e:
            sock.close()
            hint = " (another process listens there)" if e.errno == errno.EADDRINUSE else ""
            raise ConfigError("server.port", f"cannot listen on {self.cfg.server.host}:"
                              f"{self.cfg.server.port}: {e.strerror or e}{hint}") from None
        host, port = sock.getsockname()[:2]
        app = build_app(self.store.reads, self.cfg, self.metrics, self.status, port=port,
                        token=self.token)
        # A short grace at shutdown: a person's query is interrupted by the store at close,
        # and no client is worth holding SIGTERM up for.
        server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off",
                                             access_log=False, timeout_graceful_shutdown=2))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if host in ("0.0.0.0", "::"):  # a wildcard bind: commands on this host use loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        write_private(service_file(self.cfg.storage.db_path), orjson.dumps(
            {"url": self.url, "pid": os.getpid(), "started_at": self.started_at}))
        log.info("HTTP API on %s (/healthz /metrics /v1/verdict /v1/sql)", self.url)
        return server, task

    # -- the loops ------------------------------------------------------------------------------
    def _on_persisted(self, batch: IngestBatch, duplicates: int) -> None:
        n_req, n_rej = batch.requests.height, batch.rejected.height
        self.consumed += n_req + n_rej
        self.rejected += n_rej
        self.metrics.records.labels("request").inc(n_req - duplicates)
        self.metrics.records.labels("duplicate").inc(duplicates)
        self.metrics.records.labels("rejected").inc(n_rej)
        self.metrics.batches.inc()
        if batch.samples.height:
            self.metrics.sampled.inc(batch.samples.height)
            if self.runner:
                self.runner.wake.set()
        for r in batch.rejected.head(5).iter_rows(named=True):
            log.warning("rejected %s[%s]@%s: %s", r["topic"], r["partition"], r["offset"], r["reason"])

    def _dead_letters(self) -> DeadLetters | None:
        produce = getattr(self.source, "dead_letter", None)
        if not self.cfg.kafka.dead_letter_topic or produce is None:
            return None

        async def dead_letters(items: Sequence[tuple[RawMessage, str]]) -> int:
            failed = int(await produce(items))
            self.metrics.dead_letters.labels("sent").inc(len(items) - failed)
            self.metrics.dead_letters.labels("failed").inc(failed)
            return failed
        return dead_letters

    async def _ingest_loop(self) -> None:
        pipeline = IngestPipeline(self.ingestor, self.store, self.source,
                                  on_paused=lambda p: self.metrics.ingest_paused.set(int(p)),
                                  on_persisted=self._on_persisted,
                                  dead_letters=self._dead_letters())
        await pipeline.run(self.stop_event)

    async def run(self, *, install_signals: bool = True, until_drained: bool = False) -> None:
        """Run until SIGINT/SIGTERM (or, with `until_drained`, until a finite source is
        exhausted and every sample is finished)."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop_event.set)
        sh = self.cfg.shadow
        self.http = make_http(sh.http_client, max(16, sh.concurrency * 2), sh.max_response_bytes)
        run_id = uuid.uuid4().hex  # this run's rows in the budget's journal
        self.budget = Budget(sh.budget.usd_per_hour, sh.budget.usd_per_day,
                             journal=functools.partial(self.store.lease_budget, run_id))
        if self.budget.limited:
            # Spend of the last day survives a restart: the budget is not reset by one.
            self.budget.seed(await self.store.recent_shadow_spend())
            # An assignment may have come before the budget (the source starts first).
            self.budget.set_share(self._budget_share)
        elif any(m.input_per_mtok or m.output_per_mtok for m in sh.models):
            log.warning("shadow.budget sets no cap: shadow spend on paid models is unlimited")
        models = [ModelClient.from_config(m, sh, self.http, self.budget) for m in sh.models]
        # The noise floor's frontier clients: the same budget; an identical replay is never
        # reused for them (the floor measures how the frontier varies).
        floor_shadow = dataclasses.replace(sh, reuse_window_s=0.0)
        floor = {m.name: ModelClient.from_config(m, floor_shadow, self.http, self.budget)
                 for m in sh.noise_floor.models}
        # The judge: the same client, limits, retries and budget as the cheap models.
        judge = (None if sh.judge is None else
                 Judge(sh.judge, ModelClient.from_config(sh.judge.model, sh, self.http,
                                                         self.budget)))
        routers = build_routers(self.cfg.routers, RouterContext(self.http))
        self.runner = ShadowRunner(self.store, routers, models, floor=floor,
                                   floor_share=sh.noise_floor.share, judge=judge,
                                   cascades=build_cascades(self.cfg.cascades),
                                   also_score=self.cfg.scoring.also,
                                   concurrency=sh.concurrency, on_result=self._on_result,
                                   replay_tools=sh.replay_tools, max_queue=sh.max_queue,
                                   on_shed=self._on_shed, scoring=self.scoring,
                                   score_tag=self._score_tag, fit_scorers=self._refit_scorers)
        try:
            # First, so a source that is not there (no Kafka) leaves nothing running behind.
            await self.source.start()
        except BaseException:
            await self.http.aclose()
            await self.store.aclose()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            raise
        server, server_task = await self._serve_http()
        scheduler = AsyncIOScheduler()
        scheduler.add_job(self._refresh_gauges, "interval", seconds=5, max_instances=1,
                          coalesce=True)
        if self._fits_scorers():
            # First at once, then every 5 s: mostly a no-op once fitted (see _refit_scorers).
            scheduler.add_job(self._refit_scorers, "interval", seconds=5, max_instances=1,
                              coalesce=True, next_run_time=datetime.datetime.now())
        # What each router costs per call, for the estimates (as configured now).
        await self.store.set_router_costs(
            [(r.name, r.kind, r.cost_per_call_usd) for r in self.cfg.routers])
        # The multi-tier policies and their frontier sweeps, for the savings views.
        await self.store.set_tier_policies(
            [row for p in self.cfg.policies for row in tiers.settings(p)])
        for r in self.runner.routers:
            if isinstance(r, LearnedRouter):
                self._schedule_training(scheduler, Trainer(r, self.store))
        rt = self.cfg.retention
        if rt.requests_days or rt.texts_days or rt.judge_days or rt.rejected_days:
            scheduler.add_job(self._apply_retention, "interval", seconds=rt.every_s,
                              max_instances=1, coalesce=True,
                              next_run_time=datetime.datetime.now())
        if self.cfg.storage.lake_dir:
            scheduler.add_job(self._export_lake, "interval",
                              seconds=self.cfg.storage.lake_every_s, max_instances=1,
                              coalesce=True)
        scheduler.start()
        runner_task = asyncio.create_task(self.runner.run())
        ingest_task = asyncio.create_task(self._ingest_loop())
        stop_task = asyncio.create_task(self.stop_event.wait())
        try:
            await asyncio.wait({ingest_task, stop_task, runner_task},
                               return_when=asyncio.FIRST_COMPLETED)
            if until_drained and ingest_task.done() and not self.stop_event.is_set():
                ingest_task.result()

                async def idle() -> bool:
                    return (await self.store.counts())["pending"] == 0

                drain = asyncio.create_task(self.runner.drain(idle))
                await asyncio.wait({drain, stop_task, runner_task},
                                   return_when=asyncio.FIRST_COMPLETED)
                drain.cancel()
            self.stop_event.set()
            # Let the ingest loop finish the batch it holds: it persists, commits, then stops.
            await ingest_task
            if runner_task.done():
                runner_task.result()  # surface a crash of the shadow stage
        finally:
            self.stop_event.set()
            ingest_task.cancel()
            stop_task.cancel()
            runner = self.runner
            failed: list[BaseException] = []

            async def step(what: str, fn: Callable[[], Any]) -> None:
                # Each step runs whatever the ones before did: a full disk that fails the last
                # results must not leave service.json behind, the lease held or Kafka open.
                try:
                    res = fn()
                    if inspect.isawaitable(res):
                        await res
                except Exception as e:
                    failed.append(e)
                    log.error("stopping: could not %s: %s", what, e)

            async def settle_tasks() -> None:
                runner_task.cancel()
                await asyncio.gather(ingest_task, runner_task, stop_task, return_exceptions=True)

            await step("write the last shadow results (their samples stay pending)",
                       functools.partial(runner.stop, sh.stop_grace_s))
            await step("end the stages", settle_tasks)
            # Every call is settled now: give back the budget's unused room (if this fails, the
            # restart counts it as spent: safe, only stricter).
            await step("give back the shadow budget's unused lease", self.budget.release)
            await step("stop the scheduler", lambda: scheduler.shutdown(wait=False))
            if self.cfg.storage.lake_dir:
                await step("export to the lake", self._export_lake)
            await step("close the Kafka consumer", self.source.stop)
            # A person's query ends now, answered (before the HTTP server's graceful shutdown).
            await step("interrupt people's queries",
                       lambda: asyncio.to_thread(self.store.reads.interrupt_user_queries))
            server.should_exit = True
            await step("stop the HTTP server",
                       lambda: asyncio.gather(server_task, return_exceptions=True))
            await step("remove " + str(service_file(self.cfg.storage.db_path)),
                       lambda: service_file(self.cfg.storage.db_path).unlink(missing_ok=True))
            await step("close the HTTP client", self.http.aclose)
            await step("close the store", self.store.aclose)
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if failed and sys.exc_info()[1] is None:
                raise failed[0]
