"""Shadow-stage overhead: 10,000 sampled requests against a local model with 50 ms latency.

Starts its own fake OpenAI-compatible server in a separate process (so its CPU is not
counted), fills a DuckDB file with N pending samples, and runs the real shadow stage over them
(`ShadowRunner` -> `ModelClient` with a deployment group, budget, retries -> scorers ->
store writes, DuckDB in its child process as the service runs it, or on a thread with
`--store-writer thread`) with `--in-flight` calls in flight. Then, for comparison, the same POSTs
bare, with nothing of shadowroute around them: through the same HTTP client (`PooledHttp`),
and through httpx.

    overhead_ms_per_call = in-flight / steady throughput - injected latency

is the time each call slot spends per call beyond the model's latency: queueing on a busy
event loop, our CPU, the server's. The steady throughput is taken between the end of the first
round of `in-flight` calls and the start of the last one; `overhead_ms_per_call_whole_run`
uses the whole run's wall time instead (it also counts the ramp-up and the last round, which
is partly empty when N is not a multiple of in-flight: 40 rounds for 39.06 rounds of work add
~1.2 ms at 10,000 / 256 even with no overhead at all). `cpu_ms_per_call` is the CPU time of
this process (`time.process_time`, all threads) and of the store process (`/proc`), the whole
run, per call; `store_process_cpu_ms_per_call` is the store process's share.
`overhead_beyond_bare_posts_ms_per_call` subtracts the bare POSTs' figure of the same run: the
floor of the machine (the server shares its two cores) moves a lot between runs. The last line
printed is one JSON object.

    python benchmarks/shadow_overhead.py [--requests 10000] [--in-flight 256] [--latency-ms 50]
                                         [--store-writer process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.store import Store  # noqa: E402
from analytics.store_process import StoreProcess  # noqa: E402
from shadow.budget import Budget  # noqa: E402
from shadow.client import ModelClient  # noqa: E402
from shadow.http import HttpClient, HttpxHttp, PooledHttp  # noqa: E402
from shadow.routers import build_routers  # noqa: E402
from shadow.runner import SampleResult, ShadowRunner  # noqa: E402
from shadowroute.broker import free_port  # noqa: E402
from shadowroute.config import ModelConfig, RouterConfig, ShadowConfig  # noqa: E402
from shadowroute.service import open_store, run_loop  # noqa: E402


def start_server(latency_s: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.model_server", "--port", str(port),
         "--delay-s", str(latency_s)], cwd=ROOT, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ready" not in line:
        proc.kill()
        raise RuntimeError(f"model server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}/v1"


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_ticks() -> int | None:
    """CPU time the hypervisor gave to other guests, all cores, in clock ticks (Linux's
    /proc/stat `steal`); None where there is no such figure."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return None


def steal_pct(before: int | None, after: int | None, wall_s: float) -> float | None:
    """Share of the machine's CPU time stolen by the host over `wall_s` (noise, not ours)."""
    if before is None or after is None or wall_s <= 0:
        return None
    return round(100 * (after - before) / os.sysconf("SC_CLK_TCK") / (wall_s * (os.cpu_count() or 1)), 1)


def fill(store: Store, n: int) -> None:
    store.con.execute("""
        INSERT INTO samples (sample_id, stratum, frontier_model, messages, params, tags,
                             response_text, frontier_cost_usd, input_tokens, output_tokens, scorer)
        SELECT 'r' || i, 'gpt-4o|math', 'gpt-4o',
               '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is '
                 || i || ' + 1? Reply with the number only."}]',
               '{"temperature": 0, "max_tokens": 64, "stream": false, "tools": false}',
               '{"feature": "math"}', 'ok', 0.0001, 30, 5, 'exact_match'
        FROM range($n) t(i)""", {"n": n})


async def shadow_run(url: str, n: int, in_flight: int, db: Path, latency_s: float,
                     writer: str = "process") -> dict[str, Any]:
    filled = Store(db)
    fill(filled, n)
    filled.close()
    store = open_store(db, writer)  # as the service opens it (storage.threads = 0)
    shadow = ShadowConfig(concurrency=in_flight, max_queue=max(10 * n, 2 * in_flight))
    model = ModelConfig(name="cheap", base_url=url, model="tiny", input_per_mtok=0.15,
                        output_per_mtok=0.6, max_tokens=64, timeout_s=30)
    # Capped, with its journal in the store: the budget path runs as in the service.
    budget = Budget(usd_per_hour=1000.0, usd_per_day=10000.0,
                    journal=functools.partial(store.lease_budget, "bench"))
    latencies: list[float] = []
    finished: list[float] = []

    def on_result(r: SampleResult) -> None:
        finished.append(time.perf_counter())
        latencies.extend(c.latency_ms for c in r.calls)

    async with PooledHttp(in_flight) as http:
        client = ModelClient.from_config(model, shadow, http, budget)
        runner = ShadowRunner(store, build_routers((RouterConfig("random", "random"),)), [client],
                              concurrency=in_flight, max_queue=shadow.max_queue,
                              on_result=on_result)
        child = store.proc.pid if isinstance(store, StoreProcess) else None
        child0 = proc_cpu_s(child) if child else 0.0
        cpu0, t0, steal0 = time.process_time(), time.perf_counter(), steal_ticks()
        ramped = t0 + runner.ramp_s + 2 * latency_s  # every worker started and done once
        task = asyncio.create_task(runner.run())
        async def all_written() -> bool:
            return runner.completed >= n

        # As the service drains: the last results are written at once, not at the next flush.
        await runner.drain(all_written)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        steal = steal_pct(steal0, steal_ticks(), wall)
        store_cpu = proc_cpu_s(child) - child0 if child else 0.0
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    done = store.store.fetch("SELECT count(*) FROM shadow_calls WHERE outcome = 'ok'")[0][0]
    store.close()
    assert done == n, f"only {done} of {n} calls succeeded"
    latencies.sort()
    return {"wall_s": wall, "cpu_s": cpu + store_cpu, "store_cpu_s": store_cpu, "steal_pct": steal,
            "finished": finished, "ramped": ramped,
            "mean_call_ms": sum(latencies) / len(latencies),
            "p99_call_ms": latencies[int(len(latencies) * 0.99)]}


def steady_slot_ms(finished: list[float], in_flight: int, ramped: float = 0.0) -> float:
    """Milliseconds a call slot spends per call in steady state: in-flight / throughput, the
    throughput taken from the end of the first round of calls (and not before `ramped`, when
    the last worker has started and finished one call) to the start of the last round (the
    ramp-up and the last, partly filled round are not the service's steady state)."""
    t = sorted(finished)
    b = len(t) - in_flight
    a = max(in_flight, bisect.bisect_left(t, ramped))
    if b - a < in_flight:
        raise SystemExit("too few calls for a steady state: raise --requests")
    return in_flight * (t[b] - t[a]) / (b - a) * 1000


async def bare_posts(url: str, n: int, in_flight: int, http: HttpClient) -> dict[str, Any]:
    """The same POSTs with nothing of shadowroute around them: the HTTP client's own cost."""
    body = orjson.dumps({"model": "tiny", "max_tokens": 64, "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 1?"}]})
    headers = {"Content-Type": "application/json"}
    finished: list[float] = []
    async with http:
        async def caller(todo: list[int]) -> None:
            while todo:
                todo.pop()
                r = await http.post(url + "/chat/completions", body, headers, 30)
                orjson.loads(r.content)
                finished.append(time.perf_counter())

        warm = list(range(min(n, 500)))  # open the connections first
        await asyncio.gather(*(caller(warm) for _ in range(in_flight)))
        finished.clear()
        todo = list(range(n))
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(todo) for _ in range(in_flight)))
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
                "finished": finished}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--store-writer", choices=("process", "thread"), default="process",
                    help="where DuckDB runs (storage.writer): a child process or a thread")
    args = ap.parse_args()
    n, k, lat = args.requests, args.in_flight, args.latency_ms
    proc, url = start_server(lat / 1000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s = run_loop(shadow_run(url, n, k, Path(tmp) / "bench.duckdb", lat / 1000,
                                  args.store_writer))  # as the service runs
        b = run_loop(bare_posts(url, n, k, PooledHttp(k)))
        # httpx: for comparison (and fewer calls: at 256 in flight it costs ~9 ms of CPU each).
        nx = min(n, 2000)
        x = asyncio.run(bare_posts(url, nx, k, HttpxHttp(max_connections=k)))
    finally:
        proc.terminate()
        proc.wait(10)

    def overhead(wall: float) -> float:
        return wall * k / n * 1000 - lat

    def cpu(r: dict[str, Any]) -> float:
        return r["cpu_s"] / n * 1000

    out = {
        "requests": n, "in_flight": k, "injected_latency_ms": lat,
        "overhead_ms_per_call": round(steady_slot_ms(s["finished"], k, s["ramped"]) - lat, 3),
        "overhead_ms_per_call_whole_run": round(overhead(s["wall_s"]), 3),
        "cpu_ms_per_call": round(cpu(s), 4),
        "store_process_cpu_ms_per_call": round(s["store_cpu_s"] / n * 1000, 4),
        "mean_call_latency_ms": round(s["mean_call_ms"], 2),
        "p99_call_latency_ms": round(s["p99_call_ms"], 2),
        "calls_per_s": round(n / s["wall_s"], 1),
        "baseline_bare_posts_overhead_ms_per_call": round(
            steady_slot_ms(b["finished"], k) - lat, 3),
        "baseline_bare_posts_cpu_ms_per_call": round(cpu(b), 4),
        # The machine's own floor moves between runs (the server shares the two cores): what
        # shadowroute adds to the same POSTs, measured in the same run.
        "overhead_beyond_bare_posts_ms_per_call": round(
            steady_slot_ms(s["finished"], k, s["ramped"]) - steady_slot_ms(b["finished"], k), 3),
        "shadowroute_cpu_ms_per_call_beyond_bare_posts": round(cpu(s) - cpu(b), 4),
        "baseline_httpx_overhead_ms_per_call": round(steady_slot_ms(x["finished"], k) - lat, 3),
        "baseline_httpx_cpu_ms_per_call": round(x["cpu_s"] / nx * 1000, 4),
        "store_writer": args.store_writer,
        # CPU time the host took for other guests during the shadow run: high means the
        # machine, not shadowroute, was slow (a noisy 2-core VM was measured at 0-10%).
        "host_steal_pct": s["steal_pct"],
        "cpus": os.cpu_count(),
    }
    print(f"shadow stage: {n} calls in {s['wall_s']:.2f}s, {out['cpu_ms_per_call']} ms CPU/call; "
          f"bare POSTs (same client): {b['wall_s']:.2f}s, {cpu(b):.4f} ms CPU/call; "
          f"bare httpx ({nx} calls): {x['wall_s']:.2f}s, "
          f"{out['baseline_httpx_cpu_ms_per_call']} ms CPU/call")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
