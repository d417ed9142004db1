"""The pipeline file through GitHub's contents API, against the strict stand-in on loopback:
each request's method, path, query, headers and credential (the operator's token, an App's
installation token), the file, no file, a folder, the 64 KiB limit with and without a length,
and what leaves the file unknown for now (5xx, rate limits, timeouts, no connection)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from github_api_stand_in import RAW_MEDIA_TYPE, GitHubStandIn, Seen

from scheduler.config import RepoPolicy
from scheduler.errors import PipelineFileError, PipelineUnavailable
from scheduler.github.api import GitHubApi
from scheduler.github.app_auth import AppAuth
from scheduler.github.contents import ContentsPipelineReader, contents_reader_for
from scheduler.pipelines import MAX_FILE_BYTES, PIPELINE_FILE, CommitRef, pipeline_for
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
REPO = "octo-org/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
COMMIT = CommitRef(REPO, SHA)
TOKEN = "ghp_operator_token_0123456789"
CONTENTS = f"/repos/{REPO}/contents/.scheduler/pipeline.yml"
OWN = (ROOT / PIPELINE_FILE).read_bytes()  # this repository's own CI


@pytest.fixture(scope="module")
def stand_in() -> Iterator[GitHubStandIn]:
    with GitHubStandIn() as running:
        running.personal_tokens.add(TOKEN)
        running.install(REPO, 91)
        yield running


@pytest.fixture
def github(stand_in: GitHubStandIn) -> Iterator[GitHubStandIn]:
    """The module's stand-in with no file, request or answer left from the test before."""
    stand_in.seen.clear()
    stand_in.files.clear()
    stand_in.folders.clear()
    stand_in.tokens.clear()
    stand_in.no_content_length = False
    yield stand_in
    assert stand_in.problems == []


def reader(github: GitHubStandIn, timeout: float = 5.0) -> ContentsPipelineReader:
    return ContentsPipelineReader(
        lambda _repo: f"Bearer {TOKEN}", api_url=github.url, timeout_seconds=timeout
    )


def assert_contents_request(seen: Seen, authorization: str) -> None:
    assert (seen.method, seen.path, seen.query) == ("GET", CONTENTS, {"ref": [SHA]})
    assert seen.headers["accept"] == RAW_MEDIA_TYPE
    assert seen.headers["x-github-api-version"] == "2022-11-28"
    assert seen.headers["user-agent"] == "dynamo-scheduler"
    assert seen.headers["authorization"] == authorization
    assert seen.body is None


def contents_requests(github: GitHubStandIn) -> list[Seen]:
    return [seen for seen in github.seen if "/contents/" in seen.path]


def test_the_file_at_the_commit_with_the_operators_token(github: GitHubStandIn) -> None:
    github.put_file(REPO, SHA, PIPELINE_FILE, OWN)
    github.put_file(REPO, "f" * 40, PIPELINE_FILE, b"steps: [{key: x, command: y}]\n")
    assert reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) == OWN
    pipeline = pipeline_for(RepoPolicy(), COMMIT, reader(github))
    assert pipeline.keys == ("lint", "unit", "integration", "e2e", "reliability")
    assert pipeline.step("reliability").retry is not None
    assert len(github.seen) == 2
    for seen in github.seen:
        assert_contents_request(seen, f"Bearer {TOKEN}")


def test_the_settings_choose_the_operators_token_or_none(github: GitHubStandIn) -> None:
    github.put_file(REPO, SHA, PIPELINE_FILE, OWN)
    settings = replace(Settings(), github_api_url=github.url, github_token=TOKEN)
    assert contents_reader_for(settings).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) == OWN
    assert_contents_request(github.seen[-1], f"Bearer {TOKEN}")
    anonymous = contents_reader_for(replace(settings, github_token=None))
    # The stand-in refuses a repository route without a credential (GitHub would answer a
    # public repository): a refusal is never taken for "no file".
    with pytest.raises(PipelineUnavailable, match="HTTP 401"):
        anonymous.read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert "authorization" not in github.seen[-1].headers
    github.problems.clear()


def test_app_mode_reads_with_the_installation_token(github: GitHubStandIn) -> None:
    github.put_file(REPO, SHA, PIPELINE_FILE, OWN)
    settings = replace(
        Settings(),
        github_api_url=github.url,
        github_token=TOKEN,  # App mode wins: the App asks for contents: read
        github_app_id=str(github.app_id),
        github_app_private_key=github.private_key_pem,
        dashboard_url=f"{github.url}/ui",
    )
    assert contents_reader_for(settings).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) == OWN
    lookup, bought, read = github.seen
    assert (lookup.method, lookup.path) == ("GET", f"/repos/{REPO}/installation")
    assert (bought.method, bought.path) == ("POST", "/app/installations/91/access_tokens")
    assert lookup.headers["authorization"].startswith("Bearer ey")  # the App's JWT
    (token,) = github.tokens
    assert_contents_request(read, f"token {token}")
    # A second read reuses the token: one more request, to the contents only.
    auth = AppAuth(str(github.app_id), github.private_key_pem, GitHubApi(github.url))
    own_reader = ContentsPipelineReader(auth.authorization_for, api_url=github.url)
    own_reader.read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    own_reader.read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert [s.path for s in github.seen[3:]] == [
        f"/repos/{REPO}/installation",
        "/app/installations/91/access_tokens",
        CONTENTS,
        CONTENTS,
    ]


def test_no_file_at_the_commit_is_the_operators_command(github: GitHubStandIn) -> None:
    github.put_file(REPO, "f" * 40, PIPELINE_FILE, OWN)  # another commit has one
    assert reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) is None
    pipeline = pipeline_for(RepoPolicy(command=("./ci.sh",)), COMMIT, reader(github))
    assert pipeline.source == "config" and pipeline.keys == ("build",)
    for seen in github.seen:
        assert_contents_request(seen, f"Bearer {TOKEN}")


def test_a_folder_at_the_path_fails_the_pipeline(github: GitHubStandIn) -> None:
    github.put_folder(REPO, SHA, PIPELINE_FILE)
    with pytest.raises(PipelineFileError, match=r"pipeline\.yml: not a file but a folder"):
        reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert_contents_request(github.seen[-1], f"Bearer {TOKEN}")


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_a_file_over_64_kib_is_refused(github: GitHubStandIn, with_length: bool) -> None:
    github.no_content_length = not with_length
    github.put_file(REPO, SHA, PIPELINE_FILE, b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(PipelineFileError) as caught:
        reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    said = "65537 bytes, more than" if with_length else "larger than"
    assert str(caught.value) == f".scheduler/pipeline.yml: the file is {said} the limit of 65536"
    # Exactly at the limit is read, either way.
    github.put_file(REPO, SHA, PIPELINE_FILE, b"#" * MAX_FILE_BYTES)
    assert reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) == b"#" * MAX_FILE_BYTES
    assert len(github.seen) == 2
    for seen in github.seen:
        assert_contents_request(seen, f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    ("status", "headers", "message", "wait"),
    [
        (502, {}, "Server Error", None),
        (503, {}, "Service Unavailable", None),
        (429, {"retry-after": "30"}, "Too many requests", 30.0),
        (403, {"retry-after": "12"}, "You have exceeded a secondary rate limit.", 12.0),
        (403, {}, "API rate limit exceeded for installation ID 91.", 60.0),
    ],
)
def test_what_github_cannot_answer_now_is_unavailable(
    github: GitHubStandIn, status: int, headers: dict[str, str], message: str, wait: float | None
) -> None:
    github.put_file(REPO, SHA, PIPELINE_FILE, OWN)
    github.limit_next(1, status=status, headers=headers, message=message)
    with pytest.raises(PipelineUnavailable) as caught:
        reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert caught.value.retry_after_seconds == wait
    assert f"GitHub answered HTTP {status}: {message}" in str(caught.value)
    assert TOKEN not in str(caught.value)
    # The next read gets the file: nothing was decided by the failed one.
    assert reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES) == OWN
    for seen in github.seen:
        assert_contents_request(seen, f"Bearer {TOKEN}")


def test_a_spent_primary_window_waits_for_its_reset(github: GitHubStandIn) -> None:
    reset = int(time.time()) + 120
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    github.limit_next(1, status=403, headers=headers, message="API rate limit exceeded")
    with pytest.raises(PipelineUnavailable) as caught:
        reader(github).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert caught.value.retry_after_seconds is not None
    assert 110 < caught.value.retry_after_seconds <= 122
    assert_contents_request(github.seen[-1], f"Bearer {TOKEN}")


def test_a_refused_credential_is_unavailable_not_a_missing_file(github: GitHubStandIn) -> None:
    bad = ContentsPipelineReader(lambda _repo: "Bearer ghp_wrong", api_url=github.url)
    with pytest.raises(PipelineUnavailable, match="HTTP 401") as caught:
        bad.read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert "ghp_wrong" not in str(caught.value)
    assert_contents_request(github.seen[-1], "Bearer ghp_wrong")
    github.problems.clear()  # the stand-in recorded the refusal it was asked to make


def test_a_timeout_is_unavailable(github: GitHubStandIn) -> None:
    github.put_file(REPO, SHA, PIPELINE_FILE, OWN)
    github.delays.append(1.5)
    started = time.monotonic()
    with pytest.raises(PipelineUnavailable, match=r"could not be reached \(ReadTimeout\)"):
        reader(github, timeout=0.3).read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert time.monotonic() - started < 1.4
    assert_contents_request(github.seen[-1], f"Bearer {TOKEN}")


def test_no_connection_is_unavailable() -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = ContentsPipelineReader(
        lambda _repo: f"Bearer {TOKEN}", api_url=f"http://127.0.0.1:{port}"
    )
    with pytest.raises(
        PipelineUnavailable, match=r"could not be reached \(ConnectError\)"
    ) as caught:
        closed.read(COMMIT, PIPELINE_FILE, MAX_FILE_BYTES)
    assert caught.value.retry_after_seconds is None and TOKEN not in str(caught.value)


def test_no_installation_token_is_unavailable(github: GitHubStandIn) -> None:
    auth = AppAuth(str(github.app_id), github.private_key_pem, GitHubApi(github.url))
    other = CommitRef("someone/else", SHA)  # the App is not installed there
    with pytest.raises(PipelineUnavailable, match="no token: GitHub GET /repos/someone/else"):
        ContentsPipelineReader(auth.authorization_for, api_url=github.url).read(
            other, PIPELINE_FILE, MAX_FILE_BYTES
        )
    assert [s.path for s in github.seen] == ["/repos/someone/else/installation"]
