"""Child processes that cannot outlive us."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence

_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv")  # util-linux: sets the death signal, then execs the command


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to the child when the thread that started it
    dies, even if the parent was SIGKILLed (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def orphan_proof(
    argv: Sequence[str], env: Mapping[str, str]
) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` and the ``preexec_fn`` to start it with so that it dies with its parent thread.

    Through ``setpriv --pdeathsig`` when the machine has it: a ``preexec_fn`` makes Python fork
    the whole interpreter and run Python in the child (about 4 ms of CPU and 17 ms per start in
    a busy stack, holding up every other thread), where ``setpriv`` lets it use ``vfork``. The
    command is looked up on the child's ``PATH`` first, so a missing one still fails here, as
    :class:`FileNotFoundError` (a missing ``./path`` fails in the child, exit code 127).

    ``setpriv`` sets the signal a moment after the spawn returns: a parent killed within that
    moment leaves the process running, and the run records' token finds it at the next start
    (:meth:`~scheduler.local.run_records.RunRecords.kill_leftovers`), as for any other.
    """
    if _SETPRIV is None:
        return list(argv), die_with_parent
    program = argv[0]
    if os.sep not in program:  # a path ("./ci.sh") is the child's, relative to its cwd
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
        program = found
    return [_SETPRIV, "--pdeathsig", "TERM", "--", program, *argv[1:]], None
