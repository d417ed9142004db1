"""Run starters: a local process executor and an AWS CodeBuild executor."""

from scheduler.executors.base import Executor, OnFinished, RunRequest, RunResult

__all__ = ["Executor", "OnFinished", "RunRequest", "RunResult"]
