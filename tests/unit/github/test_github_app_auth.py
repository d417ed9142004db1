"""A GitHub App's JWT and installation tokens, against the GitHub API stand-in (loopback).

The stand-in verifies each JWT with the App's public key and each installation token it issued,
and checks the Accept and API version headers of every request: ``problems`` stays empty.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import jwt
import pytest
from credential_trap import credential_trap
from github_api_stand_in import GitHubStandIn

from scheduler.errors import ConfigurationError
from scheduler.github.api import GitHubApi, GitHubApiError
from scheduler.github.app_auth import JWT_SECONDS, REFRESH_MARGIN_SECONDS, AppAuth
from scheduler.github.rate_limits import SECONDARY_WAIT_SECONDS, RateLimited, wait_asked
from scheduler.local.checkout import CheckoutFailed, SourceCheckout
from scheduler.settings import Settings

REPO = "octo-org/api"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def github() -> GitHubStandIn:
    with GitHubStandIn() as stand_in:
        stand_in.install(REPO, 77)
        yield stand_in
        assert stand_in.problems == []


def app(github: GitHubStandIn, clock: Clock | None = None) -> AppAuth:
    if clock is not None:
        github.clock = clock  # one clock for both sides
    return AppAuth(
        str(github.app_id),
        github.private_key_pem,
        GitHubApi(github.url),
        clock=clock or time.time,
    )


def test_the_jwt_is_rs256_names_the_app_and_lives_under_ten_minutes(github: GitHubStandIn) -> None:
    clock = Clock()
    auth = app(github, clock)
    token = auth.app_jwt()
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "RS256"
    assert claims["iss"] == str(github.app_id)
    assert claims["iat"] == int(clock.now) - 60  # a minute back, against drift
    assert claims["exp"] == int(clock.now) + JWT_SECONDS
    assert claims["exp"] - claims["iat"] <= 600
    assert auth.app_jwt() == token  # reused while it is good
    clock.now += JWT_SECONDS - 30
    assert auth.app_jwt() != token  # renewed a minute before it expires


def test_an_installation_token_is_bought_with_the_jwt_and_cached(github: GitHubStandIn) -> None:
    clock = Clock()
    auth = app(github, clock)
    token = auth.token_for(REPO)
    assert token in github.tokens
    assert auth.token_for(REPO) == token
    assert auth.token_for(REPO.upper()) == token  # GitHub's names are case-insensitive
    lookups = github.requests("GET", f"/repos/{REPO}/installation")
    bought = github.requests("POST", "/app/installations/77/access_tokens")
    assert len(lookups) == 1 and len(bought) == 1
    assert bought[0].headers["authorization"].startswith("Bearer ")
    assert lookups[0].headers["authorization"].startswith("Bearer ")
    for seen in github.seen:
        assert seen.headers["accept"] == "application/vnd.github+json"
        assert seen.headers["x-github-api-version"] == "2022-11-28"
    # Renewed only when less than the margin is left (the stand-in's tokens live an hour).
    clock.now += 3600 - REFRESH_MARGIN_SECONDS - 5
    assert auth.token_for(REPO) == token
    clock.now += 10
    renewed = auth.token_for(REPO)
    assert renewed != token and auth.tokens_bought == 2


def test_concurrent_callers_buy_one_token(github: GitHubStandIn) -> None:
    auth = app(github)
    auth.remember(REPO, 77)  # a delivery named it: no lookup
    tokens: list[str] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        tokens.append(auth.token_for(REPO))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1 and len(tokens) == 8
    assert len(github.requests("POST", "/app/")) == 1
    assert github.requests("GET") == []


def test_a_repository_without_the_app_is_a_typed_refusal(github: GitHubStandIn) -> None:
    with pytest.raises(GitHubApiError, match="HTTP 404"):
        app(github).token_for("someone/else")


def test_a_bad_key_or_app_id_is_a_configuration_error_without_the_key(
    github: GitHubStandIn,
) -> None:
    with pytest.raises(ConfigurationError, match="not a PEM RSA private key") as caught:
        AppAuth("1", "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n", GitHubApi(github.url))
    assert "c2VjcmV0" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="numeric id"):
        AppAuth("my-app", github.private_key_pem, GitHubApi(github.url))


def test_settings_read_the_key_from_its_file_never_from_a_value(tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n")
    settings = Settings.from_env(
        {"SCHEDULER_GITHUB_APP_ID": "12", "SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE": str(key)}
    )
    assert settings.github_app_id == "12"
    assert settings.github_app_private_key is not None
    assert "abc" in settings.github_app_private_key
    assert "abc" not in repr(settings)
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match=f"{missing}: No such file"):
        Settings.from_env({"SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE": str(missing)})


# -- rate limits -------------------------------------------------------------------------------


def test_wait_asked_reads_each_way_github_asks_to_wait() -> None:
    now = 1_000_000.0
    assert wait_asked(403, {"retry-after": "30"}, "", now=now) == 30
    assert wait_asked(429, {"retry-after": "5"}, "", now=now) == 5
    primary = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 120)}
    assert wait_asked(403, primary, "API rate limit exceeded", now=now) == 121
    assert wait_asked(200, primary, "", now=now) == 121  # the last request of the window
    secondary = "You have exceeded a secondary rate limit."
    assert wait_asked(403, {}, secondary, now=now) == SECONDARY_WAIT_SECONDS
    assert wait_asked(429, {}, "", now=now) == SECONDARY_WAIT_SECONDS
    # Not a limit: a plain refusal, or a window with requests left.
    assert wait_asked(403, {}, "Resource not accessible by integration", now=now) is None
    assert wait_asked(404, primary, "Not Found", now=now) is None
    left = {"x-ratelimit-remaining": "10", "x-ratelimit-reset": str(int(now) + 120)}
    assert wait_asked(200, left, "", now=now) is None
    assert wait_asked(403, {"retry-after": "999999"}, "", now=now) == 3600  # bounded


def test_a_rate_limited_answer_raises_with_the_wait(github: GitHubStandIn) -> None:
    auth = app(github)
    github.limit_next(1, 403, {"retry-after": "7"})
    with pytest.raises(RateLimited) as caught:
        auth.token_for(REPO)
    assert caught.value.wait_seconds == 7
    assert auth.token_for(REPO)  # served once the limit is over


# -- git's credential --------------------------------------------------------------------------


def test_git_is_given_the_installation_token_for_the_github_host_only(
    github: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real git fetch from a server that asks for credentials: named as the GitHub host it
    gets the installation token (as the credential helper's password); on any other host it
    gets nothing."""
    auth = app(github)
    token = auth.token_for(REPO)
    with credential_trap(tmp_path / "trap") as trap:
        monkeypatch.setenv("HOME", str(trap.home))
        on_github = SourceCheckout(tmp_path / "a", github_host=trap.host, token_for=auth.token_for)
        with pytest.raises(CheckoutFailed):
            on_github.prepare(REPO, trap.url("x.git"), "1" * 40, tmp_path / "w1")
        assert token in trap.tokens()
        elsewhere = SourceCheckout(
            tmp_path / "b", github_host="github.com", token_for=auth.token_for
        )
        asked = len(trap.tokens())
        with pytest.raises(CheckoutFailed):
            elsewhere.prepare(REPO, trap.url("y.git"), "2" * 40, tmp_path / "w2")
        assert len(trap.tokens()) == asked
    # A repository the App is not installed on: the fetch fails as the infrastructure's.
    with pytest.raises(CheckoutFailed, match="no GitHub App token for someone/else"):
        on_github.prepare("someone/else", "https://github.com/someone/else", "1" * 40, tmp_path)


def test_without_app_mode_no_process_imports_pyjwt_or_cryptography() -> None:
    """They cost a Lambda cold start ~70 ms: imported only once an App key is loaded."""
    import subprocess
    import sys

    probe = (
        "import sys, scheduler.wiring, scheduler.aws.handlers;"
        " print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"
