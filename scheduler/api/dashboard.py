"""The web dashboard: repositories, a repository's jobs, one job with its history and live log.

Served by the same :class:`~scheduler.api.app.Application` in both runtimes. Pages are
rendered on the server (:mod:`scheduler.api.views`); a small vendored script
(``static/dashboard.js``) keeps them live by polling *fragments* with ``If-None-Match``:

- the repositories fragment is rendered from a list cached for :data:`REPOS_CACHE_MS` (a scan
  of the counters table, so that many open tabs cost one scan per period);
- a repository's jobs fragment is answered 304 after one read of the repository's counters
  item, which every job creation and status change moves in its transaction: an idle tab costs
  one small ``GetItem`` per poll, and the page's query runs only when something changed;
- a job's fragment costs one ``GetItem`` (its ETag is the job's version);
- the log tail returns only new whole lines from a cursor, until the attempt is over.

Retry and cancel are the operator's guarded transitions (:class:`Operations`): a lost race
comes back to the page as a message. Their forms carry a CSRF token and a request from
another ``Origin`` is refused (:meth:`ApiAuth.check_csrf`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from scheduler.api.app import Request, Response, Router
from scheduler.api.auth import Access, ApiAuth
from scheduler.api.views import etag_of, render, static_file
from scheduler.db.queries import JobDetail, Queries, RepoStats
from scheduler.db.store import Clock, StoreContended, system_clock
from scheduler.errors import DomainError, InvalidArgument, JobNotFound, RouteNotFound
from scheduler.runs.logs import RunLogs
from scheduler.runs.operations import Operations
from state_machines import InvalidTransition, JobStatus, TransitionConflict

__all__ = ["POLL_MS", "Dashboard"]

log = logging.getLogger(__name__)

POLL_MS = 700  # a visible tab's poll period: a new job shows within a second
REPOS_CACHE_MS = 2000
MAX_FORM_BYTES = 16 * 1024
PAGE_SIZE = 25
# Outcomes of a button, by the code the redirect carries (never text from the request).
MESSAGES = {
    "retried": ("ok", "Retry requested: a new attempt is queued."),
    "cancelled": ("ok", "Cancel requested."),
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


def _form(request: Request) -> dict[str, str]:
    if len(request.body) > MAX_FORM_BYTES:
        raise InvalidArgument("form too large")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("form is not UTF-8") from None
    return dict(parse_qsl(text, max_num_fields=20))


def _safe_next(target: str | None) -> str:
    """Where to go after the token form: a path of this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
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
        self._repos_lock = threading.Lock()
        self._repos: tuple[int, list[RepoStats]] | None = None

    # -- registration -------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        pages = {
            ("GET", "/"): self.repos_page,
            ("GET", "/ui/repos/{owner}/{repo}"): self.jobs_page,
            ("GET", "/ui/jobs/{job_id}"): self.job_page,
            ("POST", "/ui/jobs/{job_id}/retry"): self.retry,
            ("POST", "/ui/jobs/{job_id}/cancel"): self.cancel,
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

    def _repositories(self) -> list[RepoStats]:
        now = self._clock()
        with self._repos_lock:
            if self._repos is not None and now - self._repos[0] < REPOS_CACHE_MS:
                return self._repos[1]
        repos = self._queries.repositories()
        with self._repos_lock:
            self._repos = (now, repos)
        return repos

    def repos_page(self, request: Request) -> Response:
        return self._html(200, "repos.html", request, **self._repos_context())

    def repos_part(self, request: Request) -> Response:
        context = self._repos_context()
        html = render("_repos.html", **context)
        return self._fragment(request, etag_of(html), lambda: html)

    def _repos_context(self) -> dict[str, Any]:
        return {"repos": self._repositories(), "repo_path": repo_path, "job_path": job_path}

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

    def jobs_page(self, request: Request) -> Response:
        return self._html(200, "jobs.html", request, **self._jobs_context(request))

    def jobs_part(self, request: Request) -> Response:
        repo = request.repo
        query = self._jobs_query(request)
        # The counters item moves with every creation and status change of the repository's
        # jobs: while it stays the same, the page's query would find the same jobs.
        etag = etag_of(self._queries.repository_version(repo), repr(sorted(query.items())))
        return self._fragment(
            request, etag, lambda: render("_jobs.html", **self._jobs_context(request))
        )

    # -- one job ------------------------------------------------------------------------------

    def _job(self, request: Request) -> JobDetail:
        return self._queries.job(request.param("job_id"))

    def _job_context(self, request: Request, job: JobDetail) -> dict[str, Any]:
        status = JobStatus(job.status)
        return {
            "job": job,
            "repo_url": repo_path(job.repo),
            "job_url": job_path(job.job_id),
            "can_retry": status in (JobStatus.FAILED, JobStatus.CANCELLED),
            "can_cancel": status in (JobStatus.PENDING, JobStatus.ACTIVE),
            "buttons": self._operations is not None,
        }

    def job_page(self, request: Request) -> Response:
        if set(request.query) - {"attempt", "done"}:
            raise InvalidArgument("unknown query parameter (accepted: attempt, done)")
        job = self._job(request)
        log_page = self._logs.page(job, request.query.get("attempt"), None)
        message = MESSAGES.get(request.query.get("done", ""))
        return self._html(
            200,
            "job.html",
            request,
            **self._job_context(request, job),
            log=log_page,
            attempts=list(range(job.attempt, 0, -1)),
            message=message,
        )

    def job_part(self, request: Request) -> Response:
        job = self._job(request)
        etag = etag_of(job.job_id, str(job.version), str(job.updated_at), job.status)
        return self._fragment(
            request,
            etag,
            lambda: render(
                "_job.html",
                csrf=self._auth.csrf_token(request.headers),
                **self._job_context(request, job),
            ),
        )

    def log_part(self, request: Request) -> Response:
        if set(request.query) - {"attempt", "cursor"}:
            raise InvalidArgument("unknown query parameter (accepted: attempt, cursor)")
        job = self._job(request)
        page = self._logs.page(job, request.query.get("attempt"), request.query.get("cursor"))
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

    def _act(self, request: Request, done: str) -> Response:
        self._auth.check_csrf(request.headers, _form(request).get("csrf"))
        job_id = request.param("job_id")
        if self._operations is None:
            raise InvalidArgument("this server cannot change jobs")
        operation = self._operations.retry if done == "retried" else self._operations.cancel
        try:
            changed = operation(job_id)
            log.info("dashboard: %s", done, extra={"job_id": job_id, "attempt": changed.attempt})
        except TransitionConflict:
            done = "conflict"  # a racing writer (the stream, another operator) won
        except InvalidTransition:
            done = "refused"
        except StoreContended:
            done = "busy"
        except JobNotFound:
            raise
        return Response.text(303, "", {"location": f"{job_path(job_id)}?done={done}"})

    # -- vendored files -----------------------------------------------------------------------

    def static(self, request: Request) -> Response:
        found = static_file(request.param("name"))
        if found is None:
            raise RouteNotFound(request.path)
        data, media_type, etag = found
        headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response.text(304, "", headers)
        return Response(200, {}, headers, text_body=data.decode("utf-8"), media_type=media_type)
