"""The process's view of the database: answering, or out since when (one line per transition).

An unreachable DynamoDB is an expected bad day, not a bug, like a full disk
(:mod:`scheduler.disk_space`): the webhook answers 503, the reaper and the stream runner wait
and try again. Each of them tells :data:`STORE` what failed (:meth:`StoreOutage.failed`) and
what answered (:meth:`StoreOutage.answered`) instead of logging every attempt: the outage logs
one line when it begins (naming what failed first, and how) and one when the database answers
again (how long it lasted, how many requests were refused, how many rounds waited). Between
the two, nothing but the counters moves: no tracebacks, no line per request.

One tracker per process (the local stack's webhook, reaper and stream runner share it, so an
outage is two lines whoever met it); on AWS each function's process has its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["REFUSED", "STORE", "StoreOutage"]

log = logging.getLogger(__name__)

REFUSED = "requests refused"
"""What :meth:`StoreOutage.refused` counts: requests answered 503 during the outage."""
_DETAIL_CHARS = 200


class StoreOutage:
    """Is the database answering? One log line when it stops, one when it answers again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._since: float | None = None
        self._counts: Counter[str] = Counter()

    @property
    def out(self) -> bool:
        """True from a failure until the next answer."""
        return self._since is not None

    def failed(self, exc: BaseException, where: str) -> None:
        """``where`` (a loop, a route) met the database's failure ``exc``; it will try again."""
        self._note(exc, where, where)

    def refused(self, exc: BaseException, where: str) -> None:
        """A request (``where``: its route) was refused because of the database's failure."""
        self._note(exc, where, REFUSED)

    def answered(self) -> None:
        """The database answered a request: an outage under way is over."""
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            since, counts = self._since, self._counts
            if since is None:
                return
            self._since, self._counts = None, Counter()
        lasted = self._clock() - since
        waited = ", ".join(f"{what} x{n}" for what, n in sorted(counts.items()) if what != REFUSED)
        log.warning(
            "database answers again after %.1f s: %d requests refused (503)%s",
            lasted,
            counts[REFUSED],
            f"; waited: {waited}" if waited else "",
            extra={
                "store": "ok",
                "seconds": round(lasted, 1),
                "refused": counts[REFUSED],
                "waited": dict(counts),
            },
        )

    def _note(self, exc: BaseException, where: str, count_as: str) -> None:
        with self._lock:
            began = self._since is None
            if began:
                self._since = self._clock()
            self._counts[count_as] += 1
        if began:
            detail = _detail(exc)
            log.warning(
                "database unavailable: %s failed (%s); retrying quietly until it answers",
                where,
                detail,
                extra={"store": "unavailable", "where": where, "error": detail},
            )


def _detail(exc: BaseException) -> str:
    """One short line for ``exc``: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 1] + "…"


STORE = StoreOutage()
"""This process's view of the database."""
