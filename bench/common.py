"""What the bench scripts share besides their statistics (:mod:`stats`).

* a fresh DynamoDB Local (in memory, or on disk) on a free port, and settings with the tables
  made;
* a boto3 client configured like PynamoDB's, for the "raw" side of a comparison;
* request templates: requests captured from a botocore client, with sentinel values made
  ``{placeholders}`` to fill per request;
* timed batches over threads, in rounds whose mode order alternates;
* an open-loop sender (request i at t0 + i/rate, whatever the earlier answers took).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import boto3
import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from botocore import xform_name
from stats import Summary, median, ms, summary

from scheduler.db import models
from scheduler.db.clients import client as settings_client
from scheduler.db.store import JobStore
from scheduler.db.tables import ensure_tables
from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.settings import Settings, TableNames

T = TypeVar("T")

# -- DynamoDB Local and settings ----------------------------------------------------------------


@contextmanager
def dynamodb_local(heap_mb: int = 512, *, on_disk: bool = False) -> Iterator[DynamoDBLocal]:
    """A fresh DynamoDB Local on a free port, stopped on the way out.

    In memory, or ``on_disk`` in a temporary folder (removed afterwards), as ``scheduler up``
    runs it.
    """
    with contextlib.ExitStack() as stack:
        data_dir = None
        if on_disk:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ddb-")))
        install_dir = Settings.from_env({}).dynamodb_local_dir
        server = stack.enter_context(DynamoDBLocal(install_dir, heap_mb=heap_mb, data_dir=data_dir))
        mode = f"on disk in {data_dir}" if data_dir else "in memory"
        print(f"DynamoDB Local ({mode}) at {server.endpoint}, pid {server.pid}", flush=True)
        yield server


def bench_settings(endpoint: str, prefix: str = "bench-", **changes: Any) -> Settings:
    """Settings for ``endpoint`` with tables named ``prefix...``: tables made, models bound."""
    tables = TableNames().with_prefix(prefix)
    settings = replace(Settings.from_env({}).for_local(endpoint, tables), **changes)
    ensure_tables(settings_client("dynamodb", settings), settings)
    models.bind(settings)
    return settings


def raw_client(settings: Settings) -> Any:
    """A plain boto3 client with the botocore config of the store's PynamoDB client.

    That config has no client-side parameter validation, the store's pool size and PynamoDB's
    retries: a raw request costs what the product's would, less the product's own layers.
    """
    like = JobStore.from_settings(settings).connection.client
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    return session.client(
        "dynamodb", endpoint_url=settings.dynamodb_endpoint, config=like.meta.config
    )


# -- request templates --------------------------------------------------------------------------


class _Slot(str):
    """A string leaf of a request template with ``{placeholders}`` to fill."""

    __slots__ = ()


def _map_strings(node: Any, leaf: Callable[[str], Any]) -> Any:
    """``node`` (dicts, lists and leaves) with every string leaf ``s`` replaced by ``leaf(s)``."""
    if isinstance(node, dict):
        return {key: _map_strings(value, leaf) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(value, leaf) for value in node]
    return leaf(node) if isinstance(node, str) else node


def _placeholders(text: str, sentinels: Mapping[str, str]) -> str:
    """``text`` with every sentinel made ``{name}``; a ``_Slot`` if there was any."""
    escaped = text.replace("{", "{{").replace("}", "}}")
    templated = escaped
    for name, sentinel in sentinels.items():
        templated = templated.replace(sentinel, "{" + name + "}")
    return _Slot(templated) if templated != escaped else text


@dataclass(frozen=True)
class RequestTemplate:
    """A captured request whose sentinel texts became ``{name}`` placeholders."""

    request: dict[str, Any]
    operation: str = ""  # the API name, e.g. ``TransactWriteItems``

    def send(self, client: Any, values: Mapping[str, str]) -> Any:
        """Send the request, filled from ``values``, with ``client`` (a boto3 client)."""
        return getattr(client, xform_name(self.operation))(**self.fill(values))

    def fill(self, values: Mapping[str, str]) -> dict[str, Any]:
        """The request with every placeholder filled from ``values`` (all names needed)."""
        filled: dict[str, Any] = _map_strings(
            self.request, lambda text: text.format_map(values) if isinstance(text, _Slot) else text
        )
        return filled


def capture_templates(
    client: Any,
    operation: str | Sequence[str],
    action: Callable[[], object],
    sentinels: Mapping[str, str],
    *,
    expected: int,
    naming: str,
) -> list[RequestTemplate]:
    """The ``operation`` requests ``client`` makes while ``action`` runs, made templates.

    ``operation`` is one API name or several (the templates keep the order the requests were
    made in). ``action`` must make exactly ``expected`` of them; every sentinel text
    (``sentinels``: name -> text, searched in this order, so a text containing another goes
    first) becomes ``{name}``, and each request must contain the sentinel ``naming`` (what makes
    it unique).
    """
    operations = [operation] if isinstance(operation, str) else list(operation)
    captured: list[tuple[str, dict[str, Any]]] = []

    def grabber(name: str) -> Callable[..., None]:
        def grab(params: dict[str, Any], **_: Any) -> None:
            captured.append((name, copy.deepcopy(params)))

        return grab

    events = [f"provide-client-params.dynamodb.{name}" for name in operations]
    for name, event in zip(operations, events, strict=True):
        client.meta.events.register(event, grabber(name), unique_id=f"bench-capture-{name}")
    try:
        action()
    finally:
        for name, event in zip(operations, events, strict=True):
            client.meta.events.unregister(event, unique_id=f"bench-capture-{name}")
    if len(captured) != expected:
        what = "/".join(operations)
        raise RuntimeError(f"expected {expected} {what} request(s), captured {len(captured)}")
    templates = [
        RequestTemplate(_map_strings(request, lambda text: _placeholders(text, sentinels)), name)
        for name, request in captured
    ]
    for made in templates:
        if "{" + naming + "}" not in json.dumps(made.request):
            raise RuntimeError(f"a captured request does not contain the {naming}: no template")
    return templates


# -- timed batches ------------------------------------------------------------------------------


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` so far (all its threads).

    This process's own from ``time.process_time`` (ns resolution); others' from psutil, in
    clock ticks (10 ms): enough over a batch, too coarse for one client's share of it.
    """
    if process.pid == os.getpid():
        return time.process_time()
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Batch:
    seconds: float
    latencies: list[float]  # seconds, one per operation
    cpu: dict[str, float]  # CPU seconds by process name, over the batch

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def cpu_ms_per_op(self, process: str) -> float:
        return self.cpu[process] * 1000 / len(self.latencies)


def run_batch(
    send: Callable[[int], None],
    count: int,
    threads: int,
    processes: Mapping[str, psutil.Process],
) -> Batch:
    """``send(0)`` .. ``send(count - 1)`` over ``threads`` threads; wall time from a common start.

    Thread ``i`` sends ``i``, ``i + threads``, ...; the CPU time of every process in
    ``processes`` is read around the batch.
    """
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


Results = dict[tuple[str, int], list[Batch]]
"""Batches by (mode, thread count), one per round."""


def alternating_rounds(
    modes: Sequence[str],
    levels: Sequence[int],
    rounds: int,
    run: Callable[[str, int, str], Batch],
) -> Results:
    """``run(mode, level, prefix)`` for every mode and level, ``rounds`` times.

    The modes' order alternates from round to round and level to level: client and server share
    the cores, so neither mode should always go first. ``prefix`` is unique per batch.
    """
    results: Results = defaultdict(list)
    for round_no in range(rounds):
        for slot, level in enumerate(levels):
            order = modes if (round_no + slot) % 2 == 0 else modes[::-1]
            for mode in order:
                results[(mode, level)].append(run(mode, level, f"{mode}-r{round_no}-t{level}"))
    return results


@dataclass(frozen=True)
class Figures:
    """The rounds of one (mode, level): what a bench table prints of them."""

    rate: float  # operations per second, median of the rounds
    latency: Summary  # of every operation of every round, in milliseconds
    rates: tuple[float, ...]  # operations per second, round by round
    cpu_ms: dict[str, float]  # CPU ms per operation by process, median of the rounds

    def rates_by_round(self, digits: int = 1) -> str:
        return " / ".join(f"{rate:.{digits}f}" for rate in self.rates)


def figures(results: Results) -> dict[tuple[str, int], Figures]:
    """The figures of every (mode, level) of ``results``."""
    made = {}
    for key, batches in results.items():
        rates = tuple(batch.rate for batch in batches)
        latencies = [value for batch in batches for value in batch.latencies]
        cpu_ms = {
            name: median(batch.cpu_ms_per_op(name) for batch in batches) for name in batches[0].cpu
        }
        made[key] = Figures(median(rates), summary(ms(latencies)), rates, cpu_ms)
    return made


# -- open-loop sending --------------------------------------------------------------------------


def open_loop(pool: Executor, count: int, rate: float, task: Callable[[], T]) -> list[Future[T]]:
    """Submit ``task`` ``count`` times to ``pool``, the i-th at t0 + i/rate (open loop)."""
    t0 = time.perf_counter()
    futures: list[Future[T]] = []
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(task))
    return futures


def signed_push(secret: str, repo: str, branch: str, sha: str) -> tuple[bytes, dict[str, str]]:
    """A push webhook of ``sha`` to ``branch`` of ``repo``: its body and headers, signed with
    ``secret`` as GitHub signs them (a fresh delivery id each)."""
    body = json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "after": sha,
            "deleted": False,
            "repository": {"full_name": repo},
            "sender": {"login": "bench"},
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret.encode(), body),
    }
    return body, headers
