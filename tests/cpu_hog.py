"""A CPU hog for ``make test-under-load``: one busy loop per core until it is stopped.

``python tests/cpu_hog.py [N]`` forks N busy-looping processes (N = ``os.cpu_count()`` unless
given) and waits. SIGTERM or SIGINT stops them all; so does the death of whoever started the hog
(its parent), and a busy loop whose hog is gone stops by itself: nothing outlives a killed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType

__all__ = ["main"]

CHECK_EVERY = 200_000  # loop turns between two looks at the parent (a few ms of CPU)


def burn(hog: int) -> None:
    """Keep one core busy while ``hog`` (this process's parent) lives."""
    while os.getppid() == hog:
        for _ in range(CHECK_EVERY):
            pass


def main(argv: list[str]) -> int:
    count = int(argv[1]) if len(argv) > 1 else os.cpu_count() or 1
    launcher, hog = os.getppid(), os.getpid()
    loops = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                burn(hog)
            finally:
                os._exit(0)
        loops.append(pid)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"cpu_hog: {count} busy loops (pid {hog})", file=sys.stderr, flush=True)
    try:
        while os.getppid() == launcher:  # the launcher gone, the hog goes too
            time.sleep(0.5)
    finally:
        for pid in loops:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in loops:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
