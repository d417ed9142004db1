"""Supersede without a server: the ``supersede`` key, lanes and the pure decision."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.config import RepoPolicy, parse_config
from scheduler.db.models import JobModel
from scheduler.db.store import JobState
from scheduler.db.template import load_template
from scheduler.errors import ConfigurationError
from scheduler.settings import DEFAULT_TEMPLATE
from scheduler.stream.decide import Activate, Lane, SupersedeOlder, decide, lane_of
from state_machines import JobStatus

P, F, C = JobStatus.PENDING, JobStatus.FAILED, JobStatus.CANCELLED


def test_supersede_is_off_by_default_and_set_per_repository() -> None:
    assert RepoPolicy().supersede == "off"
    config = parse_config(
        '[defaults]\nsupersede = "queued"\n'
        '[repos."octo-org/api"]\nsupersede = "all"\n'
        '[repos."octo-org/web"]\nconcurrency = 3\n'
    )
    assert config.defaults.supersede == "queued"
    assert config.policy("octo-org/api").supersede == "all"
    assert config.policy("octo-org/web").supersede == "queued"  # inherited from [defaults]
    assert config.policy("someone/else").supersede == "queued"
    assert parse_config('[defaults]\nsupersede = "off"\n').defaults.supersede == "off"


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"always"', "'always'"), ("true", "a boolean"), ('"Queued"', "'Queued'"), ("1", "a number")],
)
def test_a_bad_supersede_value_is_an_error_naming_the_key(value: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(f'[repos."octo-org/api"]\nsupersede = {value}\n', source="ci.toml")
    message = str(caught.value)
    assert "ci.toml: key 'repos.\"octo-org/api\".supersede'" in message
    assert '"off", "queued", "all"' in message and shown in message


def image(**fields: Any) -> JobModel:
    base: dict[str, Any] = {
        "repo": "o/r",
        "event": "push",
        "sha": "a" * 40,
        "status": "pending",
        "timeout_seconds": 60,
        "received_at": 1,
    }
    return JobModel("j", **{**base, **fields})


def test_lanes_are_a_branchs_pushes_or_a_pull_requests_heads_and_never_tags() -> None:
    assert lane_of(image(branch="main")) == Lane("o/r", "push", branch="main")
    pr = image(event="pull_request", branch="feature", pr_number=7)
    assert lane_of(pr) == Lane("o/r", "pull_request", pr_number=7)
    assert lane_of(image(ref="refs/tags/v1")) is None  # a tag push has no branch


def state(status: JobStatus = P) -> JobState:
    return JobState("j", "o/r", status, 0, 1, 600, 1, 0)


def test_only_a_new_job_of_a_lane_supersedes_and_before_its_activation() -> None:
    lane = Lane("o/r", "push", branch="main")
    job = state()
    assert decide(None, P, job, supersede="queued", lane=lane) == [
        SupersedeOlder(job, lane, "queued"),
        Activate(job),
    ]
    assert decide(None, P, job, supersede="off", lane=lane) == [Activate(job)]
    assert decide(None, P, job, supersede="all", lane=None) == [Activate(job)]  # a tag
    # A retry or a rebuild is not a new push: it supersedes nothing.
    assert decide(F, P, job, supersede="all", lane=lane) == [Activate(job)]
    assert decide(C, P, job, supersede="all", lane=lane) == [Activate(job)]


def test_the_stream_function_may_query_the_indexes_supersede_reads() -> None:
    """On AWS a missing permission is an AccessDenied the dispatcher takes for an outage: the
    record would be retried for ever."""
    template = load_template(DEFAULT_TEMPLATE)
    statements = [
        statement
        for policy in template["Resources"]["StreamFunctionRole"]["Properties"]["Policies"]
        if "PolicyDocument" in policy  # not the conditional (Fn::If) GitHub token policy
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    queried = {
        str(resource["Fn::Sub"]).rsplit("/", 1)[1]
        for statement in statements
        if statement["Action"] == "dynamodb:Query"
        for resource in statement["Resource"]
    }
    assert {"queued", "active_by_deadline", "by_repo"} <= queried
