"""Ingest throughput: shadowroute's full ingest vs bare aiokafka `getmany` on the same topic.

Starts its own local Kafka-protocol broker (Tansu), preloads N realistic log records (~1-3 KB,
mixed formats), then measures in the same run:
  (a) bare aiokafka: a consumer reading the topic with `getmany`, doing nothing with the records;
  (b) shadowroute: the service's ingest path (KafkaSource -> decode + sample -> DuckDB with
      offsets, one transaction per batch) until every record is persisted.
The last line printed is one JSON object with `baseline_records_per_s`, `ingest_records_per_s`
and `ratio` (the goal is ratio >= 0.30, the longer-term one 0.5), and the peak RSS of the ingest
process and of the store's process while (b) ran (`rss_peak_mib`: the whole backlog waits in the
broker, so memory bounded means these stay flat as `--records` grows). The machine is noisy:
compare the ratio, not the figures. Before the Kafka runs it measures, per format, the CPU time of
`Ingestor.process` alone (decode, sample, rows; no I/O) over batches of 500 records of that
format, in µs per record (`us_per_record`: the median of 5 rounds; `us_per_record_min`: the
least disturbed round, the better estimate of the code's own cost on a shared machine). With
`--before REF` (a git commit, branch or tag of this repository) it measures that commit's
`Ingestor.process` the same way, in rounds alternating with this tree's (each round a fresh
process for each), so both see the same machine load, and prints both with their ratio
(`us_per_record_before`, `us_per_record_before_min`).

    python benchmarks/ingest.py [--records 200000] [--per-format-only] [--before main]

With `--before REF`, that commit's full ingest runs too (its own code and benchmark script, in a
fresh process, on the same topic and broker, right before this tree's), and the last line adds
its `ratio_before`.

`SHADOWROUTE_*` variables apply as they do to the service, e.g. `SHADOWROUTE_STORAGE__WRITER=thread`
to run DuckDB on a thread instead of in its child process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.store import Store  # noqa: E402
from consumers.ingest import Ingestor  # noqa: E402
from consumers.kafka_source import KafkaSource  # noqa: E402
from shadowroute.config import load_config  # noqa: E402
from shadowroute.demo.broker import Broker  # noqa: E402
from shadowroute.demo.traffic import TrafficGenerator  # noqa: E402
from shadowroute.service import run_loop  # noqa: E402

PARTITIONS = 4
FORMATS = ("openai_chat", "litellm", "otlp_json", "otlp_proto")


def per_format(n: int = 5000, rounds: int = 5) -> tuple[dict[str, float], dict[str, float]]:
    """(median, min) µs of CPU per record of `Ingestor.process`, per format, at the benchmark's
    sample rate."""
    from consumers.records import RawMessage

    cfg = load_config(None, env={"SHADOWROUTE_SAMPLING__DEFAULT_RATE": "0.05"})
    out: dict[str, float] = {}
    least: dict[str, float] = {}
    for fmt in FORMATS:
        values = list(TrafficGenerator(seed=1, formats=(fmt,)).encoded(n))
        batches = [[RawMessage("bench", 0, i + j, v) for j, v in enumerate(values[i:i + 500])]
                   for i in range(0, n, 500)]
        times = []
        for _ in range(rounds):
            ing = Ingestor(cfg)  # a fresh one: no state carried from the last round
            t0 = time.process_time()
            for b in batches:
                ing.process(b)
            times.append((time.process_time() - t0) / n * 1e6)
        out[fmt] = round(sorted(times)[len(times) // 2], 1)
        least[fmt] = round(min(times), 1)
    return out, least


# Run in a fresh interpreter whose `sys.path` starts with a source tree (argv[1]): the µs of CPU
# per record of its `Ingestor.process` for each format, one round. Only APIs every version of
# the tree has, so it measures an older commit as well.
_MEASURE_TREE = """
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
try:  # the GC settings the service runs with (`run_loop`), where the tree has them
    from shadowroute.service import GC_THRESHOLDS
    gc.collect(); gc.freeze(); gc.set_threshold(*GC_THRESHOLDS)
except ImportError:
    pass
from consumers.ingest import Ingestor
from consumers.records import RawMessage
from shadowroute.config import load_config
try:  # where the tree keeps the demo's traffic (it moved into shadowroute/demo/)
    from shadowroute.demo.traffic import TrafficGenerator
except ImportError:
    from shadowroute.traffic import TrafficGenerator
n = int(sys.argv[2])
cfg = load_config(None, env={"SHADOWROUTE_SAMPLING__DEFAULT_RATE": "0.05"})
out = {}
for fmt in sys.argv[3:]:
    values = list(TrafficGenerator(seed=1, formats=(fmt,)).encoded(n))
    batches = [[RawMessage("bench", 0, i + j, v) for j, v in enumerate(values[i:i + 500])]
               for i in range(0, n, 500)]
    ing = Ingestor(cfg)
    ing.process(batches[0])  # warm caches and lazy imports, as a running service has them
    ing = Ingestor(cfg)
    t0 = time.process_time()
    for b in batches:
        ing.process(b)
    out[fmt] = (time.process_time() - t0) / n * 1e6
print(json.dumps(out))
"""


def per_format_before_after(ref: str, n: int = 5000, rounds: int = 5
                            ) -> dict[str, dict[str, float]]:
    """µs of CPU per record of `Ingestor.process` per format, of commit `ref` and of this tree,
    measured in alternating rounds: {"before", "after"} (median of `rounds`) and
    {"before_min", "after_min"} (their least)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as d:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
        trees = {"before": d, "after": str(root)}
        for _ in range(rounds):
            for which, tree in trees.items():
                got = subprocess.run([sys.executable, "-c", _MEASURE_TREE, tree, str(n), *FORMATS],
                                     check=True, capture_output=True, text=True, cwd=tree)
                for fmt, us in json.loads(got.stdout.strip().splitlines()[-1]).items():
                    times[which].setdefault(fmt, []).append(us)

    def median(xs: list[float]) -> float:
        return round(sorted(xs)[len(xs) // 2], 1)

    return {**{w: {f: median(v) for f, v in t.items()} for w, t in times.items()},
            **{f"{w}_min": {f: round(min(v), 1) for f, v in t.items()} for w, t in times.items()}}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def watch_rss(pids: dict[str, int], peaks: dict[str, float], every_s: float = 0.2) -> None:
    """Keep the peak RSS (MiB) of each process in `peaks` until cancelled."""
    while True:
        for name, pid in pids.items():
            rss = rss_mib(pid)
            if rss is not None and rss > peaks.get(name, 0.0):
                peaks[name] = round(rss, 1)
        await asyncio.sleep(every_s)


async def preload(bootstrap: str, topic: str, n: int) -> tuple[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=16 * 1024 * 1024)
    await producer.start()
    gen = TrafficGenerator(seed=1, formats=("openai_chat", "litellm", "otlp_json", "otlp_proto"))
    total_bytes = 0
    try:
        pending = []
        for i, value in enumerate(gen.encoded(n)):
            total_bytes += len(value)
            pending.append(await producer.send(topic, value, partition=i % PARTITIONS))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n, total_bytes


async def bare(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    got = 0
    start = time.perf_counter()
    try:
        while got < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            got += sum(len(v) for v in batch.values())
    finally:
        elapsed = time.perf_counter() - start
        await consumer.stop()
    return got / elapsed


async def ours(bootstrap: str, topic: str, n: int, db: Path,
               rss_peaks: dict[str, float] | None = None) -> float:
    """Records/s of the service's ingest path; `rss_peaks` gets the peak RSS (MiB) of this
    process (`ingest`) and of the store's own process (`store`, with `storage.writer = process`)."""
    cfg = load_config(None, env={
        "SHADOWROUTE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "SHADOWROUTE_KAFKA__TOPICS": f'["{topic}"]',
        "SHADOWROUTE_KAFKA__GROUP_ID": "bench",
        "SHADOWROUTE_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "SHADOWROUTE_STORAGE__DB_PATH": str(db),
        "SHADOWROUTE_SAMPLING__DEFAULT_RATE": "0.05",
        **{k: v for k, v in os.environ.items() if k.startswith("SHADOWROUTE_")},
    })
    from analytics.service_store import open_store
    from consumers.pipeline import IngestPipeline

    store = open_store(db, cfg.storage.writer, cfg.storage.threads)  # as the service runs (storage.writer)
    source = KafkaSource(cfg.kafka, store.reads.stored_offsets)
    await source.start()
    stop = asyncio.Event()
    state = {"got": 0, "start": 0.0, "end": 0.0}

    class Timed:
        """The Kafka source, noting when the first record arrived (the group join is excluded,
        as the bare consumer has none)."""

        async def batch(self) -> list:  # type: ignore[type-arg]
            msgs = await source.batch()
            if msgs and not state["start"]:
                state["start"] = time.perf_counter()
            return msgs

        async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
            await source.commit(offsets)

    def persisted(batch, duplicates: int) -> None:  # type: ignore[no-untyped-def]
        state["got"] += batch.requests.height + batch.rejected.height + duplicates * 0
        if state["got"] >= n:
            state["end"] = time.perf_counter()
            stop.set()

    pids = {"ingest": os.getpid()}
    proc = getattr(store, "proc", None)
    if proc is not None:
        pids["store"] = proc.pid
    watcher = asyncio.create_task(watch_rss(pids, rss_peaks if rss_peaks is not None else {}))
    try:
        await IngestPipeline(Ingestor(cfg), store, Timed(), on_persisted=persisted).run(stop)
        elapsed = state["end"] - state["start"]
    finally:
        watcher.cancel()
        await source.stop()
        store.close()
    con = Store(db, read_only=True)
    stored = con.fetch("SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM rejected)")[0][0]
    con.close()
    if stored < n:  # duplicates are stored once; every record must be accounted for
        print(f"warning: {stored} rows for {n} records", file=sys.stderr)
    return n / elapsed


# Run in a fresh interpreter in a source tree (its cwd): that tree's `ours` on the preloaded
# topic, under its own consumer group, printing records/s. argv: bootstrap topic n db.
_OURS_TREE = """
import sys
from pathlib import Path
from benchmarks.ingest import ours
from shadowroute.service import run_loop
print(run_loop(ours(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))))
"""


def ours_of_commit(ref: str, bootstrap: str, topic: str, n: int) -> float:
    """`ours` as commit `ref` runs it (its benchmark script, its code), on the same topic."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
        env = {**os.environ, "SHADOWROUTE_KAFKA__GROUP_ID": "bench-before"}  # from offset 0
        got = subprocess.run([sys.executable, "-c", _OURS_TREE, bootstrap, topic, str(n),
                              str(Path(d) / "before.duckdb")], check=True, capture_output=True,
                             text=True, cwd=d, env=env)
        return float(got.stdout.strip().splitlines()[-1])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--per-format-only", action="store_true",
                    help="only the per-format µs/record of Ingestor.process (no broker)")
    ap.add_argument("--before", metavar="REF",
                    help="also measure Ingestor.process of this git commit (e.g. main), per "
                         "format, in rounds alternating with this tree's")
    args = ap.parse_args()
    figures: dict[str, object] = {}
    if args.before:
        got = per_format_before_after(args.before)
        before, us, us_min = got["before"], got["after"], got["after_min"]
        print(f"Ingestor.process, µs of CPU per record, {args.before} -> this tree "
              "(median of 5 alternating rounds; least in brackets):")
        for fmt in FORMATS:
            print(f"  {fmt:12s} {before[fmt]:7.1f} -> {us[fmt]:7.1f}  "
                  f"({before[fmt] / us[fmt]:.2f}x)   [{got['before_min'][fmt]:7.1f} -> "
                  f"{us_min[fmt]:7.1f}  ({got['before_min'][fmt] / us_min[fmt]:.2f}x)]")
        figures = {"us_per_record_before": before, "us_per_record_before_min": got["before_min"],
                   "before_ref": args.before}
    else:
        us, us_min = per_format()
        print("Ingestor.process, µs of CPU per record (median of 5; least): "
              + ", ".join(f"{k} {v:.1f} ({us_min[k]:.1f})" for k, v in us.items()))
    figures["us_per_record_min"] = us_min
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f}")
    figures["load_avg_1m"] = round(load, 2)
    if args.per_format_only:
        print(json.dumps({"us_per_record": us, **figures}))
        return
    broker = Broker()
    try:
        topic = "bench-ingest"
        t0 = time.perf_counter()
        n, size = await preload(broker.bootstrap, topic, args.records)
        print(f"preloaded {n:,} records ({size / n:,.0f} B avg) in {time.perf_counter() - t0:.1f}s")
        base = await bare(broker.bootstrap, topic, n)
        print(f"bare aiokafka getmany:   {base:>10,.0f} records/s")
        if args.before:  # the same topic, the same broker, right before this tree's run
            ing_before = await asyncio.to_thread(ours_of_commit, args.before, broker.bootstrap,
                                                 topic, n)
            print(f"shadowroute full ingest at {args.before}: {ing_before:>10,.0f} records/s "
                  f"(ratio {ing_before / base:.3f})")
            figures.update(ingest_records_per_s_before=round(ing_before),
                           ratio_before=round(ing_before / base, 3))
        peaks: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as d:
            ing = await ours(broker.bootstrap, topic, n, Path(d) / "bench.duckdb", peaks)
        print(f"shadowroute full ingest: {ing:>10,.0f} records/s (ratio {ing / base:.3f}); peak "
              "RSS " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in peaks.items()))
        load = os.getloadavg()[0]
        print(f"load average (1 min) after the Kafka runs: {load:.2f}")
        print(json.dumps({"records": n, "avg_record_bytes": round(size / n),
                          "baseline_records_per_s": round(base), "ingest_records_per_s": round(ing),
                          "ratio": round(ing / base, 3), "rss_peak_mib": peaks,
                          "load_avg_1m_end": round(load, 2), "us_per_record": us, **figures,
                          "store_writer": os.environ.get("SHADOWROUTE_STORAGE__WRITER", "process")}))
    finally:
        broker.stop()


if __name__ == "__main__":
    run_loop(main())  # the loop and GC settings the service runs with
