"""Re-running a pipeline's steps against DynamoDB Local: ``retry RUN_ID --failed`` and
``retry STEP_ID`` reset the steps and what follows them once each, however many operators race,
the run runs again and its fan-in decides them anew; no fan-in that read the steps before the
reset ends the run; counters equal the items."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from failed_pipeline import end, settle
from failed_pipeline import expanded_run as shared_expanded_run

from scheduler.db.models import RUN_SHARD, JobModel, RepoModel
from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.errors import JobNotFound, RerunRefused
from scheduler.runs.operations import Changed, Operations
from scheduler.runs.pipeline_runs import PipelineRuns, Rerun, step_id
from state_machines import JobStatus, TransitionConflict, Trigger

REPO = "octo-org/reruns"

FAN = """
steps:
  - {key: build, command: [make]}
  - key: test
    command: [make, test]
    needs: [build]
    matrix: {python: ["3.11", "3.12", "3.13"]}
  - {key: report, command: [make, report], needs: [test], if: always()}
  - {key: deploy, command: [make, deploy], needs: [test], if: "branch == 'main'"}
"""
SPLIT = """
steps:
  - {key: a, command: [a]}
  - {key: b, command: [b]}
  - {key: c, command: [c], needs: [a]}
"""


def operations(store: JobStore) -> Operations:
    return Operations(store, Queries())


def expanded_run(store: JobStore, text: str, job_id: str = "gh-run") -> str:
    return shared_expanded_run(store, text, repo=REPO, job_id=job_id, sha="c" * 40)


def failed_fan(store: JobStore, job_id: str = "gh-run") -> str:
    """FAN on main: build passes, test[python=3.11] fails, the other variants pass, report
    (always) passes, deploy is skipped: the run fails."""
    run_id = expanded_run(store, FAN, job_id)
    end(store, step_id(run_id, 1))
    end(store, step_id(run_id, 2), Trigger.FAIL)
    end(store, step_id(run_id, 3))
    end(store, step_id(run_id, 4))
    end(store, step_id(run_id, 5))
    assert str(store.get(run_id).status) == "failed"
    return run_id


def steps_of(store: JobStore, run_id: str) -> dict[str, tuple[str, int]]:
    run = store.get(run_id)
    return {
        str(s.step_key): (str(s.status), int(s.attempt))
        for s in PipelineRuns(store).steps(run_id, int(run.step_count or 0))
    }


def counters_match_items(store: JobStore) -> None:
    counted = RepoModel.get(REPO, consistent_read=True)
    items = Counter(str(j.status) for j in JobModel.scan(consistent_read=True) if j.repo == REPO)
    for status in JobStatus:
        assert int(getattr(counted, f"n_{status.value}") or 0) == items[status.value], status


def moves(store: JobStore, job_id: str, source: str, dest: str) -> int:
    return sum(1 for h in store.get(job_id).history if (h.source, h.dest) == (source, dest))


def test_retry_failed_reruns_the_failed_steps_and_what_follows_them(store: JobStore) -> None:
    run_id = failed_fan(store)
    done = operations(store).retry_failed_steps(run_id)
    assert done.steps == ("test[python=3.11]", "report", "deploy")
    assert done.reset == (step_id(run_id, 2), step_id(run_id, 5), step_id(run_id, 6))
    assert (done.previous_status, done.status, done.attempt) == ("failed", "active", 2)
    run = store.get(run_id)
    assert (str(run.status), int(run.attempt)) == ("active", 2)
    assert run.finished_at is None and run.expires_at is None
    assert run.reason is None and run.detail is None
    assert run.deadline_shard == RUN_SHARD  # the reconciliation settles it if records are lost
    assert run.history[-1].actor == "operator" and run.history[-1].source == "failed"
    # New attempts for the steps that ran; the skipped deploy never did; passed ones keep theirs.
    assert steps_of(store, run_id) == {
        "build": ("passed", 1),
        "test[python=3.11]": ("blocked", 2),
        "test[python=3.12]": ("passed", 1),
        "test[python=3.13]": ("passed", 1),
        "report": ("blocked", 2),
        "deploy": ("blocked", 1),
    }
    failed = store.get(step_id(run_id, 2))
    assert failed.finished_at is None and failed.exit_code is None and failed.reason is None
    assert failed.run_id is None and failed.started_at is None and failed.held_shard is None
    counters_match_items(store)
    # The fan-in decides them anew: the failed variant runs; passing, what follows it runs
    # (deploy too: its need failed no more), and the run passes.
    assert settle(store, run_id) == "running"
    assert steps_of(store, run_id)["test[python=3.11]"] == ("pending", 2)
    end(store, step_id(run_id, 2))
    assert steps_of(store, run_id)["report"] == ("pending", 2)
    assert steps_of(store, run_id)["deploy"] == ("pending", 1)
    end(store, step_id(run_id, 5))
    end(store, step_id(run_id, 6))
    run = store.get(run_id)
    assert (str(run.status), int(run.attempt), run.reason) == ("passed", 2, None)
    counters_match_items(store)


def test_refusals_are_one_typed_error_and_write_nothing(store: JobStore) -> None:
    ops = operations(store)
    with pytest.raises(JobNotFound):
        ops.retry_failed_steps("no-such-run")
    run_id = expanded_run(store, SPLIT)
    with pytest.raises(RerunRefused, match="active, not failed"):
        ops.retry_failed_steps(run_id)
    with pytest.raises(RerunRefused, match="a pipeline's step"):
        ops.retry_failed_steps(step_id(run_id, 1))
    with pytest.raises(RerunRefused, match="the step is pending"):
        ops.retry(step_id(run_id, 1))
    # An ordinary job: --failed is refused, its retry is as it always was.
    store.create(NewJob(job_id="plain", repo=REPO, event="push", sha="d" * 40, timeout_seconds=60))
    end(store, "plain", Trigger.FAIL)
    with pytest.raises(RerunRefused, match="not a pipeline run"):
        ops.retry_failed_steps("plain")
    retried = ops.retry("plain")
    assert isinstance(retried, Changed) and (retried.status, retried.attempt) == ("pending", 2)
    # A run is not retried as a whole: the error names --failed.
    fan = failed_fan(store, "gh-fan")
    with pytest.raises(RerunRefused, match="--failed"):
        ops.retry(fan)
    version = int(store.get(fan).version)
    assert isinstance(ops.retry_failed_steps(fan), Rerun)
    # Twice: the run runs again, nothing is left to re-run, nothing is written.
    with pytest.raises(RerunRefused, match="active, not failed"):
        ops.retry_failed_steps(fan)
    assert int(store.get(fan).version) == version + 1
    counters_match_items(store)


@pytest.mark.parametrize("racers", [8, 16])
def test_racing_reruns_reset_each_step_once_and_rerun_the_run_once(
    store: JobStore, racers: int
) -> None:
    run_id = failed_fan(store)
    barrier = threading.Barrier(racers)
    outcomes: list[object] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        try:
            result: object = operations(store).retry_failed_steps(run_id)
        except (RerunRefused, TransitionConflict) as exc:
            result = exc
        except BaseException as exc:  # any other error fails the test below
            result = ("unexpected", exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == racers
    assert not [o for o in outcomes if isinstance(o, tuple)], outcomes
    won = [o for o in outcomes if isinstance(o, Rerun)]
    assert len(won) >= 1
    # Each step reset by exactly one writer, whichever; the run re-run exactly once.
    reset = [job_id for o in won for job_id in o.reset]
    assert sorted(reset) == sorted([step_id(run_id, n) for n in (2, 5, 6)])
    assert moves(store, run_id, "failed", "active") == 1
    for n, source in ((2, "failed"), (5, "passed"), (6, "skipped")):
        assert moves(store, step_id(run_id, n), source, "blocked") == 1
    assert steps_of(store, run_id)["test[python=3.11]"] == ("blocked", 2)
    assert int(store.get(run_id).attempt) == 2
    counters_match_items(store)


def test_a_fan_in_that_read_the_steps_before_a_step_rerun_cannot_end_the_run(
    store: JobStore,
) -> None:
    """a fails, c (after a) is skipped, b passes: a fan-in reads the run and decides it failed.
    An operator re-runs a before that fan-in writes: its end is refused, a runs again."""
    run_id = expanded_run(store, SPLIT)
    end(store, step_id(run_id, 1), Trigger.FAIL)
    b = store.transition(store.state(step_id(run_id, 2)), Trigger.ACTIVATE, actor="t", slot_limit=9)
    store.transition(b, Trigger.PASS, actor="t")
    stale = store.state(run_id)  # a fan-in's read of its run, then of the steps (all ended)
    assert stale.status is JobStatus.ACTIVE
    done = operations(store).retry(step_id(run_id, 1))
    assert isinstance(done, Rerun) and done.job_id == step_id(run_id, 1)
    assert done.steps == ("a", "c") and (done.status, done.attempt) == ("active", 1)
    with pytest.raises(TransitionConflict):
        store.transition(stale, Trigger.FAIL, actor="stale fan-in")
    assert settle(store, run_id) == "running"
    assert steps_of(store, run_id) == {"a": ("pending", 2), "b": ("passed", 1), "c": ("blocked", 1)}
    counters_match_items(store)


class EndsBeforeTouch(JobStore):
    """A store whose run is ended by a stale fan-in just before a re-run's write of it."""

    stale: JobState | None = None

    def touch_run(self, run: JobState, *, actor: str) -> JobState:
        if self.stale is not None:
            self.transition(self.stale, Trigger.FAIL, actor="stale fan-in")
            self.stale = None
        return super().touch_run(run, actor=actor)


def test_a_run_ended_meanwhile_by_a_stale_fan_in_is_rerun(store: JobStore) -> None:
    racing = EndsBeforeTouch(store.connection)
    run_id = expanded_run(racing, SPLIT)
    end(racing, step_id(run_id, 1), Trigger.FAIL)
    b = racing.transition(
        racing.state(step_id(run_id, 2)), Trigger.ACTIVATE, actor="t", slot_limit=9
    )
    racing.transition(b, Trigger.PASS, actor="t")
    racing.stale = racing.state(run_id)
    done = operations(racing).retry(step_id(run_id, 1))
    assert isinstance(done, Rerun) and (done.status, done.attempt) == ("active", 2)
    run = racing.get(run_id)
    assert [(h.source, h.dest) for h in run.history[-2:]] == [
        ("active", "failed"),
        ("failed", "active"),
    ]
    assert settle(racing, run_id) == "running"
    assert steps_of(racing, run_id)["a"] == ("pending", 2)


def test_a_step_of_a_passed_run_reruns_with_what_follows_it(store: JobStore) -> None:
    run_id = expanded_run(store, SPLIT)
    for n in (1, 2):
        end(store, step_id(run_id, n))
    end(store, step_id(run_id, 3))
    assert str(store.get(run_id).status) == "passed"
    done = operations(store).retry(step_id(run_id, 1))
    assert isinstance(done, Rerun) and (done.previous_status, done.status) == ("passed", "active")
    assert steps_of(store, run_id) == {"a": ("blocked", 2), "b": ("passed", 1), "c": ("blocked", 2)}
    settle(store, run_id)
    end(store, step_id(run_id, 1))
    end(store, step_id(run_id, 3))
    assert (str(store.get(run_id).status), int(store.get(run_id).attempt)) == ("passed", 2)


def test_a_step_is_not_rerun_while_a_step_after_it_runs(store: JobStore) -> None:
    run_id = expanded_run(store, SPLIT)
    end(store, step_id(run_id, 1))
    store.transition(store.state(step_id(run_id, 3)), Trigger.ACTIVATE, actor="t", slot_limit=9)
    before = store.get(step_id(run_id, 1)).version
    with pytest.raises(RerunRefused, match=r"step c .* is active"):
        operations(store).retry(step_id(run_id, 1))
    assert store.get(step_id(run_id, 1)).version == before


def test_a_step_whose_automatic_retry_is_still_owed_is_not_rerun(store: JobStore) -> None:
    run_id = expanded_run(store, SPLIT)
    a = store.transition(store.state(step_id(run_id, 1)), Trigger.ACTIVATE, actor="t", slot_limit=9)
    store.transition(a, Trigger.FAIL, actor="t", outcome=Outcome(reason="exit_code"))
    with pytest.raises(RerunRefused, match=r"failed \(its stop or automatic retry still owed\)"):
        operations(store).retry(step_id(run_id, 1))
    assert steps_of(store, run_id)["a"] == ("failed", 1)


def test_a_rerun_cut_short_is_finished_by_the_next(store: JobStore) -> None:
    run_id = failed_fan(store)
    # The first re-run reset the failed step, then died: the run is still failed.
    store.transition(store.state(step_id(run_id, 2)), Trigger.REBLOCK, actor="operator")
    done = operations(store).retry_failed_steps(run_id)
    assert done.steps == ("test[python=3.11]", "report", "deploy")
    assert done.reset == (step_id(run_id, 5), step_id(run_id, 6))
    assert int(store.get(step_id(run_id, 2)).attempt) == 2  # one new attempt, not two
    assert done.status == "active"


def test_a_cancelled_run_reruns_its_cancelled_steps(store: JobStore) -> None:
    run_id = expanded_run(store, SPLIT)
    end(store, step_id(run_id, 2))
    store.transition(store.state(run_id), Trigger.CANCEL, actor="operator")
    assert settle(store, run_id) == "cancelled"
    done = operations(store).retry_failed_steps(run_id)
    assert done.steps == ("a", "c") and done.previous_status == "cancelled"
    assert steps_of(store, run_id) == {"a": ("blocked", 2), "b": ("passed", 1), "c": ("blocked", 2)}
    assert settle(store, run_id) == "running"
    counters_match_items(store)


def test_retry_all_failed_reruns_a_runs_failed_steps_and_leaves_its_steps_to_it(
    store: JobStore,
) -> None:
    run_id = failed_fan(store)
    summary = operations(store).retry_all_failed(REPO)
    by_job = {item.job_id: item for item in summary.items}
    assert (by_job[run_id].outcome.value, by_job[run_id].attempt) == ("retried", 2)
    step = by_job[step_id(run_id, 2)]
    assert step.outcome.value == "skipped" and step.reason == f"a step of pipeline run {run_id}"
    assert summary.retried == 1 and summary.refused == 0
    assert steps_of(store, run_id)["test[python=3.11]"] == ("blocked", 2)
    assert str(store.get(run_id).status) == "active"


def test_reruns_racing_fan_ins_leave_each_step_decided_once(store: JobStore) -> None:
    """Four operators re-run while four fan-ins (the stream, the reconciliation) settle the
    run over and over: each step is reset once, then queued once, and the run runs."""
    run_id = failed_fan(store)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def operator() -> None:
        barrier.wait()
        try:
            operations(store).retry_failed_steps(run_id)
        except (RerunRefused, TransitionConflict):
            pass  # another operator's re-run came first
        except BaseException as exc:  # reported below
            errors.append(exc)

    def fan_in() -> None:
        barrier.wait()
        try:
            for _ in range(5):
                settle(store, run_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=operator) for _ in range(4)]
    threads += [threading.Thread(target=fan_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    settle(store, run_id)  # the fan-in the run's re-run record makes
    assert moves(store, run_id, "failed", "active") == 1
    assert str(store.get(run_id).status) == "active"
    failed = step_id(run_id, 2)
    assert moves(store, failed, "failed", "blocked") == 1
    assert moves(store, failed, "blocked", "pending") == 2  # attempt 1's, then attempt 2's
    assert steps_of(store, run_id)["test[python=3.11]"] == ("pending", 2)
    assert steps_of(store, run_id)["report"] == ("blocked", 2)
    counters_match_items(store)
