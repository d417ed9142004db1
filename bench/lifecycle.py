"""Job lifecycles per second through the product, against the same requests sent raw.

What is measured, on a fresh in-memory DynamoDB Local started by this script:

* **product**: one lifecycle is ``JobStore.create`` -> ``JobStore.activate`` ->
  ``JobStore.transition(..., Trigger.PASS)``: three ``TransactWriteItems`` requests built by the
  store and PynamoDB. With ``--full``, a local stack job's lifecycle: the create carries its
  trigger guard (as the webhook's does) and the activation the run's claim (as the local
  runtime's does): three writes still. ``--naive`` claims the run apart instead
  (``JobStore.claim_run``, an ``UpdateItem``, before the pass): the four writes of the naive
  lifecycle, the baseline of ``report.py``.
* **raw**: the *same* three requests sent with a plain boto3 client. One real request of each
  kind is captured from the store's botocore client (``provide-client-params`` event) and turned
  into a template; each raw lifecycle fills in a fresh job id, repository and times. The raw
  client is configured like PynamoDB's (no client-side parameter validation), so the difference
  is the product layer (``JobStore`` + PynamoDB), not botocore settings.

Both run at each thread count (default 1 and 8), in rounds whose product/raw order alternates
(client and server share the cores, so neither should always go first); the table shows the
median rate of the rounds, latency percentiles of all lifecycles and the client process's CPU
time per lifecycle (less sensitive to a busy machine than rates are). Every lifecycle uses its
own job id; jobs are spread over 50 repositories with a large slot limit, so activation never
finds a repository full.

A separate counting pass hooks ``after-call`` on every botocore client involved and prints the
requests per lifecycle by operation, and the consumed capacity DynamoDB Local reports (asked for
with ``ReturnConsumedCapacity=TOTAL``) next to the theoretical DynamoDB figure. Last, the cost
of the state-machine layer: a compiled ``plan`` lookup against building a ``transitions``
machine per job. ``--profile N`` adds a cProfile of N lifecycles per mode at one thread.

Run from the project root::

    .venv/bin/python bench/lifecycle.py [--lifecycles 400] [--rounds 3] [--threads 1,8]
        [--full | --naive]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import timeit
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
from stats import median
from transitions import Machine

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import (
    DAY_MS,
    Clock,
    JobStore,
    NewJob,
    RunClaimed,
    TriggerGuard,
    system_clock,
)
from scheduler.errors import RepositoryFull
from scheduler.settings import Settings
from state_machines import TRANSITION_TABLE, JobStatus, Trigger, plan

MODES = ("product", "raw")
REPOS = 50
SLOT_LIMIT = 10_000
TIMEOUT_SECONDS = 600
SHA = "0123456789abcdef0123456789abcdef01234567"
TARGET_RATIO = 0.7
GUARD_WINDOW_MS = 30 * DAY_MS  # the webhook's trigger guard window

# Sentinels of the captured lifecycle: distinctive enough to find (and replace) in a request.
CAPTURE_NOW = 1_700_000_000_000
CAPTURE_JOB = "capture-job-0001"
CAPTURE_REPO = "capture/repo"

Lifecycle = Callable[[str, str], None]
"""Runs one create -> activate -> pass lifecycle of job ``job_id`` in repository ``repo``."""


# -- the two ways of running a lifecycle ------------------------------------------------------


def new_job(job_id: str, repo: str) -> NewJob:
    return NewJob(
        job_id=job_id,
        repo=repo,
        event="push",
        sha=SHA,
        timeout_seconds=TIMEOUT_SECONDS,
        ref="refs/heads/main",
        branch="main",
        sender="bench",
        delivery_id=f"delivery-{job_id}",
    )


def product_lifecycle(store: JobStore, *, full: bool = False, naive: bool = False) -> Lifecycle:
    """The store's calls of one lifecycle; ``full``: as a job of the local stack makes them.

    That is a create with its trigger guard (what the webhook writes), the activation that
    claims the run, and the finish: three writes. ``naive`` (implies ``full``): the run's claim
    is a write of its own (``claim_run``, one conditional ``UpdateItem``): four writes.
    """
    full = full or naive

    def run(job_id: str, repo: str) -> None:
        guard = TriggerGuard(f"{repo}#push#{job_id}", GUARD_WINDOW_MS) if full else None
        pending = store.create(new_job(job_id, repo), guard=guard)
        key = f"{job_id}#{pending.attempt}"
        claim = RunClaimed(key, f"runs/logs/{job_id}") if full and not naive else None
        try:
            active = store.activate(pending, slot_limit=SLOT_LIMIT, claim=claim)
        except RepositoryFull as exc:
            raise RuntimeError(f"repository {repo} unexpectedly full") from exc
        if naive:
            store.claim_run(active, key)
            active = replace(active, version=active.version + 1)  # the claim moves it
        store.transition(active, Trigger.PASS, actor="runner")

    return run


@dataclass(frozen=True)
class RequestTemplates:
    """The store's requests of one lifecycle with job id, repository and times made
    placeholders: three ``TransactWriteItems``, or with ``naive`` four writes (see
    :func:`product_lifecycle`)."""

    requests: tuple[RequestTemplate, ...]
    retention_ms: int

    @classmethod
    def capture(
        cls, store: JobStore, retention_days: int, *, full: bool = False, naive: bool = False
    ) -> RequestTemplates:
        """The requests one product lifecycle sends, as botocore receives them."""
        retention_ms = retention_days * DAY_MS
        frozen = JobStore(
            store.connection, clock=lambda: CAPTURE_NOW, retention_days=retention_days
        )
        requests = capture_templates(
            store.connection.client,
            ("TransactWriteItems", "UpdateItem") if naive else "TransactWriteItems",
            lambda: product_lifecycle(frozen, full=full, naive=naive)(CAPTURE_JOB, CAPTURE_REPO),
            _values(CAPTURE_JOB, CAPTURE_REPO, CAPTURE_NOW, retention_ms),
            expected=4 if naive else 3,
            naming="job",
        )
        return cls(tuple(requests), retention_ms)

    def send(self, ddb: Any, index: int, job_id: str, repo: str, now: int) -> None:
        """Request ``index`` of the lifecycle of ``job_id``, sent raw with ``ddb``."""
        self.requests[index].send(ddb, _values(job_id, repo, now, self.retention_ms))


def _values(job_id: str, repo: str, now: int, retention_ms: int) -> dict[str, str]:
    """Placeholder -> value; insertion order is the order sentinels are searched for."""
    return {
        "deadline": str(now + TIMEOUT_SECONDS * 1000),
        "expires": str((now + retention_ms) // 1000),
        "guard_since": str(now - GUARD_WINDOW_MS),
        "now": str(now),
        "job": job_id,
        "repo": repo,
    }


def raw_lifecycle(ddb: Any, templates: RequestTemplates, clock: Clock = system_clock) -> Lifecycle:
    def run(job_id: str, repo: str) -> None:
        for index in range(len(templates.requests)):
            templates.send(ddb, index, job_id, repo, clock())

    return run


# -- timing -----------------------------------------------------------------------------------


def job_keys(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:05d}", f"bench/repo-{i % REPOS:02d}") for i in range(count)]


def lifecycle_batch(lifecycle: Lifecycle, prefix: str, count: int, threads: int) -> Batch:
    """``count`` lifecycles over ``threads`` threads; CPU time of this (the client) process."""
    jobs = job_keys(prefix, count)
    return run_batch(lambda n: lifecycle(*jobs[n]), count, threads, {"client": psutil.Process()})


def measure(
    lifecycles: dict[str, Lifecycle], thread_counts: Sequence[int], per_batch: int, rounds: int
) -> Results:
    return alternating_rounds(
        MODES,
        thread_counts,
        rounds,
        lambda mode, threads, prefix: lifecycle_batch(lifecycles[mode], prefix, per_batch, threads),
    )


def print_rates(results: Results, thread_counts: Sequence[int]) -> None:
    print(
        f"{'mode':<8} {'threads':>7} {'lifecycles/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'client CPU ms':>13}  lifecycles/s by round"
    )
    rows = figures(results)
    for threads in thread_counts:
        for mode in MODES:
            row = rows[(mode, threads)]
            print(
                f"{mode:<8} {threads:>7} {row.rate:>12.1f} {row.latency.p50:>8.1f}"
                f" {row.latency.p99:>8.1f} {row.cpu_ms['client']:>13.2f}  {row.rates_by_round()}"
            )
    for threads in thread_counts:
        product, raw = rows[("product", threads)], rows[("raw", threads)]
        ratio = product.rate / raw.rate
        verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
        extra_cpu = product.cpu_ms["client"] - raw.cpu_ms["client"]
        print(
            f"ratio product/raw at {threads} thread(s): {ratio:.2f}"
            f"  (target >= {TARGET_RATIO}: {verdict});"
            f" the product adds {extra_cpu:.2f} ms client CPU per lifecycle"
        )


# -- requests and capacity ----------------------------------------------------------------------


@dataclass
class RequestTally:
    operations: Counter[str] = field(default_factory=Counter)
    capacity_units: float = 0.0
    capacity_per_request: list[float] = field(default_factory=list)
    responses_with_capacity: int = 0
    asked_already: int = 0
    asked_by_us: int = 0

    def writes(self) -> int:
        return sum(n for op, n in self.operations.items() if _is_write(op))

    def reads(self) -> int:
        return sum(n for op, n in self.operations.items() if not _is_write(op))


@contextmanager
def tally_requests(clients: Sequence[Any]) -> Iterator[RequestTally]:
    """Count the requests ``clients`` send and the capacity their answers report."""
    tally = RequestTally()

    def ask_for_capacity(params: dict[str, Any], **_: Any) -> None:
        if "ReturnConsumedCapacity" in params:
            tally.asked_already += 1
        else:
            params["ReturnConsumedCapacity"] = "TOTAL"
            tally.asked_by_us += 1

    def count(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        tally.operations[model.name] += 1
        consumed = parsed.get("ConsumedCapacity")
        if consumed:
            entries = consumed if isinstance(consumed, list) else [consumed]
            units = sum(entry.get("CapacityUnits", 0.0) for entry in entries)
            tally.responses_with_capacity += 1
            tally.capacity_units += units
            tally.capacity_per_request.append(units)

    hooks = (
        ("provide-client-params.dynamodb.TransactWriteItems", ask_for_capacity, "bench-ask"),
        ("provide-client-params.dynamodb.UpdateItem", ask_for_capacity, "bench-ask-update"),
        ("after-call.dynamodb", count, "bench-count"),
    )
    for ddb in clients:
        for event, handler, unique_id in hooks:
            ddb.meta.events.register(event, handler, unique_id=unique_id)
    try:
        yield tally
    finally:
        for ddb in clients:
            for event, _handler, unique_id in hooks:
                ddb.meta.events.unregister(event, unique_id=unique_id)


def product_clients(store: JobStore) -> list[Any]:
    """Every botocore client the product may use: the store's and the models' own."""
    found = [store.connection.client]
    for model in (JobModel, RepoModel):
        model_client = model._get_connection().connection.client
        if all(model_client is not known for known in found):
            found.append(model_client)
    return found


def attribute_size(value: dict[str, Any]) -> int:
    """Approximate DynamoDB size of one attribute value (the documented sizing rules)."""
    ((kind, data),) = value.items()
    if kind in ("S", "B"):
        return len(data.encode()) if isinstance(data, str) else len(data)
    if kind == "N":
        digits = len(data.lstrip("-").replace(".", "").strip("0")) or 1
        return (digits + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + attribute_size(item) for item in data)
    if kind == "M":
        return 3 + sum(1 + len(key.encode()) + attribute_size(v) for key, v in data.items())
    return sum(len(str(item)) for item in data)  # sets: rough


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def count_requests(
    lifecycles: dict[str, Lifecycle], clients: dict[str, list[Any]], count: int
) -> dict[str, RequestTally]:
    tallies = {}
    for mode in MODES:
        with tally_requests(clients[mode]) as tally:
            for job_id, repo in job_keys(f"count-{mode}", count):
                lifecycles[mode](job_id, repo)
        tallies[mode] = tally
    return tallies


def print_requests(
    tallies: dict[str, RequestTally], count: int, ddb: Any, settings: Settings
) -> None:
    for mode, tally in tallies.items():
        per_op = ", ".join(f"{op} {n / count:g}" for op, n in sorted(tally.operations.items()))
        reads, writes = tally.reads() / count, tally.writes() / count
        target = tallies["raw"].writes() / count
        print(
            f"{mode:<8} requests/lifecycle: {per_op}  -> {writes:g} write, {reads:g} read"
            f"  (target: {target:g} write, 0 read)"
        )
        if tally.responses_with_capacity:
            first = tally.capacity_per_request[: sum(tally.operations.values()) // count]
            print(
                f"{'':<8} consumed capacity reported by DynamoDB Local:"
                f" {tally.capacity_units / count:g} units/lifecycle"
                f" ({tally.responses_with_capacity} of {sum(tally.operations.values())} answers;"
                f" first lifecycle: {' + '.join(f'{u:g}' for u in first)})"
            )
        else:
            print(f"{'':<8} consumed capacity: DynamoDB Local returned none")
        print(
            f"{'':<8} ReturnConsumedCapacity: sent by the caller on {tally.asked_already},"
            f" injected by the bench on {tally.asked_by_us} request(s)"
        )
    if tallies["raw"].writes() == 3 * count:  # what the theory below is worked out for
        print_theoretical_capacity(ddb, settings)


def _is_write(operation: str) -> bool:
    return operation.startswith(("Put", "Update", "Delete", "TransactWrite", "BatchWrite"))


def print_theoretical_capacity(ddb: Any, settings: Settings) -> None:
    """What AWS would charge: 2 WCU per item per started KB in a transaction, plus indexes."""
    job = ddb.get_item(TableName=settings.tables.jobs, Key={"job_id": {"S": "count-product-00000"}})
    repo = ddb.get_item(TableName=settings.tables.repos, Key={"repo": {"S": "bench/repo-00"}})
    job_bytes, repo_bytes = item_size(job["Item"]), item_size(repo["Item"])
    per_transaction = 2 * math.ceil(job_bytes / 1024) + 2 * math.ceil(repo_bytes / 1024)
    # Index writes: create puts into by_repo and queued; activate updates by_repo, leaves
    # queued, enters active_by_deadline; pass updates by_repo, leaves active_by_deadline.
    index_writes = 2 + 3 + 2
    tables = 3 * per_transaction
    print(
        f"theoretical (AWS): finished job item {job_bytes} B, repo item {repo_bytes} B ->"
        f" {per_transaction} WCU per transaction (2 items x 2 WCU per started KB) x 3"
        f" = {tables} WCU/lifecycle on the tables,\n"
        f"  plus {index_writes} GSI writes (all-projection indexes): {index_writes} WCU at"
        f" 1 WCU/KB or {2 * index_writes} if doubled like the table writes (DynamoDB Local"
        f" doubles them) -> {tables + index_writes}-{tables + 2 * index_writes} WCU/lifecycle"
    )


# -- the state-machine layer --------------------------------------------------------------------


class _MachineJob:
    """A bare model for a per-job ``transitions`` machine (what the product avoids)."""


def machine_per_job() -> None:
    job = _MachineJob()
    Machine(
        model=job,
        states=list(JobStatus),
        transitions=[{**row, "trigger": str(row["trigger"])} for row in TRANSITION_TABLE],
        initial=JobStatus.PENDING,
        auto_transitions=False,
    )
    job.trigger(str(Trigger.ACTIVATE))  # type: ignore[attr-defined]
    job.trigger(str(Trigger.PASS))  # type: ignore[attr-defined]


def plans_per_job() -> None:
    plan(JobStatus.PENDING, Trigger.ACTIVATE, "job")
    plan(JobStatus.ACTIVE, Trigger.PASS, "job")


def per_call_seconds(function: Callable[[], object], budget: float = 1.0) -> float:
    timer = timeit.Timer(function)
    calls, seconds = timer.autorange()
    calls = max(calls, int(calls * budget / max(seconds, 1e-9)))
    return min(timer.repeat(repeat=3, number=calls)) / calls


def print_state_machine_cost(lifecycle_seconds: float) -> None:
    lookup = per_call_seconds(lambda: plan(JobStatus.ACTIVE, Trigger.PASS, "job"))
    compiled = per_call_seconds(plans_per_job)
    per_job = per_call_seconds(machine_per_job)
    print(f"plan() lookup: {1 / lookup:,.0f}/s ({lookup * 1e6:.2f} us)")
    print(
        f"per lifecycle: 2 compiled plan lookups {compiled * 1e6:.1f} us"
        f" vs Machine(...) per job + 2 triggers {per_job * 1e6:.0f} us"
        f" ({per_job / compiled:,.0f}x); a 1-thread product lifecycle takes"
        f" {lifecycle_seconds * 1e3:.1f} ms, so a machine per job would add"
        f" {per_job / lifecycle_seconds:.1%}"
    )


# -- profile ------------------------------------------------------------------------------------


PRODUCT_LAYERS = ("scheduler", "state_machines", "pynamodb")
LAYERS = (*PRODUCT_LAYERS, "bench", "botocore", "urllib3", "boto3")

Stats = dict[tuple[str, int, str], tuple[int, int, float, float, Any]]


def layer_of(filename: str, function: str) -> str:
    if filename == "~":
        return "builtins: " + function.split(" of ", maxsplit=1)[0].strip("<>")
    for layer in LAYERS:
        if f"/{layer}/" in filename:
            return layer
    return "stdlib: " + filename.rsplit("/", 1)[-1]


def profile(lifecycle: Lifecycle, prefix: str, count: int) -> Stats:
    profiler = cProfile.Profile()
    profiler.enable()
    for job_id, repo in job_keys(prefix, count):
        lifecycle(job_id, repo)
    profiler.disable()
    stats: Stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return stats


def own_time_by_layer(stats: Stats) -> dict[str, float]:
    by_layer: dict[str, float] = defaultdict(float)
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        by_layer[layer_of(filename, function)] += tottime
    return by_layer


def print_profile(lifecycles: dict[str, Lifecycle], count: int, top: int = 20) -> None:
    stats = {mode: profile(lifecycles[mode], f"profile-{mode}", count) for mode in MODES}
    layers = {mode: own_time_by_layer(stats[mode]) for mode in MODES}
    print(f"cProfile, {count} lifecycles per mode at 1 thread: own time by layer, us/lifecycle")
    print(f"  {'product':>9} {'raw':>9}  layer")
    names = sorted(
        set(layers["product"]) | set(layers["raw"]),
        key=lambda name: layers["product"].get(name, 0.0),
    )
    for name in names[::-1][:16]:
        product, raw = (layers[mode].get(name, 0.0) / count * 1e6 for mode in MODES)
        print(f"  {product:>9.0f} {raw:>9.0f}  {name}")
    product, raw = (sum(layers[mode].values()) / count * 1e6 for mode in MODES)
    print(f"  {product:>9.0f} {raw:>9.0f}  total (profiled, so slower than unprofiled)")
    print(f"product layers ({', '.join(PRODUCT_LAYERS)}): top functions by own time")
    print(f"  {'own us':>8} {'cum us':>8} {'calls':>6}  function")
    rows = [
        (key, value)
        for key, value in stats["product"].items()
        if layer_of(key[0], key[2]) in PRODUCT_LAYERS
    ]
    rows.sort(key=lambda row: row[1][2], reverse=True)
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in rows[:top]:
        place = "/".join(filename.rsplit("/", 2)[-2:])
        print(
            f"  {tottime / count * 1e6:>8.0f} {cumtime / count * 1e6:>8.0f}"
            f" {calls / count:>6.1f}  {function} ({place}:{line})"
        )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--lifecycles", type=int, default=400, help="per thread count, mode and round"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,8", help="comma-separated thread counts")
    parser.add_argument("--warmup", type=int, default=60, help="per thread count and mode")
    parser.add_argument("--count", type=int, default=20, help="lifecycles of the counting pass")
    parser.add_argument("--profile", type=int, default=0, help="cProfile N lifecycles per mode")
    parser.add_argument(
        "--full",
        action="store_true",
        help="a stack job's lifecycle: create with its trigger guard, activate (with the"
        " run's claim), pass",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="the naive lifecycle: create with its trigger guard, activate, claim, pass",
    )
    args = parser.parse_args(argv)
    args.thread_counts = [int(part) for part in args.threads.split(",") if part.strip()]
    return args


def warm_up(lifecycles: dict[str, Lifecycle], thread_counts: Sequence[int], count: int) -> None:
    for threads in thread_counts:
        for mode in MODES:
            lifecycle_batch(lifecycles[mode], f"warm-t{threads}-{mode}", count, threads)


def check_equivalent(ddb: Any, settings: Settings, prefix: str) -> None:
    """The raw requests leave the same item behind as the product's."""
    names = {}
    for mode in MODES:
        key = {"job_id": {"S": f"{prefix}-{mode}-00000"}}
        item = ddb.get_item(TableName=settings.tables.jobs, Key=key, ConsistentRead=True)["Item"]
        names[mode] = (sorted(item), item["status"]["S"], len(item["history"]["L"]))
    if names["product"] != names["raw"]:
        raise RuntimeError(f"raw requests differ from the product's: {names}")
    print(f"raw and product leave equal items: {len(names['raw'][0])} attributes, status passed")


@dataclass
class Measured:
    """What :func:`measure_all` found: rates by (mode, threads), requests by mode."""

    results: Results
    tallies: dict[str, RequestTally]
    count: int  # lifecycles of the counting pass, per mode
    lifecycles: dict[str, Lifecycle]

    def writes_per_job(self, mode: str) -> float:
        return self.tallies[mode].writes() / self.count

    def capacity_per_job(self, mode: str) -> float:
        return self.tallies[mode].capacity_units / self.count


def measure_all(
    settings: Settings,
    *,
    thread_counts: Sequence[int],
    per_batch: int,
    rounds: int,
    warmup: int,
    count: int,
    full: bool = False,
    naive: bool = False,
) -> Measured:
    """Warm-up, the timed rounds and the counting pass, on ``settings``' server.

    ``full``: the lifecycle a job of the stack goes through; ``naive``: with the claim a
    write of its own (see :func:`product_lifecycle`).
    """
    store = JobStore.from_settings(settings)
    ddb = raw_client(settings)
    templates = RequestTemplates.capture(store, settings.retention_days, full=full, naive=naive)
    lifecycles = {
        "product": product_lifecycle(store, full=full, naive=naive),
        "raw": raw_lifecycle(ddb, templates),
    }
    warm_up(lifecycles, thread_counts, warmup)
    check_equivalent(ddb, settings, f"warm-t{thread_counts[0]}")

    if naive:
        kind = "create + guard -> activate -> claim -> pass"
    elif full:
        kind = "create + guard -> activate claiming the run -> pass"
    else:
        kind = "create -> activate -> pass"
    print(
        f"\n== lifecycles ({kind}): {rounds} rounds x {per_batch} lifecycles per mode and"
        f" thread count; rate = median of rounds, latency over all rounds",
        flush=True,
    )
    results = measure(lifecycles, thread_counts, per_batch, rounds)
    clients = {"product": product_clients(store), "raw": [ddb]}
    return Measured(results, count_requests(lifecycles, clients, count), count, lifecycles)


def benchmark(args: argparse.Namespace, settings: Settings) -> None:
    measured = measure_all(
        settings,
        thread_counts=args.thread_counts,
        per_batch=args.lifecycles,
        rounds=args.rounds,
        warmup=args.warmup,
        count=args.count,
        full=args.full,
        naive=args.naive,
    )
    print_rates(measured.results, args.thread_counts)

    print(f"\n== requests and capacity per lifecycle ({args.count} lifecycles per mode)")
    print_requests(measured.tallies, args.count, raw_client(settings), settings)

    print("\n== state-machine layer")
    one_thread = [v for b in measured.results.get(("product", 1), []) for v in b.latencies]
    print_state_machine_cost(median(one_thread) if one_thread else 0.015)

    if args.profile:
        print()
        print_profile(measured.lifecycles, args.profile)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with dynamodb_local(heap_mb=512) as server:
        benchmark(args, bench_settings(server.endpoint, f"bench{uuid.uuid4().hex[:6]}-"))


if __name__ == "__main__":
    main()
