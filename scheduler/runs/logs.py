"""Reading a run's output, whichever runtime ran it (the ``logs`` use case).

A :class:`LogReader` is the runtime's way to the bytes: files under the local stack's data
directory, or the CodeBuild build's CloudWatch Logs stream on AWS (chosen by the composition
root). :class:`RunLogs` finds the attempt from the job item, reads through the reader and masks
the operator's secrets, for the log route, ``scheduler logs`` (``--follow`` too) and the tail of
a failed run that ``scheduler show`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from scheduler.db.queries import JobDetail, Queries
from scheduler.errors import InvalidArgument, LogNotFound
from scheduler.runs.masking import NO_MASK, Masker
from state_machines import JobStatus

__all__ = [
    "LOST_OUTPUT_NOTE",
    "READ_LIMIT_BYTES",
    "TAIL_LINES",
    "LogChunk",
    "LogPage",
    "LogReader",
    "LogTarget",
    "RunLogs",
    "last_lines",
    "lost_output",
    "parse_attempt",
]

READ_LIMIT_BYTES = 4 * 1024 * 1024  # one answer of the route: under Lambda's 6 MB response
TAIL_LINES = 10
CARRY_MAX_BYTES = 64 * 1024  # a follower holds back at most this much of an unfinished line
MAX_ATTEMPT = 10_000
PAGE_BYTES = 256 * 1024  # new output one page of a live tail (the dashboard) reads at most
# The words of the marker a runner writes where a log lost output (a full disk): "[scheduler:
# N bytes of output lost here: the disk was full from T1 to T2]". Readers show it as is; the
# dashboard also says so above the log.
LOST_OUTPUT_NOTE = "bytes of output lost here"


@dataclass(frozen=True, slots=True)
class LogTarget:
    """Which output to read: a job's attempt, with what the job item says about its run."""

    job_id: str
    attempt: int
    run_id: str | None = None  # known for the job's current attempt only
    log_location: str | None = None  # likewise


@dataclass(frozen=True, slots=True)
class LogChunk:
    data: bytes
    cursor: str  # pass it back to read on from here
    more: bool = False  # the limit stopped the read: more output is there already


@dataclass(frozen=True, slots=True)
class LogPage:
    """New output of an attempt since a page cursor: whole lines only while the run goes
    (a secret is never split between two pages, so masking sees it whole)."""

    attempt: int
    text: str  # masked
    cursor: str  # pass it back for the next page
    final: bool  # the attempt writes no more and all of it was shown
    more: bool  # more output is there already: ask again at once


class LogReader(Protocol):
    def read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        """At most ``limit`` bytes of output from ``cursor`` (None: the start).

        Raises :class:`LogNotFound` when there is no output (yet) for the attempt.
        """


def parse_attempt(value: str | int | None, current: int) -> int:
    """``?attempt=`` / ``--attempt``: None or empty is the job's current attempt."""
    if value is None or value == "":
        return current
    text = str(value).strip()
    if (
        not (text.isascii() and text.isdecimal() and len(text) <= 6)
        or not 1 <= int(text) <= MAX_ATTEMPT
    ):
        raise InvalidArgument(f"attempt must be a whole number from 1, got {str(value)[:20]!r}")
    return int(text)


def last_lines(data: bytes, count: int = TAIL_LINES) -> list[str]:
    """The last ``count`` non-blank lines of ``data``, decoded leniently (pure)."""
    lines = data.decode("utf-8", "replace").splitlines()
    return [line.rstrip() for line in lines if line.strip()][-count:]


def lost_output(text: str) -> bool:
    """Whether ``text`` (a log's) holds the marker of output lost to the disk (pure)."""
    return f" {LOST_OUTPUT_NOTE}: " in text and "[scheduler: " in text


def is_over(job: JobDetail, attempt: int) -> bool:
    """Whether ``attempt`` of ``job`` will write no more output."""
    return JobStatus(job.status).is_terminal or job.attempt > attempt


class RunLogs:
    def __init__(
        self,
        queries: Queries,
        reader: LogReader | None,
        mask_for: Callable[[str], Masker] = lambda _repo: NO_MASK,
    ) -> None:
        self._queries = queries
        self._reader = reader
        self._mask_for = mask_for

    def target(self, job: JobDetail, attempt: str | int | None = None) -> LogTarget:
        number = parse_attempt(attempt, job.attempt)
        if number > job.attempt:
            raise LogNotFound(job.job_id, number, f"the job has {job.attempt} attempt(s)")
        if number == job.attempt:
            return LogTarget(job.job_id, number, job.run_id, job.log_location)
        return LogTarget(job.job_id, number)

    def read(self, job_id: str, attempt: str | int | None = None) -> tuple[JobDetail, str]:
        """The job and the attempt's output (at most :data:`READ_LIMIT_BYTES`), masked."""
        job = self._queries.job(job_id)
        chunk = self._read(self.target(job, attempt), None, READ_LIMIT_BYTES)
        text = chunk.data.decode("utf-8", "replace")
        if chunk.more:
            text += f"\n[scheduler: output continues past {READ_LIMIT_BYTES} bytes]\n"
        return job, self._mask_for(job.repo)(text)

    def tail(self, job: JobDetail, count: int = TAIL_LINES) -> list[str]:
        """The last lines of the job's current attempt (masked); none if there is no log."""
        try:
            chunk = self._read(self.target(job), None, READ_LIMIT_BYTES)
            while chunk.more:  # a long log: read on, keeping only the end
                tail = chunk.data[-64 * 1024 :]
                chunk = self._read(self.target(job), chunk.cursor, READ_LIMIT_BYTES)
                chunk = LogChunk(tail + chunk.data, chunk.cursor, chunk.more)
        except LogNotFound:
            return []
        mask = self._mask_for(job.repo)
        return [mask(line) for line in last_lines(chunk.data, count)]

    def page(self, job: JobDetail, attempt: str | int | None, cursor: str | None) -> LogPage:
        """The output of ``attempt`` after ``cursor`` (None: from the start), masked.

        The cursor is ``<skip>:<reader cursor>``: the reader's position and how many bytes
        read from it were shown already. A line not yet ended is held back by not moving the
        reader's position (the next read starts there again, with a window that grows), so
        nothing is kept between calls and any reader's cursor works.
        """
        target = self.target(job, attempt)
        over = is_over(job, target.attempt)  # judged before reading: then nothing is missed
        skip, position = _split_page_cursor(cursor)
        try:
            chunk = self._read(target, position, skip + PAGE_BYTES)
        except LogNotFound:
            return LogPage(target.attempt, "", cursor or "0:", over, False)
        data = chunk.data[skip:]
        cut = len(data) if over and not chunk.more else data.rfind(b"\n") + 1
        if not cut and skip + len(data) >= READ_LIMIT_BYTES:
            cut = len(data)  # a line without end: shown in pieces rather than held
        held_back = f"{skip + cut}:{position or ''}"
        next_cursor = f"0:{chunk.cursor}" if cut == len(data) else held_back
        text = self._mask_for(job.repo)(data[:cut].decode("utf-8", "replace"))
        final = over and not chunk.more and cut == len(data)
        return LogPage(target.attempt, text, next_cursor, final, chunk.more)

    def follow(
        self,
        job_id: str,
        attempt: str | int | None,
        write: Callable[[str], None],
        *,
        poll_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> JobDetail:
        """Write the output as it comes until the attempt is over; return the job then.

        Without ``attempt`` the job's current attempt is followed, and the next one when an
        automatic retry starts it, until the job is terminal. Only whole lines are masked and
        written while the run goes (a secret is never split between two writes).
        """
        job = self._queries.job(job_id)
        number = self.target(job, attempt).attempt
        pinned = attempt not in (None, "")
        mask = self._mask_for(job.repo)
        cursor: str | None = None
        carry = b""
        at_line_start = True
        while True:
            over = is_over(job, number)  # judged before reading: then nothing is missed
            try:
                chunk = self._read(self.target(job, number), cursor, READ_LIMIT_BYTES)
                cursor, data = chunk.cursor, carry + chunk.data
            except LogNotFound:
                chunk, data = LogChunk(b"", cursor or ""), carry
            cut = len(data) if over and not chunk.more else data.rfind(b"\n") + 1
            if not cut and len(data) > CARRY_MAX_BYTES:
                cut = len(data)  # a line without end: shown in pieces rather than held
            if cut:
                write(mask(data[:cut].decode("utf-8", "replace")))
                at_line_start = data[:cut].endswith(b"\n")
            carry = data[cut:]
            if chunk.more:
                continue
            if over:
                if pinned or JobStatus(job.status).is_terminal:
                    return job
                number, cursor, carry = job.attempt, None, b""
                write(("" if at_line_start else "\n") + f"[scheduler: attempt {number}]\n")
                at_line_start = True
            else:
                sleep(poll_seconds)
            job = self._queries.job(job_id)

    def _read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        # The reader validates its own cursor (a byte offset, a CloudWatch token).
        if self._reader is None:
            raise LogNotFound(target.job_id, target.attempt, "this process reads no run logs")
        return self._reader.read(target, cursor, limit)


def _split_page_cursor(cursor: str | None) -> tuple[int, str | None]:
    if not cursor:
        return 0, None
    skip, separator, position = cursor.partition(":")
    if not separator or not (skip.isascii() and skip.isdecimal() and len(skip) <= 8):
        raise InvalidArgument("log cursor is malformed")
    return int(skip), position or None
