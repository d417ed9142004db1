"""``scheduler github app-setup``: print the GitHub App's manifest (and, with ``--html``, a
page whose one button creates the App on GitHub), then what to set once it exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scheduler.errors import ConfigurationError
from scheduler.github.app_manifest import ALWAYS_DELIVERED, creation_page, manifest

__all__ = ["github_app"]

github_app = typer.Typer(help="GitHub's side: the GitHub App.", no_args_is_help=True)

NEXT_STEPS = """\
Create the App from this manifest (--html FILE writes a page whose button does it), then:
  1. On the App's page: generate a private key (a .pem file) and note the App ID.
  2. Set GITHUB_WEBHOOK_SECRET to the App's webhook secret (at least 32 characters).
  3. Locally: SCHEDULER_GITHUB_APP_ID=<id> SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE=<file.pem>.
     On AWS: put the .pem in Secrets Manager and deploy with GitHubAppId and
     GitHubAppPrivateKeyArn (the key is never a template value or an environment value).
  4. Install the App on the repositories (or the organisation) to build.
The App also receives {always} deliveries, which need no subscription."""


@github_app.command("app-setup")
def app_setup(  # noqa: PLR0917 - typer maps options to parameters
    url: Annotated[
        str,
        typer.Option(help="The scheduler's public address (its webhook is URL/webhook)."),
    ] = "http://127.0.0.1:8080",
    name: Annotated[str, typer.Option(help="The App's name on GitHub.")] = "scheduler",
    webhook_url: Annotated[
        str | None, typer.Option(help="Where GitHub posts deliveries (default URL/webhook).")
    ] = None,
    html_file: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a page that creates the App in one click."),
    ] = None,
    github_url: Annotated[
        str, typer.Option(help="GitHub's address (GitHub Enterprise: its own).")
    ] = "https://github.com",
    as_json: Annotated[bool, typer.Option("--json", help="Only the manifest, as JSON.")] = False,
) -> None:
    """Print the GitHub App manifest (checks write, contents read, metadata read, pull requests
    read, statuses write; events check_run, check_suite, pull_request, push)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"--url must be an http(s) address, not {url[:60]!r}")
    document = manifest(name, url, webhook_url=webhook_url)
    if html_file is not None:
        try:
            html_file.write_text(creation_page(document, github_url=github_url), encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot write {html_file}: {exc.strerror}") from None
    typer.echo(json.dumps(document, indent=None if as_json else 2))
    if not as_json:
        typer.echo("")
        typer.echo(NEXT_STEPS.format(always=" and ".join(ALWAYS_DELIVERED)))
