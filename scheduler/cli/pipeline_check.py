"""``scheduler config check .scheduler/pipeline.yml``: a pipeline file checked before a push.

The file is parsed exactly as a job's commit is (:func:`~scheduler.pipelines.parse_pipeline`),
so what passes here is what the scheduler runs: the first rule it breaks, with its line
(``FILE:12: step 'deploy' needs 'tests', which is not a step``), or one line saying what the
file makes (``FILE: ok: 8 steps: lint, test (6 variants), deploy``).
"""

from __future__ import annotations

from pathlib import Path

from scheduler.errors import PipelineFileError
from scheduler.pipelines import Pipeline, parse_pipeline

__all__ = ["PIPELINE_SUFFIXES", "check_pipeline", "is_pipeline_file", "summary"]

PIPELINE_SUFFIXES = (".yml", ".yaml")


def is_pipeline_file(path: Path) -> bool:
    """Whether ``path`` is checked as a pipeline file (YAML), not as the TOML configuration."""
    return path.suffix.lower() in PIPELINE_SUFFIXES


def check_pipeline(content: bytes, source: str) -> Pipeline | PipelineFileError:
    """The pipeline ``content`` makes, or the error of the first rule it breaks."""
    try:
        return parse_pipeline(content, source=source)
    except PipelineFileError as exc:
        return exc


def summary(pipeline: Pipeline) -> str:
    """The steps after matrix expansion, by name in file order: ``8 steps: lint, test (6
    variants), deploy``."""
    names: dict[str, int] = {}
    for step in sorted(pipeline.steps, key=lambda step: step.line or 0):
        names[step.name] = names.get(step.name, 0) + 1
    parts = [name if count == 1 else f"{name} ({count} variants)" for name, count in names.items()]
    count = len(pipeline.steps)
    return f"{count} step{'s' if count != 1 else ''}: {', '.join(parts)}"
