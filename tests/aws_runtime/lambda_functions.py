"""The template's functions as AWS runs them: each execution environment its own OS process
(``lambda_worker.py``) with the environment the template gives the function, its references
resolved for the local stand-ins; a pool of environments per function, one invocation at a
time each; a killed environment fails its invocation and is replaced by a cold start."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scheduler.db.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
WORKER = Path(__file__).with_name("lambda_worker.py")

__all__ = ["FunctionPool", "FunctionProcess", "InvocationFailed", "function_environment"]


class InvocationFailed(Exception):
    """The invocation returned no answer: a function error, a timeout or a dead environment."""


def function_environment(
    template: Mapping[str, Any], logical_id: str, refs: Mapping[str, str], stack: str = "chaos"
) -> dict[str, str]:
    """The function's environment as the template gives it (globals and its own), each
    ``!Ref`` taken from ``refs``; conditions take their else branch (optional parts off)."""
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    own = template["Resources"][logical_id]["Properties"].get("Environment", {})
    variables = {**shared.get("Variables", {}), **own.get("Variables", {})}
    env: dict[str, str] = {}
    for name, given in variables.items():
        value = given["Fn::If"][2] if isinstance(given, dict) and "Fn::If" in given else given
        if value == {"Ref": "AWS::NoValue"}:
            continue
        if isinstance(value, dict) and set(value) == {"Ref"}:
            env[name] = refs[value["Ref"]]
        elif isinstance(value, dict) and set(value) == {"Fn::Sub"}:
            env[name] = value["Fn::Sub"].replace("${AWS::StackName}", stack)
        else:
            assert isinstance(value, str | int), (name, value)
            env[name] = str(value)
    return env


def function_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    resource = template["Resources"][logical_id]
    assert resource["Type"] == "AWS::Serverless::Function", logical_id
    return dict(resource["Properties"])


class FunctionProcess:
    """One execution environment of a function (a process that serves one call at a time)."""

    def __init__(self, name: str, handler: str, env: Mapping[str, str], log: Path) -> None:
        self.name, self.handler, self.env, self.log = name, handler, dict(env), log
        self.process: subprocess.Popen[bytes] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self.busy = False
        self.cold_starts = 0
        self.lock = threading.Lock()

    def _start(self) -> None:
        self._answers = queue.Queue()
        answers = self._answers
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER), self.handler],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        process = self.process

        def read() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                answers.put(raw.decode())
            answers.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.cold_starts += 1
        ready = answers.get(timeout=120)
        if ready is None or "ready" not in json.loads(ready):
            raise InvocationFailed(f"{self.name} failed to start: {self.tail()}")

    def invoke(self, event: Mapping[str, Any], timeout: float) -> Any:
        """The handler's answer; raises :class:`InvocationFailed` as Lambda reports an error."""
        with self.lock:
            self.busy = True
            try:
                return self._invoke(event, timeout)
            finally:
                self.busy = False

    def _invoke(self, event: Mapping[str, Any], timeout: float) -> Any:
        if self.process is None or self.process.poll() is not None:
            self._start()  # a cold start is part of the invocation, as on Lambda
        assert self.process is not None and self.process.stdin is not None
        deadline_ms = int((time.time() + timeout) * 1000)
        try:
            self.process.stdin.write(
                (json.dumps({"event": event, "deadline_ms": deadline_ms}) + "\n").encode()
            )
            self.process.stdin.flush()
            line = self._answers.get(timeout=timeout)
        except (BrokenPipeError, OSError, queue.Empty) as exc:
            self.kill()  # Lambda ends an environment that timed out
            raise InvocationFailed(f"{self.name}: {type(exc).__name__}") from exc
        if line is None:
            raise InvocationFailed(f"{self.name}: the runtime exited (killed mid-invocation)")
        reply = json.loads(line)
        if "error" in reply:
            raise InvocationFailed(f"{self.name}: {reply['error']}: {reply['message']}")
        return reply["result"]

    def kill(self) -> bool:
        """SIGKILL the environment (whatever it is doing); True if it was alive."""
        process = self.process
        if process is None or process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        return True

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class FunctionPool:
    """A function's execution environments: an invocation takes an idle one (a new one is
    started up to ``size``; Lambda's concurrency), so concurrent calls run in separate
    processes."""

    def __init__(
        self,
        logical_id: str,
        refs: Mapping[str, str],
        extra_env: Mapping[str, str],
        logs: Path,
        size: int,
    ) -> None:
        template = load_template(TEMPLATE)
        props = function_properties(template, logical_id)
        self.name = logical_id
        self.timeout = float(props.get("Timeout", 3))
        self.environment = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            **extra_env,
            **function_environment(template, logical_id, refs),
        }
        self.members = [
            FunctionProcess(
                f"{logical_id}-{n}",
                str(props["Handler"]),
                self.environment,
                logs / f"{logical_id}-{n}.log",
            )
            for n in range(size)
        ]
        self._idle: queue.Queue[FunctionProcess] = queue.Queue()
        for member in self.members:
            self._idle.put(member)
        self.invocations = 0
        self.errors = 0

    def warm(self) -> None:
        """Start every environment (their init phases), in parallel."""
        threads = [threading.Thread(target=m._start) for m in self.members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def invoke(self, event: Mapping[str, Any], member: int | None = None) -> Any:
        """Invoke on an idle environment (or on environment ``member``: a stream lane's own)."""
        if member is not None:
            chosen = self.members[member]
            return self._counted(chosen, event)
        chosen = self._idle.get()
        try:
            return self._counted(chosen, event)
        finally:
            self._idle.put(chosen)

    def _counted(self, chosen: FunctionProcess, event: Mapping[str, Any]) -> Any:
        self.invocations += 1
        try:
            return chosen.invoke(event, self.timeout)
        except InvocationFailed:
            self.errors += 1
            raise

    def kill_busy(self) -> int:
        """SIGKILL every environment that is in an invocation now; how many were."""
        return sum(1 for m in self.members if m.busy and m.kill())

    def stop(self) -> None:
        for member in self.members:
            member.kill()

    def cold_starts(self) -> int:
        return sum(m.cold_starts for m in self.members)
