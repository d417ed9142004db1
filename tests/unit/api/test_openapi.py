"""``/openapi.json`` against the routers: every route any runtime serves is described, with the
access it asks for, and the document is sound OpenAPI 3.1 (its schemas valid JSON Schema, every
reference found). That every described response is produced is ``tests/integration/api/
test_openapi_responses.py`` (it needs DynamoDB Local).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from scheduler.api.app import Application
from scheduler.api.auth import Access
from scheduler.api.metrics_route import scheduler_metrics
from scheduler.api.openapi import document
from scheduler.settings import Settings
from scheduler.wiring import Core, build_core

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PROTECTED = [{"bearerToken": []}, {"sessionCookie": []}]


@pytest.fixture(scope="module")
def core() -> Core:
    """The composition both runtimes use; no request is made (nothing listens on the port)."""
    settings = replace(
        Settings().for_local("http://127.0.0.1:18499"),
        webhook_secret="openapi-test-webhook-secret-of-40-characters",
        api_token="openapi-test-token",
    )
    return build_core(settings, executor=None)


def local_stack_app(core: Core) -> Application:
    """What ``scheduler up`` serves: the HTTP app with ``GET /metrics`` added, as
    ``LocalStack.start`` does."""
    app = core.http_app
    if not any(route.pattern == "/metrics" for route in app.router.routes):
        scheduler_metrics(core.store)(app.router)
    return app


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_every_route_of_every_runtime_is_described_and_nothing_else(core: Core) -> None:
    described = {(method, path) for method, path, _ in operations()}
    served = {(r.method, r.pattern) for r in local_stack_app(core).router.routes}
    assert served == described
    # AWS serves subsets of the same routes behind its two function URLs.
    for app in (core.webhook_app, core.query_app):
        assert {(r.method, r.pattern) for r in app.router.routes} <= described


def test_each_operation_asks_for_what_its_route_asks(core: Core) -> None:
    access = {(r.method, r.pattern): r.access for r in local_stack_app(core).router.routes}
    for method, path, operation in operations():
        wanted = access[(method, path)]
        assert operation["security"] == ([] if wanted is Access.PUBLIC else PROTECTED), path
        if wanted is not Access.PUBLIC:
            assert "401" in operation["responses"], (method, path)


def test_the_document_is_openapi_3_1_with_sound_schemas_and_references() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"]
    OpenAPIV31SpecValidator(doc).validate()  # the specification's own schema and rules
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)

    def references(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    for reference in references(doc):
        target: Any = doc
        for part in reference.removeprefix("#/").split("/"):
            target = target[part]  # a KeyError names a dangling reference
    for method, path, operation in operations():
        assert operation["responses"], (method, path)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert "{" + parameter["name"] + "}" in path
