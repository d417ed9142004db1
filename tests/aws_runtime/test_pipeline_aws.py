"""Issue 25 on the AWS runtime as AWS runs it (``aws_stack``): a repository's
``.scheduler/pipeline.yml``, read by the StreamFunction through GitHub's contents API (the
GitHub stand-in), runs its steps as CodeBuild builds through the template's functions, the
ESM-faithful mapping (which gives chosen records up and delivers batches twice) and the
reaper on its compressed schedule.

1. The chaos scenario with a pipeline: ``build`` -> ``test`` (a matrix of 3, one variant's
   build failing its first attempt and retried by its step's own policy) -> ``report``, for
   several commits pushed at once, while the mapping gives up step ends and a run's
   expansion record and delivers batches (and EventBridge events) twice. Every run passes,
   every step attempt is built exactly once, the counters equal the items.
2. A bad file fails its run as ``pipeline_invalid`` with the line, and makes no step.
3. A run cancelled while its steps build: every step ends cancelled, no build starts after
   the cancel, the slots are freed.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aws_stack import AwsStack, aws_stack, free_port_in_range
from github_api_stand_in import GitHubStandIn
from stream_mapping import job_of, kind_of

PIPELINE = ".scheduler/pipeline.yml"
TOKEN = "ghp_pipeline_aws_runtime_token_0123456789"
TERMINAL = ("passed", "failed", "cancelled", "skipped")
# The reconciliation settles a run whose step-end record was lost once the run has run its
# steps for longer than its grace (RETRY_GRACE_MS, 60 s); the rest is slack for a loaded
# machine.
SETTLE_BOUND = 100.0

GREEN = b"""\
steps:
  - key: build
    command: make build
  - key: test
    needs: [build]
    matrix: {n: ["1", "2", "3"]}
    retry: {attempts: 2, on: [exit_code]}
    command: make test
  - key: report
    needs: [test]
    command: make report
"""
KEYS = {"s1": "build", "s2": "test[n=1]", "s3": "test[n=2]", "s4": "test[n=3]", "s5": "report"}
FLAKY = "s3"  # test[n=2]: its build fails on attempt 1 (CodeBuild's FAILED: exit_code)

BAD = b"""\
steps:
  - key: a
    command: [make, a]
  - key: b
    needs: [nowhere]
    command: [make, b]
"""

SLOW = b"""\
steps:
  - key: long
    matrix: {n: ["1", "2", "3"]}
    command: make long
  - key: after
    needs: [long]
    command: make after
"""


def free_port() -> int:
    """A free loopback port of this file's range (18100-18199)."""
    return free_port_in_range(range(18100, 18200))


def config(repos: dict[str, int]) -> str:
    """``checkout = true`` (the default) so the commit's pipeline is read. The functions are
    told GitHub's API is the stand-in (``SCHEDULER_GITHUB_API_URL``), so a payload's
    ``https://github.com/...`` clone URL is not the API's host: each repository names it."""
    text = "[defaults]\ntimeout_seconds = 60\n"
    for repo, concurrency in repos.items():
        text += (
            f'[repos."{repo}"]\nconcurrency = {concurrency}\n'
            f'clone_url = "https://github.com/{repo}.git"\n'
        )
    return text


def github_env(github: GitHubStandIn) -> dict[str, str]:
    github.personal_tokens.add(TOKEN)
    return {"SCHEDULER_GITHUB_API_URL": github.url, "SCHEDULER_GITHUB_TOKEN": TOKEN}


def step_of(job_id: str) -> str:
    return job_id.rpartition(".")[2]


def first_offer_only(rule: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """A record is given up on its first delivery only (as if every try failed before the
    function acted), never on a retry of its batch."""
    offered: set[str] = set()

    def once(record: dict[str, Any]) -> bool:
        if record["eventID"] in offered:
            return False
        offered.add(record["eventID"])
        return rule(record)

    return once


def wait_until(what: str, check: Callable[[], bool], timeout: float, stack: AwsStack) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(0.2)
    stories = "\n".join(stack.explain(job_id) for job_id in sorted(stack.jobs())[:12])
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{stories}")


def all_terminal(stack: AwsStack) -> bool:
    return all(str(job.status) in TERMINAL for job in stack.jobs().values()) and not (
        stack.codebuild.in_progress()
    )


@pytest.mark.timeout(300)
def test_a_pipeline_under_lost_records_and_duplicates_runs_each_step_attempt_once(
    tmp_path: Path,
) -> None:
    repo, runs = "pipe/chaos", 4
    shas = [f"{n + 1:040x}" for n in range(runs)]
    run_ids = [f"gh-pipe-{n}" for n in range(runs)]

    def plan(_repo: str, job_id: str, attempt: int) -> tuple[float, str]:
        seconds = random.Random(f"{job_id}#{attempt}").uniform(0.5, 1.2)
        return seconds, "FAILED" if step_of(job_id) == FLAKY and attempt == 1 else "SUCCEEDED"

    # What is given up, on its first delivery: the end (active->passed) of two runs' build
    # step (their tests stay blocked until the reconciliation's fan-in), of one run's retried
    # test variant (the last test to end: its report waits on it), one run's expansion
    # (pending->active), a step's making (INSERT) and a fan-in's unblock (blocked->pending,
    # whose activation the queue's sweep then owes).
    to_drop = {
        (f"{run_ids[0]}.s1", "active->passed"),
        (f"{run_ids[1]}.s1", "active->passed"),
        (f"{run_ids[2]}.{FLAKY}", "active->passed"),
        (run_ids[3], "pending->active"),
        (f"{run_ids[0]}.s4", "INSERT"),
        (f"{run_ids[3]}.s5", "blocked->pending"),
    }
    dropped: list[tuple[str, str]] = []

    def rule(record: dict[str, Any]) -> bool:
        chosen = (job_of(record), kind_of(record))
        if chosen not in to_drop or chosen in dropped:
            return False
        dropped.append(chosen)
        return True

    with GitHubStandIn(port=free_port()) as github:
        for sha in shas:
            github.put_file(repo, sha, PIPELINE, GREEN)
        with aws_stack(
            tmp_path,
            config({repo: 4}),
            plan=plan,
            limits=lambda _repo: 4,
            env=github_env(github),
        ) as stack:
            stack.mapping.duplicate_every = 3
            stack.duplicate_events_every = 4
            stack.mapping.drop_when(first_offer_only(rule))
            began = time.monotonic()
            with ThreadPoolExecutor(runs) as pool:
                answered = list(
                    pool.map(
                        lambda n: stack.deliver_until_accepted(repo, f"pipe-{n}", shas[n]),
                        range(runs),
                    )
                )
            assert answered == run_ids
            wait_until("every run and step ended", lambda: all_terminal(stack), 180, stack)
            last_drop = max(d.at for d in stack.mapping.books.dropped)
            settled = time.monotonic() - last_drop
            took = time.monotonic() - began
            jobs = stack.jobs()
            books = stack.codebuild.books

            # Every record chosen was given up (and nothing else was).
            assert sorted(dropped) == sorted(to_drop), dropped
            assert {d.condition for d in stack.mapping.books.dropped} == {"chosen"}
            # Every run passed with its five steps, each passed; the flaky one on attempt 2.
            expected_ids = set(run_ids) | {f"{r}.s{n}" for r in run_ids for n in range(1, 6)}
            assert set(jobs) == expected_ids, set(jobs) ^ expected_ids
            for run_id in run_ids:
                run = jobs[run_id]
                assert str(run.status) == "passed" and not run.reason, stack.explain(run_id)
                assert int(run.step_count) == 5
                for n in range(1, 6):
                    step = jobs[f"{run_id}.s{n}"]
                    assert step.run_of == run_id and step.step_key == KEYS[f"s{n}"]
                    assert str(step.status) == "passed", stack.explain(step.job_id)
                    want = 2 if f"s{n}" == FLAKY else 1
                    assert int(step.attempt) == want, stack.explain(step.job_id)
            # Each step attempt built by CodeBuild exactly once (whatever StartBuild calls the
            # duplicates made), the run itself never; never more than the limit at once.
            want_builds = {
                (f"{r}.s{n}", a)
                for r in run_ids
                for n in range(1, 6)
                for a in ((1, 2) if f"s{n}" == FLAKY else (1,))
            }
            assert dict(books.builds_of) == dict.fromkeys(want_builds, 1), books.builds_of
            assert stack.codebuild.shape_errors == []
            assert books.over_limit == [], books.over_limit[:3]
            # The fan-in's order: build before every test, report after every test ended.
            builds = {b.attempt_key: b for b in stack.codebuild.builds.values()}
            for r in run_ids:
                first = builds[(f"{r}.s1", 1)]
                tests = [
                    builds[key] for key in builds if key[0] in {f"{r}.s{n}" for n in (2, 3, 4)}
                ]
                last = builds[(f"{r}.s5", 1)]
                assert first.ended is not None
                assert all(t.started >= first.ended for t in tests), r
                assert all(t.ended is not None and last.started >= t.ended for t in tests), r
            # Each commit's file was read through the contents API (and every request to the
            # stand-in, commit statuses included, was one GitHub takes).
            reads = github.requests("GET", f"/repos/{repo}/contents/")
            assert {s.query["ref"][0] for s in reads} == set(shas)
            assert github.problems == []
            stack.assert_counters_equal_items([repo])
            print(
                f"\naws pipeline chaos: {runs} runs x 5 steps ({len(books.builds_of)} builds,"
                f" StartBuild calls {sum(books.start_calls.values())}); dropped {len(dropped)}"
                f" records {sorted(k for _, k in dropped)}; duplicate batches"
                f" {stack.mapping.books.duplicates}, duplicate completion events"
                f" {stack.books.events_duplicated}; contents reads {len(reads)};"
                f" all ended {took:.1f}s after the pushes, {settled:.1f}s after the last drop;"
                f" reaper rounds {stack.books.reaper_rounds}; doctor healthy"
            )
            assert settled <= SETTLE_BOUND, settled


@pytest.mark.timeout(300)
def test_a_bad_file_fails_its_run_and_a_cancelled_run_stops_its_steps(tmp_path: Path) -> None:
    bad_repo, slow_repo = "pipe/bad", "pipe/slow"
    bad_sha, slow_sha = "b" * 40, "c" * 40
    limits = {bad_repo: 2, slow_repo: 2}

    def plan(repo: str, job_id: str, attempt: int) -> tuple[float, str]:
        return (120.0 if repo == slow_repo else 0.5), "SUCCEEDED"

    with GitHubStandIn(port=free_port()) as github:
        github.put_file(bad_repo, bad_sha, PIPELINE, BAD)
        github.put_file(slow_repo, slow_sha, PIPELINE, SLOW)
        with aws_stack(
            tmp_path,
            config(limits),
            plan=plan,
            limits=limits.__getitem__,
            env=github_env(github),
        ) as stack:
            # 2. A bad file: the run fails at once with the file's line, and makes no step.
            refused = stack.deliver_until_accepted(bad_repo, "bad-1", bad_sha)
            wait_until(
                "the bad file's run ended",
                lambda: str(stack.jobs()[refused].status) in TERMINAL,
                60,
                stack,
            )
            run = stack.jobs()[refused]
            assert (str(run.status), run.reason) == ("failed", "pipeline_invalid"), stack.explain(
                refused
            )
            assert f"{PIPELINE}:5" in str(run.detail), run.detail
            assert run.step_count is None
            assert [j for j in stack.jobs() if j.startswith(f"{refused}.")] == []
            assert [b for b in stack.codebuild.builds.values() if b.repo == bad_repo] == []

            # 3. A run cancelled while two of its three roots build (the third queued behind
            # the repository's limit of 2, its dependent blocked).
            run_id = stack.deliver_until_accepted(slow_repo, "slow-1", slow_sha)

            def two_building() -> bool:
                jobs = stack.jobs()
                statuses = Counter(str(j.status) for j in jobs.values() if j.run_of == run_id)
                return len(stack.codebuild.in_progress()) == 2 and statuses == {
                    "active": 2,
                    "pending": 1,
                    "blocked": 1,
                }

            wait_until("two steps building, one queued", two_building, 60, stack)
            before = set(stack.codebuild.builds)
            cancelled_at = time.monotonic()  # asked (``scheduler cancel`` takes a while)
            stack.cancel(run_id)
            wait_until("every step ended", lambda: all_terminal(stack), 60, stack)
            ended_in = time.monotonic() - cancelled_at
            # A cancelled step's slot is freed once its build is known stopped (the stop's
            # record, else the reconciliation's next round).
            wait_until(
                "the slots freed",
                lambda: int(stack.repos()[slow_repo].running or 0) == 0,
                30,
                stack,
            )
            freed_in = time.monotonic() - cancelled_at
            jobs = stack.jobs()
            assert str(jobs[run_id].status) == "cancelled", stack.explain(run_id)
            steps = {j.step_key: j for j in jobs.values() if j.run_of == run_id}
            assert set(steps) == {"long[n=1]", "long[n=2]", "long[n=3]", "after"}
            assert {k: str(s.status) for k, s in steps.items()} == dict.fromkeys(
                steps, "cancelled"
            ), [stack.explain(s.job_id) for s in steps.values()]
            # No build started after the cancel; the two that ran were stopped.
            assert set(stack.codebuild.builds) == before
            slow_builds = [b for b in stack.codebuild.builds.values() if b.repo == slow_repo]
            assert [b.status for b in slow_builds] == ["STOPPED", "STOPPED"], slow_builds
            assert stack.codebuild.books.over_limit == []
            assert github.problems == []
            stack.assert_counters_equal_items(list(limits))
            print(
                f"\naws pipeline: bad file -> {run.reason} ({run.detail});"
                f" cancelled run's steps all ended {ended_in:.1f}s after the cancel was asked,"
                f" its slots freed {freed_in:.1f}s after it"
            )
