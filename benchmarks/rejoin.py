"""Rejoin time after a restart: how long a restarted service waits for its partitions.

Starts its own local Kafka-protocol broker (Tansu) and a topic of 4 partitions, then for
dynamic membership (the baseline) and static membership (`kafka.group_instance_id`), in the
same run: a member process (the service's `KafkaSource`, with the configured
`session_timeout_ms`) joins the group, is killed (SIGKILL, or SIGTERM: a clean stop), and a new
member process is started; the figure is the time from the new process's start to its first
assignment. The first join of a fresh group is printed too (static membership can cost more
there). The last line is JSON.

    python benchmarks/rejoin.py [--session-timeout-ms 10000] [--rounds 2]

Tansu's figures only: on Apache Kafka a static member that comes back within the session takes
its partitions back at once, and a dynamic one that left cleanly (SIGTERM) causes an immediate
rebalance; Tansu waits in both cases (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shadowroute.demo.broker import Broker  # noqa: E402

MEMBER = r"""
import asyncio, sys, time
from consumers.kafka_source import KafkaSource
from consumers.config import KafkaConfig

async def main() -> None:
    t0 = time.monotonic()
    boot, group, inst, st = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = KafkaConfig(bootstrap_servers=boot, topics=("rejoin",), group_id=group,
                      group_instance_id=inst, session_timeout_ms=st, poll_timeout_ms=100)
    src = KafkaSource(cfg, lambda: {})
    await src.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(15, stop.set)
    told = False
    while not stop.is_set():
        await src.batch()
        if not told and src.consumer is not None and src.consumer.assignment():
            print(f"{time.monotonic() - t0:.3f}", flush=True)
            told = True
    await src.stop()

asyncio.run(main())
"""


def member(boot: str, group: str, inst: str, st: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", MEMBER, boot, group, inst, str(st)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def assigned_after(p: subprocess.Popen[str]) -> float:
    line = p.stdout.readline() if p.stdout else ""
    if not line:
        raise RuntimeError(f"member exited {p.wait()} before an assignment")
    return float(line)


async def create_topic(boot: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("rejoin", 4, 1)])
    finally:
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--session-timeout-ms", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    st = args.session_timeout_ms
    broker = Broker()
    out: dict[str, float] = {"session_timeout_ms": st}
    try:
        asyncio.run(create_topic(broker.bootstrap))
        for label, inst in (("dynamic", ""), ("static", "shadowroute-bench-1")):
            for how in (signal.SIGKILL, signal.SIGTERM):
                firsts, rejoins = [], []
                for i in range(args.rounds):
                    group = f"g-{label}-{how.name}-{i}"
                    p = member(broker.bootstrap, group, inst, st)
                    firsts.append(assigned_after(p))
                    time.sleep(1.0)  # a member that has been running a while
                    p.send_signal(how)
                    p.wait(30)
                    q = member(broker.bootstrap, group, inst, st)
                    rejoins.append(assigned_after(q))
                    q.send_signal(signal.SIGKILL)
                    q.wait(30)
                first, again = statistics.median(firsts), statistics.median(rejoins)
                print(f"{label:8} after {how.name:8} first join {first:6.2f} s   "
                      f"rejoin {again:6.2f} s   (median of {args.rounds})", flush=True)
                out[f"{label}_{how.name.lower()}_rejoin_s"] = round(again, 2)
                out[f"{label}_first_join_s"] = round(first, 2)
    finally:
        broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
