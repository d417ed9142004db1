"""Check runs per job: the state each transition asks for (pure), the ordered and coalescing
send queue, GitHub's rate limits, and every request checked by the GitHub API stand-in."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from github_api_stand_in import GitHubStandIn

from scheduler.db.models import JobModel
from scheduler.db.store import JobState
from scheduler.github.api import GitHubApi
from scheduler.github.app_auth import AppAuth
from scheduler.github.checks import (
    OUTPUT_MAX_CHARS,
    CheckRunObserver,
    CheckRuns,
    CheckState,
    check_for,
    merge,
    text_within,
)
from scheduler.github.rate_limits import SendQueue
from scheduler.stream.decide import Transition
from state_machines import JobStatus

REPO = "octo-org/api"
SHA = "a" * 40
T0 = 1_700_000_000_000  # epoch ms
DASHBOARD = "https://ci.example.com"

W, P, A = JobStatus.WAITING, JobStatus.PENDING, JobStatus.ACTIVE
OK, KO, X = JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED
B = JobStatus.BLOCKED


def image(status: JobStatus, *, attempt: int = 1, **fields: Any) -> JobModel:
    return JobModel(
        "gh-1",
        repo=REPO,
        event="push",
        sha=SHA,
        status=status.value,
        attempt=attempt,
        version=1,
        timeout_seconds=60,
        received_at=T0,
        **fields,
    )


def transition(source: JobStatus | None, dest: JobStatus, **fields: Any) -> Transition:
    model = image(dest, **fields)
    return Transition(source, dest, JobState.from_model(model), "1", model)


def state(source: JobStatus | None, dest: JobStatus, **fields: Any) -> CheckState:
    found = check_for(
        transition(source, dest, **fields),
        name="ci/scheduler",
        details_url=f"{DASHBOARD}/x",
        detail=fields.get("detail"),
    )
    assert found is not None
    return found


# -- the state of each transition (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dest", "fields", "expected"),
    [
        (None, P, {}, ("queued", None, True)),
        (P, A, {"started_at": T0 + 1000}, ("in_progress", None, False)),
        (A, OK, {"started_at": T0, "finished_at": T0 + 5000}, ("completed", "success", False)),
        (A, KO, {"reason": "exit_code", "finished_at": T0}, ("completed", "failure", False)),
        (A, KO, {"reason": "timed_out", "finished_at": T0}, ("completed", "timed_out", False)),
        (A, KO, {"reason": "runner_lost", "finished_at": T0}, ("completed", "failure", False)),
        (A, X, {"reason": "cancelled_by_operator"}, ("completed", "cancelled", False)),
        (A, X, {"reason": "superseded"}, ("completed", "cancelled", False)),
        (P, X, {"reason": "superseded"}, ("completed", "skipped", False)),
        (None, W, {}, ("completed", "action_required", True)),
        (W, P, {}, ("queued", None, True)),  # approved: a new check run after the waiting one
        (KO, P, {"attempt": 2}, ("queued", None, True)),  # retried: a new check run
        # Re-run pipeline steps wait again, and a re-run run runs again: new check runs.
        (KO, B, {"attempt": 2}, ("queued", None, True)),
        (JobStatus.SKIPPED, B, {}, ("queued", None, True)),
        (KO, A, {"attempt": 2, "step_count": 3}, ("in_progress", None, True)),
        (A, KO, {"reason": "steps_failed", "step_count": 3}, ("completed", "failure", False)),
    ],
)
def test_each_transition_gives_its_check_run_state(
    source: JobStatus | None,
    dest: JobStatus,
    fields: dict[str, Any],
    expected: tuple[str, str | None, bool],
) -> None:
    found = state(source, dest, **fields)
    assert (found.status, found.conclusion, found.new_run) == expected
    new_run = expected[2]
    body = found.body()
    assert body["external_id"] == "gh-1"  # the job (a pipeline step's id fits in its place)
    assert body["details_url"] == f"{DASHBOARD}/x"
    assert ("name" in body) is new_run and ("head_sha" in body) is new_run


def test_waiting_offers_approve_and_running_offers_cancel() -> None:
    assert [a.identifier for a in state(None, W).actions] == ["approve"]
    assert [a.identifier for a in state(P, A, started_at=T0).actions] == ["cancel"]
    assert state(A, OK, started_at=T0, finished_at=T0).actions == ()
    assert state(A, OK, started_at=T0, finished_at=T0).body()["actions"] == []


def test_a_queued_step_of_a_concurrency_group_says_what_it_waits_for() -> None:
    grouped = state(B, P, concurrency_group="prod")
    assert grouped.summary.startswith(
        "Waiting for a free slot and its concurrency group prod (one of its jobs at a time)."
    )
    assert state(B, P).summary.startswith("Waiting for a free slot.")


def test_the_summary_carries_the_timing_and_the_failures_detail() -> None:
    done = state(
        A,
        KO,
        reason="exit_code",
        detail="exit code 2:\n make: *** [test] Error 2",
        started_at=T0 + 3000,
        finished_at=T0 + 45_000,
    )
    assert "exit code 2: make: *** [test] Error 2" in done.summary
    assert "Waited 3.0 s." in done.summary and "Ran 42.0 s." in done.summary
    assert done.started_at == "2023-11-14T22:13:23Z" and done.with_log


def test_the_log_tail_fits_githubs_limit_and_keeps_the_end() -> None:
    lines = [f"line {n:06d} " + "x" * 90 for n in range(5000)]
    text = text_within(lines)
    assert len(text) <= OUTPUT_MAX_CHARS
    assert text.startswith("```text\n") and text.endswith(lines[-1] + "\n```")
    assert lines[0] not in text
    assert "```" not in text_within(["a ``` b"])[8:-4]  # a fence in the log cannot end the block
    assert len(text_within(["y" * 100_000])) <= OUTPUT_MAX_CHARS


def test_merge_keeps_a_new_check_run_apart_and_creates_in_the_newest_state() -> None:
    queued = state(None, P)
    running = state(P, A, started_at=T0)
    done = state(A, OK, started_at=T0, finished_at=T0 + 1)
    merged = merge(merge(queued, running) or queued, done)
    assert merged is not None and merged.new_run and merged.conclusion == "success"
    assert merge(done, state(KO, P, attempt=2)) is None


# -- sending: the stand-in checks every request ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn() as stand_in:
        stand_in.install(REPO, 9)
        yield stand_in
        assert stand_in.problems == []


def sender(
    github: GitHubStandIn, clock: Clock, log_tail: Any = None
) -> tuple[CheckRuns, SendQueue[str, CheckState], CheckRunObserver]:
    api = GitHubApi(github.url)
    runs = CheckRuns(
        api, AppAuth(str(github.app_id), github.private_key_pem, api), log_tail=log_tail
    )
    queue: SendQueue[str, CheckState] = SendQueue(
        runs.send, merge, window_seconds=1.0, background=False, clock=clock, pause=api.pause_seconds
    )
    observer = CheckRunObserver(queue, lambda _repo: "ci/scheduler", DASHBOARD)
    return runs, queue, observer


def check_requests(github: GitHubStandIn) -> list[tuple[str, str]]:
    return [(s.method, s.path) for s in github.seen if "/check-runs" in s.path]


def test_a_runs_changes_within_a_second_become_one_request(github: GitHubStandIn) -> None:
    clock = Clock()
    tail = ["building", "ok: 12 tests passed"]
    _, queue, observe = sender(github, clock, log_tail=lambda job_id: tail)
    observe(transition(None, P))
    observe(transition(P, A, started_at=T0 + 10))
    observe(transition(A, OK, started_at=T0 + 10, finished_at=T0 + 2000))
    assert queue.pump() == 0 and check_requests(github) == []  # the window is still open
    clock.now += 1.0
    assert queue.pump() == 1
    assert check_requests(github) == [("POST", f"/repos/{REPO}/check-runs")]
    (run,) = github.runs_of(REPO)
    assert run.fields["status"] == "completed" and run.fields["conclusion"] == "success"
    assert run.fields["details_url"] == f"{DASHBOARD}/ui/jobs/gh-1"
    assert run.fields["output"]["text"] == "```text\nbuilding\nok: 12 tests passed\n```"
    (posted,) = github.requests("POST", f"/repos/{REPO}/check-runs")
    assert posted.headers["authorization"].startswith("token ghs_")


def test_a_pipeline_step_has_a_check_run_of_its_own_named_as_its_status(
    github: GitHubStandIn,
) -> None:
    clock = Clock()
    _, queue, observe = sender(github, clock)
    observe(transition(None, B, run_of="gh-0", step_key="test[python=3.12]"))
    clock.now += 1.0
    assert queue.pump() == 1
    (run,) = github.runs_of(REPO)
    assert run.fields["name"] == "ci/scheduler/test[python=3.12]"
    assert run.fields["status"] == "queued"


def test_updates_apart_in_time_are_patches_of_one_check_run_in_order(
    github: GitHubStandIn,
) -> None:
    clock = Clock()
    _, queue, observe = sender(github, clock)
    for source, dest in [(None, P), (P, A), (A, KO)]:
        observe(transition(source, dest, started_at=T0 + 5, finished_at=T0 + 9))
        clock.now += 2
        queue.pump()
    (run,) = github.runs_of(REPO)
    assert [h["status"] for h in run.history] == ["queued", "in_progress", "completed"]
    assert run.fields["conclusion"] == "failure"
    # An operator's retry: a new check run of the same name and external id, after the first.
    observe(transition(KO, P, attempt=2))
    observe(transition(P, A, attempt=2, started_at=T0 + 50))
    clock.now += 2
    queue.pump()
    first, second = sorted(github.runs_of(REPO), key=lambda r: r.id)
    assert first.fields["conclusion"] == "failure" and second.fields["status"] == "in_progress"
    assert second.fields["external_id"] == first.fields["external_id"] == "gh-1"
    assert [m for m, _ in check_requests(github)] == ["POST", "PATCH", "PATCH", "POST"]


def test_a_rate_limit_holds_the_queue_in_order_until_github_allows(
    github: GitHubStandIn,
) -> None:
    clock = Clock()
    _, queue, observe = sender(github, clock)
    observe(transition(None, P))
    clock.now += 2
    github.limit_next(1, 403, {"retry-after": "30"})
    assert queue.pump() == 0
    assert 29 <= queue.blocked_for() <= 30
    observe(transition(P, A, started_at=T0))
    clock.now += 10
    # Still waiting: nothing is asked, and the held update takes the newer state in.
    assert queue.pump() == 0 and queue.pending() == 1
    asked = len(github.seen)
    clock.now += 25
    assert queue.pump() == 1 and len(github.seen) > asked
    assert check_requests(github) == [("POST", f"/repos/{REPO}/check-runs")]
    (run,) = github.runs_of(REPO)
    assert [h["status"] for h in run.history] == ["in_progress"]
    # Another job's update submitted during the wait is sent after, in order.
    observe(transition(A, OK, started_at=T0, finished_at=T0 + 1))
    clock.now += 2
    assert queue.pump() == 1
    assert run.fields["conclusion"] == "success"


def test_the_primary_limit_waits_for_its_reset(github: GitHubStandIn) -> None:
    clock = Clock()
    _, queue, observe = sender(github, clock)
    observe(transition(None, P))
    clock.now += 2
    reset = str(int(time.time()) + 120)
    github.limit_next(1, 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})
    assert queue.pump() == 0
    assert 115 <= queue.blocked_for() <= 122


def test_submitting_never_waits_for_github() -> None:
    """The stream's side only appends: a send stuck on GitHub does not hold it."""
    release = threading.Event()
    sent: list[str] = []

    def slow_send(key: str, update: str) -> None:
        release.wait(10)
        sent.append(update)

    queue: SendQueue[str, str] = SendQueue(
        slow_send, lambda old, new: new, window_seconds=0.0, background=True
    )
    try:
        began = time.monotonic()
        for n in range(200):
            queue.submit(f"job-{n % 5}", f"u{n}")
        assert time.monotonic() - began < 0.5
    finally:
        release.set()
        queue.close()
    assert queue.pending() == 0
    # Per key, the last update is always sent (merged or in order).
    for key in range(5):
        assert f"u{195 + key}" in sent


def test_an_inline_flush_tries_each_update_once_in_order_and_within_its_time() -> None:
    """Lambda's queue: an invocation's updates wait (merged per key) for the flush before it
    returns; a GitHub that fails costs one try per update and flush, not every retry, and a
    slow one no more than the flush's time: the rest goes with a later flush, in order."""
    tries: list[str] = []
    failing = {"job-a"}

    def send(key: str, update: str) -> None:
        tries.append(update)
        if key in failing:
            raise RuntimeError("GitHub answered 502")

    queue: SendQueue[str, str] = SendQueue(
        send, lambda old, new: None, window_seconds=math.inf, background=False
    )
    for update in ("a1", "b1", "a2", "b2"):
        queue.submit(f"job-{update[0]}", update)
    assert tries == []  # nothing is sent before the flush
    assert queue.flush() is False
    assert tries == ["a1", "b1", "b2"]  # a2 waits behind a1, which failed once
    failing.clear()
    assert queue.flush() is True
    assert tries == ["a1", "b1", "b2", "a1", "a2"]

    def slow(key: str, update: str) -> None:
        time.sleep(0.2)
        tries.append(update)

    slow_queue: SendQueue[str, str] = SendQueue(
        slow, lambda old, new: None, window_seconds=math.inf, background=False
    )
    for n in range(10):
        slow_queue.submit(f"job-{n}", f"s{n}")
    began = time.monotonic()
    assert slow_queue.flush(timeout=0.5) is False
    assert time.monotonic() - began < 1.5
    assert 1 <= 10 - slow_queue.pending() <= 4
    assert slow_queue.flush(timeout=5.0) is True and slow_queue.pending() == 0


def test_a_process_that_did_not_create_the_check_run_finds_it(github: GitHubStandIn) -> None:
    clock = Clock()
    _, first, observe = sender(github, clock)
    observe(transition(None, P))
    clock.now += 2
    first.pump()
    _, second, observe_later = sender(github, clock)  # another process (a Lambda's)
    observe_later(transition(P, A, started_at=T0))
    clock.now += 2
    second.pump()
    (run,) = github.runs_of(REPO)
    assert run.fields["status"] == "in_progress"
    assert [m for m, _ in check_requests(github)] == ["POST", "GET", "PATCH"]


def test_a_spent_window_holds_the_next_request_until_its_reset(github: GitHubStandIn) -> None:
    """x-ratelimit-remaining: 0 on a success: the next request would be refused, so the queue
    waits for x-ratelimit-reset before asking again."""
    clock = Clock()
    _, queue, observe = sender(github, clock)
    observe(transition(None, P))
    clock.now += 2
    queue.pump()  # the installation token, then the check run
    github.spend_window(90)
    observe(transition(P, A, started_at=T0))
    clock.now += 2
    assert queue.pump() == 1  # its answer spends the window
    assert 85 <= queue.blocked_for() <= 92
    observe(transition(A, OK, started_at=T0, finished_at=T0 + 1))
    clock.now += 2
    asked = len(github.seen)
    assert queue.pump() == 0 and len(github.seen) == asked  # nothing asked of GitHub


def test_each_pipeline_step_has_a_check_run_of_its_own(github: GitHubStandIn) -> None:
    """A pipeline's steps are checks named ``<context>/<step key>`` beside the run's own
    (``<context>``), each keyed by its job id (GitHub's ``external_id``)."""
    clock = Clock()
    _, queue, observe = sender(github, clock)
    observe(transition(P, A, started_at=T0 + 10))  # the run expands
    for n, key in ((1, "lint"), (2, "test[python=3.12]")):
        step = image(OK, started_at=T0 + 20, finished_at=T0 + 900, run_of="gh-1", step_key=key)
        step.job_id = f"gh-1.s{n}"
        observe(Transition(A, OK, JobState.from_model(step), str(n), step))
    clock.now += 1.0
    assert queue.pump() == 3
    runs = {run.fields["name"]: run.fields for run in github.runs_of(REPO)}
    assert sorted(runs) == ["ci/scheduler", "ci/scheduler/lint", "ci/scheduler/test[python=3.12]"]
    assert runs["ci/scheduler/lint"]["external_id"].endswith("gh-1.s1")
    assert runs["ci/scheduler/lint"]["details_url"] == f"{DASHBOARD}/ui/jobs/gh-1.s1"
    assert runs["ci/scheduler/lint"]["conclusion"] == "success"
    assert runs["ci/scheduler"]["status"] == "in_progress"
