"""Soak: steady ingest + shadow at a fixed rate, kill -9 every few minutes, for a long time.

Starts its own Kafka-protocol broker (Tansu), a local model server (answers after a delay,
counts every request it receives: each is a call a provider would bill) and the real service
(`shadowroute run`, a process, with its DuckDB store child). A producer writes generated
production logs at `--rate` records/s; every `--kill-every-s` the service is killed with SIGKILL
and started again. Every `--sample-s` it reads the RSS of the service and of its store process
(and DuckDB's own account of its memory, `duckdb_memory()`, through `/v1/sql`); once a minute
it prints them. At the end it stops producing, lets the service catch up, stops it with SIGTERM
and checks, in the DuckDB file:

- lost records (produced, not stored: neither in `requests` nor rolled up by retention) and
  duplicated ones (stored twice);
- paid-but-unrecorded calls: requests the model server received without a row in
  `shadow_attempts` (a kill -9 loses the attempts whose results were not written yet; the
  budget's journal still counts their spend);
- the RSS slope of each process after warm-up (MiB/min, a least-squares fit over the samples of
  each run of the service, skipping its first `--warmup-s`), the worst one reported; and, for
  the store, the slope of its RSS less DuckDB's own account (`store_outside_duckdb`, from the
  per-minute samples): what DuckDB's buffer manager holds (its cache of table blocks, the
  primary-key indexes a write has loaded, rows not checkpointed yet), and what grows outside it
  (heap DuckDB keeps per statement until its database is closed; the store process reopens its
  instance every `storage.reopen_every_s`, `--reopen-every-s`, to give it back);
- the largest RSS of each process in the first and in the second half of the run after warm-up
  (`rss_max_halves`), and its mean over each window of `--reopen-every-s` (`rss_period_means`,
  with the slope through them, `rss_period_slope_mib_per_min`, and through all but the first,
  which still warms up, `rss_period_slope_after_first_mib_per_min`): the store's reopens make
  its RSS a sawtooth of that period, whose least-squares slope over a few periods depends on
  where the run starts and ends in a tooth; the means of whole periods do not. The lowest
  sample of each window too (`rss_period_mins`), near the trough after a reopen;
- the rows the store holds in the tables that grow (`rows_held_per_min`, sampled each minute)
  and the store's period-mean slope per 1,000 of them (`store_mib_per_1000_rows_held`): how
  much of the growth is the data. `--retention-every-s N` applies `[retention]` every N s with
  `requests_days = 1`, which purges every never-sampled request (the generated records are
  months old), so that what is held grows with the samples only; `--sample-rate` sets how
  many are sampled.

`--probe` records the store process from inside (`benchmarks/store_probe.py`, loaded through a
`sitecustomize.py` in the run's directory; nothing of it is in the service's code): each 10 s
its RSS, glibc's heap, DuckDB's account by tag and the rows held, and the state right after
each reopen. The JSON's `probe` has the troughs after each reopen with their slopes, and each
period's mean RSS split into DuckDB's account (cache of table blocks, indexes, the rest), glibc's
heap in use and the rest of the process (other allocators, code, stacks).
`--tracemalloc` adds Python's heap and its top growth between reopens.

Every sample (seconds, MiB) is written to `rss.json` in the run's directory.

Each minute's line also shows DuckDB's account by tag (cache of table blocks, ART indexes) and
the machine's load average (the run shares its cores).

The last line is JSON.

    python benchmarks/soak.py [--minutes 30] [--rate 100] [--kill-every-s 180]
                              [--memory-limit 512MB] [--reopen-every-s 300]
                              [--retention-every-s 60] [--sample-rate 0.2] [--probe]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store_probe import ROWS, sitecustomize_for  # noqa: E402  (beside this file)

from analytics.config import REOPEN_EVERY_S  # noqa: E402
from shadowroute.demo.broker import Broker  # noqa: E402
from shadowroute.demo.traffic import TrafficGenerator  # noqa: E402
from shadowroute.service import service_file  # noqa: E402
from tests.support.model_server import ModelBehaviour, ModelServer  # noqa: E402

TOPIC = "soak"


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def slope(points: list[tuple[float, float]], least: int = 3) -> float | None:
    """Least-squares MiB per minute over (seconds, MiB), from at least `least` points."""
    if len(points) < least:
        return None
    xs = [p[0] / 60 for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def probe_summary(path: Path, period: float) -> dict[str, Any] | None:
    """From `--probe`'s records (of the longest-lived store process): the store's state right
    after each reopen, and the slope through those troughs of each figure, per minute (what a
    reopen does not give back); and the mean of each reopen period (from the store's start) of
    its RSS split into DuckDB's account by tag, glibc's heap in use and the rest (other
    allocators, code, stacks)."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    except OSError:
        return None
    # With kills, each start of the service has its own store process: the longest-lived one.
    pids = [r.get("pid") for r in lines]
    lines = [r for r in lines if r.get("pid") == max(set(pids), key=pids.count, default=None)]
    recs = [r for r in lines if r["kind"] == "reopen"]
    periods: dict[int, list[list[float]]] = {}
    for r in lines:
        if r["kind"] == "tick" and "duckdb" in r:
            d = r["duckdb"]
            periods.setdefault(int(r["t"] // period), []).append([
                r["rss"], d.get("BASE_TABLE", 0.0), d.get("ART_INDEX", 0.0),
                sum(d.values()) - d.get("BASE_TABLE", 0.0) - d.get("ART_INDEX", 0.0),
                r["glibc_in_use"], r["rss"] - sum(d.values()) - r["glibc_in_use"], r["rows"]])
    cols = ("rss", "duckdb_blocks", "duckdb_art", "duckdb_other", "glibc_in_use", "rest",
            "rows")
    # Whole periods only: the last one may be cut short by the end of the run.
    most = max((len(v) for v in periods.values()), default=0)
    periods = {k: v for k, v in periods.items() if len(v) >= 0.9 * most}
    means = [statistics.fmean(x[0] for x in v) for _, v in sorted(periods.items())]
    sl = slope([((k + 0.5) * period, m) for k, m in enumerate(means) if k], 2)
    out: dict[str, Any] = {
        "rss_slope_after_first_period": round(sl, 3) if sl is not None else None,
        "period_means": [dict(zip(cols, (round(statistics.fmean(x[i] for x in v), 2)
                                        for i in range(len(cols))), strict=True))
                         for _, v in sorted(periods.items())],
        "reopens": len(recs), "at": []}
    series: dict[str, list[tuple[float, float]]] = {}
    for r in recs:
        row = {"t_min": round(r["t"] / 60, 1), "rss": r["rss"], "glibc_in_use": r["glibc_in_use"],
               "glibc_system": r["glibc_system"], "arrow": r["arrow"],
               "duckdb": round(sum(r["duckdb"].values()), 2),
               "art": r["duckdb"].get("ART_INDEX", 0.0),
               "rows": sum(r["rows"].values()), "file_mib": r["file_mib"],
               **{f"rss_{k}": v for k, v in r["rss_by_kind"].items()}}
        if "python" in r:
            row["python"] = r["python"]
        out["at"].append(row)
        for k, v in row.items():
            if k != "t_min":
                series.setdefault(k, []).append((r["t"], float(v)))
    out["slope_per_min"] = {k: round(sl, 4) for k, v in series.items()
                            if (sl := slope(v)) is not None}
    growth = [r["python_growth"] for r in recs if "python_growth" in r]
    if growth:
        out["python_growth_last"] = growth[-1]
    return out


def config(dir_: Path, bootstrap: str, url: str, args: argparse.Namespace) -> Path:
    path = dir_ / "soak.toml"
    # The generated records' production times are months old: `requests_days = 1` purges every
    # never-sampled request at each pass (the samples and their calls are kept).
    retention = (f"\n[retention]\nrequests_days = 1\nevery_s = {args.retention_every_s}\n"
                 if args.retention_every_s else "")
    path.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
group_id = "soak"
session_timeout_ms = {args.session_timeout_ms}
group_instance_id = "soak-1"

[storage]
db_path = "{dir_ / 'soak.duckdb'}"
memory_limit = "{args.memory_limit}"
reopen_every_s = {args.reopen_every_s}
{retention}
[sampling]
default_rate = {args.sample_rate}
stratify_tag = "task"

[shadow]
concurrency = 16
stop_grace_s = 5

[shadow.budget]
usd_per_hour = 1000.0

[[shadow.models]]
name = "cheap"
base_url = "{url}"
model = "tiny"
input_per_mtok = 0.15
output_per_mtok = 0.6
timeout_s = 10

[[routers]]
name = "rules"
kind = "rules"

[server]
port = 0
""")
    return path


class Service:
    def __init__(self, cfg: Path, db: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.cfg, self.db, self.log = cfg, db, log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.url = ""

    def start(self) -> None:
        service_file(self.db).unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shadowroute.cli", "--log-level", "WARNING", "run",
                 "--config", str(self.cfg)], stdout=out, stderr=out, cwd=ROOT, env=self.env)
        self.started = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}; see {self.log}")
            try:
                self.url = orjson.loads(service_file(self.db).read_bytes())["url"]
                return
            except (OSError, orjson.JSONDecodeError, KeyError):
                time.sleep(0.05)
        raise RuntimeError("the service did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        store = children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        for pid in store:  # the store child exits on its own when its parent is gone
            deadline = time.monotonic() + 10
            while rss_mib(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def sql(self, query: str) -> list[list[Any]]:
        r = httpx.post(self.url + "/v1/sql", json={"sql": query}, timeout=30)
        r.raise_for_status()
        return r.json()["rows"]  # type: ignore[no-any-return]


async def produce(bootstrap: str, rate: float, stop: threading.Event, counter: list[int]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        seed, tick = 0, 0.1
        per_tick = rate * tick
        owed = 0.0
        next_t = time.monotonic()
        while not stop.is_set():
            owed += per_tick
            n = int(owed)
            owed -= n
            if n:
                seed += 1
                futs = [await producer.send(TOPIC, v, key=str(i).encode())
                        for i, v in enumerate(TrafficGenerator(seed=seed).encoded(n))]
                await asyncio.gather(*futs)
                counter[0] += n
            next_t += tick
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    finally:
        await producer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=100.0, help="records produced per second")
    ap.add_argument("--sample-rate", type=float, default=0.2, help="sampling.default_rate")
    ap.add_argument("--kill-every-s", type=float, default=180.0, help="0: never")
    ap.add_argument("--memory-limit", default="512MB", help="storage.memory_limit")
    ap.add_argument("--reopen-every-s", type=float, default=REOPEN_EVERY_S,
                    help="storage.reopen_every_s")
    ap.add_argument("--retention-every-s", type=float, default=0.0,
                    help="apply [retention] this often with requests_days = 1, which purges "
                         "every never-sampled request (the records are months old); 0: none")
    ap.add_argument("--probe", action="store_true",
                    help="record the store process's heap, DuckDB's account and the rows held "
                         "at each reopen (benchmarks/store_probe.py) in probe.jsonl")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="with --probe: Python's allocations in the store process too")
    ap.add_argument("--model-delay-s", type=float, default=0.05)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=60.0)
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="shadowroute-soak-"))
    broker = Broker(tmp / "tansu.log")
    behaviour = ModelBehaviour(answer=lambda p: "42", delay_s=args.model_delay_s)
    stop = threading.Event()
    produced = [0]
    runs: list[dict[str, list[tuple[float, float]]]] = []
    names = ("service", "store", "store_outside_duckdb", "rows_held")
    kills = 0
    try:
        from tests.support.kafka import create_topic

        asyncio.run(create_topic(broker.bootstrap, TOPIC, 4))
        with ModelServer(behaviour) as ms:
            cfg = config(tmp, broker.bootstrap, ms.url, args)
            env = None
            if args.probe:
                env = dict(os.environ, SOAK_STORE_PROBE=str(tmp / "probe.jsonl"),
                           PYTHONPATH=str(sitecustomize_for(tmp / "probe")))
                if args.tracemalloc:
                    env["SOAK_STORE_PROBE_TRACEMALLOC"] = "1"
            svc = Service(cfg, tmp / "soak.duckdb", tmp / "service.log", env)
            svc.start()
            runs.append({name: [] for name in names})
            producer = threading.Thread(target=lambda: asyncio.run(
                produce(broker.bootstrap, args.rate, stop, produced)), daemon=True)
            producer.start()
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            next_kill = t0 + args.kill_every_s if args.kill_every_s > 0 else float("inf")
            next_print = t0 + 60
            print("minute  service_MiB  store_MiB  duckdb_MiB  (blocks  art)  produced  stored  "
                  "shadow_calls  rows_held  load1", flush=True)
            tags: dict[str, float] = {}
            loads: list[float] = []
            while time.monotonic() < end:
                time.sleep(args.sample_s)
                now = time.monotonic()
                assert svc.proc is not None
                pid = svc.proc.pid
                age = now - svc.started
                s_rss = rss_mib(pid)
                kids = children(pid)
                c_rss = rss_mib(kids[0]) if kids else None
                if age >= args.warmup_s and s_rss is not None and c_rss is not None:
                    runs[-1]["service"].append((now - t0, s_rss))
                    runs[-1]["store"].append((now - t0, c_rss))
                if now >= next_print:
                    next_print += 60
                    try:
                        tags = {t: m for t, m in svc.sql(
                            "SELECT tag, memory_usage_bytes / 2^20 FROM duckdb_memory()")}
                        duck = sum(tags.values())
                        stored = svc.sql("SELECT coalesce(sum(next_offset), 0) FROM offsets")[0][0]
                        held = sum(svc.sql(ROWS)[0])  # rows held in the growing tables
                    except httpx.HTTPError:
                        duck, stored, held = None, None, None
                    load1 = float(Path("/proc/loadavg").read_text().split()[0])
                    loads.append(load1)
                    if age >= args.warmup_s and c_rss is not None and duck is not None:
                        runs[-1]["store_outside_duckdb"].append((now - t0, c_rss - duck))
                    if age >= args.warmup_s and held is not None:
                        runs[-1]["rows_held"].append((now - t0, held))
                    print(f"{(now - t0) / 60:6.1f}  {s_rss or 0:11.1f}  {c_rss or 0:9.1f}  "
                          f"{duck if duck is not None else float('nan'):10.1f}  "
                          f"({tags.get('BASE_TABLE', 0):6.1f} {tags.get('ART_INDEX', 0):4.1f})  "
                          f"{produced[0]:8d}  {stored if stored is not None else -1:6}  "
                          f"{len(behaviour.requests):12d}  {held if held is not None else -1:9}  "
                          f"{load1:5.2f}", flush=True)
                if now >= next_kill and now < end - 30:
                    next_kill += args.kill_every_s
                    svc.kill9()
                    kills += 1
                    svc.start()
                    runs.append({name: [] for name in names})
            stop.set()
            producer.join(60)
            total = produced[0]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = svc.sql("SELECT coalesce(sum(next_offset), 0) FROM offsets")[0][0]
                pending = svc.sql("SELECT count(*) FROM samples WHERE status = 'pending'")[0][0]
                if done >= total and pending == 0:
                    break
                time.sleep(1)
            code = svc.terminate()
            paid = len(behaviour.requests)
        import duckdb

        con = duckdb.connect(str(tmp / "soak.duckdb"), read_only=True)
        n, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests"
                                  ).fetchone() or (0, 0)
        rejected = con.execute("SELECT count(*) FROM rejected").fetchone()[0]  # type: ignore[index]
        # Requests that retention rolled up per hour and deleted (`--retention-every-s`).
        rolled = con.execute("SELECT coalesce(sum(requests), 0) FROM request_rollups"
                             ).fetchone()[0]  # type: ignore[index]
        recorded = con.execute("SELECT count(*) FROM shadow_attempts WHERE outcome <> 'error'"
                               ).fetchone()[0]  # type: ignore[index]
        twice = con.execute("SELECT count(*) FROM (SELECT sample_id, model FROM shadow_attempts "
                            "WHERE spend_usd > 0 GROUP BY ALL HAVING count(*) > 1)"
                            ).fetchone()[0]  # type: ignore[index]
        pending = con.execute("SELECT count(*) FROM samples WHERE status = 'pending'"
                              ).fetchone()[0]  # type: ignore[index]
        con.close()
        slopes = {name: [s for r in runs if (s := slope(r[name])) is not None]
                  for name in names if name != "rows_held"}
        period = args.reopen_every_s
        halves: dict[str, list[float]] = {}
        means: dict[str, list[float]] = {}
        mean_slopes: dict[str, float | None] = {}
        mins: dict[str, list[float]] = {}
        after_first: dict[str, float | None] = {}
        min_slopes: dict[str, float | None] = {}
        for name in ("service", "store"):
            pts = [p for r in runs for p in r[name]]
            if len(pts) >= 4:
                mid = (pts[0][0] + pts[-1][0]) / 2
                halves[name] = [round(max(m for t, m in pts if t <= mid), 1),
                                round(max(m for t, m in pts if t > mid), 1)]
                # Whole periods only, from the first sample after warm-up.
                windows: dict[int, list[float]] = {}
                for t, m in pts:
                    windows.setdefault(int((t - pts[0][0]) // period), []).append(m)
                full = int((pts[-1][0] - pts[0][0]) // period)
                means[name] = [round(statistics.fmean(windows[k]), 1)
                               for k in range(full) if k in windows]
                sl = slope([((k + 0.5) * period, m) for k, m in enumerate(means[name])])
                mean_slopes[name] = round(sl, 3) if sl is not None else None
                # The first period still warms up (see docs/architecture.md, "Soak and memory").
                sl = slope([((k + 0.5) * period, m) for k, m in enumerate(means[name]) if k], 2)
                after_first[name] = round(sl, 3) if sl is not None else None
                # Each period's trough: what the store's reopens do not give back.
                mins[name] = [round(min(windows[k]), 1) for k in range(full) if k in windows]
                sl = slope([((k + 0.5) * period, m) for k, m in enumerate(mins[name])])
                min_slopes[name] = round(sl, 3) if sl is not None else None
        (tmp / "rss.json").write_text(json.dumps(runs))
        # What the store's RSS gains per 1,000 rows it holds (with retention: what is left after
        # the purges), from the period means after the first.
        rows = [p for r in runs for p in r["rows_held"]]
        rows_per_min = slope(rows)
        probe = probe_summary(tmp / "probe.jsonl", period) if args.probe else None
        # The probe's periods start at the store's reopens: the slope through them is the
        # better one when there is one.
        store_sl = (probe or {}).get("rss_slope_after_first_period")
        for sl in (after_first.get("store"), mean_slopes.get("store")):
            store_sl = sl if store_sl is None else store_sl
        per_1000 = (round(store_sl / rows_per_min * 1000, 4)
                    if store_sl is not None and rows_per_min else None)
        out = {
            "minutes": args.minutes, "rate": args.rate, "kills": kills, "exit_code": code,
            "memory_limit": args.memory_limit,
            "produced": total, "stored": distinct + rolled + rejected,
            "lost": total - distinct - rolled - rejected, "rolled_up": rolled,
            "duplicated": n - distinct,
            "paid_calls": paid, "recorded_attempts": recorded,
            "paid_but_unrecorded": paid - recorded, "paid_twice_samples": twice,
            "pending_left": pending,
            "rss_slope_mib_per_min": {k: round(max(v), 3) if v else None
                                      for k, v in slopes.items()},
            "rss_slope_per_run": {k: [round(x, 3) for x in v] for k, v in slopes.items()},
            "rss_max_halves": halves,
            "rss_period_s": period, "rss_period_means": means,
            "rss_period_slope_mib_per_min": mean_slopes,
            "rss_period_slope_after_first_mib_per_min": after_first,
            "rss_period_mins": mins, "rss_period_min_slope_mib_per_min": min_slopes,
            "rows_held_first_last": [rows[0][1], rows[-1][1]] if rows else None,
            "rows_held_per_min": round(rows_per_min) if rows_per_min is not None else None,
            "store_mib_per_1000_rows_held": per_1000,
            "retention_every_s": args.retention_every_s,
            "probe": probe,
            "duckdb_tags_last_mib": {k: round(v, 1) for k, v in tags.items() if v},
            "load1_min_max": [min(loads), max(loads)] if loads else None,
            "dir": str(tmp),
        }
        print(json.dumps(out))
    finally:
        stop.set()
        broker.stop()


if __name__ == "__main__":
    main()
