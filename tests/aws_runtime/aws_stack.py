"""The AWS runtime assembled on one machine: DynamoDB Local (tables from the template), the
template's functions as processes (``lambda_functions``), the StreamFunction's event source
mapping (``stream_mapping``), CodeBuild and EventBridge (``codebuild_server``), and the
ReaperFunction's schedule in compressed time (``rate(1 minute)`` -> every ``round_seconds``).

Jobs are made as GitHub makes them (signed deliveries to the WebhookFunction), cancelled with
``scheduler cancel`` and examined with ``scheduler doctor --json``: the operator's CLI.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from codebuild_server import PROJECT, CodeBuildServer
from conftest import own_dynamodb
from lambda_functions import ROOT, TEMPLATE, FunctionPool, InvocationFailed
from stream_mapping import EventSourceMapping, kind_of

from scheduler.db.models import JobModel, RepoModel, count_attribute
from scheduler.db.template import load_template
from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.local.mapping import MappingConfig
from scheduler.settings import Settings
from state_machines import JobStatus

__all__ = ["AwsStack", "aws_stack", "free_port_in_range"]

SECRET = "aws-runtime-webhook-secret-0123456789"
WEBHOOK_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:webhook-AbCdEf"
SCHEDULER = str(Path(sys.executable).with_name("scheduler"))
TERMINAL = ("passed", "failed", "cancelled")
ROUND_SECONDS = 0.5  # one reaper minute
PORTS = range(18300, 18400)


def free_port_in_range(ports: range = PORTS) -> int:
    """A free loopback port of ``ports`` (by default this suite's, 18300-18399: each test
    file that needs ports of its own names its range)."""
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


@dataclass
class StackBooks:
    reaper_rounds: int = 0
    reaper_errors: int = 0
    events_sent: int = 0
    event_retries: int = 0
    events_duplicated: int = 0
    reaper_answers: list[dict[str, Any]] = field(default_factory=list)


class AwsStack:
    def __init__(
        self,
        settings: Settings,
        folder: Path,
        config: str,
        *,
        plan: Callable[[str, str, int], tuple[float, str]],
        limits: Callable[[str], int],
        webhook_processes: int = 2,
        stop_delay: float = 0.4,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings, self.folder = settings, folder
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "repos.toml"
        self.config_path.write_text(config)
        self.codebuild = CodeBuildServer(
            free_port_in_range(),
            plan=plan,
            limits=limits,
            secrets={WEBHOOK_SECRET_ARN: SECRET},
            stop_delay=stop_delay,
        )
        refs = {
            "JobsTable": settings.tables.jobs,
            "ReposTable": settings.tables.repos,
            "RepositoryConfigFile": str(self.config_path),
            "BuildProject": PROJECT,
            "SecretsBuildProject": f"{PROJECT}-secrets",
            "WebhookSecret": WEBHOOK_SECRET_ARN,
            "RetentionDays": "30",
        }
        assert settings.dynamodb_endpoint
        local = {
            "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint,
            "AWS_ENDPOINT_URL_CODEBUILD": self.codebuild.endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.codebuild.endpoint,
            "SCHEDULER_TRACING": "off",  # no X-Ray daemon here
            # The deployment package is this checkout's code: without it a function process
            # imports the package the virtualenv was installed from (another worktree's).
            "PYTHONPATH": str(ROOT),
            **(env or {}),  # the functions' own settings a test changes
        }
        self.cli_env = {
            **os.environ,
            "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint,
            "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
            "SCHEDULER_REPOS_TABLE": settings.tables.repos,
            "SCHEDULER_CONFIG": str(self.config_path),
            "AWS_REGION": settings.region,
        }
        logs = folder / "logs"
        self.mapping_config = MappingConfig.from_template(load_template(TEMPLATE))
        factor = self.mapping_config.parallelization_factor
        self.webhook = FunctionPool("WebhookFunction", refs, local, logs, webhook_processes)
        self.stream = FunctionPool("StreamFunction", refs, local, logs, factor)
        self.completion = FunctionPool("CompletionFunction", refs, local, logs, 2)
        self.reaper = FunctionPool("ReaperFunction", refs, local, logs, 1)
        self.pools = [self.webhook, self.stream, self.completion, self.reaper]
        client_kwargs = {
            "endpoint_url": settings.dynamodb_endpoint,
            "region_name": settings.region,
            "aws_access_key_id": "local",
            "aws_secret_access_key": "local",
        }
        self.mapping = EventSourceMapping(
            boto3.client("dynamodbstreams", **client_kwargs),
            boto3.client("dynamodb", **client_kwargs),
            settings.tables.jobs,
            self.mapping_config,
            self.stream,
            time_scale=ROUND_SECONDS / 60,
        )
        self.books = StackBooks()
        self.database: DynamoDBLocal | None = None  # set by aws_stack
        self.reaper_paused = threading.Event()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.codebuild.on_event = self._event
        self.duplicate_events_every = 0  # EventBridge delivers at least once
        self._events_seen = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._eventbridge, daemon=True),
            threading.Thread(target=self._schedule, daemon=True),
        ]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        threads = [threading.Thread(target=pool.warm) for pool in self.pools]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.mapping.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.mapping.stop()
        for thread in self._threads:
            thread.join(30)
        for pool in self.pools:
            pool.stop()
        self.codebuild.close()

    def _event(self, event: dict[str, Any]) -> None:
        self._events_seen += 1
        self._events.put(event)
        if self.duplicate_events_every and self._events_seen % self.duplicate_events_every == 0:
            self.books.events_duplicated += 1
            self._events.put(event)

    def _eventbridge(self) -> None:
        """EventBridge's rule: each event to the CompletionFunction, retried until taken."""
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            threading.Thread(target=self._deliver_event, args=(event,), daemon=True).start()

    def _deliver_event(self, event: dict[str, Any]) -> None:
        for attempt in range(185):
            if self._stop.is_set():
                return
            try:
                self.completion.invoke(event)
                self.books.events_sent += 1
                return
            except InvocationFailed:
                self.books.event_retries += 1
                self._stop.wait(min(2.0, 0.1 * (attempt + 1)))

    def _schedule(self) -> None:
        """The ReaperFunction's ``rate(1 minute)``, one round every ``ROUND_SECONDS``."""
        while not self._stop.wait(ROUND_SECONDS):
            if self.reaper_paused.is_set():
                continue
            self.reap_round()

    def reap_round(self) -> dict[str, Any] | None:
        scheduled = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/EveryMinute"],
            "detail": {},
        }
        try:
            answer = self.reaper.invoke(scheduled)
        except InvocationFailed:
            self.books.reaper_errors += 1
            return None
        self.books.reaper_rounds += 1
        self.books.reaper_answers.append(answer)
        return dict(answer)

    # -- what a user does -----------------------------------------------------------------

    def deliver(self, repo: str, delivery: str, sha: str, branch: str = "main") -> tuple[int, str]:
        """A signed push to the WebhookFunction: (status code, job id or '')."""
        body = json.dumps(
            {
                "ref": f"refs/heads/{branch}",
                "after": sha,
                "repository": {
                    "full_name": repo,
                    "clone_url": f"https://github.com/{repo}.git",
                },
                "sender": {"login": "octocat"},
            }
        ).encode()
        headers = {
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": delivery,
            "x-hub-signature-256": sign(SECRET.encode(), body),
        }
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/webhook",
            "rawQueryString": "",
            "headers": headers,
            "requestContext": {
                "http": {
                    "method": "POST",
                    "path": "/webhook",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "192.30.252.1",
                },
                "requestId": str(uuid.uuid4()),
                "timeEpoch": int(time.time() * 1000),
            },
            "body": body.decode(),
            "isBase64Encoded": False,
        }
        answer = self.webhook.invoke(event)
        code = int(answer["statusCode"])
        job_id = json.loads(answer.get("body") or "{}").get("job_id", "")
        return code, str(job_id)

    def kill_database(self, down_for: float = 2.0) -> None:
        """SIGKILL DynamoDB Local (its process group) and start it again on the same port and
        data folder ``down_for`` seconds later."""
        assert self.database is not None and self.database.pid is not None
        os.killpg(self.database.pid, signal.SIGKILL)
        time.sleep(down_for)
        self.database.restart()

    def deliver_until_accepted(
        self, repo: str, delivery: str, sha: str, branch: str = "main"
    ) -> str:
        for _ in range(60):
            try:
                code, job_id = self.deliver(repo, delivery, sha, branch)
            except InvocationFailed:
                time.sleep(0.5)
                continue  # GitHub redelivers a delivery that got no answer
            if code in (200, 202) and job_id:
                return job_id
            time.sleep(0.5)  # a 5xx (the database is down): GitHub redelivers later
        raise AssertionError(f"delivery {delivery} never accepted")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCHEDULER, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.cli_env,
            check=False,
        )

    def cancel(self, job_id: str) -> None:
        done = self.cli("cancel", job_id, "--json")
        assert done.returncode == 0, done.stderr

    def doctor(self, stranded_after: str = "5s") -> dict[str, Any]:
        done = self.cli("doctor", "--json", "--stranded-after", stranded_after)
        assert done.returncode in (0, 1), done.stderr
        return dict(json.loads(done.stdout))

    # -- what the test reads --------------------------------------------------------------

    def assert_counters_equal_items(self, names: list[str]) -> None:
        """Every repository of ``names`` has counters (per status, and slots held: none, all
        ended) equal to its items, by the test's own count and by ``scheduler doctor``."""
        jobs = self.jobs().values()
        counters = self.repos()
        for name in names:
            repo = counters[name]
            counted = Counter(str(job.status) for job in jobs if job.repo == name)
            for status in JobStatus:
                recorded = int(getattr(repo, count_attribute(status.value)) or 0)
                assert recorded == counted[status.value], (name, status, recorded, counted)
            assert int(repo.running or 0) == 0, (name, repo.running)
        found = self.doctor()
        assert found["healthy"] and found["drift"] == [] and found["stranded"] == [], found

    def jobs(self) -> dict[str, JobModel]:
        return {job.job_id: job for job in JobModel.scan(consistent_read=True)}

    def repos(self) -> dict[str, RepoModel]:
        return {repo.repo: repo for repo in RepoModel.scan(consistent_read=True)}

    def unsettled(self, limits: Callable[[str], int]) -> list[str]:
        """Jobs neither terminal nor legitimately queued (pending while every slot of their
        repository is held by an active job), and active jobs whose build is not running."""
        jobs = self.jobs()
        active: dict[str, int] = {}
        for job in jobs.values():
            if str(job.status) == "active":
                active[job.repo] = active.get(job.repo, 0) + 1
        running_builds = {b.attempt_key for b in self.codebuild.in_progress()}
        problems = []
        for job in jobs.values():
            status = str(job.status)
            if status in TERMINAL:
                continue
            if status == "pending" and active.get(job.repo, 0) >= limits(job.repo):
                continue
            if status == "active" and (job.job_id, int(job.attempt)) in running_builds:
                continue
            problems.append(f"{job.job_id} {job.repo} {status} attempt={job.attempt}")
        return problems

    def wait_settled(
        self, limits: Callable[[str], int], timeout: float, *, terminal: bool = True
    ) -> float:
        """Seconds until every job is terminal (or, ``terminal=False``, settled as
        :meth:`unsettled` says); raises with the stragglers after ``timeout``."""
        began = time.monotonic()
        last: list[str] = []
        while time.monotonic() - began < timeout:
            if terminal:
                last = [
                    f"{j.job_id} {j.repo} {j.status} attempt={j.attempt}"
                    for j in self.jobs().values()
                    if str(j.status) not in TERMINAL
                ]
            else:
                last = self.unsettled(limits)
            if not last:
                return time.monotonic() - began
            time.sleep(0.25)
        repos = {r: (m.running, m.slot_limit) for r, m in self.repos().items()}
        raise AssertionError(
            f"{len(last)} jobs not settled after {timeout:.0f}s: {last[:10]}\n"
            f"repos (running, limit): {repos}\nreaper: {self.books.reaper_answers[-2:]}\n"
            f"dropped: {[(d.condition, kind_of(d.records[0])) for d in self.mapping.books.dropped]}"
        )

    def explain(self, job_id: str) -> str:
        """A job's story for a failed assertion: its transitions, builds and dropped records."""
        job = self.jobs().get(job_id)
        if job is None:
            return f"{job_id}: no item"
        steps = [
            f"{h.source}->{h.dest}:{getattr(h, 'trigger', '')}:{getattr(h, 'actor', '')}"
            f":{getattr(h, 'reason', '') or ''}"
            for h in job.history
        ]
        builds = [
            (b.attempt_key[1], b.status, round(b.started, 1), b.stop_at is not None)
            for b in self.codebuild.builds.values()
            if b.attempt_key[0] == job_id
        ]
        starts = {t: n for t, n in self.codebuild.books.start_calls.items() if t.startswith(job_id)}
        dropped = [
            (d.condition, kind_of(r))
            for d in self.mapping.books.dropped
            for r in d.records
            if r["dynamodb"]["Keys"]["job_id"]["S"] == job_id
        ]
        return (
            f"{job_id} {job.status} reason={job.reason} attempt={job.attempt} run_id={job.run_id}"
            f"\n  history {steps}\n  builds {builds} StartBuild calls {starts}"
            f"\n  dropped {dropped}"
        )

    def logs(self, chars: int = 2000) -> str:
        return "\n".join(
            f"--- {m.name}\n{m.tail(chars)}"
            for pool in self.pools
            for m in pool.members
            if m.tail(chars)
        )


@contextmanager
def aws_stack(
    folder: Path,
    config: str,
    *,
    plan: Callable[[str, str, int], tuple[float, str]],
    limits: Callable[[str], int],
    persistent: bool = False,
    **kwargs: Any,
) -> Iterator[AwsStack]:
    """A started stack on a DynamoDB Local of its own (fresh stream store), stopped after;
    ``persistent``: on disk (``-dbPath``), so that it can be killed and restarted."""
    prefix = f"a{uuid.uuid4().hex[:5]}-"
    data_dir = folder / "dynamodb" if persistent else None
    with own_dynamodb(prefix, data_dir=data_dir, port=free_port_in_range()) as (server, settings):
        stack = AwsStack(settings, folder, config, plan=plan, limits=limits, **kwargs)
        stack.database = server
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
