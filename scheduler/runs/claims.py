"""Where a runtime claims its runs: the one way the two runtimes' run lifecycles differ.

The lifecycle is the same on both (see :mod:`scheduler.stream.decide` for what each transition
calls for): a job is activated when its repository has a free slot; the ``active`` record
starts its run, idempotent by ``job_id#attempt``; the run reports its outcome through the
attempt-guarded finish; a cancel or the reaper's timeout keeps the slot until the run is known
stopped (the record, or the reconciliation, frees it); a finish frees the slot and its record
promotes the queue (or the finish hands the slot to the head of the queue in its own write).

What differs is who writes the claim of the attempt's run, chosen in each runtime's
composition (never a flag through the core):

- :class:`ClaimAtStart` (AWS): the ``active`` record's start claims the run
  (``JobStore.claim_run``) right before ``StartBuild``; any invocation may start any run.
- :class:`ClaimOnActivation` (local): the activation writes the claim, naming this runner
  (its folder), so the run needs no write of its own; a finish can hand its slot on, as the
  next run's claim is written with it; a claim that names this runner but never ran is
  started again, one that names another runner is lost with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from scheduler.db.models import JobModel
from scheduler.runs.starter import RunStarter, SlotLimitFor

__all__ = ["ClaimAtStart", "ClaimOnActivation", "RunClaims"]


class RunClaims(Protocol):
    """Who claims a runtime's runs, and what follows from it for the rest of the core."""

    @property
    def full_margin_ms(self) -> int:
        """How long before a repository was found full a job must have queued to be left
        queued without trying (clocks apart, indexes that lag: see ``FullRepos``)."""
        ...

    def hand_off_for(self, slot_limit_for: SlotLimitFor) -> SlotLimitFor | None:
        """The finish hands its slot to the queue's head with this limit (None: it never)."""
        ...

    def claiming(self, runs: RunStarter) -> RunStarter | None:
        """The starter the activation writes claims for (None: runs claim themselves)."""
        ...

    def restart_claimed(self, runs: RunStarter) -> Callable[[JobModel, int], object] | None:
        """How the reaper starts again a claimed run this runner never took (None: never)."""
        ...

    def owns_claim(self, runs: RunStarter) -> Callable[[JobModel], bool] | None:
        """Whether a claim names this runner (None: any runner may start any claim)."""
        ...


class ClaimAtStart:
    """The AWS runtime: the start claims the run; nothing names a runner."""

    full_margin_ms = 1_000  # clocks of many hosts, and GSIs that lag the table

    def hand_off_for(self, slot_limit_for: SlotLimitFor) -> SlotLimitFor | None:
        return None

    def claiming(self, runs: RunStarter) -> RunStarter | None:
        return None

    def restart_claimed(self, runs: RunStarter) -> Callable[[JobModel, int], object] | None:
        return None

    def owns_claim(self, runs: RunStarter) -> Callable[[JobModel], bool] | None:
        return None


class ClaimOnActivation:
    """The local runtime: the activation claims the run for this runner, whose logs say which
    attempts it ever took (``LocalExecutor.status``)."""

    full_margin_ms = 0  # one clock, and DynamoDB Local's indexes follow each write

    def hand_off_for(self, slot_limit_for: SlotLimitFor) -> SlotLimitFor | None:
        return slot_limit_for

    def claiming(self, runs: RunStarter) -> RunStarter | None:
        return runs

    def restart_claimed(self, runs: RunStarter) -> Callable[[JobModel, int], object] | None:
        return runs.start_claimed

    def owns_claim(self, runs: RunStarter) -> Callable[[JobModel], bool] | None:
        return runs.owns_claim
