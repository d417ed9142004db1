"""A failed pipeline run made as the engine makes one, with the store's own writes and the real
fan-in (no stream, no runner): for tests of what operators do with it."""

from __future__ import annotations

from typing import NoReturn

from scheduler.db.store import JobStore, NewJob, Outcome
from scheduler.pipelines import parse_pipeline
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.runs.pipeline_runs import PipelineRuns, step_id
from state_machines import Trigger

RED = """
steps:
  - {key: lint, command: [lint]}
  - {key: unit, command: [unit]}
  - {key: e2e, command: [e2e], needs: [unit]}
"""


def _no_file() -> NoReturn:
    raise AssertionError("no pipeline file is read here")


def settle(store: JobStore, run_id: str) -> str:
    """The run's fan-in and end, as the stream makes them."""
    return PipelineDriver(store, _no_file, lambda repo: _no_file()).settle(run_id)


def end(store: JobStore, job_id: str, trigger: Trigger = Trigger.PASS) -> None:
    """A queued step runs to its end (a failure owes no automatic retry); its run settles."""
    job = store.transition(store.state(job_id), Trigger.ACTIVATE, actor="test", slot_limit=10)
    outcome = Outcome(reason="exit_code", exit_code=2) if trigger is Trigger.FAIL else None
    done = store.transition(job, trigger, actor="test", outcome=outcome)
    if trigger is Trigger.FAIL:
        store.settle_retry_verdict(done)
    settle(store, job_id.rsplit(".", 1)[0])


def expanded_run(store: JobStore, text: str, *, repo: str, job_id: str, sha: str = "e" * 40) -> str:
    """A delivery's job (on main) made a pipeline run of ``text`` as the engine makes it: its
    steps out, the run active, its first fan-in done."""
    store.create(
        NewJob(
            job_id=job_id,
            repo=repo,
            event="push",
            sha=sha,
            timeout_seconds=600,
            ref="refs/heads/main",
            branch="main",
            delivery_id=job_id,
            pipeline_owed=True,
        )
    )
    PipelineRuns(store).fan_out(store.get(job_id), parse_pipeline(text.encode()))
    store.transition(store.state(job_id), Trigger.EXPAND, actor="test")
    settle(store, job_id)
    return job_id


def red_run(store: JobStore, repo: str, job_id: str = "gh-red") -> str:
    """RED on main: lint passes, unit fails, e2e (after unit) is skipped; the run failed."""
    expanded_run(store, RED, repo=repo, job_id=job_id)
    end(store, step_id(job_id, 1))
    end(store, step_id(job_id, 2), Trigger.FAIL)
    assert str(store.get(job_id).status) == "failed"
    return job_id
