"""The source checkout step of a run: how long a job waits for its work tree.

The repository is a real one: this project's own git history, copied into a temporary folder
(so the bench never touches the checkout it runs from) and served as a local remote. The
local executor's :class:`~scheduler.local.checkout.SourceCheckout` makes the work trees, as a
run does. Printed, each as p50/p90/p99/max over ``--jobs`` checkouts:

* **first job**: a repository never seen: the mirror is created and the commit fetched;
* **second job**: the same commit again (the mirror has it: nothing is fetched);
* **new commit**: a commit the mirror lacks (one fetch of what is new);
* **parallel**: ``--parallel`` jobs of one repository at once (they share the mirror's lock).
* **plain clone** (the baseline): ``git clone`` of the repository and a checkout of the commit,
  no mirror: what a run would do without one.

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


def raw_clone(origin: Path, sha: str, tree: Path) -> float:
    """The baseline: a plain ``git clone`` of the origin and a checkout of ``sha``, no mirror."""
    started = time.perf_counter()
    git(tree.parent, "clone", "--quiet", "--no-checkout", str(origin), str(tree))
    git(tree, "checkout", "--quiet", "--detach", sha)
    took = time.perf_counter() - started
    shutil.rmtree(tree)
    return took


def measure(jobs: int, parallel: int) -> dict[str, list[float]]:
    """Seconds per checkout by case (``first job``, ``second job``, ``new commit``,
    ``parallel xN``, and the baseline ``plain clone``), ``jobs`` of each."""
    with tempfile.TemporaryDirectory(prefix="bench-checkout-") as folder:
        tmp = Path(folder)
        origin, shas = make_origin(tmp)
        head = shas[0]
        first, second, new, plain = [], [], [], []
        for n in range(jobs):
            runner = SourceCheckout(tmp / f"cold-{n}")  # a new mirror each time
            first.append(timed(runner, origin, head, tmp / "tree"))
            plain.append(raw_clone(origin, head, tmp / "tree"))
        warm = SourceCheckout(tmp / "warm")
        warm.prepare("bench/app", str(origin), shas[-1], tmp / "tree")  # the mirror exists
        shutil.rmtree(tmp / "tree")
        for sha in shas[1 : jobs + 1]:  # commits it lacks, newest first
            new.append(timed(warm, origin, sha, tmp / "tree"))
        for _ in range(jobs):
            second.append(timed(warm, origin, head, tmp / "tree"))
        with ThreadPoolExecutor(parallel) as pool:
            trees = [tmp / f"par-{n}" for n in range(jobs)]
            in_parallel = list(pool.map(lambda t: timed(warm, origin, head, t), trees))
    return {
        "first job": first,
        "second job": second,
        "new commit": new,
        f"parallel x{parallel}": in_parallel,
        "plain clone": plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="checkouts per measure")
    parser.add_argument("--parallel", type=int, default=4, help="jobs at once in 'parallel'")
    args = parser.parse_args()
    cases = measure(args.jobs, args.parallel)
    for name, samples in cases.items():
        print(f"{name:>14}: {summary(ms(samples))}")
    first, second = cases["first job"], cases["second job"]
    print(f"second job / first job (medians): {median(second) / median(first):.2f}")
    plain = median(cases["plain clone"])
    print(f"second job / plain clone (medians): {median(second) / plain:.2f}")


if __name__ == "__main__":
    sys.exit(main())
