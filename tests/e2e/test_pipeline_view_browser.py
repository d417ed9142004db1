"""A pipeline run's page in a real browser: headless Debian Chromium (Playwright) against a real
``scheduler up`` running a repository's ``.scheduler/pipeline.yml`` from a git origin. The page,
opened as the delivery arrives, draws the steps in their columns by depth and follows them live
(no reload) through running, failed, skipped and blocked to the run's end; each box leads to
its step's page (its log, a link back to the run). Screenshots go to the test's tmp dir."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright import sync_api as playwright_api

from tests.e2e.test_dashboard_browser import CHROMIUM, PATIENCE_MS
from tests.git_origin import git, make_origin
from tests.reliability.harness import UNSANDBOXED, LocalStackProcess

playwright_api.expect.set_options(timeout=PATIENCE_MS)

REPO = "octo/app"
# test[n=2] fails; test[n=3] runs until the test lets it end (a file appears), so the page can be
# seen with steps active, failed, skipped and blocked at once. publish needs report (which runs
# always) and is skipped all the same: without a status function an `if` means success() of
# every step before it, as in GitHub Actions.
PIPELINE = """\
steps:
  - key: build
    command: 'echo building; sleep 0.3'
  - key: lint
    command: 'echo linting'
  - key: test
    needs: [build]
    matrix: {{n: ["1", "2", "3"]}}
    command: >-
      echo "test $n";
      [ "$n" != 2 ] || {{ echo "test 2 fails"; exit 4; }};
      [ "$n" != 3 ] || while [ ! -f {gate} ]; do sleep 0.1; done
  - key: docs
    needs: [build]
    if: "branch == 'release'"
    command: 'echo docs'
  - key: package
    needs: [test, lint]
    command: 'echo package'
  - key: report
    needs: [test]
    if: always()
    command: 'echo report'
  - key: publish
    needs: [report]
    command: 'echo publish'
"""
COLUMNS = {
    "build": "1",
    "lint": "1",
    "test[n=1]": "2",
    "test[n=2]": "2",
    "test[n=3]": "2",
    "docs": "2",
    "package": "3",
    "report": "3",
    "publish": "4",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStackProcess]:
    origin = make_origin(tmp_path / "origin")
    process = LocalStackProcess(tmp_path, config="")
    folder = origin.path / ".scheduler"
    folder.mkdir()
    (folder / "pipeline.yml").write_text(PIPELINE.format(gate=process.effects / "go"))
    git(origin.path, "add", ".scheduler/pipeline.yml")
    git(origin.path, "commit", "--quiet", "-m", "pipeline")
    process.config = (
        f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 120\nconcurrency = 4\n{UNSANDBOXED}'
        f'[repos."{REPO}"]\nclone_url = "{origin.path}"\n'
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def tab(stack: LocalStackProcess) -> Iterator[playwright_api.Page]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            context = browser.new_context(
                base_url=stack.url, viewport={"width": 1280, "height": 800}
            )
            context.set_default_timeout(PATIENCE_MS)
            yield context.new_page()
        finally:
            browser.close()


def boxes(tab: playwright_api.Page) -> dict[str, tuple[str, str]]:
    """Each step box drawn: key -> (column, status)."""
    found = tab.eval_on_selector_all(
        "svg.pipeline a.step",
        "els => els.map(a => [a.dataset.step, a.dataset.column, a.dataset.status])",
    )
    return {key: (column, status) for key, column, status in found}


def wait_boxes(tab: playwright_api.Page, wanted: dict[str, str]) -> None:
    """Until the page shows each step in ``wanted`` with that status (by polls, no reload)."""
    deadline = time.monotonic() + PATIENCE_MS / 1000
    while {key: boxes(tab).get(key, ("", ""))[1] for key in wanted} != wanted:
        assert time.monotonic() < deadline, sorted(boxes(tab).items())
        tab.wait_for_timeout(100)


def shoot(tab: playwright_api.Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


def test_a_runs_page_draws_its_steps_by_depth_and_follows_them_live(
    tab: playwright_api.Page, stack: LocalStackProcess, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    sha = git(Path(tmp_path / "origin"), "rev-parse", "HEAD")
    with httpx.Client(timeout=30) as client:
        answer = stack.deliver(client, REPO, "pipeline-view-1", sha, branch="main")
    assert answer.status_code == 202, answer.text
    run = str(answer.json()["job_id"])

    tab.goto(f"/ui/jobs/{run}")  # as soon as it exists: the pipeline may not be read yet
    tab.evaluate("window.__notReloaded = true")
    # The steps appear and move with the page's polls: test[n=3] is held running.
    wait_boxes(
        tab,
        {
            "build": "passed",
            "lint": "passed",
            "test[n=1]": "passed",
            "test[n=2]": "failed",
            "test[n=3]": "active",
            "docs": "skipped",
            "package": "blocked",
            "report": "blocked",
            "publish": "blocked",
        },
    )
    assert {key: column for key, (column, _) in boxes(tab).items()} == COLUMNS
    assert list(boxes(tab)) == list(COLUMNS)  # pipeline order
    held = tab.locator('a.step[data-step="test[n=3]"] .step-state')
    playwright_api.expect(held).to_contain_text("running ")  # aged by the script
    assert "active" in tab.locator(".job-fields .status").first.inner_text()
    # Opened before the run read its file, the page had a log section: hidden once it is a run.
    playwright_api.expect(tab.locator(".log-card")).to_be_hidden()
    # A box sits right of each of its needs' boxes, and arrows join them.
    x = {
        key: float(tab.locator(f'a.step[data-step="{key}"] rect.box').get_attribute("x") or 0)
        for key in COLUMNS
    }
    assert x["build"] == x["lint"] < x["test[n=1]"] == x["docs"] < x["report"] < x["publish"]
    assert tab.locator("svg.pipeline path.edge").count() == 12
    shoot(tab, shots, "run-active")

    (stack.effects / "go").write_text("")  # test[n=3] ends; package is skipped, report runs
    wait_boxes(
        tab,
        {
            "test[n=3]": "passed",
            "package": "skipped",
            "report": "passed",
            "publish": "skipped",
        },
    )
    playwright_api.expect(tab.locator(".job-fields .status").first).to_have_text("failed")
    assert "steps_failed" in tab.locator(".job-head").inner_text()
    # Its one button re-runs its failed steps (never the run as a whole).
    assert tab.locator(".job-head button").all_inner_texts() == ["Retry"]
    assert tab.evaluate("window.__notReloaded === true")
    shoot(tab, shots, "run-ended")
    tab.set_viewport_size({"width": 390, "height": 844})
    shoot(tab, shots, "run-ended-phone")
    tab.set_viewport_size({"width": 1280, "height": 800})

    # A box leads to its step's page: its log, and the way back to the run.
    tab.click('a.step[data-step="test[n=2]"]')
    tab.wait_for_url(f"**/ui/jobs/{run}.s4")
    playwright_api.expect(tab.locator("#log")).to_contain_text("test 2 fails")
    fields = tab.locator(".job-fields").inner_text()
    assert "Pipeline run" in fields and "test[n=2]" in fields
    shoot(tab, shots, "step")
    tab.click(f'.job-fields a[href="/ui/jobs/{run}"]')
    tab.wait_for_selector("svg.pipeline")

    tab.goto("/")
    row = tab.locator("table.repos tbody tr").first
    counts = {
        name: row.locator(f'td[data-label="{name}"]').inner_text()
        for name in ("blocked", "skipped", "passed", "failed")
    }
    # The run failed; its steps: 5 passed, 1 failed, 3 skipped.
    assert counts == {"blocked": "0", "skipped": "3", "passed": "5", "failed": "2"}
    shoot(tab, shots, "repositories")
    tab.set_viewport_size({"width": 390, "height": 844})
    # A phone lists a repository's statuses that have jobs, not eight rows of mostly zeros.
    playwright_api.expect(row.locator('td[data-label="blocked"]')).to_be_hidden()
    playwright_api.expect(row.locator('td[data-label="skipped"]')).to_be_visible()
    shoot(tab, shots, "repositories-phone")
