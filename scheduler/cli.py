"""The operator CLI: thin commands that call one use case each and map typed errors to exits.

Exit codes: 0 success, 1 refused (not found, conflict, illegal transition), 2 usage or
configuration error. An error is one readable line on stderr, never a traceback. Every
command takes ``--json`` (one JSON document on stdout); human output is aligned tables,
with colour on the status only when stdout is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer._click import exceptions as click_errors  # typer vendors click (pinned)

from scheduler import aws, models, render
from scheduler.errors import ConfigurationError, DomainError, InvalidArgument
from scheduler.operations import BulkItem, Operations
from scheduler.queries import Queries
from scheduler.settings import Settings
from scheduler.store import JobStore
from scheduler.tables import ensure_tables

app = typer.Typer(
    name="scheduler",
    help="Idempotent CI/CD job scheduler on DynamoDB Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tables_app = typer.Typer(help="Manage the scheduler's DynamoDB tables.", no_args_is_help=True)
app.add_typer(tables_app, name="tables")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RepoArgument = Annotated[str, typer.Argument(metavar="OWNER/REPO", show_default=False)]
JobArgument = Annotated[str, typer.Argument(metavar="JOB_ID", show_default=False)]

# Not a terminal: no colour, and wide enough that a table is never wrapped for a pipe.
_PIPE_WIDTH = 400


def fail(message: str, exit_code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


def emit(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, sort_keys=True) if as_json else human)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stdout_console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_PIPE_WIDTH, no_color=True)
    return console


def show(data: dict[str, Any], as_json: bool, human: Callable[[], RenderableType]) -> None:
    if as_json:
        typer.echo(json.dumps(data, sort_keys=True))
        return
    console = stdout_console()
    if console.is_terminal:
        console.print(human())
        return
    with console.capture() as captured:  # into a pipe: no padding at the ends of lines
        console.print(human())
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


@dataclass(frozen=True)
class Context:
    settings: Settings
    queries: Queries

    def operations(self) -> Operations:
        return Operations(JobStore.from_settings(self.settings), self.queries)


def context() -> Context:
    """Settings from the environment, models bound to them: every command starts here."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise ConfigurationError(f"bad environment: {exc}") from exc
    models.bind(settings)
    return Context(settings=settings, queries=Queries.from_settings(settings))


@tables_app.command("create")
def tables_create(as_json: JsonOption = False) -> None:
    """Create the tables of infra/template.yaml on the configured endpoint (if missing)."""
    settings = Settings.from_env()
    created = ensure_tables(aws.client("dynamodb", settings), settings)
    emit(
        {"created": created},
        as_json,
        "created: " + ", ".join(created) if created else "all tables exist",
    )


@app.command("status")
def status(  # noqa: PLR0917 - typer maps options to parameters
    repo: RepoArgument,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, active, passed, failed, cancelled.")
    ] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Only this branch.")] = None,
    event: Annotated[
        str | None, typer.Option("--event", help="Only this event (push, pull_request).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Jobs per page (1-100).")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue from a previous page.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Jobs of a repository, newest first, one page at a time."""
    ctx = context()
    page = ctx.queries.jobs(
        repo, status=status, branch=branch, event=event, limit=limit, cursor=cursor
    )
    now = now_ms()
    show(page.to_dict(), as_json, lambda: render.jobs_view(page, now))


@app.command("show")
def show_job(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """One job with its transition history."""
    job = context().queries.job(job_id)
    now = now_ms()
    show(job.to_dict(), as_json, lambda: render.job_view(job, now))


@app.command("stats")
def stats(repo: RepoArgument, as_json: JsonOption = False) -> None:
    """Counts by status, slots in use and the limit of a repository."""
    result = context().queries.stats(repo)
    now = now_ms()
    show(result.to_dict(), as_json, lambda: render.stats_view(result, now))


ProgressCallbacks = tuple[Callable[[int], None], Callable[[BulkItem], None]]


@contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressCallbacks]:
    """Callbacks for a bulk action: a rich progress bar on a terminal (stderr), else nothing."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield (lambda total: None), (lambda item: None)
        return
    with Progress(
        TextColumn("retrying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("retry", total=None)

        def listed(total: int) -> None:
            bar.update(task, total=total)

        def advanced(item: BulkItem) -> None:
            bar.advance(task)

        yield listed, advanced


@app.command("retry")
def retry(
    job_id: Annotated[str | None, typer.Argument(metavar="JOB_ID", show_default=False)] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", metavar="OWNER/REPO", help="With --all-failed.")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Retry every failed job of --repo.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="With --all-failed: failed since (30m, 2h, 1d, ISO time)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Retry a failed job (a new attempt), or all failed jobs of a repository.

    With --all-failed: prints retried, skipped and refused counts; safe to run twice.

    Exits 1 if any job was refused (it changed while being retried).
    """
    if job_id is not None and (repo or all_failed or since):
        raise InvalidArgument("give either JOB_ID or --repo OWNER/REPO --all-failed, not both")
    if job_id is None:
        if not (repo and all_failed):
            raise InvalidArgument("give JOB_ID, or --repo OWNER/REPO with --all-failed")
        retry_all(repo, since, as_json)
        return
    changed = context().operations().retry(job_id)
    emit(changed.to_dict(), as_json, render.changed_line(changed, "retried"))


def retry_all(repo: str, since: str | None, as_json: bool) -> None:
    since_ms = render.parse_since(since, now_ms()) if since else None
    operations = context().operations()
    with progress_bar(not as_json) as (listed, advanced):
        summary = operations.retry_all_failed(
            repo, since=since_ms, on_listed=listed, on_item=advanced
        )
    show(summary.to_dict(), as_json, lambda: render.summary_view(summary))
    if summary.refused:
        raise typer.Exit(1)


@app.command("cancel")
def cancel(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Cancel a pending or active job (an active job's slot is freed at once)."""
    changed = context().operations().cancel(job_id)
    emit(changed.to_dict(), as_json, render.changed_line(changed, "cancelled"))


def _usage_line(exc: click_errors.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "scheduler"
    return f"{exc.format_message()} (see '{where} --help')"


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message(), err=True)
        code = 2
    except click_errors.UsageError as exc:
        typer.echo(f"error: {_usage_line(exc)}", err=True)
        code = 2
    except click_errors.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except DomainError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except (PynamoDBException, BotoCoreError, ClientError) as exc:
        # The typed layers wrap these; this is the last line of defence against a traceback.
        typer.echo(f"error: DynamoDB request failed: {exc}", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)
