"""Issue 27: ``GET /metrics`` of a local stack (composed in-process on DynamoDB Local, served
over loopback) during a burst: the queue of a repository with one slot rises, then drains; the
start latencies, transitions and refused writes are counted; the token guards the route."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import metrics
from scheduler.aws.emf import store_gauges
from scheduler.db import models
from scheduler.db.clients import client
from scheduler.db.store import JobStore
from scheduler.db.tables import ensure_tables
from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import free_port, port_in_use
from scheduler.local.stack import LocalStack, StackOptions
from scheduler.metrics_gauges import read_gauges
from scheduler.settings import Settings, TableNames
from tests.conftest import ROOT, MakeJob

SECRET = "metrics-webhook-secret-0123456789abcdef"
TOKEN = "metrics-api-token-0123456789"
REPO = "metrics/burst"
BURST = 8
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    answer = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    for found, number in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return number
    return 0.0


def deliver(url: str, number: int) -> str:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": f"{number:040x}",
            "repository": {"full_name": REPO},
            "sender": {"login": "octocat"},
        }
    ).encode()
    answer = httpx.post(
        f"{url}/webhook",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": f"metrics-burst-{number}",
            "x-hub-signature-256": sign(SECRET.encode(), body),
        },
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """Runs wait until this file exists: the test decides when the queue may drain."""
    return tmp_path / "gate"


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, gate: Path) -> Iterator[LocalStack]:
    """A stack on tables of its own: the session's tables are emptied between tests, but their
    stream keeps every earlier test's records, which a new runner reads from the start (their
    transitions would count in the process's counters)."""
    command = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; sleep 0.05"]
    config = tmp_path / "scheduler.toml"
    config.write_text(
        f"[defaults]\ncommand = {json.dumps(command)}\nconcurrency = 1\ncheckout = false\n"
        'sandbox = "off"\n'
    )
    own = replace(settings, tables=TableNames().with_prefix(f"m{uuid.uuid4().hex[:8]}-"))
    ensure_tables(client("dynamodb", own), own)
    metrics.RECORDER.reset()
    options = StackOptions(port=free_port(), data_dir=tmp_path / "data")
    local = LocalStack(
        replace(own, webhook_secret=SECRET, api_token=TOKEN, config_path=config), options
    )
    try:
        with local:
            yield local
    finally:
        gate.touch()
        models.bind(settings)  # the stack bound the models to its own tables


def test_a_scrape_during_a_burst_shows_the_queue_rising_and_draining(
    stack: LocalStack, gate: Path
) -> None:
    url = stack.url
    before = scrape(url)
    assert value(before, "scheduler_gauges_up") == 1.0
    assert value(before, "scheduler_queue_depth", repo=REPO) == 0.0

    seen: list[tuple[float, float, float]] = []  # (seconds, queue depth, slots in use)
    started = time.monotonic()

    def watch_until(done: Callable[[dict[str, Any]], bool], seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            samples = scrape(url)
            depth = value(samples, "scheduler_queue_depth", repo=REPO)
            slots = value(samples, "scheduler_slots_in_use", repo=REPO)
            seen.append((round(time.monotonic() - started, 2), depth, slots))
            if done(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.05)

    job_ids = []
    for n in range(1, BURST + 1):  # the queue rises as the burst arrives
        job_ids.append(deliver(url, n))
        watch_until(lambda _s: True, 0)
    watch_until(lambda s: value(s, "scheduler_queue_depth", repo=REPO) == BURST - 1, 30)
    rising = len(seen)
    time.sleep(0.5)  # every queued job waits this long at least
    gate.touch()  # the runs end: the queue drains, one slot at a time
    # Counters are the process's (other stacks of this test session count in them too): what
    # this burst added is the difference from the first scrape.
    passed_before = value(before, "scheduler_job_transitions_total", status="passed")
    after = watch_until(
        lambda s: (
            value(s, "scheduler_job_transitions_total", status="passed") - passed_before == BURST
        ),
        60,
    )

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    print(f"\nqueue depth, slots in use over time ({BURST} jobs, 1 slot): {seen}")

    assert len(set(job_ids)) == BURST
    assert grew("scheduler_job_transitions_total", status="passed") == BURST, seen
    depths = [depth for _t, depth, _s in seen]
    assert max(depths[:rising]) == BURST - 1, seen  # all but the running one queued
    assert depths[:rising] == sorted(depths[:rising]), seen  # rising while they arrive
    assert depths[rising:] == sorted(depths[rising:], reverse=True), seen  # then draining
    assert depths[-1] == 0.0 and value(after, "scheduler_queued_jobs") == 0.0
    assert max(slots for _t, _d, slots in seen) == 1.0  # never more than the limit
    assert value(after, "scheduler_slot_limit", repo=REPO) == 1.0
    assert value(after, "scheduler_jobs", repo=REPO, status="passed") == BURST
    # Every job waited from its arrival to its start: the queued ones through the held gate.
    assert grew("scheduler_start_latency_seconds_count") == BURST
    waited = grew("scheduler_start_latency_seconds_sum")
    assert waited >= 0.5 * (BURST - 1), waited
    assert grew("scheduler_stream_lag_seconds_count") >= BURST * 3  # new, active, passed
    # A full repository's activations are refused by the slot counter's condition.
    assert grew("scheduler_refused_writes_total", kind="condition") >= 1
    assert grew("scheduler_stream_records_read_total") >= BURST * 3
    assert grew("scheduler_stream_records_dead_lettered_total") == 0.0


def test_the_route_needs_the_token_when_one_is_set(stack: LocalStack) -> None:
    answer = httpx.get(f"{stack.url}/metrics", timeout=10)
    assert answer.status_code == 401, answer.text
    assert "scheduler_" not in answer.text


def test_the_gauges_come_from_sparse_indexes_with_or_without_counters_items(
    make_job: MakeJob, ticking_store: JobStore
) -> None:
    for n in range(3):
        make_job(f"gauge-q{n}", "pending", repo="gauges/queued")
    make_job("gauge-a", "active", repo="gauges/busy")
    make_job("gauge-p", "passed", repo="gauges/idle")  # marked until the sweeper clears it
    now_ms = int(time.time() * 1000) + 5_000
    full = read_gauges(ticking_store, now_ms)
    by_repo = {r.repo: r for r in full.repos}
    idle = by_repo.pop("gauges/idle")
    assert (idle.pending, idle.running) == (0, 0)
    assert set(by_repo) == {"gauges/queued", "gauges/busy"}
    assert (by_repo["gauges/queued"].pending, by_repo["gauges/busy"].running) == (3, 1)
    assert by_repo["gauges/busy"].slot_limit == 100 and by_repo["gauges/busy"].jobs["active"] == 1
    assert full.queued == 3 and not full.truncated
    assert full.oldest_queued_age_seconds is not None and full.oldest_queued_age_seconds >= 5
    # The reaper's view on AWS (no BatchGetItem in its role): the same depths and slots.
    lean = store_gauges(lambda: ticking_store, clock=lambda: now_ms / 1000)()
    assert {(r.repo, r.pending, r.running) for r in lean.repos} == {
        ("gauges/queued", 3, 0),
        ("gauges/busy", 0, 1),
        ("gauges/idle", 0, 0),
    }
    assert lean.oldest_queued_age_seconds == full.oldest_queued_age_seconds
    capped = read_gauges(ticking_store, now_ms, max_repos=1)
    assert len(capped.repos) == 1 and capped.truncated


def ports_in_range(count: int, first: int = 18500, last: int = 18599) -> list[int]:
    """Free loopback ports from this task's range (other suites' stacks use other ranges)."""
    found = [p for p in range(first, last + 1) if not port_in_use(p, "127.0.0.1")]
    assert len(found) >= count, "no free port in 18500-18599"
    return random.sample(found, count)


def test_a_real_scheduler_up_serves_metrics_and_logs_json_lines(tmp_path: Path) -> None:
    """``scheduler up --log-format json`` as a user starts it (its own DynamoDB Local): every
    line it logs is one JSON object, and ``/metrics`` counts the jobs it ran."""
    http_port, dynamodb_port = ports_in_range(2)
    config = tmp_path / "scheduler.toml"
    config.write_text('[defaults]\ncheckout = false\ncommand = ["true"]\nconcurrency = 1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AWS_"))}
    env.update(GITHUB_WEBHOOK_SECRET=SECRET, SCHEDULER_API_TOKEN=TOKEN)
    log_file = tmp_path / "stack.log"
    up = [
        *("up", "--port", str(http_port), "--dynamodb-port", str(dynamodb_port)),
        *("--config", str(config), "--data-dir", str(tmp_path / "data")),
        *("--log-format", "json", "--json"),
    ]
    with log_file.open("a") as stderr:
        process = subprocess.Popen(
            [SCHEDULER, *up],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, log_file.read_text()[-3000:]
        url = json.loads(line)["url"]
        assert url == f"http://127.0.0.1:{http_port}"
        for n in (1, 2, 3):
            deliver(url, 100 + n)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples = scrape(url)
            if value(samples, "scheduler_job_transitions_total", status="passed") == 3:
                break
            time.sleep(0.2)
        assert value(samples, "scheduler_job_transitions_total", status="passed") == 3, samples
        assert value(samples, "scheduler_start_latency_seconds_count") == 3
        assert value(samples, "scheduler_queued_jobs") == 0.0
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    assert process.returncode == 0, log_file.read_text()[-3000:]
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any(p["message"] == "stream runner started" for p in parsed), parsed
