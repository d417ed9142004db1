"""``concurrency_group`` through the real stack (``scheduler up``, DynamoDB Local, the stream
runner, real processes): three pushes to three branches of one repository whose limit (6 slots)
would let all their steps run together; each run's ``deploy`` is of the group ``deploy``, so the
deploys run one at a time, by the times their commands mark, while the ungrouped ``lint`` steps
run beside them. Also when the stack is SIGKILLed while a deploy holds the group and the others
wait: every run passes and no two deploys ever ran at once."""

from __future__ import annotations

import json
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import httpx
from git_origin import make_origin
from harness import UNSANDBOXED, LocalStackProcess, assert_doctor_reports_nothing, wait_for
from pipeline_stack import Interval, commit_pipeline, ended, intervals, timed

from scheduler.db.models import group_key
from scheduler.settings import Settings

REPO = "octo/app"
BRANCHES = ("one", "two", "three")
STEPS = ("build", "deploy", "lint")  # the pipeline's order: <run>.s1, .s2, .s3

PIPELINE = """\
steps:
  - key: build
    env: {{STEP: build}}
    command: '{build}'
  - key: deploy
    needs: [build]
    concurrency_group: deploy
    env: {{STEP: deploy}}
    command: '{deploy}'
  - key: lint
    needs: [build]
    env: {{STEP: lint}}
    command: '{lint}'
"""


def grouped_stack(tmp_path: Path) -> tuple[LocalStackProcess, str]:
    """A stack whose repository has 6 slots (3 deploys and 3 lints fit: its limit never makes a
    step wait) and a commit of the pipeline; the commit's sha."""
    origin = make_origin(tmp_path / "origin")
    stack = LocalStackProcess(tmp_path, config="")
    effects = stack.effects
    text = PIPELINE.format(
        build=timed(effects, 0), deploy=timed(effects, 1.5), lint=timed(effects, 1)
    )
    sha = commit_pipeline(origin.path, text)
    stack.config = (
        f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 120\nconcurrency = 6\n{UNSANDBOXED}'
        f'[repos."{REPO}"]\nclone_url = "{origin.path}"\n'
    )
    return stack.start(), sha


def deliver_all(stack: LocalStackProcess, client: httpx.Client, sha: str) -> list[str]:
    """A push of ``sha`` to each branch (one pipeline run each); their run ids."""
    return [
        stack.deliver(client, REPO, f"group-{b}", sha, branch=b).json()["job_id"] for b in BRANCHES
    ]


def all_passed(stack: LocalStackProcess, client: httpx.Client, runs: list[str]) -> None:
    for run in runs:
        job = ended(stack, client, run, timeout=60)
        assert job["status"] == "passed", (run, job["reason"], job["detail"])
        for n, key in enumerate(STEPS, 1):
            step = stack.job(client, f"{run}.s{n}")
            assert (step["step_key"], step["status"]) == (key, "passed"), step


def assert_one_at_a_time(deploys: list[Interval], killed_at: int | None = None) -> None:
    """Sorted by start, each deploy started after the one before it ended (an attempt that
    marked no end ran until the kill at the latest: its process went with the stack's runs)."""
    assert deploys == sorted(deploys, key=lambda i: i.start)
    for before, after in pairwise(deploys):
        end = before.end if before.end is not None else killed_at
        assert end is not None, f"{before} marked no end and nothing killed it"
        assert after.start >= end, f"deploys overlap: {before} and {after}"


def group_holder(stack: LocalStackProcess) -> str:
    """The job the repository's ``deploy`` group item names (read from the stack's tables)."""
    item = stack.dynamodb().get_item(
        TableName=Settings.from_env({}).tables.repos,
        Key={"repo": {"S": group_key(REPO, "deploy")}},
        ConsistentRead=True,
    )["Item"]
    return str(item["holder"]["S"])


def test_a_groups_steps_run_one_at_a_time_across_branches_beside_ungrouped_steps(
    tmp_path: Path,
) -> None:
    stack, sha = grouped_stack(tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            runs = deliver_all(stack, client, sha)
            all_passed(stack, client, runs)
            took = time.monotonic() - started
        assert_doctor_reports_nothing(stack)
        holder = group_holder(stack)
    finally:
        stack.stop()
    marked = intervals(stack.effects)
    # Every step attempt started exactly once, and marked its end.
    assert Counter((i.job_id, i.attempt) for i in marked) == {
        (f"{run}.s{n}", 1): 1 for run in runs for n in range(1, 4)
    }
    ends = {(i.job_id, i.attempt): i.end for i in marked if i.end is not None}
    assert len(ends) == len(marked), marked
    deploys = [i for i in marked if i.step == "deploy"]
    assert {i.job_id for i in deploys} == {f"{run}.s2" for run in runs}
    assert_one_at_a_time(deploys)
    # The group serialized only its own steps: a lint ran while a deploy did.
    lints = [i for i in marked if i.step == "lint"]
    beside = [
        (lint.job_id, deploy.job_id)
        for lint in lints
        for deploy in deploys
        if lint.start < ends[deploy.job_id, 1] and deploy.start < ends[lint.job_id, 1]
    ]
    assert beside, marked
    # The group's item names the deploy that took it last.
    assert holder == deploys[-1].job_id, (holder, deploys)
    gaps = [(b.start - ends[a.job_id, 1]) / 1e6 for a, b in pairwise(deploys)]
    print(json.dumps({"took_s": round(took, 1), "deploy_gaps_ms": [round(g) for g in gaps]}))


def test_a_stack_killed_while_a_deploy_holds_the_group_never_runs_two_deploys_at_once(
    tmp_path: Path,
) -> None:
    """The stack is SIGKILLed (its DynamoDB Local with it) while one deploy runs and another is
    queued behind the group, and started again: every run passes, no two deploys ever ran at
    once (one killed mid-run counts until the kill), and no step attempt started twice (a run
    lost with the stack is retried as a new attempt: ``runner_lost``)."""
    stack, sha = grouped_stack(tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            runs = deliver_all(stack, client, sha)

            def deploy_holds_group_and_another_waits() -> bool:
                running = [i for i in intervals(stack.effects) if i.step == "deploy" and not i.end]
                if not running:
                    return False
                statuses = [stack.job(client, f"{run}.s2")["status"] for run in runs]
                return statuses.count("pending") >= 1

            wait_for(
                "a deploy to run while another waits", deploy_holds_group_and_another_waits, 60, 0.1
            )
            stack.kill()
            killed_at = time.time_ns()
            stack.start()
            # DynamoDB Local may lose writes it acknowledged before the kill: GitHub would
            # deliver again (a delivery is idempotent by its id).
            assert deliver_all(stack, client, sha) == runs
            all_passed(stack, client, runs)
            attempts = {
                f"{run}.s{n}": stack.job(client, f"{run}.s{n}") for run in runs for n in range(1, 4)
            }
        assert_doctor_reports_nothing(stack)
        holder = group_holder(stack)
    finally:
        stack.stop()
    marked = intervals(stack.effects)
    deploys = [i for i in marked if i.step == "deploy"]
    assert_one_at_a_time(deploys, killed_at)
    # No step attempt started twice; a step that started again did so as a later attempt.
    started = Counter((i.job_id, i.attempt) for i in marked)
    assert started and max(started.values()) == 1, started
    assert {job_id for job_id, _ in started} == set(attempts)
    for job_id, job in attempts.items():
        tried = sorted(a for j, a in started if j == job_id)
        assert tried[-1] == job["attempt"], (job_id, tried, job)
    # Only a run lost with the stack was started again, as the retry of its runner_lost.
    again = [i for i in marked if i.attempt > 1]
    for retry in again:
        assert retry.start >= killed_at, (retry, killed_at)
        lost = [
            entry
            for entry in attempts[retry.job_id]["history"]
            if (entry["attempt"], entry["to"]) == (retry.attempt - 1, "failed")
        ]
        assert [entry["reason"] for entry in lost] == ["runner_lost"], (retry, lost)
    assert holder in {f"{run}.s2" for run in runs}, holder
    print(json.dumps({"deploys": [(i.job_id, i.attempt) for i in deploys], "again": len(again)}))
