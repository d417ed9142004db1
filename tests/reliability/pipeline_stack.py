"""What the pipeline suites share: a pipeline file committed to a git origin, a step command
that records each start (or its start and end times), and waiting for a job to end through the
stack's HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from git_origin import git
from harness import LocalStackProcess, wait_for

__all__ = ["RECORD", "Interval", "commit_pipeline", "ended", "intervals", "timed"]

# A step's command records its start: "<job id> <$STEP> <attempt>" in the effects folder.
RECORD = 'echo "$SCHEDULER_JOB_ID $STEP $SCHEDULER_ATTEMPT" >> {effects}/starts.txt'


# A timed step's mark: "<job id> <$STEP> <attempt> <start|end> <ns since the epoch>".
_MARK = (
    'echo "$SCHEDULER_JOB_ID $STEP $SCHEDULER_ATTEMPT {edge} $(date +%s%N)" >> {effects}/times.txt'
)


def timed(effects: Path, seconds: float) -> str:
    """A step's command that marks its start, sleeps ``seconds`` and marks its end."""
    start = _MARK.format(edge="start", effects=effects)
    end = _MARK.format(edge="end", effects=effects)
    return f"{start}; sleep {seconds}; {end}"


@dataclass(frozen=True)
class Interval:
    """One step attempt's run as its command marked it (``end`` None: it marked no end)."""

    job_id: str
    step: str
    attempt: int
    start: int  # ns since the epoch
    end: int | None


def intervals(effects: Path) -> list[Interval]:
    """The timed steps' attempts, by start time; an attempt that marked its start twice
    appears twice."""
    path = effects / "times.txt"
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    ends = {(job, int(attempt)): int(ns) for job, _, attempt, edge, ns in lines if edge == "end"}
    found = [
        Interval(job, step, int(attempt), int(ns), ends.get((job, int(attempt))))
        for job, step, attempt, edge, ns in lines
        if edge == "start"
    ]
    return sorted(found, key=lambda i: i.start)


def commit_pipeline(origin: Path, text: str) -> str:
    """Commit ``text`` as ``.scheduler/pipeline.yml`` on ``origin``'s branch; its sha."""
    folder = origin / ".scheduler"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.yml").write_text(text)
    git(origin, "add", ".scheduler/pipeline.yml")
    git(origin, "commit", "--quiet", "-m", "pipeline")
    return git(origin, "rev-parse", "HEAD")


def ended(
    stack: LocalStackProcess, client: httpx.Client, job_id: str, timeout: float = 180
) -> dict[str, object]:
    """The job once it is passed, failed or cancelled."""

    def terminal() -> dict[str, object] | None:
        job = stack.job(client, job_id)
        return job if job["status"] in ("passed", "failed", "cancelled") else None

    return dict(wait_for(f"job {job_id} to end", terminal, timeout, 0.3))
