"""`scheduler github app-setup`: the App manifest asks for exactly the permissions and events
the scheduler uses, and the creation page posts it to GitHub's form."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scheduler.cli.commands import app, main


def test_app_setup_prints_the_manifest(tmp_path: Path) -> None:
    page = tmp_path / "create.html"
    result = CliRunner().invoke(
        app, ["github", "app-setup", "--url", "https://ci.example.com/", "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output[: result.output.index("\n}\n") + 2])
    assert document["default_permissions"] == {
        "checks": "write",
        "contents": "read",
        "metadata": "read",
        "pull_requests": "read",
        "statuses": "write",
    }
    assert document["default_events"] == ["check_run", "check_suite", "pull_request", "push"]
    assert document["hook_attributes"] == {"url": "https://ci.example.com/webhook", "active": True}
    assert "installation and installation_repositories" in result.output
    form = page.read_text()
    assert 'action="https://github.com/settings/apps/new" method="post"' in form
    value = re.search(r'name="manifest" value="([^"]*)"', form)
    assert value is not None and json.loads(html.unescape(value.group(1))) == document


def test_app_setup_json_and_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    result = CliRunner().invoke(app, ["github", "app-setup", "--json", "--name", "ci"])
    assert result.exit_code == 0
    assert json.loads(result.output)["name"] == "ci"
    with pytest.raises(SystemExit) as exited:
        main(["github", "app-setup", "--url", "ftp://x"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: --url must be an http(s) address, not 'ftp://x'\n"
