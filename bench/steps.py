"""A pipeline of 1 + 48 + 1 steps through the local stack, against 50 independent jobs.

The whole local stack (:class:`~scheduler.local.stack.LocalStack`: its own DynamoDB Local on
disk, the stream runner, the local executor with ``--max-runs 8``, the reaper, the HTTP server)
runs *in this process*, so that its DynamoDB requests can be counted. One repository,
``bench/steps`` (concurrency 8, ``checkout = true``, sandboxed unless ``--unsandboxed``), is
fetched from a local git origin with three commits:

* a commit with no ``.scheduler/pipeline.yml``: each push of it is one independent job
  running ``true`` (its pipeline file is looked for and not found, as for any commit);
* a commit whose ``.scheduler/pipeline.yml`` has ``root``, then ``matrix`` (48 variants, needs
  ``root``), then ``join`` (needs ``matrix``), each running ``true``: one push is a run of 50
  steps;
* a small pipeline (1 + 2 + 1) pushed once first with one independent job, not counted (the
  mirror, the sandbox and the stack's code paths warm up).

Each round has two phases, their order alternating from round to round: **pipeline** (one
signed push; the run is polled every 0.2 s until it ends, then every step is read with ``GET
/jobs/<run>.sN``) and **independent** (50 signed pushes at once from 8 client threads; then
every job is read). Times come from the jobs' own ``started_at``, ``finished_at`` and history
(stack and client share the machine's clock), from the client's clock when each 202 came back:

* **202 -> last of 48 started**: the latest ``started_at`` of the matrix steps;
* **fan-in latency** of a dependent step: when it left ``blocked`` (its history's ``blocked ->
  pending`` entry: the fan-in's unblock) minus when its last need passed (that need's
  ``finished_at``): the root for the 48, the last of the 48 for ``join``. Also shown to its
  ``started_at``, which adds the wait for one of the 8 slots (48 steps share them);
* **time** of each phase: from the (first) 202 to the last step (job) started and to the last
  finished; the ratio pipeline / independent is the target's.

**Write requests** are counted for real: every botocore client the process makes (boto3's and
PynamoDB's alike) gets a ``before-parameter-build.dynamodb`` hook that records each request's
operation and table(s), and an ``after-call`` hook its outcome (refused conditional writes are
requests too, and counted). A write is a ``PutItem``, ``UpdateItem``, ``DeleteItem``,
``TransactWriteItems`` or ``BatchWriteItem`` (one transaction or batch is one request). A
phase's window runs from its first delivery until no write but a checkpoint came for 1.5 s after
its last job ended, so it holds everything the phase caused: the deliveries' creates, the run's
own writes (step count, expansion, settle), the steps' unblocks, activations, claims, reports and
hand-offs, and anything the reaper or the reconciliation wrote meanwhile (shown by thread).
**Per step** is the window's writes, the stream runner's checkpoints (table ``runner-state``)
excluded, divided by 50 (the run job's own writes included, so they are shared by its steps);
per independent job likewise. The checkpoints are printed beside them. Reads are counted the
same way (the fan-in reads every step of its run at each step's end), to see where time goes;
each round also prints the requests sent between the last matrix step's finish and a little
after the join's unblock, with when each was sent and how long its answer took (waits for the
GIL included): the stream's delay, the fan-in's reads (a consistent ``BatchGetItem`` of every
step) and its write.

Targets (issue 25): fan-in p50 < 100 ms, <= 4 write requests per step, the pipeline within 1.5
times the time of the 50 independent jobs.

Run from the project root (about a minute a round)::

    .venv/bin/python bench/steps.py [--rounds 3] [--width 48] [--jobs 50] [--unsandboxed]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import httpx
from common import signed_push
from stats import median, summary

from scheduler.local.dynamodb_local import port_in_use
from scheduler.local.logs import configure_logging
from scheduler.local.stack import LocalStack, StackOptions
from scheduler.settings import Settings

SECRET = "bench-steps-secret-0123456789abcdef"
REPO = "bench/steps"
CONCURRENCY = 8
PORTS = range(18400, 18500)
TERMINAL = {"passed", "failed", "cancelled", "skipped", "superseded", "timed_out"}
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
TARGET_FAN_IN_MS = 100.0
TARGET_WRITES_PER_STEP = 4.0
TARGET_RATIO = 1.5
QUIET_SECONDS = 1.5

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "PATH": "/usr/bin:/bin:/usr/local/bin",
    "HOME": "/nonexistent",
}


# --- counting DynamoDB requests ----------------------------------------------------------------


@dataclass
class Request:
    at: float  # time.time() when it was sent
    operation: str
    tables: tuple[str, ...]
    thread: str
    outcome: str = "?"  # "ok", an error code, or "?" (no answer: a connection failure)
    took: float = 0.0  # seconds until the answer came
    keys: int = 0  # items asked for by a BatchGetItem

    @property
    def write(self) -> bool:
        return self.operation in WRITES


class RequestLog:
    """Every DynamoDB request of every botocore client made once :meth:`install` ran."""

    def __init__(self) -> None:
        self.requests: list[Request] = []  # list.append is atomic: no lock needed
        self._original: Any = None

    def install(self) -> None:
        original = self._original = botocore.session.Session.create_client
        log = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            made = original(session, *args, **kwargs)
            made.meta.events.register("before-parameter-build.dynamodb", log._sent)
            made.meta.events.register("after-call.dynamodb", log._answered)
            return made

        botocore.session.Session.create_client = create_client

    def uninstall(self) -> None:
        if self._original is not None:
            botocore.session.Session.create_client = self._original

    def _sent(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        keys = 0
        if "TableName" in params:
            tables: tuple[str, ...] = (params["TableName"],)
        elif "TransactItems" in params:
            tables = tuple(
                action["TableName"] for item in params["TransactItems"] for action in item.values()
            )
        elif "RequestItems" in params:
            tables = tuple(params["RequestItems"])
            keys = sum(len(asked.get("Keys", ())) for asked in params["RequestItems"].values())
        else:
            tables = ()
        request = Request(time.time(), model.name, tables, threading.current_thread().name)
        request.keys = keys
        context["bench_request"] = request
        self.requests.append(request)

    @staticmethod
    def _answered(
        http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        request = context.get("bench_request")
        if request is not None:
            ok = http_response.status_code < 300
            request.outcome = "ok" if ok else str(parsed.get("Error", {}).get("Code", "error"))
            request.took = time.time() - request.at

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        return self.requests[mark:]

    def wait_quiet(
        self, checkpoints: str, seconds: float = QUIET_SECONDS, cap: float = 20.0
    ) -> None:
        """Until no write but a checkpoint came for ``seconds`` (at most ``cap`` seconds)."""
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            last = next(
                (r.at for r in reversed(self.requests) if r.write and checkpoints not in r.tables),
                0.0,
            )
            if time.time() - last >= seconds:
                return
            time.sleep(0.1)


def thread_group(name: str) -> str:
    """A thread's name without its numbers (``Thread-7 (process_request_thread)`` ->
    ``Thread (process_request_thread)``, the HTTP server's)."""
    return re.sub(r"[-_]\d+", "", name) or name


# --- the origin and the stack ------------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def pipeline_file(width: int, name: str) -> str:
    values = ", ".join(f'"{n:02d}"' for n in range(1, width + 1))
    return (
        f"# {name}\n"
        "steps:\n"
        '  - key: root\n    command: ["true"]\n'
        f"  - key: matrix\n    needs: [root]\n    matrix: {{n: [{values}]}}\n"
        '    command: ["true"]\n'
        '  - key: join\n    needs: [matrix]\n    command: ["true"]\n'
    )


@dataclass(frozen=True)
class Origin:
    path: Path
    plain: str  # no pipeline file
    pipeline: str  # 1 + width + 1 steps
    warm: str  # 1 + 2 + 1 steps


def make_origin(folder: Path, width: int) -> Origin:
    folder.mkdir(parents=True)
    git(folder, "init", "--quiet", "-b", "main")
    (folder / "README").write_text("bench\n")
    git(folder, "add", "README")
    git(folder, "commit", "--quiet", "-m", "plain")
    plain = git(folder, "rev-parse", "HEAD")
    shas = []
    for steps, name in ((width, "measured"), (2, "warm-up")):
        (folder / ".scheduler").mkdir(exist_ok=True)
        (folder / ".scheduler" / "pipeline.yml").write_text(pipeline_file(steps, name))
        git(folder, "add", ".scheduler/pipeline.yml")
        git(folder, "commit", "--quiet", "-m", f"pipeline of {steps}")
        shas.append(git(folder, "rev-parse", "HEAD"))
    return Origin(folder, plain, shas[0], shas[1])


def free_ports(count: int) -> list[int]:
    ports = [port for port in PORTS if not port_in_use(port)][:count]
    if len(ports) < count:
        raise RuntimeError(f"fewer than {count} free ports in {PORTS.start}-{PORTS.stop - 1}")
    return ports


@contextmanager
def local_stack(tmp: Path, origin: Origin, *, sandbox: bool) -> Iterator[LocalStack]:
    """The whole stack in this process, as ``scheduler up --max-runs 8`` runs it."""
    config = tmp / "scheduler.toml"
    config.write_text(
        f'[defaults]\ncommand = ["true"]\ntimeout_seconds = 120\n'
        f'concurrency = {CONCURRENCY}\nsandbox = "{"on" if sandbox else "off"}"\n'
        f'[repos."{REPO}"]\nclone_url = "{origin.path}"\n'
    )
    settings = Settings.from_env({"GITHUB_WEBHOOK_SECRET": SECRET, "SCHEDULER_CONFIG": str(config)})
    http_port, dynamodb_port = free_ports(2)
    options = StackOptions(
        port=http_port,
        dynamodb_port=dynamodb_port,
        data_dir=tmp / "data",
        max_parallel_runs=CONCURRENCY,
    )
    with open(tmp / "stack.log", "a", encoding="utf-8") as log_file:
        configure_logging(logging.INFO, log_file)  # as `scheduler up` logs, to a file
        previous = os.umask(0o077)  # as `scheduler up` (serve) does
        stack = LocalStack(settings, options)
        try:
            yield stack.start()
        finally:
            stack.stop()
            os.umask(previous)


# --- deliveries and jobs -----------------------------------------------------------------------


def deliver(client: httpx.Client, url: str, sha: str, branch: str) -> tuple[str, float]:
    """One signed push of ``sha`` to ``branch``; (job id, epoch seconds when the 202 came back).

    Each push names a branch of its own: a second push of a commit to the same branch while
    the first is queued is one job, not two (the trigger guard).
    """
    body, headers = signed_push(SECRET, REPO, branch, sha)
    response = client.post(f"{url}/webhook", content=body, headers=headers)
    accepted = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    return str(response.json()["job_id"]), accepted


def job(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{url}/jobs/{job_id}")
    response.raise_for_status()
    return dict(response.json())


def wait_ended(
    client: httpx.Client, url: str, job_id: str, deadline: float, poll: float = 0.2
) -> dict[str, Any]:
    while True:
        found = job(client, url, job_id)
        if found["status"] in TERMINAL and found.get("finished_at") is not None:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end: {found['status']}")
        time.sleep(poll)


def unblocked_at(step: dict[str, Any]) -> int | None:
    """Epoch ms of the step's ``blocked -> pending`` (its fan-in's unblock)."""
    return next(
        (h["at"] for h in step["history"] if h["from"] == "blocked" and h["to"] == "pending"),
        None,
    )


# --- phases ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    accepted: float = 0.0  # epoch s of the (first) 202
    to_last_started_s: float = 0.0  # pipeline: the last of the matrix; independent: any job
    to_last_finished_s: float = 0.0
    jobs: int = 0
    requests: list[Request] = field(default_factory=list)
    # pipeline only, ms
    fan_in_matrix: list[float] = field(default_factory=list)
    start_after_need_matrix: list[float] = field(default_factory=list)
    fan_in_join: float = 0.0
    join_timeline: list[str] = field(default_factory=list)  # the requests of the join's fan-in
    start_after_need_join: float = 0.0
    to_root_unblocked_ms: float = 0.0
    to_root_started_ms: float = 0.0
    run_ended_after_join_ms: float = 0.0

    def writes(self, checkpoints: str) -> list[Request]:
        return [r for r in self.requests if r.write and checkpoints not in r.tables]

    def checkpoints(self, checkpoints: str) -> list[Request]:
        return [r for r in self.requests if r.write and checkpoints in r.tables]

    def writes_per_job(self, checkpoints: str) -> float:
        return len(self.writes(checkpoints)) / self.jobs


def run_pipeline(
    stack: LocalStack, client: httpx.Client, log: RequestLog, sha: str, width: int
) -> Phase:
    phase = Phase("pipeline", jobs=width + 2)
    mark = log.mark()
    run_id, phase.accepted = deliver(client, stack.url, sha, f"pipe-{uuid.uuid4().hex[:8]}")
    run = wait_ended(client, stack.url, run_id, time.monotonic() + 300)
    if run["status"] != "passed":
        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('reason')} {run.get('detail')}")
    log.wait_quiet(stack.settings.tables.runner_state)
    phase.requests = log.since(mark)
    steps = [job(client, stack.url, f"{run_id}.s{n}") for n in range(1, width + 3)]
    by_key = {str(s["step_key"]): s for s in steps}
    root, join = by_key.pop("root"), by_key.pop("join")
    matrix = list(by_key.values())
    if len(matrix) != width or any(s["status"] != "passed" for s in steps):
        raise RuntimeError(f"unexpected steps: {[(s['step_key'], s['status']) for s in steps]}")
    t0 = phase.accepted * 1000
    for step in matrix:
        phase.fan_in_matrix.append(_unblocked(step) - root["finished_at"])
        phase.start_after_need_matrix.append(step["started_at"] - root["finished_at"])
    last_need = max(step["finished_at"] for step in matrix)
    phase.fan_in_join = _unblocked(join) - last_need
    phase.join_timeline = timeline(phase.requests, last_need, _unblocked(join) + 30)
    phase.start_after_need_join = join["started_at"] - last_need
    phase.to_root_unblocked_ms = _unblocked(root) - t0
    phase.to_root_started_ms = root["started_at"] - t0
    phase.to_last_started_s = (max(s["started_at"] for s in matrix) - t0) / 1000
    phase.to_last_finished_s = (max(s["finished_at"] for s in steps) - t0) / 1000
    phase.run_ended_after_join_ms = run["finished_at"] - join["finished_at"]
    return phase


def timeline(requests: Sequence[Request], since_ms: float, until_ms: float) -> list[str]:
    """The requests sent from ``since_ms`` (a little before) to ``until_ms`` (epoch ms), as
    ``+offset op thread took``: where a fan-in's time goes."""
    shown = []
    for r in requests:
        at = r.at * 1000
        if since_ms - 5 <= at <= until_ms + 5:
            outcome = "" if r.outcome == "ok" else f" {r.outcome}"
            shown.append(
                f"+{at - since_ms:.0f} {r.operation}{outcome} ({thread_group(r.thread)},"
                f" {r.took * 1000:.0f} ms)"
            )
    return shown


def _unblocked(step: dict[str, Any]) -> float:
    at = unblocked_at(step)
    if at is None:
        raise RuntimeError(f"step {step['job_id']} has no blocked -> pending in its history")
    return float(at)


def run_independent(
    stack: LocalStack, client: httpx.Client, log: RequestLog, sha: str, count: int
) -> Phase:
    phase = Phase("independent", jobs=count)
    mark = log.mark()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        tag = uuid.uuid4().hex[:8]
        sent = list(pool.map(lambda n: deliver(client, stack.url, sha, f"{tag}-{n}"), range(count)))
    deadline = time.monotonic() + 300
    ended = [wait_ended(client, stack.url, job_id, deadline, 0.1) for job_id, _ in sent]
    log.wait_quiet(stack.settings.tables.runner_state)
    phase.requests = log.since(mark)
    if any(j["status"] != "passed" or j.get("step_count") for j in ended):
        raise RuntimeError(f"unexpected jobs: {[(j['job_id'], j['status']) for j in ended]}")
    phase.accepted = min(at for _, at in sent)
    t0 = phase.accepted * 1000
    phase.to_last_started_s = (max(j["started_at"] for j in ended) - t0) / 1000
    phase.to_last_finished_s = (max(j["finished_at"] for j in ended) - t0) / 1000
    return phase


@dataclass
class Round:
    pipeline: Phase
    independent: Phase

    @property
    def ratio_finished(self) -> float:
        return self.pipeline.to_last_finished_s / self.independent.to_last_finished_s

    @property
    def ratio_started(self) -> float:
        return self.pipeline.to_last_started_s / self.independent.to_last_started_s


def measure(
    *, rounds: int, width: int, jobs: int, sandbox: bool, on_round: Callable[[int, Round], None]
) -> tuple[list[Round], str]:
    log = RequestLog()
    log.install()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-steps-") as folder,
            httpx.Client(timeout=30) as client,
        ):
            tmp = Path(folder)
            origin = make_origin(tmp / "origin", width)
            began = time.perf_counter()
            with local_stack(tmp, origin, sandbox=sandbox) as stack:
                checkpoints = stack.settings.tables.runner_state
                print(
                    f"stack up in {time.perf_counter() - began:.1f} s at {stack.url}, in this"
                    f" process (--max-runs {CONCURRENCY}, {REPO} concurrency {CONCURRENCY},"
                    f" checkout on, sandbox {'on' if sandbox else 'off'}); {os.cpu_count()} CPUs",
                    flush=True,
                )
                run_pipeline(stack, client, log, origin.warm, 2)
                run_independent(stack, client, log, origin.plain, 2)
                print("warm-up: a 1 + 2 + 1 pipeline and 2 jobs passed (not counted)", flush=True)
                done: list[Round] = []
                for number in range(rounds):
                    phases: dict[str, Phase] = {}
                    order: Sequence[str] = ("pipeline", "independent")
                    for name in order if number % 2 == 0 else order[::-1]:
                        if name == "pipeline":
                            phases[name] = run_pipeline(stack, client, log, origin.pipeline, width)
                        else:
                            phases[name] = run_independent(stack, client, log, origin.plain, jobs)
                    done.append(Round(phases["pipeline"], phases["independent"]))
                    on_round(number, done[-1])
            return done, checkpoints
    finally:
        log.uninstall()


# --- report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_round(number: int, result: Round, checkpoints: str) -> None:
    pipe, alone = result.pipeline, result.independent
    matrix = summary(pipe.fan_in_matrix)
    started = summary(pipe.start_after_need_matrix)
    width = len(pipe.fan_in_matrix)
    print(
        f"\n== round {number + 1} ({'pipeline first' if number % 2 == 0 else 'independent first'})"
    )
    print(
        f"   pipeline 1 + {width} + 1: 202 -> root unblocked {pipe.to_root_unblocked_ms:.0f} ms,"
        f" -> root started {pipe.to_root_started_ms:.0f} ms,"
        f" -> last of {width} started {pipe.to_last_started_s:.2f} s,"
        f" -> last step finished {pipe.to_last_finished_s:.2f} s"
        f" (run ended {pipe.run_ended_after_join_ms:.0f} ms after join)"
    )
    print(
        f"   fan-in (need passed -> unblocked), {width} after root: p50 {matrix.p50:.0f}"
        f" p99 {matrix.p99:.0f} max {matrix.max:.0f} ms; join: {pipe.fan_in_join:.0f} ms"
    )
    print(
        f"   need passed -> started (adds the slot wait), {width} after root: p50"
        f" {started.p50:.0f} p99 {started.p99:.0f} ms; join: {pipe.start_after_need_join:.0f} ms"
    )
    print(
        f"   independent x{alone.jobs}: first 202 -> last started {alone.to_last_started_s:.2f} s,"
        f" -> last finished {alone.to_last_finished_s:.2f} s"
    )
    print(
        f"   ratio pipeline / independent: finished {result.ratio_finished:.2f},"
        f" started {result.ratio_started:.2f}"
    )
    print(
        "   the join's fan-in: requests from the last need's finish to its unblock + 30 ms"
        " (+sent ms, operation, thread, answer ms):\n      " + "\n      ".join(pipe.join_timeline)
    )
    for phase in (pipe, alone):
        print_requests(phase, checkpoints)


def print_requests(phase: Phase, checkpoints: str) -> None:
    writes = phase.writes(checkpoints)
    unit = "step" if phase.name == "pipeline" else "job"
    print(
        f"   {phase.name}: {len(writes)} write requests = {len(writes) / phase.jobs:.2f} per"
        f" {unit} ({len(phase.checkpoints(checkpoints))} checkpoint writes besides)"
    )
    by_op = Counter(
        (r.operation, "ok" if r.outcome == "ok" else f"refused {r.outcome}") for r in writes
    )
    print("      writes: " + ", ".join(f"{op} {out} {n}" for (op, out), n in by_op.most_common()))
    by_table = Counter("+".join(sorted(set(r.tables))) for r in writes)
    print("      by table: " + ", ".join(f"{t} {n}" for t, n in by_table.most_common()))
    by_thread = Counter(thread_group(r.thread) for r in writes)
    print("      by thread: " + ", ".join(f"{t} {n}" for t, n in by_thread.most_common()))
    reads = Counter(r.operation for r in phase.requests if not r.write)
    keys = sum(r.keys for r in phase.requests if r.operation == "BatchGetItem")
    print(
        "      reads: "
        + ", ".join(f"{op} {n}" for op, n in reads.most_common())
        + f" (BatchGetItem items {keys}, {keys / phase.jobs:.1f} per {unit})"
    )


def print_medians(rounds: list[Round], checkpoints: str) -> None:
    pipe = [r.pipeline for r in rounds]
    width = len(pipe[0].fan_in_matrix)
    fan_in_p50 = median(summary(p.fan_in_matrix).p50 for p in pipe)
    fan_in_p99 = median(summary(p.fan_in_matrix).p99 for p in pipe)
    join = median(p.fan_in_join for p in pipe)
    per_step = median(p.writes_per_job(checkpoints) for p in pipe)
    per_job = median(r.independent.writes_per_job(checkpoints) for r in rounds)
    ratio = median(r.ratio_finished for r in rounds)
    print(f"\n== medians of {len(rounds)} round(s)")
    rows = [
        (
            f"pipeline: 202 -> last of {width} started",
            f"{median(p.to_last_started_s for p in pipe):.2f} s",
            "",
        ),
        (
            "pipeline: 202 -> last finished",
            f"{median(p.to_last_finished_s for p in pipe):.2f} s",
            "",
        ),
        (
            "independent: first 202 -> last started",
            f"{median(r.independent.to_last_started_s for r in rounds):.2f} s",
            "",
        ),
        (
            "independent: first 202 -> last finished",
            f"{median(r.independent.to_last_finished_s for r in rounds):.2f} s",
            "",
        ),
        (
            "ratio pipeline / independent (finished)",
            f"{ratio:.2f}",
            f"<= {TARGET_RATIO}: {verdict(ratio <= TARGET_RATIO)}",
        ),
        (
            "ratio pipeline / independent (started)",
            f"{median(r.ratio_started for r in rounds):.2f}",
            "",
        ),
        (
            f"fan-in p50, {width} after root",
            f"{fan_in_p50:.0f} ms",
            f"< {TARGET_FAN_IN_MS:.0f} ms: {verdict(fan_in_p50 < TARGET_FAN_IN_MS)}",
        ),
        (f"fan-in p99, {width} after root", f"{fan_in_p99:.0f} ms", ""),
        (
            "fan-in, join",
            f"{join:.0f} ms",
            f"< {TARGET_FAN_IN_MS:.0f} ms: {verdict(join < TARGET_FAN_IN_MS)}",
        ),
        (
            f"need passed -> started p50, {width} after root",
            f"{median(summary(p.start_after_need_matrix).p50 for p in pipe):.0f} ms",
            "",
        ),
        (
            "need passed -> started, join",
            f"{median(p.start_after_need_join for p in pipe):.0f} ms",
            "",
        ),
        (
            "write requests per step",
            f"{per_step:.2f}",
            f"<= {TARGET_WRITES_PER_STEP:.0f}: {verdict(per_step <= TARGET_WRITES_PER_STEP)}",
        ),
        ("write requests per independent job", f"{per_job:.2f}", ""),
        (
            "checkpoint writes per step (not counted above)",
            f"{median(len(p.checkpoints(checkpoints)) / p.jobs for p in pipe):.2f}",
            "",
        ),
    ]
    for name, value, target in rows:
        print(f"   {name:<48}{value:>10}   {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pipeline + independent, each")
    parser.add_argument("--width", type=int, default=48, help="variants of the matrix step")
    parser.add_argument("--jobs", type=int, default=50, help="independent jobs (1 + width + 1)")
    parser.add_argument("--unsandboxed", action="store_true", help='sandbox = "off"')
    args = parser.parse_args()
    checkpoints_table = Settings.from_env({}).tables.runner_state
    rounds, _ = measure(
        rounds=args.rounds,
        width=args.width,
        jobs=args.jobs,
        sandbox=not args.unsandboxed,
        on_round=lambda number, result: print_round(number, result, checkpoints_table),
    )
    print_medians(rounds, checkpoints_table)


if __name__ == "__main__":
    main()
