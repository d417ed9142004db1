"""The README and docs/ stay true to the code: short README, links that resolve, every
environment variable the code reads and every CLI command described in the reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from scheduler.cli.commands import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
REFERENCE = ROOT / "docs" / "reference.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens dropped, spaces as '-'."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_is_short_and_leads_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    up, test = text.index("make up"), text.index("make test\n")
    assert up < text.index("## A first job") < test


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_between_pages_resolves(page: Path) -> None:
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: outside the repository
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} names no file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target} names no heading"


def test_every_variable_the_code_reads_is_in_the_reference() -> None:
    names: set[str] = set()
    for source in (ROOT / "scheduler").rglob("*.py"):
        names.update(
            re.findall(
                r"[\"'](SCHEDULER_[A-Z0-9_]*[A-Z0-9]|AWS_ENDPOINT_URL_DYNAMODB)[\"']",
                source.read_text(),
            )
        )
    reference = REFERENCE.read_text()
    assert "SCHEDULER_TRACING" in names  # the search finds what it looks for
    missing = sorted(name for name in names if f"`{name}" not in reference)
    assert not missing, f"not in docs/reference.md: {missing}"


def commands(group: Any, prefix: str = "scheduler") -> list[str]:
    """Every leaf command of a (Typer's) click group, with its path."""
    found = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += commands(command, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


def test_every_cli_command_is_in_the_reference() -> None:
    every = commands(typer.main.get_command(app))
    assert "scheduler config check" in every and "scheduler dlq replay" in every
    reference = REFERENCE.read_text()
    missing = [command for command in every if command not in reference]
    assert not missing, f"not in docs/reference.md: {missing}"
