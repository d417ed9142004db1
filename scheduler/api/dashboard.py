"""The web dashboard: repositories, a repository's jobs, one job with its history and live log.

Served by the same :class:`~scheduler.api.app.Application` in both runtimes. Pages are
rendered on the server (:mod:`scheduler.api.views`); a small vendored script
(``static/dashboard.js``) keeps them live by polling *fragments* with ``If-None-Match``:

- the repositories fragment is rendered from a list cached for :data:`REPOS_CACHE_MS` (a scan
  of the counters table, so that many open tabs cost one scan and one rendering per period);
- a repository's jobs fragment is answered 304 after a read of the repository's counters
  item, which every job creation and status change moves in its transaction; the page's query
  runs only when something changed;
- a job's fragment (and the log tail) reads the job item (its ETag is the job's version);
  a pipeline run's fragment draws its steps (:mod:`scheduler.api.pipeline_view`), read by
  their ids in one consistent ``BatchGetItem`` only when the repository's counters item moved
  (every step's creation and change of status moves it, as any job's);
- the log tail returns only new whole lines from a cursor, until the attempt is over.

Those reads are shared for :data:`FRESH_MS` by every request of the process (:class:`Recent`):
however many tabs (or people) poll a repository or a job, the database sees at most one small
``GetItem`` per period for it. A page (not a poll) reads afresh and leaves what it read for the
polls, so a page never goes back in time after a button, and it carries its fragment's ETag,
so its first poll is a 304 too. Tabs of one browser on one page also share their polls (the
script, over a ``BroadcastChannel``): about one request per period whatever their number.
Measured (``bench/dashboard.py``): a poll that reads costs about 1 ms of Python (botocore's
``GetItem``, the HTTP request) and 1.3 ms of DynamoDB Local. A new job shows at most
``POLL_MS + FRESH_MS`` (and a few ms between tabs, and the request) after its transaction:
under a second.

Retry, cancel and approve (a fork's pull request waiting for approval) are the operator's
guarded transitions (:class:`Operations`), offered where the state machine allows them: a lost
race comes back to the page as a message. Their forms carry a CSRF token and a request from
another ``Origin`` is refused (:meth:`ApiAuth.check_csrf`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from scheduler.api.app import Request, Response, Router
from scheduler.api.auth import Access, ApiAuth
from scheduler.api.pipeline_view import PipelineView, layout
from scheduler.api.views import etag_of, render, static_file
from scheduler.db.queries import JobDetail, Queries, RepoStats
from scheduler.db.store import Clock, StoreContended, system_clock
from scheduler.errors import (
    DomainError,
    InvalidArgument,
    JobNotFound,
    RerunRefused,
    RouteNotFound,
)
from scheduler.runs.logs import LogPage, RunLogs, lost_output
from scheduler.runs.operations import Operations
from scheduler.runs.pipeline_runs import step_id
from state_machines import InvalidTransition, JobStatus, TransitionConflict, Trigger, may

__all__ = ["POLL_MS", "Dashboard"]

log = logging.getLogger(__name__)

POLL_MS = 700  # a visible tab's poll period: a new job shows within a second
FRESH_MS = 200  # how long one read of a repository's counters or of a job answers every poll
REPOS_CACHE_MS = 2000
FRESH_ENTRIES = 1024  # repositories and jobs remembered at most (LRU), per kind
STEPS_ENTRIES = 64  # pipeline runs' steps remembered at most (a read is stale once moved)
# A run's steps read after a given counters item stand for it as long as it is current (the key
# holds it), so they are kept longer than a poll's reads: a new tab costs no batch read.
STEPS_KEPT_MS = 60_000
MAX_FORM_BYTES = 16 * 1024
PAGE_SIZE = 25
# Outcomes of a button, by the code the redirect carries (never text from the request).
MESSAGES = {
    "retried": ("ok", "Retry requested: a new attempt is queued."),
    "cancelled": ("ok", "Cancel requested."),
    "approved": ("ok", "Approved: the job is queued and runs without secrets."),
    "conflict": ("warn", "Someone else changed this job first; nothing was done. See below."),
    "refused": ("warn", "Not possible in the job's current status; nothing was done."),
    "busy": ("warn", "The database is busy; nothing was done. Try again."),
}
_SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    # Not "no-referrer": with it a browser sends "Origin: null" on a form POST, which the
    # CSRF check refuses; same-origin keeps URLs (cursors) from leaving the site.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_FILTERS = ("status", "branch", "event")
_EVENTS = ("push", "pull_request")


T = TypeVar("T")


class Recent(Generic[T]):
    """Values read less than ``ttl_ms`` ago, by key, shared by every request of the process.

    What a poll asks ("has this repository or job changed?") is answered from a read made by
    any request within the period, so N tabs cost one read per period rather than N. A value is
    kept only if its read began no earlier than the kept one's (a slow read never puts an
    older state back), and at most ``max_entries`` keys are kept (least recently stored go).
    Errors (not found, bad input) are never kept.
    """

    def __init__(self, clock: Clock, ttl_ms: int, max_entries: int = FRESH_ENTRIES) -> None:
        self._clock = clock
        self._ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[int, T]] = OrderedDict()

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        """The value of ``key`` read within the period, else ``read()`` (kept for the next)."""
        now = self._clock()
        with self._lock:
            kept = self._items.get(key)
            if kept is not None and 0 <= now - kept[0] < self._ttl_ms:
                return kept[1]
        value = read()
        self.put(key, value, now)
        return value

    def fresh(self, key: Hashable, read: Callable[[], T]) -> T:
        """``read()`` now, whatever is kept; kept for the polls that follow."""
        now = self._clock()
        value = read()
        self.put(key, value, now)
        return value

    def put(self, key: Hashable, value: T, read_at: int) -> None:
        with self._lock:
            kept = self._items.get(key)
            if kept is not None and kept[0] > read_at:
                return
            self._items[key] = (read_at, value)
            self._items.move_to_end(key)
            while len(self._items) > self._max_entries:
                self._items.popitem(last=False)


def _form(request: Request) -> dict[str, str]:
    if len(request.body) > MAX_FORM_BYTES:
        raise InvalidArgument("form too large")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("form is not UTF-8") from None
    return dict(parse_qsl(text, max_num_fields=20))


_NEXT_PATH = re.compile(r"/[\x21-\x7e]*")
_MAX_NEXT = 2048


def _safe_next(target: str | None) -> str:
    """Where to go after the token form: a path of this site only, else ``/``.

    It goes into a ``Location`` header, so it is printable ASCII without spaces (a CR or LF
    would add headers of its own) and an absolute path: one leading ``/`` and no ``//`` or
    backslash anywhere (browsers drop TAB, CR and LF from a URL and read a backslash as ``/``,
    so ``/<TAB>/evil.example`` would be ``//evil.example``: another site)."""
    if (
        not target
        or len(target) > _MAX_NEXT
        or not _NEXT_PATH.fullmatch(target)
        or "//" in target
        or "\\" in target
    ):
        return "/"
    return target


def _secure(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", "").lower() == "https"


def job_path(job_id: str) -> str:
    return f"/ui/jobs/{quote(job_id, safe='')}"


def repo_path(repo: str) -> str:
    owner, _, name = repo.partition("/")
    return f"/ui/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


class Dashboard:
    def __init__(
        self,
        queries: Queries,
        logs: RunLogs,
        operations: Operations | None,
        auth: ApiAuth,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._queries = queries
        self._logs = logs
        self._operations = operations
        self._auth = auth
        self._clock = clock
        # The repositories list with its fragment and ETag (rendered once per period).
        self._repos: Recent[tuple[list[RepoStats], str, str]] = Recent(clock, REPOS_CACHE_MS, 1)
        self._versions: Recent[str] = Recent(clock, FRESH_MS)  # counters item, by repository
        self._jobs: Recent[JobDetail] = Recent(clock, FRESH_MS)  # job item, by id
        # A run's steps laid out, by (run, step count, counters item they were read after).
        self._steps: Recent[PipelineView] = Recent(clock, STEPS_KEPT_MS, STEPS_ENTRIES)

    # -- registration -------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        pages = {
            ("GET", "/"): self.repos_page,
            ("GET", "/ui/repos/{owner}/{repo}"): self.jobs_page,
            ("GET", "/ui/jobs/{job_id}"): self.job_page,
            ("POST", "/ui/jobs/{job_id}/retry"): self.retry,
            ("POST", "/ui/jobs/{job_id}/cancel"): self.cancel,
            ("POST", "/ui/jobs/{job_id}/approve"): self.approve,
        }
        for (method, pattern), handler in pages.items():
            router.add(
                method, pattern, self._page(handler), access=Access.PAGE, challenge=self.login_form
            )
        router.add("GET", "/ui/part/repos", self.repos_part)
        router.add("GET", "/ui/part/repos/{owner}/{repo}/jobs", self.jobs_part)
        router.add("GET", "/ui/part/jobs/{job_id}", self.job_part)
        router.add("GET", "/ui/part/jobs/{job_id}/log", self.log_part)
        router.add("POST", "/ui/login", self.login, access=Access.PUBLIC)
        router.add("POST", "/ui/logout", self.logout, access=Access.PUBLIC)
        router.add("GET", "/ui/static/{name}", self.static, access=Access.PUBLIC)

    def _page(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """A page handler whose refusals are pages too (never a JSON error in a browser)."""

        def serve(request: Request) -> Response:
            try:
                return handler(request)
            except DomainError as exc:
                if exc.http_status >= 500:
                    log.error("page failed: %s", exc, extra={"path": request.path})
                return self._html(exc.http_status, "error.html", request, error=str(exc))

        return serve

    def _html(self, status: int, template: str, request: Request, **context: Any) -> Response:
        html = render(
            template,
            auth_required=self._auth.required,
            csrf=self._auth.csrf_token(request.headers),
            poll_ms=POLL_MS,
            **context,
        )
        return Response.html(status, html, _SECURITY_HEADERS)

    def _fragment(self, request: Request, etag: str, make: Callable[[], str]) -> Response:
        """A polled fragment: 304 (nothing rendered) while the caller's ETag is still ``etag``."""
        headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response.text(304, "", headers)
        return Response.html(200, make(), headers)

    # -- the token form -----------------------------------------------------------------------

    def login_form(
        self, request: Request, *, error: str | None = None, target: str | None = None
    ) -> Response:
        """The token form (401), which leads back to the page asked for (a GET's)."""
        if target is None and request.method == "GET":
            target = request.path + (f"?{urlencode(request.query)}" if request.query else "")
        return self._html(401, "login.html", request, next=_safe_next(target), error=error)

    def login(self, request: Request) -> Response:
        form = _form(request)
        target = _safe_next(form.get("next"))
        if not self._auth.required:
            return Response.text(303, "", {"location": target})
        if not self._auth.token_matches(form.get("token", "")):
            log.warning("dashboard: wrong token given")
            return self.login_form(request, error="Wrong token.", target=target)
        cookie = self._auth.session_cookie(self._auth.new_session(), secure=_secure(request))
        return Response.text(303, "", {"location": target, "set-cookie": cookie})

    def logout(self, request: Request) -> Response:
        self._auth.check_csrf(request.headers, _form(request).get("csrf"))
        cookie = self._auth.cleared_cookie(secure=_secure(request))
        return Response.text(303, "", {"location": "/", "set-cookie": cookie})

    # -- repositories -------------------------------------------------------------------------

    def _repositories(self, *, fresh: bool = False) -> tuple[list[RepoStats], str, str]:
        """The repositories, their fragment and its ETag: one scan and rendering per period
        for the polls (a page reads afresh)."""

        def read() -> tuple[list[RepoStats], str, str]:
            repos = self._queries.repositories()
            html = render("_repos.html", **self._repos_context(repos))
            return repos, html, etag_of(html)

        return self._repos.fresh("repos", read) if fresh else self._repos.get("repos", read)

    def repos_page(self, request: Request) -> Response:
        repos, _, etag = self._repositories(fresh=True)
        return self._html(200, "repos.html", request, etag=etag, **self._repos_context(repos))

    def repos_part(self, request: Request) -> Response:
        _, html, etag = self._repositories()
        return self._fragment(request, etag, lambda: html)

    def _repos_context(self, repos: list[RepoStats]) -> dict[str, Any]:
        return {
            "repos": repos,
            "statuses": [status.value for status in JobStatus],  # a column each, in this order
            "repo_path": repo_path,
            "job_path": job_path,
        }

    # -- a repository's jobs ------------------------------------------------------------------

    def _jobs_query(self, request: Request) -> dict[str, str]:
        allowed = (*_FILTERS, "cursor")
        unknown = sorted(set(request.query) - set(allowed))
        if unknown:
            raise InvalidArgument(f"unknown query parameter {', '.join(unknown)}")
        return {name: request.query[name] for name in allowed if request.query.get(name)}

    def _jobs_context(self, request: Request) -> dict[str, Any]:
        repo = request.repo
        query = self._jobs_query(request)
        page = self._queries.jobs(repo, limit=PAGE_SIZE, **query)
        filters = {name: query[name] for name in _FILTERS if name in query}
        base = repo_path(page.repo)
        return {
            "repo": page.repo,
            "page": page,
            "filters": filters,
            "statuses": [status.value for status in JobStatus],
            "events": _EVENTS,
            "first_url": f"{base}?{urlencode(filters)}" if filters else base,
            "next_url": f"{base}?{urlencode({**filters, 'cursor': page.next_cursor})}"
            if page.next_cursor
            else None,
            "is_first": "cursor" not in query,
            "part_url": f"/ui/part/repos/{quote(page.repo, safe='/')}/jobs"
            + (f"?{urlencode(query)}" if query else ""),
            "job_path": job_path,
        }

    def _jobs_etag(self, request: Request) -> str:
        """The counters item moves with every creation and status change of the repository's
        jobs: while it stays the same, the page's query would find the same jobs. Read before
        the query it stands for (a change in between makes the next poll render again)."""
        repo = request.repo
        query = self._jobs_query(request)
        version = self._versions.get(repo, lambda: self._queries.repository_version(repo))
        return etag_of(version, repr(sorted(query.items())))

    def jobs_page(self, request: Request) -> Response:
        etag = self._jobs_etag(request)
        return self._html(200, "jobs.html", request, etag=etag, **self._jobs_context(request))

    def jobs_part(self, request: Request) -> Response:
        return self._fragment(
            request,
            self._jobs_etag(request),
            lambda: render("_jobs.html", **self._jobs_context(request)),
        )

    # -- one job ------------------------------------------------------------------------------

    def _job(self, request: Request) -> JobDetail:
        """The job as read within :data:`FRESH_MS` (what a poll needs)."""
        job_id = request.param("job_id")
        return self._jobs.get(job_id, lambda: self._queries.job(job_id))

    def _fresh_job(self, request: Request) -> JobDetail:
        """The job read now (a page, which may follow a button), kept for the polls after it."""
        job_id = request.param("job_id")
        return self._jobs.fresh(job_id, lambda: self._queries.job(job_id))

    def _steps_version(self, job: JobDetail, *, fresh: bool = False) -> str:
        """For a pipeline run, its repository's counters item ("" for any other job): every
        step's creation and change of status moves it, as any job's, so while it stays the
        same so do the steps' statuses. Read before the steps it stands for (a change in
        between makes the next poll draw them again)."""
        if not job.step_count:
            return ""
        repo = job.repo

        def read() -> str:
            return self._queries.repository_version(repo)

        return self._versions.fresh(repo, read) if fresh else self._versions.get(repo, read)

    def _pipeline(
        self, job: JobDetail, version: str, *, fresh: bool = False
    ) -> PipelineView | None:
        """A pipeline run's steps laid out (None: not a run), read by their ids in one
        consistent batch after the counters item ``version`` was read; polls share that read
        while the item stays the same (up to :data:`STEPS_KEPT_MS`), a page reads afresh."""
        if not job.step_count:
            return None
        run_id, count = job.job_id, job.step_count

        def read() -> PipelineView:
            return layout(
                self._queries.step_summaries([step_id(run_id, n) for n in range(1, count + 1)])
            )

        key = (run_id, count, version)
        return self._steps.fresh(key, read) if fresh else self._steps.get(key, read)

    @staticmethod
    def _job_etag(job: JobDetail, steps_version: str = "") -> str:
        return etag_of(job.job_id, str(job.version), str(job.updated_at), job.status, steps_version)

    def _job_context(
        self, request: Request, job: JobDetail, pipeline: PipelineView | None
    ) -> dict[str, Any]:
        status = JobStatus(job.status)
        run = job.step_count is not None
        return {
            "job": job,
            "pipeline": pipeline,
            "job_path": job_path,
            "repo_url": repo_path(job.repo),
            "job_url": job_path(job.job_id),
            # The buttons the state machine allows from the job's status (one description);
            # a pipeline run has rows of its own. Retry is offered for what failed or was
            # cancelled: a run's button re-runs its failed steps (see the retry route).
            "can_retry": may(status, Trigger.RETRY),
            "can_cancel": may(status, Trigger.CANCEL, pipeline_run=run),
            "can_approve": may(status, Trigger.APPROVE, pipeline_run=run),
            "buttons": self._operations is not None,
        }

    def job_page(self, request: Request) -> Response:
        if set(request.query) - {"attempt", "done"}:
            raise InvalidArgument("unknown query parameter (accepted: attempt, done)")
        job = self._fresh_job(request)
        steps_version = self._steps_version(job, fresh=True)
        pipeline = self._pipeline(job, steps_version, fresh=True)
        pinned = request.query.get("attempt")
        # A pipeline run runs no command of its own: its steps' logs are on their pages.
        log_page = None if job.step_count else self._logs.page(job, pinned, None)
        message = MESSAGES.get(request.query.get("done", ""))
        return self._html(
            200,
            "job.html",
            request,
            **self._job_context(request, job, pipeline),
            etag=self._job_etag(job, steps_version),
            log=log_page,
            lost_output=log_page is not None and lost_output(log_page.text),
            # Without ?attempt= the log follows the job's current attempt (a retry's too).
            follow=not pinned,
            attempts=list(range(job.attempt, 0, -1)),
            message=message,
        )

    def job_part(self, request: Request) -> Response:
        job = self._job(request)
        steps_version = self._steps_version(job)
        return self._fragment(
            request,
            self._job_etag(job, steps_version),
            lambda: render(
                "_job.html",
                csrf=self._auth.csrf_token(request.headers),
                **self._job_context(request, job, self._pipeline(job, steps_version)),
            ),
        )

    def log_part(self, request: Request) -> Response:
        if set(request.query) - {"attempt", "cursor"}:
            raise InvalidArgument("unknown query parameter (accepted: attempt, cursor)")
        job = self._job(request)
        wanted = request.query.get("attempt", "")
        if (
            len(wanted) <= 9
            and wanted.isascii()
            and wanted.isdecimal()
            and int(wanted) > job.attempt
        ):
            job = self._fresh_job(request)  # an attempt newer than the one read for the polls
        if job.step_count:
            # A pipeline run (a page opened before it read its file): no output of its own,
            # so the tail stops; the steps' logs are on their pages.
            page = LogPage(job.attempt, "", "0:", True, False)
        else:
            page = self._logs.page(job, wanted or None, request.query.get("cursor"))
        body: Mapping[str, Any] = {
            "attempt": page.attempt,
            "text": page.text,
            "cursor": page.cursor,
            "final": page.final,
            "more": page.more,
        }
        return Response(200, body, {"cache-control": "no-store"})

    # -- the buttons --------------------------------------------------------------------------

    def retry(self, request: Request) -> Response:
        return self._act(request, "retried")

    def cancel(self, request: Request) -> Response:
        return self._act(request, "cancelled")

    def approve(self, request: Request) -> Response:
        return self._act(request, "approved")

    def _act(self, request: Request, done: str) -> Response:
        self._auth.check_csrf(request.headers, _form(request).get("csrf"))
        job_id = request.param("job_id")
        if self._operations is None:
            raise InvalidArgument("this server cannot change jobs")
        operation = {
            # A pipeline run's button re-runs its failed steps, a step's that step and what
            # follows it (see Operations.rerun).
            "retried": self._operations.rerun,
            "cancelled": self._operations.cancel,
            "approved": self._operations.approve,
        }[done]
        try:
            changed = operation(job_id)
            log.info("dashboard: %s", done, extra={"job_id": job_id, "attempt": changed.attempt})
        except TransitionConflict:
            done = "conflict"  # a racing writer (the stream, another operator) won
        except (InvalidTransition, RerunRefused):
            done = "refused"
        except StoreContended:
            done = "busy"
        except JobNotFound:
            raise
        return Response.text(303, "", {"location": f"{job_path(job_id)}?done={done}"})

    # -- vendored files -----------------------------------------------------------------------

    def static(self, request: Request) -> Response:
        # The name as sent: the shipped names need no percent-encoding, and any other name,
        # valid UTF-8 once decoded or not, is simply not one of them (404).
        found = static_file(request.params.get("name", ""))
        if found is None:
            raise RouteNotFound(request.path)
        data, media_type, etag = found
        headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response.text(304, "", headers)
        return Response(200, {}, headers, text_body=data.decode("utf-8"), media_type=media_type)
