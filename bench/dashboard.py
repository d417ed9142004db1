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
then with ``--tabs`` headless Chromium tabs open: on one jobs page (tabs of one browser share
their polls), on as many different pages, in as many browsers on one jobs page, and once more
with the first tabs hidden behind another page. Printed by case: the CPU of the Python process
and of DynamoDB Local, the fragment polls answered per second, and the CPU per poll over the
no-browser figure.

**A new job shows.** One visible tab on a jobs page of a fresh stack; each sample delivers a push
and times, from its 202, until the job's row is in the page (a poll and a render, no reload).
Printed: p50/p90/p99 and the largest. The browser tests only check that the row comes; how soon
is this figure (``POLL_MS`` + ``FRESH_MS`` at most on an idle machine: under a second).

Run from the project root (about two minutes; the browser is Debian's ``/usr/bin/chromium``)::

    .venv/bin/python bench/dashboard.py [--small 1000] [--large 50000] [--samples 200]
        [--tabs 5] [--idle-seconds 20] [--show-samples 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from common import bench_settings, dynamodb_local
from pipeline import REPO, deliver, idle_usage, local_stack, wait_finished
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
        settings = bench_settings(
            server.endpoint, webhook_secret="bench-dashboard-webhook-secret-0123456789"
        )
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
def tabs(pages_by_browser: Sequence[Sequence[str]]) -> Iterator[Callable[[], None]]:
    """Headless Chromium tabs: one browser context (a person's browser) per item of
    ``pages_by_browser``, a tab per URL in it. Yields a function that hides them all."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            pages = []
            for urls in pages_by_browser:
                context = browser.new_context()
                for url in urls:
                    page = context.new_page()
                    page.goto(url)
                    pages.append(page)

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


def stack_cpu(usage: Sequence[tuple[str, float, float]]) -> dict[str, float]:
    """Percent of one core: the whole stack, and the Python process and DynamoDB Local apart."""
    java = sum(cpu for name, cpu, _ in usage if name.startswith("java"))
    total = sum(cpu for _, cpu, _ in usage)
    return {"stack": total, "python": total - java, "dynamodb local": java}


def idle_tabs(count: int, seconds: float) -> dict[str, dict[str, float]]:
    """The stack's percent of one core (and by process) and the polls it answered per second:
    no browser; ``count`` visible tabs of one browser on one jobs page (the tabs share their
    polls); ``count`` tabs of one browser on as many pages (the repositories, the jobs page
    twice with other filters, two jobs: nothing shared between tabs); ``count`` browsers (people)
    on one jobs page (the server's short-lived reads are shared, not the polls); and the
    first case's tabs hidden."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-dash-") as folder,
        local_stack(Path(folder)) as stack,
        httpx.Client(timeout=30) as client,
    ):
        sent = [deliver(client, stack.url) for _ in range(3)]
        job_ids = [job_id for job_id, _, _ in sent]
        wait_finished(stack, client, job_ids, 60)
        pid = stack.process.pid

        def measure() -> dict[str, float]:
            polls = polls_logged(stack.log_path)
            figures = stack_cpu(idle_usage(pid, seconds))
            figures["polls/s"] = (polls_logged(stack.log_path) - polls) / seconds
            return figures

        jobs_page = f"{stack.url}/ui/repos/{REPO}"
        pages = [
            f"{stack.url}/",
            jobs_page,
            f"{jobs_page}?status=passed",
            *(f"{stack.url}/ui/jobs/{job_id}" for job_id in job_ids),
            f"{jobs_page}?event=push",
        ][:count]
        time.sleep(10)  # DynamoDB Local's JVM settles after the jobs (its idle CPU falls)
        results = {"no browser": measure()}
        for case, browsers in (
            (f"{count} tabs, {len(pages)} pages", [pages]),
            (f"{count} people, 1 page", [[jobs_page]] * count),
        ):
            with tabs(browsers):
                time.sleep(2)  # the pages settle
                results[case] = measure()
        with tabs([[jobs_page] * count]) as hide:
            time.sleep(2)
            results[f"{count} tabs, 1 page"] = measure()
            hide()
            time.sleep(2)
            results[f"{count} hidden tabs"] = measure()
        results["no browser, after"] = measure()
    return results


def job_shows(samples: int) -> list[float]:
    """Seconds from each delivery's 202 until its row is in an open jobs page (one tab)."""
    from playwright.sync_api import sync_playwright

    seen: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-show-") as folder,
        local_stack(Path(folder)) as stack,
        httpx.Client(timeout=30) as client,
        sync_playwright() as driver,
    ):
        deliver(client, stack.url)  # the repository exists
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            tab = browser.new_page()
            tab.goto(f"{stack.url}/ui/repos/{REPO}")
            for _ in range(samples):
                job_id, _, _ = deliver(client, stack.url)
                sent = time.monotonic()
                tab.wait_for_selector(f'tr[data-job-id="{job_id}"]', timeout=60_000)
                seen.append(time.monotonic() - sent)
        finally:
            browser.close()
    return seen


def polls_logged(log_path: Path) -> int:
    """The fragment requests the stack has logged so far (one line each)."""
    with open(log_path, "rb") as handle:
        return sum(1 for line in handle if b"/ui/part/" in line)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="jobs of the small repository")
    parser.add_argument("--large", type=int, default=50_000, help="jobs of the large one")
    parser.add_argument("--samples", type=int, default=200, help="GETs per case")
    parser.add_argument("--tabs", type=int, default=5, help="open tabs for the idle figure")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--show-samples", type=int, default=20, help="deliveries watched")
    parser.add_argument("--idle-only", action="store_true", help="only the idle-tabs figures")
    parser.add_argument("--pages-only", action="store_true", help="only the page latencies")
    return parser.parse_args(argv)


def print_page_latency(args: argparse.Namespace) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.idle_only:
        print_page_latency(args)
    if args.pages_only:
        pass
    elif CHROMIUM.exists():
        results = idle_tabs(args.tabs, args.idle_seconds)
        print(f"\n== the stack's CPU over {args.idle_seconds:.0f} s (% of one core)")
        print(f"   {'':<18} {'stack':>6} {'python':>7} {'ddb local':>10} {'polls/s':>8}")
        for case, cpu in results.items():
            print(
                f"   {case:<18} {cpu['stack']:6.2f} {cpu['python']:7.2f}"
                f" {cpu['dynamodb local']:10.2f} {cpu['polls/s']:8.1f}"
            )
        # What the tabs add is judged against the mean of the figures before and after them.
        before, after = results["no browser"], results["no browser, after"]
        idle = {name: (before[name] + after[name]) / 2 for name in before}
        for case, busy in results.items():
            if busy["polls/s"] > 0:
                per_poll = {
                    name: 10 * (busy[name] - idle[name]) / busy["polls/s"]  # % x 10 = ms per s
                    for name in ("stack", "python", "dynamodb local")
                }
                print(
                    f"   {case}: CPU per poll (ms) "
                    + ", ".join(f"{name} {value:.2f}" for name, value in per_poll.items())
                )
        shows = job_shows(args.show_samples)
        print(f"\n== a new job shows in an open jobs page, after its 202 (ms; {len(shows)} jobs)")
        print(f"   {summary(ms(shows))}")
    else:
        print(f"\n(no {CHROMIUM}: the idle-tabs figure needs Debian's chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
