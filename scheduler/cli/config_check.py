"""``scheduler config check FILE``: every problem of a repository configuration, with its line.

The server refuses a bad file at start-up with its first problem; this lists them all before a
deploy (or in a repository's own CI), one line each, ``FILE:LINE: key 'K': message``, and
exits 2 (a configuration error) if there is any, else prints ``FILE: ok`` and exits 0.

A ``.yml`` / ``.yaml`` FILE is a repository's pipeline file instead
(:mod:`scheduler.cli.pipeline_check`): its first problem with its line and exit 2, as for the
configuration, or ``FILE: ok: N steps: ...`` and exit 0.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from scheduler.cli.pipeline_check import check_pipeline, is_pipeline_file, summary
from scheduler.config import check_document
from scheduler.config_lines import key_lines, line_of
from scheduler.errors import ConfigurationError

__all__ = ["Finding", "config_app", "findings"]

config_app = typer.Typer(help="The repository configuration file.", no_args_is_help=True)

_TOML_LINE = re.compile(r"at line (\d+)")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its line (None: the file as a whole) and key (None: TOML syntax)."""

    line: int | None
    key: str | None
    message: str

    def text(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        what = f"key '{self.key}': " if self.key is not None else "invalid TOML: "
        return f"{where}: {what}{self.message}"


def findings(text: str) -> list[Finding]:
    """Every problem of a configuration file's ``text``, in the order they are found."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        line = int(found.group(1)) if found else max(1, text.count("\n"))
        return [Finding(line, None, str(exc))]
    lines = key_lines(text)
    return [
        Finding(line_of(problem.path, lines), problem.key, problem.message)
        for problem in check_document(document)
    ]


@config_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check FILE against the configuration's schema: one line per problem and exit 2, or
    'FILE: ok' and exit 0. A .yml/.yaml FILE is checked as a pipeline file
    (.scheduler/pipeline.yml): its problem and exit 2, or 'FILE: ok: N steps: ...'."""
    if is_pipeline_file(file):
        _check_pipeline(file, as_json)
        return
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read repository configuration {file}: {exc}") from exc
    found = findings(text)
    if as_json:
        problems = [asdict(finding) for finding in found]
        typer.echo(json.dumps({"file": str(file), "ok": not found, "problems": problems}))
    elif found:
        for finding in found:
            typer.echo(finding.text(str(file)))
    else:
        typer.echo(f"{file}: ok")
    if found:
        raise typer.Exit(2)


def _check_pipeline(file: Path, as_json: bool) -> None:
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read pipeline file {file}: {exc}") from exc
    checked = check_pipeline(content, str(file))
    if as_json:
        report: dict[str, object] = {"file": str(file), "ok": True, "problems": []}
        if isinstance(checked, Exception):
            problem = Finding(checked.line, None, checked.reason)
            report.update(ok=False, problems=[asdict(problem)])
        else:
            report["steps"] = list(checked.keys)
        typer.echo(json.dumps(report))
    elif isinstance(checked, Exception):
        typer.echo(str(checked))
    else:
        typer.echo(f"{file}: ok: {summary(checked)}")
    if isinstance(checked, Exception):
        raise typer.Exit(2)
