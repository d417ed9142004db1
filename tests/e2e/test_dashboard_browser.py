"""The dashboard in a real browser: headless Debian Chromium driven by Playwright against a real
``scheduler up`` (with an API token) on free ports. Screenshots of the three pages go to the
git-ignored ``.screenshots/``."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api as playwright_api

from scheduler.api.dashboard import POLL_MS
from scheduler.cli.sample_delivery import deliver, sample_push
from tests.conftest import ROOT
from tests.reliability.harness import SCHEDULER, SECRET, LocalStackProcess

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by `make test` (never skipped)
# How long a page may take to show what it must (Playwright's waits and expect()): generous, so
# that a loaded machine only makes a test slower. How fast the pages are is bench/dashboard.py's.
PATIENCE_MS = 60_000
playwright_api.expect.set_options(timeout=PATIENCE_MS)

TOKEN = "browser-test-token-0123456789abcdef"
SHOTS = ROOT / ".screenshots"
CONFIG = """
[defaults]
checkout = false
command = ["true"]
concurrency = 4
timeout_seconds = 120

[repos."web/tail"]
command = ["sh", "-c", "for i in $(seq 1 240); do echo \\"line $i of the run\\"; sleep 0.25; done"]

[repos."web/fail"]
command = ["sh", "-c", "echo 'this build fails'; exit 3"]

[repos."web/flaky"]  # fails at once, then a retry runs for a while
command = ["sh", "-c", "if [ $SCHEDULER_ATTEMPT = 1 ]; then exit 3; fi; sleep 30"]

[repos."web/again"]  # fails at once with a line, then a retry writes a few more
command = ["sh", "-c", '''
if [ $SCHEDULER_ATTEMPT = 1 ]; then echo 'first attempt fails'; exit 3; fi
for i in $(seq 1 8); do echo "attempt $SCHEDULER_ATTEMPT line $i"; sleep 0.25; done
''']

[repos."web/slow"]
command = ["sh", "-c", "echo started; sleep 60"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStackProcess]:
    process = LocalStackProcess(
        tmp_path_factory.mktemp("browser"), CONFIG, env={"SCHEDULER_API_TOKEN": TOKEN}
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # launch() gives the browser a fresh, temporary --user-data-dir of its own (Playwright
    # refuses the flag there; its persistent contexts are for reusing a profile).
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object, stack: LocalStackProcess) -> Iterator[object]:
    """A signed-in page (through the token form)."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    context.set_default_timeout(PATIENCE_MS)
    tab = context.new_page()
    tab.goto("/")
    tab.fill("#token", TOKEN)
    tab.click("button[type=submit]")
    tab.wait_for_selector("h1:has-text('Repositories')")
    try:
        yield tab
    finally:
        context.close()


def send(stack: LocalStackProcess, repo: str, branch: str = "main") -> str:
    with httpx.Client(timeout=10) as client:
        answer = deliver(
            client, stack.url, SECRET, sample_push(repo, branch, uuid.uuid4().hex + "0" * 8)
        )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def wait_status(stack: LocalStackProcess, job_id: str, *statuses: str) -> None:
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < deadline:
            if client.get(f"{stack.url}/jobs/{job_id}").json()["status"] in statuses:
                return
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} never became {statuses}")


def mark(tab: object) -> None:
    tab.evaluate("window.__notReloaded = true")  # type: ignore[attr-defined]


def not_reloaded(tab: object) -> bool:
    return bool(tab.evaluate("window.__notReloaded === true"))  # type: ignore[attr-defined]


def shoot(tab: object, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_the_token_prompt_refuses_a_wrong_token(browser: object, stack: LocalStackProcess) -> None:
    context = browser.new_context(base_url=stack.url)  # type: ignore[attr-defined]
    context.set_default_timeout(PATIENCE_MS)
    tab = context.new_page()
    try:
        answer = tab.goto("/ui/repos/web/tail")
        assert answer.status == 401
        assert tab.locator("label[for=token]").inner_text() == "API token"
        tab.fill("#token", "not-the-token")
        tab.click("button[type=submit]")
        assert tab.locator("[role=alert]").inner_text() == "Wrong token."
        assert not any(c["name"] == "scheduler_session" for c in context.cookies())
        tab.fill("#token", TOKEN)
        tab.click("button[type=submit]")
        tab.wait_for_selector("h1:has-text('web/tail')")  # back where it was asked
        (cookie,) = [c for c in context.cookies() if c["name"] == "scheduler_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        assert tab.evaluate("document.cookie") == ""  # out of the script's reach
    finally:
        context.close()


def test_a_job_appears_without_a_reload_and_its_log_grows(
    page: object, stack: LocalStackProcess
) -> None:
    tab = page
    send(stack, "web/tail")  # the repository exists
    tab.goto("/ui/repos/web/tail")  # type: ignore[attr-defined]
    mark(tab)
    polled = tab.wait_for_event("request", lambda r: "/ui/part/" in r.url)  # type: ignore[attr-defined]
    assert polled.method == "GET"  # the page is idle and polling
    job_id = send(stack, "web/tail")
    # The row comes with a poll, not a reload (how soon: bench/dashboard.py; about a second).
    tab.wait_for_selector(f'tr[data-job-id="{job_id}"]')  # type: ignore[attr-defined]
    assert not_reloaded(tab)
    shoot(tab, "jobs")
    tab.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    shoot(tab, "jobs-phone")
    tab.set_viewport_size({"width": 1280, "height": 800})  # type: ignore[attr-defined]

    tab.click(f'tr[data-job-id="{job_id}"] a')  # type: ignore[attr-defined]
    tab.wait_for_selector("#log")  # type: ignore[attr-defined]
    mark(tab)
    log = tab.locator("#log")  # type: ignore[attr-defined]
    playwright_api.expect(log).to_contain_text("line 3 of the run")
    before = len(log.inner_text())
    # The run writes a line every 0.25 s for a minute: the tail grows while the page is open.
    tab.wait_for_function(  # type: ignore[attr-defined]
        "n => document.getElementById('log').innerText.length > n", arg=before
    )
    assert not_reloaded(tab)
    assert tab.locator(".job-fields .status").first.inner_text() == "active"  # type: ignore[attr-defined]
    shoot(tab, "job")
    tab.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    shoot(tab, "job-phone")


def test_retry_and_cancel_and_a_race_with_the_cli(page: object, stack: LocalStackProcess) -> None:
    tab = page
    failed = send(stack, "web/fail")
    wait_status(stack, failed, "failed")
    tab.goto(f"/ui/jobs/{failed}")  # type: ignore[attr-defined]
    tab.click("button:has-text('Retry')")  # type: ignore[attr-defined]
    assert "Retry requested" in tab.locator("main .message").inner_text()  # type: ignore[attr-defined]
    assert "attempt 2" in tab.locator(".job-head").inner_text()  # type: ignore[attr-defined]

    slow = send(stack, "web/slow")
    wait_status(stack, slow, "active")
    tab.goto(f"/ui/jobs/{slow}")  # type: ignore[attr-defined]
    tab.click("button:has-text('Cancel')")  # type: ignore[attr-defined]
    assert "Cancel requested" in tab.locator("main .message").inner_text()  # type: ignore[attr-defined]
    tab.wait_for_selector(".job-fields .status-cancelled")  # type: ignore[attr-defined]

    # The page shows a failed job; the CLI retries it before the page's button is pressed.
    raced = send(stack, "web/flaky")
    wait_status(stack, raced, "failed")
    tab.goto(f"/ui/jobs/{raced}")  # type: ignore[attr-defined]
    tab.route("**/ui/part/**", lambda route: route.abort())  # type: ignore[attr-defined]
    env = stack.env_for_cli()
    done = subprocess.run(
        [SCHEDULER, "retry", raced], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    tab.click("button:has-text('Retry')")  # type: ignore[attr-defined]
    message = tab.locator("main .message").inner_text()  # type: ignore[attr-defined]
    assert "nothing was done" in message
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get(f"{stack.url}/jobs/{raced}").json()["attempt"] == 2  # one retry


def test_the_log_follows_a_retry_without_a_reload(page: object, stack: LocalStackProcess) -> None:
    tab = page
    job_id = send(stack, "web/again")
    wait_status(stack, job_id, "failed")
    tab.goto(f"/ui/jobs/{job_id}")  # type: ignore[attr-defined]
    log = tab.locator("#log")  # type: ignore[attr-defined]
    state = tab.locator("#log-state")  # type: ignore[attr-defined]
    playwright_api.expect(log).to_have_text("first attempt fails\n")
    playwright_api.expect(state).to_have_text("Attempt 1 is over.")
    # A second tab pinned to the first attempt keeps showing it.
    pinned = tab.context.new_page()  # type: ignore[attr-defined]
    pinned.goto(f"/ui/jobs/{job_id}?attempt=1")
    mark(tab)
    done = subprocess.run(
        [SCHEDULER, "retry", job_id],
        env=stack.env_for_cli(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    playwright_api.expect(log).to_contain_text("attempt 2 line 3")
    assert "first attempt fails" not in log.inner_text()
    assert log.get_attribute("aria-label") == "Output of attempt 2"
    attempts = tab.locator("nav.attempts")  # type: ignore[attr-defined]
    playwright_api.expect(attempts).to_be_visible()
    assert attempts.locator("a[aria-current=page]").inner_text() == "attempt 2"
    assert attempts.locator("a").all_inner_texts() == ["attempt 2", "attempt 1"]
    playwright_api.expect(state).to_have_text("Attempt 2 is over.")
    assert log.inner_text() == "".join(f"attempt 2 line {n}\n" for n in range(1, 9))
    assert "attempt 2" in tab.locator(".job-head").inner_text()  # type: ignore[attr-defined]
    assert not_reloaded(tab)
    shoot(tab, "job-retried")

    playwright_api.expect(pinned.locator(".job-head")).to_contain_text("attempt 2")
    assert pinned.locator("#log").inner_text() == "first attempt fails\n"
    assert pinned.locator("#log-state").inner_text() == "Attempt 1 is over."
    pinned.close()


# Written into each tab before the page's script: the tab's own record, in the order the tab saw
# them, of the fragment polls it sent (when, with which ETag) and of the other tabs' words on the
# channel it heard (the `at` the sender stamped its poll with). One thread runs a tab's script, so
# this order is the order the page's script saw things in, however late its timers fire.
SHARED_POLLS_LOG = """
(() => {
  const seen = (window.__seen = []);
  const fetched = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).includes("/ui/part/")) {
      const headers = (init && init.headers) || {};
      seen.push({kind: "poll", url: String(url), at: Date.now(),
                 etag: headers["If-None-Match"] || null});
    }
    return fetched.apply(this, arguments);
  };
  const Channel = window.BroadcastChannel;
  if (typeof Channel !== "function") return;
  window.BroadcastChannel = class extends Channel {
    constructor(name) {
      super(name);
      this.addEventListener("message", (event) => {
        const m = event.data || {};
        seen.push({kind: "heard", url: m.url, at: m.at, etag: m.etag, html: "html" in m});
      });
    }
  };
})();
"""


def polls_within_a_period_of_a_heard_one(seen: list[dict[str, Any]], period_ms: int) -> list[str]:
    """The polls a tab sent less than a period after another tab's poll of the same fragment and
    state it had heard of (each with the poll it had heard of): what shared polls never do."""
    heard: dict[tuple[str, str], int] = {}  # (fragment, ETag) -> the latest poll heard of
    early = []
    for event in seen:
        key = (event["url"], event["etag"])
        if event["kind"] == "heard":
            heard[key] = max(heard.get(key, event["at"]), event["at"])
        elif key in heard and event["at"] - heard[key] < period_ms:
            early.append(f"{event} {event['at'] - heard[key]} ms after a poll heard of")
    return early


def test_tabs_on_one_page_share_their_polls(page: object, stack: LocalStackProcess) -> None:
    """Two tabs on one jobs page: a tab never polls within a period of a poll it heard the other
    tab send (judged from the polls' own timestamps, in the order each tab saw them), they do
    hear each other, and both stay live. How many polls per second that saves is a figure of
    bench/dashboard.py (its idle-tabs case)."""
    tab = page
    wait_status(stack, send(stack, "web/shared"), "passed")  # the page's state holds still
    tab.context.add_init_script(SHARED_POLLS_LOG)  # type: ignore[attr-defined]
    other = tab.context.new_page()  # type: ignore[attr-defined]
    for each in (tab, other):
        each.goto("/ui/repos/web/shared")  # type: ignore[attr-defined]
    mark(tab)

    def seen(each: object) -> list[dict[str, Any]]:
        return list(each.evaluate("window.__seen"))  # type: ignore[attr-defined]

    def heard(each: object) -> int:
        return sum(e["kind"] == "heard" and not e["html"] for e in seen(each))

    # Enough polls heard of for sharing to have been tried a few times, however long it takes
    # (one tab may do all the polling: the other hears of each poll and never needs its own).
    deadline = time.monotonic() + PATIENCE_MS / 1000
    while heard(tab) + heard(other) < 6:
        assert time.monotonic() < deadline, (seen(tab), seen(other))
        tab.wait_for_timeout(200)  # type: ignore[attr-defined]  # (events arrive while waiting)
    logs = {"first tab": seen(tab), "second tab": seen(other)}
    for name, log in logs.items():
        # One state throughout (no job moved): every poll and word is about the same ETag.
        assert len({(e["url"], e["etag"]) for e in log}) == 1, (name, log)
        early = polls_within_a_period_of_a_heard_one(log, POLL_MS)
        assert not early, f"the {name} polled though the other tab had just polled: {early}"
    print(
        "\ndashboard: 2 tabs sent "
        + ", ".join(f"{sum(e['kind'] == 'poll' for e in log)}" for log in logs.values())
        + " polls, sharing them"
    )

    job_id = send(stack, "web/shared")
    for each in (tab, other):  # both kept live (how soon: bench/dashboard.py)
        each.wait_for_selector(f'tr[data-job-id="{job_id}"]')  # type: ignore[attr-defined]
    assert not_reloaded(tab)
    other.close()


def test_filters_and_pagination(page: object, stack: LocalStackProcess) -> None:
    tab = page
    jobs = [send(stack, "web/many", branch=f"b{n % 2}") for n in range(27)]
    for job_id in jobs[-3:]:
        wait_status(stack, job_id, "passed")
    tab.goto("/ui/repos/web/many")  # type: ignore[attr-defined]
    rows = tab.locator("tr[data-job-id]")  # type: ignore[attr-defined]
    assert rows.count() == 25
    assert rows.first.get_attribute("data-job-id") == jobs[-1]
    tab.click("a[rel=next]")  # type: ignore[attr-defined]
    tab.wait_for_url("**cursor=**")  # type: ignore[attr-defined]
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(rows.count())] == [
        jobs[1],
        jobs[0],
    ]
    tab.click("nav.pager >> text=Newest")  # type: ignore[attr-defined]
    tab.fill("#f-branch", "b1")  # type: ignore[attr-defined]
    tab.click("button:has-text('Filter')")  # type: ignore[attr-defined]
    tab.wait_for_url("**branch=b1**")  # type: ignore[attr-defined]
    assert rows.count() == 13
    tab.select_option("#f-status", "failed")  # type: ignore[attr-defined]
    tab.click("button:has-text('Filter')")  # type: ignore[attr-defined]
    tab.wait_for_url("**status=failed**")  # type: ignore[attr-defined]
    assert rows.count() == 0
    assert "No job matches these filters" in tab.locator("main").inner_text()  # type: ignore[attr-defined]

    tab.goto("/")  # type: ignore[attr-defined]
    tab.wait_for_selector("a:has-text('web/many')")  # type: ignore[attr-defined]
    shoot(tab, "repositories")
    tab.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    shoot(tab, "repositories-phone")
