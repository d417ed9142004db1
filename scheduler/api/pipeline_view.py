"""A pipeline run drawn as a graph: its steps in columns by depth, an arrow for each ``needs``.

Pure layout, rendered on the server as SVG (``_pipeline.html``): a step's column is one more
than the deepest of its needs (the steps that need nothing are the first column), so every
arrow goes left to right. Within a column, steps are ordered by the mean row of their needs
(ties in pipeline order), which keeps most arrows short and few of them crossing. Positions
are SVG attributes, not ``style`` (the dashboard's CSP allows no inline style); colours come
from the stylesheet by status class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.db.queries import StepSummary
from state_machines import JobStatus

__all__ = ["Edge", "Node", "PipelineView", "layout"]

NODE_WIDTH = 216
NODE_HEIGHT = 52
COLUMN_GAP = 56
ROW_GAP = 12
PAD = 6
# Characters of a key that fit a box (13 px monospace); a longer one ends in "…" (the whole
# key is the box's tooltip and on the step's page).
LABEL_CHARS = 24
_ORDER = tuple(status.value for status in JobStatus)


@dataclass(frozen=True, slots=True)
class Node:
    step: StepSummary
    column: int
    row: int
    x: int
    y: int
    label: str

    @property
    def key(self) -> str:
        return self.step.key


@dataclass(frozen=True, slots=True)
class Edge:
    need: str
    step: str
    status: str  # the need's: an arrow from a passed need is drawn as done
    path: str  # SVG path data


@dataclass(frozen=True, slots=True)
class PipelineView:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: int
    height: int
    columns: int
    counts: tuple[tuple[str, int], ...]  # steps by status, in the lifecycle's order

    @property
    def node_width(self) -> int:
        return NODE_WIDTH

    @property
    def node_height(self) -> int:
        return NODE_HEIGHT


def _label(key: str) -> str:
    return key if len(key) <= LABEL_CHARS else key[: LABEL_CHARS - 1] + "…"


def _columns(steps: Sequence[StepSummary]) -> dict[str, int]:
    """Each step's depth: 0 with no needs, else 1 + the deepest need's. Needs that name no
    step read here are left out (they cannot be drawn)."""
    by_key = {step.key: step for step in steps}
    depth: dict[str, int] = {}

    def of(key: str, seen: frozenset[str]) -> int:
        if key not in depth:
            needs = [n for n in by_key[key].needs if n in by_key and n not in seen]
            depth[key] = 1 + max((of(n, seen | {key}) for n in needs), default=-1)
        return depth[key]

    for step in steps:
        of(step.key, frozenset())
    return depth


def layout(steps: Sequence[StepSummary]) -> PipelineView:
    """Where each step's box and each need's arrow go."""
    depth = _columns(steps)
    columns = 1 + max(depth.values(), default=-1)
    rows: dict[str, int] = {}
    placed: list[list[StepSummary]] = [[] for _ in range(columns)]
    for column in range(columns):
        members = [(index, s) for index, s in enumerate(steps) if depth[s.key] == column]

        def weight(entry: tuple[int, StepSummary]) -> tuple[float, int]:
            index, step = entry
            above = [rows[n] for n in step.needs if n in rows]
            return (sum(above) / len(above) if above else 0.0, index)

        for row, (_, step) in enumerate(sorted(members, key=weight)):
            rows[step.key] = row
            placed[column].append(step)

    nodes = {
        step.key: Node(
            step=step,
            column=depth[step.key],
            row=rows[step.key],
            x=PAD + depth[step.key] * (NODE_WIDTH + COLUMN_GAP),
            y=PAD + rows[step.key] * (NODE_HEIGHT + ROW_GAP),
            label=_label(step.key),
        )
        for step in steps
    }
    edges = []
    for step in steps:
        to = nodes[step.key]
        for need in step.needs:
            start = nodes.get(need)
            if start is None:
                continue
            x1, y1 = start.x + NODE_WIDTH, start.y + NODE_HEIGHT // 2
            x2, y2 = to.x - 2, to.y + NODE_HEIGHT // 2  # the arrowhead ends at the box
            if to.column - start.column == 1:
                bend = (x1 + x2) // 2
                path = f"M{x1} {y1} C{bend} {y1} {bend} {y2} {x2} {y2}"
            else:
                # Across columns between: along the gap under the need's row, which passes
                # between those columns' boxes rather than behind one (it would look like a
                # need of that box).
                lane = start.y + NODE_HEIGHT + ROW_GAP // 2
                a, b = x1 + COLUMN_GAP, to.x - COLUMN_GAP
                half = COLUMN_GAP // 2
                path = (
                    f"M{x1} {y1} C{x1 + half} {y1} {x1 + half} {lane} {a} {lane} L{b} {lane}"
                    f" C{b + half} {lane} {b + half} {y2} {x2} {y2}"
                )
            edges.append(Edge(need, step.key, start.step.status, path))
    counted = Counter(step.status for step in steps)
    most_rows = max((len(column) for column in placed), default=0)
    return PipelineView(
        nodes=tuple(nodes[step.key] for step in steps),
        edges=tuple(edges),
        width=2 * PAD + columns * NODE_WIDTH + max(columns - 1, 0) * COLUMN_GAP,
        height=2 * PAD + most_rows * NODE_HEIGHT + max(most_rows - 1, 0) * ROW_GAP,
        columns=columns,
        counts=tuple((status, n) for status in _ORDER if (n := counted[status])),
    )
