"""Stream runner figures on a fresh DynamoDB Local, side by side with raw GetRecords polling.

    .venv/bin/python bench/stream.py [--latency-writes 300] [--backlog 5000] [--idle-seconds 10]
        [--warmup 200]

1. latency: a job write -> the handler sees it (p50/p99), writes paced at ~20/s;
2. drain rate of a backlog (records/s), the runner (no-op handler) vs a raw GetRecords loop;
3. idle CPU of the runner and of DynamoDB Local, vs a raw 5 ms GetRecords poll loop.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from common import bench_settings, cpu_seconds, dynamodb_local
from stats import summary

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.local.checkpoints import CheckpointStore
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings


class Bench:
    def __init__(self, settings: Settings, server_pid: int) -> None:
        self.settings = settings
        self.ddb = client("dynamodb", settings)
        self.streams = client("dynamodbstreams", settings)
        self.server = psutil.Process(server_pid)
        self.seen: dict[str, float] = {}
        self.count = 0

    def handler(self, event: dict[str, Any], context: Any) -> Any:
        now = time.perf_counter()
        for record in event["Records"]:
            self.seen.setdefault(record["dynamodb"]["Keys"]["job_id"]["S"], now)
        self.count += len(event["Records"])
        return {"batchItemFailures": []}

    def runner(self) -> StreamRunner:
        mapping = MappingConfig.from_settings(self.settings)
        return StreamRunner(
            dynamodb=self.ddb,
            streams=self.streams,
            table_name=self.settings.tables.jobs,
            checkpoints=CheckpointStore(self.ddb, self.settings.tables.runner_state, "bench"),
            dead_letters=DeadLetterStore(self.ddb, self.settings.tables.dead_letters),
            handler=self.handler,
            mapping=mapping,
            polling=PollingConfig(),
        )

    def put(self, job_id: str) -> None:
        self.ddb.put_item(
            TableName=self.settings.tables.jobs,
            Item={"job_id": {"S": job_id}, "status": {"S": "pending"}, "repo": {"S": "b/b"}},
        )

    def latency(self, writes: int) -> list[float]:
        runner = self.runner()
        runner.skip_to_end()
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,))
        thread.start()
        written: dict[str, float] = {}
        for n in range(writes):
            job_id = f"lat-{n}"
            written[job_id] = time.perf_counter()
            self.put(job_id)
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while not all(j in self.seen for j in written) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join()
        return [(self.seen[j] - t) * 1000 for j, t in written.items() if j in self.seen]

    def backlog(self, size: int, prefix: str) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: self.put(f"{prefix}-{n}"), range(size)))

    def drain_runner(self, size: int) -> float:
        runner = self.runner()
        runner.skip_to_end()
        self.backlog(size, "drain")
        start_count = self.count
        started = time.perf_counter()
        runner.drain(timeout=600, quiet_polls=2)
        elapsed = time.perf_counter() - started
        assert self.count - start_count >= size
        return (self.count - start_count) / elapsed

    def shard_iterator(self, kind: str) -> str:
        """A ``kind`` iterator (``LATEST``, ``TRIM_HORIZON``) of the jobs stream's last shard."""
        table = self.ddb.describe_table(TableName=self.settings.tables.jobs)["Table"]
        arn = table["LatestStreamArn"]
        shard = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][-1]
        iterator: str = self.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType=kind
        )["ShardIterator"]
        return iterator

    def drain_raw(self, size: int) -> float:
        # Position at the current end first, then write the backlog, then read it raw.
        iterator = self.shard_iterator("TRIM_HORIZON")
        while True:
            response = self.streams.get_records(ShardIterator=iterator, Limit=1000)
            iterator = response["NextShardIterator"]
            if not response["Records"]:
                break
        self.backlog(size, "raw")
        read = 0
        started = time.perf_counter()
        while read < size:
            response = self.streams.get_records(ShardIterator=iterator, Limit=100)
            iterator = response["NextShardIterator"]
            read += len(response["Records"])
        return read / (time.perf_counter() - started)

    def cpu(self, seconds: float, work: Any) -> tuple[float, float]:
        """(client %, server %) of one core while ``work(stop)`` runs for ``seconds``."""
        me = psutil.Process()
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,))
        thread.start()
        time.sleep(1.0)  # settle into the idle back-off
        client_before, server_before = cpu_seconds(me), cpu_seconds(self.server)
        started = time.perf_counter()
        time.sleep(seconds)
        client_after, server_after = cpu_seconds(me), cpu_seconds(self.server)
        wall = time.perf_counter() - started
        stop.set()
        thread.join()
        return (
            100 * (client_after - client_before) / wall,
            100 * (server_after - server_before) / wall,
        )

    def raw_poll(self, stop: threading.Event) -> None:
        iterator = self.shard_iterator("LATEST")
        while not stop.is_set():
            iterator = self.streams.get_records(ShardIterator=iterator, Limit=100)[
                "NextShardIterator"
            ]
            stop.wait(0.005)


@dataclass
class StreamFigures:
    latency_ms: list[float]  # a job write -> the handler saw it, one per write
    runner_rate: float  # backlog drain, records per second
    raw_rate: float
    runner_cpu: tuple[float, float]  # idle (client %, DynamoDB Local %) of one core
    raw_cpu: tuple[float, float]


def measure(latency_writes: int, backlog: int, idle_seconds: float, warmup: int) -> StreamFigures:
    """All three measures on a fresh in-memory DynamoDB Local."""
    with dynamodb_local(heap_mb=512) as server:
        settings = bench_settings(server.endpoint)
        assert server.pid is not None
        bench = Bench(settings, server.pid)
        for n in range(warmup):  # warm up the server's JIT and the stream
            bench.put(f"warm-{n}")
        latency = bench.latency(latency_writes)
        raw_rate = bench.drain_raw(backlog)
        runner_rate = bench.drain_runner(backlog)
        runner = bench.runner()
        runner.skip_to_end()
        runner_cpu = bench.cpu(idle_seconds, runner.run)
        raw_cpu = bench.cpu(idle_seconds, bench.raw_poll)
    return StreamFigures(latency, runner_rate, raw_rate, runner_cpu, raw_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-writes", type=int, default=300)
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=200, help="uncounted writes first")
    args = parser.parse_args()

    got = measure(args.latency_writes, args.backlog, args.idle_seconds, args.warmup)
    print(f"latency write->handler  {summary(got.latency_ms)}")
    print(
        f"backlog drain ({args.backlog} records)  runner={got.runner_rate:.0f}/s"
        f"  raw GetRecords={got.raw_rate:.0f}/s  ratio={got.runner_rate / got.raw_rate:.2f}"
    )
    runner_cpu, raw_cpu = got.runner_cpu, got.raw_cpu
    print(
        f"idle CPU (% of one core)  runner: client={runner_cpu[0]:.1f} server="
        f"{runner_cpu[1]:.1f}   raw 5 ms poll: client={raw_cpu[0]:.1f} server={raw_cpu[1]:.1f}"
        f"   ratio client={runner_cpu[0] / max(raw_cpu[0], 0.01):.2f}"
        f" server={runner_cpu[1] / max(raw_cpu[1], 0.01):.2f}"
    )


if __name__ == "__main__":
    main()
