"""The read side over HTTP: a repository's jobs, one job, a repository's stats.

``query_routes(queries)`` returns a registration function for :func:`scheduler.api.app.create_app`'s
``extra_routes``, so the Lambda entry point and the local server serve the same routes:

- ``GET /repos/{owner}/{repo}/jobs?status=&branch=&event=&limit=&cursor=`` - newest first, one
  page; ``next_cursor`` (opaque) continues it.
- ``GET /jobs/{job_id}`` - one job with its transition history.
- ``GET /repos/{owner}/{repo}/stats`` - counts by status, slots in use, limit, last job.
- ``GET /jobs/{job_id}/log?attempt=N`` - the attempt's output as ``text/plain`` (default: the
  current attempt), secrets masked; 404 for an unknown job, attempt or a log not there (yet).

Bodies are the queries' ``to_dict()``. Validation stays in :mod:`scheduler.db.queries`; a typed
error (bad argument or cursor 400, unknown job or repository 404, store down 503) is answered
by the application as ``{"error": message}`` with its ``http_status``. An unknown query
parameter is refused (400) rather than ignored, so a misspelt filter never silently widens a
listing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from scheduler.api.app import Request, Response, Router
from scheduler.db.queries import Queries
from scheduler.errors import InvalidArgument
from scheduler.runs.logs import RunLogs

__all__ = ["JOBS_QUERY_PARAMETERS", "query_routes"]

JOBS_QUERY_PARAMETERS = ("status", "branch", "event", "limit", "cursor")

# Answers describe live state: a cache (browser, proxy) must not serve an old one.
_HEADERS = {"cache-control": "no-store"}


def _only(query: Mapping[str, str], allowed: Collection[str]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise InvalidArgument(
            f"unknown query parameter {', '.join(unknown)} (accepted: {accepted})"
        )


def query_routes(queries: Queries, logs: RunLogs | None = None) -> Callable[[Router], None]:
    """Registers the read routes, answered by ``queries`` (models bound before a request)
    and ``logs`` (the log route; without it every log is a 404)."""
    logs = logs or RunLogs(queries, None)

    def list_jobs(request: Request) -> Response:
        _only(request.query, JOBS_QUERY_PARAMETERS)
        page = queries.jobs(
            request.repo,
            status=request.query.get("status"),
            branch=request.query.get("branch"),
            event=request.query.get("event"),
            limit=request.query.get("limit"),
            cursor=request.query.get("cursor"),
        )
        return Response(200, page.to_dict(), _HEADERS)

    def show_job(request: Request) -> Response:
        _only(request.query, ())
        return Response(200, queries.job(request.param("job_id")).to_dict(), _HEADERS)

    def repo_stats(request: Request) -> Response:
        _only(request.query, ())
        return Response(200, queries.stats(request.repo).to_dict(), _HEADERS)

    def job_log(request: Request) -> Response:
        _only(request.query, ("attempt",))
        _, text = logs.read(request.param("job_id"), request.query.get("attempt"))
        return Response.text(200, text, _HEADERS)

    def register(router: Router) -> None:
        router.add("GET", "/repos/{owner}/{repo}/jobs", list_jobs)
        router.add("GET", "/repos/{owner}/{repo}/stats", repo_stats)
        router.add("GET", "/jobs/{job_id}", show_job)
        router.add("GET", "/jobs/{job_id}/log", job_log)

    return register
