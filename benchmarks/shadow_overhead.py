"""Shadow-stage overhead: 10,000 sampled requests against a local model with 50 ms latency.

Starts its own fake OpenAI-compatible server in a separate process (so its CPU is not
counted), fills a DuckDB file with N pending samples, and runs the real shadow stage over them
(`ShadowRunner` -> `ModelClient` with a deployment group, budget, retries -> scorers ->
`AsyncStore` writes) with `--in-flight` calls in flight. Then, for comparison, the same number
of bare `httpx` POSTs with the same client and concurrency.

    overhead_ms_per_call = wall time x in-flight / N - injected latency

is the time each call slot spends per call beyond the model's latency (queueing on a busy event
loop included); `cpu_ms_per_call` is this process's CPU time (time.process_time) per call. The
last line printed is one JSON object.

    python benchmarks/shadow_overhead.py [--requests 10000] [--in-flight 256] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
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
from shadow.budget import Budget  # noqa: E402
from shadow.client import ModelClient  # noqa: E402
from shadow.routers import build_routers  # noqa: E402
from shadow.runner import ShadowRunner  # noqa: E402
from shadow.transport import pooled_client  # noqa: E402
from shadowroute.broker import free_port  # noqa: E402
from shadowroute.config import ModelConfig, RouterConfig, ShadowConfig  # noqa: E402
from shadowroute.service import AsyncStore  # noqa: E402


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


async def shadow_run(url: str, n: int, in_flight: int, db: Path) -> dict[str, Any]:
    store = AsyncStore(Store(db))
    fill(store.store, n)
    shadow = ShadowConfig(concurrency=in_flight, max_queue=max(10 * n, 2 * in_flight))
    model = ModelConfig(name="cheap", base_url=url, model="tiny", input_per_mtok=0.15,
                        output_per_mtok=0.6, max_tokens=64, timeout_s=30)
    budget = Budget(usd_per_hour=1000.0, usd_per_day=10000.0)  # capped: the budget path runs
    latencies: list[float] = []
    async with pooled_client(in_flight) as http:
        client = ModelClient.from_config(model, shadow, http, budget)
        runner = ShadowRunner(store, build_routers((RouterConfig("random", "random"),)), [client],
                              concurrency=in_flight, max_queue=shadow.max_queue,
                              on_result=lambda r: latencies.extend(c.latency_ms for c in r.calls))
        cpu0, t0 = time.process_time(), time.perf_counter()
        task = asyncio.create_task(runner.run())
        while runner.completed < n:
            await asyncio.sleep(0.05)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    done = store.store.fetch("SELECT count(*) FROM shadow_calls WHERE outcome = 'ok'")[0][0]
    store.close()
    assert done == n, f"only {done} of {n} calls succeeded"
    return {"wall_s": wall, "cpu_s": cpu, "mean_call_ms": sum(latencies) / len(latencies)}


async def bare_httpx(url: str, n: int, in_flight: int) -> dict[str, Any]:
    body = orjson.dumps({"model": "tiny", "max_tokens": 64, "temperature": 0, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 1?"}]})
    sem = asyncio.Semaphore(in_flight)
    async with pooled_client(in_flight) as http:
        async def one() -> None:
            async with sem:
                r = await http.post(url + "/chat/completions", content=body, timeout=30,
                                    headers={"Content-Type": "application/json"})
                orjson.loads(r.content)

        await asyncio.gather(*(one() for _ in range(min(n, 500))))  # warm the connections
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    args = ap.parse_args()
    n, k, lat = args.requests, args.in_flight, args.latency_ms
    proc, url = start_server(lat / 1000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            s = asyncio.run(shadow_run(url, n, k, Path(tmp) / "bench.duckdb"))
        b = asyncio.run(bare_httpx(url, n, k))
    finally:
        proc.terminate()
        proc.wait(10)

    def overhead(wall: float) -> float:
        return wall * k / n * 1000 - lat

    out = {
        "requests": n, "in_flight": k, "injected_latency_ms": lat,
        "overhead_ms_per_call": round(overhead(s["wall_s"]), 3),
        "cpu_ms_per_call": round(s["cpu_s"] / n * 1000, 4),
        "mean_call_latency_ms": round(s["mean_call_ms"], 2),
        "calls_per_s": round(n / s["wall_s"], 1),
        "baseline_httpx_overhead_ms_per_call": round(overhead(b["wall_s"]), 3),
        "baseline_httpx_cpu_ms_per_call": round(b["cpu_s"] / n * 1000, 4),
        "shadowroute_cpu_ms_per_call_beyond_httpx": round((s["cpu_s"] - b["cpu_s"]) / n * 1000, 4),
        "cpus": os.cpu_count(),
    }
    print(f"shadow stage: {n} calls in {s['wall_s']:.2f}s, {out['cpu_ms_per_call']} ms CPU/call; "
          f"bare httpx: {b['wall_s']:.2f}s, {out['baseline_httpx_cpu_ms_per_call']} ms CPU/call")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
