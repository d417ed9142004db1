"""The operator CLI: thin commands that call one use case each and map typed errors to exits.

Exit codes: 0 success, 1 refused (not found, conflict, illegal transition), 2 usage or
configuration error. An error is one readable line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer

from scheduler import aws
from scheduler.errors import DomainError
from scheduler.settings import Settings
from scheduler.tables import ensure_tables

app = typer.Typer(
    name="scheduler",
    help="Idempotent CI/CD job scheduler on DynamoDB Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tables_app = typer.Typer(help="Manage the scheduler's DynamoDB tables.", no_args_is_help=True)
app.add_typer(tables_app, name="tables")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, exit_code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


def emit(data: Any, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(data, sort_keys=True) if as_json else human)


@tables_app.command("create")
def tables_create(as_json: JsonOption = False) -> None:
    """Create the tables of infra/template.yaml on the configured endpoint (if missing)."""
    settings = Settings.from_env()
    created = ensure_tables(aws.client("dynamodb", settings), settings)
    emit(
        {"created": created},
        as_json,
        "created: " + ", ".join(created) if created else "all tables exist",
    )


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except DomainError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
