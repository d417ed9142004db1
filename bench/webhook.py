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
        [--warmup 200]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from common import (
    Batch,
    RequestTemplate,
    Results,
    alternating_rounds,
    bench_settings,
    capture_templates,
    dynamodb_local,
    figures,
    raw_client,
    run_batch,
)

from scheduler.db.store import JobStore, NewJob, system_clock
from scheduler.github.delivery import create_guarded
from scheduler.github.signature import sign
from scheduler.settings import Settings, TableNames

MODES = ("http", "raw")
REPOS = 50
SECRET = "bench-webhook-secret-0123456789abcdef"
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


def capture_request(settings: Settings) -> RequestTemplate:
    """The TransactWriteItems request the endpoint sends for one delivery, as botocore sees it."""
    store = JobStore.from_settings(settings)
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
    (request,) = capture_templates(
        store.connection.client,
        "TransactWriteItems",
        lambda: create_guarded(store, new, CAPTURE_TRIGGER, now=CAPTURE_NOW),
        _sentinels(CAPTURE_JOB, CAPTURE_DELIVERY, CAPTURE_REPO, CAPTURE_NOW, CAPTURE_TRIGGER),
        expected=1,
        naming="job",
    )
    return request


def _sentinels(job: str, delivery: str, repo: str, now: int, trigger: str) -> dict[str, str]:
    # Searched in this order: the job id contains the delivery id, so it goes first.
    return {"job": job, "trigger": trigger, "delivery": delivery, "repo": repo, "now": str(now)}


def raw_sender(ddb: Any, request: RequestTemplate, batch: Sequence[Delivery]) -> Send:
    def send(index: int) -> None:
        delivery = batch[index]
        values = _sentinels(
            "gh-" + delivery.delivery_id,
            delivery.delivery_id,
            f"bench/repo-{index % REPOS:02d}",
            system_clock(),
            f"{hash(delivery.delivery_id) & (2**256 - 1):064x}",
        )
        ddb.transact_write_items(**request.fill(values))

    return send


# -- report -----------------------------------------------------------------------------------


def print_table(results: Results, levels: Sequence[int]) -> None:
    print(
        f"{'mode':<5} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'server CPU ms':>13} {'DDB Local CPU ms':>16} {'client CPU ms':>13}  req/s by round"
    )
    rows = figures(results)
    for level in levels:
        for mode in MODES:
            row = rows[(mode, level)]
            cpu = row.cpu_ms
            server_cpu = f"{cpu['server']:>13.2f}" if mode == "http" else f"{'-':>13}"
            print(
                f"{mode:<5} {level:>4} {row.rate:>8.1f} {row.latency.p50:>7.1f}"
                f" {row.latency.p99:>7.1f} {server_cpu} {cpu['dynamodb']:>16.2f}"
                f" {cpu['client']:>13.2f}  {row.rates_by_round(digits=0)}"
            )
    print("CPU columns: milliseconds per accepted delivery (http) or per raw write (raw).")
    for level in levels:
        http, raw = rows[("http", level)], rows[("raw", level)]
        rate_ratio = http.rate / raw.rate
        p99_ratio = http.latency.p99 / raw.latency.p99
        verdict = "ok" if rate_ratio >= TARGET_RATE and p99_ratio <= TARGET_P99 else "BELOW TARGET"
        print(
            f"concurrency {level:>2}: throughput http/raw {rate_ratio:.2f}"
            f" (target >= {TARGET_RATE}), p99 http/raw {p99_ratio:.2f}"
            f" (target <= {TARGET_P99}): {verdict}"
        )


# -- main -------------------------------------------------------------------------------------


def measure(requests: int, rounds: int, levels: Sequence[int], warmup: int) -> Results:
    """Both modes at every concurrency of ``levels``, on a fresh in-memory DynamoDB Local."""
    with dynamodb_local(heap_mb=1024) as ddb_local:
        settings = bench_settings(ddb_local.endpoint, webhook_secret=SECRET)
        request = capture_request(settings)
        ddb = raw_client(settings)

        spawn = multiprocessing.get_context("spawn")
        ports = spawn.Queue()
        child = spawn.Process(
            target=serve,
            args=(ddb_local.endpoint, settings.tables, ports),
            name="webhook-server",
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
                "raw": lambda batch: raw_sender(ddb, request, batch),
            }
            print(
                f"warming up (DynamoDB Local JIT, connections); {rounds} rounds of"
                f" {requests} requests per mode and concurrency {list(levels)}",
                flush=True,
            )
            for mode in MODES:
                warm = deliveries(f"warm-{mode}", warmup)
                run_batch(senders[mode](warm), len(warm), 8, processes)

            def one_batch(mode: str, level: int, prefix: str) -> Batch:
                batch = deliveries(prefix, requests)
                return run_batch(senders[mode](batch), len(batch), level, processes)

            return alternating_rounds(MODES, levels, rounds, one_batch)
        finally:
            child.terminate()
            child.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--warmup", type=int, default=200, help="uncounted requests per mode")
    args = parser.parse_args()
    levels = [int(value) for value in args.concurrency.split(",")]
    print_table(measure(args.requests, args.rounds, levels, args.warmup), levels)


if __name__ == "__main__":
    main()
