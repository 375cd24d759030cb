"""Plots as SVG text, rendered on the server: time series as lines, totals as horizontal bars.

Pure functions (data in, markup out), so the page needs no charting library and works offline.
Every drawn series is a ``<polyline class="series" data-series=NAME data-points=N>``, which is
also what the browser test looks for.
"""
from __future__ import annotations

import math
import time
from html import escape
from typing import List, Optional, Sequence, Tuple

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
Series = Tuple[str, Sequence[Sequence[float]]]  # (name, [[timestamp_us, value], ...])


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least ``value`` (an axis's top)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value - 1e-12:
            return step * power
    return 10 * power


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.2M' (bytes and counts on axes and bars)."""
    if unit == "%":
        return "%g%%" % round(value, 1)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return "%.3g%s%s" % (value / factor, suffix, unit)
    return "%g%s" % (round(value, 2), unit)


def _clock(timestamp_us: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp_us / 1e6))


def _frame(width: int, height: int, title: str, body: List[str]) -> str:
    return ('<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 %d %d" width="%d" height="%d" '
            'role="img" aria-label="%s"><title>%s</title>%s</svg>'
            % (width, height, width, height, escape(title), escape(title), "".join(body)))


def line_chart(title: str, series: Sequence[Series], unit: str = "", y_max: Optional[float] = None,
               width: int = 560, height: int = 200) -> str:
    """Lines over time, sharing one y axis from 0 (to ``y_max`` or a nice ceiling of the data)."""
    left, right, top, bottom = 56, 12, 26, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for _name, pts in series for p in pts]
    body = ['<text class="title" x="%d" y="16" font-size="13" font-weight="600">%s</text>' % (left, escape(title))]
    if not points:
        body.append('<text class="empty" x="%d" y="%d" font-size="12" fill="#6b7280">no data yet</text>'
                    % (left + 8, top + plot_h // 2))
        return _frame(width, height, title, body)
    t0 = min(p[0] for p in points)
    t1 = max(p[0] for p in points)
    span = max(t1 - t0, 1)
    top_value = y_max if y_max is not None else nice_ceiling(max(p[1] for p in points))

    def x(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - min(max(v, 0.0), top_value) / top_value * plot_h

    for i in range(5):
        value = top_value * i / 4
        body.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e5e7eb"/>'
                    % (left, left + plot_w, y(value), y(value)))
        body.append('<text x="%d" y="%.1f" font-size="10" text-anchor="end" fill="#6b7280">%s</text>'
                    % (left - 6, y(value) + 3, escape(human(value, unit))))
    for t, anchor in ((t0, "start"), (t1, "end")):
        body.append('<text x="%.1f" y="%d" font-size="10" text-anchor="%s" fill="#6b7280">%s</text>'
                    % (x(t), height - 10, anchor, _clock(t)))
    legend_x = left + 8
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join("%.1f,%.1f" % (x(t), y(v)) for t, v in pts)
        body.append('<polyline class="series" data-series="%s" data-points="%d" fill="none" stroke="%s" '
                    'stroke-width="1.8" points="%s"/>' % (escape(name), len(pts), colour, coords))
        if len(pts) == 1:
            body.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>' % (x(pts[0][0]), y(pts[0][1]), colour))
        label = "%s %s" % (name, human(pts[-1][1], unit)) if pts else name
        body.append('<text x="%d" y="%d" font-size="11" fill="%s">%s</text>'
                    % (legend_x, top + 12, colour, escape(label)))
        legend_x += 9 * len(label) + 16
    return _frame(width, height, title, body)


def bar_chart(title: str, bars: Sequence[Tuple[str, Sequence[Tuple[str, float]]]], unit: str = "",
              width: int = 560, bar_height: int = 16) -> str:
    """Horizontal bars: one row per label, one bar per (series, value) in it, one shared scale."""
    left, right, top = 150, 70, 26
    rows = [(label, values) for label, values in bars if values]
    per_row = max((len(values) for _l, values in rows), default=1)
    row_h = per_row * (bar_height + 2) + 8
    height = top + max(len(rows), 1) * row_h + 22
    body = ['<text class="title" x="8" y="16" font-size="13" font-weight="600">%s</text>' % escape(title)]
    if not rows:
        body.append('<text class="empty" x="8" y="%d" font-size="12" fill="#6b7280">no data yet</text>' % (top + 14))
        return _frame(width, height, title, body)
    top_value = nice_ceiling(max(v for _l, values in rows for _s, v in values))
    plot_w = width - left - right
    names = []
    for r, (label, values) in enumerate(rows):
        y0 = top + r * row_h
        body.append('<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>'
                    % (left - 6, y0 + bar_height - 3, escape(label[:24])))
        for i, (name, value) in enumerate(values):
            if name not in names:
                names.append(name)
            colour = PALETTE[names.index(name) % len(PALETTE)]
            w = max(value / top_value * plot_w, 1.0 if value else 0.0)
            y = y0 + i * (bar_height + 2)
            body.append('<rect class="bar" data-series="%s" data-label="%s" x="%d" y="%d" width="%.1f" height="%d" '
                        'fill="%s"/>' % (escape(name), escape(label), left, y, w, bar_height, colour))
            body.append('<text x="%.1f" y="%d" font-size="10" fill="#374151">%s</text>'
                        % (left + w + 4, y + bar_height - 4, escape(human(value, unit))))
    legend_x = left
    for i, name in enumerate(names):
        body.append('<text x="%d" y="%d" font-size="11" fill="%s">&#9632; %s</text>'
                    % (legend_x, height - 8, PALETTE[i % len(PALETTE)], escape(name)))
        legend_x += 9 * len(name) + 30
    return _frame(width, height, title, body)
