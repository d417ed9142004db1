"""The wheel installed as a user would (``pipx install .``): a fresh virtualenv outside the
checkout, run from an empty folder. ``scheduler up`` finds its templates in the package and
DynamoDB Local in the user's cache (seeded from the checkout's, so nothing is downloaded)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scheduler.local.dynamodb_local import port_in_use

ROOT = Path(__file__).resolve().parents[2]
SECRET = "wheel-install-webhook-secret-0123456789"
# Ports of this test (18600-18699): the stack's HTTP and its DynamoDB Local.
HTTP_PORT, DYNAMODB_PORT = 18610, 18611


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def lock_pins_text(text: str) -> dict[str, str]:
    """``name==version`` lines (a lock's, or pip freeze's) by normalised name."""
    pins = {}
    for line in text.splitlines():
        name, found, version = line.split(" ")[0].partition("==")
        if found and name[:1].isalnum():
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def lock_pins(lock: Path) -> dict[str, str]:
    return lock_pins_text(lock.read_text())


@pytest.mark.timeout(900)  # pip builds and installs: about 1-2 minutes on a loaded machine
def test_the_installed_wheel_starts_a_stack_from_an_empty_folder(tmp_path: Path) -> None:
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."], ROOT)
    (wheel,) = wheels.glob("dynamo_scheduler-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    # The dependencies at the versions of the project's lock (its hashes stripped: the wheel
    # itself is not in it), else as the wheel's own requirements say, as pipx would.
    lock = ROOT / "requirements.lock"
    pins = lock_pins(lock) if lock.exists() else {}
    (tmp_path / "pins.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    python = str(venv / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "-q", "-c", str(tmp_path / "pins.txt"), str(wheel)],
        tmp_path,
    )
    frozen = run([python, "-m", "pip", "freeze"], tmp_path)
    installed = lock_pins_text(frozen)
    assert "boto3" in installed and "pyyaml" in installed and "cfn-flip" not in installed
    if pins:
        assert {name: pins.get(name) for name in installed} == installed
    built = time.monotonic() - started

    cache = tmp_path / "xdg-cache"
    (cache / "dynamo-scheduler").mkdir(parents=True)
    (cache / "dynamo-scheduler" / "dynamodb-local").symlink_to(ROOT / ".dynamodb-local")
    empty = tmp_path / "empty"
    empty.mkdir()
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(str(ROOT))
    )
    # Nothing of the checkout or of this session (SCHEDULER_* set by fixtures) leaks in.
    env = {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(cache),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "LANG": "C.UTF-8",
    }
    scheduler = str(venv / "bin" / "scheduler")

    where = run(
        [str(venv / "bin" / "python"), "-c", "import scheduler; print(scheduler.__file__)"],
        empty,
        env,
    )
    assert where.startswith(str(venv)), where
    version = run([scheduler, "--version"], empty, env)
    assert version == "scheduler 0.1.0\n"
    installed = json.loads(run([scheduler, "dynamodb-local", "install", "--json"], empty, env))
    assert installed == {
        "dir": str(cache / "dynamo-scheduler" / "dynamodb-local"),
        "installed": False,  # the seeded cache counts: its stamp matches the shipped lock
    }
    completion = run([scheduler, "--show-completion", "bash"], empty, {**env, "SHELL": "/bin/bash"})
    assert "_SCHEDULER_COMPLETE=complete_bash" in completion

    (empty / "scheduler.toml").write_text(
        '[defaults]\ncheckout = false\ncommand = ["true"]\ntimeout_seconds = 60\n'
    )
    assert not port_in_use(HTTP_PORT) and not port_in_use(DYNAMODB_PORT)
    output = tmp_path / "up.log"
    out = output.open("w")
    stack = subprocess.Popen(
        [
            scheduler,
            "up",
            "--config",
            "scheduler.toml",
            "--port",
            str(HTTP_PORT),
            "--dynamodb-port",
            str(DYNAMODB_PORT),
        ],
        cwd=empty,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,  # a file: a full pipe would stall the stack
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{HTTP_PORT}"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and stack.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert stack.poll() is None, output.read_text()[-3000:]
        assert health is not None and health.status_code == 200
        assert health.json()["status"] == "ok"
        up_after = time.monotonic() - started - built

        # The CLI run from the same folder finds the stack, and a job runs through it.
        sent = run([scheduler, "send-test-delivery", "--timeout", "90", "--json"], empty, env)
        job = json.loads(sent.strip().splitlines()[-1])
        assert job["status"] == "passed", job
        listed = json.loads(run([scheduler, "status", "demo/hello", "--json"], empty, env))
        assert [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
        out.close()
    assert stack.returncode == 0, output.read_text()[-3000:]
    assert not port_in_use(DYNAMODB_PORT), "DynamoDB Local outlived the stack"
    print(f"wheel built and installed in {built:.1f} s; stack answered in {up_after:.1f} s")
