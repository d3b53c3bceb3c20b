"""Inline SVG pictures of a job: the tasks as they ran (a Gantt chart of attempts) and the plan as a DAG.

Pure functions over plain values, so the same DAG drawing serves a running job, a create preview and a day-2
preview (which have no rows yet). Every text goes through ``format_html``; nothing a user typed reaches the
SVG unescaped. Large plans are summarised (stages as bars, the first rows of the timeline) so a 2,000-node
cluster page stays a page, not a megabyte of SVG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

GANTT_ROWS = 150
DAG_TASKS = 400
COLOURS = {
    "succeeded": "#2e7d32",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "timed_out": "#c62828",
    "lost": "#ef6c00",
    "running": "#1565c0",
    "queued": "#90a4ae",
    "waiting": "#cfd8dc",
    "dropped": "#9e9e9e",
}


@dataclass(frozen=True)
class Bar:
    """One attempt: which row (task) it belongs to, when it ran, and how it ended."""

    row: int
    label: str
    start: datetime
    end: datetime | None
    outcome: str


@dataclass(frozen=True)
class DagTask:
    key: int
    stage: int
    label: str
    status: str = "waiting"
    is_join: bool = False


def gantt_svg(bars: Sequence[Bar], *, now: datetime, width: int = 880) -> SafeString:
    """Each task a row, each attempt a bar from its start to its end (or ``now`` while running)."""
    if not bars:
        return mark_safe('<p class="muted">No task has started yet.</p>')
    rows: dict[int, str] = {}
    for bar in bars:
        rows.setdefault(bar.row, bar.label)
    shown = sorted(rows)[:GANTT_ROWS]
    index = {row: position for position, row in enumerate(shown)}
    start = min(bar.start for bar in bars)
    end = max((bar.end or now) for bar in bars)
    span = max((end - start).total_seconds(), 0.001)
    label_width, row_height = 260, 16
    chart = width - label_width - 10
    height = row_height * len(shown) + 24

    def x(moment: datetime) -> float:
        return label_width + chart * (moment - start).total_seconds() / span

    labels = format_html_join(
        "",
        '<text x="4" y="{}" class="gl">{}</text>',
        ((index[row] * row_height + 12, rows[row][:42]) for row in shown),
    )
    rects = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="12" fill="{}"><title>{}: {} ({} s)</title></rect>',
        (
            (_n(x(bar.start)), index[bar.row] * row_height + 2, _n(max(x(bar.end or now) - x(bar.start), 1.5)),
             COLOURS.get(bar.outcome, "#607d8b"), bar.label, bar.outcome,
             _n(((bar.end or now) - bar.start).total_seconds()))
            for bar in bars
            if bar.row in index
        ),
    )  # fmt: skip
    axis_y = len(shown) * row_height + 16
    more = len(rows) - len(shown)
    note = format_html('<p class="muted">and {} more tasks</p>', more) if more > 0 else ""
    return format_html(
        '<svg class="gantt" role="img" aria-label="Timeline of the job\'s tasks" viewBox="0 0 {w} {h}" '
        'width="100%" preserveAspectRatio="xMinYMin meet">{labels}{rects}'
        '<line x1="{lw}" y1="{ay}" x2="{w}" y2="{ay}" stroke="#999"/>'
        '<text x="{lw}" y="{ty}" class="gl">0 s</text><text x="{tx}" y="{ty}" class="gl" text-anchor="end">'
        "{span} s</text></svg>{note}",
        w=width, h=height + 10, labels=labels, rects=rects, lw=label_width, ay=axis_y, ty=axis_y + 12,
        tx=width - 4, span=_n(span), note=note,
    )  # fmt: skip


def dag_svg(
    tasks: Sequence[DagTask], edges: Iterable[tuple[int, int]], *, stage_sizes: Sequence[int] = ()
) -> SafeString:
    """The plan with its stages as columns and each task a box (JOIN points as dots), edges as lines.

    Above ``DAG_TASKS`` tasks, or with no task list at all, the stages are drawn as bars sized by their task
    counts (``stage_sizes``), which is what a person can read at that size anyway."""
    real = [task for task in tasks if not task.is_join]
    if not tasks or len(real) > DAG_TASKS:
        sizes = list(stage_sizes) or _stage_sizes(real)
        return _stage_bars(sizes)
    columns: dict[int, list[DagTask]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: (t.stage, t.is_join, t.key)):
        columns[task.stage].append(task)
    column_width, box_width, row_height = 150, 132, 22
    place: dict[int, tuple[float, float]] = {}
    for stage, members in columns.items():
        for row, task in enumerate(members):
            place[task.key] = (10 + stage * column_width, 24 + row * row_height)
    height = 34 + row_height * max(len(members) for members in columns.values())
    width = 20 + column_width * (max(columns) + 1)
    lines = format_html_join(
        "",
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#b0bec5"/>',
        (
            (_n(place[a][0] + box_width), _n(place[a][1] + 8), _n(place[b][0]), _n(place[b][1] + 8))
            for a, b in edges
            if a in place and b in place
        ),
    )
    boxes = []
    for task in tasks:
        left, top = place[task.key]
        if task.is_join:
            boxes.append(format_html('<circle cx="{}" cy="{}" r="3" fill="#78909c"><title>{}</title></circle>',
                                     left + 4, top + 8, task.label))  # fmt: skip
            continue
        colour = COLOURS.get(task.status, "#607d8b")
        box = format_html(
                '<g><rect x="{}" y="{}" width="{}" height="17" rx="3" fill="{}" fill-opacity="0.25" stroke="{}"/>'
                '<text x="{}" y="{}" class="gl">{}</text><title>{} ({})</title></g>',
                left, top, box_width, colour, colour, left + 3, top + 12, task.label[:22], task.label, task.status,
        )  # fmt: skip
        boxes.append(box)
    heads = format_html_join(
        "", '<text x="{}" y="14" class="gh">stage {}</text>', ((10 + s * column_width, s + 1) for s in sorted(columns))
    )
    return format_html(
        '<svg class="dag" role="img" aria-label="The plan as a graph, stages as columns" viewBox="0 0 {} {}" '
        'width="{}" height="{}">{}{}{}</svg>',
        width, height, width, height, heads, lines, mark_safe("".join(boxes)),
    )  # fmt: skip


def _n(value: float) -> str:
    """A coordinate or duration with one decimal (format_html escapes its arguments to strings first, so
    numbers are formatted here rather than with format specs)."""
    return f"{value:.1f}"


def _stage_sizes(tasks: Sequence[DagTask]) -> list[int]:
    sizes: dict[int, int] = defaultdict(int)
    for task in tasks:
        sizes[task.stage] += 1
    return [sizes[stage] for stage in range(max(sizes, default=-1) + 1)]


def _stage_bars(sizes: Sequence[int]) -> SafeString:
    if not sizes:
        return mark_safe('<p class="muted">The plan has no tasks.</p>')
    largest = max(sizes) or 1
    column_width, height = 60, 160
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="40" height="{}" fill="#90caf9"><title>stage {}: {} tasks</title></rect>'
        '<text x="{}" y="{}" class="gl">{}</text>',
        (
            (10 + i * column_width, _n(20 + (height - 40) * (1 - size / largest)), _n((height - 40) * size / largest),
             i + 1, size, 10 + i * column_width, height - 4, size)
            for i, size in enumerate(sizes)
        ),
    )  # fmt: skip
    return format_html(
        '<svg class="dag" role="img" aria-label="Tasks per stage" viewBox="0 0 {} {}" width="{}" height="{}">'
        "{}</svg>",
        20 + column_width * len(sizes), height, 20 + column_width * len(sizes), height, bars,
    )  # fmt: skip


def task_label(action: str, service: str, hostname: str | None) -> str:
    """``install demo-nginx @ web1-1000``: what a row or box of the pictures is called."""
    what = f"{action} {service}".strip()
    return f"{what} @ {hostname.split('.')[0]}" if hostname else what


def dag_from_plan(plan: dict) -> SafeString:
    """The DAG picture of a preview's ``plan`` (``plan_json``)."""
    tasks = [
        DagTask(key=task["key"], stage=task["stage"], is_join="label" in task,
                label=task.get("label") or task_label(task["action"], task["service"], task["hostname"]))
        for task in plan.get("task_list") or []
    ]  # fmt: skip
    edges = [(a, b) for a, b in plan.get("edge_list") or []]
    return dag_svg(tasks, edges, stage_sizes=plan.get("stage_sizes") or ())
