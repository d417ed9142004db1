"""Issue 23, the AWS runtime under chaos: tests/reliability/test_chaos.py's scenario on the
template's functions as AWS runs them (``aws_stack``), with the faults this runtime has:

- duplicate storms: 30% of deliveries sent 2-4 times at once; every n-th stream batch and
  every n-th completion event delivered twice (Lambda and EventBridge deliver at least once);
- function processes SIGKILLed mid-invocation (stream lanes, webhook, completion, reaper);
- records of every kind given up by the mapping (INSERT, the activation pending->active, the
  cancel active->cancelled, active->failed, the finish active->passed), as after its retries;
- jobs cancelled with ``scheduler cancel`` while they run or wait.

The books are the test's own (what the webhook answered, the CodeBuild stand-in's starts and
its continuous sampling of builds in progress), then ``scheduler doctor --json``.

Sizes: CI (60 deliveries); ``SCHEDULER_RELIABILITY=full``: 400 deliveries, more faults. The
seed is printed; ``SCHEDULER_CHAOS_SEED=<seed>`` replays a schedule.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aws_stack import AwsStack, aws_stack
from stream_mapping import job_of, kind_of

FULL = os.environ.get("SCHEDULER_RELIABILITY") == "full"
DELIVERIES = 400 if FULL else 40
KILLS = 24 if FULL else 8
DROPS_PER_KIND = 4 if FULL else 2
CANCELS = 30 if FULL else 5
FAULT_SECONDS = 120.0 if FULL else 25.0  # the longest the kills go on for
# Seconds from the last fault until every job is terminal: a failure whose record was given up
# is judged again once the reconciliation's grace for its own record passed (RETRY_GRACE_MS,
# 60 s), and an activation given up is started again at the job's deadline (10 s), by the
# reaper's next round; the rest is slack for a loaded machine.
SETTLE_BOUND = 90.0

PASS, FAIL = "chaos/pass", "chaos/fail"
LIMITS = {PASS: 3, FAIL: 2}
KINDS = ("INSERT", "pending->active", "active->cancelled", "active->failed", "active->passed")

CONFIG = (
    '[defaults]\ncheckout = false\ncommand = ["make", "test"]\n'
    "concurrency = 3\ntimeout_seconds = 10\n"
    f'[repos."{FAIL}"]\nconcurrency = 2\n'
    f'[repos."{FAIL}".retry]\nattempts = 2\non = ["exit_code"]\n'
)


def plan(repo: str, job_id: str, attempt: int) -> tuple[float, str]:
    """A build's length and end: seeded by the attempt, so a replay builds the same."""
    rng = random.Random(f"{job_id}#{attempt}")
    return rng.uniform(0.3, 2.0), "FAILED" if repo == FAIL else "SUCCEEDED"


@dataclass
class Faults:
    """What the test did to the stack, and when the last of it happened."""

    kills: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    cancelled: set[str] = field(default_factory=set)
    cancel_answers: Counter[int] = field(default_factory=Counter)
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> None:
        with self.lock:
            self.last = time.monotonic()


def ends_as_planned(job: Any, repo: str, cancelled: set[str]) -> bool:
    """A pass job passed, a fail job failed its builds twice (one automatic retry), unless
    the operator cancelled it."""
    end = (str(job.status), job.reason)
    if job.job_id in cancelled and end[0] == "cancelled":
        return True
    if repo == PASS:
        return end == ("passed", None)
    return end == ("failed", "exit_code") and int(job.attempt) == 2


def drop_rules(stack: AwsStack, faults: Faults) -> None:
    """Give up the first ``DROPS_PER_KIND`` records of each kind (one per job). Activations
    are given up in the pass repository only: a job whose activation is lost holds its slot
    until its deadline and the reaper's start grace (timeout + 60 s), and the fail
    repository's failures (whose lost records cost the reconciliation's 60 s grace) should
    not wait behind that: the two recoveries run side by side, not one after the other."""
    seen: set[str] = set()
    offered: set[str] = set()

    def rule(record: dict[str, Any]) -> bool:
        # A record is given up on its first delivery only (as if every try failed before the
        # function acted), so each job's expected attempts stay known: a record given up on a
        # retry, after an invocation killed between the claim and StartBuild, costs the job a
        # start_failed attempt (test_issue_reproductions.py holds that case on its own).
        if record["eventID"] in offered:
            return False
        offered.add(record["eventID"])
        kind, job = kind_of(record), job_of(record)
        image = record["dynamodb"].get("NewImage") or {}
        repo = image.get("repo", {}).get("S")
        with faults.lock:
            if kind not in KINDS or faults.dropped[kind] >= DROPS_PER_KIND or job in seen:
                return False
            if kind == "pending->active" and repo != PASS:
                return False
            faults.dropped[kind] += 1
            seen.add(job)
            faults.last = time.monotonic()
        return True

    stack.mapping.drop_when(rule)


def killer(stack: AwsStack, faults: Faults, rng: random.Random, stop: threading.Event) -> None:
    """SIGKILL function processes mid-invocation at seeded moments until ``KILLS`` are done,
    taking the functions in turn (a stream lane every other kill), or until ``stop``."""
    turns = [
        stack.stream,
        stack.webhook,
        stack.stream,
        stack.completion,
        stack.stream,
        stack.reaper,
    ]
    turn = 0
    while sum(faults.kills.values()) < KILLS and not stop.wait(rng.uniform(0.3, 1.0)):
        pool = turns[turn % len(turns)]
        # Wait (a little) for the function to be in an invocation: then kill it mid-way.
        for _ in range(100):
            if stop.is_set() or any(m.busy for m in pool.members):
                break
            time.sleep(0.02)
        if pool.kill_busy():
            faults.kills[pool.name] += 1
            faults.mark()
            turn += 1


def canceller(stack: AwsStack, faults: Faults, rng: random.Random, stop: threading.Event) -> None:
    """``scheduler cancel`` of passing jobs that run (else that wait), until ``CANCELS`` are
    done, or ``stop`` is set and no such job is left, or ``FAULT_SECONDS`` passed."""
    began = time.monotonic()
    while len(faults.cancelled) < CANCELS and time.monotonic() - began < FAULT_SECONDS:
        time.sleep(rng.uniform(0.1, 0.4))
        jobs = [j for j in stack.jobs().values() if j.repo == PASS]
        running = sorted(j.job_id for j in jobs if str(j.status) == "active")
        waiting = sorted(j.job_id for j in jobs if str(j.status) == "pending")
        if not running and not waiting:
            if stop.is_set():
                return
            continue
        victim = rng.choice(running or waiting)
        done = stack.cli("cancel", victim, "--json")
        faults.cancel_answers[done.returncode] += 1
        if done.returncode == 0:
            faults.cancelled.add(victim)
            faults.mark()


@pytest.mark.timeout(1500 if FULL else 300)
def test_the_aws_runtime_keeps_the_books_under_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("SCHEDULER_CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    sends: list[tuple[str, str, str]] = []
    for n in range(DELIVERIES):
        item = (f"aws-chaos-{n}", rng.choice([PASS, PASS, FAIL]), f"{n + 1:040x}")
        sends += [item] * (rng.randint(2, 4) if rng.random() < 0.3 else 1)
    print(f"\naws chaos: seed={seed} deliveries={DELIVERIES} sends={len(sends)}")
    faults = Faults()
    with aws_stack(tmp_path, CONFIG, plan=plan, limits=LIMITS.__getitem__) as stack:
        stack.mapping.duplicate_every = 7
        stack.duplicate_events_every = 5
        drop_rules(stack, faults)
        jobs_of: dict[str, set[str]] = {}
        repo_of: dict[str, str] = {}
        lock = threading.Lock()

        def send(item: tuple[str, str, str]) -> None:
            delivery, repo, sha = item
            job_id = stack.deliver_until_accepted(repo, delivery, sha)
            with lock:
                jobs_of.setdefault(delivery, set()).add(job_id)
                repo_of[job_id] = repo

        stop, stop_kills = threading.Event(), threading.Event()
        kills = threading.Thread(target=killer, args=(stack, faults, rng, stop_kills), daemon=True)
        cancels = threading.Thread(
            target=canceller, args=(stack, faults, random.Random(seed + 1), stop), daemon=True
        )
        began = time.monotonic()
        kills.start()
        cancels.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                for future in [pool.submit(send, item) for item in sends]:
                    future.result()
            sent_in = time.monotonic() - began
        finally:
            stop.set()
            cancels.join(120)
            # The kills go on for up to FAULT_SECONDS, so that a fast run gets its share too.
            kills.join(max(0.0, FAULT_SECONDS - (time.monotonic() - began)))
            stop_kills.set()
            kills.join(30)
        faults_for = time.monotonic() - began

        # Settled: every job ended as its builds decide (or as the operator's cancel did),
        # automatic retries included, or legitimately queued (its repository's slots all held
        # by jobs whose builds run), or running its build. The bound is on that; the queues
        # then drain (a long one in the full size) before the books are read.
        def wrong_ends(*, queued_ok: bool) -> list[tuple[str, str, object, int]]:
            jobs = stack.jobs()
            running = {b.attempt_key for b in stack.codebuild.in_progress()}
            active = Counter(j.repo for j in jobs.values() if str(j.status) == "active")
            return [
                (job_id, str(job.status), job.reason, int(job.attempt))
                for job_id, job in jobs.items()
                if not ends_as_planned(job, repo_of.get(job_id, ""), faults.cancelled)
                and not (
                    queued_ok
                    and (
                        (str(job.status) == "pending" and active[job.repo] >= LIMITS[job.repo])
                        or (str(job.status) == "active" and (job_id, int(job.attempt)) in running)
                    )
                )
            ]

        def wait(what: str, timeout: float, *, queued_ok: bool) -> None:
            deadline, shown = time.monotonic() + timeout, 0.0
            while (wrong := wrong_ends(queued_ok=queued_ok)) or (
                not queued_ok and stack.codebuild.in_progress()
            ):
                if time.monotonic() > deadline:
                    stories = "\n".join(stack.explain(job_id) for job_id, *_ in wrong[:8])
                    counts = Counter((repo_of.get(j, "?"), status) for j, status, *_ in wrong)
                    repos = {
                        name: {k: v for k, v in repo.attribute_values.items() if k != "history"}
                        for name, repo in stack.repos().items()
                        if "/" in name
                    }
                    raise AssertionError(
                        f"{what} (seed {seed}): {dict(counts)}\n{stories}\nrepos {repos}"
                        f"\ndoctor {stack.doctor()}\nreaper {stack.books.reaper_answers[-3:]}"
                    )
                if os.environ.get("AWS_CHAOS_DEBUG") and time.monotonic() - shown > 10:
                    shown = time.monotonic()
                    print(f"{shown - began:.0f}s unsettled: {wrong}")
                time.sleep(0.25)

        wait("not settled", SETTLE_BOUND + 60, queued_ok=True)
        # Every record the mapping gave up is a fault too (by age, in a backlog, or after its
        # retries), not only the ones the test chose.
        last_drop = max((d.at for d in stack.mapping.books.dropped), default=began)
        settled = time.monotonic() - max(faults.last, began, last_drop)
        wait("queues not drained", 900 if FULL else 120, queued_ok=False)
        jobs = stack.jobs()
        books = stack.codebuild.books
        found = stack.doctor()

        # Every distinct delivery made one job, whichever send.
        assert len(jobs_of) == DELIVERIES and all(len(ids) == 1 for ids in jobs_of.values())
        assert set(jobs) == set(repo_of), set(jobs) ^ set(repo_of)
        # Each attempt started at most once (one build per job attempt, whatever the calls).
        doubles = {key: n for key, n in books.builds_of.items() if n > 1}
        assert not doubles, doubles
        assert stack.codebuild.shape_errors == []
        # Never more builds in progress than a repository's limit (checked at every start and
        # sampled every 20 ms).
        assert books.over_limit == [], books.over_limit[:5]
        assert not stack.codebuild.in_progress()
        assert found["healthy"], {k: v for k, v in found.items() if k not in ("jobs",)}
        assert settled <= SETTLE_BOUND, settled
        dropped = stack.mapping.books.dropped
        print(
            f"aws chaos: jobs {len(jobs)} (sent in {sent_in:.0f}s, faults for {faults_for:.0f}s,"
            f" longest stream invocation {stack.mapping.books.longest_invocation:.1f}s);"
            " faults injected"
            f" {sum(faults.kills.values()) + sum(faults.dropped.values()) + len(faults.cancelled)}"
            f" (kills {dict(faults.kills)}, cancels {len(faults.cancelled)}"
            f" of {sum(faults.cancel_answers.values())} asked,"
            f" duplicate batches {stack.mapping.books.duplicates},"
            f" duplicate completion events {stack.books.events_duplicated});"
            f" records dropped {len(dropped)} (chosen {dict(faults.dropped)}, by the mapping"
            f" {Counter(d.condition for d in dropped if d.condition != 'chosen')});"
            f" stranded 0; over the limit 0 (max in progress {dict(books.most_running)},"
            f" {books.samples} samples); doubles 0 (StartBuild calls"
            f" {sum(books.start_calls.values())} for {len(books.builds_of)} builds);"
            f" last fault -> every job settled {settled:.1f}s; doctor healthy"
        )


@pytest.mark.timeout(900 if FULL else 300)
def test_the_aws_runtime_carries_on_after_a_database_kill(tmp_path: Path) -> None:
    """DynamoDB Local (on disk) SIGKILLed while deliveries flow and started again 2 s later:
    the functions, the mapping and the reaper carry on by themselves. Deliveries answered
    just before the kill are delivered again (DynamoDB Local, unlike DynamoDB, can lose
    writes it acknowledged); the books are then those of the chaos test."""
    deliveries = 120 if FULL else 24
    rng = random.Random(int(os.environ.get("SCHEDULER_CHAOS_SEED") or random.randrange(2**32)))
    sends = [
        (f"db-kill-{n}", rng.choice([PASS, PASS, FAIL]), f"{n + 1:040x}") for n in range(deliveries)
    ]
    with aws_stack(
        tmp_path, CONFIG, plan=plan, limits=LIMITS.__getitem__, persistent=True
    ) as stack:
        accepted: dict[str, tuple[float, str, str]] = {}
        jobs_of: dict[str, set[str]] = {}
        repo_of: dict[str, str] = {}
        lock = threading.Lock()

        def send(item: tuple[str, str, str]) -> None:
            delivery, repo, sha = item
            asked_at = time.monotonic()
            job_id = stack.deliver_until_accepted(repo, delivery, sha)
            with lock:
                accepted[delivery] = (asked_at, repo, sha)
                jobs_of.setdefault(delivery, set()).add(job_id)
                repo_of[job_id] = repo

        began = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(send, item) for item in sends]
            while len(accepted) < deliveries // 3:
                time.sleep(0.05)
            killed_at = time.monotonic()
            stack.kill_database()
            restarted_at = time.monotonic()
            for future in futures:
                future.result()
        # Asked before the database was back: sent again (GitHub's redelivery), since DynamoDB
        # Local can lose what it acknowledged shortly before the kill (~3 s idle, more on a
        # loaded machine), and an answer read just after the kill may have been acknowledged
        # just before it. The same job must answer, whether it survived or is made again.
        at_risk = [(d, r, s) for d, (at, r, s) in accepted.items() if at <= restarted_at]
        for delivery, repo, sha in at_risk:
            send((delivery, repo, sha))
        last_fault = time.monotonic()

        deadline = last_fault + SETTLE_BOUND + 60
        while [
            j
            for j in stack.jobs().values()
            if not ends_as_planned(j, repo_of.get(j.job_id, ""), set())
        ] or stack.codebuild.in_progress():
            if time.monotonic() > deadline:
                wrong = [
                    j.job_id
                    for j in stack.jobs().values()
                    if not ends_as_planned(j, repo_of.get(j.job_id, ""), set())
                ]
                raise AssertionError(
                    "not settled:\n" + "\n".join(stack.explain(j) for j in wrong[:8])
                )
            time.sleep(0.25)
        settled = time.monotonic() - last_fault
        jobs = stack.jobs()
        books = stack.codebuild.books
        found = stack.doctor()
        assert all(len(ids) == 1 for ids in jobs_of.values()), jobs_of
        lost = {
            d: round(at - killed_at, 2)  # when it was first asked, from the kill
            for d, (at, _, _) in accepted.items()
            if f"gh-{d}" not in jobs
        }
        assert len(jobs) == deliveries, lost
        doubles = {key: n for key, n in books.builds_of.items() if n > 1}
        assert not doubles, doubles
        assert books.over_limit == [], books.over_limit[:5]
        assert found["healthy"], {k: v for k, v in found.items() if k != "jobs"}
        assert settled <= SETTLE_BOUND, settled
        print(
            f"\naws database kill: jobs {len(jobs)}; database down"
            f" {restarted_at - killed_at:.1f}s (restart included) {killed_at - began:.0f}s in;"
            f" deliveries sent again {len(at_risk)};"
            f" stream function errors {stack.mapping.books.function_errors}; records dropped"
            f" {len(stack.mapping.books.dropped)}; over the limit 0; doubles 0;"
            f" last fault -> every job settled {settled:.1f}s; doctor healthy"
        )
