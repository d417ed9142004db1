"""``concurrency_group`` on the AWS runtime as AWS runs it (``aws_stack``): the template's
functions as separate processes, the ESM-faithful mapping (which gives chosen records up, as
after its retries, and delivers batches twice), CodeBuild's asynchronous stand-in and its
EventBridge completion events (some delivered twice), the reaper on its compressed schedule.

One repository (slot limit 4), four pushes on four branches, each a run of ``build`` ->
``deploy`` (``concurrency_group: deploy``) and ``build`` -> ``check`` (ungrouped). The mapping
gives up the finish of the first deploy to end (the record whose promotion starts the next
deploy), the activation of the second deploy (one that waited for the group: its record is
what starts its build) and the unblock of the last deploy made pending (whose activation the
queue's sweep then owes). Then:

- every run passes, every step attempt is built exactly once;
- no two deploy builds ever overlap (CodeBuild's own start and end times), and no two deploy
  jobs ever hold a slot at once (atomic snapshots of the four deploy items, taken all along);
- the ungrouped steps are not held behind the group (they build while a deploy builds);
- the counters equal the items and ``scheduler doctor`` finds no drift (a group held twice is
  one) and nothing stranded; the group's item names the last deploy;
- the runs settle after the lost records through the reconciliation (the sweep, the reaper's
  start of a run whose activation record was lost, the fan-in of a run whose step end was
  lost), within a bound.

And a cancelled deploy keeps the group until its build is known stopped (StopBuild only asks),
even when the record of its cancel is lost: the waiting deploy never builds beside it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_stack import AwsStack, aws_stack, free_port_in_range
from botocore.exceptions import BotoCoreError, ClientError
from codebuild_server import Build
from github_api_stand_in import GitHubStandIn
from stream_mapping import job_of, kind_of

from scheduler.db.models import JobModel, group_key
from state_machines import JobStatus

PIPELINE = ".scheduler/pipeline.yml"
TOKEN = "ghp_concurrency_group_aws_token_0123456"
TERMINAL = ("passed", "failed", "cancelled", "skipped")
REPO, LIMIT, RUNS = "group/deploys", 4, 4
GROUP = "deploy"
BUILD, DEPLOY, CHECK = "s1", "s2", "s3"
KEYS = {BUILD: "build", DEPLOY: "deploy", CHECK: "check"}
# A lost activation record is started by the reaper once the start grace (60 s, the
# default) has passed; a run whose step end was lost ends by the reconciliation's fan-in once
# it has run for longer than its grace (60 s); the rest is slack for a loaded machine.
SETTLE_BOUND = 110.0

FILE = b"""\
steps:
  - key: build
    command: make build
  - key: deploy
    needs: [build]
    concurrency_group: deploy
    command: ./deploy.sh
  - key: check
    needs: [build]
    command: make check
"""


def free_port() -> int:
    """A free loopback port of this file's range (18200-18299)."""
    return free_port_in_range(range(18200, 18300))


def config() -> str:
    return (
        "[defaults]\ntimeout_seconds = 60\n"
        f'[repos."{REPO}"]\nconcurrency = {LIMIT}\n'
        f'clone_url = "https://github.com/{REPO}.git"\n'
    )


@contextlib.contextmanager
def chaotic_stack(
    tmp_path: Path,
    shas: list[str],
    *,
    plan: Callable[..., Any],
    rule: Callable[[dict[str, Any]], bool],
    **options: Any,
) -> Iterator[tuple[AwsStack, GitHubStandIn]]:
    """The AWS runtime with GitHub's stand-in serving each commit's pipeline file: every 3rd
    batch and every 4th completion event delivered twice, the records ``rule`` picks dropped."""
    with GitHubStandIn(port=free_port()) as github:
        github.personal_tokens.add(TOKEN)
        for sha in shas:
            github.put_file(REPO, sha, PIPELINE, FILE)
        env = {"SCHEDULER_GITHUB_API_URL": github.url, "SCHEDULER_GITHUB_TOKEN": TOKEN}
        with aws_stack(
            tmp_path, config(), plan=plan, limits=lambda _repo: LIMIT, env=env, **options
        ) as stack:
            stack.mapping.duplicate_every = 3
            stack.duplicate_events_every = 4
            stack.mapping.drop_when(rule)
            yield stack, github


def step_of(job_id: str) -> str:
    return job_id.rpartition(".")[2]


def plan(_repo: str, job_id: str, attempt: int) -> tuple[float, str]:
    """Deploys take a while (the others queue behind the group meanwhile); builds and checks
    are short."""
    step = step_of(job_id)
    if step == DEPLOY:
        return 2.5, "SUCCEEDED"
    return random.Random(f"{job_id}#{attempt}").uniform(0.6, 1.0), "SUCCEEDED"


class HeldSampler:
    """Atomic snapshots (``TransactGetItems``) of the deploy items, all along: how many hold a
    slot at once (active, or finished with its slot kept) never exceeds one."""

    def __init__(self, stack: AwsStack, job_ids: list[str]) -> None:
        settings = stack.settings
        self._client = boto3.client(
            "dynamodb",
            endpoint_url=settings.dynamodb_endpoint,
            region_name=settings.region,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        self._items = [
            {
                "Get": {
                    "TableName": settings.tables.jobs,
                    "Key": {"job_id": {"S": job_id}},
                    "ProjectionExpression": "job_id, #s, slot_held",
                    "ExpressionAttributeNames": {"#s": "status"},
                }
            }
            for job_id in job_ids
        ]
        self.samples = 0
        self.most_held = 0
        self.overlaps: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HeldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                answer = self._client.transact_get_items(TransactItems=self._items)
            except (ClientError, BotoCoreError):
                continue  # a conflicting transaction: the next snapshot
            held = [
                item["job_id"]["S"]
                for item in (r.get("Item") for r in answer["Responses"])
                if item
                and (
                    item["status"]["S"] == JobStatus.ACTIVE.value
                    or item.get("slot_held", {}).get("BOOL", False)
                )
            ]
            self.samples += 1
            self.most_held = max(self.most_held, len(held))
            if len(held) > 1:
                self.overlaps.append(held)


def wait_until(what: str, check: Callable[[], bool], timeout: float, stack: AwsStack) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(0.2)
    stories = "\n".join(stack.explain(job_id) for job_id in sorted(stack.jobs()))
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{stories}")


def all_terminal(stack: AwsStack) -> bool:
    return all(str(job.status) in TERMINAL for job in stack.jobs().values()) and not (
        stack.codebuild.in_progress()
    )


def entry_at(job: JobModel, source: str | None, dest: str) -> int:
    """When (epoch ms) ``job`` made its (first) ``source -> dest`` transition."""
    return next(int(h.at) for h in job.history if h.source == source and h.dest == dest)


def overlapping(one: Build, other: Build) -> bool:
    assert one.ended is not None and other.ended is not None
    return one.started < other.ended and other.started < one.ended


@pytest.mark.timeout(300)
def test_one_deploy_at_a_time_across_branches_under_lost_records_and_duplicates(
    tmp_path: Path,
) -> None:
    shas = [f"{n + 0xD00:040x}" for n in range(RUNS)]
    run_ids = [f"gh-deploy-{n}" for n in range(RUNS)]
    deploys = [f"{r}.{DEPLOY}" for r in run_ids]

    # What is given up, on its first delivery (as after the mapping's retries): the first
    # deploy finish, the second deploy activation and the fourth deploy unblock offered.
    chosen = {"active->passed": 1, "pending->active": 2, "blocked->pending": 4}
    offered: set[str] = set()
    seen: Counter[str] = Counter()
    dropped: dict[str, tuple[str, float]] = {}  # kind -> (job, monotonic time)

    def rule(record: dict[str, Any]) -> bool:
        if record["eventID"] in offered:
            return False  # a retry of its batch is never given up
        offered.add(record["eventID"])
        job, kind = job_of(record), kind_of(record)
        if step_of(job) != DEPLOY or kind not in chosen:
            return False
        seen[kind] += 1
        if seen[kind] != chosen[kind]:
            return False
        dropped[kind] = (job, time.monotonic())
        return True

    with chaotic_stack(tmp_path, shas, plan=plan, rule=rule) as (stack, github):
        wall = time.time() - time.monotonic()  # history's epoch ms -> this clock
        began = time.monotonic()
        with HeldSampler(stack, deploys) as sampler:
            with ThreadPoolExecutor(RUNS) as pool:
                answered = list(
                    pool.map(
                        lambda n: stack.deliver_until_accepted(
                            REPO, f"deploy-{n}", shas[n], branch=f"feature-{n}"
                        ),
                        range(RUNS),
                    )
                )
            assert answered == run_ids
            wait_until("every run and step ended", lambda: all_terminal(stack), 200, stack)
            ended_at = time.monotonic()
        jobs = stack.jobs()
        books = stack.codebuild.books
        last_drop = max(d.at for d in stack.mapping.books.dropped)

        # Every record chosen was given up (and nothing else was).
        assert set(dropped) == set(chosen), (dropped, seen)
        assert {d.condition for d in stack.mapping.books.dropped} == {"chosen"}
        assert len(stack.mapping.books.dropped) == len(chosen)
        # Every run passed with its three steps, each on its first attempt.
        expected = set(run_ids) | {f"{r}.{s}" for r in run_ids for s in KEYS}
        assert set(jobs) == expected, set(jobs) ^ expected
        for run_id in run_ids:
            run = jobs[run_id]
            assert str(run.status) == "passed" and not run.reason, stack.explain(run_id)
            for step, key in KEYS.items():
                job = jobs[f"{run_id}.{step}"]
                assert job.step_key == key and job.run_of == run_id
                assert str(job.status) == "passed", stack.explain(job.job_id)
                assert int(job.attempt) == 1, stack.explain(job.job_id)
                assert job.concurrency_group == (GROUP if step == DEPLOY else None)
        # Each step attempt built by CodeBuild exactly once, whatever the duplicates asked.
        want_builds = {(f"{r}.{s}", 1) for r in run_ids for s in KEYS}
        assert dict(books.builds_of) == dict.fromkeys(want_builds, 1), books.builds_of
        assert stack.codebuild.shape_errors == []
        assert books.over_limit == [], books.over_limit[:3]

        # One deploy at a time: CodeBuild's own times never overlap, and no snapshot ever
        # saw two deploy jobs holding a slot.
        builds = {b.attempt_key[0]: b for b in stack.codebuild.builds.values()}
        in_order = sorted((builds[d] for d in deploys), key=lambda b: b.started)
        for before, after in pairwise(in_order):
            assert before.ended is not None and after.started >= before.ended, (
                before.attempt_key,
                after.attempt_key,
                before.ended - after.started if before.ended else None,
            )
        assert sampler.overlaps == [], sampler.overlaps[:5]
        # And by the jobs' own histories: each deploy activated once the one before it
        # ended (each write's time is taken a moment before it commits: 100 ms of slack).
        held = sorted(
            (entry_at(jobs[d], "pending", "active"), entry_at(jobs[d], "active", "passed"))
            for d in deploys
        )
        handovers = [nxt[0] - prev[1] for prev, nxt in pairwise(held)]
        assert min(handovers) >= -100, handovers
        assert sampler.most_held == 1 and sampler.samples > 100, vars(sampler)
        # The ungrouped steps were not held behind the group: checks built while a deploy
        # did, and every check ended before the last deploy began.
        checks = [builds[f"{r}.{CHECK}"] for r in run_ids]
        beside = [c for c in checks if any(overlapping(c, d) for d in in_order)]
        assert beside, [(c.started, c.ended) for c in checks]
        assert all(c.ended is not None and c.ended <= in_order[-1].started for c in checks)
        # Each deploy after its own build; the group's item names the last deploy.
        for run_id in run_ids:
            build = builds[f"{run_id}.{BUILD}"]
            assert build.ended is not None
            assert builds[f"{run_id}.{DEPLOY}"].started >= build.ended
            assert builds[f"{run_id}.{CHECK}"].started >= build.ended
        group_item = stack.repos()[group_key(REPO, GROUP)]
        assert group_item.holder == in_order[-1].attempt_key[0], group_item.holder

        # The records given up were the ones meant: the first deploy's finish, while the
        # deploy whose activation was lost was already waiting for the group.
        first, given_up_finish = dropped["active->passed"]
        second, given_up_activation = dropped["pending->active"]
        unblocked, given_up_unblock = dropped["blocked->pending"]
        assert first == in_order[0].attempt_key[0], (first, in_order[0].attempt_key)
        assert second == in_order[1].attempt_key[0], (second, in_order[1].attempt_key)
        waited_from = entry_at(jobs[second], "blocked", "pending")
        assert waited_from < entry_at(jobs[first], "active", "passed"), stack.explain(second)
        # The second deploy's build was started by the reaper (its activation's record,
        # which starts it, was lost): one build, after the start grace.
        second_build = builds[second]
        started_after_drop = second_build.started - given_up_activation
        # The first deploy's run was ended by the reconciliation's fan-in (its deploy's
        # end was its last step end, and lost).
        first_run = jobs[first.rpartition(".")[0]]
        run_ended = entry_at(first_run, "active", "passed") / 1000 - wall
        reconciled = {r for a in stack.books.reaper_answers for r in a.get("runs_ended", [])}
        assert first_run.job_id in reconciled, stack.explain(first_run.job_id)
        swept = sum(a.get("promoted", {}).get(REPO, 0) for a in stack.books.reaper_answers)
        unblocked_active = entry_at(jobs[unblocked], "pending", "active") / 1000 - wall

        # Counters equal the items; doctor: healthy, no group overlap, nothing stranded.
        stack.assert_counters_equal_items([REPO])
        assert github.problems == []

        settled = ended_at - last_drop
        gaps = [round(b.started - (a.ended or 0.0), 1) for a, b in pairwise(in_order)]
        print(
            f"\naws concurrency_group: {RUNS} runs x 3 steps, limit {LIMIT};"
            f" {len(books.builds_of)} builds (StartBuild calls"
            f" {sum(books.start_calls.values())}); deploys in order"
            f" {[b.attempt_key[0] for b in in_order]}, gaps between them {gaps}s;"
            f" activation after the previous end {[round(h / 1000, 2) for h in handovers]}s;"
            f" checks beside a deploy {len(beside)}/{RUNS}; snapshots {sampler.samples},"
            f" most deploys holding a slot {sampler.most_held};"
            f" dropped {sorted(dropped)}; duplicate batches {stack.mapping.books.duplicates},"
            f" duplicate completion events {stack.books.events_duplicated};"
            f" lost activation ({second}) built"
            f" {started_after_drop:.1f}s after its record was given up; lost finish's run"
            f" ended {run_ended - given_up_finish:.1f}s after; lost unblock's deploy active"
            f" {unblocked_active - given_up_unblock:.1f}s after; reconciliation: runs"
            f" ended {sorted(reconciled)}, jobs promoted by its sweeps {swept};"
            f" all ended {ended_at - began:.1f}s after the pushes, {settled:.1f}s after the"
            f" last drop; reaper rounds {stack.books.reaper_rounds}; doctor healthy"
        )
        assert settled <= SETTLE_BOUND, settled


@pytest.mark.timeout(240)
def test_a_cancelled_deploy_keeps_the_group_until_its_build_is_stopped(tmp_path: Path) -> None:
    """A run is cancelled while its deploy builds, and the record of its deploy's cancel is
    given up (the record that asks StopBuild). StopBuild only asks: the build reports STOPPED
    a few seconds later. The other branch's deploy, waiting for the group, starts only once
    that build is known stopped (the reconciliation asks CodeBuild, asks it to stop, and frees
    the slot in a later round), never beside it."""
    shas = [f"{n + 0xC00:040x}" for n in range(2)]
    run_ids = [f"gh-cancel-{n}" for n in range(2)]
    deploys = [f"{r}.{DEPLOY}" for r in run_ids]
    deploy_starts: list[str] = []

    def slow_first_deploy(repo: str, job_id: str, attempt: int) -> tuple[float, str]:
        if step_of(job_id) != DEPLOY:
            return plan(repo, job_id, attempt)
        deploy_starts.append(job_id)
        return (120.0 if len(deploy_starts) == 1 else 1.0), "SUCCEEDED"

    offered: set[str] = set()
    dropped: list[str] = []

    def rule(record: dict[str, Any]) -> bool:
        if record["eventID"] in offered:
            return False
        offered.add(record["eventID"])
        chosen = step_of(job_of(record)) == DEPLOY and kind_of(record) == "active->cancelled"
        if chosen:
            dropped.append(job_of(record))
        return chosen

    chaos = chaotic_stack(tmp_path, shas, plan=slow_first_deploy, rule=rule, stop_delay=4.0)
    with chaos as (stack, github):
        with HeldSampler(stack, deploys) as sampler:
            for n in range(2):
                stack.deliver_until_accepted(REPO, f"cancel-{n}", shas[n], branch=f"release-{n}")

            def one_deploying_one_waiting() -> bool:
                jobs = stack.jobs()
                states = sorted(str(jobs[d].status) if d in jobs else "" for d in deploys)
                building = stack.codebuild.in_progress()
                deploying = [b for b in building if b.attempt_key[0] in deploys]
                return states == ["active", "pending"] and len(deploying) == 1

            wait_until("a deploy building, the other waiting", one_deploying_one_waiting, 90, stack)
            holder = deploy_starts[0]
            waiting = next(d for d in deploys if d != holder)
            cancelled_run = holder.rpartition(".")[0]
            cancelled_at = time.monotonic()
            stack.cancel(cancelled_run)
            wait_until("every step ended", lambda: all_terminal(stack), 120, stack)
        jobs = stack.jobs()
        builds = {b.attempt_key[0]: b for b in stack.codebuild.builds.values()}
        stopped, after = builds[holder], builds[waiting]

        assert dropped == [holder], dropped
        assert str(jobs[cancelled_run].status) == "cancelled", stack.explain(cancelled_run)
        assert str(jobs[holder].status) == "cancelled", stack.explain(holder)
        other_run = waiting.rpartition(".")[0]
        assert str(jobs[other_run].status) == "passed", stack.explain(other_run)
        # The cancelled deploy's build was stopped (StopBuild asked by the reconciliation,
        # its record lost), and the waiting deploy's build began only after it stopped.
        assert stopped.status == "STOPPED" and stopped.ended is not None, stopped
        assert stack.codebuild.books.stop_calls[stopped.id] >= 1
        assert after.started >= stopped.ended, (after.started, stopped.ended)
        assert sampler.overlaps == [] and sampler.most_held == 1, vars(sampler)
        assert all(n == 1 for n in stack.codebuild.books.builds_of.values())
        assert stack.codebuild.books.builds_of[(holder, 1)] == 1
        assert stack.codebuild.books.builds_of[(waiting, 1)] == 1
        stack.assert_counters_equal_items([REPO])
        assert github.problems == []
        print(
            f"\naws concurrency_group, cancelled holder: its deploy's cancel record given"
            f" up; build STOPPED {stopped.ended - cancelled_at:.1f}s after the cancel was"
            f" asked (StopBuild calls {stack.codebuild.books.stop_calls[stopped.id]},"
            f" stop delay 4.0s); the waiting deploy built"
            f" {after.started - stopped.ended:.1f}s after that; snapshots"
            f" {sampler.samples}, most deploys holding a slot {sampler.most_held}"
        )
