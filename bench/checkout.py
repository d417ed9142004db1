"""The source checkout step of a run: how long a job waits for its work tree.

The repository is a real one: this project's own git history, copied into a temporary folder
(so the bench never touches the checkout it runs from) and served as a local remote. The
local executor's :class:`~scheduler.local.checkout.SourceCheckout` makes the work trees, as a
run does. Printed, each as p50/p90/p99/max over ``--jobs`` checkouts:

* **first job**: a repository never seen: the mirror is created and the commit fetched;
* **second job**: the same commit again (the mirror has it: nothing is fetched);
* **new commit**: a commit the mirror lacks (one fetch of what is new);
* **parallel**: ``--parallel`` jobs of one repository at once (they share the mirror's lock).

Run from the project root (about a minute)::

    .venv/bin/python bench/checkout.py [--jobs 20] [--parallel 4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stats import median, ms, summary

from scheduler.local.checkout import SourceCheckout

ROOT = Path(__file__).resolve().parents[1]


def git(folder: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def make_origin(tmp: Path) -> tuple[Path, list[str]]:
    """A copy of this project's history (a real repository) and its newest commits."""
    origin = tmp / "origin.git"
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", "--no-local", str(ROOT), str(origin)], check=True
    )
    shas = git(origin, "rev-list", "--max-count=200", "HEAD").split()
    files = git(origin, "ls-tree", "-r", "--name-only", "HEAD").count("\n") + 1
    size = sum(f.stat().st_size for f in origin.rglob("*") if f.is_file())
    print(
        f"repository: this project's history, {len(shas)}+ commits, {files} files at HEAD,"
        f" {size / 1e6:.1f} MB packed"
    )
    return origin, shas


def timed(checkout: SourceCheckout, origin: Path, sha: str, tree: Path) -> float:
    started = time.perf_counter()
    checkout.prepare("bench/app", str(origin), sha, tree)
    took = time.perf_counter() - started
    shutil.rmtree(tree)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="checkouts per measure")
    parser.add_argument("--parallel", type=int, default=4, help="jobs at once in 'parallel'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-checkout-") as folder:
        tmp = Path(folder)
        origin, shas = make_origin(tmp)
        head = shas[0]
        first, second, new = [], [], []
        for n in range(args.jobs):
            runner = SourceCheckout(tmp / f"cold-{n}")  # a new mirror each time
            first.append(timed(runner, origin, head, tmp / "tree"))
        warm = SourceCheckout(tmp / "warm")
        warm.prepare("bench/app", str(origin), shas[-1], tmp / "tree")  # the mirror exists
        shutil.rmtree(tmp / "tree")
        for sha in shas[1 : args.jobs + 1]:  # commits it lacks, newest first
            new.append(timed(warm, origin, sha, tmp / "tree"))
        for _ in range(args.jobs):
            second.append(timed(warm, origin, head, tmp / "tree"))
        with ThreadPoolExecutor(args.parallel) as pool:
            trees = [tmp / f"par-{n}" for n in range(args.jobs)]
            parallel = list(pool.map(lambda t: timed(warm, origin, head, t), trees))
    for name, samples in (
        ("first job", first),
        ("second job", second),
        ("new commit", new),
        (f"parallel x{args.parallel}", parallel),
    ):
        print(f"{name:>14}: {summary(ms(samples))}")
    print(f"second job / first job (medians): {median(second) / median(first):.2f}")


if __name__ == "__main__":
    sys.exit(main())
