"""The one stack every hostile-input module sends to, and the order that keeps the books last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import LocalStackProcess

from hostile_input.world import CONFIG, World, warm_up

HERE = Path(__file__).resolve().parent
# The original order of the tests (one module before the split); the books come last.
ORDER = [
    "test_webhook_payloads.py",
    "test_webhook_headers.py",
    "test_read_routes.py",
    "test_malformed_http.py",
    "test_body_limits.py",
    "test_books.py",
]


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    stack = LocalStackProcess(tmp_path_factory.mktemp("hostile"), config=CONFIG, max_runs=4)
    stack.start()
    try:
        with httpx.Client(timeout=60) as client:
            world = World(stack, client)
            warm_up(world)
            yield world
    finally:
        stack.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """This package's tests run together, in ORDER, where the first of them was collected: the
    books check what every other module sent, so they run last, while the one stack still runs
    (a package-scoped fixture is torn down once a test from elsewhere runs)."""
    ours = [item for item in items if item.path.parent == HERE]
    if not ours:
        return
    first = items.index(ours[0])
    rest = [item for item in items if item.path.parent != HERE]
    ours.sort(key=lambda item: ORDER.index(item.path.name))  # stable: in-module order kept
    items[:] = rest[:first] + ours + rest[first:]
