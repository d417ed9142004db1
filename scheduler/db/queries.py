"""The read side: jobs of a repository, one job with its history, per-repository stats.

No query scans the table. Listing a repository is one ``Query`` on the ``by_repo`` index
(newest first); one job is one ``GetItem``; stats are one ``GetItem`` on the ``repos`` table
(plus one for the last job's status). Filters (status, branch, event) are filter expressions
on the repository's partition, so a filtered page reads a bounded number of items
(``max_evaluated``) and may come back short with a cursor: ``next_cursor`` set means "there
may be more", never "the page is full".

Cursors are opaque to callers and tamper-evident: ``base64url(payload) "." base64url(mac)``
where the payload names the repository, the filters and the position (the index key of the
last item returned), and the MAC is an HMAC-SHA256 under ``Settings.cursor_secret``. A cursor
that fails the MAC, has the wrong shape, or was issued for another repository or other
filters is refused with :class:`InvalidCursor` (HTTP 400, exit 2). Even with the built-in key
(no secret configured, so a cursor could be forged by someone who reads this file) the
position can only start a query inside the same repository's partition.

Everything here is HTTP- and CLI-agnostic: plain arguments in (strings as they come from a
query string or a command line are accepted and validated), frozen dataclasses out, each
with a JSON-serialisable ``to_dict()``. Times are integer epoch milliseconds, as stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError
from pynamodb.exceptions import DoesNotExist, PynamoDBException
from pynamodb.expressions.condition import Condition

from scheduler.db.installations import INSTALLED_PREFIX
from scheduler.db.models import (
    GROUP_PREFIX,
    HistoryEntry,
    JobModel,
    RepoModel,
    count_attribute,
    step_id,
)
from scheduler.db.store import TRIGGER_PREFIX
from scheduler.errors import (
    ConfigurationError,
    InvalidArgument,
    InvalidCursor,
    JobNotFound,
    RepoNotFound,
    StoreUnavailable,
)
from scheduler.repo_name import canonical_repo
from scheduler.settings import Settings
from state_machines import JobStatus

log = logging.getLogger(__name__)

# The repos table's items that are not a repository's counters: the webhook's trigger guards,
# the concurrency groups' items and the App's installed repositories
# (scheduler.db.installations). Scans leave them out.
_COUNTERS_ONLY = (
    ~RepoModel.repo.startswith(TRIGGER_PREFIX)
    & ~RepoModel.repo.startswith(GROUP_PREFIX)
    & ~RepoModel.repo.startswith(INSTALLED_PREFIX)
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# A filtered page stops after reading this many items of the partition and hands back a
# cursor, so one request costs at most ~this many item reads however rare the match.
MAX_EVALUATED = 1000
FILTERED_PAGE_SIZE = 200
# The dashboard's list of repositories reads at most this many counters items.
MAX_REPOSITORIES = 1000

CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 2048
DEFAULT_CURSOR_KEY = b"scheduler-cursor-v1"
_MAC_BYTES = 16
_MAC_DOMAIN = b"scheduler.queries.cursor\x00"
_CURSOR_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_MAX_EPOCH_MS = 2**53  # what JSON numbers carry exactly

_EVENT_SHAPE = re.compile(r"^[a-z_]{1,64}$")
_MAX_JOB_ID = 256
_MAX_BRANCH = 255


# -- validation of plain inputs ---------------------------------------------------------------


def validate_repo(repo: str) -> str:
    """``repo`` in its canonical form (see :mod:`scheduler.repo_name`), or InvalidArgument."""
    canonical = canonical_repo(repo)
    if canonical is None:
        raise InvalidArgument(f"repository must look like OWNER/NAME, got {repo!r}")
    return canonical


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id or len(job_id) > _MAX_JOB_ID:
        raise InvalidArgument(f"job id must be 1 to {_MAX_JOB_ID} characters")
    return job_id


def parse_limit(value: int | str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"limit must be a whole number, got {value!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def parse_status(value: str | None) -> JobStatus | None:
    if value is None or value == "":
        return None
    try:
        return JobStatus(value)
    except ValueError:
        allowed = ", ".join(status.value for status in JobStatus)
        raise InvalidArgument(f"status must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs of a repository a listing returns (all of them when every field is None)."""

    status: JobStatus | None = None
    branch: str | None = None
    event: str | None = None
    finished_since: int | None = None  # epoch ms; used by operators ("failed since ...")

    @classmethod
    def parse(
        cls,
        *,
        status: str | None = None,
        branch: str | None = None,
        event: str | None = None,
        finished_since: int | None = None,
    ) -> JobFilter:
        branch = branch or None
        event = event or None
        if branch is not None and len(branch) > _MAX_BRANCH:
            raise InvalidArgument(f"branch must be at most {_MAX_BRANCH} characters")
        if event is not None and not _EVENT_SHAPE.match(event):
            raise InvalidArgument(f"event must be an event name like push, got {event!r}")
        return cls(parse_status(status), branch, event, finished_since)

    @property
    def is_empty(self) -> bool:
        return self == JobFilter()

    def condition(self) -> Condition | None:
        conditions: list[Condition] = []
        if self.status is not None:
            conditions.append(JobModel.status == self.status.value)
        if self.branch is not None:
            conditions.append(JobModel.branch == self.branch)
        if self.event is not None:
            conditions.append(JobModel.event == self.event)
        if self.finished_since is not None:
            conditions.append(JobModel.finished_at >= self.finished_since)
        if not conditions:
            return None
        combined = conditions[0]
        for condition in conditions[1:]:
            combined &= condition
        return combined

    def fingerprint(self) -> list[Any]:
        """What a cursor remembers of the filters (a cursor only continues its own query)."""
        status = self.status.value if self.status else None
        return [status, self.branch, self.event, self.finished_since]


# -- the opaque cursor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing stopped: the ``by_repo`` key of the last job it returned."""

    job_id: str
    received_at: int

    def start_key(self, repo: str) -> dict[str, dict[str, str]]:
        """The ``ExclusiveStartKey`` of the next page (index key plus table key)."""
        return {
            "job_id": {"S": self.job_id},
            "repo": {"S": repo},
            "received_at": {"N": str(self.received_at)},
        }

    @classmethod
    def from_item(cls, item: dict[str, dict[str, Any]]) -> Position:
        return cls(job_id=item["job_id"]["S"], received_at=int(item["received_at"]["N"]))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Encodes positions as opaque, MAC-protected cursors bound to one query."""

    def __init__(self, key: bytes = DEFAULT_CURSOR_KEY) -> None:
        if not key:
            raise ConfigurationError("the cursor key must not be empty")
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _MAC_DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, repo: str, job_filter: JobFilter, position: Position) -> str:
        payload = json.dumps(
            {
                "v": CURSOR_VERSION,
                "r": repo,
                "f": job_filter.fingerprint(),
                "k": [position.job_id, position.received_at],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._mac(payload))}"

    def decode(self, cursor: str, repo: str, job_filter: JobFilter) -> Position:
        """The position ``cursor`` names, or :class:`InvalidCursor` if it is not ours."""
        if (
            not isinstance(cursor, str)
            or len(cursor) > MAX_CURSOR_CHARS
            or not _CURSOR_SHAPE.match(cursor)
        ):
            raise InvalidCursor("invalid cursor: not a cursor issued by this service")
        encoded_payload, encoded_mac = cursor.split(".")
        try:
            payload, mac = _b64decode(encoded_payload), _b64decode(encoded_mac)
        except (binascii.Error, ValueError):
            raise InvalidCursor("invalid cursor: not a cursor issued by this service") from None
        if _b64encode(payload) != encoded_payload or _b64encode(mac) != encoded_mac:
            # Only the canonical spelling is ours (base64 ignores a last character's low bits).
            raise InvalidCursor("invalid cursor: not a cursor issued by this service")
        # Constant-time compare: the MAC is what makes the cursor tamper-evident.
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidCursor("invalid cursor: it was altered or issued by another deployment")
        data = _parse_payload(payload)
        if data["r"] != repo:
            raise InvalidCursor("invalid cursor: it belongs to another repository")
        if data["f"] != job_filter.fingerprint():
            raise InvalidCursor("invalid cursor: it belongs to a query with other filters")
        job_id, received_at = data["k"]
        return Position(job_id=job_id, received_at=received_at)


def _parse_payload(payload: bytes) -> dict[str, Any]:
    """The payload, checked field by field (a valid MAC does not excuse a malformed body)."""
    bad = InvalidCursor("invalid cursor: malformed")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"v", "r", "f", "k"}:
        raise bad
    if data["v"] != CURSOR_VERSION or not isinstance(data["r"], str):
        raise bad
    fingerprint, key = data["f"], data["k"]
    if not isinstance(fingerprint, list) or len(fingerprint) != 4:
        raise bad
    if not isinstance(key, list) or len(key) != 2:
        raise bad
    job_id, received_at = key
    if not isinstance(job_id, str) or not 0 < len(job_id) <= _MAX_JOB_ID:
        raise bad
    if type(received_at) is not int or not 0 <= received_at < _MAX_EPOCH_MS:
        raise bad
    return data


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryItem:
    source: str | None
    dest: str
    at: int
    actor: str
    attempt: int
    reason: str | None

    @classmethod
    def from_entry(cls, entry: HistoryEntry) -> HistoryItem:
        return cls(
            source=entry.source,
            dest=entry.dest,
            at=int(entry.at),
            actor=entry.actor,
            attempt=int(entry.attempt),
            reason=entry.reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.dest,
            "at": self.at,
            "actor": self.actor,
            "attempt": self.attempt,
            "reason": self.reason,
        }


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class JobSummary:
    """One job as a listing shows it."""

    job_id: str
    repo: str
    event: str
    status: str
    attempt: int
    branch: str | None
    ref: str | None
    sha: str
    pr_number: int | None
    sender: str | None
    received_at: int
    activated_at: int | None
    started_at: int | None
    finished_at: int | None
    updated_at: int | None
    reason: str | None
    # A pipeline's step names its run and its key; a pipeline run counts its steps
    # (``<job_id>.s1`` to ``.s<step_count>``).
    run_of: str | None = field(default=None, kw_only=True)
    step_key: str | None = field(default=None, kw_only=True)
    step_count: int | None = field(default=None, kw_only=True)
    # A step of a concurrency group: one job of the repository's group runs at a time.
    concurrency_group: str | None = field(default=None, kw_only=True)

    @classmethod
    def _fields_from(cls, job: JobModel) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "repo": job.repo,
            "event": job.event,
            "status": job.status,
            "attempt": int(job.attempt),
            "branch": job.branch,
            "ref": job.ref,
            "sha": job.sha,
            "pr_number": _int(job.pr_number),
            "sender": job.sender,
            "received_at": int(job.received_at),
            "activated_at": _int(job.activated_at),
            "started_at": _int(job.started_at),
            "finished_at": _int(job.finished_at),
            "updated_at": _int(job.updated_at),
            "reason": job.reason,
            "run_of": job.run_of,
            "step_key": job.step_key,
            "step_count": _int(job.step_count),
            "concurrency_group": job.concurrency_group,
        }

    @classmethod
    def from_model(cls, job: JobModel) -> JobSummary:
        return cls(**cls._fields_from(job))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class JobDetail(JobSummary):
    """One job with everything an operator asks about: outcome, run and full history."""

    delivery_id: str | None
    version: int
    priority: int
    timeout_seconds: int
    deadline_at: int | None
    detail: str | None
    exit_code: int | None
    run_id: str | None
    log_location: str | None
    expires_at: int | None  # epoch seconds (the TTL), as DynamoDB wants it
    history: tuple[HistoryItem, ...]
    fork: bool = False  # a pull request from a fork (it waits for approval by default)

    @classmethod
    def from_model(cls, job: JobModel) -> JobDetail:
        expires = job.expires_at
        return cls(
            **cls._fields_from(job),
            delivery_id=job.delivery_id,
            fork=bool(job.fork),
            version=int(job.version),
            priority=int(job.priority or 0),
            timeout_seconds=int(job.timeout_seconds),
            deadline_at=_int(job.deadline_at),
            detail=job.detail,
            exit_code=_int(job.exit_code),
            run_id=job.run_id,
            log_location=job.log_location,
            expires_at=int(expires.timestamp()) if expires is not None else None,
            history=tuple(HistoryItem.from_entry(entry) for entry in job.history or []),
        )

    def to_dict(self) -> dict[str, Any]:
        data = JobSummary.to_dict(self)
        data["history"] = [item.to_dict() for item in self.history]
        return data


@dataclass(frozen=True, slots=True)
class StepProgress:
    """How far a pipeline run's steps are: how many ended, and how many of those failed (or
    were cancelled)."""

    total: int
    ended: int
    failed: int

    @classmethod
    def count(cls, total: int, statuses: Iterable[str]) -> StepProgress:
        ended = [status for status in statuses if JobStatus(status).is_terminal]
        return cls(total, len(ended), sum(1 for s in ended if s in _FAILED_STEP))

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "ended": self.ended, "failed": self.failed}


_FAILED_STEP = frozenset({JobStatus.FAILED.value, JobStatus.CANCELLED.value})


@dataclass(frozen=True)
class StepSummary(JobSummary):
    """One step of a pipeline run as the run's view draws it: its key and the keys it needs."""

    needs: tuple[str, ...] = field(default=(), kw_only=True)

    @property
    def key(self) -> str:
        """The step's key (its job id for an item that has none)."""
        return self.step_key or self.job_id

    @classmethod
    def from_model(cls, job: JobModel) -> StepSummary:
        # ``step`` is the step's record (``scheduler.pipelines.record.StepRecord``, as JSON).
        record = json.loads(job.step or "{}")
        return cls(
            **cls._fields_from(job),
            needs=tuple(str(need) for need in record.get("needs", ())),
        )


@dataclass(frozen=True)
class JobPage:
    repo: str
    jobs: tuple[JobSummary, ...]
    next_cursor: str | None
    job_filter: JobFilter = field(default_factory=JobFilter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "jobs": [job.to_dict() for job in self.jobs],
            "next_cursor": self.next_cursor,
        }


@dataclass(frozen=True)
class RepoStats:
    repo: str
    counts: dict[str, int]
    running: int
    slot_limit: int | None
    last_job_id: str | None
    last_received_at: int | None
    last_status: str | None  # None when there is no last job or it has expired

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "counts": dict(self.counts),
            "total": self.total,
            "running": self.running,
            "slot_limit": self.slot_limit,
            "last_job": None
            if self.last_job_id is None
            else {
                "job_id": self.last_job_id,
                "received_at": self.last_received_at,
                "status": self.last_status,
            },
        }


# -- the queries ------------------------------------------------------------------------------


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn PynamoDB/botocore failures into the typed errors (exit 2: fix the set-up)."""
    try:
        yield
    except DoesNotExist:
        raise
    except PynamoDBException as exc:
        code = exc.cause_response_code
        if code == "ResourceNotFoundException":
            raise ConfigurationError(
                f"cannot read {what}: a table does not exist "
                f"(tables {JobModel.Meta.table_name}, {RepoModel.Meta.table_name}; "
                "run 'scheduler tables create' against a local endpoint)"
            ) from exc
        message = exc.cause_response_message or str(exc.cause or exc)
        raise StoreUnavailable(
            f"cannot read {what}: {code + ': ' if code else ''}{message}"
        ) from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"cannot read {what}: {exc}") from exc


class Queries:
    """The read use cases. Models must be bound (``scheduler.db.models.bind``) first."""

    def __init__(
        self,
        cursor_key: bytes = DEFAULT_CURSOR_KEY,
        *,
        max_evaluated: int = MAX_EVALUATED,
        filtered_page_size: int = FILTERED_PAGE_SIZE,
    ) -> None:
        self._codec = CursorCodec(cursor_key)
        self._max_evaluated = max_evaluated
        self._filtered_page_size = filtered_page_size

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Queries:
        key = settings.cursor_secret.encode() if settings.cursor_secret else DEFAULT_CURSOR_KEY
        return cls(key, **kwargs)

    def jobs(
        self,
        repo: str,
        *,
        status: str | None = None,
        branch: str | None = None,
        event: str | None = None,
        limit: int | str | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of a repository's jobs, newest first."""
        repo = validate_repo(repo)
        job_filter = JobFilter.parse(status=status, branch=branch, event=event)
        size = parse_limit(limit)
        start = self._codec.decode(cursor, repo, job_filter) if cursor else None
        with _reading(f"jobs of {repo}"):
            jobs, position = self._page(repo, job_filter, size, start)
        next_cursor = self._codec.encode(repo, job_filter, position) if position else None
        return JobPage(repo=repo, jobs=tuple(jobs), next_cursor=next_cursor, job_filter=job_filter)

    def _page(
        self, repo: str, job_filter: JobFilter, limit: int, start: Position | None
    ) -> tuple[list[JobSummary], Position | None]:
        """Up to ``limit`` matching jobs after ``start``, and where the next page starts.

        Unfiltered, one request asks for ``limit + 1`` items: the extra one says whether a
        next page exists without a second, empty request. Filtered, requests of
        ``filtered_page_size`` items go on until the page is full or ``max_evaluated`` items
        were read; then the cursor is DynamoDB's own ``LastEvaluatedKey``.
        """
        condition = job_filter.condition()
        page_size = limit + 1 if condition is None else max(limit + 1, self._filtered_page_size)
        results = JobModel.by_repo.query(
            repo,
            scan_index_forward=False,  # newest first
            filter_condition=condition,
            last_evaluated_key=start.start_key(repo) if start else None,
            page_size=page_size,
        )
        pages = results.page_iter
        jobs: list[JobSummary] = []
        evaluated = 0
        for page in pages:
            items = page.get("Items", [])
            for index, item in enumerate(items):
                if len(jobs) == limit:
                    # A match beyond the page: continue after the last one returned.
                    return jobs, Position.from_item(items[index - 1])
                jobs.append(JobSummary.from_model(JobModel.from_raw_data(item)))
            evaluated += int(page.get("ScannedCount", len(items)))
            if pages.last_evaluated_key is None:
                return jobs, None
            if len(jobs) == limit or evaluated >= self._max_evaluated:
                return jobs, Position.from_item(pages.last_evaluated_key)
        return jobs, None

    def iter_jobs(self, repo: str, job_filter: JobFilter) -> Iterator[JobSummary]:
        """Every matching job of a repository, newest first (operators' bulk actions)."""
        repo = validate_repo(repo)
        results = JobModel.by_repo.query(
            repo,
            scan_index_forward=False,
            filter_condition=job_filter.condition(),
            page_size=self._filtered_page_size,
        )
        with _reading(f"jobs of {repo}"):
            for job in results:
                yield JobSummary.from_model(job)

    def job(self, job_id: str) -> JobDetail:
        """One job with its full transition history (a consistent read: operators act on it)."""
        job_id = validate_job_id(job_id)
        with _reading(f"job {job_id}"):
            try:
                return JobDetail.from_model(JobModel.get(job_id, consistent_read=True))
            except DoesNotExist:
                raise JobNotFound(job_id) from None

    def steps(self, run: JobSummary) -> tuple[JobDetail, ...]:
        """A pipeline run's steps in pipeline order, read consistently in batches (none for a
        job that is no pipeline run; one not made yet is left out)."""
        ids = [step_id(run.job_id, n) for n in range(1, (run.step_count or 0) + 1)]
        with _reading(f"steps of {run.job_id}"):
            found = {job.job_id: job for job in JobModel.batch_get(ids, consistent_read=True)}
        return tuple(JobDetail.from_model(found[job_id]) for job_id in ids if job_id in found)

    def progress(self, runs: Iterable[JobSummary]) -> dict[str, StepProgress]:
        """How far each pipeline run among ``runs`` is (the others are left out): one batch
        read of its steps' statuses (never a scan, never a query per step)."""
        counted = {run.job_id: run.step_count for run in runs if run.step_count}
        ids = [step_id(run_id, n) for run_id, count in counted.items() for n in range(1, count + 1)]
        statuses: dict[str, list[str]] = {run_id: [] for run_id in counted}
        with _reading("steps of pipeline runs"):
            for job in JobModel.batch_get(ids, attributes_to_get=["job_id", "status"]):
                statuses[job.job_id.rsplit(".s", 1)[0]].append(str(job.status))
        return {
            run_id: StepProgress.count(count, statuses[run_id]) for run_id, count in counted.items()
        }

    def step_summaries(self, step_ids: Sequence[str]) -> tuple[StepSummary, ...]:
        """A pipeline run's steps by their ids, read consistently (one ``BatchGetItem`` per
        100), in the order asked; ids not found are left out (a fan-out still under way)."""
        with _reading("steps"):
            found = {
                item.job_id: item
                for item in JobModel.batch_get(list(step_ids), consistent_read=True)
            }
        return tuple(StepSummary.from_model(found[i]) for i in step_ids if i in found)

    def repositories(self, limit: int = MAX_REPOSITORIES) -> list[RepoStats]:
        """Every repository's counters, by name, and one batch read of the last jobs' statuses.

        A scan of the ``repos`` table, never of the jobs table. That table also holds the
        webhook's trigger guards (one small item per commit built within the retention
        window), which the scan reads and filters out: callers that poll should cache this
        (the dashboard does), and a sparse index of counters items would make it one query.
        """
        with _reading("repositories"):
            scan = RepoModel.scan(filter_condition=_COUNTERS_ONLY, page_size=500)
            items = sorted(itertools.islice(scan, limit), key=lambda i: i.repo)
            last_ids = {item.last_job_id for item in items if item.last_job_id}
            statuses = {
                job.job_id: job.status
                for job in JobModel.batch_get(last_ids, attributes_to_get=["job_id", "status"])
            }
        return [_repo_stats(item, statuses.get(item.last_job_id or "")) for item in items]

    def counters_items(self) -> Iterator[RepoModel]:
        """Every repository's counters item, read consistently (``scheduler doctor``).

        A scan of the ``repos`` table (one item per repository, the trigger guards filtered
        out), never of the jobs table.
        """
        with _reading("repositories"):
            yield from RepoModel.scan(
                filter_condition=_COUNTERS_ONLY,
                consistent_read=True,
                page_size=500,
            )

    def counters_item(self, repo: str) -> RepoModel | None:
        """One repository's counters item, read consistently; None if it has none."""
        with _reading(f"stats of {repo}"):
            try:
                return RepoModel.get(repo, consistent_read=True)
            except DoesNotExist:
                return None

    def all_jobs(self, repo: str) -> Iterator[JobModel]:
        """Every job of ``repo`` (the ``by_repo`` index, page by page), for ``scheduler
        doctor``: a query per repository, never a scan of the jobs table."""
        with _reading(f"jobs of {repo}"):
            yield from JobModel.by_repo.query(repo, page_size=500)

    def repository_version(self, repo: str) -> str:
        """What changes whenever a job of ``repo`` is created or changes status: its counters
        item (moved in the same transactions). One small read, for "has anything changed".
        The queue mark is left out: the sweeper clears it with no job changing."""
        repo = validate_repo(repo)
        with _reading(f"stats of {repo}"):
            try:
                item = RepoModel.get(repo, consistent_read=True)
            except DoesNotExist:
                return "none"
        counters = {k: v for k, v in item.serialize().items() if k != "queue_shard"}
        return json.dumps(counters, sort_keys=True, default=str)

    def stats(self, repo: str) -> RepoStats:
        """Counters of a repository, kept by the transition transactions (no counting here)."""
        repo = validate_repo(repo)
        with _reading(f"stats of {repo}"):
            try:
                item = RepoModel.get(repo, consistent_read=True)
            except DoesNotExist:
                raise RepoNotFound(repo) from None
            last_status = None
            if item.last_job_id:
                try:
                    last = JobModel.get(item.last_job_id, attributes_to_get=["status"])
                    last_status = last.status
                except DoesNotExist:
                    last_status = None  # expired by TTL
        return _repo_stats(item, last_status)


def _repo_stats(item: RepoModel, last_status: str | None) -> RepoStats:
    counts = {
        status.value: int(getattr(item, count_attribute(status.value)) or 0) for status in JobStatus
    }
    return RepoStats(
        repo=item.repo,
        counts=counts,
        running=int(item.running or 0),
        slot_limit=_int(item.slot_limit),
        last_job_id=item.last_job_id,
        last_received_at=_int(item.last_received_at),
        last_status=last_status,
    )


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "CursorCodec",
    "HistoryItem",
    "JobDetail",
    "JobFilter",
    "JobPage",
    "JobSummary",
    "Position",
    "Queries",
    "RepoStats",
    "StepProgress",
    "StepSummary",
    "parse_limit",
    "parse_status",
    "validate_job_id",
    "validate_repo",
]
