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

``--grouped``: what a step's ``concurrency_group`` costs. The two modes are then **grouped**
and **plain**, both through the product (no raw side): the same lifecycle, the grouped job
carrying a concurrency group. Its activation reads the group's holder (a consistent
``GetItem``), then in its transaction checks that holder holds no slot (a ``ConditionCheck``)
and names itself in the group's item (one more ``Update``), as in steady state. To measure the
cost and never a refusal, each grouped job has a group of its own (``deploy-<job id>``) whose
item, made before the batch (``BatchWriteItem``, not timed), already names an earlier holder
that has ended: a passed job's item, copied from a real one. So no two threads ever share a
group, and every timed activation pays the holder read, the check and the update. The counting
pass also counts the items of each transaction by kind and splits the consumed capacity into
read units (``GetItem``, asked for by the bench too) and write units. The rate table then adds
DynamoDB Local's CPU time per lifecycle (it serves requests about one at a time, so at 8
threads its cost per lifecycle bounds the rate), and the transactions the store retried for a
``TransactionConflict`` (its ``refused_writes`` counter), so that a slower grouped mode shows
whether it paid in work or in contention.

With ``--grouped`` a last part measures a group's **hand-over** on one thread: a holder's
finish (``JobStore.transition(..., PASS)``), then ``Dispatcher.promote(repo)``, which
activates the job waiting for the group (slot limit 8: only the group held it back); the
latency runs from the finish's commit (its return) to ``promote``'s return, the waiter active.
Its baseline is an ungrouped job promoted into the slot its holder's finish freed (slot limit
1). Each hand-over's waiter is the next holder, so the group always names an ended job; the
two kinds alternate by round, ``--handovers`` each in all.

Run from the project root::

    .venv/bin/python bench/lifecycle.py [--lifecycles 400] [--rounds 3] [--threads 1,8]
        [--full | --naive] [--grouped [--handovers 100]]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time
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
from stats import median, ms, summary
from transitions import Machine

from scheduler import metrics
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import (
    DAY_MS,
    Clock,
    JobState,
    JobStore,
    NewJob,
    RunClaimed,
    TriggerGuard,
    group_key,
    system_clock,
)
from scheduler.errors import RepositoryFull
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from state_machines import TRANSITION_TABLE, JobStatus, Trigger, plan

MODES = ("product", "raw")
GROUPED_MODES = ("grouped", "plain")  # --grouped: both through the product
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

Jobs = Sequence[tuple[str, str]]
"""(job id, repository) of the lifecycles of a batch."""


@dataclass(frozen=True)
class Mode:
    """One way of running lifecycles, and what its batch needs made first (not timed)."""

    run: Lifecycle
    prepare: Callable[[Jobs], None] | None = None

    def jobs(self, prefix: str, count: int) -> list[tuple[str, str]]:
        """The (job id, repository) of a batch of ``count``, prepared."""
        jobs = job_keys(prefix, count)
        if self.prepare is not None:
            self.prepare(jobs)
        return jobs


# -- the two ways of running a lifecycle ------------------------------------------------------


def new_job(job_id: str, repo: str, group: str | None = None) -> NewJob:
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
        concurrency_group=group,
    )


def group_of(job_id: str) -> str:
    """A grouped lifecycle's concurrency group: its own (no other job, no other thread)."""
    return f"deploy-{job_id}"


def holder_of(job_id: str) -> str:
    """The ended job the group of ``job_id`` names before its lifecycle (its last holder)."""
    return f"{job_id}-holder"


def product_lifecycle(
    store: JobStore, *, full: bool = False, naive: bool = False, grouped: bool = False
) -> Lifecycle:
    """The store's calls of one lifecycle; ``full``: as a job of the local stack makes them.

    That is a create with its trigger guard (what the webhook writes), the activation that
    claims the run, and the finish: three writes. ``naive`` (implies ``full``): the run's claim
    is a write of its own (``claim_run``, one conditional ``UpdateItem``): four writes.
    ``grouped``: the job carries its concurrency group (:func:`group_of`), so its activation
    reads the group's holder first and takes the group in its transaction.
    """
    full = full or naive

    def run(job_id: str, repo: str) -> None:
        guard = TriggerGuard(f"{repo}#push#{job_id}", GUARD_WINDOW_MS) if full else None
        group = group_of(job_id) if grouped else None
        pending = store.create(new_job(job_id, repo, group), guard=guard)
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


@dataclass(frozen=True)
class EndedHolders:
    """Makes, before a grouped batch, each job's group item naming an earlier holder that has
    ended: the holder is a copy of a real passed job's item (its id :func:`holder_of`), so the
    activation's check reads an item of a real job's size. Written raw, in batches of 25."""

    ddb: Any
    settings: Settings
    passed: dict[str, Any]  # a passed job's item, DynamoDB JSON

    @classmethod
    def copying(cls, store: JobStore, ddb: Any, settings: Settings) -> EndedHolders:
        """Holders copied from the item of one plain lifecycle's job, run now."""
        product_lifecycle(store)("holder-original", "bench/repo-00")
        key = {"job_id": {"S": "holder-original"}}
        item = ddb.get_item(TableName=settings.tables.jobs, Key=key, ConsistentRead=True)["Item"]
        if item["status"]["S"] != JobStatus.PASSED.value or "slot_held" in item:
            raise RuntimeError(f"the holder to copy did not end with no slot held: {item}")
        return cls(ddb, settings, item)

    def __call__(self, jobs: Jobs) -> None:
        requests = []
        for job_id, repo in jobs:
            holder = holder_of(job_id)
            requests.append(
                (
                    self.settings.tables.jobs,
                    {**self.passed, "job_id": {"S": holder}, "repo": {"S": repo}},
                )
            )
            group = {"repo": {"S": group_key(repo, group_of(job_id))}, "holder": {"S": holder}}
            requests.append((self.settings.tables.repos, group))
        for start in range(0, len(requests), 25):
            pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for table, item in requests[start : start + 25]:
                pending[table].append({"PutRequest": {"Item": item}})
            while pending:
                answer = self.ddb.batch_write_item(RequestItems=dict(pending))
                pending = answer.get("UnprocessedItems") or {}


# -- timing -----------------------------------------------------------------------------------


def job_keys(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:05d}", f"bench/repo-{i % REPOS:02d}") for i in range(count)]


def lifecycle_batch(
    mode: Mode, prefix: str, count: int, threads: int, *, server: psutil.Process | None = None
) -> Batch:
    """``count`` lifecycles over ``threads`` threads; CPU time of this (the client) process,
    and of DynamoDB Local's if ``server`` is given.

    The batch's preparation (``mode.prepare``) is done first, outside the timed batch."""
    jobs = mode.jobs(prefix, count)
    processes = {"client": psutil.Process()}
    if server is not None:
        processes["server"] = server
    return run_batch(lambda n: mode.run(*jobs[n]), count, threads, processes)


Conflicts = dict[tuple[str, int], int]
"""Transactions the store retried for a ``TransactionConflict``, by (mode, threads)."""


def retried_conflicts() -> float:
    """The store's count so far of transactions cancelled by a conflict (and retried)."""
    key = (metrics.REFUSED, (("kind", "transaction_conflict"),))
    return metrics.RECORDER.snapshot().counters.get(key, 0.0)


def measure(
    lifecycles: dict[str, Mode],
    modes: Sequence[str],
    thread_counts: Sequence[int],
    per_batch: int,
    rounds: int,
    *,
    conflicts: Conflicts | None = None,
    server: psutil.Process | None = None,
) -> Results:
    """The timed rounds; into ``conflicts``, the transactions the store retried."""
    seen: Conflicts = conflicts if conflicts is not None else {}

    def batch(mode: str, threads: int, prefix: str) -> Batch:
        before = retried_conflicts()
        made = lifecycle_batch(lifecycles[mode], prefix, per_batch, threads, server=server)
        seen[(mode, threads)] = seen.get((mode, threads), 0) + int(retried_conflicts() - before)
        return made

    return alternating_rounds(modes, thread_counts, rounds, batch)


def print_rates(
    results: Results, thread_counts: Sequence[int], modes: Sequence[str] = MODES
) -> None:
    rows = figures(results)
    with_server = all("server" in row.cpu_ms for row in rows.values())
    print(
        f"{'mode':<8} {'threads':>7} {'lifecycles/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'client CPU ms':>13}{' server CPU ms' if with_server else ''}  lifecycles/s by round"
    )
    for threads in thread_counts:
        for mode in modes:
            row = rows[(mode, threads)]
            server = f" {row.cpu_ms['server']:>13.2f}" if with_server else ""
            print(
                f"{mode:<8} {threads:>7} {row.rate:>12.1f} {row.latency.p50:>8.1f}"
                f" {row.latency.p99:>8.1f} {row.cpu_ms['client']:>13.2f}{server}"
                f"  {row.rates_by_round()}"
            )
    if tuple(modes) == GROUPED_MODES:
        for threads in thread_counts:
            grouped, plain = rows[("grouped", threads)], rows[("plain", threads)]
            print(
                f"ratio grouped/plain at {threads} thread(s): rate"
                f" {grouped.rate / plain.rate:.2f},"
                f" p50 {grouped.latency.p50 / plain.latency.p50:.2f},"
                f" p99 {grouped.latency.p99 / plain.latency.p99:.2f}, client CPU"
                f" {grouped.cpu_ms['client'] / plain.cpu_ms['client']:.2f}"
                f" ({grouped.cpu_ms['client'] - plain.cpu_ms['client']:+.2f} ms per lifecycle)"
                + (
                    f", server CPU {grouped.cpu_ms['server'] / plain.cpu_ms['server']:.2f}"
                    f" ({grouped.cpu_ms['server'] - plain.cpu_ms['server']:+.2f} ms)"
                    if with_server
                    else ""
                )
            )
        return
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
    units_by_operation: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    transact_items: Counter[str] = field(default_factory=Counter)  # by kind: Put, Update, ...

    def writes(self) -> int:
        return sum(n for op, n in self.operations.items() if _is_write(op))

    def reads(self) -> int:
        return sum(n for op, n in self.operations.items() if not _is_write(op))

    def write_units(self) -> float:
        return sum(u for op, u in self.units_by_operation.items() if _is_write(op))

    def read_units(self) -> float:
        return sum(u for op, u in self.units_by_operation.items() if not _is_write(op))


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

    def count_items(params: dict[str, Any], **_: Any) -> None:
        for item in params.get("TransactItems", []):
            tally.transact_items.update(list(item))  # one key per item: its kind

    def count(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        tally.operations[model.name] += 1
        consumed = parsed.get("ConsumedCapacity")
        if consumed:
            entries = consumed if isinstance(consumed, list) else [consumed]
            units = sum(entry.get("CapacityUnits", 0.0) for entry in entries)
            tally.responses_with_capacity += 1
            tally.capacity_units += units
            tally.capacity_per_request.append(units)
            tally.units_by_operation[model.name] += units

    hooks = (
        ("provide-client-params.dynamodb.TransactWriteItems", ask_for_capacity, "bench-ask"),
        ("provide-client-params.dynamodb.UpdateItem", ask_for_capacity, "bench-ask-update"),
        ("provide-client-params.dynamodb.GetItem", ask_for_capacity, "bench-ask-get"),
        ("provide-client-params.dynamodb.Query", ask_for_capacity, "bench-ask-query"),
        ("provide-client-params.dynamodb.TransactWriteItems", count_items, "bench-items"),
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
    lifecycles: dict[str, Mode],
    clients: dict[str, list[Any]],
    count: int,
    modes: Sequence[str] = MODES,
) -> dict[str, RequestTally]:
    tallies = {}
    for mode in modes:
        jobs = lifecycles[mode].jobs(f"count-{mode}", count)
        with tally_requests(clients[mode]) as tally:
            for job_id, repo in jobs:
                lifecycles[mode].run(job_id, repo)
        tallies[mode] = tally
    return tallies


def print_requests(
    tallies: dict[str, RequestTally], count: int, ddb: Any, settings: Settings
) -> None:
    for mode, tally in tallies.items():
        per_op = ", ".join(f"{op} {n / count:g}" for op, n in sorted(tally.operations.items()))
        reads, writes = tally.reads() / count, tally.writes() / count
        target = (
            f"target: {tallies['raw'].writes() / count:g} write, 0 read"
            if "raw" in tallies
            else f"items of its transactions: {_per(tally.transact_items, count)}"
        )
        print(
            f"{mode:<8} requests/lifecycle: {per_op}  -> {writes:g} write, {reads:g} read"
            f"  ({target})"
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
    if "raw" in tallies and tallies["raw"].writes() == 3 * count:  # what the theory is for
        print_theoretical_capacity(ddb, settings)
    if "grouped" in tallies:
        print_grouped_costs(tallies["grouped"], tallies["plain"], count)


def _per(counts: Counter[str], count: int) -> str:
    return ", ".join(f"{kind} {n / count:g}" for kind, n in sorted(counts.items()))


def print_grouped_costs(grouped: RequestTally, plain: RequestTally, count: int) -> None:
    """Capacity per lifecycle, read and write units apart, and what the group adds."""
    print(f"{'':<8} {'requests':>9} {'reads':>6} {'writes':>6} {'RCU':>6} {'WCU':>6} {'units':>6}")
    for mode, tally in (("grouped", grouped), ("plain", plain)):
        print(
            f"{mode:<8} {sum(tally.operations.values()) / count:>9g} {tally.reads() / count:>6g}"
            f" {tally.writes() / count:>6g} {tally.read_units() / count:>6g}"
            f" {tally.write_units() / count:>6g} {tally.capacity_units / count:>6g}"
        )
    extra = grouped.operations - plain.operations
    items = grouped.transact_items - plain.transact_items
    print(
        f"the group adds per lifecycle: requests {_per(extra, count) or 'none'};"
        f" transaction items {_per(items, count) or 'none'};"
        f" {(grouped.read_units() - plain.read_units()) / count:+g} RCU,"
        f" {(grouped.write_units() - plain.write_units()) / count:+g} WCU"
    )
    ratios = [
        ("requests", sum(grouped.operations.values()), sum(plain.operations.values())),
        ("write units", grouped.write_units(), plain.write_units()),
        ("all units", grouped.capacity_units, plain.capacity_units),
    ]
    print(
        "ratio grouped/plain: "
        + ", ".join(f"{what} {mine / theirs:.2f}" for what, mine, theirs in ratios if theirs)
    )


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


def profile(mode: Mode, prefix: str, count: int) -> Stats:
    jobs = mode.jobs(prefix, count)
    profiler = cProfile.Profile()
    profiler.enable()
    for job_id, repo in jobs:
        mode.run(job_id, repo)
    profiler.disable()
    stats: Stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return stats


def own_time_by_layer(stats: Stats) -> dict[str, float]:
    by_layer: dict[str, float] = defaultdict(float)
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        by_layer[layer_of(filename, function)] += tottime
    return by_layer


def print_profile(
    lifecycles: dict[str, Mode], count: int, modes: Sequence[str] = MODES, top: int = 20
) -> None:
    """Own time by layer of the two modes side by side; the first mode's top functions."""
    first, second = modes
    stats = {mode: profile(lifecycles[mode], f"profile-{mode}", count) for mode in modes}
    layers = {mode: own_time_by_layer(stats[mode]) for mode in modes}
    print(f"cProfile, {count} lifecycles per mode at 1 thread: own time by layer, us/lifecycle")
    print(f"  {first:>9} {second:>9}  layer")
    names = sorted(
        set(layers[first]) | set(layers[second]),
        key=lambda name: layers[first].get(name, 0.0),
    )
    for name in names[::-1][:16]:
        mine, theirs = (layers[mode].get(name, 0.0) / count * 1e6 for mode in modes)
        print(f"  {mine:>9.0f} {theirs:>9.0f}  {name}")
    mine, theirs = (sum(layers[mode].values()) / count * 1e6 for mode in modes)
    print(f"  {mine:>9.0f} {theirs:>9.0f}  total (profiled, so slower than unprofiled)")
    print(f"{first}: product layers ({', '.join(PRODUCT_LAYERS)}), top functions by own time")
    print(f"  {'own us':>8} {'cum us':>8} {'calls':>6}  function")
    rows = [
        (key, value)
        for key, value in stats[first].items()
        if layer_of(key[0], key[2]) in PRODUCT_LAYERS
    ]
    rows.sort(key=lambda row: row[1][2], reverse=True)
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in rows[:top]:
        place = "/".join(filename.rsplit("/", 2)[-2:])
        print(
            f"  {tottime / count * 1e6:>8.0f} {cumtime / count * 1e6:>8.0f}"
            f" {calls / count:>6.1f}  {function} ({place}:{line})"
        )


# -- a group's hand-over ------------------------------------------------------------------------

HAND_OVER_LIMITS = {"grouped": 8, "plain": 1}
"""Slot limit by kind: a grouped waiter is held back by its group only, a plain one by the slot."""


class HandOverChain:
    """One repository where a holder holds a slot and the next job waits: for ``grouped`` in
    the holder's concurrency group, for ``plain`` for the repository's one slot. A hand-over
    is the holder's finish, then ``Dispatcher.promote(repo)``; the job promoted holds next
    (so a grouped waiter's group always names a holder that has just ended)."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, kind: str) -> None:
        self.store, self.dispatcher, self.kind = store, dispatcher, kind
        self.repo = f"bench/hand-over-{kind}"
        self.made = 0
        first = self._create()
        self.holder = store.activate(first, slot_limit=HAND_OVER_LIMITS[kind])
        self.waiting = self._create()
        if dispatcher.promote(self.repo) != 0:  # the check: it waits while the holder holds
            raise RuntimeError(f"a {kind} waiter was promoted while its holder held")

    def _create(self) -> JobState:
        self.made += 1
        group = "deploy" if self.kind == "grouped" else None
        return self.store.create(
            new_job(f"hand-over-{self.kind}-{self.made:05d}", self.repo, group)
        )

    def finish(self) -> None:
        """The holder passes: its finish's commit (group and slot free from now on)."""
        self.store.transition(self.holder, Trigger.PASS, actor="runner")

    def promote(self) -> int:
        """The promotion after the finish (the hand-over ends when it returns)."""
        return int(self.dispatcher.promote(self.repo))

    def advance(self, promoted: int) -> None:
        """After the promotion: it activated the waiter, which holds now; a new job waits
        (not part of the hand-over)."""
        self.holder = self.store.state(self.waiting.job_id)
        if promoted != 1 or self.holder.status is not JobStatus.ACTIVE:
            raise RuntimeError(f"{self.kind} hand-over promoted {promoted}: {self.holder}")
        self.waiting = self._create()


@dataclass
class HandOvers:
    """Hand-over latencies by kind (seconds: finish commit -> promote returned), and the
    finishes' own; the requests and capacity of the counted promotions."""

    latencies: dict[str, list[list[float]]]  # by kind, one list per round
    finishes: dict[str, list[float]]
    promotions: dict[str, RequestTally]
    counted: int


def measure_hand_overs(store: JobStore, count: int, rounds: int, counted: int = 10) -> HandOvers:
    """``count`` hand-overs per kind in ``rounds`` rounds (order alternating), after a warm-up;
    then ``counted`` more per kind with every request of their promotions counted."""
    dispatcher = Dispatcher(
        store, slot_limit_for=lambda repo: HAND_OVER_LIMITS[repo.rsplit("-", 1)[-1]]
    )
    kinds = ("grouped", "plain")
    chains = {kind: HandOverChain(store, dispatcher, kind) for kind in kinds}
    latencies: dict[str, list[list[float]]] = {kind: [] for kind in kinds}
    finishes: dict[str, list[float]] = {kind: [] for kind in kinds}

    def hand_over(chain: HandOverChain) -> tuple[float, float]:
        began = time.perf_counter()
        chain.finish()
        committed = time.perf_counter()
        promoted = chain.promote()
        done = time.perf_counter()
        chain.advance(promoted)
        return committed - began, done - committed

    for _ in range(5):  # warm-up
        for chain in chains.values():
            hand_over(chain)
    per_round = math.ceil(count / rounds)
    for round_no in range(rounds):
        for kind in kinds if round_no % 2 == 0 else kinds[::-1]:
            timed = [hand_over(chains[kind]) for _ in range(per_round)]
            finishes[kind] += [finish for finish, _ in timed]
            latencies[kind].append([promoted for _, promoted in timed])
    promotions = {}
    for kind, chain in chains.items():
        with tally_requests(product_clients(store)) as everything:
            promotions[kind] = RequestTally()
            for _ in range(counted):
                chain.finish()
                before = Counter(everything.operations)
                units = dict(everything.units_by_operation)
                promoted = chain.promote()
                promotions[kind].operations += everything.operations - before
                for operation, total in everything.units_by_operation.items():
                    added = total - units.get(operation, 0.0)
                    promotions[kind].units_by_operation[operation] += added
                    promotions[kind].capacity_units += added
                chain.advance(promoted)
    return HandOvers(latencies, finishes, promotions, counted)


def print_hand_overs(found: HandOvers) -> None:
    print(
        f"{'kind':<8} {'limit':>5} {'n':>4} {'p50 ms':>7} {'p99 ms':>7} {'finish p50':>10}"
        f"  p50 ms by round"
    )
    rows = {}
    for kind, by_round in found.latencies.items():
        rows[kind] = summary(ms(value for values in by_round for value in values))
        finish = median(ms(found.finishes[kind]))
        rounds = " / ".join(f"{median(ms(values)):.1f}" for values in by_round)
        print(
            f"{kind:<8} {HAND_OVER_LIMITS[kind]:>5} {rows[kind].n:>4} {rows[kind].p50:>7.1f}"
            f" {rows[kind].p99:>7.1f} {finish:>10.1f}  {rounds}"
        )
    grouped, plain = rows["grouped"], rows["plain"]
    print(
        f"ratio grouped/plain: p50 {grouped.p50 / plain.p50:.2f}, p99"
        f" {grouped.p99 / plain.p99:.2f} ({grouped.p50 - plain.p50:+.1f} ms at p50)"
    )
    for kind, tally in found.promotions.items():
        print(
            f"{kind:<8} requests per promotion: {_per(tally.operations, found.counted)};"
            f" {tally.read_units() / found.counted:g} RCU,"
            f" {tally.write_units() / found.counted:g} WCU"
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
    parser.add_argument(
        "--grouped",
        action="store_true",
        help="grouped vs plain lifecycles (each job of its own concurrency group, whose last"
        " holder has ended), then a group's hand-over vs a slot's",
    )
    parser.add_argument(
        "--handovers", type=int, default=100, help="with --grouped: hand-overs per kind in all"
    )
    args = parser.parse_args(argv)
    args.thread_counts = [int(part) for part in args.threads.split(",") if part.strip()]
    return args


def warm_up(
    lifecycles: dict[str, Mode], modes: Sequence[str], thread_counts: Sequence[int], count: int
) -> None:
    for threads in thread_counts:
        for mode in modes:
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


def check_grouped(ddb: Any, settings: Settings, prefix: str) -> None:
    """A grouped lifecycle took its group from the ended holder: the group's item names it."""
    job_id, repo = job_keys(f"{prefix}-grouped", 1)[0]
    key = {"job_id": {"S": job_id}}
    item = ddb.get_item(TableName=settings.tables.jobs, Key=key, ConsistentRead=True)["Item"]
    group = {"repo": {"S": group_key(repo, group_of(job_id))}}
    holder = ddb.get_item(TableName=settings.tables.repos, Key=group, ConsistentRead=True)["Item"]
    seen = (item["status"]["S"], item["concurrency_group"]["S"], holder["holder"]["S"])
    if seen != (JobStatus.PASSED.value, group_of(job_id), job_id):
        raise RuntimeError(f"a grouped lifecycle did not take its group: {seen}")
    print(f"grouped lifecycles take their group: {group['repo']['S']} names {job_id}, passed")


@dataclass
class Measured:
    """What :func:`measure_all` found: rates by (mode, threads), requests by mode."""

    results: Results
    tallies: dict[str, RequestTally]
    count: int  # lifecycles of the counting pass, per mode
    lifecycles: dict[str, Mode]
    modes: tuple[str, ...] = MODES
    conflicts: Conflicts = field(default_factory=dict)  # retried in the timed rounds

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
    grouped: bool = False,
    server_pid: int | None = None,
) -> Measured:
    """Warm-up, the timed rounds and the counting pass, on ``settings``' server.

    ``full``: the lifecycle a job of the stack goes through; ``naive``: with the claim a
    write of its own (see :func:`product_lifecycle`). ``grouped``: the modes are grouped
    and plain lifecycles (:data:`GROUPED_MODES`), not product and raw. ``server_pid``:
    DynamoDB Local's process, whose CPU time per lifecycle is then measured too.
    """
    store = JobStore.from_settings(settings)
    ddb = raw_client(settings)
    lifecycles: dict[str, Mode]
    if grouped:
        modes = GROUPED_MODES
        lifecycles = {
            "grouped": Mode(
                product_lifecycle(store, full=full, naive=naive, grouped=True),
                EndedHolders.copying(store, ddb, settings),
            ),
            "plain": Mode(product_lifecycle(store, full=full, naive=naive)),
        }
        clients = {mode: product_clients(store) for mode in modes}
    else:
        modes = MODES
        retention = settings.retention_days
        templates = RequestTemplates.capture(store, retention, full=full, naive=naive)
        lifecycles = {
            "product": Mode(product_lifecycle(store, full=full, naive=naive)),
            "raw": Mode(raw_lifecycle(ddb, templates)),
        }
        clients = {"product": product_clients(store), "raw": [ddb]}
    warm_up(lifecycles, modes, thread_counts, warmup)
    if grouped:
        check_grouped(ddb, settings, f"warm-t{thread_counts[0]}")
    else:
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
    conflicts: Conflicts = {}
    server = psutil.Process(server_pid) if server_pid is not None else None
    results = measure(
        lifecycles, modes, thread_counts, per_batch, rounds, conflicts=conflicts, server=server
    )
    tallies = count_requests(lifecycles, clients, count, modes)
    return Measured(results, tallies, count, lifecycles, modes, conflicts)


def benchmark(args: argparse.Namespace, settings: Settings, server_pid: int | None = None) -> None:
    measured = measure_all(
        settings,
        server_pid=server_pid,
        thread_counts=args.thread_counts,
        per_batch=args.lifecycles,
        rounds=args.rounds,
        warmup=args.warmup,
        count=args.count,
        full=args.full,
        naive=args.naive,
        grouped=args.grouped,
    )
    print_rates(measured.results, args.thread_counts, measured.modes)
    per_batch = args.lifecycles * args.rounds
    print(
        "transactions the store retried for a TransactionConflict, per 100 lifecycles: "
        + ", ".join(
            f"{mode} {measured.conflicts.get((mode, threads), 0) * 100 / per_batch:.1f}"
            f" at {threads} thread(s)"
            for threads in args.thread_counts
            for mode in measured.modes
            if mode != "raw"
        )
    )

    print(f"\n== requests and capacity per lifecycle ({args.count} lifecycles per mode)")
    print_requests(measured.tallies, args.count, raw_client(settings), settings)

    if args.grouped:
        print(
            f"\n== a group's hand-over: finish commit -> Dispatcher.promote(repo) returned, the"
            f" waiter active; {args.handovers} per kind in {args.rounds} rounds, 1 thread",
            flush=True,
        )
        print_hand_overs(
            measure_hand_overs(JobStore.from_settings(settings), args.handovers, args.rounds)
        )
    else:
        print("\n== state-machine layer")
        one_thread = [v for b in measured.results.get(("product", 1), []) for v in b.latencies]
        print_state_machine_cost(median(one_thread) if one_thread else 0.015)

    if args.profile:
        print()
        print_profile(measured.lifecycles, args.profile, measured.modes)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with dynamodb_local(heap_mb=512) as server:
        settings = bench_settings(server.endpoint, f"bench{uuid.uuid4().hex[:6]}-")
        benchmark(args, settings, server.pid)


if __name__ == "__main__":
    main()
