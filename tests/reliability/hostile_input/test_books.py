"""Afterwards (run last, see ``conftest.py``): the books balance, memory stayed bounded and
a plain signed push still runs."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

from harness import wait_for

from hostile_input.world import (
    AFTER_REPO,
    FULL,
    FULL_TOTAL,
    MAX_BUSY,
    MB,
    SIZES,
    UNCHECKED,
    Sent,
    World,
)
from scheduler.db.clients import client as dynamodb_client
from scheduler.settings import Settings


def scan(world: World, table: str) -> list[dict[str, Any]]:
    settings_ = Settings.from_env(world.stack.env_for_cli())
    ddb = dynamodb_client("dynamodb", settings_)
    name = getattr(settings_.tables, table)
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def test_afterwards_the_books_balance_memory_is_bounded_and_a_push_still_runs(
    world: World,
) -> None:
    client = world.client
    # The server answers normally: a plain signed push makes a job that runs to the end.
    delivery, sha = world.fresh()
    response = world.stack.deliver(client, AFTER_REPO, delivery, sha)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    world.accepted[job_id] = Sent("push", AFTER_REPO, sha, "after the attack")
    wait_for(
        "the push after the attack to pass",
        lambda: world.stack.job(client, job_id)["status"] == "passed",
        180,
        0.5,
    )

    # Every job in the table is one the server answered 202 to a validly signed delivery,
    # with what that delivery asked for; and every such answer has its job.
    jobs = {item["job_id"]["S"]: item for item in scan(world, "jobs")}
    stray = sorted(set(jobs) - set(world.accepted))
    assert not stray, f"PRODUCT BUG: jobs nobody was told about: {stray[:20]}"
    missing = sorted(set(world.accepted) - set(jobs))
    assert not missing, f"PRODUCT BUG: jobs answered 202 but not stored: {missing[:20]}"
    # Every job runs to the end and passes (its command is `true`): whatever an accepted
    # payload held reached the run as data (environment variables) without breaking it.
    per_repo = Counter(sent.repo.lower() for sent in world.accepted.values())

    def all_finished() -> bool:
        for repo in per_repo:
            counts = world.stack.stats(client, repo)["counts"]
            if counts.get("pending", 0) or counts.get("active", 0):
                return False
        return True

    wait_for("every job to finish", all_finished, 300, 1.0)
    for job_id, sent in world.accepted.items():
        job = world.stack.job(client, job_id)  # whole and readable through the API
        held = (job["event"], job["repo"], job["sha"], job["ref"], job["sender"])
        wanted = (sent.event, sent.repo.lower(), sent.sha, sent.ref, sent.sender)
        assert all(w in (UNCHECKED, h) for h, w in zip(held, wanted, strict=True)), (
            f"PRODUCT BUG: the job does not hold what was sent: {held} vs {sent}"
        )
        assert job["status"] == "passed" and job["history"], (
            f"PRODUCT BUG: an accepted job did not pass: {job} from {sent.request}"
        )

    # The counters count exactly the jobs; one trigger guard per job; nothing else written.
    repos = scan(world, "repos")
    guards = [item for item in repos if item["repo"]["S"].startswith("trigger#")]
    counters = {item["repo"]["S"]: item for item in repos if item not in guards}
    assert len(guards) == len(jobs), (len(guards), len(jobs))
    assert set(counters) == set(per_repo), (sorted(counters), sorted(per_repo))
    assert sum(per_repo.values()) == len(jobs)
    for repo, count in per_repo.items():
        stats = world.stack.stats(client, repo)
        assert stats["total"] == count, (repo, stats, count)
        listed = client.get(f"{world.url}/repos/{repo}/jobs", params={"limit": 100})
        assert listed.status_code == 200, listed.text
    # The repositories named only by unsigned deliveries have nothing at all.
    for repo in sorted(world.unsigned_repos):
        answer = client.get(f"{world.url}/repos/{quote(repo, safe='/')}/stats")
        assert answer.status_code in (400, 404), (repo, answer.status_code, answer.text)

    world.assert_memory_bounded()
    assert len(world.busy) <= MAX_BUSY, world.busy
    # The stack's own access log (it sees what no client can: an answer sent without a status
    # line, as the 505s of bad HTTP versions were before a493116): no 5xx but the busy 503s
    # the client saw.
    log = (world.stack.workdir / "stack.log").read_text(errors="replace")
    served = Counter(
        line.rsplit(" ", 1)[-1]
        for line in log.split("\n")
        if " scheduler.local.http_server " in line
    )
    server_errors = {
        code: count for code, count in served.items() if code.isdigit() and int(code) >= 500
    }
    assert server_errors.pop("503", 0) <= len(world.busy), served
    assert not server_errors, f"PRODUCT BUG: 5xx in the stack's access log: {server_errors}"
    if FULL and set(SIZES) <= world.tests_run:
        assert world.total_requests >= FULL_TOTAL, world.total_requests
    for sign_of_a_crash in ("Traceback", "unexpected error", "request handling failed"):
        assert sign_of_a_crash not in log, (
            f"PRODUCT BUG: {sign_of_a_crash!r} in the stack's log:\n"
            + log[log.index(sign_of_a_crash) - 2000 :][:6000]
        )
    print(
        f"\n[hostile] total: {world.total_requests} requests; {len(jobs)} jobs, all from"
        f" validly signed deliveries answered 202; busy 503s {len(world.busy)};"
        f" rss after warm-up {world.rss_baseline / MB:.0f} MB, peak {world.rss_peak / MB:.0f} MB"
    )
