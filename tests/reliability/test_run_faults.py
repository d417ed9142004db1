"""Issue 10's run faults, each a scenario against a real DynamoDB Local and real processes.

Named after the scenario they reproduce; each failed on the code before its fix.
"""

from __future__ import annotations

from scheduler.db.reads import JobReads
from scheduler.db.store import JobState, JobStore, NewJob
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
    """Defect 5: backoff 10 s, timeout 2 s: the activated attempt's deadline covers the wait."""
    store = JobStore.from_settings(settings, start_grace_seconds=0)  # type: ignore[arg-type]
    first = _active(store, "backoff", timeout=2)
    failed = store.transition(first, Trigger.TIME_OUT, actor="reaper")
    store.release_slot(failed)  # its run known stopped: the timeout kept the slot until then
    retried = store.transition(failed, Trigger.RETRY, actor="retry-policy", start_delay_ms=10_000)
    second = store.activate(retried, slot_limit=10)
    item = store.get("backoff")
    assert second.attempt == 2 and item.start_delay_ms == 10_000
    assert item.deadline_at - item.activated_at >= 12_000
    # Eleven seconds on (the run still waiting out its backoff), the reaper leaves it alone.
    assert Reaper(store, clock=lambda: item.activated_at + 11_000).reap_once() == []
