"""``requirements.lock`` keeps up with ``pyproject.toml``: every dependency (the dev extra's too)
is pinned there within its range, and every pin carries hashes (``make setup`` installs it with
``--require-hashes``). A dependency added without ``make lock`` fails here, not on a fresh
machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")


def _locked() -> dict[str, tuple[Version, int]]:
    """Name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        found = _PIN.match(line)
        if found:
            current = canonicalize_name(found.group(1))
            pins[current] = (Version(found.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted.extend(extra)
    return [Requirement(text) for text in wanted]


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    locked = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement.specifier}:"
            " run `make lock`"
        )


def test_every_pin_is_exact_and_hashed() -> None:
    locked = _locked()
    assert len(locked) > 20  # the transitive dependencies are there too
    unhashed = sorted(name for name, (_, hashes) in locked.items() if hashes == 0)
    assert unhashed == []
    assert {"urllib3", "s3transfer", "markupsafe"} <= set(locked)


def test_dependencies_are_ranges_not_pins() -> None:
    """The lock pins; pyproject.toml says what is known to work, so an installer (pipx) can
    share a virtualenv with other tools."""
    pinned = [str(r) for r in _declared() if any(s.operator == "==" for s in r.specifier)]
    assert pinned == []
