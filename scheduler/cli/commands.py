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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException
from rich import box
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer._click import exceptions as click_errors  # typer vendors click (pinned)

from scheduler.cli import logs as cli_logs
from scheduler.cli import render
from scheduler.cli.config_check import config_app
from scheduler.cli.github_app import github_app
from scheduler.cli.target import Target, resolve, webhook_target
from scheduler.db import clients, models
from scheduler.db.dead_letters import DeadLetter, DeadLetterStore
from scheduler.db.dead_letters import Handler as StreamHandler
from scheduler.db.queries import JobDetail, Queries
from scheduler.db.store import JobStore
from scheduler.db.tables import ensure_tables
from scheduler.errors import ConfigurationError, DomainError, InvalidArgument, StoreUnavailable
from scheduler.runs.doctor import Doctor
from scheduler.runs.operations import BulkItem, Operations
from scheduler.runs.pipeline_runs import Rerun
from scheduler.settings import Settings
from scheduler.stream.dead_letters import DeadLetterQueue, Replayed, dead_letter_job_ids

app = typer.Typer(
    name="scheduler",
    help="Idempotent CI/CD job scheduler on DynamoDB Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tables_app = typer.Typer(help="Manage the scheduler's DynamoDB tables.", no_args_is_help=True)
app.add_typer(tables_app, name="tables")
app.add_typer(config_app, name="config")
app.add_typer(github_app, name="github")
dynamodb_local_app = typer.Typer(
    help="The DynamoDB Local the local stack runs (installed on first use).",
    no_args_is_help=True,
)
app.add_typer(dynamodb_local_app, name="dynamodb-local")

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


@dataclass
class Invocation:
    """This process's global options, and the DynamoDB chosen (named in error lines)."""

    verbose: bool = False
    target: Target | None = None


INVOCATION = Invocation()


def print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        typer.echo(f"scheduler {version('dynamo-scheduler')}")
        raise typer.Exit(0)


@app.callback()
def global_options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Say on stderr which DynamoDB and URL are used, and why."
        ),
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version, exit."
        ),
    ] = False,
) -> None:
    """Commands find the local stack started from this folder (.scheduler/stack.json, or
    SCHEDULER_DATA_DIR); SCHEDULER_DYNAMODB_ENDPOINT wins over it; with neither, AWS."""
    INVOCATION.verbose = verbose
    INVOCATION.target = None


def note(message: str) -> None:
    """A --verbose line on stderr."""
    if INVOCATION.verbose:
        typer.echo(f"scheduler: {message}", err=True)


@dataclass(frozen=True)
class Context:
    settings: Settings
    queries: Queries
    target: Target

    def operations(self) -> Operations:
        return Operations(JobStore.from_settings(self.settings), self.queries)


def target() -> Target:
    """The DynamoDB to use: SCHEDULER_DYNAMODB_ENDPOINT, the local stack, or AWS."""
    chosen = INVOCATION.target = resolve(Settings.from_env())  # bad values: exit 2
    if chosen.warning:
        typer.echo(f"scheduler: {chosen.warning}", err=True)
    note(f"using {chosen.where}")
    return chosen


def context() -> Context:
    """Settings from the environment and the stack file, models bound to them: every command
    starts here."""
    chosen = target()
    models.bind(chosen.settings)
    return Context(chosen.settings, Queries.from_settings(chosen.settings), chosen)


@tables_app.command("create")
def tables_create(as_json: JsonOption = False) -> None:
    """Create the tables of infra/template.yaml on the configured endpoint (if missing)."""
    settings = target().settings
    created = ensure_tables(clients.client("dynamodb", settings), settings)
    emit(
        {"created": created},
        as_json,
        "created: " + ", ".join(created) if created else "all tables exist",
    )


@dynamodb_local_app.command("install")
def dynamodb_local_install(as_json: JsonOption = False) -> None:
    """Download the pinned DynamoDB Local (checked against its lock's sha512) where
    ``scheduler up`` looks for it: SCHEDULER_DYNAMODB_LOCAL_DIR, the checkout's
    .dynamodb-local/, else the user's cache. Does nothing when it is there."""
    from scheduler.local.dynamodb_local_install import ensure_installed

    where = Settings.from_env().dynamodb_local_dir
    installed = ensure_installed(where, quiet=as_json)
    state = "installed" if installed else "already installed"
    emit({"dir": str(where), "installed": installed}, as_json, f"DynamoDB Local {state} in {where}")


@app.command("status")
def status(  # noqa: PLR0917 - typer maps options to parameters
    repo: RepoArgument,
    status: Annotated[
        str | None,
        typer.Option("--status", help="waiting, pending, active, passed, failed, cancelled."),
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
    progress = ctx.queries.progress(page.jobs)  # a pipeline run's: its steps ended
    now = now_ms()
    data = page.to_dict()
    for job in data["jobs"]:
        if job["job_id"] in progress:
            job["progress"] = progress[job["job_id"]].to_dict()
    show(data, as_json, lambda: render.jobs_view(page, now, progress))


@app.command("show")
def show_job(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """One job with its transition history (and the last lines of its log if it failed); a
    pipeline run with its steps (key, status, attempt, duration)."""
    ctx = context()
    job = ctx.queries.job(job_id)
    steps = ctx.queries.steps(job) if job.step_count is not None else None
    # A pipeline run ran no command of its own: its steps' logs are theirs.
    tail = run_log_tail(ctx, job) if job.status == "failed" and steps is None else []
    now = now_ms()
    data = {**job.to_dict(), **({"log_tail": tail} if tail else {})}
    if steps is not None:
        data["steps"] = [step_dict(step, now) for step in steps]
    shown = [cli_logs.for_terminal(line) for line in tail]  # a run's output: never obeyed
    show(data, as_json, lambda: render.job_view(job, now, log_tail=shown, steps=steps))


def step_dict(step: JobDetail, now: int) -> dict[str, Any]:
    """A pipeline run's step as ``show --json`` lists it."""
    start, end = step.activated_at, step.finished_at
    duration = (end if end is not None else now) - start if start is not None else None
    return {
        "job_id": step.job_id,
        "step_key": step.step_key,
        "status": step.status,
        "attempt": step.attempt,
        "activated_at": start,
        "finished_at": end,
        "duration_ms": duration,
        "reason": step.reason,
    }


def run_log_tail(ctx: Context, job: JobDetail) -> list[str]:
    """The last lines of the job's log; none when they cannot be read (``show`` still works)."""
    try:
        return cli_logs.run_logs(ctx.settings, ctx.queries).tail(job)
    except (DomainError, BotoCoreError, ClientError, OSError) as exc:
        note(f"no log tail: {exc}")
        return []


AttemptOption = Annotated[
    str | None,
    typer.Option("--attempt", metavar="N", help="Which attempt (default: the current one)."),
]


@app.command("logs")
def logs(
    job_id: JobArgument,
    attempt: AttemptOption = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Stream the output while the run goes, until the job is terminal (or the"
            " --attempt is over). Exits 0 if it passed, 1 if it failed or was cancelled.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """A run's output (secrets the configuration names masked as ***).

    Locally it is read from the stack's log files, on AWS from the CodeBuild build's
    CloudWatch Logs stream (the current attempt's). Exits 1 for an unknown job or attempt.

    With --follow --json: one JSON object per output line as it comes ("event": "line"), one
    when an automatic retry's attempt starts ("attempt") and one at the end ("end", with the
    status and exit code).
    """
    ctx = context()
    use_case = cli_logs.run_logs(ctx.settings, ctx.queries)
    if not follow:
        job, text = use_case.read(job_id, attempt)
        number = use_case.target(job, attempt).attempt
        data = {"job_id": job.job_id, "attempt": number, "status": job.status, "log": text}
        shown = json.dumps(data, sort_keys=True) if as_json else cli_logs.for_terminal(text)
        typer.echo(shown, nl=as_json)
        return

    def json_line(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()  # each object as it comes, into a pipe too

    def write(text: str) -> None:
        typer.echo(cli_logs.for_terminal(text), nl=False)
        sys.stdout.flush()

    first = use_case.target(ctx.queries.job(job_id), attempt).attempt
    lines = cli_logs.JsonLines(job_id, first, json_line)
    job = use_case.follow(job_id, attempt, lines.write if as_json else write)
    number = use_case.target(job, attempt).attempt
    code = cli_logs.exit_code_of(job, number if attempt else None)
    if as_json:
        lines.end(job.status, code)
    raise typer.Exit(code)


@app.command("stats")
def stats(repo: RepoArgument, as_json: JsonOption = False) -> None:
    """Counts by status, slots in use and the limit of a repository."""
    result = context().queries.stats(repo)
    now = now_ms()
    show(result.to_dict(), as_json, lambda: render.stats_view(result, now))


@app.command("doctor")
def doctor(
    stranded_after: Annotated[
        str,
        typer.Option(
            "--stranded-after",
            metavar="AGE",
            help="How long a job may wait before it counts as stranded (30s, 5m, 1h).",
        ),
    ] = "5m",
    as_json: JsonOption = False,
) -> None:
    """Compare every repository's counters with its jobs; list drift and stranded jobs
    (queued with a free slot, finished but holding a slot, active past the deadline).

    Exits 0 when healthy, 1 when it found problems.
    """
    threshold = render.parse_age(stranded_after, "--stranded-after")
    diagnosis = Doctor(context().queries, clock=now_ms, stranded_after_ms=threshold).diagnose()
    now = now_ms()
    show(diagnosis.to_dict(), as_json, lambda: render.doctor_view(diagnosis, now))
    if not diagnosis.healthy:
        raise typer.Exit(1)


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
def retry(  # noqa: PLR0917 - typer maps options to parameters
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
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="JOB_ID is a pipeline run: re-run its failed (and cancelled) steps and"
            " everything downstream of them.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Retry a failed job (a new attempt), or all failed jobs of a repository.

    A pipeline's step (RUN_ID.sN) is re-run with every step downstream of it; a pipeline
    run's failed steps with --failed. Steps that passed otherwise keep their result.

    With --all-failed: prints retried, skipped and refused counts; safe to run twice.

    Exits 1 if any job was refused (it changed while being retried, or it is not failed).
    """
    if job_id is not None and (repo or all_failed or since):
        raise InvalidArgument("give either JOB_ID or --repo OWNER/REPO --all-failed, not both")
    if failed and job_id is None:
        raise InvalidArgument("--failed needs a pipeline run's RUN_ID")
    if job_id is None:
        if not (repo and all_failed):
            raise InvalidArgument("give JOB_ID, or --repo OWNER/REPO with --all-failed")
        retry_all(repo, since, as_json)
        return
    operations = context().operations()
    done = operations.retry_failed_steps(job_id) if failed else operations.retry(job_id)
    if isinstance(done, Rerun):
        emit(done.to_dict(), as_json, render.rerun_line(done))
        return
    emit(done.to_dict(), as_json, render.changed_line(done, "retried"))


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


@app.command("approve")
def approve(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Approve a fork's pull request waiting for approval: it is queued and runs (without
    secrets). Exits 1 if the job is not waiting (already approved, cancelled, not found)."""
    changed = context().operations().approve(job_id)
    emit(changed.to_dict(), as_json, render.changed_line(changed, "approved"))


@app.command("cancel")
def cancel(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Cancel a waiting, pending or active job (an active job's slot is freed at once)."""
    changed = context().operations().cancel(job_id)
    emit(changed.to_dict(), as_json, render.changed_line(changed, "cancelled"))


# -- the dead-letter queue --------------------------------------------------------------------
# Batches the stream runner gave up on (its on-failure destination, a DynamoDB table). Listing
# and replay are a use case (scheduler.stream.dead_letters, which says why a replay is safe to
# repeat); the commands parse, call it and render.

dlq_app = typer.Typer(
    help="Records that failed stream processing: list them, replay them through the handler.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

DeadLetterIdArgument = Annotated[
    str | None, typer.Argument(metavar="ID", show_default=False, help="From 'dlq list'.")
]
# One Query of the letters' partition (DeadLetterStore.list reads a single page of at most 1 MB).
DLQ_MAX_LETTERS = 1000
_ERROR_CHARS = 80


def dead_letter_queue(settings: Settings) -> DeadLetterQueue:
    """The dead letters the settings name, stamping replays with the wall clock: the local
    stack's table, or on AWS the stream's on-failure queue (``SCHEDULER_STREAM_DLQ_URL``)."""
    if settings.dynamodb_endpoint is None and settings.stream_dlq_url:
        from scheduler.aws.clients import aws_client
        from scheduler.aws.stream_dead_letters import QueuedDeadLetters
        from scheduler.db.clients import client as dynamodb_client

        letters = QueuedDeadLetters(
            aws_client("sqs", settings),
            dynamodb_client("dynamodbstreams", settings),
            settings.stream_dlq_url,
        )
        return DeadLetterQueue(letters, now_ms=now_ms)
    return DeadLetterQueue(DeadLetterStore.from_settings(settings), now_ms=now_ms)


def dead_letter_dict(letter: DeadLetter) -> dict[str, Any]:
    return {
        "dead_letter_id": letter.dead_letter_id,
        "failed_at": letter.failed_at,
        "condition": letter.condition,
        "error": letter.error,
        "attempts": letter.attempts,
        "records": len(letter.records),
        "job_ids": dead_letter_job_ids(letter),
        "shard_id": letter.shard_id,
        "start_sequence_number": letter.start_sequence_number,
        "end_sequence_number": letter.end_sequence_number,
        "replayed": letter.replayed_at is not None,
        "replayed_at": letter.replayed_at,
    }


def dead_letters_view(letters: list[DeadLetter], now: int) -> RenderableType:
    if not letters:
        return Text("no dead letters")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("ID", "FAILED", "CONDITION", "RECORDS", "JOBS", "REPLAYED"):
        table.add_column(name, no_wrap=True)
    table.add_column("ERROR")
    for letter in letters:
        jobs = dead_letter_job_ids(letter)
        error = letter.error.splitlines()[0] if letter.error else ""
        table.add_row(
            letter.dead_letter_id,
            render.relative(letter.failed_at, now),
            letter.condition,
            str(len(letter.records)),
            ", ".join(jobs[:3]) + (f" +{len(jobs) - 3}" if len(jobs) > 3 else ""),
            render.relative(letter.replayed_at, now) if letter.replayed_at else "no",
            error[:_ERROR_CHARS] + ("..." if len(error) > _ERROR_CHARS else ""),
        )
    return table


def replayed_line(result: Replayed) -> str:
    letter = result.letter
    if not result.ok:
        return f"{letter.dead_letter_id}: still failing at record {result.failed_records[0]}"
    again = " (again)" if letter.replayed_at is not None else ""
    notes = "".join(f"\n  {note}" for note in result.notes)
    return f"replayed {letter.dead_letter_id}{again}: {len(letter.records)} records{notes}"


def stream_handler(settings: Settings) -> StreamHandler:
    """The stream function as the engine runs it, with the configuration's slot limits and
    retry policies (``scheduler.wiring``), so a replay never activates past a limit.

    Runs are not started from a CLI process: a replayed activation record is only logged (the
    job is active already; the reaper times out a run that never reports). Nor stopped: a
    replayed cancel leaves the stop and the slot to the engine's reconciliation.
    """
    from scheduler.wiring import build_core

    dispatcher = build_core(settings, executor=None).dispatcher
    return lambda event, _context: dispatcher.handle_event(event)


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=DLQ_MAX_LETTERS, help="At most this many.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """Failed batches: id, when, condition and error, records and jobs, replayed or not."""
    letters = dead_letter_queue(context().settings).list(limit=limit)
    now = now_ms()
    data = {"dead_letters": [dead_letter_dict(letter) for letter in letters]}
    show(data, as_json, lambda: dead_letters_view(letters, now))


@dlq_app.command("replay")
def dlq_replay(
    dead_letter_id: DeadLetterIdArgument = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every letter not replayed yet.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(help="Repository configuration (TOML) of the engine; else SCHEDULER_CONFIG."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replay a failed batch (or --all) through the stream handler; safe to repeat.

    A letter whose records still fail stays in the queue, not marked replayed (exit 1).
    """
    if dead_letter_id is not None and replay_all:
        raise InvalidArgument("give either ID or --all, not both")
    if dead_letter_id is None and not replay_all:
        raise InvalidArgument("give ID (see 'scheduler dlq list') or --all")
    settings = context().settings
    if config is not None:
        settings = replace(settings, config_path=config)
    queue = dead_letter_queue(settings)
    if dead_letter_id is not None:
        letter = queue.find(dead_letter_id)
        if letter is None:
            fail(f"dead letter {dead_letter_id} not found (see 'scheduler dlq list')", 1)
        result = queue.replay(letter, stream_handler(settings))
        if not result.ok:
            why = f": {result.errors[0]}" if result.errors else ""
            fail(f"dead letter {replayed_line(result)}{why}; it stays in the queue", 1)
        emit(result.to_dict(), as_json, replayed_line(result))
        return
    letters = queue.list(limit=DLQ_MAX_LETTERS)
    summary = queue.replay_all(letters, stream_handler(settings))
    lines = [replayed_line(result) for result in summary.results]
    lines.append(
        f"replayed {summary.replayed}, failed {summary.failed}, "
        f"skipped {summary.skipped} (replayed before)"
    )
    emit(summary.to_dict(), as_json, "\n".join(lines))
    if summary.failed:
        raise typer.Exit(1)


@app.command("up")
def up(  # noqa: PLR0917 - typer maps options to parameters
    host: Annotated[
        str | None, typer.Option(help="HTTP address [default: SCHEDULER_HTTP_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port [default: SCHEDULER_HTTP_PORT or 8080]")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where jobs, checkpoints, run logs and the stack file live"
            " [default: SCHEDULER_DATA_DIR or .scheduler]",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Repository configuration (TOML); else SCHEDULER_CONFIG.")
    ] = None,
    dynamodb_port: Annotated[
        int, typer.Option("--dynamodb-port", help="DynamoDB Local's port (0: a free one).")
    ] = 8000,
    max_runs: Annotated[
        int, typer.Option("--max-runs", min=1, max=256, help="Commands run at once, in all.")
    ] = 4,
    log_format: Annotated[
        Literal["logfmt", "json"],
        typer.Option("--log-format", help="Log lines as key=value text or one JSON object each."),
    ] = "logfmt",
    as_json: JsonOption = False,
) -> None:
    """Start the whole local stack in the foreground; Ctrl-C stops it cleanly."""
    from scheduler.local.logs import configure_logging
    from scheduler.local.stack import LocalStack, StackOptions, serve

    configure_logging(log_format=log_format)
    settings = Settings.from_env()
    if config is not None:
        settings = replace(settings, config_path=config)
    data_dir = settings.data_dir if data_dir is None else data_dir

    def announce(stack: LocalStack) -> None:
        info = {
            "url": stack.url,
            "webhook": f"{stack.url}/webhook",
            "dynamodb_endpoint": stack.settings.dynamodb_endpoint,
            "data_dir": str(data_dir.resolve()),
            "stack_file": str(stack.stack_file),
            "config": str(settings.config_path or "<built-in default>"),
        }
        elsewhere = "" if data_dir == settings.data_dir else f"SCHEDULER_DATA_DIR={data_dir} "
        emit(
            info,
            as_json,
            f"scheduler is up: {stack.url} (webhook: POST {stack.url}/webhook)\n"
            f"  DynamoDB Local: {info['dynamodb_endpoint']}  data: {info['data_dir']}\n"
            f"  configuration: {info['config']}\n"
            f"  the CLI run from this folder finds this stack ({info['stack_file']}), e.g.\n"
            f"    GITHUB_WEBHOOK_SECRET=... {elsewhere}scheduler send-test-delivery\n"
            "  Ctrl-C stops everything.",
        )
        sys.stdout.flush()

    options = StackOptions(
        host=host or settings.http_host,
        port=settings.http_port if port is None else port,
        data_dir=data_dir,
        max_parallel_runs=max_runs,
        dynamodb_port=dynamodb_port,
    )
    serve(settings, options, announce)


@app.command("send-test-delivery")
def send_test_delivery(  # noqa: PLR0917 - typer maps options to parameters
    url: Annotated[
        str | None,
        typer.Option(help="Base URL of the scheduler [default: the local stack's, else :8080]."),
    ] = None,
    repo: Annotated[str, typer.Option(metavar="OWNER/REPO")] = "demo/hello",
    branch: Annotated[str, typer.Option()] = "main",
    sha: Annotated[str | None, typer.Option(help="Commit sha (default: random).")] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the job id and exit; do not follow it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the job to finish.")
    ] = 600.0,
    log_lines: Annotated[
        int, typer.Option("--log-lines", min=0, help="Lines of the job's log shown at the end.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Sign a sample `push` delivery with GITHUB_WEBHOOK_SECRET, POST it to the webhook and
    follow its job until it is terminal: exit 0 if it passed, 1 otherwise."""
    import httpx

    from scheduler.cli import sample_delivery

    settings = Settings.from_env()
    secret = settings.webhook_secret
    if not secret:
        raise ConfigurationError("GITHUB_WEBHOOK_SECRET is not set: cannot sign a delivery")
    where = webhook_target(settings, url)
    note(f"using the scheduler at {where.where}")
    with httpx.Client(timeout=10.0) as client:
        body = sample_delivery.sample_push(repo, branch, sha)
        response = sample_delivery.deliver(client, where.url, secret, body)
        answer = sample_delivery.answer_of(response)
        job_id = answer.get("job_id")
        if no_wait or response.status_code >= 400 or not job_id:
            emit(answer, as_json, f"HTTP {response.status_code}: {json.dumps(answer)}")
            refused = response.status_code >= 400
            if refused or not no_wait:  # refused, or no job to follow (a branch not built)
                raise typer.Exit(1)
            return
        if not as_json:
            typer.echo(f"delivered to {where.url}/webhook: job {job_id}")

        def changed(job: dict[str, Any]) -> None:
            if not as_json:
                typer.echo(sample_delivery.status_line(job))

        job = sample_delivery.follow(client, where.url, job_id, timeout=timeout, on_change=changed)
        tail = sample_delivery.log_tail(client, where.url, job_id, job["attempt"], log_lines)
    if as_json:
        emit(job, True, "")
    elif tail:
        cut = f" (last {len(tail)} lines)" if len(tail) == log_lines else ""
        typer.echo(f"log of attempt {job['attempt']}{cut}:")
        typer.echo(cli_logs.for_terminal("\n".join(f"  {line}" for line in tail)))
    if job["status"] != "passed":
        raise typer.Exit(1)


def _usage_line(exc: click_errors.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx else "scheduler"
    return f"{exc.format_message()} (see '{where} --help')"


def _where() -> str:
    """``DynamoDB at URL (local stack from .scheduler/stack.json, pid N): `` once chosen."""
    return f"{INVOCATION.target.where}: " if INVOCATION.target is not None else ""


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
    except StoreUnavailable as exc:
        typer.echo(f"error: {_where()}{exc}", err=True)
        code = exc.exit_code
    except DomainError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except (PynamoDBException, BotoCoreError, ClientError) as exc:
        # The typed layers wrap these; this is the last line of defence against a traceback.
        typer.echo(f"error: {_where()}DynamoDB request failed: {exc}", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)
