"""Issue 10's run faults, each a scenario against a real DynamoDB Local and real processes.

Named after the scenario they reproduce; each failed on the code before its fix.
"""

from __future__ import annotations

from scheduler.db.reads import JobReads
from scheduler.db.store import JobState, JobStore, NewJob, RunClaimed
from scheduler.runs.reaper import Reaper
from state_machines import Trigger


def _active(store: JobStore, job_id: str, timeout: int) -> JobState:
    job = store.create(NewJob(job_id, "o/r", "push", "a" * 40, timeout, ref="refs/heads/main"))
    return store.activate(job, slot_limit=10)


def test_a_claim_landing_between_the_reapers_read_and_write_wins(store: JobStore) -> None:
    """Defect 6: the reaper read an overdue, unclaimed job; the run is claimed (it starts) before
    the reaper writes. The reaper must lose, not fail a job whose process now runs."""
    job = _active(store, "reap-race", timeout=1)
    future = store.get("reap-race").deadline_at + 1

    class ClaimAfterRead(JobReads):
        def overdue(self, now: int, *, limit: int) -> list:  # type: ignore[type-arg]
            found = super().overdue(now, limit=limit)
            store.claim_run(job, "reap-race#1")  # the run starts right now
            return found

    store.reads = ClaimAfterRead(store.connection)
    assert Reaper(store, clock=lambda: future).reap_once() == []
    after = store.get("reap-race")
    assert (after.status, after.run_id) == ("active", "reap-race#1")


def test_a_retry_backoff_longer_than_the_timeout_is_not_reaped_before_it_starts(
    settings: object, tables: object
) -> None:
    """Defect 5: backoff 10 s, timeout 2 s: the activated attempt's deadline covers the wait.

    An activation whose write claims no run (the AWS runtime's) is due back after the backoff
    and the start grace (1 s here), by when its claim is due; the claim then counts the
    timeout from the run's start. One that claims in its write (the local runtime's) covers
    the backoff, the grace and the timeout at once.
    """
    store = JobStore.from_settings(settings, start_grace_seconds=1)  # type: ignore[arg-type]
    first = _active(store, "backoff", timeout=2)
    failed = store.transition(first, Trigger.TIME_OUT, actor="reaper")
    store.release_slot(failed)  # its run known stopped: the timeout kept the slot until then
    retried = store.transition(failed, Trigger.RETRY, actor="retry-policy", start_delay_ms=10_000)
    second = store.activate(retried, slot_limit=10)
    item = store.get("backoff")
    assert second.attempt == 2 and item.start_delay_ms == 10_000
    assert item.deadline_at - item.activated_at == 11_000  # the backoff and the grace
    # Ten and a half seconds on (the run still due to be claimed), the reaper leaves it alone.
    at = int(item.activated_at)
    assert Reaper(store, clock=lambda: at + 10_500).reap_once() == []
    # Claimed as its backoff ends: from then on the deadline is its timeout.
    store.claim_run(JobState.from_model(store.get("backoff")), "backoff#2")
    claimed = store.get("backoff")
    assert claimed.deadline_at - claimed.started_at == 2_000
    assert str(claimed.status) == "active"

    local = JobStore.from_settings(settings, start_grace_seconds=1)  # type: ignore[arg-type]
    first = _active(local, "backoff-local", timeout=2)
    failed = local.transition(first, Trigger.TIME_OUT, actor="reaper")
    local.release_slot(failed)
    retried = local.transition(failed, Trigger.RETRY, actor="retry-policy", start_delay_ms=10_000)
    local.activate(retried, slot_limit=10, claim=RunClaimed("backoff-local#2"))
    item = local.get("backoff-local")
    assert item.deadline_at - item.activated_at == 13_000  # backoff, grace and timeout
    later = int(item.activated_at) + 12_000
    assert "backoff-local" not in Reaper(local, clock=lambda: later).reap_once()
