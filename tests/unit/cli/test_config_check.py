"""The configuration's JSON Schema, its validator and ``scheduler config check FILE``.

Every rule of the schema is tried on a bad file (the key and line named, the message), good
files pass, the command's exit codes and its one line per problem are read from the real entry
point, and the schema is held to the ``jsonschema`` package's verdicts and to the dataclasses
the server builds from a file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from scheduler.cli import main
from scheduler.cli.config_check import Finding, findings
from scheduler.config import (
    FORK_MODES,
    PIPELINE_MODES,
    RETRY_REASONS,
    SANDBOX_MODES,
    SUPERSEDE_MODES,
    RepoPolicy,
    RetryPolicy,
    parse_config,
)
from scheduler.config_lines import key_lines, line_of
from scheduler.config_schema import schema
from scheduler.errors import ConfigurationError
from scheduler.repo_name import canonical_repo

ROOT = Path(__file__).resolve().parents[3]

EVERY_KEY = """
accept = ["octo-org/*", "someone/tool"]

[defaults]
command = ["make", "test"]
branches = ["*"]
tags = ["v*"]
timeout_seconds = 1800
concurrency = 2
status_context = "ci/scheduler"
priority = 0
checkout = true
mask_env = ["NPM_TOKEN"]
supersede = "queued"
fork_pull_requests = "skip"
secrets = ["NPM_TOKEN"]
sandbox = "on"
network = false
sandbox_paths = ["/srv/ci-cache"]
pipeline = "config"

[defaults.retry]
attempts = 3
on = ["timed_out", "exit_code", "error", "runner_lost", "start_failed"]
backoff_seconds = 5

[repos."octo-org/api"]
command = ["./ci.sh"]
concurrency = 4
clone_url = "/srv/git/api.git"
retry = { attempts = 2, on = ["exit_code"] }
"""

GOOD_FILES = {
    "every key": EVERY_KEY,
    "empty": "",
    "design example": """
accept = ["octo-org/*", "someone/tool"]
[defaults]
command = ["make", "test"]
[defaults.retry]
attempts = 1
on = ["timed_out"]
[repos."octo-org/api"]
command = ["./ci.sh"]
concurrency = 4
""",
    "scheduler.local.toml": (ROOT / "scheduler.local.toml").read_text(),
}

# One bad file per rule: (text, key, line, words of the message).
BAD_FILES: list[tuple[str, str, int, str]] = [
    # unknown keys, at every level, with the near miss offered
    ("acept = []", "acept", 1, "unknown key, did you mean 'accept'?"),
    ("\n[defaults]\ntimeout = 5", "defaults.timeout", 3, "unknown key, did you mean"),
    ("[defaults.retry]\n\ntries = 2", "defaults.retry.tries", 3, "unknown key (known: attempts"),
    ('[repos."a/b"]\nconcurency = 1', 'repos."a/b".concurency', 2, "did you mean 'concurrency'?"),
    # retry.on and every enum
    ("[defaults.retry]\non = ['timeout']", "defaults.retry.on[0]", 2, "did you mean 'timed_out'?"),
    ("[defaults.retry]\non = ['cancelled']", "defaults.retry.on[0]", 2, "not 'cancelled'"),
    ("[defaults.retry]\non = [3]", "defaults.retry.on[0]", 2, "not a number"),
    ("[defaults.retry]\non = 'timed_out'", "defaults.retry.on", 2, "array of strings"),
    ("[defaults]\nsupersede = 'always'", "defaults.supersede", 2, 'one of "off", "queued", "all"'),
    ("[defaults]\nfork_pull_requests = 'yes'", "defaults.fork_pull_requests", 2, '"approve"'),
    ("[defaults]\nsandbox = false", "defaults.sandbox", 2, 'one of "on", "off", not a boolean'),
    # types
    ("accept = 'octo-org/*'", "accept", 1, "must be an array of strings, not a string"),
    ("defaults = 3", "defaults", 1, "must be a table, not a number"),
    ("repos = []", "repos", 1, "must be a table, not an array"),
    ("[defaults]\ncommand = 'make test'", "defaults.command", 2, "argv list"),
    ("[defaults]\nconcurrency = '2'", "defaults.concurrency", 2, "integer, not a string"),
    ("[defaults]\nconcurrency = 1.5", "defaults.concurrency", 2, "integer, not a number"),
    ("[defaults]\ncheckout = 'yes'", "defaults.checkout", 2, "true or false, not a string"),
    ("[defaults]\nnetwork = 1", "defaults.network", 2, "true or false, not a number"),
    ("[defaults]\nretry = 1", "defaults.retry", 2, "must be a table"),
    ("[defaults]\nstatus_context = 5", "defaults.status_context", 2, "string, not a number"),
    # ranges, emptiness, patterns
    ("[defaults]\ntimeout_seconds = 0", "defaults.timeout_seconds", 2, "between 1 and 604800"),
    ("[defaults]\nconcurrency = 1001", "defaults.concurrency", 2, "between 1 and 1000, not 1001"),
    ("[defaults]\npriority = -1", "defaults.priority", 2, "between 0 and 9999"),
    ("[defaults.retry]\nattempts = 101", "defaults.retry.attempts", 2, "between 1 and 100"),
    ("[defaults.retry]\nbackoff_seconds = -1", "defaults.retry.backoff_seconds", 2, "0 and 3600"),
    ("[defaults]\ncommand = []", "defaults.command", 2, "must not be empty"),
    ("[defaults]\ncommand = ['make', '']", "defaults.command[1]", 2, "non-empty string"),
    ("[defaults]\nstatus_context = '  '", "defaults.status_context", 2, "non-empty string"),
    ("[defaults]\nclone_url = ''", "defaults.clone_url", 2, "non-empty string"),
    ("[defaults]\nsecrets = ['npm-token']", "defaults.secrets[0]", 2, "environment variable"),
    ('[defaults]\nsecrets = ["A\\n"]', "defaults.secrets[0]", 2, "environment variable"),
    ("[defaults]\nsandbox_paths = ['cache']", "defaults.sandbox_paths[0]", 2, "absolute path"),
    ('[repos."not-a-repo"]\nconcurrency = 1', 'repos."not-a-repo"', 1, "OWNER/NAME"),
    ('[repos."a/.."]', 'repos."a/.."', 1, "OWNER/NAME"),
    ('[repos."a/b\\n"]', 'repos."a/b\\n"', 1, "OWNER/NAME"),
    ('[repos."a/b"]\n[repos."A/B"]', 'repos."A/B"', 2, "listed twice"),
    # where the key is written: inline tables, dotted keys, an item of a long array
    ('[repos."a/b"]\nretry = { attempts = 0 }', 'repos."a/b".retry.attempts', 2, "between 1"),
    ("defaults.retry.on = ['x']", "defaults.retry.on[0]", 1, "must be one of"),
    ('accept = [\n  "a/*",\n  "",\n]', "accept[1]", 3, "non-empty string"),
    ('[defaults]\nstatus_context = """\nx = 1\n"""\nsupersede = 1', "defaults.supersede", 5, ""),
]


def _ids(case: tuple[str, str, int, str]) -> str:
    return case[1] + ":" + case[3][:24]


@pytest.mark.parametrize("text", GOOD_FILES.values(), ids=list(GOOD_FILES))
def test_a_good_file_has_no_findings(text: str) -> None:
    assert findings(text) == []
    assert jsonschema.Draft202012Validator(schema()).is_valid(tomllib.loads(text))


@pytest.mark.parametrize(("text", "key", "line", "words"), BAD_FILES, ids=map(_ids, BAD_FILES))
def test_each_rule_names_the_key_and_its_line(text: str, key: str, line: int, words: str) -> None:
    assert len(found := findings(text)) == 1, found
    assert (found[0].key, found[0].line) == (key, line)
    assert words in found[0].message
    # The server refuses the same file with the same first problem.
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text, source="repos.toml")
    assert str(caught.value) == f"repos.toml: key '{key}': {found[0].message}"


@pytest.mark.parametrize(("text", "key", "line", "words"), BAD_FILES, ids=map(_ids, BAD_FILES))
def test_the_jsonschema_package_agrees(text: str, key: str, line: int, words: str) -> None:
    """Every bad file is invalid for a general validator too, except a name listed twice
    (which only differs in case: no schema can say that)."""
    valid = jsonschema.Draft202012Validator(schema()).is_valid(tomllib.loads(text))
    assert valid == ("listed twice" in words)


def test_the_schema_is_valid_json_schema_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(dict(schema()))


def _policy_schema() -> dict[str, Any]:
    return dict(schema()["$defs"]["policy"]["properties"])


def test_the_schema_describes_what_the_server_builds() -> None:
    """Every key of a repository's policy is in the schema with the dataclass's default, and
    every choice is the code's."""
    policy = _policy_schema()
    assert set(policy) == {f.name for f in fields(RepoPolicy)}
    retry = schema()["$defs"]["retry"]["properties"]
    assert set(retry) == {f.name for f in fields(RetryPolicy)}
    defaults = RepoPolicy()
    for name, rule in policy.items():
        if "default" in rule:
            value = getattr(defaults, name)
            assert rule["default"] == (list(value) if isinstance(value, tuple) else value), name
    assert {name: rule["default"] for name, rule in retry.items()} == {
        "attempts": defaults.retry.attempts,
        "on": list(defaults.retry.on),
        "backoff_seconds": defaults.retry.backoff_seconds,
    }
    assert tuple(policy["supersede"]["enum"]) == SUPERSEDE_MODES
    assert tuple(policy["fork_pull_requests"]["enum"]) == FORK_MODES
    assert tuple(policy["sandbox"]["enum"]) == SANDBOX_MODES
    assert tuple(policy["pipeline"]["enum"]) == PIPELINE_MODES
    assert tuple(retry["on"]["items"]["enum"]) == RETRY_REASONS


@pytest.mark.parametrize(
    "name",
    ["octo-org/api", "a/b.c", "a/...", "a/..", "a/.", "-a/b", "a/b/c", "a/b\n", "a" * 40 + "/b"],
)
def test_the_schemas_repository_names_are_the_codes(name: str) -> None:
    valid = jsonschema.Draft202012Validator(schema()).is_valid({"repos": {name: {}}})
    assert valid == (canonical_repo(name) is not None)


def test_every_problem_of_a_file_is_found_in_order() -> None:
    text = (
        "accept = ['a/*', 3]\n"
        "[defaults]\n"
        "supersede = 'sometimes'\n"
        "[defaults.retry]\n"
        "on = ['timeout', 'exit_code']\n"
        '[repos."a/b"]\n'
        "concurency = 3\n"
    )
    found = findings(text)
    assert [(f.line, f.key) for f in found] == [
        (1, "accept[1]"),
        (3, "defaults.supersede"),
        (5, "defaults.retry.on[0]"),
        (7, 'repos."a/b".concurency'),
    ]
    with pytest.raises(ConfigurationError, match=r"accept\[1\].*\(and 3 more: `scheduler config"):
        parse_config(text)


def test_invalid_toml_is_one_finding_at_its_line() -> None:
    assert findings("accept = []\n\nconcurrency = = 2\n") == [
        Finding(3, None, "Invalid value (at line 3, column 15)")
    ]


def test_line_of_falls_back_to_the_nearest_key_written() -> None:
    lines = key_lines('[repos."a/b"]\nbranches = ["main"]\n')
    assert line_of(("repos", "a/b", "retry", "on", 0), lines) == 1
    assert line_of(("repos", "a/b", "branches", 0), lines) == 2
    assert line_of(("accept",), lines) is None


# -- the command, through the console script's entry point -----------------------------------


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["config", "check", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_check_of_a_good_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "repos.toml"
    path.write_text(EVERY_KEY)
    assert _run(capsys, str(path)) == (0, f"{path}: ok\n", "")
    code, out, _ = _run(capsys, "--json", str(path))
    assert code == 0 and json.loads(out) == {"file": str(path), "ok": True, "problems": []}


def test_check_prints_one_line_per_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "repos.toml"
    path.write_text("[defaults]\nsupersede = 'x'\n\n[defaults.retry]\non = ['timeout']\n")
    code, out, err = _run(capsys, str(path))
    assert code == 2 and err == ""
    assert out.splitlines() == [
        f'{path}:2: key \'defaults.supersede\': must be one of "off", "queued", "all", not \'x\'',
        f'{path}:5: key \'defaults.retry.on[0]\': must be one of "exit_code", "timed_out",'
        ' "error", "runner_lost", "start_failed", not \'timeout\', did you mean \'timed_out\'?',
    ]
    code, out, _ = _run(capsys, "--json", str(path))
    report = json.loads(out)
    assert code == 2 and report["ok"] is False
    assert [(p["line"], p["key"]) for p in report["problems"]] == [
        (2, "defaults.supersede"),
        (5, "defaults.retry.on[0]"),
    ]


def test_check_of_invalid_toml_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "repos.toml"
    path.write_text("[defaults]\nconcurrency = \n")
    code, out, _ = _run(capsys, str(path))
    assert code == 2
    assert out == f"{path}:2: invalid TOML: Invalid value (at line 2, column 15)\n"


def test_check_of_an_unreadable_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, str(tmp_path / "missing.toml"))
    assert code == 2 and out == ""
    assert err.startswith("error: cannot read repository configuration ") and err.count("\n") == 1


def test_check_without_a_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys)
    assert code == 2 and "FILE" in err
