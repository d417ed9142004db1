"""Fan-out and fan-in of a pipeline run's steps against DynamoDB Local: each step made once,
unblocked or skipped exactly once however many fan-ins race, counters equal to the items."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

import pytest

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.pipelines import Pipeline, parse_pipeline
from scheduler.runs.doctor import examine
from scheduler.runs.pipeline_runs import PipelineRuns, step_id
from state_machines import JobStatus, Trigger

REPO = "octo-org/pipelines"


def run_job(
    store: JobStore, job_id: str = "gh-run", branch: str = "main", *, fork: bool = False
) -> JobModel:
    store.create(
        NewJob(
            job_id=job_id,
            repo=REPO,
            event="pull_request" if fork else "push",
            sha="b" * 40,
            timeout_seconds=600,
            ref=f"refs/heads/{branch}",
            branch=branch,
            pr_number=7 if fork else None,
            delivery_id=job_id,
            fork=fork,
        )
    )
    return store.get(job_id)


def pipeline(text: str) -> Pipeline:
    return parse_pipeline(text.encode())


FAN = pipeline(
    """
steps:
  - {key: build, command: [make]}
  - key: test
    command: [make, test]
    needs: [build]
    matrix: {python: ["3.11", "3.12", "3.13"]}
  - {key: report, command: [make, report], needs: [test], if: always()}
  - key: deploy
    command: [make, deploy]
    needs: [test]
    if: "branch == 'main'"
    concurrency_group: deploy
"""
)


def status_of(store: JobStore, job_id: str) -> str:
    return str(store.get(job_id).status)


def by_key(store: JobStore, run: JobModel) -> dict[str, JobModel]:
    runs = PipelineRuns(store)
    return {str(s.step_key): s for s in runs.steps(run.job_id, int(run.step_count or 0))}


def end(store: JobStore, job_id: str, trigger: Trigger = Trigger.PASS) -> None:
    """Run a step to its end as the engine would: unblock (a root), activate (a slot), then
    pass or fail."""
    job = store.state(job_id)
    if job.status is JobStatus.BLOCKED:
        job = store.transition(job, Trigger.UNBLOCK, actor="test")
    job = store.transition(job, Trigger.ACTIVATE, actor="test", slot_limit=10)
    outcome = Outcome(reason="exit_code", exit_code=1) if trigger is Trigger.FAIL else None
    store.transition(job, trigger, actor="test", outcome=outcome)


def settle_retry(store: JobStore, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        store.settle_retry_verdict(store.state(job_id))


def counters_match_items(store: JobStore) -> None:
    counted = RepoModel.get(REPO, consistent_read=True)
    items = Counter(str(j.status) for j in JobModel.scan(consistent_read=True) if j.repo == REPO)
    for status in JobStatus:
        assert int(getattr(counted, f"n_{status.value}") or 0) == items[status.value], status


def count_writes(store: JobStore) -> list[str]:
    """The names of the write requests the store sends from now on."""
    writes: list[str] = []
    store.connection.client.meta.events.register(
        "before-call.dynamodb",
        lambda model, **_: writes.append(model.name) if "Write" in model.name else None,
    )
    return writes


def test_fan_out_makes_each_step_once_all_blocked(store: JobStore) -> None:
    run = run_job(store)
    runs = PipelineRuns(store)
    made = runs.fan_out(run, FAN)
    assert made == [step_id(run.job_id, n) for n in range(1, 7)]
    assert runs.fan_out(store.get(run.job_id), FAN) == []  # a replay makes nothing
    run = store.get(run.job_id)
    assert int(run.step_count) == 6
    steps = by_key(store, run)
    assert {key: str(s.status) for key, s in steps.items()} == {
        "build": "blocked",
        "test[python=3.11]": "blocked",
        "test[python=3.12]": "blocked",
        "test[python=3.13]": "blocked",
        "report": "blocked",
        "deploy": "blocked",
    }
    build = steps["build"]
    assert build.queue_repo is None and build.run_of == run.job_id
    blocked = steps["deploy"]
    assert blocked.queue_repo is None and blocked.waiting_repo is None  # neither queued nor waiting
    assert blocked.concurrency_group == "deploy" and build.concurrency_group is None
    counters_match_items(store)
    # The repository's last job is still the delivery's: the run, not its last step.
    assert RepoModel.get(run.repo, consistent_read=True).last_job_id == run.job_id


GROUPED = pipeline("steps:\n  - {key: deploy, command: [./deploy], concurrency_group: deploy}\n")


def test_a_forks_steps_never_take_the_repositorys_own_groups(store: JobStore) -> None:
    """A fork's pull request names the repository's deploy group in its file: its step takes
    a group of forks (``fork#deploy``), so it cannot hold the repository's own deploys back."""
    runs = PipelineRuns(store)
    fork = runs.fan_out(run_job(store, "gh-fork", fork=True), GROUPED)[0]
    own = runs.fan_out(run_job(store, "gh-own"), GROUPED)[0]
    assert store.get(fork).concurrency_group == "fork#deploy"
    assert store.get(own).concurrency_group == "deploy"
    for step in (fork, own):
        store.transition(store.state(step), Trigger.UNBLOCK, actor="test")
    store.activate(store.state(fork), slot_limit=5)
    store.activate(store.state(own), slot_limit=5)  # not held back by the fork's deploy
    assert {str(store.get(step).status) for step in (fork, own)} == {"active"}


def wide_pipeline(width: int) -> Pipeline:
    values = ", ".join(str(n) for n in range(width))
    return pipeline(
        "steps:\n  - {key: root, command: [true]}\n"
        f"  - key: fan\n    command: [true]\n    needs: [root]\n    matrix: {{n: [{values}]}}\n"
    )


def test_fan_out_writes_up_to_99_steps_a_transaction(store: JobStore) -> None:
    """150 steps cost two writes (99 + 51, each with the counters), not 150."""
    run = run_job(store)
    writes = count_writes(store)
    made = PipelineRuns(store).fan_out(run, wide_pipeline(149))
    assert made == [step_id(run.job_id, n) for n in range(1, 151)]
    assert writes == ["TransactWriteItems", "TransactWriteItems"]
    assert int(store.get(run.job_id).step_count) == 150
    steps = PipelineRuns(store).steps(run.job_id, 150)
    assert [str(s.status) for s in steps] == ["blocked"] * 150
    assert [str(s.step_key) for s in steps[:2]] == ["root", "fan[n=0]"]
    counters_match_items(store)


def test_a_fan_out_cut_short_is_finished_by_its_replay(store: JobStore) -> None:
    """Some steps made already (a fan-out cut short, or another process's under way): the
    replay makes the rest, each once, and leaves those there as they were."""
    run = run_job(store)
    wide = wide_pipeline(120)
    runs = PipelineRuns(store)
    runs.fan_out(run, wide)
    there = {step_id(run.job_id, n) for n in (3, 50)}  # both in the first 99
    for step in runs.steps(run.job_id, 121):
        if step.job_id not in there:
            step.delete()
    RepoModel(REPO).update(actions=[RepoModel.n_blocked.set(len(there))])
    before = {job_id: int(store.get(job_id).version) for job_id in there}
    writes = count_writes(store)
    made = runs.fan_out(store.get(run.job_id), wide)
    assert made == [
        step_id(run.job_id, n) for n in range(1, 122) if step_id(run.job_id, n) not in there
    ]
    # The first 99: refused (naming the two there), then the 97 missing; then the other 22.
    assert len(writes) == 3
    assert {job_id: int(store.get(job_id).version) for job_id in there} == before
    assert len(runs.steps(run.job_id, 121)) == 121
    assert runs.fan_out(store.get(run.job_id), wide) == []
    counters_match_items(store)


def test_a_run_keeps_one_pipeline(store: JobStore) -> None:
    run = run_job(store)
    PipelineRuns(store).fan_out(run, FAN)
    other = pipeline("steps:\n  - {key: only, command: [true]}\n")
    with pytest.raises(Exception, match="lost a race"):
        PipelineRuns(store).fan_out(store.get(run.job_id), other)


def test_fan_in_unblocks_when_the_last_need_ends_and_skips_what_its_if_refuses(
    store: JobStore,
) -> None:
    run = run_job(store, branch="feature")
    runs = PipelineRuns(store)
    runs.fan_out(run, FAN)
    run = store.get(run.job_id)
    # The first fan-in queues the root; the rest wait for it.
    assert runs.fan_in(run).unblocked == (step_id(run.job_id, 1),)
    assert runs.fan_in(run).unblocked == ()  # build has not ended
    end(store, step_id(run.job_id, 1))
    first = runs.fan_in(run)
    assert len(first.unblocked) == 3 and first.verdict == "running"
    tests = [step_id(run.job_id, n) for n in (2, 3, 4)]
    end(store, tests[0])
    end(store, tests[1])
    assert runs.fan_in(run).unblocked == ()  # one variant of test still to end
    end(store, tests[2])
    last = runs.fan_in(run)
    # report runs (always), deploy is skipped: its if says main, the branch is feature.
    assert last.unblocked == (step_id(run.job_id, 5),)
    assert last.skipped == (step_id(run.job_id, 6),)
    end(store, step_id(run.job_id, 5))
    assert runs.fan_in(run).verdict == "passed"  # a skipped step does not fail the run
    counters_match_items(store)


def test_a_failed_need_skips_its_dependents_unless_their_if_says_always(
    store: JobStore,
) -> None:
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, FAN)
    run = store.get(run.job_id)
    end(store, step_id(run.job_id, 1))
    runs.fan_in(run)
    tests = [step_id(run.job_id, n) for n in (2, 3, 4)]
    end(store, tests[0], Trigger.FAIL)
    # A failure whose automatic retry may still be owed has not ended for its dependents.
    for job_id in tests[1:]:
        end(store, job_id)
    assert runs.fan_in(run).unblocked == ()
    settle_retry(store, tests[:1])
    after = runs.fan_in(run)
    assert after.unblocked == (step_id(run.job_id, 5),)  # report: always()
    assert after.skipped == (step_id(run.job_id, 6),)  # deploy: its need failed
    end(store, step_id(run.job_id, 5))
    assert runs.fan_in(run).verdict == "failed"


@pytest.mark.parametrize("racers", [8])
def test_racing_fan_ins_unblock_each_step_exactly_once(store: JobStore, racers: int) -> None:
    """Eight threads call the fan-in at once, three times each, after the last need of 48
    parallel steps ended: each step leaves blocked once, by one writer, and the counters equal
    the items."""
    wide = pipeline(
        "steps:\n  - {key: root, command: [true]}\n"
        "  - key: fan\n    command: [true]\n    needs: [root]\n"
        "    matrix: {a: [1, 2, 3, 4, 5, 6], b: [1, 2, 3, 4, 5, 6, 7, 8]}\n"
        "  - {key: join, command: [true], needs: [fan]}\n"
    )
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, wide)
    run = store.get(run.job_id)
    end(store, step_id(run.job_id, 1))
    barrier = threading.Barrier(racers)
    moved: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def race() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                done = PipelineRuns(store).fan_in(run)
                with lock:
                    moved.extend(done.unblocked)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    fan = [step_id(run.job_id, n) for n in range(2, 50)]
    assert sorted(moved) == sorted(fan)  # each once, whichever thread
    for job_id in fan:
        item = store.get(job_id)
        assert str(item.status) == "pending"
        unblocks = [h for h in item.history if (h.source, h.dest) == ("blocked", "pending")]
        assert len(unblocks) == 1, job_id
    assert status_of(store, step_id(run.job_id, 50)) == "blocked"
    counters_match_items(store)
    jobs = [j for j in JobModel.scan(consistent_read=True) if j.repo == REPO]
    drift, _ = examine(RepoModel.get(REPO, consistent_read=True), jobs, 0, 300_000)
    assert drift == []


def test_a_cancelled_blocked_step_is_left_alone_by_the_fan_in(store: JobStore) -> None:
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, FAN)
    run = store.get(run.job_id)
    deploy = step_id(run.job_id, 6)
    store.transition(store.state(deploy), Trigger.CANCEL, actor="test")
    end(store, step_id(run.job_id, 1))
    runs.fan_in(run)
    for job_id in [step_id(run.job_id, n) for n in (2, 3, 4)]:
        end(store, job_id)
    last = runs.fan_in(run)
    assert deploy not in last.unblocked + last.skipped
    assert status_of(store, deploy) == "cancelled"
    assert isinstance(store.state(deploy), JobState)


def test_a_fan_in_queues_a_matrix_in_one_write(store: JobStore) -> None:
    """The root ended: its 48 dependents are unblocked by one transaction, each once, with
    its history entry, and the counters move with them."""
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, wide_pipeline(48))
    run = store.get(run.job_id)
    end(store, step_id(run.job_id, 1))
    writes = count_writes(store)
    done = runs.fan_in(run)
    assert writes == ["TransactWriteItems"]
    assert done.unblocked == tuple(step_id(run.job_id, n) for n in range(2, 50))
    for step in runs.steps(run.job_id, 49)[1:]:
        assert str(step.status) == "pending" and step.queue_repo == REPO
        assert [(h.source, h.dest) for h in step.history][-1] == ("blocked", "pending")
    counters_match_items(store)


def test_moving_steps_together_leaves_out_one_that_moved_since_it_was_read(
    store: JobStore,
) -> None:
    """Three steps read blocked, one cancelled since: the other two are unblocked (the
    transaction is refused once, naming it, then sent without it), the cancelled one is left."""
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, wide_pipeline(3))
    read = [store.state(step_id(run.job_id, n)) for n in (2, 3, 4)]
    store.transition(read[1], Trigger.CANCEL, actor="test")
    writes = count_writes(store)
    moved = store.transition_all(read, Trigger.UNBLOCK, actor="test")
    assert moved == [read[0].job_id, read[2].job_id]
    assert len(writes) == 2
    assert [status_of(store, job.job_id) for job in read] == ["pending", "cancelled", "pending"]
    assert store.transition_all(read[:1], Trigger.UNBLOCK, actor="test") == []  # moved since
    counters_match_items(store)


def test_a_fan_in_reads_its_steps_without_their_history(store: JobStore) -> None:
    """Every step's end reads all its run's steps: only what the fan-in needs is read, never
    the history that grows with each transition."""
    run = run_job(store)
    runs = PipelineRuns(store)
    runs.fan_out(run, FAN)
    run = store.get(run.job_id)
    asked: list[dict[str, object]] = []

    def seen(params: dict[str, object], **_: object) -> None:
        asked.append(params)

    events = JobModel._get_connection().connection.client.meta.events
    event = "provide-client-params.dynamodb.BatchGetItem"
    events.register(event, seen)
    try:
        assert runs.fan_in(run).unblocked == (step_id(run.job_id, 1),)
    finally:
        events.unregister(event, seen)
    (request,) = asked
    (table,) = request["RequestItems"].values()  # type: ignore[attr-defined]
    projection = str(table["ProjectionExpression"])
    names = {table["ExpressionAttributeNames"][n] for n in projection.replace(" ", "").split(",")}
    assert "history" not in names and {"status", "version", "step", "held_shard"} <= names
