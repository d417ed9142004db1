"""The local stack as users run it (``scheduler up`` in its own process, DynamoDB Local on disk),
driven over HTTP with signed deliveries, for fault scenarios.

Commands record what they did in a side-effect log written by the command itself (one line per
start: job id, attempt, pid, and the runs alive at that moment), so a test checks the books
independently of the scheduler's own tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import free_port, port_in_use

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")
SECRET = "reliability-webhook-secret-0123456789"

# A run: note the start (job, attempt, pid, which other runs are alive right now: zombies
# count as gone), leave a pid
# file for the others to check, then sleep argv[2] seconds and exit argv[3].
RUN = (
    "import os, sys, time, pathlib\n"
    "d = pathlib.Path(sys.argv[1]); job = os.environ['SCHEDULER_JOB_ID']\n"
    "attempt = os.environ['SCHEDULER_ATTEMPT']\n"
    "alive = []\n"
    "for f in d.glob('*.pid'):\n"
    "    try:\n"
    "        stat = open(f'/proc/{int(f.read_text())}/stat').read()\n"
    "    except (OSError, ValueError):\n"
    "        continue\n"
    "    if stat.rsplit(')', 1)[1].split()[0] != 'Z':\n"
    "        alive.append(f.stem)\n"
    "(d / f'{job}-{attempt}.pid').write_text(str(os.getpid()))\n"
    "line = f'{job} {attempt} {os.getpid()} alive={\",\".join(alive)}\\n'\n"
    "fd = os.open(d / 'starts.log', os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "os.write(fd, line.encode()); os.close(fd)\n"
    "time.sleep(float(sys.argv[2])); sys.exit(int(sys.argv[3]))\n"
)


def run_command(effects: Path, sleep: float, exit_code: int = 0, *, via_shell: bool = False) -> str:
    """The TOML argv of a recorded run; ``via_shell`` puts it under ``sh -c`` (a process tree:
    the shell leads the group, the recorded pid is its child)."""
    argv = [sys.executable, "-c", RUN, str(effects), str(sleep), str(exit_code)]
    if via_shell:
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        argv = ["sh", "-c", f"{quoted}; echo after"]
    return json.dumps(argv)


def shares(folder: Path) -> str:
    """The TOML line that lets sandboxed runs write ``folder`` (where they record starts)."""
    return f"sandbox_paths = {json.dumps([str(folder)])}\n"


# The chaos suites' runs judge the limit by looking at each other's processes on the host, which
# a sandbox (a PID namespace per run) hides: they run unsandboxed; tests/integration/
# test_sandbox.py and the e2e suite prove the sandbox.
UNSANDBOXED = 'sandbox = "off"\n'


def stack_port() -> int:
    """A free port: from ``RELIABILITY_PORTS`` (``LOW-HIGH``) when a session must keep to a
    range of its own, else any the system gives."""
    span = os.environ.get("RELIABILITY_PORTS")
    if not span:
        return free_port()
    low, high = (int(part) for part in span.split("-"))
    for port in random.sample(range(low, high + 1), high + 1 - low):
        if port in _PORTS_GIVEN or port_in_use(port):
            continue
        _PORTS_GIVEN.add(port)
        return port
    raise AssertionError(f"no free port in RELIABILITY_PORTS={span}")


_PORTS_GIVEN: set[int] = set()


@dataclass(frozen=True)
class Start:
    job_id: str
    attempt: int
    pid: int
    alive: tuple[str, ...]


@dataclass
class LocalStackProcess:
    """One ``scheduler up`` child; start, SIGKILL and restart it on the same data directory."""

    workdir: Path
    config: str
    env: dict[str, str] = field(default_factory=dict)
    max_runs: int = 8
    port: int = field(default_factory=stack_port)
    dynamodb_port: int = field(default_factory=stack_port)
    process: subprocess.Popen[str] | None = None
    url: str = ""

    @property
    def effects(self) -> Path:
        path = self.workdir / "effects"
        path.mkdir(exist_ok=True)
        return path

    def start(self) -> LocalStackProcess:
        config = self.workdir / "scheduler.toml"
        config.write_text(self.config, encoding="utf-8")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SCHEDULER_", "AWS_"))
        }
        env.update(GITHUB_WEBHOOK_SECRET=SECRET, SCHEDULER_CONFIG=str(config), **self.env)
        self.process = subprocess.Popen(
            [
                SCHEDULER,
                "up",
                "--port",
                str(self.port),
                "--dynamodb-port",
                str(self.dynamodb_port),
                "--data-dir",
                str(self.workdir / "data"),
                "--max-runs",
                str(self.max_runs),
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "stack.log", "a"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, self.log_tail()
        self.url = json.loads(line)["url"]
        return self

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "stack.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the stack process (its DynamoDB Local dies with it: PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)
        _wait_port_free(self.dynamodb_port)

    def dynamodb_pid(self) -> int | None:
        """The pid of the stack's DynamoDB Local (the JVM listening on its port), if it runs."""
        wanted = ["-port", str(self.dynamodb_port)]
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "java" in argv[0] and any(argv[i : i + 2] == wanted for i in range(len(argv))):
                return int(proc.name)
        return None

    def kill_dynamodb(self) -> int:
        """SIGKILL the stack's DynamoDB Local (the stack itself goes on); returns its pid."""
        pid = self.dynamodb_pid()
        assert pid is not None, "DynamoDB Local is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def dynamodb(self) -> Any:
        """A boto3 client of the stack's DynamoDB Local (to plant or take back items)."""
        return boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{self.dynamodb_port}",
            region_name="us-east-1",
            aws_access_key_id=self.access_key(),
            aws_secret_access_key=self.access_key(),
        )

    def dead_letters(self) -> list[Any]:
        """The dead-letter table's letters, through the operator's CLI."""
        result = self.cli("dlq", "list", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["dead_letters"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def access_key(self) -> str:
        """The key the stack keeps its tables under (its DynamoDB Local shows any other key an
        empty database): made at its first start, kept in its data folder."""
        return (self.workdir / "data" / "dynamodb" / "access-key").read_text().strip()

    def env_for_cli(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AWS_"))}
        env.update(
            SCHEDULER_DYNAMODB_ENDPOINT=f"http://127.0.0.1:{self.dynamodb_port}",
            AWS_ACCESS_KEY_ID=self.access_key(),
            AWS_SECRET_ACCESS_KEY=self.access_key(),
        )
        return env

    def doctor(self, stranded_after: str = "2s") -> tuple[int, dict[str, Any]]:
        """``scheduler doctor --json`` against the stack: its exit code and its report."""
        done = self.cli("doctor", "--json", "--stranded-after", stranded_after)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, dict(json.loads(done.stdout))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCHEDULER, *args],
            env=self.env_for_cli(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # -- deliveries and reads over HTTP ------------------------------------------------------

    def deliver(
        self, client: httpx.Client, repo: str, delivery: str, sha: str, branch: str = "main"
    ) -> httpx.Response:
        """A signed ``push`` of ``sha`` to ``branch``."""
        push = {
            "ref": f"refs/heads/{branch}",
            "after": sha,
            "repository": {"full_name": repo},
            "sender": {"login": "chaos"},
        }
        return self.post_delivery(client, "push", delivery, push)

    def post_delivery(
        self, client: httpx.Client, event: str, delivery: str, payload: dict[str, Any]
    ) -> httpx.Response:
        """Any event, signed as GitHub signs it."""
        body = json.dumps(payload).encode()
        return client.post(
            f"{self.url}/webhook",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sign(SECRET.encode(), body),
            },
        )

    def job(self, client: httpx.Client, job_id: str) -> dict[str, Any]:
        response = client.get(f"{self.url}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stats(self, client: httpx.Client, repo: str) -> dict[str, Any]:
        response = client.get(f"{self.url}/repos/{repo}/stats")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def starts(self) -> list[Start]:
        log = self.effects / "starts.log"
        if not log.exists():
            return []
        found = []
        for line in log.read_text().splitlines():
            job_id, attempt, pid, alive = line.split(" ", 3)
            names = alive.removeprefix("alive=")
            found.append(
                Start(job_id, int(attempt), int(pid), tuple(filter(None, names.split(","))))
            )
        return found


def assert_doctor_reports_nothing(stack: LocalStackProcess, within: float = 15.0) -> None:
    """The settled stack's ``scheduler doctor --json`` reports nothing: no counter drifts from
    the items, no job stranded (queued with a free slot, a finished job holding its slot: an
    unconfirmed stop, active past its deadline), no repository left unread. ``within``: the
    stack's last moves (a stop being confirmed) may take a moment after the jobs ended."""
    deadline = time.monotonic() + within
    while True:
        code, report = stack.doctor()
        clean = not report["drift"] and not report["stranded"] and not report["busy"]
        if clean or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0 and report["healthy"] and clean, report
    assert report["repositories"] >= 1 and report["jobs"] >= 1, report  # it looked at something


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _wait_port_free(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
