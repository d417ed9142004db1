"""A GitHub App's secrets never show in a run's output: its private key (whole, line by line,
on one line) and the installation tokens the process bought are masked in the summary stored
on the job, in the log read back (the route, ``scheduler logs``, a check run's text), locally
and for a CodeBuild log read by a process that bought no token (masked by its shape).
Against the GitHub API stand-in and DynamoDB Local. Port 18760."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from github_api_stand_in import GitHubStandIn

from scheduler.config import load_config
from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.github.app_mode import github_app
from scheduler.local.executor import LocalExecutor
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import logs_dir_in
from scheduler.runs.logs import RunLogs
from scheduler.runs.masking import MASK
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.wiring import mask_for_settings
from tests.integration.runs.test_runs import Results

REPO = "octo-org/masked-app"
STAND_IN_PORT = 18760
PRINT_ARGS = "import sys; print('\\n'.join(sys.argv[1:])); raise SystemExit(2)"


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(port=STAND_IN_PORT) as stand_in:
        stand_in.install(REPO, 77)
        yield stand_in


@pytest.fixture
def app_settings(settings: Settings, github: GitHubStandIn, tmp_path: Path) -> Settings:
    config = tmp_path / "scheduler.toml"
    config.write_text('[defaults]\ncheckout = false\nsandbox = "off"\n')
    return replace(
        settings,
        webhook_secret="masking-webhook-secret-0123456789abcdef",
        github_app_id=str(github.app_id),
        github_app_private_key=github.private_key_pem,
        github_api_url=github.url,
        dashboard_url="https://mask.example.com",
        config_path=config,
    )


def body_lines(pem: str) -> list[str]:
    return [line for line in pem.strip().splitlines() if not line.startswith("-----")]


def test_a_run_printing_the_apps_key_and_tokens_shows_only_the_mask(
    app_settings: Settings, github: GitHubStandIn, store: JobStore, tmp_path: Path
) -> None:
    app = github_app(app_settings)
    assert app is not None
    token = app.auth.token_for(REPO)  # as a checkout of the repository buys it
    pem = github.private_key_pem
    lines = body_lines(pem)
    printed = [
        f"token={token}",
        pem,  # the key whole
        f"line: {lines[5]}",  # one line of it
        "".join(lines),  # its body on one line (a variable that lost its newlines)
        "an ordinary line",
    ]
    config = load_config(app_settings.config_path)
    mask_for = mask_for_settings(app_settings, config)
    results = Results()
    executor = LocalExecutor(
        tmp_path / "runs", results, base_env={"PATH": "/usr/bin:/bin"}, mask_for=mask_for
    )
    try:
        job = store.create(NewJob("app-masked", REPO, "push", "d" * 40, 30, ref="refs/heads/x"))
        assert isinstance(store.activate(job, slot_limit=10), JobState)
        command = (sys.executable, "-c", PRINT_ARGS, *printed)
        starter = RunStarter(store, executor, lambda _repo: command)
        run_id = starter.start(store.get("app-masked"))
        assert run_id is not None and executor.wait(run_id, 60)
        starter.finished(results.items[0])
    finally:
        executor.close()
    # The summary stored on the job (and sent as the commit status / check run summary).
    detail = store.get("app-masked").detail or ""
    assert detail.startswith("exit code 2: ") and "an ordinary line" in detail
    # The log read back (the log route, scheduler logs, the check run's text).
    logs = RunLogs(
        Queries.from_settings(app_settings), LocalLogReader(logs_dir_in(tmp_path)), mask_for
    )
    raw = next((tmp_path / "runs").rglob("*.log")).read_text()
    assert token in raw and lines[5] in raw  # the file itself is raw: masked when shown
    _job, shown = logs.read("app-masked")
    for text in (shown, detail, "\n".join(logs.tail(store_job(app_settings), 50))):
        assert token not in text
        assert not [line for line in lines if line in text]
    assert shown.splitlines()[0] == f"token={MASK}"
    assert f"line: {MASK}" in shown and "an ordinary line" in shown
    assert shown.splitlines()[1] == MASK  # the key whole, armour and all


def store_job(settings: Settings) -> object:
    return Queries.from_settings(settings).job("app-masked")


def test_a_token_bought_after_the_masker_was_made_is_masked_too(
    app_settings: Settings, github: GitHubStandIn
) -> None:
    """A masker is asked what the App bought each time one is made (the log route's, the
    check run's), so a token bought after the stack started is masked."""
    mask_for = mask_for_settings(app_settings, load_config(app_settings.config_path))
    github.install("octo-org/later", 78)
    app = github_app(app_settings)
    assert app is not None
    later = app.auth.token_for("octo-org/later")
    assert mask_for(REPO)(f"x {later} y") == f"x {MASK} y"


def test_a_codebuild_log_read_where_no_token_was_bought_masks_githubs_token_shapes(
    settings: Settings,
) -> None:
    """On AWS the stream function buys the token and the API function (no App key there)
    reads the build's log back: a token is masked by GitHub's token format."""
    api_function = replace(settings, github_app_id=None, github_app_private_key=None)
    mask = mask_for_settings(api_function, load_config(None))("octo-org/api")
    installation = "ghs_" + "a1B2c3D4e5" * 3 + "f6G7h8"  # GitHub's 36 characters
    personal = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789"
    text = f"fetch with {installation}\npat {personal}\nghs_short stays\n"
    assert mask(text) == f"fetch with {MASK}\npat {MASK}\nghs_short stays\n"
