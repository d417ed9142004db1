"""``scheduler config check`` on pipeline files, through the real console script in a
subprocess: this repository's own pipeline passes, a bad file is one line with its line number
and exit 1, a matrix is summed up after expansion, ``--json`` says the steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = str(Path(sys.executable).parent / "scheduler")  # the venv's console script

MATRIX = """\
steps:
  - key: lint
    command: make lint
  - key: test
    command: [make, test]
    matrix: {python: ["3.11", "3.12"], os: [linux, mac, bsd]}
    needs: lint
  - key: deploy
    command: ./deploy.sh
    needs: test
    if: branch == "main"
"""


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's scheduler package
    return subprocess.run(
        [SCHEDULER, "config", "check", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_this_repositorys_own_pipeline_passes() -> None:
    done = check(".scheduler/pipeline.yml")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        ".scheduler/pipeline.yml: ok: 5 steps: lint, unit, integration, e2e, reliability\n"
    )


def test_a_matrix_is_counted_after_expansion(tmp_path: Path) -> None:
    (tmp_path / "ci.yaml").write_text(MATRIX)
    done = check("ci.yaml", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout == "ci.yaml: ok: 8 steps: lint, test (6 variants), deploy\n"
    done = check("--json", "ci.yaml", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] is True and report["problems"] == []
    assert report["steps"][0] == "lint" and report["steps"][-1] == "deploy"
    assert "test[os=bsd,python=3.12]" in report["steps"] and len(report["steps"]) == 8


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (MATRIX.replace("needs: test\n", "needs: tests\n"), 10,
         "step 'deploy' needs 'tests', which is not a step"),
        (MATRIX.replace("needs: lint", "needs: deploy"), 7,
         "the needs form a cycle: test[os=linux,python=3.11] -> deploy"),
        (MATRIX.replace('branch == "main"', "branch = main"), 11, "if:"),
        (MATRIX + "  - key: lint\n    command: again\n", 12, "step key 'lint' is used twice"),
        ("steps:\n  - key: a\n    command: !!python/object:os.system x\n", 3,
         "the tag 'tag:yaml.org,2002:python/object:os.system' is not allowed"),
    ],
    ids=["unknown-need", "cycle", "bad-if", "duplicate-key", "python-tag"],
)  # fmt: skip
def test_a_bad_file_is_one_line_with_its_line_number_and_exit_1(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    folder = tmp_path / ".scheduler"
    folder.mkdir()
    (folder / "pipeline.yml").write_text(text)
    done = check(".scheduler/pipeline.yml", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "")
    (only,) = done.stdout.splitlines()
    assert only.startswith(f".scheduler/pipeline.yml:{line}: {message}")
    done = check("--json", ".scheduler/pipeline.yml", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 2 and report["ok"] is False
    (problem,) = report["problems"]
    assert problem["line"] == line and problem["message"].startswith(message)


def test_a_file_over_64_kib_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "big.yml").write_text("#" * (64 * 1024 + 1))
    done = check("big.yml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == "big.yml: the file is 65537 bytes, more than the limit of 65536\n"
    done = check("missing.yml", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: cannot read pipeline file missing.yml")
    assert done.stderr.count("\n") == 1
