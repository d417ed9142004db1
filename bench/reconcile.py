"""The reconciliation's cost per round: requests and milliseconds, against how many repositories
have work, never how many exist or how much history they hold.

    .venv/bin/python bench/reconcile.py [--repos 1000] [--busy 10] [--rounds 20]

On a fresh DynamoDB Local (in memory): ``--repos`` repositories each with one finished job (the
history), of which ``--busy`` also have work that stays (concurrency 1: one active job and five
queued behind it, so every round visits them and finds them full). Warm-up rounds first clear
the idle repositories' queue marks (what the first rounds after such history do once); then
``--rounds`` rounds of :class:`~scheduler.stream.reconciler.Reconciler` (held slots, owed retry
verdicts, the queue sweep), each timed and its requests counted on the product's own botocore
clients. Figures: the median of rounds.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import bench_settings, dynamodb_local
from lifecycle import new_job, product_clients, tally_requests
from stats import median

from scheduler.db.store import JobStore
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.reconciler import Reconciler
from scheduler.stream.sweeper import QueueSweeper
from state_machines import Trigger

QUEUED_PER_BUSY_REPO = 5
THREADS = 8


def idle_repo(store: JobStore, repo: str) -> None:
    """A repository with history and no work: one job, created, run and passed."""
    pending = store.create(new_job(f"{repo}-done", repo))
    active = store.activate(pending, slot_limit=1)
    store.transition(active, Trigger.PASS, actor="bench")


def busy_repo(store: JobStore, repo: str) -> None:
    """A repository with work that stays: its one slot held, five jobs queued behind it."""
    idle_repo(store, repo)
    store.activate(store.create(new_job(f"{repo}-running", repo)), slot_limit=1)
    for n in range(QUEUED_PER_BUSY_REPO):
        store.create(new_job(f"{repo}-queued-{n}", repo))


def populate(store: JobStore, repos: int, busy: int) -> list[str]:
    names = [f"bench/repo-{n:05d}" for n in range(repos)]
    busy_names = names[:: max(1, repos // busy)][:busy]
    chosen = set(busy_names)
    began = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        done = [
            pool.submit(busy_repo if name in chosen else idle_repo, store, name) for name in names
        ]
        for future in done:
            future.result()
    print(
        f"{repos} repositories ({busy} with work) made in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    return busy_names


def reconciler(store: JobStore) -> Reconciler:
    """The reconciliation as both runtimes compose it (concurrency 1, no retry policy)."""
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 1)
    sweeper = QueueSweeper(store, dispatcher.promote)
    return Reconciler(store, dispatcher.promote, sweeper, None, redrive=dispatcher.redrive_failed)


def measure(settings: Settings, repos: int, busy: int, rounds: int) -> dict[str, Any]:
    store = JobStore.from_settings(settings)
    busy_names = populate(store, repos, busy)
    engine = reconciler(store)
    warm = 0
    while True:  # until only the repositories with work stay marked
        engine.run_once()
        warm += 1
        marked, _ = store.reads.repos_with_queue(after=None, limit=repos + 1)
        if len(marked) <= busy or warm > 4 * (repos // 100 + 1):
            break
    assert sorted(repo for repo, _ in marked) == sorted(busy_names), marked
    clients = product_clients(store)
    requests: list[int] = []
    millis: list[float] = []
    operations: Counter[str] = Counter()
    for _ in range(rounds):
        with tally_requests(clients) as tally:
            began = time.perf_counter()
            done = engine.run_once()
            millis.append((time.perf_counter() - began) * 1000)
        assert not done.promoted and not done.released, done  # nothing to do but look
        requests.append(sum(tally.operations.values()))
        operations.update(tally.operations)
    return {
        "repos": repos,
        "busy": busy,
        "warmup_rounds": warm,
        "requests": median(requests),
        "ms": median(millis),
        "ms_max": max(millis),
        "per_operation": {op: n / rounds for op, n in sorted(operations.items())},
    }


def run(repos: int = 1000, busy: int = 10, rounds: int = 20) -> dict[str, Any]:
    """Start DynamoDB Local, measure, stop it (what ``bench/report.py`` calls)."""
    with dynamodb_local(heap_mb=512) as server:
        settings = bench_settings(server.endpoint, f"bench{uuid.uuid4().hex[:6]}-")
        return measure(settings, repos, busy, rounds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repos", type=int, default=1000, help="repositories, all with history")
    parser.add_argument("--busy", type=int, default=10, help="of which this many have work")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    found = run(args.repos, args.busy, args.rounds)
    print(
        f"\nreconciliation, {found['repos']} repositories of which {found['busy']} have work"
        f" (after {found['warmup_rounds']} warm-up rounds):"
        f" {found['requests']:g} requests and {found['ms']:.1f} ms per round"
        f" (median of {args.rounds}; slowest {found['ms_max']:.1f} ms)"
    )
    print("requests per round by operation:", found["per_operation"])


if __name__ == "__main__":
    main()
