"""GitHub's rate limits, honoured, and the ordered, coalescing send queue of check updates.

GitHub asks a client to wait in three ways (its REST guide, "Rate limits for the REST API"):
a ``retry-after`` header (secondary limits, seconds), ``x-ratelimit-remaining: 0`` with
``x-ratelimit-reset`` (primary limit, epoch seconds), or a 403/429 whose message says so with
neither header (then at least a minute). :func:`wait_asked` reads that from a response, pure.

:class:`SendQueue` holds what is still to be sent, per key (one check run's chain of updates),
in order: a key's updates are sent one after another, never overtaking; the updates submitted
within ``window_seconds`` of the first still unsent one are merged into one (a run's queued,
in_progress and completed within a second become one request). A send that GitHub asks to wait
for stays at the head of its key and the whole queue waits (the limit is the App's, not the
key's); the stream that submitted it never waits: ``submit`` only appends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from scheduler.errors import DomainError

__all__ = [
    "SECONDARY_WAIT_SECONDS",
    "RateLimited",
    "SendQueue",
    "wait_asked",
]

log = logging.getLogger(__name__)

# GitHub: "If you receive a secondary rate limit error ... wait for at least one minute".
SECONDARY_WAIT_SECONDS = 60.0
# A reset never waited for longer than this (a clock far off must not stall the queue for days).
MAX_WAIT_SECONDS = 3600.0
_LIMIT_WORDS = ("rate limit", "abuse detection")

K = TypeVar("K", bound=Hashable)
U = TypeVar("U")


class RateLimited(DomainError):
    """GitHub asked us to wait ``wait_seconds`` before the next request."""

    http_status = 503

    def __init__(self, wait_seconds: float, message: str = "rate limited by GitHub") -> None:
        super().__init__(f"{message}: wait {wait_seconds:.0f} s")
        self.wait_seconds = wait_seconds


def wait_asked(
    status: int, headers: Mapping[str, str], message: str, *, now: float
) -> float | None:
    """Seconds GitHub asks to wait after a response, or None when it asks nothing.

    ``headers`` with lower-case names; ``message`` the error body's ``message`` (or "").
    A successful response that used the last request of the window asks to wait for its reset
    too: the next request would be refused.
    """
    retry_after = headers.get("retry-after")
    remaining = headers.get("x-ratelimit-remaining")
    reset = headers.get("x-ratelimit-reset")
    limited = status in (403, 429)
    if limited and retry_after is not None:
        seconds = _number(retry_after)
        if seconds is not None:
            return _bounded(seconds)
    if remaining == "0" and reset is not None:
        reset_at = _number(reset)
        if reset_at is not None and (limited or status < 400):
            return _bounded(reset_at - now + 1)  # the reset second itself is still spent
    if status == 429 or (limited and any(w in message.lower() for w in _LIMIT_WORDS)):
        return SECONDARY_WAIT_SECONDS
    return None


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _bounded(seconds: float) -> float:
    return min(max(seconds, 1.0), MAX_WAIT_SECONDS)


@dataclass
class _Entry(Generic[U]):
    update: U
    due: float  # monotonic: when the merge window of this entry closes
    tries: int = 0


@dataclass
class _Lane(Generic[U]):
    entries: deque[_Entry[U]] = field(default_factory=deque)
    in_flight: bool = False


class SendQueue(Generic[K, U]):
    """Ordered per key, merged within a window, sent by one worker (or inline: ``pump``).

    ``merge(old, new)`` returns the one update that says both, or None when ``new`` must not
    be merged into ``old`` (it starts something ``old`` must finish first). ``send(key, update)``
    raises :class:`RateLimited` to be asked again later; any other exception is a failed try
    (retried ``attempts`` times with backoff, then dropped with a log line).
    """

    def __init__(
        self,
        send: Callable[[K, U], None],
        merge: Callable[[U, U], U | None],
        *,
        window_seconds: float = 1.0,
        attempts: int = 4,
        backoff_seconds: float = 1.0,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[], float] | None = None,
    ) -> None:
        self._send = send
        # After a send: seconds GitHub's window still asks to wait (its last request spent).
        self._pause = pause
        self._merge = merge
        self._window = window_seconds
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._clock = clock
        self._lanes: dict[K, _Lane[U]] = {}
        self._order: deque[K] = deque()  # keys with unsent entries, oldest first
        self._blocked_until = 0.0
        self._changed = threading.Condition()
        self._closed = False
        self._flushing = False
        self.sent = 0  # requests made (tests and figures)
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._run, name="check-runs", daemon=True)
            self._worker.start()

    # -- the stream's side: append, never wait -------------------------------------------------

    def submit(self, key: K, update: U) -> None:
        with self._changed:
            lane = self._lanes.setdefault(key, _Lane())
            tail = lane.entries[-1] if lane.entries else None
            # The head being sent cannot change any more: a new update goes behind it.
            sendable_tail = tail is not None and not (lane.in_flight and len(lane.entries) == 1)
            merged = self._merge(tail.update, update) if tail and sendable_tail else None
            if tail is not None and merged is not None:
                tail.update = merged
            else:
                lane.entries.append(_Entry(update, self._clock() + self._window))
                if key not in self._order:
                    self._order.append(key)
            self._changed.notify_all()
        if self._worker is None:
            self.pump()

    # -- the sending side ----------------------------------------------------------------------

    def pump(self, *, force: bool = False, deadline: float | None = None) -> int:
        """Send every entry that is due (all of them with ``force``), in order; how many were
        sent. Stops at a rate limit (the rest waits for it) and at ``deadline`` (monotonic).
        Each entry is tried once a call: one that failed waits for its backoff or the next
        call, and holds its key's later entries behind it (a GitHub that fails does not hold
        the caller for every retry of every update)."""
        count = 0
        tried: set[int] = set()
        while deadline is None or time.monotonic() < deadline:
            picked = self._next(force=force, skip=tried)
            if picked is None:
                return count
            key, entry = picked
            tried.add(id(entry))
            outcome = self._deliver(key, entry)
            if outcome == "limited":
                return count
            if outcome == "sent":
                count += 1
        return count

    def pending(self) -> int:
        with self._changed:
            return sum(len(lane.entries) for lane in self._lanes.values())

    def blocked_for(self) -> float:
        """Seconds until GitHub lets us send again (0: now)."""
        with self._changed:
            return max(0.0, self._blocked_until - self._clock())

    def _next(self, *, force: bool, skip: set[int] | None = None) -> tuple[K, _Entry[U]] | None:
        with self._changed:
            now = self._clock()
            if now < self._blocked_until:
                return None
            for key in list(self._order):
                lane = self._lanes[key]
                if lane.in_flight or not lane.entries:
                    continue
                entry = lane.entries[0]
                if skip is not None and id(entry) in skip:
                    continue  # tried in this call already
                if force or entry.due <= now:
                    lane.in_flight = True
                    return key, entry
            return None

    def _deliver(self, key: K, entry: _Entry[U]) -> str:
        done = True
        outcome = "sent"
        try:
            self._send(key, entry.update)
        except RateLimited as limited:
            done = False
            outcome = "limited"
            with self._changed:
                self._blocked_until = max(self._blocked_until, self._clock() + limited.wait_seconds)
            log.warning("GitHub asks to wait", extra={"wait_seconds": limited.wait_seconds})
        except Exception as exc:  # one try failed: retried, then dropped; never raised
            entry.tries += 1
            done = entry.tries >= self._attempts
            outcome = "dropped" if done else "retry"
            if done:
                log.warning(
                    "check run update dropped",
                    extra={"key": str(key), "problem": type(exc).__name__, "tries": entry.tries},
                )
            else:
                entry.due = self._clock() + self._backoff * 2 ** (entry.tries - 1)
        paused = self._pause() if self._pause is not None and outcome == "sent" else 0.0
        with self._changed:
            if paused > 0:
                self._blocked_until = max(self._blocked_until, self._clock() + paused)
            lane = self._lanes[key]
            lane.in_flight = False
            if outcome == "sent":
                self.sent += 1
            if done:
                lane.entries.popleft()
                if not lane.entries:
                    del self._lanes[key]
                    self._order.remove(key)
            self._changed.notify_all()
        return outcome

    def _run(self) -> None:
        while True:
            if self.pump(force=self._closed or self._flushing):
                continue
            with self._changed:
                # Closing: what GitHub still refuses (a rate limit) is given up, with a line.
                if self._closed and (not self._lanes or self._clock() < self._blocked_until):
                    if self._lanes:
                        log.warning("check run updates not sent", extra={"count": len(self._lanes)})
                    return
                self._changed.wait(timeout=self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        now = self._clock()
        if now < self._blocked_until:
            return min(self._blocked_until - now, 5.0)
        dues = [lane.entries[0].due for lane in self._lanes.values() if lane.entries]
        return min(max(min(dues) - now, 0.01), 5.0) if dues else 5.0

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is waiting now (merge windows cut short); True if nothing is left.
        What a rate limit holds stays queued."""
        if self._worker is None:  # inline (Lambda): within the caller's time, once each
            self.pump(force=True, deadline=time.monotonic() + timeout)
            return self.pending() == 0
        deadline = time.monotonic() + timeout
        with self._changed:
            self._flushing = True
            self._changed.notify_all()
            while self._lanes and time.monotonic() < deadline:
                if self._clock() < self._blocked_until:
                    break
                self._changed.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0)))
            self._flushing = False
            return not self._lanes

    def close(self, timeout: float = 5.0) -> None:
        """Send what is left (without waiting out the merge windows), then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        else:
            self.pump(force=True)
