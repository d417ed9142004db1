"""Cold start of each Lambda function of ``infra/template.yaml``: imports and first composition.

For every function (WebhookFunction, ApiFunction, StreamFunction, CompletionFunction,
ReaperFunction) a fresh interpreter is started N times with the function's environment as the
template gives it; each run times, in process:

* **import**: ``import`` of the handler's module path (``scheduler.aws.handlers``);
* **compose**: the first ``core()`` and the part of the core the handler touches first (the
  webhook app, the query app, the dispatcher, the run starter, the reaper and reconciler) --
  what a cold start does before its first event.

An unmeasured first run per function writes the bytecode caches, so what is timed is
importing, not compiling. Each figure is in wall-clock ms and in the process's CPU ms
(``time.process_time``), the steadier one on a shared machine. ``modules``: top-level
packages loaded in all.

The template's references are filled with local stand-ins and its secrets' ARNs with plain
values (the variables ``Settings`` reads), so nothing calls AWS: AWS clients are made, never
used. ``AWS_LAMBDA_FUNCTION_NAME`` is set, so the settings are those of Lambda (X-Ray tracing
on, as the template's ``Tracing: Active`` asks; ``--tracing off`` to leave the SDK out).

The CLI's packages (click, rich, pygments, typer) are made absent in each probe, as they are
from a function's artefact (``infra/lambda-requirements.txt``): here httpx would import its
optional command line with them.

One more run per function under ``python -X importtime`` lists the heavy third-party packages
it loads (the self import time of each top-level package's modules summed, largest first).

Run from the project root::

    .venv/bin/python bench/cold_imports.py [--runs 15] [--tracing xray|off] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scheduler.db.template import load_template

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "template.yaml"
FUNCTIONS = (
    "WebhookFunction",
    "ApiFunction",
    "StreamFunction",
    "CompletionFunction",
    "ReaperFunction",
)
# Each handler's first use of the core, beyond core() itself.
FIRST_USE = {
    "webhook": "c.webhook_app",
    "api": "c.query_app",
    "stream": "c.dispatcher",
    "build_completed": "c.runs",
    "reap": "(c.reaper, c.reconciler)",
}
# A secret's ARN variable -> the plain variable Settings reads (no Secrets Manager here).
SECRET_VALUES = {
    "SCHEDULER_WEBHOOK_SECRET_ARN": ("GITHUB_WEBHOOK_SECRET", "cold-imports-webhook-secret-0123"),
    "SCHEDULER_CURSOR_SECRET_ARN": ("SCHEDULER_CURSOR_SECRET", "cold-imports-cursor-secret"),
    "SCHEDULER_API_TOKEN_ARN": ("SCHEDULER_API_TOKEN", "cold-imports-api-token"),
    "SCHEDULER_GITHUB_TOKEN_ARN": ("SCHEDULER_GITHUB_TOKEN", "cold-imports-github-token"),
}
# Packages reported by name when loaded (whatever their import time).
WATCHED = (
    "jinja2",
    "markupsafe",
    "httpx",
    "httpcore",
    "anyio",
    "prometheus_client",
    "opentelemetry",
    "jwt",
    "cryptography",
    "aws_xray_sdk",
    "yaml",
)
# The CLI's packages: in this virtualenv, not in a function's artefact
# (infra/lambda-requirements.txt). httpx imports its optional command line (click, rich,
# pygments) when they are installed: each probe makes them absent, as on Lambda.
NOT_IN_LAMBDA = ("click", "rich", "pygments", "typer")
PROBE = """
import sys, time, json
for name in {absent!r}:
    sys.modules[name] = None  # an import of it fails, as when not installed
t0, c0 = time.perf_counter(), time.process_time()
import importlib
handlers = importlib.import_module({module!r})
t1, c1 = time.perf_counter(), time.process_time()
c = handlers.core()
{first_use}
t2, c2 = time.perf_counter(), time.process_time()
top = sorted({{m.split('.')[0] for m, mod in sys.modules.items() if mod is not None}})
print(json.dumps({{
    "import_ms": (t1 - t0) * 1e3, "compose_ms": (t2 - t1) * 1e3,
    "import_cpu_ms": (c1 - c0) * 1e3, "compose_cpu_ms": (c2 - c1) * 1e3, "top": top,
}}))
"""

__all__ = ["function_environment", "main", "measure"]


def function_environment(
    template: Mapping[str, Any], logical_id: str, config: Path, *, tracing: str
) -> dict[str, str]:
    """The function's environment as the template gives it (optional parts off), its
    references filled with stand-ins and its secrets given as plain values."""
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    own = template["Resources"][logical_id]["Properties"].get("Environment", {})
    parameters = template.get("Parameters", {})
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_LAMBDA_FUNCTION_NAME": f"cold-{logical_id}",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "cold-imports",
        "AWS_SECRET_ACCESS_KEY": "cold-imports",
        # Never contacted: clients are made, not used.
        "SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:9",
        "SCHEDULER_TRACING": tracing,
    }
    for name, given in {**shared.get("Variables", {}), **own.get("Variables", {})}.items():
        value = given["Fn::If"][2] if isinstance(given, dict) and "Fn::If" in given else given
        if value == {"Ref": "AWS::NoValue"}:
            continue
        if name in SECRET_VALUES:
            plain, secret = SECRET_VALUES[name]
            env[plain] = secret
            continue
        if name == "SCHEDULER_CONFIG":
            env[name] = str(config)
        elif isinstance(value, dict) and value.get("Ref") in parameters:
            env[name] = str(parameters[value["Ref"]].get("Default", ""))
        elif isinstance(value, dict):  # a resource's !Ref, a !Sub: a stand-in name
            env[name] = f"cold-{name.lower()}"
        else:
            env[name] = str(value)
    return env


def _handler(template: Mapping[str, Any], logical_id: str) -> tuple[str, str]:
    path = str(template["Resources"][logical_id]["Properties"]["Handler"])
    module, _, function = path.rpartition(".")
    return module, function


def _probe(module: str, function: str, absent: tuple[str, ...] = NOT_IN_LAMBDA) -> str:
    return PROBE.format(module=module, first_use=FIRST_USE[function], absent=absent)


def _run(
    code: str, env: Mapping[str, str], *, importtime: bool = False
) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    done = subprocess.run(
        argv, cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def heavy_packages(importtime_log: str, top: int = 8) -> list[tuple[str, float]]:
    """Third-party top-level packages by import time (ms), largest first: the self time of
    every module of the package summed (its own dependencies are counted under theirs)."""
    by_package: dict[str, float] = {}
    for line in importtime_log.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        package = parts[2].strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(parts[0]) / 1e3
    third_party = {
        name: ms
        for name, ms in by_package.items()
        if name not in ("scheduler", "state_machines")
        and name not in sys.stdlib_module_names
        and not name.startswith("_")
    }
    return sorted(third_party.items(), key=lambda item: -item[1])[:top]


def measure(runs: int, tracing: str) -> list[dict[str, Any]]:
    template = load_template(TEMPLATE)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "scheduler.toml"
        config.write_text((ROOT / "scheduler.local.toml").read_text())
        for logical_id in FUNCTIONS:
            module, function = _handler(template, logical_id)
            env = function_environment(template, logical_id, config, tracing=tracing)
            code = _probe(module, function)
            _run(code, env)  # writes the bytecode caches: what is timed is importing, not compiling
            samples = [_run(code, env)[0] for _ in range(runs)]
            last, log = _run(code, env, importtime=True)
            loaded = set(last["top"])
            rows.append(
                {
                    "function": logical_id,
                    "handler": f"{module}.{function}",
                    "import_ms": statistics.median(s["import_ms"] for s in samples),
                    "compose_ms": statistics.median(s["compose_ms"] for s in samples),
                    "total_ms": statistics.median(
                        s["import_ms"] + s["compose_ms"] for s in samples
                    ),
                    "import_cpu_ms": statistics.median(s["import_cpu_ms"] for s in samples),
                    "total_cpu_ms": statistics.median(
                        s["import_cpu_ms"] + s["compose_cpu_ms"] for s in samples
                    ),
                    "modules": len(last["top"]),
                    "watched": [name for name in WATCHED if name in loaded],
                    "heavy": heavy_packages(log),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per function")
    parser.add_argument("--tracing", choices=("xray", "off"), default="xray")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.runs, args.tracing)
    print(
        f"cold start per function: median of {args.runs} fresh interpreters"
        f" (Python {sys.version.split()[0]}, tracing {args.tracing})"
    )
    print(
        f"{'function':<20}{'import ms':>10}{'compose ms':>11}{'total ms':>9}"
        f"{'cpu import':>11}{'cpu total':>10}  modules  watched packages loaded"
    )
    for row in rows:
        watched = ", ".join(row["watched"]) or "-"
        print(
            f"{row['function']:<20}{row['import_ms']:>10.1f}{row['compose_ms']:>11.1f}"
            f"{row['total_ms']:>9.1f}{row['import_cpu_ms']:>11.1f}{row['total_cpu_ms']:>10.1f}"
            f"  {row['modules']:>7}  {watched}"
        )
    print("\nheaviest third-party packages per function (import ms, -X importtime):")
    for row in rows:
        heavy = ", ".join(f"{name} {ms:.0f}" for name, ms in row["heavy"])
        print(f"  {row['function']:<20}{heavy}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
