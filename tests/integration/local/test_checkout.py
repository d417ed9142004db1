"""Source checkout against real git repositories in a temporary folder: the exact commit, a
pull request's head, a cached mirror, concurrent jobs of one repository, and the two ways a
checkout fails (no such commit: the job's failure; no remote: the infrastructure's)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from credential_trap import CredentialTrap, credential_trap
from git_origin import Origin, commit, git, make_origin

from scheduler.local.checkout import CheckoutFailed, CommitNotFound, SourceCheckout


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path / "origin")


def test_a_work_tree_is_the_exact_commit(origin: Origin, tmp_path: Path) -> None:
    checkout = SourceCheckout(tmp_path / "runner")
    for sha, text in ((origin.first, "one"), (origin.second, "two")):
        tree = tmp_path / "work" / sha
        checkout.prepare("octo/app", str(origin.path), sha, tree)
        assert git(tree, "rev-parse", "HEAD") == sha
        assert (tree / "a.txt").read_text() == text
        assert git(tree, "status", "--porcelain") == ""  # the commit's tree, nothing else


def test_a_pull_request_head_on_no_branch_is_fetched_by_its_sha(
    origin: Origin, tmp_path: Path
) -> None:
    tree = tmp_path / "work"
    SourceCheckout(tmp_path / "runner").prepare("octo/app", str(origin.path), origin.pull, tree)
    assert git(tree, "rev-parse", "HEAD") == origin.pull
    assert (tree / "b.txt").read_text() == "pr"


def test_the_second_job_uses_the_mirror_and_fetches_only_what_is_new(
    origin: Origin, tmp_path: Path
) -> None:
    checkout = SourceCheckout(tmp_path / "runner")
    checkout.prepare("octo/app", str(origin.path), origin.second, tmp_path / "w1")
    moved = origin.path.rename(tmp_path / "elsewhere")  # the remote is gone...
    checkout.prepare("octo/app", str(origin.path), origin.first, tmp_path / "w2")
    assert (tmp_path / "w2" / "a.txt").read_text() == "one"  # ...its commits are cached
    mirrors = list((tmp_path / "runner" / "mirrors").glob("*.git"))
    assert len(mirrors) == 1
    # A commit the mirror lacks is fetched again from the remote once it is back.
    moved.rename(origin.path)
    newer = commit(origin.path, "a.txt", "three")
    checkout.prepare("Octo/App", str(origin.path), newer, tmp_path / "w3")
    assert (tmp_path / "w3" / "a.txt").read_text() == "three"
    assert list((tmp_path / "runner" / "mirrors").glob("*.git")) == mirrors  # case-insensitive


def test_concurrent_jobs_of_one_repository_share_the_mirror_safely(
    origin: Origin, tmp_path: Path
) -> None:
    # Two runners (two checkouts, as two processes would have) and threads in each.
    runners = [SourceCheckout(tmp_path / "runner"), SourceCheckout(tmp_path / "runner")]
    shas = [origin.first, origin.second, origin.pull] * 3
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(shas))

    def job(n: int, sha: str) -> None:
        try:
            barrier.wait()
            runners[n % 2].prepare("octo/app", str(origin.path), sha, tmp_path / f"w{n}")
        except BaseException as exc:  # collected and re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(n, sha)) for n, sha in enumerate(shas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for n, sha in enumerate(shas):
        assert git(tmp_path / f"w{n}", "rev-parse", "HEAD") == sha
    mirror = next((tmp_path / "runner" / "mirrors").glob("*.git"))
    git(mirror, "fsck", "--no-progress")  # raises if the mirror was corrupted


def test_an_unknown_commit_is_the_jobs_failure(origin: Origin, tmp_path: Path) -> None:
    with pytest.raises(CommitNotFound, match="is not in"):
        SourceCheckout(tmp_path / "runner").prepare(
            "octo/app", str(origin.path), "1" * 40, tmp_path / "work"
        )


def test_a_removed_remote_is_the_infrastructures_failure(origin: Origin, tmp_path: Path) -> None:
    with pytest.raises(CheckoutFailed, match="cannot fetch"):
        SourceCheckout(tmp_path / "runner").prepare(
            "octo/app", str(tmp_path / "no-such-remote"), origin.first, tmp_path / "work"
        )


def test_no_clone_url_says_how_to_configure_one(tmp_path: Path) -> None:
    with pytest.raises(CommitNotFound, match="clone URL not allowed: configure clone_url"):
        SourceCheckout(tmp_path).prepare("octo/app", None, "1" * 40, tmp_path / "work")


def test_what_a_lost_earlier_start_left_is_replaced(origin: Origin, tmp_path: Path) -> None:
    tree = tmp_path / "work"
    tree.mkdir()
    (tree / "stale.txt").write_text("from a run that died")
    SourceCheckout(tmp_path / "runner").prepare("octo/app", str(origin.path), origin.first, tree)
    assert not (tree / "stale.txt").exists()
    assert (tree / "a.txt").read_text() == "one"


def test_a_credential_in_an_operator_url_never_reaches_the_error(tmp_path: Path) -> None:
    url = f"file://user:s3cret@{tmp_path}/missing"
    with pytest.raises(CheckoutFailed) as raised:
        SourceCheckout(tmp_path / "runner").prepare("octo/app", url, "1" * 40, tmp_path / "w")
    assert "s3cret" not in str(raised.value)


def test_the_token_reaches_git_only_through_its_environment(tmp_path: Path) -> None:
    """The operator's token is handed to a credential helper in git's environment: it is in
    no argument of any git process (``/proc/*/cmdline`` is world-readable)."""
    checkout = SourceCheckout(tmp_path, token="tok-123")
    env = checkout._environment()
    assert env["SCHEDULER_GIT_TOKEN"] == "tok-123"
    helper = [env[k.replace("KEY", "VALUE")] for k, v in env.items() if v == "credential.helper"]
    assert helper and "tok-123" not in helper[0] and "$SCHEDULER_GIT_TOKEN" in helper[0]
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "SCHEDULER_GIT_TOKEN" not in SourceCheckout(tmp_path)._environment()


def test_git_gets_the_token_from_the_credential_helper(tmp_path: Path) -> None:
    env = SourceCheckout(tmp_path, token="tok-123")._environment()
    asked = subprocess.run(
        ["git", "credential", "fill"],
        input="protocol=https\nhost=github.com\n\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "username=x-access-token\npassword=tok-123" in asked.stdout


# -- the token goes to the GitHub host only ------------------------------------------------------


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CredentialTrap]:
    with credential_trap(tmp_path / "trap") as made:
        monkeypatch.setenv("HOME", str(made.home))  # git (HOME is passed on) trusts the trap
        yield made


def test_the_token_is_never_sent_to_a_host_that_is_not_github(
    trap: CredentialTrap, tmp_path: Path
) -> None:
    """A clone URL on another host (an operator's, or one planted in a job) that answers 401
    gets no token: the credential helper answers for the GitHub host only."""
    checkout = SourceCheckout(tmp_path / "runner", token="tok-123", github_host="github.com")
    with pytest.raises(CheckoutFailed):
        checkout.prepare("octo/app", trap.url("x.git"), "1" * 40, tmp_path / "w")
    assert trap.seen, "git never reached the server"
    assert trap.tokens() == []


def test_the_token_is_sent_to_the_github_host_over_https(
    trap: CredentialTrap, tmp_path: Path
) -> None:
    # The same server named as the (Enterprise) GitHub host: now it is asked and answered.
    checkout = SourceCheckout(tmp_path / "runner", token="tok-123", github_host=trap.host)
    with pytest.raises(CheckoutFailed):
        checkout.prepare("octo/app", trap.url("x.git"), "1" * 40, tmp_path / "w")
    assert "tok-123" in trap.tokens()


@pytest.mark.parametrize(
    "asked",
    [
        "protocol=https\nhost=attacker.example\n",
        "protocol=http\nhost=github.com\n",
        "protocol=https\nhost=github.com.attacker.example\n",
        "protocol=https\nhost=github.com:8443\n",
        "host=github.com\n",
    ],
)
def test_the_credential_helper_answers_nothing_for_another_host(asked: str, tmp_path: Path) -> None:
    env = SourceCheckout(tmp_path, token="tok-123", github_host="github.com")._environment()
    result = subprocess.run(
        ["git", "credential", "fill"],
        input=asked + "\n",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    # Nothing from the helper: git falls back to GIT_ASKPASS=true, an empty answer.
    assert "tok-123" not in result.stdout + result.stderr
    assert "x-access-token" not in result.stdout


def test_the_credential_helper_matches_the_host_in_any_case(tmp_path: Path) -> None:
    env = SourceCheckout(tmp_path, token="tok-123", github_host="ghe.example")._environment()
    asked = subprocess.run(
        ["git", "credential", "fill"],
        input="protocol=https\nhost=GHE.Example\n\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "password=tok-123" in asked.stdout
