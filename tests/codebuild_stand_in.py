"""A CodeBuild stand-in for the AWS runtime's tests: builds are asynchronous, and a StopBuild
takes effect only after ``stops_needed`` requests (CodeBuild's stop is asynchronous, and a
throttled request changes nothing), so a caller must confirm a stop before it frees a slot.

On demand it throttles ``StartBuild`` (``throttle_starts``) and ``StopBuild``
(``throttle_stops``), loses the answers of ``StartBuild`` (``lose_start_answers``: the build is
made, the caller gets an error, as when a process dies between CodeBuild's answer and
recording the build id), and keeps new builds in CodeBuild's queue (``queue_builds``) until
:meth:`begin` says when each really started. Times are ``datetime``, as boto3 parses them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, ReadTimeoutError

__all__ = ["CodeBuildStandIn"]

PROJECT = "ci-project"


class CodeBuildStandIn:
    """The calls the executor makes: ``start_build``, ``stop_build``, ``batch_get_builds``,
    ``list_builds_for_project``. Each checks the shape of its request as CodeBuild would."""

    def __init__(self, *, stops_needed: int = 1) -> None:
        self.stops_needed = stops_needed
        self.throttle_stops = 0  # the next this many StopBuild calls are throttled
        self.throttle_starts = 0  # the next this many StartBuild calls are throttled
        self.queue_builds = False  # new builds wait in the QUEUED phase until begin()
        # Called once, after CodeBuild made the build and before the caller gets the answer
        # (another starter of the same attempt racing this one).
        self.before_answer: Callable[[], object] | None = None
        self.lose_start_answers = 0  # the next this many StartBuild answers are lost
        self.builds: dict[str, str] = {}  # build id -> buildStatus
        self.started: Counter[str] = Counter()  # idempotency token -> StartBuild calls
        self.stops: Counter[str] = Counter()  # build id -> StopBuild calls (throttled too)
        self.lists = 0  # ListBuildsForProject calls
        self._environment: dict[str, list[dict[str, str]]] = {}
        self._order: list[str] = []  # build ids, oldest first
        self._start_times: dict[str, datetime] = {}
        self._began: dict[str, datetime | None] = {}  # the PROVISIONING phase's start
        self._lock = threading.Lock()

    def start_build(self, **kwargs: Any) -> dict[str, Any]:
        assert isinstance(kwargs["projectName"], str) and kwargs["projectName"]
        token = kwargs["idempotencyToken"]
        build_id = self.build_id(token)
        with self._lock:
            self.started[token] += 1
            if self.throttle_starts > 0:
                self.throttle_starts -= 1
                raise _throttled("StartBuild")
            if build_id not in self.builds:  # idempotent by its token
                now = datetime.fromtimestamp(time.time(), tz=UTC)
                self.builds[build_id] = "IN_PROGRESS"
                self._environment[build_id] = list(kwargs.get("environmentVariablesOverride", []))
                self._order.append(build_id)
                self._start_times[build_id] = now
                self._began[build_id] = None if self.queue_builds else now
            if self.lose_start_answers > 0:
                self.lose_start_answers -= 1
                raise ReadTimeoutError(endpoint_url="https://codebuild.stand-in")
            answer = {"build": {"id": build_id, "buildStatus": self.builds[build_id]}}
            meanwhile, self.before_answer = self.before_answer, None
        if meanwhile is not None:
            meanwhile()
        return answer

    @staticmethod
    def build_id(token: str) -> str:
        """The id of the build of an idempotency token (``job_id#attempt``): ``project:uuid``."""
        return f"{PROJECT}:" + token.replace("#", "-")

    def stop_build(self, *, id: str) -> dict[str, Any]:
        with self._lock:
            self.stops[id] += 1
            if self.throttle_stops > 0:
                self.throttle_stops -= 1
                raise _throttled("StopBuild")
            if self.stops[id] >= self.stops_needed and self.builds.get(id) == "IN_PROGRESS":
                self.builds[id] = "STOPPED"
            return {"build": {"id": id, "buildStatus": self.builds.get(id, "STOPPED")}}

    def batch_get_builds(self, *, ids: list[str]) -> dict[str, Any]:
        assert 0 < len(ids) <= 100, "BatchGetBuilds takes 1 to 100 ids"
        with self._lock:
            found = [self._describe(i) for i in ids if i in self.builds]
            return {"builds": found, "buildsNotFound": [i for i in ids if i not in self.builds]}

    def list_builds_for_project(self, **kwargs: Any) -> dict[str, Any]:
        """Build ids of the project, newest first, 100 a page (``nextToken`` for the next)."""
        assert kwargs["projectName"] == PROJECT
        assert kwargs.get("sortOrder") == "DESCENDING"
        with self._lock:
            self.lists += 1
            ids = list(reversed(self._order))
        start = int(kwargs.get("nextToken") or 0)
        page = ids[start : start + 100]
        more = start + 100 < len(ids)
        # CodeBuild leaves ``ids`` out of an empty page (its model allows no empty list).
        return {
            **({"ids": page} if page else {}),
            **({"nextToken": str(start + 100)} if more else {}),
        }

    def _describe(self, build_id: str) -> dict[str, Any]:
        """A build as ``BatchGetBuilds`` describes it: phases up to the current one."""
        began = self._began[build_id]
        phases: list[dict[str, Any]] = [
            {"phaseType": "SUBMITTED", "startTime": self._start_times[build_id]},
            {"phaseType": "QUEUED", "startTime": self._start_times[build_id]},
        ]
        if began is not None:
            phases += [
                {"phaseType": "PROVISIONING", "startTime": began},
                {"phaseType": "BUILD", "startTime": began},
            ]
        return {
            "id": build_id,
            "buildStatus": self.builds[build_id],
            "currentPhase": phases[-1]["phaseType"]
            if self.builds[build_id] == "IN_PROGRESS"
            else "COMPLETED",
            "startTime": self._start_times[build_id],
            "phases": phases,
            "environment": {"environmentVariables": self._environment.get(build_id, [])},
        }

    def begin(self, build_id: str, at_ms: int | None = None) -> None:
        """A queued build leaves CodeBuild's queue (at ``at_ms``, epoch ms; default now)."""
        at = time.time() if at_ms is None else at_ms / 1000
        with self._lock:
            self._began[build_id] = datetime.fromtimestamp(at, tz=UTC)

    def in_progress(self) -> list[str]:
        with self._lock:
            return sorted(i for i, status in self.builds.items() if status == "IN_PROGRESS")


def _throttled(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )
