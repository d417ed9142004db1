"""Structured log lines for ``scheduler up``: extra fields follow the message."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from scheduler.local.logs import StructuredFormatter, configure_logging


def record(msg: str = "job transition", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("scheduler.test", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def message_only(rec: logging.LogRecord) -> str:
    return StructuredFormatter("%(message)s").format(rec)


def test_extra_fields_follow_the_message() -> None:
    line = message_only(record(job_id="j-1", repo="octo/app"))
    assert line == "job transition job_id=j-1 repo=octo/app"


def test_no_extras_leaves_the_message_alone() -> None:
    assert message_only(record("ready %s", 3)) == "ready 3"


def test_default_format_has_time_level_and_logger() -> None:
    line = StructuredFormatter().format(record(job_id="j-1"))
    assert " INFO scheduler.test job transition job_id=j-1" in line


def test_known_fields_come_first_in_a_fixed_order_then_the_rest_sorted() -> None:
    rec = record(
        zeta=1, actor="reaper", alpha=2, transition="start", attempt=3, repo="o/r", job_id="j"
    )
    line = message_only(rec)
    assert line == "job transition job_id=j repo=o/r attempt=3 transition=start actor=reaper " + (
        "alpha=2 zeta=1"
    )


def test_values_with_spaces_equals_or_quotes_are_quoted_and_escaped() -> None:
    rec = record(a="two words", b="k=v", c='say "hi"', d="it's", e="", f="plain")
    line = message_only(rec)
    assert line == ('job transition a="two words" b="k=v" c="say \\"hi\\"" d="it\'s" e="" f=plain')


def test_a_line_break_in_a_value_cannot_forge_another_line() -> None:
    line = message_only(record(repo="o/r\nERROR forged"))
    assert "\n" not in line
    assert line.endswith('repo="o/r\\nERROR forged"')


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __repr__(self) -> str:
        raise RuntimeError("no")


def test_non_string_values_never_fail() -> None:
    rec = record(attempt=2, killed=None, ratio=0.5, ids=["a", "b"], bad=Unprintable())
    line = message_only(rec)
    assert "attempt=2" in line
    assert "killed=None" in line
    assert "ratio=0.5" in line
    assert "ids=\"['a', 'b']\"" in line
    assert "bad=" in line
    assert "<unprintable Unprintable>" in line


def test_exceptions_still_print_their_traceback_after_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger = logging.getLogger("scheduler.test.exc")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(StructuredFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.exception("run failed", extra={"job_id": "j-9"})
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    first, *rest = stream.getvalue().splitlines()
    assert first == "run failed job_id=j-9"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored to its handlers and level afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_logging_installs_one_handler_however_often_called(
    root_logger: logging.Logger,
) -> None:
    before = len(root_logger.handlers)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(logging.DEBUG, stream=second)
    assert len(root_logger.handlers) == before + 1
    assert root_logger.level == logging.DEBUG

    logging.getLogger("scheduler.test.configure").debug("hello", extra={"job_id": "j-2"})
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" DEBUG scheduler.test.configure hello job_id=j-2")
