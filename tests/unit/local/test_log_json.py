"""Issue 27: ``scheduler up --log-format json``: one JSON object per log line."""

from __future__ import annotations

import io
import json
import logging

from typer.testing import CliRunner

from scheduler.cli.commands import app
from scheduler.local.log_json import JsonFormatter
from scheduler.local.logs import configure_logging


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("scheduler.x", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_record_is_one_json_object_with_its_fields() -> None:
    line = JsonFormatter().format(
        record(
            "job %s moved",
            "j-1",
            job_id="j-1",
            repo="o/r\nforged=1",
            attempt=2,
            message_id=object.__new__(type("Odd", (), {"__str__": lambda self: "odd"})),
        )
    )
    assert "\n" not in line  # a hostile value cannot forge a second line
    found = json.loads(line)
    assert found["message"] == "job j-1 moved" and found["level"] == "WARNING"
    assert found["logger"] == "scheduler.x" and found["time"].endswith("+00:00")
    assert found["job_id"] == "j-1" and found["attempt"] == 2
    assert found["repo"] == "o/r\nforged=1" and found["message_id"] == "odd"


def test_a_traceback_stays_in_the_same_object() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        made = record("failed", level=1)
        made.exc_info = sys.exc_info()
    found = json.loads(JsonFormatter().format(made))
    assert "ValueError: boom" in found["exc_info"]
    assert found["extra.level"] == 1  # an extra field never overwrites the record's own


def test_configure_logging_json_writes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging(stream=stream, log_format="json")
        logging.getLogger("scheduler.test").info("hello", extra={"repo": "o/r"})
        configure_logging(stream=stream)  # back to logfmt: one handler, replaced
        logging.getLogger("scheduler.test").info("again", extra={"repo": "o/r"})
    finally:
        for handler in list(root.handlers):
            if type(handler).__name__ == "_StructuredHandler":
                root.removeHandler(handler)
        root.setLevel(level)
    first, second = stream.getvalue().splitlines()
    assert json.loads(first)["repo"] == "o/r"
    assert second.endswith("again repo=o/r")


def test_up_refuses_an_unknown_log_format() -> None:
    result = CliRunner().invoke(app, ["up", "--log-format", "xml"])
    assert result.exit_code == 2
    assert "xml" in result.output
