"""The CLI's pure formatting helpers: durations, relative times, --since."""

from __future__ import annotations

import pytest

from scheduler.cli.render import duration, parse_since, progress_text, relative
from scheduler.db.queries import StepProgress
from scheduler.errors import InvalidArgument

NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (-5, "0ms"),
        (850, "850ms"),
        (1_250, "1.2s"),
        (42_000, "42s"),
        (185_000, "3m 05s"),
        (7_800_000, "2h 10m"),
        (273_600_000, "3d 04h"),
    ],
)
def test_duration(ms: int | None, text: str) -> None:
    assert duration(ms) == text


def test_relative() -> None:
    assert relative(None, NOW) == "-"
    assert relative(NOW - 300, NOW) == "just now"
    assert relative(NOW - 59_000, NOW) == "59s ago"
    assert relative(NOW - 3_700_000, NOW) == "1h ago"
    assert relative(NOW + 300_000, NOW) == "in 5m"


def test_since() -> None:
    assert parse_since("30m", NOW) == NOW - 1_800_000
    assert parse_since("2h", NOW) == NOW - 7_200_000
    assert parse_since("1w", NOW) == NOW - 604_800_000
    assert parse_since("2023-11-14T22:13:20Z", NOW) == NOW
    assert parse_since("2023-11-14T22:13:20", NOW) == NOW  # no zone: UTC
    assert parse_since("2023-11-14T23:13:20+01:00", NOW) == NOW
    for bad in ("soon", "5 parsecs", "-3h", ""):
        with pytest.raises(InvalidArgument, match="--since"):
            parse_since(bad, NOW)


def test_a_runs_progress_counts_ended_steps_and_failures() -> None:
    progress = StepProgress.count(5, ["passed", "failed", "skipped", "active", "blocked"])
    assert progress == StepProgress(total=5, ended=3, failed=1)
    assert progress_text(progress) == "3/5 steps, 1 failed"
    assert progress_text(StepProgress.count(2, ["passed", "pending"])) == "1/2 steps"
    assert progress_text(StepProgress.count(1, ["cancelled"])) == "1/1 steps, 1 failed"
    assert progress_text(None) == "-"
