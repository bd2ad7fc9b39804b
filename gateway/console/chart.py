"""The 30-day chart, drawn server-side as inline SVG: no script, no CDN, nothing to fetch in a hospital
without internet. Bars are the day's amount collected; a red dot over a bar counts that day's exceptions.
Heights come from integer fen with integer arithmetic; the SVG scales to its container's width."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from gateway.console.formatting import yuan

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 16, 28


@dataclass(frozen=True)
class DayPoint:
    day: dt.date
    amount_fen: int
    exceptions: int


def _nice_max(fen: int) -> int:
    """The axis top: the next 1, 2 or 5 × 10ⁿ yuan at or above the largest bar."""
    yuan_max = max(1, -(-fen // 100))
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= yuan_max:
                return m * step * 100
        step *= 10


def daily_chart(points: Sequence[DayPoint], *, title: str, amount_label: str, exceptions_label: str) -> Markup:
    top_fen = _nice_max(max((p.amount_fen for p in points), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w // max(len(points), 1)
    bar = max(2, slot * 7 // 10)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        y = TOP + plot_h * i // 4
        value = top_fen * (4 - i) // 4
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{yuan(value)}</text>')
    for i, p in enumerate(points):
        x = LEFT + i * slot + (slot - bar) // 2
        h = p.amount_fen * plot_h // top_fen if top_fen else 0
        y = TOP + plot_h - h
        tip = f"{p.day.isoformat()} {amount_label} ¥{yuan(p.amount_fen)}, {exceptions_label} {p.exceptions}"
        parts.append(
            f'<rect class="bar" x="{x}" y="{y}" width="{bar}" height="{h}" data-day="{p.day.isoformat()}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if p.exceptions:
            cx, cy = x + bar // 2, max(TOP + 6, y - 8)
            parts.append(
                f'<circle class="exc" cx="{cx}" cy="{cy}" r="6"><title>{escape(tip)}</title></circle>'
                f'<text class="exc-n" x="{cx}" y="{cy + 3}" text-anchor="middle">{min(p.exceptions, 99)}</text>'
            )
        if i % 5 == 0 or i == len(points) - 1:
            parts.append(
                f'<text class="axis" x="{x + bar // 2}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{p.day.strftime('%m-%d')}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
