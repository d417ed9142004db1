"""The repository configuration file: schema, overrides, and one clear error per bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import DEFAULT_CONFIG, RepoPolicy, RetryPolicy, load_config, parse_config
from scheduler.errors import ConfigurationError

DESIGN_EXAMPLE = """
accept = ["octo-org/*", "someone/tool"]

[defaults]
command = ["make", "test"]
branches = ["*"]
timeout_seconds = 1800
concurrency = 2
status_context = "ci/scheduler"

[defaults.retry]
attempts = 1
on = ["timed_out"]

[repos."octo-org/api"]
command = ["./ci.sh"]
concurrency = 4
"""


def test_the_design_example_parses() -> None:
    config = parse_config(DESIGN_EXAMPLE)
    assert config.accepts("octo-org/web") and config.accepts("Someone/Tool")
    assert not config.accepts("intruder/repo")
    api = config.policy("octo-org/api")
    assert api.command == ("./ci.sh",) and api.concurrency == 4
    assert api.timeout_seconds == 1800 and api.retry == RetryPolicy(1, ("timed_out",))
    assert config.policy("Octo-Org/API") == api  # GitHub names are case-insensitive
    assert config.policy("octo-org/web") == config.defaults


def test_overrides_merge_key_by_key_over_the_defaults() -> None:
    config = parse_config(
        """
        [defaults]
        timeout_seconds = 60
        [defaults.retry]
        attempts = 3
        [repos."a/b"]
        branches = ["main", "release/*"]
        tags = ["v*"]
        [repos."a/b".retry]
        on = ["timed_out", "exit_code"]
        """
    )
    policy = config.policy("a/b")
    assert policy.timeout_seconds == 60 and policy.retry == RetryPolicy(
        3, ("timed_out", "exit_code")
    )
    assert policy.builds_branch("release/1.2") and not policy.builds_branch("feature")
    assert policy.builds_tag("v1.0") and not config.defaults.builds_tag("v1.0")


def test_built_in_default_accepts_everything_and_builds_branches_only() -> None:
    assert load_config(None) is DEFAULT_CONFIG
    assert DEFAULT_CONFIG.accepts("any/repo")
    assert DEFAULT_CONFIG.policy("any/repo") == RepoPolicy()
    assert DEFAULT_CONFIG.defaults.builds_branch("main")
    assert not DEFAULT_CONFIG.defaults.builds_tag("v1")


def test_empty_accept_list_accepts_nothing() -> None:
    assert not parse_config("accept = []").accepts("a/b")


def test_a_file_is_read_from_its_path(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.toml"
    path.write_text(DESIGN_EXAMPLE)
    assert load_config(path).policy("octo-org/api").concurrency == 4
    with pytest.raises(ConfigurationError, match="cannot read repository configuration"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("accept = 'octo-org/*'", "accept", "must be an array of strings, not a string"),
        ("accept = ['a/*', 3]", "accept[1]", "non-empty string"),
        ("acept = []", "acept", "unknown key"),
        ("[defaults]\ncommand = 'make test'", "defaults.command", "argv list"),
        ("[defaults]\ncommand = []", "defaults.command", "must not be empty"),
        ("[defaults]\ncommand = ['make', '']", "defaults.command[1]", "non-empty string"),
        ("[defaults]\nbranches = 'main'", "defaults.branches", "array of strings"),
        ("[defaults]\ntimeout_seconds = '60'", "defaults.timeout_seconds", "integer"),
        ("[defaults]\ntimeout_seconds = 0", "defaults.timeout_seconds", "between 1 and"),
        ("[defaults]\nconcurrency = true", "defaults.concurrency", "not a boolean"),
        ("[defaults]\nconcurrency = 1.5", "defaults.concurrency", "not a number"),
        ("[defaults]\nstatus_context = ''", "defaults.status_context", "non-empty string"),
        ("[defaults]\ntimeout = 5", "defaults.timeout", "unknown key"),
        ("[defaults]\ncheckout = 'yes'", "defaults.checkout", "true or false"),
        ("[defaults]\nclone_url = ''", "defaults.clone_url", "non-empty string"),
        ("defaults = 3", "defaults", "must be a table"),
        ("[defaults.retry]\nattempts = 0", "defaults.retry.attempts", "between 1 and 100"),
        ("[defaults.retry]\non = 'timed_out'", "defaults.retry.on", "array of strings"),
        ("[defaults.retry]\ntries = 2", "defaults.retry.tries", "unknown key"),
        ('[repos."not-a-repo"]\nconcurrency = 1', 'repos."not-a-repo"', "OWNER/NAME"),
        ('[repos."a/b"]\nconcurency = 1', 'repos."a/b".concurency', "unknown key"),
        ('[repos."a/b"]\nconcurrency = 0', 'repos."a/b".concurrency', "between 1 and"),
        ('[repos."a/b"]\n[repos."A/B"]', 'repos."A/B"', "listed twice"),
        ("[defaults]\npipeline = 'file'", "defaults.pipeline", '"repo", "config", not \'file\''),
        ('[repos."a/b"]\npipeline = true', 'repos."a/b".pipeline', "not a boolean"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text, source="repos.toml")
    error = str(caught.value)
    assert error.startswith(f"repos.toml: key '{key}': ")
    assert message in error
    assert "\n" not in error


def test_invalid_toml_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"repos.toml: invalid TOML: .*line 2"):
        parse_config("accept = []\nconcurrency = = 2", source="repos.toml")


def test_retry_backoff_doubles_per_automatic_retry() -> None:
    config = parse_config("[defaults.retry]\nattempts = 4\nbackoff_seconds = 5\n")
    retry = config.defaults.retry
    assert [retry.delay_seconds(n) for n in (1, 2, 3, 4)] == [0.0, 5.0, 10.0, 20.0]
    assert RetryPolicy().delay_seconds(3) == 0.0
    with pytest.raises(ConfigurationError, match="backoff_seconds"):
        parse_config("[defaults.retry]\nbackoff_seconds = -1\n")


def test_pipeline_is_the_repositorys_file_unless_a_repository_says_config() -> None:
    config = parse_config(
        """
        [repos."octo-org/api"]
        pipeline = "config"
        [repos."octo-org/web"]
        pipeline = "repo"
        """
    )
    assert DEFAULT_CONFIG.defaults.pipeline == "repo"
    assert config.policy("octo-org/api").pipeline == "config"
    assert config.policy("octo-org/web").pipeline == "repo"
    assert config.policy("octo-org/other").pipeline == "repo"


def test_a_bad_pipeline_mode_names_the_repository_and_the_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_config('[repos."octo-org/api"]\npipeline = "repos"\n', source="repos.toml")
    assert str(caught.value) == (
        'repos.toml: key \'repos."octo-org/api".pipeline\': must be one of "repo",'
        " \"config\", not 'repos', did you mean 'repo'?"
    )
