"""The CLI finds the `scheduler up` started from its folder through the stack file, with no
SCHEDULER_* or AWS_* variable: real stacks on free ports, real CLI subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler.local.dynamodb_local import free_port

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")
SECRET = "finds-stack-webhook-secret-0123456789"


def command(code: str) -> str:
    return json.dumps([sys.executable, "-c", code])


PASS = command("print('hello from the pass job')")
FAIL = command("print('about to fail'); raise SystemExit(3)")
HANG = command("import time; time.sleep(60)")
CONFIG = (
    '[defaults]\ncheckout = false\ncommand = ["true"]\ntimeout_seconds = 60\n\n'
    f'[repos."t/pass"]\ncommand = {PASS}\n\n'
    f'[repos."t/fail"]\ncommand = {FAIL}\n\n'
    f'[repos."t/hang"]\ncommand = {HANG}\n'
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new shell: no SCHEDULER_* and no AWS_* at all; a HOME without
    ~/.aws, so that nothing can reach AWS by luck."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SCHEDULER_", "AWS_")) and key != "GITHUB_WEBHOOK_SECRET"
    }
    return {**env, "HOME": str(Path(env.get("TMPDIR", "/tmp"))), **extra}


@dataclass
class Up:
    folder: Path
    port: int
    dynamodb_port: int
    process: subprocess.Popen[str] | None = None

    @property
    def stack_file(self) -> Path:
        return self.folder / ".scheduler" / "stack.json"

    def start(self) -> Up:
        """``scheduler up`` from ``folder`` with the default data directory (.scheduler)."""
        (self.folder / "scheduler.toml").write_text(CONFIG)
        wait_port_free(self.dynamodb_port)
        self.process = subprocess.Popen(
            [
                *(SCHEDULER, "up", "--port", str(self.port)),
                *("--dynamodb-port", str(self.dynamodb_port)),
                *("--config", "scheduler.toml", "--json"),
            ],
            cwd=self.folder,
            env=clean_env(GITHUB_WEBHOOK_SECRET=SECRET),
            stdout=subprocess.PIPE,
            stderr=open(self.folder / "stack.log", "a"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, (self.folder / "stack.log").read_text()[-3000:]
        assert json.loads(line)["stack_file"] == str(self.stack_file)
        return self

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(30)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return cli(self.folder, *args, **env)


def cli(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCHEDULER, *args],
        cwd=folder,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_port_free(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"port {port} still in use")


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def deliver(up: Up, repo: str, *args: str) -> subprocess.CompletedProcess[str]:
    return up.cli("send-test-delivery", "--repo", repo, *args, GITHUB_WEBHOOK_SECRET=SECRET)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    stack = Up(tmp_path_factory.mktemp("stack-folder"), free_port(), free_port()).start()
    try:
        yield stack
    finally:
        stack.stop()


def test_commands_from_the_stacks_folder_reach_it_with_no_export(up: Up) -> None:
    sent = deliver(up, "t/pass", "--json")
    assert sent.returncode == 0, sent.stderr
    job = json.loads(sent.stdout)
    assert (job["status"], job["repo"]) == ("passed", "t/pass")

    listed = up.cli("status", "t/pass", "--json")
    assert listed.returncode == 0, listed.stderr
    assert job["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)["jobs"]]
    shown = up.cli("show", job["job_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert [h["to"] for h in json.loads(shown.stdout)["history"]][-1] == "passed"
    stats = up.cli("stats", "t/pass", "--json")
    assert json.loads(stats.stdout)["counts"]["passed"] >= 1, stats.stderr
    assert up.cli("dlq", "list", "--json").returncode == 0
    logged = up.cli("logs", job["job_id"])
    assert (logged.returncode, logged.stdout) == (0, "hello from the pass job\n"), logged.stderr


def test_verbose_names_the_stack_it_uses(up: Up) -> None:
    result = up.cli("--verbose", "stats", "t/pass")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        f"scheduler: using DynamoDB at http://127.0.0.1:{up.dynamodb_port}"
        f" (local stack from .scheduler/stack.json, pid {up.process.pid if up.process else 0})"
    )
    assert up.cli("stats", "t/pass").stderr == ""  # not without --verbose


def test_an_explicit_endpoint_wins_over_the_stack_file(up: Up) -> None:
    closed = free_port()  # nothing listens here: only the explicit endpoint can be tried
    result = up.cli(
        "--verbose", "show", "anything", SCHEDULER_DYNAMODB_ENDPOINT=f"http://127.0.0.1:{closed}"
    )
    assert result.returncode == 2, result.stderr
    first, error = result.stderr.strip().splitlines()
    assert (
        first
        == f"scheduler: using DynamoDB at http://127.0.0.1:{closed} (SCHEDULER_DYNAMODB_ENDPOINT)"
    )
    assert error.startswith(
        f"error: DynamoDB at http://127.0.0.1:{closed} (SCHEDULER_DYNAMODB_ENDPOINT): "
    )
    assert "Traceback" not in result.stderr


def test_without_a_stack_file_the_error_says_aws_was_tried(tmp_path: Path) -> None:
    result = cli(tmp_path, "show", "anything", AWS_EC2_METADATA_DISABLED="true")
    one_error_line(result, "DynamoDB on AWS (region", "no local stack in .scheduler")


def test_send_test_delivery_follows_a_passing_job_to_its_end(up: Up) -> None:
    result = deliver(up, "t/pass")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"delivered to http://127.0.0.1:{up.port}/webhook: job ")
    job_id = lines[0].rsplit(" ", 1)[1]
    statuses = [line for line in lines if line.startswith(f"job {job_id}: ")]
    assert statuses[-1].startswith(f"job {job_id}: passed (attempt 1, ")
    # It ends with what the command printed (GET /jobs/{id}/log).
    assert lines[-2:] == ["log of attempt 1:", "  hello from the pass job"]


def test_send_test_delivery_exits_1_when_the_job_fails(up: Up) -> None:
    result = deliver(up, "t/fail")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == ""
    assert any(": failed (attempt 1, exit_code 3, " in line for line in result.stdout.splitlines())
    as_json = deliver(up, "t/fail", "--json")
    assert as_json.returncode == 1
    job = json.loads(as_json.stdout)
    assert (job["status"], job["reason"], job["exit_code"]) == ("failed", "exit_code", 3)
    retried = up.cli("retry", job["job_id"], "--json")  # also found from the folder
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["attempt"] == 2
    assert up.cli("dlq", "replay", "--all").returncode == 0


def test_no_wait_returns_at_once_with_the_job_id(up: Up) -> None:
    started = time.monotonic()
    result = deliver(up, "t/hang", "--no-wait", "--json")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    # Not the run's 60 s: a wait would take that long; a busy machine may take seconds.
    assert time.monotonic() - started < 45
    shown = up.cli("show", job_id, "--json")
    assert json.loads(shown.stdout)["status"] in ("pending", "active")
    assert up.cli("cancel", job_id).returncode == 0


def test_the_wait_is_bounded(up: Up) -> None:
    result = deliver(up, "t/hang", "--timeout", "2")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "after 2 s" in error[0] and "is still" in error[0], error
    job_id = result.stdout.splitlines()[0].rsplit(" ", 1)[1]
    up.cli("cancel", job_id)


def test_stack_file_is_removed_on_stop_stale_after_a_kill_and_rewritten(
    tmp_path: Path,
) -> None:
    up = Up(tmp_path, free_port(), free_port()).start()
    try:
        first = json.loads(up.stack_file.read_text())
        assert first["pid"] == (up.process.pid if up.process else None)
        assert first["dynamodb_endpoint"] == f"http://127.0.0.1:{up.dynamodb_port}"
        assert first["url"] == f"http://127.0.0.1:{up.port}"

        up.stop(signal.SIGKILL)  # a crash leaves the file behind...
        assert json.loads(up.stack_file.read_text())["pid"] == first["pid"]
        started = time.monotonic()
        for args in (("status", "t/pass"), ("send-test-delivery",)):
            one_error_line(
                up.cli(*args, GITHUB_WEBHOOK_SECRET=SECRET),
                f"the local stack in .scheduler (pid {first['pid']}) is not running",
                "scheduler up",
            )
        assert time.monotonic() - started < 30  # ...which gives an error at once, no hang

        up.start()  # ...and a restart writes it anew
        second = json.loads(up.stack_file.read_text())
        assert second["pid"] == (up.process.pid if up.process else None) != first["pid"]
        assert up.cli("status", "t/pass", "--json").returncode == 0
        assert up.stop(signal.SIGINT) == 0
        assert not up.stack_file.exists()  # a clean stop removes it
        assert not list(up.stack_file.parent.glob(".stack-*"))  # no temporary left
        after = up.cli("status", "t/pass", AWS_EC2_METADATA_DISABLED="true")
        assert after.returncode == 2
        note, error = after.stderr.strip().splitlines()
        assert note.startswith("scheduler: no local stack is running from .scheduler")
        assert error.startswith("error: DynamoDB on AWS (region ")
    finally:
        up.stop(signal.SIGKILL)


def test_a_second_stack_on_the_same_folder_is_refused(up: Up) -> None:
    result = cli(
        up.folder,
        *("up", "--port", str(free_port()), "--dynamodb-port", str(free_port())),
        GITHUB_WEBHOOK_SECRET=SECRET,
    )
    line = one_error_line(result, "a local stack is already running from .scheduler")
    assert f"(pid {up.process.pid if up.process else 0}, http://127.0.0.1:{up.port})" in line
    assert json.loads(up.stack_file.read_text())["pid"] == (up.process.pid if up.process else 0)


def test_up_refuses_a_webhook_secret_shorter_than_32_characters(tmp_path: Path) -> None:
    """A guessable secret lets anyone sign deliveries: ``scheduler up`` says so and exits 2
    before starting anything; the secret itself is never shown."""
    short = "change-me-to-a-long-secret"  # the README's example before issue 24
    args = ("up", "--port", str(free_port()), "--dynamodb-port", str(free_port()))
    result = cli(tmp_path, *args, GITHUB_WEBHOOK_SECRET=short)
    line = one_error_line(result, "GITHUB_WEBHOOK_SECRET", "at least 32 characters")
    assert short not in line
    assert not (tmp_path / ".scheduler" / "stack.json").exists()
