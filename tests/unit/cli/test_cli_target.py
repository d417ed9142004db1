"""The stack file, the CLI's choice of DynamoDB and URL, and send-test-delivery's wait (no
server: files, processes and an httpx mock transport)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler import stack_file
from scheduler.cli import sample_delivery
from scheduler.cli.target import resolve, webhook_target
from scheduler.errors import ConfigurationError, JobNotFound, StackNotRunning, WaitTimedOut
from scheduler.settings import LOCAL_CREDENTIALS, Settings
from scheduler.stack_file import StackInfo

ENV = {"AWS_ACCESS_KEY_ID": "AKIAREAL", "AWS_SECRET_ACCESS_KEY": "real", "AWS_REGION": "eu-west-1"}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def info(pid: int, **changes: Any) -> StackInfo:
    fields: dict[str, Any] = {
        "pid": pid,
        "url": "http://127.0.0.1:18080",
        "dynamodb_endpoint": "http://127.0.0.1:18000",
        "region": "us-east-1",
        "data_dir": "/somewhere/.scheduler",
        "tables": {"jobs": "p-jobs", "repos": "p-repos"},
        "config": "/somewhere/scheduler.toml",
        **changes,
    }
    return StackInfo(**fields)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / ".scheduler"


def settings(data_dir: Path, **env: str) -> Settings:
    return Settings.from_env({**ENV, "SCHEDULER_DATA_DIR": str(data_dir), **env})


def test_stack_file_round_trip_is_atomic_and_removed_only_by_its_writer(data_dir: Path) -> None:
    written = info(os.getpid())
    path = stack_file.write(data_dir, written)
    assert path == data_dir / "stack.json"
    assert stack_file.read(data_dir) == written
    assert [p.name for p in data_dir.iterdir()] == ["stack.json"]  # no temporary left
    stack_file.remove(data_dir, os.getpid() + 1)  # another stack's stop leaves it alone
    assert path.exists()
    stack_file.remove(data_dir, os.getpid())
    assert not path.exists()
    assert stack_file.read(data_dir) is None


@pytest.mark.parametrize("text", ["{not json", "[]", '{"pid": 0, "url": "", "x": 1}', "{}"])
def test_a_malformed_stack_file_is_a_configuration_error_naming_it(
    data_dir: Path, text: str
) -> None:
    data_dir.mkdir()
    (data_dir / "stack.json").write_text(text)
    with pytest.raises(ConfigurationError, match=r"stack\.json is not one `scheduler up` wrote"):
        stack_file.read(data_dir)


def test_pid_alive_tells_running_from_gone_and_zombie() -> None:
    assert stack_file.pid_alive(os.getpid())
    assert not stack_file.pid_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            pass  # exited, not reaped yet
        assert not stack_file.pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_a_running_stack_file_points_the_settings_at_it(data_dir: Path) -> None:
    stack_file.write(data_dir, info(os.getpid()))
    target = resolve(settings(data_dir))
    chosen = target.settings
    assert chosen.dynamodb_endpoint == "http://127.0.0.1:18000"
    assert (chosen.tables.jobs, chosen.tables.repos) == ("p-jobs", "p-repos")
    assert chosen.tables.dead_letters == "scheduler-dead-letters"  # not in the file: default
    assert chosen.region == "us-east-1"
    # Real credentials from the environment never go to the local emulator.
    assert (chosen.access_key_id, chosen.secret_access_key) == LOCAL_CREDENTIALS
    assert chosen.session_token is None
    assert chosen.config_path == Path("/somewhere/scheduler.toml")
    assert target.where == (
        f"DynamoDB at http://127.0.0.1:18000 (local stack from {data_dir}/stack.json,"
        f" pid {os.getpid()})"
    )
    own = resolve(settings(data_dir, SCHEDULER_CONFIG="/mine.toml")).settings
    assert own.config_path == Path("/mine.toml")


def test_an_explicit_endpoint_wins_even_over_a_stale_file(data_dir: Path) -> None:
    stack_file.write(data_dir, info(dead_pid()))
    target = resolve(settings(data_dir, SCHEDULER_DYNAMODB_ENDPOINT="http://db:9000"))
    assert target.settings.dynamodb_endpoint == "http://db:9000"
    assert target.where == "DynamoDB at http://db:9000 (SCHEDULER_DYNAMODB_ENDPOINT)"


def test_a_stale_stack_file_never_falls_back_to_aws(data_dir: Path) -> None:
    pid = dead_pid()
    stack_file.write(data_dir, info(pid))
    with pytest.raises(StackNotRunning) as raised:
        resolve(settings(data_dir))
    assert str(raised.value) == (
        f"the local stack in {data_dir} (pid {pid}) is not running: start it with"
        f" `scheduler up` (or remove {data_dir}/stack.json to stop using it)"
    )
    assert raised.value.exit_code == 2
    with pytest.raises(StackNotRunning):
        webhook_target(settings(data_dir), None)


def test_with_no_stack_file_aws_is_chosen_and_said(data_dir: Path) -> None:
    target = resolve(settings(data_dir))
    assert target.settings.dynamodb_endpoint is None
    assert target.settings.access_key_id == "AKIAREAL"
    assert target.where.startswith("DynamoDB on AWS (region eu-west-1; no local stack in ")
    assert target.warning is None
    (data_dir / "dynamodb").mkdir(parents=True)  # a stack lived here, and was stopped
    warned = resolve(settings(data_dir))
    assert warned.settings.dynamodb_endpoint is None
    assert warned.warning == (
        f"no local stack is running from {data_dir} (start it with `scheduler up`):"
        " using DynamoDB on AWS (region eu-west-1)"
    )


def test_the_webhook_url_is_the_option_then_the_stack_then_the_default(data_dir: Path) -> None:
    assert webhook_target(settings(data_dir), None).url == "http://127.0.0.1:8080"
    stack_file.write(data_dir, info(os.getpid()))
    assert webhook_target(settings(data_dir), None).url == "http://127.0.0.1:18080"
    assert webhook_target(settings(data_dir), "http://elsewhere:1/").url == "http://elsewhere:1"


# -- following a job ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def job(status: str, attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"job_id": "j1", "status": status, "attempt": attempt, **extra}


def api(answers: Iterator[httpx.Response | Exception]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handle))


def follow(client: httpx.Client, timeout: float = 60) -> tuple[dict[str, Any], list[str]]:
    clock, seen = FakeClock(), []
    final = sample_delivery.follow(
        client,
        "http://s",
        "j1",
        timeout=timeout,
        on_change=lambda j: seen.append(f"{j['status']}/{j['attempt']}"),
        clock=clock,
        sleep=clock.sleep,
    )
    return final, seen


def test_follow_sees_an_automatic_retry_through_to_the_pass() -> None:
    states = [job("pending"), job("active"), job("active"), job("failed"), job("failed")]
    states += [job("pending", 2), job("active", 2), job("passed", 2)]
    final, seen = follow(api(iter(httpx.Response(200, json=s) for s in states)))
    assert final["status"] == "passed"
    assert seen == ["pending/1", "active/1", "failed/1", "pending/2", "active/2", "passed/2"]


def test_follow_waits_out_transient_failures_and_gives_a_failed_job_time_to_settle() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"error": "store unavailable"}),
        *(httpx.Response(200, json=job("failed", reason="exit_code", exit_code=1)),) * 100,
    ]
    clock_final, seen = follow(api(iter(answers)))
    assert clock_final["status"] == "failed" and seen == ["failed/1"]


def test_follow_is_bounded() -> None:
    with pytest.raises(WaitTimedOut, match=r"job j1 is still active after 5 s"):
        follow(api(iter([httpx.Response(200, json=job("active"))] * 1000)), timeout=5)
    with pytest.raises(ConfigurationError, match="lost the scheduler at http://s"):
        follow(api(iter([httpx.ConnectError("refused")] * 1000)), timeout=600)
    with pytest.raises(JobNotFound):
        follow(api(iter([httpx.Response(404, json={"error": "job j1 not found"})])))


def test_log_tail_is_the_last_lines_or_nothing() -> None:
    text = "\n".join(f"line {n}" for n in range(50))
    client = api(iter([httpx.Response(200, text=text), httpx.Response(404, json={})]))
    assert sample_delivery.log_tail(client, "http://s", "j1", 1, 3) == [
        "line 47",
        "line 48",
        "line 49",
    ]
    assert sample_delivery.log_tail(client, "http://s", "j1", 1, 3) is None


def test_status_line_says_why_and_how_long() -> None:
    failed = job("failed", reason="exit_code", exit_code=3, activated_at=1000, finished_at=3500)
    assert sample_delivery.status_line(failed) == "job j1: failed (attempt 1, exit_code 3, 2.5s)"
    assert sample_delivery.status_line(job("active")) == "job j1: active (attempt 1)"


def test_an_answer_that_is_not_the_schedulers_is_a_clear_error() -> None:
    request = httpx.Request("POST", "http://s/webhook")
    ok = httpx.Response(202, json={"job_id": "j1"}, request=request)
    assert sample_delivery.answer_of(ok) == {"job_id": "j1"}
    html = httpx.Response(200, text="<html>hi</html>", request=request)
    with pytest.raises(ConfigurationError, match=r"http://s/webhook answered HTTP 200 without"):
        sample_delivery.answer_of(html)
