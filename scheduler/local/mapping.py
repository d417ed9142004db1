"""The event source mapping's settings: what the SAM template says about the stream function's
DynamoDB event (Lambda's names and defaults), plus the local runner's polling knobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.db.template import load_template
from scheduler.errors import ConfigurationError
from scheduler.settings import Settings

__all__ = ["STREAM_FUNCTION", "MappingConfig", "PollingConfig"]

STREAM_FUNCTION = "StreamFunction"
"""The logical id of the stream function in the template."""


@dataclass(frozen=True)
class MappingConfig:
    """The event source mapping settings (Lambda's names and defaults)."""

    batch_size: int = 100
    batching_window_seconds: float = 0.0
    bisect_on_error: bool = False
    max_retry_attempts: int = -1  # -1: retried until the record expires
    max_record_age_seconds: int = -1  # -1: no limit
    report_batch_item_failures: bool = False
    starting_position: str = "TRIM_HORIZON"
    # Concurrent batches per shard; records of one item (its key) always share a lane.
    parallelization_factor: int = 1
    # FilterCriteria on eventName (the only kind of filter this runner implements): records
    # of other kinds are dropped before batching, as Lambda drops them. None: no filter.
    event_names: frozenset[str] | None = None

    @classmethod
    def from_template(
        cls, template: Mapping[str, Any], function: str = STREAM_FUNCTION
    ) -> MappingConfig:
        """The settings of the DynamoDB event of ``function`` in the SAM template."""
        resource = template.get("Resources", {}).get(function)
        if not resource:
            raise ConfigurationError(f"template has no function {function}")
        events = resource.get("Properties", {}).get("Events", {})
        found = [e["Properties"] for e in events.values() if e.get("Type") == "DynamoDB"]
        if len(found) != 1:
            raise ConfigurationError(f"{function} needs exactly one DynamoDB event source")
        props = found[0]
        factor = int(props.get("ParallelizationFactor", 1))
        if not 1 <= factor <= 10:
            raise ConfigurationError(f"ParallelizationFactor must be 1 to 10, not {factor}")
        return cls(
            batch_size=int(props.get("BatchSize", 100)),
            batching_window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
            max_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
            max_record_age_seconds=int(props.get("MaximumRecordAgeInSeconds", -1)),
            report_batch_item_failures="ReportBatchItemFailures"
            in props.get("FunctionResponseTypes", []),
            starting_position=str(props.get("StartingPosition", "TRIM_HORIZON")),
            parallelization_factor=factor,
            event_names=_event_names(props.get("FilterCriteria")),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> MappingConfig:
        return cls.from_template(load_template(settings.template_path))


def _event_names(criteria: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The event names a mapping's FilterCriteria let through (patterns are OR-ed)."""
    if not criteria:
        return None
    names: set[str] = set()
    for entry in criteria.get("Filters", []):
        pattern = json.loads(entry["Pattern"])
        if set(pattern) != {"eventName"} or not isinstance(pattern["eventName"], list):
            raise ConfigurationError(
                f"the local stream runner only filters on eventName, not {entry['Pattern']}"
            )
        names.update(str(name) for name in pattern["eventName"])
    return frozenset(names)


@dataclass(frozen=True)
class PollingConfig:
    """Local-only knobs: how fast to poll, back off and re-discover."""

    idle_min_seconds: float = 0.01
    idle_max_seconds: float = 0.1
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 10.0
    outage_max_seconds: float = 2.0  # the longest pause while waiting for the database
    discovery_seconds: float = 10.0
    # Under a heavy flow, a read that found the shard caught up waits this long (read_pacing).
    busy_pause_seconds: float = 0.04
    busy_records_per_second: float = 60.0
