"""Formatting for the CLI's human output (pure: values in, strings and rich renderables out).

Times come in as epoch milliseconds and ``now`` is always passed in, so output is
deterministic in tests. Colour is a style on the status only; whether it is shown is the
console's decision (only on a terminal, and never with ``NO_COLOR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from scheduler.db.queries import JobDetail, JobPage, JobSummary, RepoStats, StepProgress
from scheduler.errors import InvalidArgument
from scheduler.runs.doctor import Diagnosis
from scheduler.runs.operations import BulkOutcome, Changed, RetrySummary
from scheduler.runs.pipeline_runs import Rerun
from state_machines import JobStatus

STATUS_STYLES: dict[str, str] = {
    JobStatus.WAITING.value: "blue",
    JobStatus.BLOCKED.value: "dim",
    JobStatus.PENDING.value: "yellow",
    JobStatus.ACTIVE.value: "cyan",
    JobStatus.PASSED.value: "green",
    JobStatus.FAILED.value: "bold red",
    JobStatus.CANCELLED.value: "magenta",
    JobStatus.SKIPPED.value: "dim",
}
EMPTY = "-"

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))
_SINCE_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_SINCE_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def duration(ms: int | None) -> str:
    """``850ms``, ``12s``, ``3m 05s``, ``2h 10m``, ``3d 4h``: two units at most."""
    if ms is None:
        return EMPTY
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s" if ms < 10_000 else f"{ms // 1000}s"
    parts = []
    for index, (unit, size) in enumerate(_UNITS):
        if ms >= size:
            major = ms // size
            minor_unit, minor_size = _UNITS[index + 1]
            minor = (ms % size) // minor_size
            parts = [f"{major}{unit}", f"{minor:02d}{minor_unit}"]
            break
    return " ".join(parts)


def relative(at: int | None, now: int) -> str:
    """``just now``, ``3m ago``, ``in 5m`` (one unit, rounded down)."""
    if at is None:
        return EMPTY
    delta = now - at
    if abs(delta) < 1000:
        return "just now"
    amount = abs(delta)
    for unit, size in _UNITS:
        if amount >= size:
            text = f"{amount // size}{unit}"
            break
    return f"{text} ago" if delta > 0 else f"in {text}"


def timestamp(at: int | None) -> str:
    if at is None:
        return EMPTY
    return datetime.fromtimestamp(at / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_age(text: str, option: str) -> int:
    """An age option (``30s``, ``5m``, ``1h``, ``1d``, ``1w``) in milliseconds."""
    match = _SINCE_RELATIVE.match(text.strip())
    if not match:
        raise InvalidArgument(f"{option} must be an age like 30s, 5m, 1h, got {text!r}")
    return int(match.group(1)) * _SINCE_UNITS_MS[match.group(2)]


def parse_since(text: str, now: int) -> int:
    """``--since``: a relative age (``30m``, ``2h``, ``1d``, ``1w``) or an ISO 8601 time.

    A time without a zone is UTC. Returns epoch milliseconds.
    """
    value = text.strip()
    match = _SINCE_RELATIVE.match(value)
    if match:
        return now - int(match.group(1)) * _SINCE_UNITS_MS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"--since must be an age like 30m, 2h, 1d or an ISO 8601 time, got {text!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def status_text(status: str | None) -> Text:
    if status is None:
        return Text(EMPTY)
    return Text(status, style=STATUS_STYLES.get(status, ""))


def job_duration(job: JobSummary, now: int) -> str:
    """How long the current attempt ran (or has been running, or waiting)."""
    if job.activated_at is not None:
        end = job.finished_at if job.finished_at is not None else now
        return duration(end - job.activated_at)
    if job.status == JobStatus.PENDING.value:
        return f"queued {duration(now - (job.updated_at or job.received_at))}"
    return EMPTY


def short_sha(sha: str) -> str:
    return sha[:7]


def _what(job: JobSummary) -> str:
    if job.pr_number is not None:
        return f"#{job.pr_number}"
    return job.branch or job.ref or EMPTY


def progress_text(progress: StepProgress | None) -> str:
    """``3/5 steps``, ``5/5 steps, 1 failed``: how many of a run's steps ended."""
    if progress is None:
        return EMPTY
    failed = f", {progress.failed} failed" if progress.failed else ""
    return f"{progress.ended}/{progress.total} steps{failed}"


def _pipeline(job: JobSummary, progress: Mapping[str, StepProgress]) -> str:
    if job.step_count is not None:
        return progress_text(progress.get(job.job_id))
    return f"step {job.step_key}" if job.step_key is not None else ""


def jobs_table(
    page: JobPage, now: int, progress: Mapping[str, StepProgress] | None = None
) -> Table:
    """The page's jobs; with a PIPELINE column when it holds pipeline runs or steps (a run's
    progress, a step's key)."""
    progress = progress or {}
    pipelines = any(j.step_count is not None or j.step_key is not None for j in page.jobs)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("JOB", "STATUS", "EVENT", "BRANCH/PR", "SHA", "TRY", "RECEIVED", "DURATION"):
        table.add_column(name, no_wrap=True)
    if pipelines:
        table.add_column("PIPELINE", no_wrap=True)
    table.add_column("REASON")
    for job in page.jobs:
        table.add_row(
            job.job_id,
            status_text(job.status),
            job.event,
            _what(job),
            short_sha(job.sha),
            str(job.attempt),
            relative(job.received_at, now),
            job_duration(job, now),
            *([_pipeline(job, progress)] if pipelines else []),
            job.reason or "",
        )
    return table


def jobs_view(
    page: JobPage, now: int, progress: Mapping[str, StepProgress] | None = None
) -> RenderableType:
    if not page.jobs:
        note = f"no jobs for {page.repo}" + (" on this page" if page.next_cursor else "")
        parts: list[RenderableType] = [Text(note)]
    else:
        parts = [jobs_table(page, now, progress)]
    if page.next_cursor:
        parts.append(Text(f"more: --cursor {page.next_cursor}"))
    return Group(*parts)


def _fields(rows: list[tuple[str, str | Text]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    return table


def steps_table(steps: Sequence[JobDetail], now: int) -> Table:
    """A pipeline run's steps in pipeline order: id, key, status, attempt, duration, reason."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("STEP", "KEY", "STATUS", "TRY", "DURATION"):
        table.add_column(name, no_wrap=True)
    table.add_column("REASON")
    for step in steps:
        table.add_row(
            step.job_id,
            step.step_key or EMPTY,
            status_text(step.status),
            str(step.attempt),
            job_duration(step, now),
            step.reason or "",
        )
    return table


def job_view(
    job: JobDetail,
    now: int,
    log_tail: Sequence[str] = (),
    steps: Sequence[JobDetail] | None = None,
) -> RenderableType:
    """The job's fields, the last lines of its log (a failed run's), a pipeline run's steps
    and its history."""
    received = f"{relative(job.received_at, now)} ({timestamp(job.received_at)})"
    rows: list[tuple[str, str | Text]] = [
        ("job", job.job_id),
        ("repository", job.repo),
        ("status", status_text(job.status)),
        ("attempt", str(job.attempt)),
        ("event", job.event + (f" #{job.pr_number}" if job.pr_number is not None else "")),
        *([("fork", "yes: a pull request from a fork (never gets secrets)")] if job.fork else []),
        ("ref", job.ref or EMPTY),
        ("commit", job.sha),
        ("sender", job.sender or EMPTY),
        ("received", received),
        ("duration", job_duration(job, now)),
    ]
    if job.deadline_at is not None and job.status == JobStatus.ACTIVE.value:
        rows.append(("deadline", relative(job.deadline_at, now)))
    if job.reason or job.exit_code is not None:
        exit_code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        rows.append(("reason", f"{job.reason or EMPTY}{exit_code}"))
    if job.detail:
        rows.append(("detail", job.detail))
    if job.run_of is not None:
        rows.append(("pipeline run", job.run_of))
        rows.append(("step", job.step_key or EMPTY))
    if job.concurrency_group is not None:
        rows.append(("concurrency group", f"{job.concurrency_group} (one of its jobs at a time)"))
    if steps is not None and job.step_count is not None:
        progress = StepProgress.count(job.step_count, (step.status for step in steps))
        rows.append(("steps", progress_text(progress)))
    if job.run_id:
        rows.append(("run", job.run_id))
    if job.log_location:
        rows.append(("log", job.log_location))
    history = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title_justify="left")
    for name in ("TRY", "WHEN", "FROM", "TO", "BY", "REASON"):
        history.add_column(name, no_wrap=True)
    previous: int | None = None
    for item in job.history:
        after = f" (+{duration(item.at - previous)})" if previous is not None else ""
        history.add_row(
            str(item.attempt),
            relative(item.at, now) + after,
            item.source or EMPTY,
            status_text(item.dest),
            item.actor,
            item.reason or "",
        )
        previous = item.at
    parts: list[RenderableType] = [_fields(rows), Text("")]
    if log_tail:
        parts += [Text("last lines of the log", style="bold"), *map(Text, log_tail), Text("")]
    if steps:
        parts += [Text("steps", style="bold"), steps_table(steps, now), Text("")]
    return Group(*parts, Text("history", style="bold"), history)


def stats_view(stats: RepoStats, now: int) -> RenderableType:
    counts = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for status in stats.counts:
        counts.add_column(status_text(status), justify="right")
    counts.add_column("total", justify="right")
    counts.add_row(*(str(n) for n in stats.counts.values()), str(stats.total))
    limit = str(stats.slot_limit) if stats.slot_limit is not None else "not set yet"
    rows: list[tuple[str, str | Text]] = [
        ("repository", stats.repo),
        ("slots in use", f"{stats.running} of {limit}"),
    ]
    if stats.last_job_id:
        last = Text(f"{stats.last_job_id}, received {relative(stats.last_received_at, now)}")
        if stats.last_status:
            last.append(", ")
            last.append_text(status_text(stats.last_status))
        rows.append(("last job", last))
    return Group(_fields(rows), Text(""), counts)


def changed_line(changed: Changed, verb: str) -> str:
    return (
        f"{verb} job {changed.job_id} ({changed.repo}): "
        f"{changed.previous_status} -> {changed.status}, attempt {changed.attempt}"
    )


def rerun_line(rerun: Rerun) -> str:
    """``re-ran 2 steps of run R (o/r): failed -> active, attempt 2: test, deploy``."""
    count = len(rerun.steps)
    asked = f"step {rerun.job_id} of " if rerun.job_id != rerun.run_id else ""
    return (
        f"re-ran {count} step{'s' if count != 1 else ''} ({asked}run {rerun.run_id},"
        f" {rerun.repo}): run {rerun.previous_status} -> {rerun.status},"
        f" attempt {rerun.attempt}: {', '.join(rerun.steps)}"
    )


def summary_view(summary: RetrySummary) -> RenderableType:
    lines: list[RenderableType] = []
    for item in summary.items:
        if item.outcome is BulkOutcome.RETRIED:
            continue
        lines.append(Text(f"{item.outcome.value}: {item.job_id} {item.reason or ''}".rstrip()))
    lines.append(
        Text(
            f"{summary.repo}: retried {summary.retried}, skipped {summary.skipped}, "
            f"refused {summary.refused}"
        )
    )
    return Group(*lines)


def doctor_view(diagnosis: Diagnosis, now: int) -> RenderableType:
    """What ``scheduler doctor`` found: a verdict line, then the drift and the stranded jobs."""
    checked = f"{diagnosis.repositories} repositories, {diagnosis.jobs} jobs checked"
    parts: list[RenderableType] = []
    if diagnosis.healthy:
        parts.append(Text(f"healthy: {checked}", style="green"))
    else:
        problems = len(diagnosis.drift) + len(diagnosis.stranded)
        parts.append(Text(f"{problems} problems: {checked}", style="bold red"))
    if diagnosis.drift:
        drift = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title_justify="left")
        for name in ("repository", "counter", "recorded", "actual"):
            drift.add_column(name, justify="right" if name in ("recorded", "actual") else "left")
        for item in diagnosis.drift:
            drift.add_row(item.repo, item.counter, str(item.recorded), str(item.actual))
        parts += [Text(""), Text("counters that differ from the jobs", style="bold"), drift]
    if diagnosis.stranded:
        stranded = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for name in ("job", "repository", "status", "problem", "since"):
            stranded.add_column(name)
        for job in diagnosis.stranded:
            stranded.add_row(
                job.job_id,
                job.repo,
                status_text(job.status),
                job.problem.replace("_", " "),
                relative(job.since, now),
            )
        parts += [Text(""), Text("stranded jobs", style="bold"), stranded]
    if diagnosis.busy:
        busy = ", ".join(diagnosis.busy)
        parts += [Text(""), Text(f"not judged (busy while read, run again): {busy}")]
    return Group(*parts)
