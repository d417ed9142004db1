"""The stack's background loops outlive any one failure: an error nobody expected (a bug, an
answer of a kind never seen) is logged and the loop goes on, since a dead reaper thread would
leave lost runs and stalled queues alone until the next restart."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.local.dynamodb_local import free_port
from scheduler.local.stack import LocalStack, StackOptions
from scheduler.local.stream_runner import StreamRunner
from scheduler.runs.reaper import Reaper
from scheduler.settings import Settings, TableNames
from scheduler.stream.sweeper import QueueSweeper


def test_the_reaper_loop_survives_an_unexpected_error(
    settings: Settings, tables: TableNames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    original = QueueSweeper.sweep_once

    def flaky(self: QueueSweeper) -> dict[str, int]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("an answer nobody expected")
        return original(self)

    monkeypatch.setattr(QueueSweeper, "sweep_once", flaky)
    options = StackOptions(
        port=free_port(),
        data_dir=tmp_path / "data",
        reaper_interval_seconds=0.05,
        sweep_interval_seconds=0.05,
    )
    stack = LocalStack(
        replace(settings, webhook_secret="loops-webhook-secret-0123456789abcdef"), options
    )
    with stack:
        deadline = time.monotonic() + 20
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3, calls  # the sweep after the failure, and the one after that


def test_the_stream_runs_only_once_recovery_is_done(
    settings: Settings, tables: TableNames, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redelivered activation must not queue a run while recovery judges the jobs: recovery
    would see the run waiting and leave a job whose real run was lost with the old stack."""
    release = threading.Event()
    order: list[str] = []
    original_recover = Reaper.recover

    def slow_recover(self: Reaper) -> dict[str, str]:
        order.append("recovery starts")
        release.wait(20)
        done = original_recover(self)
        order.append("recovery done")
        return done

    def run(self: StreamRunner, stop: threading.Event) -> None:
        order.append("stream runs")

    monkeypatch.setattr(Reaper, "recover", slow_recover)
    monkeypatch.setattr(StreamRunner, "run", run)
    options = StackOptions(port=free_port(), data_dir=tmp_path / "data")
    stack = LocalStack(
        replace(settings, webhook_secret="loops-webhook-secret-0123456789abcdef"), options
    )
    with stack:
        deadline = time.monotonic() + 10
        while "recovery starts" not in order and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the stream would have started by now
        assert order == ["recovery starts"]
        release.set()
        deadline = time.monotonic() + 10
        while "stream runs" not in order and time.monotonic() < deadline:
            time.sleep(0.05)
    assert order == ["recovery starts", "recovery done", "stream runs"]
