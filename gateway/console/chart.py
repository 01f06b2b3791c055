"""The outcomes chart: refunds reaching succeeded, failed or requires_attention, per hour, as one
small stacked-bar SVG per processor, drawn here so that the page needs no chart library."""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import Any, Iterable, Mapping

OUTCOMES = ("succeeded", "failed", "requires_attention")
LABELS = {"succeeded": "succeeded", "failed": "failed", "requires_attention": "needs attention"}

# Geometry, in SVG units: one bar per hour, the count scale on the left, hours underneath.
_BAR, _GAP, _LEFT, _TOP, _PLOT, _BOTTOM = 16, 4, 34, 8, 96, 22

Counts = Mapping[tuple[datetime, str], int]


def hour_buckets(current_hour: datetime, hours: int) -> list[datetime]:
    """The `hours` hours that end with the current one, oldest first."""
    return [current_hour - timedelta(hours=hours - 1 - i) for i in range(hours)]


def counts_by_processor(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[tuple[datetime, str], int]]:
    """Rows of (processor_id, hour, status, count) to {processor: {(hour, status): count}}."""
    found: dict[str, dict[tuple[datetime, str], int]] = {}
    for row in rows:
        found.setdefault(row["processor_id"], {})[(row["hour"], row["status"])] = int(row["count"])
    return found


def totals(hours: list[datetime], counts: Counts) -> dict[str, int]:
    return {o: sum(counts.get((h, o), 0) for h in hours) for o in OUTCOMES}


def svg(processor: str, hours: list[datetime], counts: Counts) -> str:
    """One processor's chart: a stack per hour, succeeded at the bottom; each piece has a tooltip."""
    stacks = [sum(counts.get((h, o), 0) for o in OUTCOMES) for h in hours]
    top = max([1, *stacks])
    width, height = _LEFT + len(hours) * (_BAR + _GAP) + _GAP, _TOP + _PLOT + _BOTTOM
    base = _TOP + _PLOT
    summary = ", ".join(f"{n} {LABELS[o]}" for o, n in totals(hours, counts).items())
    label = escape(f"{processor}, last {len(hours)} hours: {summary}")
    parts = [(f'<svg class="outcomes" role="img" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" data-processor="{escape(processor)}" aria-label="{label}">'),
             f'<text class="scale" x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{top}</text>',
             f'<text class="scale" x="{_LEFT - 4}" y="{base}" text-anchor="end">0</text>',
             f'<line class="axis" x1="{_LEFT}" y1="{base}" x2="{width}" y2="{base}"/>']
    for i, hour in enumerate(hours):
        x = _LEFT + _GAP + i * (_BAR + _GAP)
        y = float(base)
        for outcome in OUTCOMES:
            n = counts.get((hour, outcome), 0)
            if n:
                h = round(n / top * _PLOT, 2)
                y -= h
                parts.append(f'<rect class="bar {outcome}" x="{x}" y="{round(y, 2)}" width="{_BAR}" height="{h}">'
                             f'<title>{hour:%H}:00 UTC: {n} {LABELS[outcome]}</title></rect>')
        last = i == len(hours) - 1
        if last or (hour.hour % 6 == 0 and i < len(hours) - 3):  # labels far enough apart to read
            parts.append(f'<text class="hour" x="{x + _BAR / 2}" y="{base + 15}" text-anchor="middle">'
                         f'{"now" if last else f"{hour:%H}h"}</text>')
    parts.append("</svg>")
    return "".join(parts)
