"""Issue 10, the combined fault: a storm of deliveries (each sent twice) while DynamoDB Local is
SIGKILLed and restarted by the stack, and then the stack itself is SIGKILLed and restarted.

The books at the end: every distinct delivery has exactly one job, every job passed, no
attempt's command ran twice (the commands' own side-effect log), no process of a run is left,
the repositories' counters equal the jobs they count, and the dead-letter table is empty.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from harness import (
    UNSANDBOXED,
    LocalStackProcess,
    assert_doctor_reports_nothing,
    kill_leftovers,
    run_command,
    wait_for,
)
from processes import pid_alive
from test_database_faults import deliver_until_accepted

REPOS = ("storm/a", "storm/b", "storm/c")
DELIVERIES = 30


class Storm:
    """Delivers ``DELIVERIES`` pushes, each twice (GitHub's redelivery), retrying refusals."""

    def __init__(self, stack: LocalStackProcess) -> None:
        self.stack = stack
        self.jobs: dict[str, list[str]] = {}  # delivery id -> job id of each send
        self.refusals: Counter[int] = Counter()  # 503s and (0) connections refused
        self.sent = threading.Event()  # a third of the storm is in
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(300)
        assert not self._thread.is_alive(), "the storm did not end"
        assert not self.errors, self.errors

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for n in range(DELIVERIES):
                    delivery = f"storm-{n}"
                    repo, sha = REPOS[n % len(REPOS)], f"{n + 1:040x}"
                    for _send in range(2):
                        job_id, codes = deliver_until_accepted(
                            self.stack, client, repo, delivery, sha
                        )
                        self.jobs.setdefault(delivery, []).append(job_id)
                        self.refusals.update(codes[:-1])
                    if n == DELIVERIES // 3:
                        self.sent.set()
                    time.sleep(0.2)
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)
            self.sent.set()


def test_storm_through_a_database_crash_and_a_stack_crash_keeps_the_books(
    tmp_path: Path,
) -> None:
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 1, via_shell=True)}\n"
        + UNSANDBOXED
        + "concurrency = 3\ntimeout_seconds = 600\n[defaults.retry]\nattempts = 1\n"
    )
    stack.start()
    storm = Storm(stack)
    try:
        storm.start()
        assert storm.sent.wait(120)
        # DynamoDB Local dies under the storm; the stack restarts it.
        first = stack.kill_dynamodb()
        wait_for("a new DynamoDB Local", lambda: stack.dynamodb_pid() not in (None, first), 60)
        # DynamoDB Local may lose writes it acknowledged just before a SIGKILL (it is not
        # durable the way DynamoDB is): what was accepted so far is delivered once more.
        recreated = set()  # jobs the kill lost, made anew (they may have run before)
        with httpx.Client(timeout=10) as client:
            for delivery, sends in list(storm.jobs.items()):
                n = int(delivery.rsplit("-", 1)[1])
                job_id, codes = deliver_until_accepted(
                    stack, client, REPOS[n % len(REPOS)], delivery, f"{n + 1:040x}"
                )
                assert job_id == sends[0], (delivery, job_id)
                if codes[-1] == 202:
                    recreated.add(job_id)
        wait_for("runs to go on", lambda: len(stack.starts()) >= 6, 90)
        # Then the whole stack dies with runs going, and comes back.
        stack.kill()
        stack.start()
        storm.join()

        job_ids = sorted({job for sends in storm.jobs.values() for job in sends})
        with httpx.Client(timeout=30) as client:

            def all_passed() -> bool:
                return all(stack.job(client, j)["status"] == "passed" for j in job_ids)

            wait_for("every job to pass", all_passed, 300, 1.0)
            jobs = {j: stack.job(client, j) for j in job_ids}
            stats = {repo: stack.stats(client, repo) for repo in REPOS}

        # The storm went on through both crashes (refused sends were sent again).
        assert storm.refusals[503] > 0 and storm.refusals[0] > 0, storm.refusals
        # One job per distinct delivery, whichever send it was.
        assert len(storm.jobs) == DELIVERIES
        assert all(len(set(sends)) == 1 for sends in storm.jobs.values()), storm.jobs
        assert len(job_ids) == DELIVERIES
        # Every attempt's command ran once; every job passed on its last attempt.
        starts = Counter((s.job_id, s.attempt) for s in stack.starts())
        assert all(v == 1 for k, v in starts.items() if k[0] not in recreated), starts
        for job_id, job in jobs.items():
            assert (job_id, job["attempt"]) in starts, job
        # Counters equal the jobs they count.
        per_repo = Counter(job["repo"] for job in jobs.values())
        for repo in REPOS:
            counts = stats[repo]["counts"]
            assert counts["passed"] == per_repo[repo] == sum(counts.values()), stats[repo]
            assert stats[repo]["running"] == 0, stats[repo]
        assert stack.dead_letters() == []
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
        kill_leftovers([s.pid for s in stack.starts()])
    assert not any(pid_alive(s.pid) for s in stack.starts())
