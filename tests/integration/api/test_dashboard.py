"""The dashboard over real HTTP against DynamoDB Local: pages with real jobs, escaping of hostile
input, filters and pagination, ETag 304s, the live log tail, retry and cancel with CSRF."""

from __future__ import annotations

import gc
import re
import socket
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from scheduler.api.app import Request
from scheduler.api.auth import ApiAuth
from scheduler.api.dashboard import FRESH_MS, Dashboard
from scheduler.db.queries import JobDetail, Queries
from scheduler.db.store import JobStore, NewJob, Outcome
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import log_file
from scheduler.pipelines import parse_pipeline
from scheduler.runs.logs import RunLogs
from scheduler.runs.operations import Operations
from scheduler.runs.pipeline_runs import PipelineRuns, step_id
from scheduler.settings import Settings
from scheduler.wiring import Core, build_core
from state_machines import Trigger
from tests.conftest import MakeJob
from tests.failed_pipeline import red_run

SECRET = "webhook-secret-for-the-dashboard-tests"
REPO = "octo-org/api"
HOSTILE_BRANCH = '<script>alert("b")</script>'
HOSTILE_LOG = '<img src=x onerror="alert(1)"> & done\n'


@dataclass
class Site:
    client: httpx.Client
    core: Core
    logs_dir: Path
    make_job: MakeJob

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.get(path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def site(settings: Settings, ticking_store: JobStore, tmp_path: Path) -> Iterator[Site]:
    logs_dir = tmp_path / "logs"
    core = build_core(
        replace(settings, webhook_secret=SECRET, api_token=None, config_path=None),
        executor=None,
        log_reader=LocalLogReader(logs_dir),
    )
    server = LocalHTTPServer(core.http_app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, follow_redirects=False) as client:
            yield Site(client, core, logs_dir, MakeJob(ticking_store))
    finally:
        server.stop()


def job_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)">', html)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def past_fresh() -> None:
    """Let the reads the polls share (:data:`FRESH_MS`) age out."""
    time.sleep(FRESH_MS / 1000 + 0.05)


def write_log(site: Site, job_id: str, attempt: int, text: str, mode: str = "w") -> None:
    path = log_file(site.logs_dir, job_id, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as handle:
        handle.write(text)


def test_repositories_page_shows_counts_slots_and_the_last_job(site: Site) -> None:
    site.make_job("a1", "passed")
    site.make_job("a2", "failed")
    site.make_job("a3", "active")
    site.make_job("w1", "pending", repo="octo-org/web")
    page = site.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    rows = re.findall(r"<tr>.*?</tr>", page.text, re.S)
    api = next(row for row in rows if ">octo-org/api</a>" in row)
    counts = re.findall(r'<td data-label="(\w+)" class="num[^"]*">(\d+)</td>', api)
    assert counts == [
        ("waiting", "0"),
        ("blocked", "0"),
        ("pending", "0"),
        ("active", "1"),
        ("passed", "1"),
        ("failed", "1"),
        ("cancelled", "0"),
        ("skipped", "0"),
    ]
    headers = re.findall(r'<th scope="col">(\w+)</th>', page.text)
    assert headers[1:9] == [
        "Waiting",
        "Blocked",
        "Pending",
        "Active",
        "Passed",
        "Failed",
        "Cancelled",
        "Skipped",
    ]
    assert "1 / 100" in api  # slots in use / limit (MakeJob activates with a limit of 100)
    assert "/ui/jobs/a3" in api and "status-active" in api  # the last job, with its status
    assert any(">octo-org/web</a>" in row for row in rows)
    assert '<time datetime="' in api  # its age, rendered by the script from this


def test_jobs_page_lists_newest_first_and_escapes_hostile_names(site: Site) -> None:
    site.make_job("old", "passed")
    site.make_job("evil", "failed", branch=HOSTILE_BRANCH)
    site.make_job("pr", "active", event="pull_request")
    page = site.get(f"/ui/repos/{REPO}")
    assert page.status_code == 200
    assert job_ids(page.text) == ["pr", "evil", "old"]
    assert HOSTILE_BRANCH not in page.text
    assert "&lt;script&gt;alert(&#34;b&#34;)&lt;/script&gt;" in page.text
    assert "PR #7" in page.text
    assert 'class="status status-failed">failed</span>' in page.text  # colour and word
    assert "exit_code" in page.text  # the reason
    # Through the filters form, the hostile branch stays data.
    evil = site.get(f"/ui/repos/{REPO}", params={"branch": HOSTILE_BRANCH})
    assert job_ids(evil.text) == ["evil"]
    assert HOSTILE_BRANCH not in evil.text


def test_filters_and_pagination(site: Site) -> None:
    for n in range(30):
        site.make_job(f"p{n:02}", "failed" if n % 3 == 0 else "passed", branch="main")
    site.make_job("dev", "failed", branch="dev", event="pull_request")
    first = site.get(f"/ui/repos/{REPO}")
    assert job_ids(first.text) == ["dev"] + [f"p{n:02}" for n in range(29, 5, -1)]
    older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', first.text)
    assert older
    second = site.get(older.group(1).replace("&amp;", "&"))
    assert job_ids(second.text) == [f"p{n:02}" for n in range(5, -1, -1)]
    assert 'rel="next"' not in second.text and ">Newest</a>" in second.text

    failed = site.get(f"/ui/repos/{REPO}", params={"status": "failed", "branch": "main"})
    assert job_ids(failed.text) == [f"p{n:02}" for n in range(27, -1, -3)]
    assert '<option value="failed" selected>' in failed.text
    prs = site.get(f"/ui/repos/{REPO}", params={"event": "pull_request"})
    assert job_ids(prs.text) == ["dev"]
    bad = site.get(f"/ui/repos/{REPO}", params={"status": "sleeping"})
    assert bad.status_code == 400 and "status must be one of" in bad.text
    assert bad.headers["content-type"].startswith("text/html")


def test_fragments_answer_304_until_something_changes(site: Site) -> None:
    site.make_job("j1", "pending")
    part = f"/ui/part/repos/{REPO}/jobs"
    first = site.get(part)
    assert first.status_code == 200 and job_ids(first.text) == ["j1"]
    etag = first.headers["etag"]
    same = site.get(part, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    site.make_job("j2", "pending")
    past_fresh()
    changed = site.get(part, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and job_ids(changed.text) == ["j2", "j1"]
    assert changed.headers["etag"] != etag

    job_part = site.get("/ui/part/jobs/j1")
    assert job_part.status_code == 200 and "status-pending" in job_part.text
    again = site.get("/ui/part/jobs/j1", headers={"If-None-Match": job_part.headers["etag"]})
    assert again.status_code == 304
    Operations(site.core.store, site.core.queries).cancel("j1")
    past_fresh()
    moved = site.get("/ui/part/jobs/j1", headers={"If-None-Match": job_part.headers["etag"]})
    assert moved.status_code == 200 and "status-cancelled" in moved.text

    repos = site.get("/ui/part/repos")
    assert (
        site.get("/ui/part/repos", headers={"If-None-Match": repos.headers["etag"]}).status_code
        == 304
    )


def test_a_page_carries_its_etag_so_the_first_poll_is_a_304(site: Site) -> None:
    site.make_job("e1", "failed")
    for page, part in (
        ("/", "/ui/part/repos"),
        (f"/ui/repos/{REPO}", f"/ui/part/repos/{REPO}/jobs"),
        ("/ui/jobs/e1", "/ui/part/jobs/e1"),
    ):
        found = re.search(r'data-poll="([^"]+)" data-etag="([^"]+)"', site.get(page).text)
        assert found and found.group(1) == part, page
        etag = found.group(2).replace("&#34;", '"')
        assert site.get(part, headers={"If-None-Match": etag}).status_code == 304, page


class CountingQueries:
    """The dashboard's reads, counted (the rest passes through)."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self.reads: list[str] = []

    def repository_version(self, repo: str) -> str:
        self.reads.append(f"repo {repo}")
        return self.queries.repository_version(repo)

    def job(self, job_id: str) -> JobDetail:
        self.reads.append(f"job {job_id}")
        return self.queries.job(job_id)

    def step_summaries(self, step_ids: list[str]) -> object:
        self.reads.append(f"steps {len(step_ids)}")
        return self.queries.step_summaries(step_ids)

    def __getattr__(self, name: str) -> object:
        return getattr(self.queries, name)


def counted_dashboard(site: Site, now: list[int]) -> tuple[CountingQueries, Dashboard]:
    """A dashboard on ``site``'s queries, counting their reads, its clock at ``now[0]``."""
    counting = CountingQueries(site.core.queries)
    dashboard = Dashboard(
        counting,  # type: ignore[arg-type]
        RunLogs(site.core.queries, LocalLogReader(site.logs_dir)),
        None,
        ApiAuth(None),
        clock=lambda: now[0],
    )
    return counting, dashboard


def test_polls_of_many_tabs_share_one_read_per_period(site: Site) -> None:
    site.make_job("s1", "active")
    now = [1_000_000]
    counting, dashboard = counted_dashboard(site, now)
    owner, name = REPO.split("/")
    jobs = Request("GET", f"/ui/part/repos/{REPO}/jobs", params={"owner": owner, "repo": name})
    job = Request("GET", "/ui/part/jobs/s1", params={"job_id": "s1"})
    log = Request("GET", "/ui/part/jobs/s1/log", query={"attempt": "1"}, params={"job_id": "s1"})
    first = dashboard.jobs_part(jobs)
    etag = first.headers["etag"]
    for _ in range(10):  # ten tabs within one period: one read of the counters
        again = dashboard.jobs_part(replace(jobs, headers={"if-none-match": etag}))
        assert again.status == 304
        assert dashboard.job_part(job).status == 200
        assert dashboard.log_part(log).status == 200
    assert counting.reads == [f"repo {REPO}", "job s1"]

    site.make_job("s2", "pending")  # a change, seen once the period is over
    now[0] += FRESH_MS
    moved = dashboard.jobs_part(replace(jobs, headers={"if-none-match": etag}))
    assert moved.status == 200 and moved.headers["etag"] != etag
    assert counting.reads[2:] == [f"repo {REPO}"]

    # A page reads afresh and leaves its read for the polls (never older than the page).
    Operations(site.core.store, site.core.queries).cancel("s1")
    page = dashboard.job_page(Request("GET", "/ui/jobs/s1", params={"job_id": "s1"}))
    assert "status-cancelled" in page.encode().decode()
    part = dashboard.job_part(job).encode().decode()
    assert "status-cancelled" in part
    assert counting.reads[3:] == ["job s1"]


def test_job_page_shows_fields_history_and_the_escaped_log(site: Site) -> None:
    site.make_job("done", "failed")
    write_log(site, "done", 1, "building\n" + HOSTILE_LOG)
    page = site.get("/ui/jobs/done")
    assert page.status_code == 200
    assert "c0ffee" in page.text and "octocat" in page.text
    timeline = re.search(r'<ol class="timeline">(.*?)</ol>', page.text, re.S)
    assert timeline and timeline.group(1).count("<li>") == 3  # received, activated, failed
    assert "<img src=x" not in page.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; done" in page.text
    assert 'data-final="1"' in page.text  # a finished attempt's log is not tailed
    assert ">Retry</button>" in page.text and ">Cancel</button>" not in page.text
    missing = site.get("/ui/jobs/nope")
    assert missing.status_code == 404 and "job nope not found" in missing.text


def test_the_log_tail_returns_whole_new_lines_from_its_cursor(site: Site) -> None:
    site.make_job("run", "active")
    write_log(site, "run", 1, "line 1\nhalf a li")
    first = site.get("/ui/part/jobs/run/log", params={"attempt": "1"}).json()
    assert first["text"] == "line 1\n" and first["final"] is False
    write_log(site, "run", 1, "ne\nline 3\n", mode="a")
    second = site.get(
        "/ui/part/jobs/run/log", params={"attempt": "1", "cursor": first["cursor"]}
    ).json()
    assert second["text"] == "half a line\nline 3\n"
    idle = site.get(
        "/ui/part/jobs/run/log", params={"attempt": "1", "cursor": second["cursor"]}
    ).json()
    assert idle["text"] == "" and idle["cursor"] == second["cursor"]
    page = site.get("/ui/jobs/run")
    assert 'data-final="0"' in page.text and "line 3" in page.text


def test_retry_and_cancel_need_the_form_token(site: Site) -> None:
    site.make_job("f1", "failed")
    page = site.get("/ui/jobs/f1")
    token = csrf_of(page.text)
    refused = site.client.post("/ui/jobs/f1/retry", data={})
    assert refused.status_code == 403 and "reload" in refused.text
    forged = site.client.post("/ui/jobs/f1/retry", data={"csrf": token + "x"})
    assert forged.status_code == 403
    cross = site.client.post(
        "/ui/jobs/f1/retry", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and "another origin" in cross.text
    assert site.core.queries.job("f1").status == "failed"  # none of them did anything

    done = site.client.post(
        "/ui/jobs/f1/retry", data={"csrf": token}, headers={"Origin": str(site.client.base_url)}
    )
    assert done.status_code == 303 and done.headers["location"] == "/ui/jobs/f1?done=retried"
    job = site.core.queries.job("f1")
    assert (job.status, job.attempt) == ("pending", 2)
    shown = site.get(done.headers["location"])
    assert "Retry requested" in shown.text and ">Cancel</button>" in shown.text

    cancelled = site.client.post("/ui/jobs/f1/cancel", data={"csrf": csrf_of(shown.text)})
    assert cancelled.headers["location"] == "/ui/jobs/f1?done=cancelled"
    assert site.core.queries.job("f1").status == "cancelled"


def test_approve_is_offered_only_for_a_waiting_job_and_needs_the_form_token(site: Site) -> None:
    site.make_job("fork", "waiting", event="pull_request")
    page = site.get("/ui/jobs/fork")
    assert "status-waiting" in page.text and "(from a fork)" in page.text
    assert ">Approve</button>" in page.text and ">Cancel</button>" in page.text
    assert ">Retry</button>" not in page.text
    token = csrf_of(page.text)
    assert site.client.post("/ui/jobs/fork/approve", data={}).status_code == 403
    cross = site.client.post(
        "/ui/jobs/fork/approve", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and site.core.queries.job("fork").status == "waiting"

    done = site.client.post("/ui/jobs/fork/approve", data={"csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/ui/jobs/fork?done=approved"
    job = site.core.queries.job("fork")
    assert (job.status, job.attempt) == ("pending", 1)
    shown = site.get(done.headers["location"])
    assert "Approved" in shown.text and ">Approve</button>" not in shown.text
    # The page a second operator still had open: refused, nothing done.
    late = site.client.post("/ui/jobs/fork/approve", data={"csrf": token})
    assert late.headers["location"] == "/ui/jobs/fork?done=refused"
    assert [h.dest for h in site.core.queries.job("fork").history] == ["waiting", "pending"]
    site.make_job("other", "pending")
    assert ">Approve</button>" not in site.get("/ui/jobs/other").text


def test_a_lost_race_is_a_message_not_an_error_page(site: Site) -> None:
    site.make_job("race", "failed")
    page = site.get("/ui/jobs/race")  # the operator sees "failed" and a Retry button
    # Meanwhile the CLI retries it (the same guarded operation).
    Operations(site.core.store, site.core.queries).retry("race")
    late = site.client.post("/ui/jobs/race/retry", data={"csrf": csrf_of(page.text)})
    assert late.status_code == 303 and late.headers["location"] == "/ui/jobs/race?done=refused"
    shown = site.get(late.headers["location"])
    assert shown.status_code == 200 and "nothing was done" in shown.text
    assert site.core.queries.job("race").attempt == 2  # one retry, not two


def test_retry_on_a_pipeline_run_reruns_its_failed_steps_and_on_a_step_that_step(
    site: Site,
) -> None:
    run_id = red_run(site.core.store, "octo-org/steps")
    page = site.get(f"/ui/jobs/{run_id}")
    done = site.client.post(f"/ui/jobs/{run_id}/retry", data={"csrf": csrf_of(page.text)})
    assert done.headers["location"] == f"/ui/jobs/{run_id}?done=retried"
    run = site.core.queries.job(run_id)
    assert (run.status, run.attempt) == ("active", 2)
    unit, e2e = site.core.queries.job(f"{run_id}.s2"), site.core.queries.job(f"{run_id}.s3")
    assert (unit.status, unit.attempt, e2e.status) == ("blocked", 2, "blocked")
    # The same page again: the run runs, nothing to re-run: refused, nothing done.
    late = site.client.post(f"/ui/jobs/{run_id}/retry", data={"csrf": csrf_of(page.text)})
    assert late.headers["location"] == f"/ui/jobs/{run_id}?done=refused"
    lint = f"{run_id}.s1"
    step = site.client.post(f"/ui/jobs/{lint}/retry", data={"csrf": csrf_of(page.text)})
    assert step.headers["location"] == f"/ui/jobs/{lint}?done=retried"
    assert (site.core.queries.job(lint).status, site.core.queries.job(lint).attempt) == (
        "blocked",
        2,
    )


def raw_exchange(site: Site, request: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Send ``request`` as bytes and read the answer's status and header lines as sent (a
    client library would refuse or fold what is checked here)."""
    url = site.client.base_url
    assert url.host and url.port
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    fields = [line.partition(":") for line in lines]
    return int(status_line.split()[1]), [(k.lower(), v.strip()) for k, _, v in fields]


HOSTILE_NEXT = [
    "/\r\nSet-Cookie: injected=1",
    "/\nSet-Cookie: injected=1",
    "/\rSet-Cookie: injected=1",
    "/\t/evil.example",
    "/\x0b/evil.example",
    "/ /evil.example",
    "/\x00",
    "/\x7f",
    "/caf\u00e9",
    "/\u2028",
    "//evil.example",
    "/a//evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "evil.example",
    "",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT, ids=repr)
def test_the_login_form_sends_a_hostile_next_home_and_never_into_a_header(
    site: Site, target: str
) -> None:
    body = urlencode({"next": target, "token": "x"}).encode()
    status, fields = raw_exchange(
        site,
        b"POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status == 303
    assert [v for k, v in fields if k == "location"] == ["/"], fields
    assert "set-cookie" not in dict(fields) and "injected=1" not in repr(fields)


def test_the_login_form_keeps_a_next_that_is_a_path_of_this_site(site: Site) -> None:
    for target in ("/", "/ui/repos/octo-org/api?status=failed&branch=a%2F%2Fb", "/ui/jobs/a:b"):
        answer = site.client.post("/ui/login", data={"next": target})
        assert answer.status_code == 303 and answer.headers["location"] == target


SHIPPED_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
HOSTILE_STATIC = [
    "a" * 300 + ".js",  # answered 500 (File name too long)
    "a" * 300,
    "x" * 5000 + ".css",
    "..%2Fviews.py",
    "%2e%2e%2fapp.py",
    "%2e%2e",
    "__init__.py",
    "dashboard.js%00",
    "dashboard.js%2F",
    "dashboard.js%20",
    "dashboard.js.",
    ".dashboard.js",
    "DASHBOARD.JS",
    "%ff.js",
    "a%2Fb.css",
    "missing.js",
]


def test_the_static_route_serves_the_shipped_files_and_404_for_any_other_name(
    site: Site,
) -> None:
    for name, media_type in SHIPPED_STATIC.items():
        shipped = site.get(f"/ui/static/{name}")
        assert shipped.status_code == 200 and shipped.headers["content-type"] == media_type
        again = site.get(f"/ui/static/{name}", headers={"If-None-Match": shipped.headers["etag"]})
        assert again.status_code == 304
    for name in HOSTILE_STATIC:
        assert site.get(f"/ui/static/{name}").status_code == 404, name


def test_the_static_route_remembers_nothing_of_the_names_it_is_asked_for(site: Site) -> None:
    names = [f"{n:05d}{'n' * 240}.js" for n in range(1200)]
    # Warm-up: the connection, the route, the error answer, and the bounded caches on the way
    # (urllib.parse keeps the last 128 URLs it split, client and server side).
    for name in names[:200]:
        assert site.get(f"/ui/static/{name}").status_code == 404
    held: list[int] = []
    tracemalloc.start()
    try:
        for batch in (names[200:700], names[700:]):
            for name in batch:
                assert site.get(f"/ui/static/{name}").status_code == 404
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    # What the first batch leaves may be bounded (buffers, free lists); a second batch of as
    # many new names must leave nothing more. A cache of 500 names would hold about 170 KB.
    assert held[1] - held[0] < 50_000, f"{held[1] - held[0]} bytes more after 500 more names"


# -- a pipeline run's page ----------------------------------------------------------------------

PIPELINE = """
steps:
  - {key: build, command: [make]}
  - key: test
    command: [make, test]
    needs: [build]
    matrix: {n: ["1", "2"]}
  - {key: docs, command: [make, docs], needs: [build], if: "branch == 'main'"}
  - {key: report, command: [make, report], needs: [test, docs], concurrency_group: reports}
"""


def pipeline_run(site: Site, run_id: str = "gh-run") -> PipelineRuns:
    """A run on a feature branch: build passed, both tests unblocked, docs skipped (its
    ``if`` wants main), report blocked."""
    store = site.make_job.store
    store.create(
        NewJob(
            job_id=run_id,
            repo=REPO,
            event="push",
            sha="b" * 40,
            timeout_seconds=600,
            ref="refs/heads/feature",
            branch="feature",
            delivery_id=run_id,
        )
    )
    runs = PipelineRuns(store)
    runs.fan_out(store.get(run_id), parse_pipeline(PIPELINE.encode()))
    run = store.get(run_id)
    runs.fan_in(run)  # build unblocked
    end_step(store, step_id(run_id, 1), Trigger.PASS)
    runs.fan_in(run)  # test[n=1], test[n=2] unblocked; docs skipped
    return runs


def end_step(store: JobStore, job_id: str, trigger: Trigger | None) -> None:
    """Activate a pending step and, with a trigger, end it so."""
    job = store.transition(store.state(job_id), Trigger.ACTIVATE, actor="test", slot_limit=10)
    if trigger is not None:
        outcome = Outcome(reason="exit_code", exit_code=1) if trigger is Trigger.FAIL else None
        store.transition(job, trigger, actor="test", outcome=outcome)


def steps_drawn(html: str) -> dict[str, tuple[str, str, str]]:
    """Each step box: key -> (link, column, status)."""
    found = re.findall(
        r'<a href="([^"]+)" class="step step-\w+" data-step="([^"]+)" data-column="(\d+)"'
        r' data-status="(\w+)">',
        html,
    )
    return {key: (link, column, status) for link, key, column, status in found}


def test_a_pipeline_runs_page_draws_its_steps_by_depth_with_their_needs(site: Site) -> None:
    pipeline_run(site)
    end_step(site.make_job.store, step_id("gh-run", 2), None)  # test[n=1] runs
    page = site.get("/ui/jobs/gh-run")
    assert page.status_code == 200
    assert steps_drawn(page.text) == {
        "build": ("/ui/jobs/gh-run.s1", "1", "passed"),
        "test[n=1]": ("/ui/jobs/gh-run.s2", "2", "active"),
        "test[n=2]": ("/ui/jobs/gh-run.s3", "2", "pending"),
        "docs": ("/ui/jobs/gh-run.s4", "2", "skipped"),
        "report": ("/ui/jobs/gh-run.s5", "3", "blocked"),
    }
    arrows = re.findall(
        r'class="edge edge-(\w+)" d="[^"]+" [^>]*data-need="([^"]+)" data-step="([^"]+)"', page.text
    )
    assert sorted(arrows) == [
        ("active", "test[n=1]", "report"),
        ("passed", "build", "docs"),
        ("passed", "build", "test[n=1]"),
        ("passed", "build", "test[n=2]"),
        ("pending", "test[n=2]", "report"),
        ("skipped", "docs", "report"),
    ]
    counts = dict(re.findall(r'<span data-count="(\w+)">(\d+) ', page.text))
    assert counts == {"passed": "1", "active": "1", "pending": "1", "skipped": "1", "blocked": "1"}
    assert re.search(r"passed · \d+(\.\d)? s</text>", page.text)  # build's duration
    assert '· <tspan data-since="' in page.text  # test[n=1] running, aged by the script
    assert "<dt>Steps</dt><dd>5</dd>" in page.text
    assert ">Cancel</button>" in page.text  # a run is cancelled with its steps
    assert 'id="log"' not in page.text  # a run has no output of its own
    # A page opened before the run read its file tails a log: it stops at once.
    tail = site.get("/ui/part/jobs/gh-run/log", params={"attempt": "1"}).json()
    assert (tail["text"], tail["final"]) == ("", True)

    step = site.get("/ui/jobs/gh-run.s2")
    assert step.status_code == 200
    assert re.search(
        r'<dt>Pipeline run</dt><dd><a href="/ui/jobs/gh-run"[^>]*>gh-run</a> · step'
        r" <span[^>]*>test\[n=1\]</span>",
        step.text,
    )
    assert 'id="log"' in step.text and "data-pipeline" not in step.text
    assert "Concurrency group" not in step.text
    report = site.get("/ui/jobs/gh-run.s5")
    assert re.search(r"<dt>Concurrency group</dt><dd><span[^>]*>reports</span>", report.text)
    # Its crumbs lead to the run too.
    crumbs = re.search(r'<nav aria-label="Breadcrumb">(.*?)</nav>', step.text, re.S)
    assert crumbs and '<a href="/ui/jobs/gh-run"' in crumbs.group(1)


def test_a_runs_fragment_moves_when_a_step_does_and_only_then(site: Site) -> None:
    pipeline_run(site)
    page = site.get("/ui/jobs/gh-run")
    found = re.search(r'data-poll="([^"]+)" data-etag="([^"]+)"', page.text)
    assert found and found.group(1) == "/ui/part/jobs/gh-run"
    etag = found.group(2).replace("&#34;", '"')
    assert site.get(found.group(1), headers={"If-None-Match": etag}).status_code == 304
    # A step fails: the run's item does not change, its fragment does.
    end_step(site.make_job.store, step_id("gh-run", 3), Trigger.FAIL)
    past_fresh()
    moved = site.get(found.group(1), headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    assert steps_drawn(moved.text)["test[n=2]"][2] == "failed"
    assert 'class="edge edge-failed"' in moved.text
    again = site.get(found.group(1), headers={"If-None-Match": moved.headers["etag"]})
    assert again.status_code == 304


def test_an_ended_run_offers_the_retry_of_its_failed_steps_and_no_cancel(site: Site) -> None:
    store = site.make_job.store
    pipeline_run(site)
    end_step(store, step_id("gh-run", 2), Trigger.FAIL)
    Operations(store, site.core.queries).cancel("gh-run")  # the run, with its steps
    page = site.get("/ui/jobs/gh-run")
    assert "status-cancelled" in page.text
    # Its Retry re-runs its failed steps (never the run as a whole); nothing to cancel.
    assert ">Retry</button>" in page.text and ">Cancel</button>" not in page.text
    assert ">Retry</button>" in site.get("/ui/jobs/gh-run.s2").text


def test_a_plain_job_has_no_pipeline_and_the_repositories_count_blocked_and_skipped(
    site: Site,
) -> None:
    site.make_job("plain", "passed")
    assert "data-pipeline" not in site.get("/ui/jobs/plain").text
    pipeline_run(site)
    listing = site.get(f"/ui/repos/{REPO}").text
    assert 'title="gh-run.s5">gh-run.s5</a>' in listing  # a step's id keeps its suffix
    rows = re.findall(r"<tr>.*?</tr>", site.get("/").text, re.S)
    api = next(row for row in rows if ">octo-org/api</a>" in row)
    counts = dict(re.findall(r'<td data-label="(\w+)" class="num[^"]*">(\d+)</td>', api))
    # The run (pending: nothing expands it here), build passed, two tests pending, docs
    # skipped, report blocked; and the plain job passed.
    assert counts == {
        "waiting": "0",
        "blocked": "1",
        "pending": "3",
        "active": "0",
        "passed": "2",
        "failed": "0",
        "cancelled": "0",
        "skipped": "1",
    }


def test_polls_of_a_run_read_its_steps_only_when_the_repository_moved(site: Site) -> None:
    pipeline_run(site)
    now = [1_000_000]
    counting, dashboard = counted_dashboard(site, now)
    part = Request("GET", "/ui/part/jobs/gh-run", params={"job_id": "gh-run"})
    first = dashboard.job_part(part)
    etag = first.headers["etag"]
    for _ in range(10):  # tabs within one period, and after it while nothing moved
        assert dashboard.job_part(part).status == 200
        now[0] += FRESH_MS
        assert dashboard.job_part(replace(part, headers={"if-none-match": etag})).status == 304
    # The steps were read once: every later poll read the job and the counters only.
    assert counting.reads.count("steps 5") == 1
    assert counting.reads[:3] == ["job gh-run", f"repo {REPO}", "steps 5"]
    end_step(site.make_job.store, step_id("gh-run", 2), Trigger.PASS)
    now[0] += FRESH_MS
    moved = dashboard.job_part(replace(part, headers={"if-none-match": etag}))
    assert moved.status == 200 and counting.reads.count("steps 5") == 2
    assert 'data-step="test[n=1]" data-column="2" data-status="passed"' in moved.encode().decode()
