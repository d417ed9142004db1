"""Soak: many jobs through one long-running local stack on disk, watching for slow decay.

``scheduler up`` runs as a child (as in :mod:`pipeline`: its own DynamoDB Local with a data
directory, ``--max-runs 8``, a no-op command that notes its start). Signed pushes are sent open
loop at ``--rate`` per second (near the stack's capacity) until ``--jobs`` were accepted. The run
is cut into tenths by delivery; for each tenth it prints:

* throughput: commands started per second during the tenth's sending window;
* webhook p50/p99: the POST /webhook round trip;
* start p50/p99: accepted (202) to the command's own start;
* resident memory of ``scheduler up`` and of DynamoDB Local's JVM at the tenth's end;
* disk: DynamoDB Local's data, run logs, run work directories (MiB) at the tenth's end.

Pass: throughput in the last tenth >= 0.8 of the first, the scheduler's memory at the end
<= 1.5x its first tenth + 50 MiB, work directories bounded (passed runs leave none). Exits 1
otherwise. ``make soak`` runs 20,000 jobs (about half an hour here)::

    .venv/bin/python bench/soak.py [--jobs 20000] [--rate 12] [--senders 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from common import open_loop
from pipeline import CONCURRENCY, deliver, local_stack, wait_started
from stats import summary

MIB = 2**20


@dataclass
class Tenth:
    index: int
    began: float = 0.0  # epoch seconds of the first send
    ended: float = 0.0  # epoch seconds when its last send was answered
    accepted: dict[str, float] = field(default_factory=dict)  # job id -> accepted epoch
    post_ms: list[float] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)
    disk_mib: dict[str, float] = field(default_factory=dict)


def folder_mib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total / MIB


def memory(pid: int) -> dict[str, float]:
    found = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            name = "dynamodb" if "java" in process.name() else "scheduler"
            if name == "scheduler" and process.pid != pid:
                continue  # a run's command, not the stack
            found[name] = process.memory_info().rss / MIB
        except psutil.Error:
            continue
    return found


def send_tenth(
    client: httpx.Client, url: str, tenth: Tenth, *, count: int, rate: float, senders: int
) -> None:
    """Open loop at ``rate``: delivery i goes at t0 + i/rate whatever the answers took."""
    lock = threading.Lock()

    def one() -> None:
        job_id, accepted, took = deliver(client, url)
        with lock:
            tenth.accepted[job_id] = accepted
            tenth.post_ms.append(took * 1000)

    tenth.began = time.time()
    with ThreadPoolExecutor(senders) as pool:
        for future in open_loop(pool, count, rate, one):
            future.result()
    tenth.ended = time.time()


def report(tenths: list[Tenth], starts: dict[str, float]) -> bool:
    print(
        f"\n{'tenth':>5} {'jobs/s':>7} {'hook p50':>8} {'hook p99':>8} {'start p50':>9}"
        f" {'start p99':>9} {'rss sched':>9} {'rss ddb':>8} {'ddb MiB':>8} {'logs MiB':>8}"
        f" {'work MiB':>8}"
    )
    rates = []
    for tenth in tenths:
        window = max(tenth.ended - tenth.began, 1e-6)
        ran = sum(1 for at in starts.values() if tenth.began <= at <= tenth.ended)
        rates.append(ran / window)
        hook = summary(tenth.post_ms)
        start = summary((starts[j] - at) * 1000 for j, at in tenth.accepted.items())
        print(
            f"{tenth.index:>5} {rates[-1]:7.1f} {hook.p50:8.0f} {hook.p99:8.0f}"
            f" {start.p50:9.0f} {start.p99:9.0f} {tenth.rss_mib.get('scheduler', 0):9.0f}"
            f" {tenth.rss_mib.get('dynamodb', 0):8.0f} {tenth.disk_mib['dynamodb']:8.1f}"
            f" {tenth.disk_mib['logs']:8.1f} {tenth.disk_mib['work']:8.2f}"
        )
    first, last = tenths[0], tenths[-1]
    checks = {
        "throughput last/first >= 0.8": rates[-1] >= 0.8 * rates[0],
        "scheduler memory bounded": last.rss_mib.get("scheduler", 0)
        <= 1.5 * first.rss_mib.get("scheduler", 0) + 50,
        "work directories bounded": last.disk_mib["work"] <= first.disk_mib["work"] + 1,
    }
    print(f"\nthroughput last/first: {rates[-1] / rates[0]:.2f}")
    grown = last.disk_mib["dynamodb"] - first.disk_mib["dynamodb"]
    jobs = sum(len(t.accepted) for t in tenths[1:])
    print(
        f"DynamoDB Local data grew {grown:.1f} MiB over {jobs} jobs"
        f" ({grown * MIB / max(jobs, 1) / 1024:.1f} KiB per job: items, indexes and the stream)"
    )
    for name, ok in checks.items():
        print(f"{'ok    ' if ok else 'FAILED'} {name}")
    return all(checks.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=12.0, help="deliveries per second")
    parser.add_argument("--senders", type=int, default=4, help="client threads")
    args = parser.parse_args()
    per_tenth = max(1, args.jobs // 10)

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, local_stack(Path(tmp)) as stack:
        data = Path(tmp) / "data"
        print(
            f"soak: {per_tenth * 10} jobs at {args.rate:g}/s through {stack.url}"
            f" (--max-runs {CONCURRENCY}); {os.cpu_count()} CPUs"
        )
        tenths = []
        with httpx.Client(timeout=30) as client:
            for index in range(1, 11):
                tenth = Tenth(index)
                send_tenth(
                    client, stack.url, tenth, count=per_tenth, rate=args.rate, senders=args.senders
                )
                tenth.rss_mib = memory(stack.process.pid)
                tenth.disk_mib = {
                    "dynamodb": folder_mib(data / "dynamodb"),
                    "logs": folder_mib(data / "runs" / "logs"),
                    "work": folder_mib(data / "runs" / "work"),
                }
                tenths.append(tenth)
                print(f"tenth {index} sent ({len(tenth.accepted)} jobs)", flush=True)
        wanted = {job for tenth in tenths for job in tenth.accepted}
        starts = wait_started(stack, wanted, time.monotonic() + 600, poll=0.5)
    sys.exit(0 if report(tenths, starts) else 1)


if __name__ == "__main__":
    main()
