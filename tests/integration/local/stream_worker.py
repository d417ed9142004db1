"""A stream runner process for the kill test (run as a script, not collected by pytest).

The real dispatcher and runner, configured from the environment; the "executor" passes every
third job (by number) as soon as it is activated, so finishes promote queued jobs too.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from scheduler.db import models
from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore
from scheduler.local.mapping import PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from state_machines import TransitionConflict, Trigger


def main() -> None:
    settings = Settings.from_env()
    models.bind(settings)
    store = JobStore.from_settings(settings)

    def start_run(image: JobModel, _delay_ms: int) -> None:
        if int(image.job_id.rsplit("-", 1)[1]) % 3 == 0:
            with contextlib.suppress(TransitionConflict):  # a redelivered activation record
                store.transition(JobState.from_model(image), Trigger.PASS, actor="executor")

    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 2, start_run=start_run)
    runner = StreamRunner.from_settings(
        settings,
        handler=lambda event, _context: dispatcher.handle_event(event),
        polling=PollingConfig(idle_max_seconds=0.05),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runner.run(stop)


if __name__ == "__main__":
    main()
