"""Shadow-stage speed per HTTP client: 1,000 calls in flight against a model with 1 s latency.

The goal (issue 15): with a local OpenAI-compatible server answering after 1 s, 1,000 calls in
flight and at least 20,000 calls, the shadow stage sustains >= 900 calls/s (90% of the 1,000/s
the latency allows), costs <= 0.5 ms of CPU per call including the DuckDB writes, adds <= 50 ms
at p99 to the injected second, and its memory stays flat (RSS within 1.5x over the last 10,000
calls).

For each candidate client the whole shadow stage runs, as the service runs it, in a child
process of its own (so CPU and RSS are that client's alone): a DuckDB file filled with N pending
samples, `ShadowRunner` -> `ModelClient` (deployment group, capped budget with its journal in
the store, retries) -> the HTTP client -> scorers -> store writes (DuckDB in its own child
process, or on a thread with `--store-writer thread`). The server is another process (its CPU
is not counted; it shares the machine's cores). Candidates:

- `aiohttp`: `shadow.http.AiohttpClient` (what the service uses);
- `pyreqwest`: pyreqwest (Python bindings of Rust's reqwest/hyper: the HTTP work runs on a
  Tokio thread, off the event loop) behind the same `HttpClient` protocol, with the response
  size cap read as the service's client reads it (a `Content-Length` within the cap in one
  go, else streamed and cut at the cap). Not the service's client: it is here because it is
  the one maintained library measured that gets the stage under the CPU goal (see
  docs/architecture.md, "Speed of the shadow stage"). `pip install 'shadowroute[bench]'`;
- `httpx`: an `httpx.AsyncClient` with a pool of `--in-flight` connections, HTTP/2 off (the
  server speaks HTTP/1.1), behind the same `HttpClient` protocol. It is much slower at 1,000
  in flight, so it runs `--other-calls` calls (default 3,000), said in its figures.

Figures per client:

- `calls_per_s`: sustained throughput, from the end of the first round of `in-flight` calls
  (connections opened, workers started) to the start of the last round (partly empty);
- `cpu_ms_per_call`: CPU time (user + system) of the shadow process and of the store process,
  the whole run, per call;
- `p99_overhead_ms`: p99 of each call's latency (as `ModelClient` measures it: from the call's
  start to its parsed answer) minus the injected latency, over the calls after the first round;
  `p99_overhead_ms_all_calls` includes the first round (1,000 connections opened at once);
- `rss_ratio`: resident memory (shadow + store process) after the last call over that after the
  first 10,000 calls (half the calls in a shorter run).

The last line printed is one JSON object: the chosen client's figures at the top level and each
other client's under its name; `load_avg_1m` says how busy the machine was (other work shares
its cores: read the figures with it; each run's own is the load as it started).

CPU per call moves with the machine's load (on 2 shared cores, 0.42-0.69 ms for the same code,
the baseline 0.23-0.36 ms). `--repeat N` runs N rounds (each client, then the baseline) and
reports each one's median round, every round's figures under `rounds`, and
`cpu_ms_per_call_over_baseline`: the median over rounds of the client's CPU per call minus the
baseline's in the same round (what the shadow stage adds to the library).

    python benchmarks/shadow_overhead.py [--calls 20000] [--in-flight 1000] [--latency-ms 1000]
        [--clients aiohttp,pyreqwest,httpx] [--other-calls 3000] [--store-writer process|thread]
        [--ramp-s 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.service_store import open_store  # noqa: E402
from analytics.store import Store  # noqa: E402
from analytics.store_process import StoreProcess  # noqa: E402
from shadow.budget import Budget  # noqa: E402
from shadow.client import ModelClient  # noqa: E402
from shadow.config import ModelConfig, ShadowConfig  # noqa: E402
from shadow.errors import (  # noqa: E402
    ConnectFailed,
    ConnectionDropped,
    ResponseTimedOut,
    ResponseTooLarge,
    SendTimedOut,
)
from shadow.http import (  # noqa: E402
    MAX_RESPONSE_BYTES,
    AiohttpClient,
    HttpClient,
    HttpResponse,
)
from shadow.routers import RandomRouterConfig, build_routers  # noqa: E402
from shadow.runner import SampleResult, ShadowRunner  # noqa: E402
from shadowroute.demo.broker import free_port  # noqa: E402
from shadowroute.service import run_loop  # noqa: E402

DEFAULT_CLIENTS = ("aiohttp", "pyreqwest", "httpx")
BARE = "bare"  # the baseline's name in --one: aiohttp alone, no shadow stage
ROUND_KEYS = ("cpu_ms_per_call", "calls_per_s", "p99_overhead_ms", "rss_ratio", "load_avg_1m")
RSS_BLOCK = 10_000
RAMP_S = 0.5  # ShadowRunner's default: its workers start spread over this long (--ramp-s)


class HttpxClient:
    """httpx behind the shadow stage's `HttpClient` protocol (the benchmark's comparison)."""

    def __init__(self, max_connections: int) -> None:
        self.client = httpx.AsyncClient(http2=False, trust_env=False, limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
                   *, ca_bundle: str | None = None) -> HttpResponse:
        try:
            r = await self.client.post(url, content=body, headers=dict(headers), timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ConnectFailed(f"connection error: {type(e).__name__}") from None
        except (httpx.WriteTimeout, httpx.PoolTimeout) as e:
            raise SendTimedOut(f"timeout sending the request ({type(e).__name__})") from None
        except httpx.TimeoutException:
            raise ResponseTimedOut(f"timeout after {timeout:g}s with no response") from None
        except httpx.TransportError as e:
            raise ConnectionDropped(f"connection dropped: {type(e).__name__}") from None
        return HttpResponse(r.status_code, r.headers, r.content)

    async def aclose(self) -> None:
        await self.client.aclose()


class ReqwestClient:
    """pyreqwest behind the shadow stage's `HttpClient` protocol (the benchmark's comparison):
    one client, at most `max_connections` requests in flight, no proxy (the server is on
    loopback), the answer read with the size cap as `AiohttpClient._read` reads it."""

    def __init__(self, max_connections: int, max_response_bytes: int = MAX_RESPONSE_BYTES
                 ) -> None:
        try:
            import pyreqwest.exceptions as errors
            from pyreqwest.client import ClientBuilder
        except ImportError:
            raise SystemExit("--clients pyreqwest: not installed (pip install "
                             "'shadowroute[bench]')") from None
        self.errors = errors
        self.client = ClientBuilder().max_connections(max_connections).no_proxy().build()
        self.cap = max_response_bytes
        self._timeouts: dict[float, datetime.timedelta] = {}
        self._open = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float,
                   *, ca_bundle: str | None = None) -> HttpResponse:
        e = self.errors
        if not self._open:
            await self.client.__aenter__()
            self._open = True
        td = self._timeouts.get(timeout)
        if td is None:
            td = self._timeouts[timeout] = datetime.timedelta(seconds=timeout)
        try:
            async with (self.client.post(url).headers(dict(headers)).body_bytes(body)
                        .timeout(td).build_streamed()) as r:
                n = r.get_header("content-length")
                if n is not None and int(n) <= self.cap and not r.get_header("content-encoding"):
                    return HttpResponse(r.status, r.headers, bytes(await r.bytes()))
                chunks, size = [], 0
                while (c := await r.body_reader.read_chunk()) is not None:
                    size += len(c)
                    if size > self.cap:
                        raise ResponseTooLarge(f"response over the {self.cap}-byte cap")
                    chunks.append(bytes(c))
                return HttpResponse(r.status, r.headers, b"".join(chunks))
        except (e.ConnectError, e.ConnectTimeoutError) as x:
            raise ConnectFailed(f"connection error: {type(x).__name__}") from None
        except e.PoolTimeoutError as x:
            raise SendTimedOut(f"timeout sending the request ({type(x).__name__})") from None
        except e.RequestTimeoutError:
            raise ResponseTimedOut(f"timeout after {timeout:g}s with no response") from None
        except e.TransportError as x:
            raise ConnectionDropped(f"connection dropped: {type(x).__name__}") from None

    async def aclose(self) -> None:
        if self._open:
            await self.client.__aexit__(None, None, None)
            self._open = False


def make_client(name: str, in_flight: int) -> HttpClient:
    if name == "aiohttp":
        return AiohttpClient(in_flight)
    if name == "pyreqwest":
        return ReqwestClient(in_flight)
    if name == "httpx":
        return HttpxClient(in_flight)
    raise SystemExit(f"--clients: unknown client {name!r} (aiohttp, pyreqwest, httpx)")


def raise_fd_limit() -> None:
    """1,000 connections need more descriptors than a default soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else 65536, hard))


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


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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


async def shadow_run(client_name: str, url: str, n: int, in_flight: int, db: Path,
                     latency_s: float, writer: str, ramp_s: float = RAMP_S) -> dict[str, Any]:
    filled = Store(db)
    fill(filled, n)
    filled.close()
    store = open_store(db, writer)  # as the service opens it (storage.threads = 0)
    shadow = ShadowConfig(concurrency=in_flight, max_queue=max(10 * n, 2 * in_flight))
    model = ModelConfig(name="cheap", base_url=url, model="tiny", input_per_mtok=0.15,
                        output_per_mtok=0.6, max_tokens=64, timeout_s=60)
    # Capped, with its journal in the store: the budget path runs as in the service.
    budget = Budget(usd_per_hour=1000.0, usd_per_day=10000.0,
                    journal=functools.partial(store.lease_budget, "bench"))
    latencies: list[tuple[float, float]] = []  # (finished at, latency ms)
    child = store.proc.pid if isinstance(store, StoreProcess) else None
    rss: list[float] = []
    block = min(RSS_BLOCK, n // 2)

    def memory() -> float:
        return rss_mb(os.getpid()) + (rss_mb(child) if child else 0.0)

    def on_result(r: SampleResult) -> None:
        now = time.perf_counter()
        latencies.extend((now, c.latency_ms) for c in r.calls)
        if not rss and len(latencies) >= block:
            rss.append(memory())

    http = make_client(client_name, in_flight)
    try:
        client = ModelClient.from_config(model, shadow, http, budget)
        runner = ShadowRunner(store, build_routers((RandomRouterConfig("random"),)), [client],
                              concurrency=in_flight, max_queue=shadow.max_queue,
                              on_result=on_result, ramp_s=ramp_s)
        child0 = proc_cpu_s(child) if child else 0.0
        cpu0, t0 = time.process_time(), time.perf_counter()
        task = asyncio.create_task(runner.run())
        lags: list[float] = []  # how late a 5 ms sleep wakes: the event loop's stalls

        async def watch_loop() -> None:
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append((time.perf_counter() - t) * 1000 - 5)

        watcher = asyncio.create_task(watch_loop())

        async def all_written() -> bool:
            return runner.completed >= n

        # As the service drains: the last results are written at once, not at the next flush.
        await runner.drain(all_written)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        store_cpu = proc_cpu_s(child) - child0 if child else 0.0
        rss.append(memory())
        watcher.cancel()
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await http.aclose()
    done = store.reads.fetch("SELECT count(*) FROM shadow_calls WHERE outcome = 'ok'")[0][0]
    store.close()
    if done != n:
        raise SystemExit(f"{client_name}: only {done} of {n} calls succeeded")
    out = figures(latencies, n, in_flight, latency_s, wall, cpu, store_cpu, rss)
    lags.sort()
    out["loop_lag_p99_ms"] = round(lags[int(len(lags) * 0.99)], 1)
    out["loop_lag_max_ms"] = round(lags[-1], 1)
    return out


async def bare_run(url: str, n: int, in_flight: int, latency_s: float, ramp_s: float
                         ) -> dict[str, Any]:
    """The baseline: the same calls with aiohttp alone (one session, `in_flight` tasks started
    over `ramp_s` as the runner's workers are, the body built and the answer parsed with orjson),
    no shadow stage around it: what the library costs here, today, on this machine's load."""
    import aiohttp
    import orjson
    body = orjson.dumps({"model": "tiny", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1? Reply with the number only."}],
        "temperature": 0, "stream": False, "max_tokens": 64})
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    latencies: list[tuple[float, float]] = []
    left = [n]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=in_flight, limit_per_host=0)) as session:
        async def worker(delay: float) -> None:
            await asyncio.sleep(delay)
            while left[0] > 0:
                left[0] -= 1
                t = time.perf_counter()
                async with session.post(url + "/chat/completions", data=body, headers=headers,
                                        timeout=timeout) as r:
                    orjson.loads(await r.read())
                now = time.perf_counter()
                latencies.append((now, (now - t) * 1000))

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(i * ramp_s / in_flight) for i in range(in_flight)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return figures(latencies, n, in_flight, latency_s, wall, cpu, 0.0, [rss_mb(os.getpid())] * 2)


def figures(latencies: list[tuple[float, float]], n: int, in_flight: int, latency_s: float,
            wall: float, cpu: float, store_cpu: float, rss: list[float]) -> dict[str, Any]:
    latencies.sort()
    finished = [t for t, _ in latencies]
    lat = latency_s * 1000
    a, b = in_flight, len(finished) - in_flight  # steady state: after the first round, before the last
    if b - a < in_flight:
        raise SystemExit("too few calls for a steady state: raise --calls or lower --in-flight")
    steady = sorted(ms for _, ms in latencies[a:])
    every = sorted(ms for _, ms in latencies)
    return {
        "calls": n,
        "calls_per_s": round((b - a) / (finished[b] - finished[a]), 1),
        "calls_per_s_whole_run": round(n / wall, 1),
        "cpu_ms_per_call": round((cpu + store_cpu) / n * 1000, 4),
        "store_process_cpu_ms_per_call": round(store_cpu / n * 1000, 4),
        "p99_overhead_ms": round(steady[int(len(steady) * 0.99)] - lat, 1),
        "p50_overhead_ms": round(steady[len(steady) // 2] - lat, 1),
        "p99_overhead_ms_all_calls": round(every[int(len(every) * 0.99)] - lat, 1),
        "rss_mb": round(rss[-1], 1),
        "rss_ratio": round(rss[-1] / rss[0], 3),
        "wall_s": round(wall, 2),
    }


def one(args: argparse.Namespace) -> None:
    """Child mode: one client's run, its figures as the last line."""
    raise_fd_limit()
    if args.one == BARE:
        out = run_loop(bare_run(args.url, args.calls, args.in_flight, args.latency_ms / 1000,
                                args.ramp_s))
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = run_loop(shadow_run(args.one, args.url, args.calls, args.in_flight,
                                  Path(tmp) / "bench.duckdb", args.latency_ms / 1000,
                                  args.store_writer, args.ramp_s))  # as the service runs
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=1000.0)
    ap.add_argument("--clients", default=None,
                    help="comma-separated candidates; the first is the chosen one (default: "
                         "aiohttp,pyreqwest,httpx, pyreqwest left out when not installed)")
    ap.add_argument("--other-calls", type=int, default=3000,
                    help="calls for httpx (slow here: a few dozen calls a second)")
    ap.add_argument("--store-writer", choices=("process", "thread"), default="process",
                    help="where DuckDB runs (storage.writer): a child process or a thread")
    ap.add_argument("--ramp-s", type=float, default=RAMP_S,
                    help="the workers (and the baseline's) start spread over this long "
                         "(ShadowRunner's ramp_s); with a fixed latency the calls stay in waves "
                         "this wide, which sets p99 (docs/architecture.md)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds (each client, then the baseline); the median round is reported")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args)
        return
    if args.clients is None:
        names = list(DEFAULT_CLIENTS)
        if importlib.util.find_spec("pyreqwest") is None:
            names.remove("pyreqwest")
            print("pyreqwest is not installed: left out (pip install 'shadowroute[bench]')",
                  flush=True)
    else:
        names = [c.strip() for c in args.clients.split(",") if c.strip()]
    for flag, calls in (("--calls", args.calls), ("--other-calls", args.other_calls)):
        if calls < 3 * args.in_flight and (flag == "--calls" or "httpx" in names):
            raise SystemExit(f"{flag} must be at least 3 x --in-flight ({3 * args.in_flight}) "
                             f"for a steady state between the first and the last round")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if not args.ramp_s >= 0:
        raise SystemExit(f"--ramp-s must be 0 or more seconds, got {args.ramp_s}")
    raise_fd_limit()  # inherited by the server and the children
    proc, url = start_server(args.latency_ms / 1000)
    # Per round: each client, then the baseline, one after the other on the same server; the
    # machine's load drifts between rounds, so each round's figures are read against its own
    # baseline.
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for _ in range(args.repeat):
            results: dict[str, dict[str, Any]] = {}
            for name in names:
                calls = args.calls if name != "httpx" else min(args.calls, args.other_calls)
                results[name] = run_child(name, url, calls, args)
                f = results[name]
                print(f"{name}: {f['calls']} calls, {f['calls_per_s']} calls/s, "
                      f"{f['cpu_ms_per_call']} ms CPU/call, p99 +{f['p99_overhead_ms']} ms, "
                      f"RSS x{f['rss_ratio']} ({f['rss_mb']} MB), load {f['load_avg_1m']}",
                      flush=True)
            # The baseline, in the same round: aiohttp alone, the same calls, no shadow stage.
            bare = results[BARE] = run_child(BARE, url, args.calls, args)
            print(f"baseline, aiohttp alone: {bare['calls']} calls, {bare['calls_per_s']} "
                  f"calls/s, {bare['cpu_ms_per_call']} ms CPU/call, p99 "
                  f"+{bare['p99_overhead_ms']} ms, load {bare['load_avg_1m']}", flush=True)
            rounds.append(results)
    finally:
        proc.terminate()
        proc.wait(10)
    chosen, *others = names

    def median_run(name: str) -> dict[str, Any]:
        """The round whose CPU per call is the median (the upper one of an even count), with
        every round's figures beside it when there were several."""
        runs = sorted(rounds, key=lambda r: r[name]["cpu_ms_per_call"])
        out = dict(runs[len(runs) // 2][name])
        if len(rounds) > 1:
            out["rounds"] = [{k: r[name][k] for k in ROUND_KEYS} for r in rounds]
        if name != BARE:
            extra = sorted(r[name]["cpu_ms_per_call"] - r[BARE]["cpu_ms_per_call"]
                           for r in rounds)
            out["cpu_ms_per_call_over_baseline"] = round(extra[len(extra) // 2], 4)
        return out

    out: dict[str, Any] = {"client": chosen, **median_run(chosen)}
    out.update({"in_flight": args.in_flight, "injected_latency_ms": args.latency_ms,
                "ramp_s": args.ramp_s,
                "store_writer": args.store_writer, "load_avg_1m": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(), "repeat": args.repeat})
    for name in others:
        out[name] = median_run(name)
    out["baseline_aiohttp_alone"] = median_run(BARE)
    print(json.dumps(out))


def run_child(name: str, url: str, calls: int, args: argparse.Namespace) -> dict[str, Any]:
    """One client's run (or the baseline's, `BARE`) in a process of its own: its figures, with
    the machine's load as it started."""
    cmd = [sys.executable, __file__, "--one", name, "--url", url, "--calls", str(calls),
           "--in-flight", str(args.in_flight), "--latency-ms", str(args.latency_ms),
           "--store-writer", args.store_writer, "--ramp-s", str(args.ramp_s)]
    load = round(os.getloadavg()[0], 2)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        what = "bare aiohttp" if name == BARE else name
        raise SystemExit(f"{what}: run failed:\n{r.stderr[-2000:]}{r.stdout[-500:]}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    out["load_avg_1m"] = load
    return out

if __name__ == "__main__":
    main()
