"""A run is hostile code: in its sandbox it finds nothing of the scheduler (real bubblewrap).

Each test runs a hostile command through the local executor, as the stack does, and looks at
what it could read, write or reach.
"""

from __future__ import annotations

import ast
import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scheduler.config import parse_config
from scheduler.errors import ConfigurationError
from scheduler.local.executor import LocalExecutor
from scheduler.local.run_records import MARKER
from scheduler.local.sandbox import SANDBOX_HOME, Bubblewrap, find_sandbox
from scheduler.local.stack import sandbox_for
from scheduler.runs.executor import RunRequest, RunResult
from scheduler.runs.masking import masker_for
from tests.integration.runs.test_runs import Results

SECRET = "webhook-secret-value-that-must-never-leak-0123456789"
GIT_TOKEN = "ghp_tokenvaluethatmustneverleak0123456789"

# Walks everything a run could look at for the scheduler's secrets and data: every process's
# environment it can see (its ancestry included), the folders above its work tree, HOME, /tmp.
HOSTILE = r"""
import base64, os, sys
found = []
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            found.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))
            found.append(open(f'/proc/{pid}/cmdline', 'rb').read().decode('latin-1'))
        except OSError as exc:
            found.append(f'denied {pid}: {exc}')
print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
folder = os.getcwd()
for _ in range(12):
    folder = os.path.dirname(folder)
    try:
        print('ls', folder, sorted(os.listdir(folder)))
    except OSError as exc:
        print('ls', folder, 'denied', exc)
print('home', os.environ.get('HOME'), sorted(os.listdir(os.environ['HOME'])))
print('tmp', sorted(os.listdir('/tmp')))
data = os.environ['PLANTED']
print('planted', os.path.exists(data))
for target in ('/usr/planted-by-run', os.path.join(os.path.dirname(data), 'forged.json')):
    try:
        open(target, 'w').write('x')
        print('wrote', target)
    except OSError as exc:
        print('cannot write', target, type(exc).__name__)
blob = '\n'.join(found)
print('env-dump', base64.b64encode(blob.encode('latin-1')).decode())
"""


@pytest.fixture(scope="module")
def sandbox() -> Bubblewrap:
    return find_sandbox()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "stack.json").write_text('{"access_key_id": "stack-key"}')
    return folder


@pytest.fixture
def executor(data_dir: Path, sandbox: Bubblewrap) -> Iterator[tuple[LocalExecutor, Results]]:
    results = Results()
    scheduler_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(data_dir),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "SCHEDULER_GIT_TOKEN": GIT_TOKEN,
    }
    ex = LocalExecutor(data_dir / "runs", results, base_env=scheduler_env, sandbox=sandbox)
    yield ex, results
    ex.close()


def request(job_id: str, command: tuple[str, ...], **changes: object) -> RunRequest:
    fields: dict[str, object] = {
        "job_id": job_id,
        "repo": "o/r",
        "sha": "a" * 40,
        "attempt": 1,
        "command": command,
        "timeout_seconds": 60,
        "sandbox": True,
    }
    fields.update(changes)
    return RunRequest(**fields)  # type: ignore[arg-type]


def run(ex: LocalExecutor, results: Results, req: RunRequest) -> tuple[RunResult, str]:
    run_id = ex.start(req)
    assert run_id is not None and ex.wait(run_id, 120)
    return results.items[-1], ex.log_path(req).read_text()


def test_a_hostile_run_finds_no_secret_and_none_of_the_scheduler(
    executor: tuple[LocalExecutor, Results], data_dir: Path
) -> None:
    ex, results = executor
    planted = data_dir / "stack.json"
    # The planted file's path is given to the run; the run must not find the file there.
    req = request("hostile", ("/usr/bin/env", f"PLANTED={planted}", sys.executable, "-c", HOSTILE))
    result, log = run(ex, results, req)
    assert result.passed, log
    dump = base64.b64decode(log.split("env-dump ", 1)[1].split()[0]).decode("latin-1")
    for secret in (SECRET, GIT_TOKEN):
        assert secret not in log and secret not in dump
        assert base64.b64encode(secret.encode()).decode()[:20] not in log
    assert "planted False" in log  # the data folder (stack file, database) is not there
    assert f"home {SANDBOX_HOME} []" in log
    # /tmp is the sandbox's own: nothing of the machine's, only the ways to what is bound
    # (the work tree; the scheduler's Python when it lives there, as in a fresh clone).
    seen_in_tmp = set(ast.literal_eval(log.split("\ntmp ", 1)[1].split("\n", 1)[0]))
    bound = [data_dir, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    assert seen_in_tmp <= {b.parts[2] for b in bound if b.parts[:2] == ("/", "tmp")}, log
    # Above the work tree, only the folders that lead to it: no stack file, no database.
    assert "ls " + str(data_dir) + " ['runs']" in log, log
    assert "cannot write /usr/planted-by-run" in log
    assert not (data_dir / "forged.json").exists()
    # Its own PID namespace: a handful of processes, none of the scheduler's.
    pids = [int(p) for p in log.split("pids [", 1)[1].split("]", 1)[0].split(",")]
    assert max(pids) < 100 and len(pids) <= 5


def test_without_network_a_run_cannot_reach_the_machine(
    executor: tuple[LocalExecutor, Results],
) -> None:
    ex, results = executor
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "    print('reached')\n"
            "except OSError as exc:\n"
            "    print('unreachable', exc)\n"
        )
        offline, log = run(
            ex, results, request("offline", (sys.executable, "-c", probe), network=False)
        )
        assert offline.passed and "unreachable" in log, log
        online, log = run(ex, results, request("online", (sys.executable, "-c", probe)))
        assert online.passed and "reached" in log, log


def test_a_cancel_kills_everything_the_sandboxed_command_started(
    executor: tuple[LocalExecutor, Results],
) -> None:
    ex, results = executor
    marker = f"sandboxed-leftover-{time.monotonic_ns()}"
    script = f"sleep 300 & exec -a {marker} sleep 300"
    req = request("cancelled", ("bash", "-c", script))
    run_id = ex.start(req)
    assert run_id is not None
    deadline = time.monotonic() + 60
    while not _processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_named(marker), "the sandboxed command never started"
    ex.cancel(run_id)
    assert ex.wait(run_id, 60)
    assert results.items[-1].cancelled
    deadline = time.monotonic() + 30
    while _sleepers_of(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_named(marker) and not _sleepers_of(run_id)


def _processes_named(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0] == marker and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _sleepers_of(run_id: str) -> list[psutil.Process]:
    """The run's `sleep 300` left in the background, found by the marker in its environment."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == ["sleep", "300"] and proc.info["status"] != "zombie":
            try:
                if proc.environ().get(MARKER) == run_id:
                    found.append(proc)
            except psutil.Error:
                continue
    return found


def test_a_request_for_a_sandbox_never_runs_unsandboxed(tmp_path: Path) -> None:
    results = Results()
    ex = LocalExecutor(tmp_path, results, base_env={"PATH": "/usr/bin:/bin"})
    try:
        req = request("nosandbox", ("sh", "-c", "echo ran"))
        result, log = run(ex, results, req)
    finally:
        ex.close()
    assert not result.passed and "ran" not in log.replace("cannot start", "")
    assert "no sandbox" in log


def test_no_bubblewrap_refuses_a_configuration_that_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    find_sandbox.cache_clear()  # the machine's sandbox is probed once per process
    with pytest.raises(ConfigurationError, match="bubblewrap is not installed"):
        sandbox_for(parse_config(""))
    # An explicit opt-out needs none (and is logged as a warning at every start).
    assert sandbox_for(parse_config('[defaults]\nsandbox = "off"\n')) is None


def test_the_probe_sandbox_runs_a_plain_command(sandbox: Bubblewrap, tmp_path: Path) -> None:
    argv = sandbox.wrap(["true"], workdir=tmp_path, env={"PATH": "/usr/bin:/bin"}, network=True)
    assert subprocess.run(argv, check=False).returncode == 0


def test_a_run_gets_the_secrets_its_repository_names_and_they_are_masked(
    tmp_path: Path, sandbox: Bubblewrap
) -> None:
    results = Results()
    env = {
        "PATH": "/usr/bin:/bin",
        "SCHEDULER_SECRET_NPM_TOKEN": "npm-secret-value-0123456789",
        "SCHEDULER_SECRET_DEPLOY_KEY": "deploy-secret-value-0123456789",
    }
    ex = LocalExecutor(
        tmp_path,
        results,
        base_env=env,
        sandbox=sandbox,
        mask_for=masker_for(lambda _repo: (), environ=env),
    )
    try:
        show = ("sh", "-c", 'echo "npm=$NPM_TOKEN deploy=${DEPLOY_KEY:-unset}"')
        result, log = run(ex, results, request("secret", show, secrets=("NPM_TOKEN",)))
        # The run has the one it is given, not the other; what is shown of it is masked.
        assert result.passed and "npm=npm-secret-value-0123456789 deploy=unset" in log
        assert "npm-secret" not in result.summary and "npm=***" in result.summary
        missing, log = run(ex, results, request("missing", show, secrets=("NOT_SET",)))
        assert not missing.passed and missing.reason == "error"
        assert "secret NOT_SET is not set" in missing.summary and "npm=" not in log
    finally:
        ex.close()


def test_read_only_folders_under_tmp_are_not_hidden_by_the_sandboxs_own_tmp(
    sandbox: Bubblewrap, tmp_path: Path
) -> None:
    """A checkout under /tmp (its virtualenv with it) runs its commands in the sandbox: the
    sandbox's own /tmp is mounted before the folders bound below it (a fresh clone in CI)."""
    prefix = tmp_path / "venv" / "bin"
    prefix.mkdir(parents=True)
    tool = prefix / "tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    boxed = Bubblewrap(sandbox.program, read_only=(str(tmp_path / "venv"),))
    argv = boxed.wrap([str(tool)], workdir=work, env={"PATH": "/usr/bin:/bin"}, network=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout == "tool ran\n", result.stderr
