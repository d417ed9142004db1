"""The dashboard's rendering: Jinja2 templates (package data) and the filters they use.

Autoescaping is on for every template (repository and branch names, commit messages and run
output come from payloads: hostile input); nothing is marked safe by hand. Times are rendered
as absolute UTC in ``<time datetime=...>`` and turned into ages by the page's script, so a
fragment's bytes (and its ETag) change only when the data does, not every second.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment

__all__ = ["STATIC_TYPES", "etag_of", "render", "static_file"]

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return ""
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(milliseconds: int | None) -> str:
    if milliseconds is None or milliseconds < 0:
        return ""
    seconds = milliseconds // 1000
    if seconds < 60:
        return f"{milliseconds / 1000:.1f} s" if seconds < 10 else f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def job_duration(job: Any) -> str:
    """How long the job's current attempt ran (finished jobs only; a running one's is live)."""
    start = job.started_at or job.activated_at
    if start is None or job.finished_at is None:
        return ""
    return duration(job.finished_at - start)


_STEP_SUFFIX = re.compile(r"\.s[0-9]{1,3}$")  # a pipeline step's id: <run>.s<n>
SHORT_ID = 18


def short_id(job_id: str) -> str:
    """A job id as a listing shows it: the first :data:`SHORT_ID` characters, and a step's
    ``.s<n>`` kept (else every step of a run would read as the run)."""
    step = _STEP_SUFFIX.search(job_id)
    head, tail = (job_id[: step.start()], step.group()) if step else (job_id, "")
    return (head if len(head) <= SHORT_ID else head[: SHORT_ID - 1] + "…") + tail


@cache
def _environment() -> Environment:
    # Imported on the first page rendered: the webhook function serves none (a cold start
    # without Jinja2 is ~20-50 ms shorter).
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("scheduler.api", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iso"] = iso
    env.filters["duration"] = duration
    env.filters["job_duration"] = job_duration
    env.filters["short_id"] = short_id
    return env


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


def etag_of(*parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()
    return f'"{digest[:32]}"'


def _shipped() -> dict[str, tuple[bytes, str, str]]:
    """The files the package ships under ``static/``, read once: the route serves these names
    and no other, so a request never reaches the file system (a 300-character name was an
    ``OSError``) and nothing is remembered of the names asked for."""
    shipped: dict[str, tuple[bytes, str, str]] = {}
    for entry in resources.files("scheduler.api").joinpath("static").iterdir():
        suffix = PurePosixPath(entry.name).suffix
        if entry.is_file() and suffix in STATIC_TYPES and not entry.name.startswith("."):
            data = entry.read_bytes()
            etag = etag_of(data.decode("utf-8", "replace"))
            shipped[entry.name] = (data, STATIC_TYPES[suffix], etag)
    return shipped


_STATIC: Mapping[str, tuple[bytes, str, str]] = MappingProxyType(_shipped())


def static_file(name: str) -> tuple[bytes, str, str] | None:
    """A vendored file under ``static/``: its bytes, media type and ETag (None: no such file)."""
    return _STATIC.get(name)
