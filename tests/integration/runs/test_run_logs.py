"""Run logs end to end on DynamoDB Local: the capped log of a real run, a grandchild holding the
pipe, masked summaries on the job item and in the commit status, the log route over HTTP and
Lambda, and ``scheduler logs`` / ``scheduler show`` through the real console script."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from scheduler.api.app import Application, create_app
from scheduler.api.query_routes import query_routes
from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.github.statuses import CommitStatusObserver, StatusUpdate
from scheduler.local.executor import LocalExecutor
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import log_file, logs_dir_in
from scheduler.runs.executor import RunRequest
from scheduler.runs.logs import RunLogs
from scheduler.runs.masking import Masker, masker_for
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.decide import Transition
from state_machines import JobStatus, Trigger
from tests.integration.runs.test_runs import Results

SCRIPT = Path(sys.executable).with_name("scheduler")
SECRET = "s3cr3t-webhook-key-for-log-tests"
NPM_TOKEN = "npm_0123456789abcdef"
REPO = "octo-org/api"

CHATTY = (
    "import sys\n"
    "for n in range(int(sys.argv[1])):\n"
    "    sys.stdout.write(f'line {n:06d} ' + 'x' * 40 + '\\n')\n"
    "print('the very last line', flush=True)\n"
)
# The leader starts a grandchild in a session of its own (out of the run's process group),
# which keeps the output pipe open for a minute; then it exits (or sleeps past its timeout).
ESCAPER = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "print('leader done', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def request(job_id: str, command: tuple[str, ...], timeout: int = 30) -> RunRequest:
    return RunRequest(job_id, REPO, "a" * 40, 1, command, timeout, ref="refs/heads/main")


def started(executor: LocalExecutor, run: RunRequest) -> str:
    run_id = executor.start(run)
    assert run_id is not None
    return run_id


def masks(repo: str) -> Masker:
    return masker_for(lambda _repo: ["NPM_TOKEN"], [SECRET], {"NPM_TOKEN": NPM_TOKEN})(repo)


@pytest.fixture
def results() -> Results:
    return Results()


@pytest.fixture
def executor(tmp_path: Path, results: Results) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(
        tmp_path / "runs",
        results,
        base_env={"PATH": "/usr/bin:/bin"},
        log_max_bytes=64 * 1024,
        mask_for=masks,
    )
    yield ex
    ex.close()


# -- the executor's log -----------------------------------------------------------------------


def test_a_run_printing_past_the_cap_keeps_head_marker_and_tail(
    executor: LocalExecutor, results: Results
) -> None:
    run = request("chatty", (sys.executable, "-c", CHATTY, "20000"))  # ~1 MB of output
    assert executor.wait(started(executor, run), 60)
    data = executor.log_path(run).read_bytes()
    assert data.startswith(b"line 000000 ")
    assert b"[scheduler: log cap of 65536 bytes reached" in data
    assert b"bytes cut here]" in data
    assert data.endswith(b"line 019999 " + b"x" * 40 + b"\nthe very last line\n")
    assert len(data) <= 64 * 1024 + 512
    assert results.items[0].passed
    assert results.items[0].summary == "exit code 0: the very last line"


def _kill_pid_in(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text()), signal.SIGKILL)


def test_a_grandchild_holding_the_pipe_does_not_hold_up_a_finished_run(
    executor: LocalExecutor, results: Results, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    run = request("escaper", (sys.executable, "-c", ESCAPER, str(pid_file), "0"))
    began = time.monotonic()
    try:
        assert executor.wait(started(executor, run), 50)
        took = time.monotonic() - began
    finally:
        _kill_pid_in(pid_file)
    # Seconds, not the minute the grandchild holds the pipe (a busy machine may take ten).
    assert took < 45, f"the run waited {took:.1f}s for a pipe its grandchild held"
    assert results.items[0].passed
    assert "leader done" in executor.log_path(run).read_text()


def test_a_grandchild_holding_the_pipe_does_not_stretch_a_timeout(
    executor: LocalExecutor, results: Results, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    run = request("escaper-slow", (sys.executable, "-c", ESCAPER, str(pid_file), "60"), timeout=1)
    began = time.monotonic()
    try:
        assert executor.wait(started(executor, run), 50)
        took = time.monotonic() - began
    finally:
        _kill_pid_in(pid_file)
    # timeout 1 s + SIGTERM's grace (3 s at most, sleep dies at once) + the output grace 2 s:
    # seconds, not the minute the grandchild holds the pipe (a busy machine may take more).
    assert took < 45, f"a timeout of 1 s took {took:.1f}s"
    assert results.items[0].timed_out


# -- masking: the stored summary and the commit status ----------------------------------------


def test_the_stored_summary_masks_configured_secrets(
    store: JobStore, executor: LocalExecutor, results: Results
) -> None:
    job = store.create(NewJob("masked", REPO, "push", "a" * 40, 30, ref="refs/heads/main"))
    assert isinstance(store.activate(job, slot_limit=10), JobState)
    script = f"print('publishing with {NPM_TOKEN} and {SECRET}'); raise SystemExit(4)"
    starter = RunStarter(store, executor, lambda _repo: (sys.executable, "-c", script))
    run_id = starter.start(store.get("masked"))
    assert run_id is not None and executor.wait(run_id, 60)
    starter.finished(results.items[0])
    item = store.get("masked")
    assert item.status == "failed" and item.detail == "exit code 4: publishing with *** and ***"
    assert NPM_TOKEN in executor.log_path(request("masked", ())).read_text()  # the file is raw


class Captured:
    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    def submit(self, update: StatusUpdate) -> None:
        self.updates.append(update)


def test_the_commit_status_of_a_failure_carries_its_last_line_masked(store: JobStore) -> None:
    job = store.create(NewJob("status", REPO, "push", "b" * 40, 30, ref="refs/heads/main"))
    active = store.activate(job, slot_limit=10)
    assert isinstance(active, JobState)
    detail = f"exit code 1: npm ERR! 401 for token {NPM_TOKEN}"
    store.report("status", 1, Trigger.FAIL, actor="test", outcome=Outcome("exit_code", detail, 1))
    image = store.get("status")
    captured = Captured()
    observer = CommitStatusObserver(
        captured,  # type: ignore[arg-type]
        lambda _repo: "ci/scheduler",
        mask_for=masks,
    )
    observer(Transition(JobStatus.ACTIVE, JobStatus.FAILED, JobState.from_model(image), "1", image))
    (update,) = captured.updates
    assert update.state == "failure"
    assert update.body()["description"] == "Failed: exit code 1: npm ERR! 401 for token ***"
    assert len(update.body()["description"]) <= 140


# -- the log route ----------------------------------------------------------------------------


def write_log(data_dir: Path, job_id: str, attempt: int, text: str) -> Path:
    path = log_file(logs_dir_in(data_dir), job_id, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def failed_job(store: JobStore, data_dir: Path, job_id: str, text: str) -> JobState:
    """A job whose attempt 1 ran (its log written where the local stack writes it) and failed."""
    job = store.create(NewJob(job_id, REPO, "push", "c" * 40, 30, ref="refs/heads/main"))
    active = store.activate(job, slot_limit=10)
    assert isinstance(active, JobState)
    path = write_log(data_dir, job_id, 1, text)
    store.claim_run(active, f"{job_id}#1", str(path))
    return store.report(
        job_id, 1, Trigger.FAIL, actor="test", outcome=Outcome("exit_code", None, 1)
    )


@pytest.fixture
def logged(store: JobStore, tmp_path: Path) -> Path:
    """``two``: attempt 1 failed with a log, retried (attempt 2 pending, no log yet);
    ``one``: failed with a log that prints a secret."""
    failed = failed_job(store, tmp_path, "two", "first attempt\nboom\n")
    store.transition(failed, Trigger.RETRY, actor="test")
    failed_job(store, tmp_path, "one", f"hello\ntoken {NPM_TOKEN}\nbye\n")
    return tmp_path


@pytest.fixture
def log_app(settings: Settings, logged: Path) -> Application:
    queries = Queries.from_settings(settings)
    logs = RunLogs(queries, LocalLogReader(logs_dir_in(logged)), masks)
    return create_app(
        replace(settings, webhook_secret=SECRET), extra_routes=[query_routes(queries, logs)]
    )


def get(server: LocalHTTPServer, path: str, **query: str) -> tuple[int, str, str]:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", f"{path}?{urlencode(query)}" if query else path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read().decode()
    finally:
        connection.close()


def test_the_log_route_answers_text_and_typed_errors(log_app: Application) -> None:
    with LocalHTTPServer(log_app) as server:
        status, kind, body = get(server, "/jobs/one/log")
        assert (status, kind) == (200, "text/plain; charset=utf-8")
        assert body == "hello\ntoken ***\nbye\n"
        assert get(server, "/jobs/two/log", attempt="1")[2] == "first attempt\nboom\n"
        for path, query, code, words in [
            ("/jobs/two/log", {}, 404, "attempt 2"),  # the current attempt has not run
            ("/jobs/two/log", {"attempt": "3"}, 404, "2 attempt"),
            ("/jobs/nobody/log", {}, 404, "not found"),
            ("/jobs/one/log", {"attempt": "abc"}, 400, "attempt"),
            ("/jobs/one/log", {"attempt": "0"}, 400, "attempt"),
            ("/jobs/one/log", {"lines": "5"}, 400, "unknown query parameter"),
            ("/jobs/../log", {}, 404, ""),
            ("/jobs/%2E%2E/log", {}, 404, "not found"),
        ]:
            status, kind, body = get(server, path, **query)
            assert status == code, (path, query, body)
            assert kind == "application/json" and words in json.loads(body)["error"]


def test_the_log_route_through_lambda_is_plain_text(log_app: Application) -> None:
    event: Any = {
        "version": "2.0",
        "rawPath": "/jobs/one/log",
        "rawQueryString": "attempt=1",
        "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/jobs/one/log"}},
        "isBase64Encoded": False,
    }
    answer = log_app.handle_lambda(event)
    assert answer["statusCode"] == 200
    assert answer["headers"]["content-type"].startswith("text/plain")
    assert answer["body"] == "hello\ntoken ***\nbye\n"


# -- the CLI ----------------------------------------------------------------------------------


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SCHEDULER_DATA_DIR": str(data_dir), "NPM_TOKEN": NPM_TOKEN, **extra}
    config = data_dir / "scheduler.toml"
    config.write_text('[defaults]\nmask_env = ["NPM_TOKEN"]\n')
    env["SCHEDULER_CONFIG"] = str(config)
    return env


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(data_dir),
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_scheduler_logs_prints_attempts_masked_and_refuses_unknowns(logged: Path) -> None:
    shown = cli(logged, "logs", "one")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "hello\ntoken ***\nbye\n"
    earlier = cli(logged, "logs", "two", "--attempt", "1", "--json")
    assert earlier.returncode == 0, earlier.stderr
    assert json.loads(earlier.stdout) == {
        "job_id": "two",
        "attempt": 1,
        "status": "pending",
        "log": "first attempt\nboom\n",
    }
    one_error_line(cli(logged, "logs", "nobody"), 1, "job nobody not found")
    one_error_line(cli(logged, "logs", "two", "--attempt", "7"), 1, "no log for job two attempt 7")
    one_error_line(cli(logged, "logs", "two"), 1, "no log for job two attempt 2")
    one_error_line(cli(logged, "logs", "two", "--attempt", "x"), 2, "attempt")


def test_scheduler_show_prints_the_last_lines_of_a_failed_run(logged: Path) -> None:
    human = cli(logged, "show", "one")
    assert human.returncode == 0, human.stderr
    after = human.stdout.split("last lines of the log", 1)[1]
    assert after.split("history")[0].split() == ["hello", "token", "***", "bye"]
    data = json.loads(cli(logged, "show", "one", "--json").stdout)
    assert data["log_tail"] == ["hello", "token ***", "bye"]


# A run that writes the operator's clipboard (OSC 52), colours, moves the cursor back, rings
# the bell and sends an 8-bit CSI: on a terminal each is shown, never obeyed.
HOSTILE_LOG = (
    "start\tok\n\x1b]52;c;ZXZpbA==\x07\x1b[31mred\x1b[0m\nsecret\rhidden\x08\x9b2J\x00\x7f end\n"
)
HOSTILE_SHOWN = (
    "start\tok\n"
    "\\x1b]52;c;ZXZpbA==\\x07\\x1b[31mred\\x1b[0m\n"
    "secret\\x0dhidden\\x08\\x9b2J\\x00\\x7f end\n"
)


def cli_on_terminal(data_dir: Path, *args: str) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal: the exit code and what the terminal received
    (its ``\\r\\n`` line ends, the terminal's own, made ``\\n`` again)."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [str(SCRIPT), *args],
            stdout=follower,
            stderr=subprocess.DEVNULL,
            env=cli_env(data_dir, TERM="xterm-256color", COLUMNS="200"),
            timeout=60,
            check=False,
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed and drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    return process.returncode, output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_scheduler_logs_shows_control_characters_escaped_on_a_terminal_only(
    store: JobStore, tmp_path: Path
) -> None:
    failed_job(store, tmp_path, "esc", HOSTILE_LOG)
    code, shown = cli_on_terminal(tmp_path, "logs", "esc")
    assert code == 0
    assert shown == HOSTILE_SHOWN, repr(shown)
    # The failed run's tail in `scheduler show` too.
    code, shown = cli_on_terminal(tmp_path, "show", "esc")
    assert code == 0 and "\x1b]52" not in shown and "\x07" not in shown, repr(shown)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in shown, repr(shown)
    # Into a pipe nothing is escaped (click drops colour codes there, as it always has), and
    # as JSON the text is what the run wrote.
    piped = cli(tmp_path, "logs", "esc")
    assert piped.returncode == 0 and "\\x" not in piped.stdout, repr(piped.stdout)
    assert "\x1b]52;c;ZXZpbA==\x07" in piped.stdout and "\x9b2J\x00\x7f end" in piped.stdout
    code, shown = cli_on_terminal(tmp_path, "logs", "esc", "--json")
    assert code == 0 and json.loads(shown)["log"] == HOSTILE_LOG


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)


def _expect(lines: queue.Queue[str], wanted: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            if lines.get(timeout=0.2).rstrip("\n") == wanted:
                return
    raise AssertionError(f"{wanted!r} not printed within {seconds}s")


@pytest.mark.parametrize(("trigger", "code"), [(Trigger.PASS, 0), (Trigger.FAIL, 1)])
def test_scheduler_logs_follow_streams_and_exits_with_the_job(
    store: JobStore, tmp_path: Path, trigger: Trigger, code: int
) -> None:
    job = store.create(NewJob("live", REPO, "push", "d" * 40, 600, ref="refs/heads/main"))
    active = store.activate(job, slot_limit=10)
    assert isinstance(active, JobState)
    path = write_log(tmp_path, "live", 1, "")
    store.claim_run(active, "live#1", str(path))
    follower = subprocess.Popen(
        [str(SCRIPT), "logs", "live", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(follower.stdout, lines), daemon=True).start()
    try:
        with path.open("a") as log:
            log.write("step one\n")
            log.flush()
            _expect(lines, "step one")  # seen while the run goes
            log.write(f"step two with {NPM_TOKEN}\nno newline at the end")
        outcome = Outcome(None if trigger is Trigger.PASS else "exit_code", None, code)
        store.report("live", 1, trigger, actor="test", outcome=outcome)
        _expect(lines, "step two with ***")
        assert follower.wait(60) == code
        _expect(lines, "no newline at the end")
        assert follower.stderr is not None and "Traceback" not in follower.stderr.read()
    finally:
        follower.kill()
        follower.wait()
