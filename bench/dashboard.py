"""The dashboard's cost: one page at 50,000 jobs, and the stack's idle CPU with open tabs.

**Page latency.** On a fresh in-memory DynamoDB Local, two repositories are loaded as
``bench/status.py`` loads them (1,000 and 50,000 finished jobs). The product's HTTP app (the
one both runtimes serve) runs on the local HTTP server, and each sample is a real GET over
loopback: the jobs page of each repository (``/ui/repos/{owner}/{repo}``, rendered HTML) and
the JSON listing of the same page (``/repos/{owner}/{repo}/jobs``). Printed: p50/p90/p99 of
each, the page's added latency over the JSON listing (what rendering costs), and the large /
small ratio (which must stay near 1: a page is one query, however long the history).

**Idle tabs.** ``scheduler up`` runs as a child process (as in ``bench/pipeline.py``) with a few
finished jobs; the stack's CPU (Python process and DynamoDB Local) is measured with no browser,
then with ``--tabs`` headless Chromium tabs open on a repository's jobs page (each polls while
visible, with ETags), and once more with the tabs hidden behind another page.

Run from the project root (about two minutes; the browser is Debian's ``/usr/bin/chromium``)::

    .venv/bin/python bench/dashboard.py [--small 1000] [--large 50000] [--samples 200]
        [--tabs 5] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from common import bench_settings, dynamodb_local
from pipeline import deliver, idle_usage, local_stack, wait_finished
from stats import median, ms, summary
from status import load

from scheduler.db.clients import client as settings_client
from scheduler.local.http_server import LocalHTTPServer
from scheduler.wiring import build_core

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SMALL, LARGE = "bench/dash-small", "bench/dash-large"


def page_latency(small: int, large: int, samples: int) -> dict[str, list[float]]:
    """Seconds per GET, by case: the jobs page and the JSON listing of each repository."""
    with dynamodb_local(heap_mb=1024) as server:
        settings = bench_settings(server.endpoint, webhook_secret="bench-dashboard-secret-0123")
        ddb = settings_client("dynamodb", settings, max_pool_connections=16)
        for repo, count in ((SMALL, small), (LARGE, large)):
            seconds = load(ddb, settings, repo, count)
            print(f"loaded {count:>6} jobs of {repo} in {seconds:.1f}s", flush=True)
        app = build_core(settings, executor=None).http_app
        with LocalHTTPServer(app) as http, httpx.Client(base_url=http.url) as client:
            sizes = (("small", SMALL), ("large", LARGE))
            cases = {f"page {name}": f"/ui/repos/{repo}" for name, repo in sizes} | {
                f"json {name}": f"/repos/{repo}/jobs" for name, repo in sizes
            }
            for path in cases.values():  # warm-up: connections, templates, the JIT
                for _ in range(20):
                    client.get(path).raise_for_status()
            timings: dict[str, list[float]] = {case: [] for case in cases}
            for round_ in range(samples):
                order = list(cases.items())
                if round_ % 2:
                    order.reverse()  # neither case always goes first
                for case, path in order:
                    started = time.perf_counter()
                    client.get(path).raise_for_status()
                    timings[case].append(time.perf_counter() - started)
    return timings


@contextmanager
def tabs(url: str, count: int) -> Iterator[Callable[[], None]]:
    """``count`` headless Chromium tabs on ``url``; yields a function that hides them all."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            context = browser.new_context()
            pages = [context.new_page() for _ in range(count)]
            for page in pages:
                page.goto(url)

            def hide() -> None:
                for page in pages:  # what a background tab reports to the page
                    page.evaluate(
                        "Object.defineProperty(document, 'visibilityState', {value: 'hidden'});"
                        "Object.defineProperty(document, 'hidden', {value: true});"
                        "document.dispatchEvent(new Event('visibilitychange'))"
                    )

            yield hide
        finally:
            browser.close()


def stack_cpu(usage: Sequence[tuple[str, float, float]]) -> float:
    return sum(cpu for _, cpu, _ in usage)


def idle_tabs(count: int, seconds: float) -> dict[str, float]:
    """The stack's percent of one core: no browser, ``count`` visible tabs, hidden tabs."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-dash-") as folder,
        local_stack(Path(folder)) as stack,
        httpx.Client(timeout=30) as client,
    ):
        sent = [deliver(client, stack.url) for _ in range(3)]
        wait_finished(stack, client, [job_id for job_id, _, _ in sent], 60)
        pid = stack.process.pid
        figures = {"no browser": stack_cpu(idle_usage(pid, seconds))}
        with tabs(f"{stack.url}/ui/repos/bench/noop", count) as hide:
            time.sleep(2)  # the pages settle
            figures[f"{count} visible tabs"] = stack_cpu(idle_usage(pid, seconds))
            hide()
            time.sleep(2)
            figures[f"{count} hidden tabs"] = stack_cpu(idle_usage(pid, seconds))
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="jobs of the small repository")
    parser.add_argument("--large", type=int, default=50_000, help="jobs of the large one")
    parser.add_argument("--samples", type=int, default=200, help="GETs per case")
    parser.add_argument("--tabs", type=int, default=5, help="open tabs for the idle figure")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timings = page_latency(args.small, args.large, args.samples)
    print(f"\n== one GET over loopback (ms); small: {args.small:,} jobs, large: {args.large:,}")
    for case, seconds in timings.items():
        print(f"   {case:<14} {summary(ms(seconds))}")
    page, listing = median(timings["page large"]), median(timings["json large"])
    small_page = median(timings["page small"])
    print(
        f"   the page's added latency over the JSON listing at {args.large:,} jobs (p50): "
        f"{(page - listing) * 1000:.1f} ms; page {args.large:,} / page {args.small:,} (p50): "
        f"{page / small_page:.2f}"
    )
    results: dict[str, Any] = {}
    if CHROMIUM.exists():
        results = idle_tabs(args.tabs, args.idle_seconds)
        print(f"\n== the stack's CPU over {args.idle_seconds:.0f} s (% of one core)")
        for case, cpu in results.items():
            print(f"   {case:<18} {cpu:5.2f}")
    else:
        print(f"\n(no {CHROMIUM}: the idle-tabs figure needs Debian's chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
