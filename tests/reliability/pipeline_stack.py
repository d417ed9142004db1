"""What the pipeline suites share: a pipeline file committed to a git origin, a step command
that records each start, and waiting for a job to end through the stack's HTTP API."""

from __future__ import annotations

from pathlib import Path

import httpx
from git_origin import git
from harness import LocalStackProcess, wait_for

__all__ = ["RECORD", "commit_pipeline", "ended"]

# A step's command records its start: "<job id> <$STEP> <attempt>" in the effects folder.
RECORD = 'echo "$SCHEDULER_JOB_ID $STEP $SCHEDULER_ATTEMPT" >> {effects}/starts.txt'


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
