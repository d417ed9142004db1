"""Transitions raced for real: threads and processes against one DynamoDB Local server."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scheduler.db import models
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.errors import RepositoryFull
from scheduler.settings import Settings
from state_machines import JobStatus, TransitionConflict, Trigger


def new_job(job_id: str, repo: str = "octo-org/api") -> NewJob:
    return NewJob(job_id=job_id, repo=repo, event="push", sha="b" * 40, timeout_seconds=600)


def _activate_after_barrier(store: JobStore, job: JobState, barrier: Any) -> str:
    barrier.wait()
    try:
        store.activate(job, slot_limit=100, actor=threading.current_thread().name)
    except TransitionConflict:
        return "conflict"
    except RepositoryFull:
        return "full"
    return "activated"


def test_sixteen_threads_activate_one_job_exactly_once(store: JobStore) -> None:
    job = store.create(new_job("race-threads"))
    barrier = threading.Barrier(16)
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: _activate_after_barrier(store, job, barrier), range(16)))
    assert Counter(outcomes) == {"activated": 1, "conflict": 15}
    item = JobModel.get("race-threads", consistent_read=True)
    assert [h.dest for h in item.history] == ["pending", "active"]
    assert RepoModel.get("octo-org/api", consistent_read=True).running == 1


def _process_main(job: JobState, barrier: Any, results: Any) -> None:
    """Runs in a fresh (spawned) interpreter: settings come from the environment."""
    settings = Settings.from_env()
    models.bind(settings)
    results.put(_activate_after_barrier(JobStore.from_settings(settings), job, barrier))


def test_four_processes_activate_one_job_exactly_once(store: JobStore) -> None:
    job = store.create(new_job("race-processes"))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_process_main, args=(job, barrier, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert Counter(outcomes) == {"activated": 1, "conflict": 3}
    assert RepoModel.get("octo-org/api", consistent_read=True).running == 1


REPOS = [f"org/repo-{n}" for n in range(5)]
LIMIT = 2


def _true_counts(repo: str) -> Counter[str]:
    return Counter(job.status for job in JobModel.by_repo.query(repo))


def test_many_workers_never_exceed_the_limit_and_counters_stay_exact(store: JobStore) -> None:
    rng = random.Random(7)
    jobs = {f"job-{n:03d}": rng.choice(REPOS) for n in range(300)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: store.create(new_job(item[0], item[1])), jobs.items()))

    remaining = list(jobs)
    lock = threading.Lock()
    done = threading.Event()
    observed_max: Counter[str] = Counter()
    activations: Counter[tuple[str, int]] = Counter()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            while not done.is_set():
                for repo in REPOS:
                    running = RepoModel.get(repo, consistent_read=True).running
                    active = JobModel.by_repo.count(
                        repo, filter_condition=JobModel.status == "active"
                    )
                    observed_max[repo] = max(observed_max[repo], int(running or 0), active)
        except BaseException as exc:
            errors.append(exc)

    def work(seed: int) -> None:
        worker_rng = random.Random(seed)
        try:
            while True:
                with lock:
                    if not remaining:
                        return
                    job_id = worker_rng.choice(remaining)
                job = store.state(job_id)
                try:
                    if job.status is JobStatus.PENDING:
                        result = store.activate(job, slot_limit=LIMIT, actor=f"worker-{seed}")
                        with lock:
                            activations[(job_id, result.attempt)] += 1
                    elif job.status is JobStatus.ACTIVE:
                        trigger = worker_rng.choice([Trigger.PASS, Trigger.FAIL, Trigger.CANCEL])
                        store.transition(job, trigger, actor=f"worker-{seed}")
                    elif store.get(job_id).slot_held:
                        # A cancelled run keeps its slot until the stream stopped it: here the
                        # worker plays the stream and frees it (racing the other workers).
                        store.release_slot(job)
                    else:
                        with lock:
                            if job_id in remaining:
                                remaining.remove(job_id)
                except (TransitionConflict, RepositoryFull):
                    pass  # another worker moved it first, or no slot yet: normal
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    done.set()
    watcher.join(30)

    assert errors == []
    assert set(observed_max) == set(REPOS) and max(observed_max.values()) <= LIMIT
    assert set(activations.values()) == {1} and len(activations) == 300
    for repo in REPOS:
        truth = _true_counts(repo)
        counters = RepoModel.get(repo, consistent_read=True)
        assert counters.running == 0 == truth["active"]
        for status in JobStatus:
            assert getattr(counters, f"n_{status.value}") == truth[status.value], (repo, status)
    assert sum(sum(_true_counts(repo).values()) for repo in REPOS) == 300


def test_full_repository_under_race_grants_exactly_limit_slots(store: JobStore) -> None:
    pending = [store.create(new_job(f"slot-{n}", "org/tight")) for n in range(12)]
    barrier = threading.Barrier(12)

    def activate(job: JobState) -> str:
        barrier.wait()
        try:
            store.activate(job, slot_limit=LIMIT)
        except RepositoryFull:
            return "full"
        return "activated"

    with ThreadPoolExecutor(12) as pool:
        outcomes = Counter(pool.map(activate, pending))
    assert outcomes == {"activated": LIMIT, "full": 12 - LIMIT}
    assert RepoModel.get("org/tight", consistent_read=True).running == LIMIT
