"""The sandbox a local run executes in: bubblewrap namespaces around the command.

A pull request is hostile code. Inside its sandbox a run sees its own work tree (read-write),
the objects of the repository's mirror it was cloned from (read-only), a read-only system
(``/usr``, ``/etc``, the Python installations the scheduler itself runs on), a private HOME and
``/tmp`` and a fresh ``/proc`` of its own PID namespace. It sees nothing of the scheduler: not
its processes or their environment, not its data folder (stack file, database files, run
records, other runs' logs and results), not the mirrors' configuration. It has no capabilities,
its own IPC and UTS namespaces, and with ``network = false`` a network namespace with only a
loopback of its own.

The sandbox's own process is started with the run's environment and nothing else, so even its
init (``/proc/1/environ`` inside) holds no secret of the scheduler's. Its PID namespace dies
with it: killing the run's process group kills every process the command started, inside.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import ConfigurationError

__all__ = ["SANDBOX_HOME", "Bubblewrap", "SandboxUnavailable", "find_sandbox"]

log = logging.getLogger(__name__)

# The run's HOME: an empty folder on the sandbox's own tmpfs, gone with the run.
SANDBOX_HOME = "/home/run"
# The system a run may read (never write); symlinked tops (Debian's merged /usr) stay links.
SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")


class SandboxUnavailable(ConfigurationError):
    """No sandbox can be made on this machine (bubblewrap missing, or namespaces refused)."""


@dataclass(frozen=True)
class Bubblewrap:
    """Wraps a run's argv in ``bwrap`` (Debian's bubblewrap)."""

    program: str
    # Read-only besides the system: the Python installations the scheduler runs on (builds
    # commonly use the same interpreter), when they live outside the system folders.
    read_only: tuple[str, ...] = ()

    def wrap(
        self,
        argv: Sequence[str],
        *,
        workdir: Path,
        env: Mapping[str, str],
        network: bool,
        shared: Sequence[str] = (),
    ) -> list[str]:
        """The argv that runs ``argv`` in ``workdir`` inside a sandbox with exactly ``env``;
        the folders in ``shared`` (the configuration's ``sandbox_paths``) are read-write."""
        args = [
            self.program,
            "--die-with-parent",  # nothing inside outlives the sandbox's own process
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
        ]
        if not network:
            args.append("--unshare-net")
        # The sandbox's own folders first: what is bound later may live below them (a
        # checkout under /tmp, its virtualenv included) and must not be hidden by them.
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/home"]
        args += ["--dir", SANDBOX_HOME, "--tmpfs", "/run"]
        for path in SYSTEM_PATHS:
            args += _read_only(path)
        for path in self.read_only:
            args += ["--ro-bind-try", path, path]
        work = str(workdir.resolve())
        args += ["--bind", work, work]
        for folder in shared:
            args += ["--bind", folder, folder]
        for objects in _borrowed_objects(workdir):
            args += ["--ro-bind", objects, objects]
        args += ["--chdir", work, "--clearenv"]
        inside = {**env, "HOME": SANDBOX_HOME, "TMPDIR": "/tmp"}
        for key, value in inside.items():
            args += ["--setenv", key, value]
        return [*args, "--", *argv]

    def check(self) -> None:
        """Make one sandbox and run ``true`` in it; :class:`SandboxUnavailable` says why not."""
        probe = self.wrap(["true"], workdir=Path("/"), env={"PATH": "/usr/bin:/bin"}, network=False)
        try:
            result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"cannot run bubblewrap: {exc}") from exc
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            reason = lines[-1] if lines else f"exit code {result.returncode}"
            raise SandboxUnavailable(f"bubblewrap cannot make a sandbox here: {reason}")


@functools.cache
def find_sandbox() -> Bubblewrap:
    """The machine's sandbox, checked to work (once per process; a failure is not kept, so
    the next call checks again); :class:`SandboxUnavailable` otherwise."""
    program = shutil.which("bwrap")
    if program is None:
        raise SandboxUnavailable(
            "runs need a sandbox and bubblewrap is not installed "
            "(run 'make setup', or 'apt-get install bubblewrap'; "
            'or set sandbox = "off" in the configuration to run commands unsandboxed)'
        )
    prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    extra = tuple(sorted(p for p in prefixes if not p.startswith(SYSTEM_PATHS)))
    sandbox = Bubblewrap(program, read_only=extra)
    sandbox.check()
    return sandbox


def _read_only(path: str) -> list[str]:
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    return ["--ro-bind-try", path, path]


def _borrowed_objects(workdir: Path) -> list[str]:
    """The object folders a ``git clone --shared`` work tree borrows (its alternates): read-only
    inside, so git works in the run, while the mirror's config and refs stay out of reach."""
    alternates = workdir / ".git" / "objects" / "info" / "alternates"
    try:
        lines = alternates.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        path = (alternates.parent.parent / line.strip()).resolve() if line.strip() else None
        if path is not None and path.is_dir():
            found.append(str(path))
    return found
