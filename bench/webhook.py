"""Webhook deliveries per second over real HTTP, against the same writes sent raw.

What is measured, on a fresh in-memory DynamoDB Local started by this script:

* **http**: signed ``push`` deliveries (GitHub's example payload, ~9 KB, each with its own
  delivery id and commit) POSTed to ``/webhook`` of the real ``LocalHTTPServer``, which runs in a
  child process (so its CPU can be measured apart from the load generator's). Each request
  keeps its connection alive, as GitHub's senders do. Every answer must be 202 (a new job).
* **raw**: the *same* write the endpoint makes for each delivery -- one ``TransactWriteItems``
  of three items (conditional job put, conditional trigger-guard update, counters update) --
  sent straight from a boto3 client. One real request is captured from the product's botocore
  client (``provide-client-params``) and made a template; each raw write fills in a fresh job
  id, delivery id, repository, time and trigger key.

Both run at each concurrency (default 1, 8 and 32 client threads), in rounds whose http/raw
order alternates (client, server and DynamoDB Local share the 2 cores, so neither should always
go first). The table shows the median rate of the rounds and latency percentiles of all
requests; the targets are ratios: http throughput >= 0.6 of raw, http p99 <= 2x raw p99. CPU
milliseconds per accepted delivery are read from the server process and from the DynamoDB Local
JVM (psutil) around each batch.

Run from the project root::

    .venv/bin/python bench/webhook.py [--requests 300] [--rounds 3] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import multiprocessing
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from botocore.config import Config
from stats import percentile

from scheduler.db import models
from scheduler.db.clients import client as settings_client
from scheduler.db.store import JobStore, NewJob, system_clock
from scheduler.db.tables import ensure_tables
from scheduler.github.delivery import create_guarded
from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.settings import Settings, TableNames

MODES = ("http", "raw")
REPOS = 50
SECRET = "bench-webhook-secret"
TARGET_RATE = 0.6
TARGET_P99 = 2.0
PUSH: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "tests" / "events" / "push.branch.json").read_text()
)

# Sentinels of the captured request: distinctive enough to find (and replace) in it.
CAPTURE_NOW = 1_700_000_000_000
CAPTURE_JOB = "gh-capture-0001"
CAPTURE_DELIVERY = "capture-0001"
CAPTURE_REPO = "capture/repo"
CAPTURE_TRIGGER = "feedface" * 8

Send = Callable[[int], None]
"""Sends delivery number ``n`` of the current batch (http) or its write (raw)."""


# -- the server, in a child process -----------------------------------------------------------


def serve(endpoint: str, tables: TableNames, ports: Any) -> None:
    from scheduler.api.app import create_app
    from scheduler.local.http_server import LocalHTTPServer

    settings = replace(Settings.from_env({}).for_local(endpoint, tables), webhook_secret=SECRET)
    server = LocalHTTPServer(create_app(settings))
    ports.put(server.address[1])
    server.serve_forever()


# -- the two ways of sending ------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    body: bytes
    signature: str


def deliveries(prefix: str, count: int) -> list[Delivery]:
    made = []
    for index in range(count):
        payload = copy.deepcopy(PUSH)
        payload["after"] = f"{hash((prefix, index)) & (2**160 - 1):040x}"
        payload["repository"]["full_name"] = f"bench/repo-{index % REPOS:02d}"
        body = json.dumps(payload).encode()
        made.append(Delivery(f"{prefix}-{index:06d}", body, sign(SECRET.encode(), body)))
    return made


def http_sender(port: int, batch: Sequence[Delivery]) -> Send:
    local = threading.local()

    def send(index: int) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection("127.0.0.1", port)
        delivery = batch[index]
        connection.request(
            "POST",
            "/webhook",
            delivery.body,
            {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery.delivery_id,
                "X-Hub-Signature-256": delivery.signature,
            },
        )
        response = connection.getresponse()
        answer = response.read()
        if response.status != 202:
            raise RuntimeError(f"delivery {delivery.delivery_id}: {response.status} {answer!r}")

    return send


class _Slot(str):
    """A string leaf of the request template with ``{placeholders}`` to fill."""

    __slots__ = ()


def capture_request(settings: Settings) -> dict[str, Any]:
    """The TransactWriteItems request the endpoint sends for one delivery, as botocore sees it."""
    store = JobStore.from_settings(settings)
    captured: list[dict[str, Any]] = []

    def grab(params: dict[str, Any], **_: Any) -> None:
        captured.append(copy.deepcopy(params))

    event = "provide-client-params.dynamodb.TransactWriteItems"
    store.connection.client.meta.events.register(event, grab, unique_id="bench-capture")
    new = NewJob(
        job_id=CAPTURE_JOB,
        repo=CAPTURE_REPO,
        event="push",
        sha=PUSH["after"],
        timeout_seconds=1800,
        ref=PUSH["ref"],
        branch="master",
        sender="Codertocat",
        delivery_id=CAPTURE_DELIVERY,
    )
    if create_guarded(store, new, CAPTURE_TRIGGER, now=CAPTURE_NOW) is not None:
        raise RuntimeError("capture job was not created")
    if len(captured) != 1:
        raise RuntimeError(f"expected one request per delivery, captured {len(captured)}")
    template: dict[str, Any] = _compile(captured[0])
    return template


def _sentinels(job: str, delivery: str, repo: str, now: int, trigger: str) -> dict[str, str]:
    # Searched in this order: the job id contains the delivery id, so it goes first.
    return {"job": job, "trigger": trigger, "delivery": delivery, "repo": repo, "now": str(now)}


def _compile(node: Any) -> Any:
    sentinels = _sentinels(
        CAPTURE_JOB, CAPTURE_DELIVERY, CAPTURE_REPO, CAPTURE_NOW, CAPTURE_TRIGGER
    )
    if isinstance(node, dict):
        return {key: _compile(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_compile(value) for value in node]
    if isinstance(node, str):
        escaped = node.replace("{", "{{").replace("}", "}}")
        templated = escaped
        for name, text in sentinels.items():
            templated = templated.replace(text, "{" + name + "}")
        return _Slot(templated) if templated != escaped else node
    return node


def _fill(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(value, values) for value in node]
    if isinstance(node, _Slot):
        return node.format_map(values)
    return node


def raw_sender(ddb: Any, template: dict[str, Any], batch: Sequence[Delivery]) -> Send:
    def send(index: int) -> None:
        delivery = batch[index]
        values = _sentinels(
            "gh-" + delivery.delivery_id,
            delivery.delivery_id,
            f"bench/repo-{index % REPOS:02d}",
            system_clock(),
            f"{hash(delivery.delivery_id) & (2**256 - 1):064x}",
        )
        ddb.transact_write_items(**_fill(template, values))

    return send


def raw_client(settings: Settings) -> Any:
    """A boto3 client configured like PynamoDB's (no client-side parameter validation)."""
    return boto3.session.Session().client(
        "dynamodb",
        region_name=settings.region,
        endpoint_url=settings.dynamodb_endpoint,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=Config(
            parameter_validation=False,
            max_pool_connections=64,
            retries={"mode": "standard", "total_max_attempts": 4},
        ),
    )


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Batch:
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]  # CPU seconds by process: "server", "dynamodb", "client"

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def cpu_ms_per_request(self, process: str) -> float:
        return self.cpu[process] * 1000 / len(self.latencies)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run_batch(send: Send, count: int, threads: int, processes: dict[str, psutil.Process]) -> Batch:
    """Send ``count`` requests split over ``threads`` threads; wall time from a common start."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[Exception] = []
    start_line = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        out = latencies[index]
        start_line.wait()
        try:
            for n in range(index, count, threads):
                began = time.perf_counter()
                send(n)
                out.append(time.perf_counter() - began)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    cpu_before = {name: cpu_seconds(process) for name, process in processes.items()}
    start_line.wait()
    began = time.perf_counter()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - began
    cpu = {name: cpu_seconds(process) - cpu_before[name] for name, process in processes.items()}
    if errors:
        raise errors[0]
    return Batch(seconds, [value for chunk in latencies for value in chunk], cpu)


def print_table(results: dict[tuple[str, int], list[Batch]], levels: Sequence[int]) -> None:
    print(
        f"{'mode':<5} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'server CPU ms':>13} {'DDB Local CPU ms':>16} {'client CPU ms':>13}  req/s by round"
    )
    rate: dict[tuple[str, int], float] = {}
    p99: dict[tuple[str, int], float] = {}
    for level in levels:
        for mode in MODES:
            batches = results[(mode, level)]
            latencies = [value for batch in batches for value in batch.latencies]
            rate[(mode, level)] = statistics.median(batch.rate for batch in batches)
            p99[(mode, level)] = percentile(latencies, 0.99)
            cpu = {
                name: statistics.median(batch.cpu_ms_per_request(name) for batch in batches)
                for name in ("server", "dynamodb", "client")
            }
            server_cpu = f"{cpu['server']:>13.2f}" if mode == "http" else f"{'-':>13}"
            print(
                f"{mode:<5} {level:>4} {rate[(mode, level)]:>8.1f}"
                f" {percentile(latencies, 0.50) * 1000:>7.1f} {p99[(mode, level)] * 1000:>7.1f}"
                f" {server_cpu} {cpu['dynamodb']:>16.2f} {cpu['client']:>13.2f}"
                f"  {' / '.join(f'{batch.rate:.0f}' for batch in batches)}"
            )
    print("CPU columns: milliseconds per accepted delivery (http) or per raw write (raw).")
    for level in levels:
        rate_ratio = rate[("http", level)] / rate[("raw", level)]
        p99_ratio = p99[("http", level)] / p99[("raw", level)]
        verdict = "ok" if rate_ratio >= TARGET_RATE and p99_ratio <= TARGET_P99 else "BELOW TARGET"
        print(
            f"concurrency {level:>2}: throughput http/raw {rate_ratio:.2f}"
            f" (target >= {TARGET_RATE}), p99 http/raw {p99_ratio:.2f}"
            f" (target <= {TARGET_P99}): {verdict}"
        )


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(value) for value in args.concurrency.split(",")]

    base = Settings.from_env({})
    with DynamoDBLocal(base.dynamodb_local_dir, heap_mb=1024) as ddb_local:
        tables = TableNames().with_prefix("bench-")
        settings = replace(base.for_local(ddb_local.endpoint, tables), webhook_secret=SECRET)
        ensure_tables(settings_client("dynamodb", settings), settings)
        models.bind(settings)
        template = capture_request(settings)
        ddb = raw_client(settings)

        spawn = multiprocessing.get_context("spawn")
        ports = spawn.Queue()
        child = spawn.Process(
            target=serve, args=(ddb_local.endpoint, tables, ports), name="webhook-server"
        )
        child.start()
        try:
            port = int(ports.get(timeout=60))
            assert ddb_local.pid is not None and child.pid is not None
            processes = {
                "server": psutil.Process(child.pid),
                "dynamodb": psutil.Process(ddb_local.pid),
                "client": psutil.Process(),
            }
            senders: dict[str, Callable[[Sequence[Delivery]], Send]] = {
                "http": lambda batch: http_sender(port, batch),
                "raw": lambda batch: raw_sender(ddb, template, batch),
            }
            print(
                f"warming up (DynamoDB Local JIT, connections); {args.rounds} rounds of"
                f" {args.requests} requests per mode and concurrency {levels}"
            )
            for mode in MODES:
                warm = deliveries(f"warm-{mode}", 200)
                run_batch(senders[mode](warm), len(warm), 8, processes)

            results: dict[tuple[str, int], list[Batch]] = defaultdict(list)
            for round_no in range(args.rounds):
                for slot, level in enumerate(levels):
                    order = MODES if (round_no + slot) % 2 == 0 else MODES[::-1]
                    for mode in order:
                        batch = deliveries(f"{mode}-r{round_no}-c{level}", args.requests)
                        results[(mode, level)].append(
                            run_batch(senders[mode](batch), len(batch), level, processes)
                        )
            print_table(results, levels)
        finally:
            child.terminate()
            child.join(10)


if __name__ == "__main__":
    main()
