"""`scheduler up` as an attacker meets it: a hostile pull request's run, and the network.

The run executes in the stack's sandbox with the stack's own secrets in its environment
ancestry; it looks for them, for the data folder and for the database, and finds none.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import free_port

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")
SECRET = "stack-security-webhook-secret-0123456789abcdef"
GIT_TOKEN = "ghp_stacksecuritytoken0123456789abcdefXYZ"

# Everything a hostile command would try: every environment it can see (its ancestry
# included), the stack file, and the database on the stack's port with made-up credentials.
HOSTILE = r"""
import base64, os, sys
import boto3
seen = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for name in ('environ', 'cmdline'):
            try:
                seen.append(open(f'/proc/{pid}/{name}', 'rb').read().decode('latin-1'))
            except OSError:
                pass
print('dump', base64.b64encode('\n'.join(seen).encode('latin-1')).decode())
print('stack-file', os.path.exists(sys.argv[2]))
ddb = boto3.client('dynamodb', endpoint_url=sys.argv[1], region_name='us-east-1',
                   aws_access_key_id='local', aws_secret_access_key='local')
print('tables', ddb.list_tables()['TableNames'])
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str], int]]:
    data = tmp_path / "data"
    dynamodb_port = free_port()
    argv = [
        sys.executable,
        "-c",
        HOSTILE,
        f"http://127.0.0.1:{dynamodb_port}",
        str(data / "stack.json"),
    ]
    config = tmp_path / "scheduler.toml"
    config.write_text(
        f"[defaults]\ncheckout = false\ncommand = {json.dumps(argv)}\ntimeout_seconds = 120\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AWS_"))}
    env.update(
        GITHUB_WEBHOOK_SECRET=SECRET, SCHEDULER_GIT_TOKEN=GIT_TOKEN, SCHEDULER_CONFIG=str(config)
    )
    up = ["up", "--port", str(free_port()), "--dynamodb-port", str(dynamodb_port)]
    process = subprocess.Popen(
        [SCHEDULER, *up, "--data-dir", str(data), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stack.log", "a"),  # noqa: SIM115 - the child owns it
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, (tmp_path / "stack.log").read_text()[-3000:]
    try:
        yield json.loads(line)["url"], data, process, dynamodb_port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def deliver(url: str) -> str:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": "c" * 40,
            "repository": {"full_name": "evil/pr"},
            "sender": {"login": "mallory"},
        }
    ).encode()
    response = httpx.post(
        f"{url}/webhook",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "hostile-1",
            "X-Hub-Signature-256": sign(SECRET.encode(), body),
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_a_hostile_run_finds_no_secret_no_data_and_no_database(
    stack: tuple[str, Path, subprocess.Popen[str], int],
) -> None:
    url, data, _process, _port = stack
    job_id = deliver(url)
    deadline = time.monotonic() + 180
    job: dict[str, object] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("passed", "failed"):
            break
        time.sleep(0.5)
    assert job.get("status") == "passed", job
    # The raw log on disk: what the run printed, unmasked.
    log = next((data / "runs" / "logs").glob("*/attempt-1.log")).read_text()
    dump = base64.b64decode(log.split("dump ", 1)[1].split()[0]).decode("latin-1")
    for secret in (SECRET, GIT_TOKEN):
        assert secret not in dump and secret not in log
    assert "stack-file False" in log
    assert "tables []" in log  # the stack's tables are kept under a key the run never sees


def test_the_stack_keeps_its_data_to_itself_and_to_loopback(
    stack: tuple[str, Path, subprocess.Popen[str], int],
) -> None:
    url, data, process, dynamodb_port = stack
    deliver(url)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "stack.json").stat().st_mode) == 0o600
    world_readable = [
        path
        for path in data.rglob("*")
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077
    ]
    assert not world_readable
    # DynamoDB Local (the stack's child JVM) listens on loopback only.
    java = [
        child
        for child in psutil.Process(process.pid).children(recursive=True)
        if "java" in child.name()
    ]
    assert java, "the stack's DynamoDB Local was not found"
    listening = [
        conn.laddr
        for conn in java[0].net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.port == dynamodb_port for addr in listening), listening
    assert all(addr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for addr in listening), listening
    # The CLI run from the same folder finds the stack, key and all.
    status = subprocess.run(
        [SCHEDULER, "status", "evil/pr", "--json"],
        cwd=data.parent,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AWS_"))}
        | {"SCHEDULER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "evil/pr" in status.stdout
