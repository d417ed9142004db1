"""The AWS runtime's :class:`~scheduler.runs.logs.LogReader`: a CodeBuild build's CloudWatch
Logs stream.

The build is the attempt's run id (``project:uuid``, recorded on the job item for its current
attempt); ``BatchGetBuilds`` names its log group and stream, and ``GetLogEvents`` reads them
oldest first. The cursor is CloudWatch's ``nextForwardToken``. Earlier attempts' builds are not
recorded on the job item, so only the current attempt's log can be read here.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.aws.codebuild import describe, is_build_id
from scheduler.errors import LogNotFound, StoreUnavailable
from scheduler.runs.logs import LogChunk, LogTarget

__all__ = ["CloudWatchLogReader"]

_NOT_FOUND = {"ResourceNotFoundException", "InvalidInputException"}
_CACHED_BUILDS = 256


class CloudWatchLogReader:
    def __init__(self, logs_client: Any, codebuild_client: Any) -> None:
        self._logs = logs_client
        self._codebuild = codebuild_client
        self._streams: dict[str, tuple[str, str]] = {}  # build id -> (group, stream)

    def read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        group, stream = self._stream_of(target)
        request: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        data = bytearray()
        token = cursor or None
        while True:
            if token:
                request["nextToken"] = token
            response = self._call(target, self._logs.get_log_events, **request)
            for event in response.get("events") or []:
                message = str(event.get("message", ""))
                data += message.encode() if message.endswith("\n") else f"{message}\n".encode()
            following = response.get("nextForwardToken") or token
            if not response.get("events") or following == token:
                return LogChunk(bytes(data), following or "", more=False)
            token = following
            if len(data) >= limit:
                return LogChunk(bytes(data), token or "", more=True)

    def _stream_of(self, target: LogTarget) -> tuple[str, str]:
        build_id = target.run_id
        if not build_id or not is_build_id(build_id):
            raise LogNotFound(
                target.job_id,
                target.attempt,
                "no build recorded for it (on AWS only the current attempt's build is known)",
            )
        if build_id in self._streams:
            return self._streams[build_id]
        response = self._call(target, self._codebuild.batch_get_builds, ids=[build_id])
        for build in response.get("builds") or []:
            logs = build.get("logs") or {}
            if build.get("id") == build_id and logs.get("groupName") and logs.get("streamName"):
                if len(self._streams) >= _CACHED_BUILDS:
                    self._streams.clear()
                found = self._streams[build_id] = (logs["groupName"], logs["streamName"])
                return found
        raise LogNotFound(target.job_id, target.attempt, f"build {build_id} has no log stream yet")

    @staticmethod
    def _call(target: LogTarget, operation: Any, **kwargs: Any) -> Any:
        try:
            return operation(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise LogNotFound(target.job_id, target.attempt, describe(exc)) from None
            raise StoreUnavailable(f"cannot read the build log: {describe(exc)}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot read the build log: {describe(exc)}") from exc
