"""``status`` latency for a repository with 1,000 jobs against one with 50,000 (same page size).

The question: does the cost of a status query grow with a repository's history? It must not:
a page is one ``Query`` on the ``by_repo`` index (newest first, ``Limit`` = page + 1), so it
should cost the same however many older jobs sit behind it. Target: p50 ratio < 1.5.

On a fresh in-memory DynamoDB Local started by this script, two repositories are loaded with
``BatchWriteItem`` (items built by ``JobModel(...).serialize()``, so they are shaped exactly
like the product's: finished jobs with a three-entry history, 90% passed, 8% failed, 2%
cancelled), plus their counters items. Then, in rounds that alternate the order of the two
repositories, it times the query layer (``Queries.jobs``: first page, a second page via the
cursor, and a ``--status failed`` page), ``Queries.stats``, and optionally the whole CLI
(``scheduler status --json`` as a subprocess, start-up included).

Run from the project root::

    .venv/bin/python bench/status.py [--small 1000] [--large 50000] [--samples 300] [--cli 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from common import bench_settings, dynamodb_local
from stats import summary

from scheduler.db.clients import client as settings_client
from scheduler.db.models import HistoryEntry, JobModel, RepoModel
from scheduler.db.queries import Queries
from scheduler.settings import Settings

PAGE = 20
TARGET_RATIO = 1.5
FIRST_PAGE = f"status (first page of {PAGE})"
SECOND_PAGE = "status (second page)"
# The target is the unfiltered listing. A filtered page costs what it takes to find a
# page of matches (bounded by Queries' max_evaluated): that depends on how rare the matches
# are near the top, not on the length of the history; it is printed for information.
TARGET_CASES = {FIRST_PAGE, SECOND_PAGE}
SHA = "0123456789abcdef0123456789abcdef01234567"
START_MS = 1_700_000_000_000
STEP_MS = 60_000  # one job a minute: 50k jobs is about five weeks of history
SCRIPT = Path(sys.executable).with_name("scheduler")


def entry(**fields: Any) -> HistoryEntry:
    return HistoryEntry(**fields)  # type: ignore[no-untyped-call]  # PynamoDB's MapAttribute


def job_item(repo: str, index: int) -> dict[str, Any]:
    """The ``index``-th job of ``repo`` as a DynamoDB item, serialised by the model."""
    received = START_MS + index * STEP_MS
    activated, finished = received + 2_000, received + 95_000
    roll = index % 50
    status = "failed" if roll < 4 else "cancelled" if roll == 4 else "passed"
    history = [
        entry(dest="pending", at=received, actor="webhook", attempt=1),
        entry(source="pending", dest="active", at=activated, actor="scheduler", attempt=1),
        entry(source="active", dest=status, at=finished, actor="runner", attempt=1),
    ]
    job = JobModel(
        f"{repo.replace('/', '-')}-{index:06d}",
        repo=repo,
        event="push" if index % 3 else "pull_request",
        ref="refs/heads/main",
        branch="main" if index % 4 else "dev",
        sha=SHA,
        pr_number=None if index % 3 else index,
        sender="octocat",
        delivery_id=f"delivery-{repo}-{index}",
        status=status,
        attempt=1,
        version=2,
        priority=0,
        timeout_seconds=1800,
        received_at=received,
        updated_at=finished,
        activated_at=activated,
        started_at=activated,
        finished_at=finished,
        reason="exit_code" if status == "failed" else None,
        exit_code=1 if status == "failed" else None,
        history=history,
        expires_at=datetime.fromtimestamp(finished / 1000 + 30 * 86_400, tz=UTC),
    )
    return job.serialize()


def counters_item(repo: str, count: int) -> dict[str, Any]:
    failed = sum(1 for i in range(count) if i % 50 < 4)
    cancelled = sum(1 for i in range(count) if i % 50 == 4)
    last = count - 1
    return RepoModel(
        repo,
        running=0,
        slot_limit=2,
        n_passed=count - failed - cancelled,
        n_failed=failed,
        n_cancelled=cancelled,
        last_job_id=f"{repo.replace('/', '-')}-{last:06d}",
        last_received_at=START_MS + last * STEP_MS,
    ).serialize()


def load(ddb: Any, settings: Settings, repo: str, count: int, threads: int = 4) -> float:
    """Write ``count`` jobs of ``repo`` in batches of 25; returns the seconds it took."""
    started = time.perf_counter()
    table = settings.tables.jobs

    def write(first: int) -> None:
        requests = [
            {"PutRequest": {"Item": job_item(repo, index)}}
            for index in range(first, min(first + 25, count))
        ]
        while requests:
            answer = ddb.batch_write_item(RequestItems={table: requests})
            requests = answer.get("UnprocessedItems", {}).get(table, [])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(0, count, 25)))
    ddb.put_item(TableName=settings.tables.repos, Item=counters_item(repo, count))
    return time.perf_counter() - started


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(
    cases: dict[str, dict[str, Callable[[], object]]],
    samples: int,
    rounds: int = 6,
    warmup: int = 20,
) -> dict[str, dict[str, list[float]]]:
    """Time every (case, repository) pair, in rounds that alternate the repositories' order."""
    results: dict[str, dict[str, list[float]]] = {
        case: {repo: [] for repo in calls} for case, calls in cases.items()
    }
    per_round = max(1, samples // rounds)
    for case, calls in cases.items():
        for call in calls.values():  # warm-up: connections, JIT of the server
            for _ in range(warmup):
                call()
        for round_number in range(rounds):
            order = list(calls.items())
            if round_number % 2:
                order.reverse()
            for repo, call in order:
                results[case][repo].extend(timed(call) for _ in range(per_round))
    return results


def report(results: dict[str, dict[str, list[float]]], small: str, large: str) -> bool:
    print(f"\n{'case':<28}{'repository':<22}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}")
    ok = True
    for case, by_repo in results.items():
        latency = {repo: summary(samples) for repo, samples in by_repo.items()}
        for repo, figures in latency.items():
            print(f"{case:<28}{repo:<22}{figures.n:>6}{figures.p50:>9.2f}{figures.p99:>9.2f}")
        p50_ratio = latency[large].p50 / latency[small].p50
        p99_ratio = latency[large].p99 / latency[small].p99
        line = f"{'':<28}ratio large/small: p50 {p50_ratio:.2f}, p99 {p99_ratio:.2f}"
        if case in TARGET_CASES:
            verdict = "ok" if p50_ratio < TARGET_RATIO else "OVER TARGET"
            line += f" (target p50 < {TARGET_RATIO}: {verdict})"
            ok = ok and p50_ratio < TARGET_RATIO
        print(line)
    return ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=1000, help="jobs of the small repository")
    parser.add_argument("--large", type=int, default=50_000, help="jobs of the large repository")
    parser.add_argument("--samples", type=int, default=300, help="timed calls per case and repo")
    parser.add_argument("--cli", type=int, default=20, help="CLI runs per repo (0: skip)")
    parser.add_argument("--threads", type=int, default=4, help="loader threads")
    return parser.parse_args(argv)


def repositories(args: argparse.Namespace) -> tuple[str, str]:
    return f"bench/small-{args.small}", f"bench/large-{args.large}"


def measure_scaling(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per call by case and repository (:func:`repositories`), on a fresh in-memory
    DynamoDB Local loaded as ``args`` (see :func:`parse_args`) say."""
    small, large = repositories(args)
    with dynamodb_local(heap_mb=1024) as server:
        endpoint = server.endpoint
        settings = bench_settings(endpoint)
        ddb = settings_client("dynamodb", settings, max_pool_connections=16)
        for repo, count in ((small, args.small), (large, args.large)):
            seconds = load(ddb, settings, repo, count, args.threads)
            print(
                f"loaded {count:>6} jobs of {repo} in {seconds:.1f}s ({count / seconds:.0f}/s)",
                flush=True,
            )

        queries = Queries()
        second_page = {repo: queries.jobs(repo, limit=PAGE).next_cursor for repo in (small, large)}
        for repo in (small, large):
            assert len(queries.jobs(repo, limit=PAGE).jobs) == PAGE
        cases: dict[str, dict[str, Callable[[], object]]] = {
            FIRST_PAGE: {repo: partial(queries.jobs, repo, limit=PAGE) for repo in (small, large)},
            SECOND_PAGE: {
                repo: partial(queries.jobs, repo, limit=PAGE, cursor=second_page[repo])
                for repo in (small, large)
            },
            "status --status failed": {
                repo: partial(queries.jobs, repo, status="failed", limit=PAGE)
                for repo in (small, large)
            },
            "stats": {repo: partial(queries.stats, repo) for repo in (small, large)},
        }
        results = measure(cases, args.samples)
        if args.cli:
            env = {
                **os.environ,
                "SCHEDULER_DYNAMODB_ENDPOINT": endpoint,
                "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
                "SCHEDULER_REPOS_TABLE": settings.tables.repos,
            }

            def cli(repo: str) -> Callable[[], object]:
                command = [str(SCRIPT), "status", repo, "--limit", str(PAGE), "--json"]
                return lambda: subprocess.run(command, env=env, check=True, capture_output=True)

            results |= measure(
                {"CLI status --json (process)": {repo: cli(repo) for repo in (small, large)}},
                args.cli,
                rounds=2,
                warmup=2,
            )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = measure_scaling(args)
    ok = report(results, *repositories(args))
    print(f"\nthreads alive: {threading.active_count()}; verdict: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
