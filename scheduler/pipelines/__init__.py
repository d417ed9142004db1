"""Pipelines from the repository: the file parsed and checked, its steps, fan-in (pure, no I/O)."""

from scheduler.pipelines.conditions import Condition, parse_condition
from scheduler.pipelines.decide import (
    Decision,
    RunFacts,
    Verdict,
    decide,
    downstream,
    verdict,
)
from scheduler.pipelines.matrix import expand, variant_count, variant_key
from scheduler.pipelines.model import (
    DEFAULT_STEP_KEY,
    ENDED_STATUSES,
    PIPELINE_FILE,
    EndStatus,
    Pipeline,
    Step,
    StepStatus,
    one_step_pipeline,
)
from scheduler.pipelines.record import (
    StepRecord,
    pipeline_from_records,
    step_from_record,
    step_record,
)
from scheduler.pipelines.source import (
    CommitRef,
    PipelineFileReader,
    config_pipeline,
    file_too_large,
    pipeline_for,
)
from scheduler.pipelines.spec import MAX_FILE_BYTES, MAX_STEPS, parse_pipeline

__all__ = [
    "DEFAULT_STEP_KEY",
    "ENDED_STATUSES",
    "MAX_FILE_BYTES",
    "MAX_STEPS",
    "PIPELINE_FILE",
    "CommitRef",
    "Condition",
    "Decision",
    "EndStatus",
    "Pipeline",
    "PipelineFileReader",
    "RunFacts",
    "Step",
    "StepRecord",
    "StepStatus",
    "Verdict",
    "config_pipeline",
    "decide",
    "downstream",
    "expand",
    "file_too_large",
    "one_step_pipeline",
    "parse_condition",
    "parse_pipeline",
    "pipeline_for",
    "pipeline_from_records",
    "step_from_record",
    "step_record",
    "variant_count",
    "variant_key",
    "verdict",
]
