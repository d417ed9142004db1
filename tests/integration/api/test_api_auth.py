"""API token auth over real HTTP (``SCHEDULER_API_TOKEN``): the read routes, the log route, the
dashboard and its buttons ask for it; the webhook and health never do."""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from scheduler.api import auth as auth_module
from scheduler.cli.sample_delivery import deliver, sample_push
from scheduler.local.dynamodb_local import free_port
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings
from scheduler.wiring import build_core
from tests.conftest import ROOT, MakeJob

SECRET = "webhook-secret-for-the-auth-tests"
TOKEN = "api-token-for-the-auth-tests-0123456789"
REPO = "octo-org/api"


def serve(settings: Settings, token: str | None) -> LocalHTTPServer:
    core = build_core(
        replace(settings, webhook_secret=SECRET, api_token=token, config_path=None), executor=None
    )
    return LocalHTTPServer(core.http_app).start()


@pytest.fixture
def url(settings: Settings, tables: object) -> Iterator[str]:
    server = serve(settings, TOKEN)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PROTECTED = [f"/repos/{REPO}/jobs", f"/repos/{REPO}/stats", "/jobs/j1", "/jobs/j1/log"]


@pytest.mark.parametrize("path", PROTECTED)
def test_read_routes_refuse_a_missing_or_wrong_token_and_take_the_right_one(
    client: httpx.Client, make_job: MakeJob, path: str
) -> None:
    make_job("j1", "pending")
    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "token" in missing.json()["error"]
    wrong = client.get(path, headers=bearer(TOKEN + "x"))
    assert wrong.status_code == 401 and wrong.json() == {"error": "wrong API token"}
    assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    right = client.get(path, headers=bearer(TOKEN))
    # The log of a job that has not run is a 404: past the token check, not refused by it.
    assert right.status_code == (404 if path.endswith("/log") else 200), right.text


@pytest.mark.parametrize("action", ["retry", "cancel", "approve"])
def test_the_dashboards_buttons_need_the_token_before_anything_else(
    client: httpx.Client, action: str
) -> None:
    refused = client.post(f"/ui/jobs/j1/{action}", data={"csrf": "x"})
    assert refused.status_code == 401 and 'name="token"' in refused.text
    wrong = client.post(f"/ui/jobs/j1/{action}", data={"csrf": "x"}, headers=bearer("nope"))
    assert wrong.status_code == 401


def test_webhook_and_health_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    answer = deliver(
        client, str(client.base_url).rstrip("/"), SECRET, sample_push(REPO, "main", None)
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert client.get(f"/jobs/{job_id}", headers=bearer(TOKEN)).json()["status"] == "pending"
    # A token does not replace the signature.
    unsigned = client.post(
        "/webhook",
        content=b"{}",
        headers={**bearer(TOKEN), "X-GitHub-Event": "push", "Content-Type": "application/json"},
    )
    assert unsigned.status_code == 401


def test_the_dashboard_asks_for_the_token_and_keeps_a_session(client: httpx.Client) -> None:
    form = client.get("/ui/repos/octo-org/api?status=failed")
    assert form.status_code == 401
    assert form.headers["content-type"].startswith("text/html")
    assert 'name="token"' in form.text and 'type="password"' in form.text
    assert 'value="/ui/repos/octo-org/api?status=failed"' in form.text  # back there after
    # A fragment (polled by the page) is refused as an API route.
    assert client.get("/ui/part/repos").status_code == 401

    wrong = client.post("/ui/login", data={"token": "nope", "next": "/"})
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    assert "set-cookie" not in wrong.headers

    right = client.post("/ui/login", data={"token": TOKEN, "next": "//evil.example/"})
    assert right.status_code == 303
    assert right.headers["location"] == "/"  # never to another site
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert TOKEN not in value and value.startswith("v1.")

    session = {"Cookie": f"scheduler_session={value}"}
    page = client.get("/", headers=session)
    assert page.status_code == 200 and "Repositories" in page.text
    assert client.get("/ui/part/repos", headers=session).status_code == 200
    assert client.get(f"/repos/{REPO}/jobs", headers=session).status_code == 200
    # A session cookie altered by one character is no session.
    forged = value[:-1] + ("A" if value[-1] != "A" else "B")
    assert client.get("/", headers={"Cookie": f"scheduler_session={forged}"}).status_code == 401
    # Neither is one minted from another token.
    other = auth_module.ApiAuth("another-token").new_session()
    assert client.get("/", headers={"Cookie": f"scheduler_session={other}"}).status_code == 401


def test_the_comparison_is_constant_time(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    assert client.get("/jobs/x", headers=bearer("guess")).status_code == 401
    # Digests of equal length are compared, whatever the length of the guess.
    assert calls and all(len(a) == len(b) == 32 for a, b in calls)


def test_without_a_token_only_loopback_hosts_are_served(settings: Settings, tables: object) -> None:
    server = serve(settings, None)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get(f"/repos/{REPO}/jobs").status_code == 200
            assert client.get("/", headers={"Host": "localhost:1"}).status_code == 200
            # A name made to resolve to 127.0.0.1 (DNS rebinding) is not this machine's.
            rebound = client.get(f"/repos/{REPO}/jobs", headers={"Host": "evil.example"})
            assert rebound.status_code == 401
            assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
    finally:
        server.stop()


# Names that are this machine's (any port), and names a DNS-rebinding page can be served from.
LOOPBACK_HOSTS = [
    "127.0.0.1",
    "127.0.0.1:8080",
    "127.1.2.3",
    "[::1]",
    "[::1]:8080",
    "localhost",
    "LOCALHOST:1",
    "app.localhost",
    "app.localhost:8080",
]
REBOUND_HOSTS = [
    "evil.example",
    "127.evil.example",
    "127.0.0.1.nip.io",
    "127.0.0.1.nip.io:8080",
    "localhost.evil.example",
    "evil-localhost",
    "[::1].evil.example",
    "0x7f.0.0.1",
    "2130706433",
    "127.0.0.1@evil.example",
    "evil.example@127.0.0.1",
]


def test_without_a_token_a_rebound_name_that_looks_like_loopback_is_refused(
    settings: Settings, tables: object
) -> None:
    server = serve(settings, None)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for host in LOOPBACK_HOSTS:
                for path in (f"/repos/{REPO}/jobs", "/"):
                    answer = client.get(path, headers={"Host": host})
                    assert answer.status_code == 200, (host, path, answer.status_code)
            for host in REBOUND_HOSTS:
                for path in (f"/repos/{REPO}/jobs", "/jobs/j1/log", "/ui/part/repos", "/"):
                    answer = client.get(path, headers={"Host": host})
                    assert answer.status_code == 401, (host, path, answer.status_code)
    finally:
        server.stop()
    # What `scheduler up --host` takes: a bare address or name.
    assert all(map(auth_module.is_loopback_host, ["127.0.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(auth_module.is_loopback_host, ["0.0.0.0", "::", "127.evil.example"]))


def test_scheduler_up_refuses_a_public_host_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env["GITHUB_WEBHOOK_SECRET"] = SECRET
    args = [
        str(Path(sys.executable).with_name("scheduler")),
        "up",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--dynamodb-port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    done = subprocess.run(
        args, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "SCHEDULER_API_TOKEN" in lines[0], done.stderr
    assert not (tmp_path / "data" / "stack.json").exists()
