"""The jobs table's real stream run into a dispatcher as the local event source mapping runs it
(two lanes), with every batch delivered once more a little later by another thread (a
duplicate racing the originals): for the races of hand-offs, promotions and groups. And the
runs' start and end marks a test's command writes (``<job id> start|end <ns>``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.local.checkpoints import CheckpointStore
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings

__all__ = ["most_at_once", "run_until", "runs_of"]


def run_until(
    done: Callable[[], bool],
    handle_event: Callable[[dict[str, Any]], Any],
    *,
    ddb: Any,
    settings: Settings,
    checkpoint: str,
    begin: Callable[[], None] = lambda: None,
    stranded: Callable[[], object] = lambda: None,
    timeout: float = 60,
) -> None:
    """Run the stream from its end into ``handle_event`` until ``done()``; ``begin`` is called
    once the stream is at its end (the jobs it makes are read by the stream). After
    ``timeout`` s the test fails with what ``stranded()`` says; a lane that fails fails it."""
    late: list[dict[str, Any]] = []
    guard = threading.Lock()

    def stream_function(event: dict[str, Any], _context: Any) -> Any:
        answer = handle_event(event)
        with guard:
            late.append(event)  # delivered again later, by the other lane below
        return answer

    stream = StreamRunner(
        dynamodb=ddb,
        streams=client("dynamodbstreams", settings),
        table_name=settings.tables.jobs,
        checkpoints=CheckpointStore(ddb, settings.tables.runner_state, checkpoint),
        dead_letters=DeadLetterStore(ddb, settings.tables.dead_letters),
        handler=stream_function,
        mapping=MappingConfig(
            batch_size=5, report_batch_item_failures=True, parallelization_factor=2
        ),
        polling=PollingConfig(idle_min_seconds=0.002, idle_max_seconds=0.02),
    )
    stream.skip_to_end()
    stop = threading.Event()

    def redeliver() -> None:
        while not stop.is_set():
            with guard:
                batch = late.pop(0) if late else None
            if batch is None:
                time.sleep(0.01)
                continue
            time.sleep(0.02)
            handle_event(batch)

    try:
        begin()
        with ThreadPoolExecutor(2) as lanes:
            racing = [lanes.submit(stream.run, stop), lanes.submit(redeliver)]
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, stranded()
                for lane in racing:
                    assert not lane.done(), lane.result()
                time.sleep(0.1)
            stop.set()
            for lane in racing:
                lane.result()
    finally:
        stop.set()


def runs_of(effects: Path) -> dict[str, list[tuple[str, int]]]:
    """Each job's marks, in order: ``(start|end, ns)``."""
    found: dict[str, list[tuple[str, int]]] = {}
    for line in effects.read_text().splitlines() if effects.exists() else []:
        job_id, what, at = line.split()
        found.setdefault(job_id, []).append((what, int(at)))
    return found


def most_at_once(effects: Path, jobs: Iterable[str] | None = None) -> int:
    """How many runs (of ``jobs``, or all) were running at once, at most."""
    runs = runs_of(effects)
    chosen = runs if jobs is None else {job_id: runs[job_id] for job_id in jobs}
    events = sorted(
        (at, 1 if what == "start" else -1) for marks in chosen.values() for what, at in marks
    )
    running = peak = 0
    for _at, step in events:
        running += step
        peak = max(peak, running)
    return peak
