"""The operator's dead-letter queue: list the batches stream processing gave up on, and replay
them through the stream handler.

A replay hands a letter's records to the handler again, as one Lambda-shaped batch. Every action
the handler takes is a conditional write on the status and version its record shows, so a record
already applied (by an earlier replay, or overtaken by later changes of its job) loses its
condition and changes nothing: replaying twice is harmless. A letter is marked replayed only when
the handler reported no failed record; one that still fails stays as it was.

Every letter can be replayed from a CLI process, which runs and stops nothing: a record whose
run must be stopped first (a cancel, the reaper's timeout) leaves the stop and the slot to the
engine's reconciliation (the job stays in the ``held_slots`` index until its run is known
stopped), and the replay's answer says so in its ``notes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.db.dead_letters import DeadLetter, DeadLetterSource, Handler
from scheduler.errors import DomainError

__all__ = ["DeadLetterQueue", "ReplaySummary", "Replayed", "dead_letter_job_ids"]


def dead_letter_job_ids(letter: DeadLetter) -> list[str]:
    """The jobs a letter's records are about, in record order (what an operator looks up)."""
    found: dict[str, None] = {}
    for record in letter.records:
        job_id = record.get("dynamodb", {}).get("Keys", {}).get("job_id", {}).get("S")
        if isinstance(job_id, str):
            found.setdefault(job_id)
    return list(found)


class _ErrorLog(logging.Handler):
    """Keeps what the handler logs at ERROR during a replay (its per-record failures), and the
    notes it leaves for the operator (``replay_note``: work left to the engine).

    The dispatcher logs a failed record with its traceback; captured here, it becomes one line
    of the replay's answer instead of a traceback on stderr.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        note = getattr(record, "replay_note", None)
        if isinstance(note, str):
            self.notes.append(note)
        if record.levelno < logging.ERROR:
            return
        exc = record.exc_info[1] if record.exc_info else None
        text = f"{type(exc).__name__}: {exc}" if exc else record.getMessage()
        self.messages.append(" ".join(text.split()))  # one line, whatever the cause says


@dataclass(frozen=True)
class Replayed:
    """The outcome of replaying one letter: ok when the handler reported no failed record."""

    letter: DeadLetter
    failed_records: list[str]
    errors: list[str]
    replayed_at: int
    # What the replay left to the engine: a cancelled (or timed-out) run's stop and its slot,
    # which a CLI process cannot stop; the engine's reconciliation settles them.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_records

    def to_dict(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.letter.dead_letter_id,
            "records": len(self.letter.records),
            "job_ids": dead_letter_job_ids(self.letter),
            "replayed": self.ok,
            "replayed_at": self.replayed_at if self.ok else None,
            "previously_replayed_at": self.letter.replayed_at,
            "failed_records": self.failed_records,
            "errors": self.errors,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class ReplaySummary:
    """The outcome of replaying every letter not replayed yet (``skipped``: replayed before)."""

    results: list[Replayed]
    skipped: int

    @property
    def replayed(self) -> int:
        return sum(result.ok for result in self.results)

    @property
    def failed(self) -> int:
        return sum(not result.ok for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "failed": self.failed,
            "skipped": self.skipped,
            "dead_letters": [result.to_dict() for result in self.results],
        }


class DeadLetterQueue:
    """Listing, lookup and replay of the dead letters in ``store``; ``now_ms`` is the clock
    (epoch milliseconds) a replay is stamped with."""

    def __init__(self, store: DeadLetterSource, now_ms: Callable[[], int]) -> None:
        self._store = store
        self._now_ms = now_ms

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """The letters in id order (shard, then sequence number): one page of their partition."""
        return self._store.list(limit=limit)

    def find(self, dead_letter_id: str) -> DeadLetter | None:
        """One letter by id, or None if there is none."""
        return self._store.get(dead_letter_id)

    def replay(self, letter: DeadLetter, handler: Handler) -> Replayed:
        """Hand the letter's records to ``handler``; the store marks it replayed if none failed."""
        errors = _ErrorLog()
        scheduler_log = logging.getLogger("scheduler")
        scheduler_log.addHandler(errors)
        at = self._now_ms()
        try:
            response = self._store.replay(letter, handler, at)
        except DomainError:
            raise
        except Exception as exc:  # a function error: the whole batch failed (as the runner counts)
            response = {"batchItemFailures": [{"itemIdentifier": letter.start_sequence_number}]}
            errors.messages.append(f"{type(exc).__name__}: {exc}")
        finally:
            scheduler_log.removeHandler(errors)
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        failed = [str(f.get("itemIdentifier")) for f in failures or [] if isinstance(f, dict)]
        return Replayed(letter, failed, errors.messages, at, errors.notes)

    def replay_all(self, letters: Sequence[DeadLetter], handler: Handler) -> ReplaySummary:
        """Replay those of ``letters`` not replayed yet; the others count as skipped."""
        results = [self.replay(letter, handler) for letter in letters if letter.replayed_at is None]
        return ReplaySummary(results, skipped=len(letters) - len(results))
