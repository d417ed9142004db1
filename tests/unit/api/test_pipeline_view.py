"""The pipeline view's layout: columns by depth, rows ordered by the needs' rows, an arrow per
need from the right of the need's box to the left of the step's, and the SVG it renders."""

from __future__ import annotations

import re

from scheduler.api.dashboard import job_path
from scheduler.api.pipeline_view import (
    COLUMN_GAP,
    LABEL_CHARS,
    NODE_HEIGHT,
    NODE_WIDTH,
    PAD,
    ROW_GAP,
    layout,
)
from scheduler.api.views import render, short_id
from scheduler.db.queries import StepSummary


def step(key: str, *needs: str, status: str = "blocked", n: int = 1, **times: int) -> StepSummary:
    return StepSummary(
        job_id=f"run.s{n}",
        repo="octo/app",
        event="push",
        status=status,
        attempt=times.pop("attempt", 1),
        branch="main",
        ref="refs/heads/main",
        sha="a" * 40,
        pr_number=None,
        sender=None,
        received_at=1_000,
        activated_at=times.get("activated_at"),
        started_at=times.get("started_at"),
        finished_at=times.get("finished_at"),
        updated_at=None,
        reason=None,
        step_key=key,
        needs=needs,
    )


def diamond() -> list[StepSummary]:
    return [
        step("build", status="passed", n=1, started_at=1_000, finished_at=3_500),
        step("lint", status="failed", n=2, started_at=1_000, finished_at=1_400, attempt=2),
        step("test[n=1]", "build", status="active", n=3, started_at=4_000),
        step("test[n=2]", "build", status="pending", n=4),
        step("docs", "lint", status="skipped", n=5, finished_at=5_000),
        step("report", "test[n=1]", "test[n=2]", "lint", n=6),
    ]


def test_a_steps_column_is_one_more_than_its_deepest_need() -> None:
    view = layout(diamond())
    columns = {node.key: node.column for node in view.nodes}
    assert columns == {
        "build": 0,
        "lint": 0,
        "test[n=1]": 1,
        "test[n=2]": 1,
        "docs": 1,
        "report": 2,
    }
    assert view.columns == 3
    assert view.width == 2 * PAD + 3 * NODE_WIDTH + 2 * COLUMN_GAP
    assert view.height == 2 * PAD + 3 * NODE_HEIGHT + 2 * ROW_GAP  # column 1 has three
    node = {n.key: n for n in view.nodes}
    assert (node["report"].x, node["report"].y) == (PAD + 2 * (NODE_WIDTH + COLUMN_GAP), PAD)
    assert [status for status, _ in view.counts] == [  # the lifecycle's order
        "blocked",
        "pending",
        "active",
        "passed",
        "failed",
        "skipped",
    ]
    assert sum(n for _, n in view.counts) == 6


def test_rows_follow_the_rows_of_the_needs() -> None:
    # "late" comes first in the file but needs the second root: it goes below "early".
    view = layout(
        [
            step("a", n=1),
            step("b", n=2),
            step("late", "b", n=3),
            step("early", "a", n=4),
        ]
    )
    rows = {node.key: node.row for node in view.nodes}
    assert rows == {"a": 0, "b": 1, "early": 0, "late": 1}


def test_an_arrow_per_need_from_box_to_box() -> None:
    view = layout(diamond())
    assert sorted((e.need, e.step) for e in view.edges) == [
        ("build", "test[n=1]"),
        ("build", "test[n=2]"),
        ("lint", "docs"),
        ("lint", "report"),
        ("test[n=1]", "report"),
        ("test[n=2]", "report"),
    ]
    node = {n.key: n for n in view.nodes}
    edge = next(e for e in view.edges if (e.need, e.step) == ("build", "test[n=2]"))
    assert edge.status == "passed"  # the need's
    start, end = node["build"], node["test[n=2]"]
    numbers = [int(x) for x in re.findall(r"-?\d+", edge.path)]
    assert numbers[:2] == [start.x + NODE_WIDTH, start.y + NODE_HEIGHT // 2]
    assert numbers[-2:] == [end.x - 2, end.y + NODE_HEIGHT // 2]


def test_a_need_not_read_is_left_out_and_a_long_key_is_cut() -> None:
    long_key = "integration[python=3.13,db=postgres-16]"
    view = layout([step(long_key, "missing", n=1)])
    (node,) = view.nodes
    assert node.column == 0 and view.edges == ()
    assert len(node.label) == LABEL_CHARS and node.label.endswith("…")
    assert layout([]).nodes == () and layout([]).width == 2 * PAD


def test_the_svg_links_each_step_with_its_status_and_duration() -> None:
    html = render("_pipeline.html", pipeline=layout(diamond()), job_path=job_path)
    boxes = re.findall(r'<a href="([^"]+)" class="step step-(\w+)" data-step="([^"]+)"', html)
    assert boxes[0] == ("/ui/jobs/run.s1", "passed", "build")
    assert len(boxes) == 6
    assert "passed · 2.5 s" in html
    assert "failed · 0.4 s · attempt 2" in html
    assert '· <tspan data-since="4000">running</tspan>' in html  # aged by the page's script
    assert "skipped</text>" in html  # no duration for a step that never ran
    assert html.count('marker-end="url(#needs-arrow)"') == 6


def test_a_hostile_key_stays_text() -> None:
    html = render(
        "_pipeline.html", pipeline=layout([step('<script>"x"</script>', n=1)]), job_path=job_path
    )
    assert "<script>" not in html and "&lt;script&gt;&#34;x&#34;&lt;/script&gt;" in html


def test_an_arrow_across_a_column_runs_between_its_boxes() -> None:
    view = layout(diamond())
    node = {n.key: n for n in view.nodes}
    edge = next(e for e in view.edges if (e.need, e.step) == ("lint", "report"))
    numbers = [int(x) for x in re.findall(r"-?\d+", edge.path)]
    lint, report = node["lint"], node["report"]
    assert numbers[:2] == [lint.x + NODE_WIDTH, lint.y + NODE_HEIGHT // 2]
    assert numbers[-2:] == [report.x - 2, report.y + NODE_HEIGHT // 2]
    # Across column 1 it keeps to the gap under lint's row, between that column's boxes.
    lane = lint.y + NODE_HEIGHT + ROW_GAP // 2
    straight = re.search(r"L(\d+) (\d+)", edge.path)
    assert straight and int(straight.group(2)) == lane
    between = [n for n in view.nodes if n.column == 1]
    assert all(not n.y <= lane <= n.y + NODE_HEIGHT for n in between)
    assert int(numbers[6]) == lint.x + NODE_WIDTH + COLUMN_GAP  # column 1's left edge


def test_a_listing_keeps_a_steps_suffix_when_it_shortens_an_id() -> None:
    guid = "gh-72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert short_id("gh-run") == "gh-run"
    assert short_id("gh-pipeline-view-1.s9") == "gh-pipeline-view-1.s9"  # 18 + the suffix
    assert short_id(guid) == "gh-72d3162e-cc78-…"
    assert short_id(f"{guid}.s12") == "gh-72d3162e-cc78-….s12"
    assert short_id(f"{guid}.shard") == f"{guid}.shard"[:17] + "…"  # not a step's suffix
