"""A CodeBuild stand-in for the AWS runtime's tests: builds are asynchronous, and a StopBuild
takes effect only after ``stops_needed`` requests (CodeBuild's stop is asynchronous, and a
throttled request changes nothing), so a caller must confirm a stop before it frees a slot."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["CodeBuildStandIn"]


class CodeBuildStandIn:
    """The three calls the executor makes: ``start_build``, ``stop_build``, ``batch_get_builds``."""

    def __init__(self, *, stops_needed: int = 1) -> None:
        self.stops_needed = stops_needed
        self.builds: dict[str, str] = {}  # build id -> buildStatus
        self.started: Counter[str] = Counter()  # idempotency token -> StartBuild calls
        self.stops: Counter[str] = Counter()  # build id -> StopBuild calls
        self._lock = threading.Lock()

    def start_build(self, **kwargs: Any) -> dict[str, Any]:
        token = kwargs["idempotencyToken"]
        build_id = self.build_id(token)
        with self._lock:
            self.started[token] += 1
            self.builds.setdefault(build_id, "IN_PROGRESS")  # idempotent by its token
            return {"build": {"id": build_id, "buildStatus": self.builds[build_id]}}

    @staticmethod
    def build_id(token: str) -> str:
        """The id of the build of an idempotency token (``job_id#attempt``): ``project:uuid``."""
        return "ci-project:" + token.replace("#", "-")

    def stop_build(self, *, id: str) -> dict[str, Any]:
        with self._lock:
            self.stops[id] += 1
            if self.stops[id] >= self.stops_needed and self.builds.get(id) == "IN_PROGRESS":
                self.builds[id] = "STOPPED"
            return {"build": {"id": id, "buildStatus": self.builds.get(id, "STOPPED")}}

    def batch_get_builds(self, *, ids: list[str]) -> dict[str, Any]:
        with self._lock:
            found = [{"id": i, "buildStatus": self.builds[i]} for i in ids if i in self.builds]
            return {"builds": found, "buildsNotFound": [i for i in ids if i not in self.builds]}

    def in_progress(self) -> list[str]:
        with self._lock:
            return sorted(i for i, status in self.builds.items() if status == "IN_PROGRESS")
