"""Concurrency groups (a pipeline step's ``concurrency_group``) against DynamoDB Local: one job
of a repository's group holds a slot at a time, however many threads and processes race for
it, and the group is free again as soon as its holder holds no slot (nothing gives it back)."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scheduler.db import models
from scheduler.db.models import JobModel, RepoModel, group_key
from scheduler.db.store import HandOff, JobState, JobStore, NewJob, RunClaimed
from scheduler.errors import GroupBusy, RepositoryFull
from scheduler.settings import Settings
from state_machines import JobStatus, TransitionConflict, Trigger

REPO = "octo-org/deploys"
LIMIT = 10  # the repository's own limit never decides here: the group does


def grouped(job_id: str, group: str | None = "deploy", repo: str = REPO) -> NewJob:
    return NewJob(
        job_id=job_id,
        repo=repo,
        event="push",
        sha="d" * 40,
        timeout_seconds=600,
        concurrency_group=group,
    )


def holder(repo: str = REPO, group: str = "deploy") -> str | None:
    try:
        return RepoModel.get(group_key(repo, group), consistent_read=True).holder
    except RepoModel.DoesNotExist:
        return None


def activate(store: JobStore, job_id: str) -> JobState:
    return store.activate(store.state(job_id), slot_limit=LIMIT)


def test_one_job_of_a_group_holds_a_slot_at_a_time(store: JobStore) -> None:
    for job_id in ("deploy-1", "deploy-2"):
        store.create(grouped(job_id))
    store.create(grouped("lint", group=None))

    activate(store, "deploy-1")
    with pytest.raises(GroupBusy) as refused:
        activate(store, "deploy-2")
    assert refused.value.group == "deploy" and refused.value.repo == REPO
    activate(store, "lint")  # a job of no group is not held back by one

    assert holder() == "deploy-1"
    assert RepoModel.get(REPO, consistent_read=True).running == 2
    store.transition(store.state("deploy-1"), Trigger.PASS, actor="test")
    activate(store, "deploy-2")  # free as soon as its holder ended: nothing gave it back
    assert holder() == "deploy-2"
    assert store.state("deploy-2").status is JobStatus.ACTIVE


def test_a_refused_take_writes_nothing(store: JobStore) -> None:
    store.create(grouped("deploy-1"))
    waiting = store.create(grouped("deploy-2"))
    activate(store, "deploy-1")
    before = RepoModel.get(REPO, consistent_read=True).serialize()

    with pytest.raises(GroupBusy):
        store.activate(waiting, slot_limit=LIMIT)

    assert store.state("deploy-2") == waiting  # still pending, same version
    item = JobModel.get("deploy-2", consistent_read=True)
    assert [entry.dest for entry in item.history] == ["pending"]
    assert item.queue_key is not None  # still queued
    assert RepoModel.get(REPO, consistent_read=True).serialize() == before
    assert holder() == "deploy-1"


def test_groups_are_per_repository_and_per_name(store: JobStore) -> None:
    store.create(grouped("deploy-1"))
    store.create(grouped("docs", group="docs"))
    store.create(grouped("other-repo-deploy", repo="octo-org/web"))
    for job_id in ("deploy-1", "docs", "other-repo-deploy"):
        activate(store, job_id)
    assert holder() == "deploy-1"
    assert holder(group="docs") == "docs"
    assert holder(repo="octo-org/web") == "other-repo-deploy"


@pytest.mark.parametrize("trigger", [Trigger.CANCEL, Trigger.TIME_OUT])
def test_a_holder_whose_run_may_still_go_keeps_its_group_until_its_slot_is_freed(
    store: JobStore, trigger: Trigger
) -> None:
    store.create(grouped("deploy-1"))
    store.create(grouped("deploy-2"))
    activate(store, "deploy-1")
    store.transition(store.state("deploy-1"), trigger, actor="test")
    assert JobModel.get("deploy-1", consistent_read=True).slot_held

    with pytest.raises(GroupBusy):
        activate(store, "deploy-2")  # the old deploy may still be running
    store.release_slot(store.state("deploy-1"))
    activate(store, "deploy-2")
    assert holder() == "deploy-2"


def test_a_retried_holder_takes_its_group_again(store: JobStore) -> None:
    store.create(grouped("deploy-1"))
    store.create(grouped("deploy-2"))
    activate(store, "deploy-1")
    failed = store.transition(store.state("deploy-1"), Trigger.FAIL, actor="test")
    store.transition(failed, Trigger.RETRY, actor="test")

    again = activate(store, "deploy-1")  # it names itself: its own pending state suffices

    assert again.attempt == 2 and holder() == "deploy-1"
    with pytest.raises(GroupBusy):
        activate(store, "deploy-2")


def test_a_holder_gone_from_the_table_frees_its_group(store: JobStore) -> None:
    store.create(grouped("deploy-1"))
    store.create(grouped("deploy-2"))
    activate(store, "deploy-1")
    store.transition(store.state("deploy-1"), Trigger.PASS, actor="test")
    JobModel.get("deploy-1").delete()  # its record expired (TTL)

    activate(store, "deploy-2")
    assert holder() == "deploy-2"


def test_a_full_repository_is_refused_as_full_not_as_a_busy_group(store: JobStore) -> None:
    store.create(grouped("deploy-1"))
    store.create(grouped("deploy-2"))
    store.activate(store.state("deploy-1"), slot_limit=1)
    with pytest.raises(RepositoryFull) as refused:
        store.activate(store.state("deploy-2"), slot_limit=1)
    assert not isinstance(refused.value, GroupBusy)


def test_a_job_of_a_group_is_never_handed_a_slot(store: JobStore) -> None:
    store.create(grouped("lint", group=None))
    waiting = store.create(grouped("deploy-1"))
    running = activate(store, "lint")
    hand_off = HandOff(waiting, RunClaimed("run-1"), LIMIT)
    with pytest.raises(ValueError, match="concurrency group"):
        store.finish_run(
            "lint", REPO, running.attempt, Trigger.PASS, actor="test", hand_off=hand_off
        )
    assert store.state("lint").status is JobStatus.ACTIVE  # nothing was written


def _take_after_barrier(store: JobStore, job: JobState, barrier: Any) -> str:
    barrier.wait()
    try:
        store.activate(job, slot_limit=LIMIT, actor=threading.current_thread().name)
    except GroupBusy:
        return "busy"
    except TransitionConflict:
        return "conflict"
    return "activated"


def test_sixteen_threads_racing_for_a_free_group_get_one_holder(store: JobStore) -> None:
    store.create(grouped("deploy-0"))
    activate(store, "deploy-0")
    store.transition(store.state("deploy-0"), Trigger.PASS, actor="test")  # an old holder
    jobs = [store.create(grouped(f"deploy-{n}")) for n in range(1, 17)]
    barrier = threading.Barrier(16)

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda job: _take_after_barrier(store, job, barrier), jobs))

    assert Counter(outcomes) == {"activated": 1, "busy": 15}
    winner = jobs[outcomes.index("activated")].job_id
    assert holder() == winner
    active = [job.job_id for job in jobs if store.state(job.job_id).status is JobStatus.ACTIVE]
    assert active == [winner]
    assert RepoModel.get(REPO, consistent_read=True).running == 1


def _process_main(job: JobState, barrier: Any, results: Any) -> None:
    """Runs in a fresh (spawned) interpreter: settings come from the environment."""
    settings = Settings.from_env()
    models.bind(settings)
    results.put((job.job_id, _take_after_barrier(JobStore.from_settings(settings), job, barrier)))


def test_four_processes_racing_for_a_group_get_one_holder(store: JobStore) -> None:
    jobs = [store.create(grouped(f"deploy-{n}")) for n in range(4)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_process_main, args=(job, barrier, results)) for job in jobs
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert Counter(outcomes.values()) == {"activated": 1, "busy": 3}
    assert holder() == next(job_id for job_id, o in outcomes.items() if o == "activated")


GROUPS = ("deploy", "release")


class _Holders:
    """What the workers saw: how many jobs of each group they held at once, at most.

    A worker counts a group taken after its activation committed, and given back before the
    write that frees it is sent, so two holders counted at once mean two held at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def took(self, group: str | None) -> None:
        if group is None:
            return
        with self._lock:
            self._now[group] += 1
            self.most[group] = max(self.most[group], self._now[group])

    def gave_back(self, group: str | None) -> None:
        if group is not None:
            with self._lock:
                self._now[group] -= 1


def test_workers_churning_two_groups_never_hold_one_twice(store: JobStore) -> None:
    rng = random.Random(11)
    groups = {f"job-{n:02d}": rng.choice((*GROUPS, None)) for n in range(60)}
    for job_id, group in groups.items():
        store.create(grouped(job_id, group=group))
    holders = _Holders()
    ended: set[str] = set()
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def finish(job: JobState, worker_rng: random.Random) -> None:
        """The activator ends what it activated: pass, fail (retried once), or a cancel
        whose slot (and group) it frees after a while, as the stream would once stopped."""
        group = groups[job.job_id]
        time.sleep(worker_rng.uniform(0, 0.01))
        trigger = worker_rng.choice([Trigger.PASS, Trigger.FAIL, Trigger.CANCEL])
        if trigger is Trigger.CANCEL:
            cancelled = store.transition(job, Trigger.CANCEL, actor="worker")
            time.sleep(worker_rng.uniform(0, 0.01))
            holders.gave_back(group)
            store.release_slot(cancelled)
        else:
            holders.gave_back(group)
            done = store.transition(job, trigger, actor="worker")
            if trigger is Trigger.FAIL and done.attempt == 1:
                store.transition(done, Trigger.RETRY, actor="worker")
                return
        with lock:
            ended.add(job.job_id)

    def work(seed: int) -> None:
        worker_rng = random.Random(seed)
        try:
            while True:
                with lock:
                    left = [job_id for job_id in groups if job_id not in ended]
                if not left:
                    return
                job = store.state(worker_rng.choice(left))
                if job.status is not JobStatus.PENDING:
                    time.sleep(0.002)
                    continue
                try:
                    active = store.activate(job, slot_limit=4, actor=f"worker-{seed}")
                except (GroupBusy, RepositoryFull, TransitionConflict):
                    continue
                holders.took(groups[job.job_id])
                with lock:
                    runs[f"{job.job_id}#{active.attempt}"] += 1
                finish(active, worker_rng)
        except BaseException as exc:
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))

    assert errors == []
    assert set(runs.values()) == {1}  # each attempt activated exactly once
    assert all(holders.most[group] == 1 for group in GROUPS), holders.most
    counters = RepoModel.get(REPO, consistent_read=True)
    truth = Counter(job.status for job in JobModel.by_repo.query(REPO))
    assert counters.running == 0 and truth["active"] == 0
    for status in JobStatus:
        assert getattr(counters, f"n_{status.value}") == truth[status.value], status
