"""Issue 23's reproductions 1-3 on the AWS runtime as AWS runs it (``aws_stack``): the template's
functions as processes, the mapping dropping chosen records as it does after its retries, the
asynchronous CodeBuild stand-in, and the reaper's schedule in compressed time (0.5 s a minute)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_stack import ROUND_SECONDS, AwsStack, aws_stack
from stream_mapping import job_of, kind_of

ROUNDS = 10  # the bound: what a lost record owed is done within ten reaper rounds


def config(concurrency: int, timeout_seconds: int = 600, extra: str = "") -> str:
    return (
        '[defaults]\ncheckout = false\ncommand = ["make", "test"]\n'
        f"concurrency = {concurrency}\ntimeout_seconds = {timeout_seconds}\n" + extra
    )


def drop_once(
    kind: str, job_id: str | None = None
) -> tuple[Callable[[dict[str, Any]], bool], list[str]]:
    """A rule that gives up the first record of ``kind`` (of ``job_id``, if named)."""
    dropped: list[str] = []

    def rule(record: dict[str, Any]) -> bool:
        if dropped or kind_of(record) != kind or (job_id and job_of(record) != job_id):
            return False
        dropped.append(job_of(record))
        return True

    return rule, dropped


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def status(stack: AwsStack, job_id: str) -> str:
    job = stack.jobs().get(job_id)
    return str(job.status) if job else "missing"


def build_of(stack: AwsStack, job_id: str) -> Any:
    found = [b for b in stack.codebuild.builds.values() if b.attempt_key[0] == job_id]
    return found[-1] if found else None


def test_a_lost_cancel_record_does_not_strand_the_repository(tmp_path: Path) -> None:
    """Reproduction 1: concurrency 1, A runs and is cancelled (``scheduler cancel``), the
    cancel's MODIFY record is given up; B is queued. A's build is stopped and B runs."""
    durations = {"first": 120.0}
    with aws_stack(
        tmp_path,
        config(1),
        plan=lambda repo, job, attempt: (durations.get(job, 1.0), "SUCCEEDED"),
        limits=lambda repo: 1,
    ) as stack:
        a = stack.deliver_until_accepted("lost/cancel", "first", "a" * 40)
        durations[a] = 120.0
        wait_for("A's build", lambda: build_of(stack, a) is not None, 30)
        b = stack.deliver_until_accepted("lost/cancel", "second", "b" * 40)
        wait_for("B queued", lambda: status(stack, b) == "pending", 10)
        rule, dropped = drop_once("active->cancelled", a)
        stack.mapping.drop_when(rule)
        stack.cancel(a)
        wait_for("the cancel's record given up", lambda: dropped == [a], 30)
        rounds_before = stack.books.reaper_rounds
        took = wait_for(
            "B running after the lost cancel",
            lambda: build_of(stack, b) is not None and status(stack, b) == "active",
            (ROUNDS + 2) * ROUND_SECONDS + 20,
        )
        rounds = stack.books.reaper_rounds - rounds_before
        assert build_of(stack, a).status == "STOPPED", build_of(stack, a)
        stack.wait_settled(lambda repo: 1, 60)
        assert status(stack, b) == "passed" and status(stack, a) == "cancelled"
        assert stack.codebuild.books.over_limit == [], stack.codebuild.books.over_limit
        found = stack.doctor()
        assert found["healthy"], found
        print(
            f"\nrepro 1: B ran {took:.1f}s ({rounds} reaper rounds)"
            " after the cancel record was dropped"
        )
        assert rounds <= ROUNDS + 2, rounds


def test_the_sweeper_reaches_a_repository_behind_a_long_queue(tmp_path: Path) -> None:
    """Reproduction 2: R1 (concurrency 1) has 101 queued jobs behind a long build; R2's only
    job lost its INSERT record. R2's job runs within ten reaper rounds."""
    r1, r2 = "starve/r1", "starve/r2"
    with aws_stack(
        tmp_path,
        config(1),
        plan=lambda repo, job, attempt: (300.0 if repo == r1 else 1.0, "SUCCEEDED"),
        limits=lambda repo: 1,
    ) as stack:
        stack.reaper_paused.set()  # the queue fills before the sweep looks
        first = stack.deliver_until_accepted(r1, "r1-0", f"{1:040x}")
        wait_for("R1's build", lambda: build_of(stack, first) is not None, 30)
        for n in range(1, 102):
            stack.deliver_until_accepted(r1, f"r1-{n}", f"{n + 1:040x}")
        rule, dropped = drop_once("INSERT")

        def r2_insert(record: dict[str, Any]) -> bool:
            return '"starve/r2"' in str(record["dynamodb"]["NewImage"]).replace("'", '"') and rule(
                record
            )

        stack.mapping.drop_when(r2_insert)
        lone = stack.deliver_until_accepted(r2, "r2-0", "f" * 40)
        wait_for("R2's INSERT given up", lambda: dropped == [lone], 30)
        wait_for("R1's INSERTs handled", stack.mapping.idle, 60)
        queued = sum(
            1 for j in stack.jobs().values() if j.repo == r1 and str(j.status) == "pending"
        )
        assert queued == 101 and status(stack, lone) == "pending"
        stack.reaper_paused.clear()
        rounds_before = stack.books.reaper_rounds
        took = wait_for(
            "R2's job running",
            lambda: build_of(stack, lone) is not None,
            (ROUNDS + 2) * ROUND_SECONDS + 20,
        )
        rounds = stack.books.reaper_rounds - rounds_before
        stack.wait_settled(lambda repo: 1, 60, terminal=False)
        found = stack.doctor()
        assert found["drift"] == [] and found["stranded"] == [], found
        print(
            f"\nrepro 2: R2's job ran {took:.1f}s ({rounds} reaper rounds) after the sweeps began"
        )
        assert rounds <= ROUNDS + 2, rounds


def test_a_throttled_stop_after_a_timeout_keeps_the_slot(tmp_path: Path) -> None:
    """Reproduction 3: A times out while StopBuild is throttled; B (concurrency 1) may not start
    before A's build is known stopped. Then the throttle lifts: A stops and B runs."""
    with aws_stack(
        tmp_path,
        config(1, timeout_seconds=3),
        plan=lambda repo, job, attempt: (120.0 if job.endswith("slow") else 1.0, "SUCCEEDED"),
        limits=lambda repo: 1,
    ) as stack:
        stack.codebuild.throttle("StopBuild")
        a = stack.deliver_until_accepted("stop/throttled", "a-slow", "a" * 40)
        wait_for("A's build", lambda: build_of(stack, a) is not None, 30)
        b = stack.deliver_until_accepted("stop/throttled", "b-fast", "b" * 40)
        wait_for("A timed out", lambda: status(stack, a) == "failed", 60)
        # Ten reaper rounds with StopBuild refused: B must stay queued, one build at a time.
        time.sleep(ROUNDS * ROUND_SECONDS)
        refused = stack.codebuild.books.throttled["StopBuild"]
        assert refused >= 1, "the timeout asked for no stop"
        assert build_of(stack, a).status == "IN_PROGRESS"
        assert build_of(stack, b) is None, ("B started while A's build ran", stack.explain(a))
        assert stack.codebuild.books.over_limit == [], stack.codebuild.books.over_limit
        stack.codebuild.lift("StopBuild")
        took = wait_for(
            "B running", lambda: build_of(stack, b) is not None, (ROUNDS + 2) * ROUND_SECONDS + 20
        )
        assert build_of(stack, a).status == "STOPPED"
        stack.wait_settled(lambda repo: 1, 60)
        assert status(stack, b) == "passed"
        assert stack.jobs()[a].reason == "timed_out"
        assert stack.codebuild.books.over_limit == [], stack.codebuild.books.over_limit
        found = stack.doctor()
        assert found["healthy"], found
        print(
            f"\nrepro 3: StopBuild refused {refused} times; B started {took:.1f}s after the"
            " throttle lifted; builds over the limit 0"
        )


def test_a_claim_whose_start_was_lost_fails_as_start_failed_and_is_retried(tmp_path: Path) -> None:
    """The stream function claims the attempt (run_id = job_id#attempt) and dies in a
    throttled StartBuild; the mapping then gives the activation record up on its retry. No
    build exists (the reaper finds none for the claim among the project's builds). At the
    deadline the attempt fails as start_failed and is retried, never timed_out, which would
    blame the job for the infrastructure; the retry builds once and passes."""
    with aws_stack(
        tmp_path,
        config(1, timeout_seconds=5),
        plan=lambda repo, job, attempt: (0.5, "SUCCEEDED"),
        limits=lambda repo: 1,
    ) as stack:
        sightings: list[str] = []

        def second_sighting(record: dict[str, Any]) -> bool:
            if kind_of(record) != "pending->active":
                return False
            sightings.append(job_of(record))
            return len(sightings) == 2  # its retry, after the killed invocation

        stack.mapping.drop_when(second_sighting)
        stack.codebuild.throttle("StartBuild")
        job = stack.deliver_until_accepted("start/lost", "only", "c" * 40)
        wait_for(
            "a throttled StartBuild", lambda: stack.codebuild.books.throttled["StartBuild"] > 0, 60
        )
        assert stack.stream.kill_busy() == 1
        wait_for("the retried activation given up", lambda: len(sightings) >= 2, 60)
        stack.codebuild.lift("StartBuild")
        assert stack.jobs()[job].run_id == f"{job}#1"  # claimed, no build recorded

        def settled() -> bool:
            now = stack.jobs()[job]
            return str(now.status) == "passed" or (
                str(now.status) == "failed" and now.reason != "start_failed"
            )

        wait_for("the job to pass on its retry", settled, 120)
        ended = stack.jobs()[job]
        assert (str(ended.status), ended.attempt) == ("passed", 2), stack.explain(job)
        history = stack.explain(job)
        assert "active->failed::reaper:start_failed" in history, history
        assert "timed_out" not in history, history
        assert stack.codebuild.books.builds_of[(job, 1)] == 0, history
        assert stack.codebuild.books.builds_of[(job, 2)] == 1, history


def test_a_lost_activation_record_is_started_within_the_start_grace(tmp_path: Path) -> None:
    """The activation's record (the one that claims and starts the build on AWS) is given up by
    the mapping. The job holds its repository's slot with no run: the reaper starts the run
    itself once the start grace has passed, not after the job's whole timeout (10 min here),
    and the attempt builds once and passes."""
    grace = 5
    with aws_stack(
        tmp_path,
        config(1, timeout_seconds=600),
        plan=lambda repo, job, attempt: (0.5, "SUCCEEDED"),
        limits=lambda repo: 1,
        env={"SCHEDULER_START_GRACE_SECONDS": str(grace)},
    ) as stack:
        rule, dropped = drop_once("pending->active")
        stack.mapping.drop_when(rule)
        job = stack.deliver_until_accepted("start/activation-lost", "only", "d" * 40)
        wait_for("the activation's record given up", lambda: dropped == [job], 30)
        given_up = time.monotonic()
        assert build_of(stack, job) is None and status(stack, job) == "active"
        took = wait_for("the job's build", lambda: build_of(stack, job) is not None, grace + 30)
        wait_for("the job to pass", lambda: status(stack, job) == "passed", 60)
        ended = stack.jobs()[job]
        assert ended.attempt == 1, stack.explain(job)
        assert stack.codebuild.books.builds_of[(job, 1)] == 1, stack.explain(job)
        assert stack.doctor()["healthy"]
        print(
            f"\nlost activation: build started {took:.1f}s after its record was given up"
            f" (start grace {grace}s, timeout 600s); "
            f"passed {time.monotonic() - given_up:.1f}s after"
        )
