"""How values look on the pages: Jinja filters and the geometry of the SVG charts.

Why server-side SVG: the history and metrics charts then work without JavaScript,
need no chart library (nothing is loaded from a CDN) and pass a strict CSP. Only the
live dashboard graph is drawn in the browser (static/kiq.js), from the same shapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

ARGS_LIMIT: Final = 200  # characters of arguments shown in a list row


def number(value: int | float) -> str:
    """1234567 -> '1,234,567'."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def compact(value: int) -> str:
    """Counters on the summary bar: 1234567 -> '1.23M'."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (10_000, "K")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}" if suffix != "K" else f"{value / 1000:.1f}K"
    return f"{value:,}"


def duration(seconds: float) -> str:
    """A span for people: 0.4 -> '0.4s', 75 -> '1m 15s', 90000 -> '1d 1h'."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """'3m 2s ago' or 'in 5m 0s'; '' for no time."""
    if when is None:
        return ""
    now = now or datetime.now(UTC)
    delta = (now - when).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def iso(when: datetime | None) -> str:
    """UTC, to the second: '2024-03-01 08:05:09 UTC'."""
    return "" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def kilobytes(kb: int) -> str:
    """RSS from the heartbeat (KB) for people."""
    if kb >= 1024 * 1024:
        return f"{kb / 1024 / 1024:.1f} GB"
    return f"{kb / 1024:.0f} MB" if kb >= 1024 else f"{kb} KB"


def to_json(value: Any, limit: int | None = None) -> str:
    """Compact JSON (arguments in a row), cut at ``limit`` characters with an ellipsis."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def pretty(value: Any) -> str:
    """Indented JSON for the job detail page."""
    return json.dumps(value, ensure_ascii=False, indent=2, default=str, sort_keys=True)


def url_part(value: object) -> str:
    """Quote a value for one path segment or query value (``/`` too)."""
    return quote(str(value), safe="")


def with_query(query: Mapping[str, str], **changes: object) -> str:
    """``?...`` keeping the current query string's values, with ``changes`` applied."""
    values = {k: v for k, v in query.items() if k not in changes}
    values.update({k: str(v) for k, v in changes.items() if v is not None and v != ""})
    return f"?{urlencode(values)}" if values else "?"


FILTERS: Final = {
    "number": number,
    "compact": compact,
    "duration": duration,
    "ago": ago,
    "iso": iso,
    "kb": kilobytes,
    "json": to_json,
    "pretty": pretty,
    "q": url_part,
}


# -- charts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    css: str  # class of the polyline: "processed" or "failed" or "series-N"
    points: str  # "x,y x,y ..." in the chart's viewBox
    total: int | float


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


def divisions(top_value: float) -> int:
    """Gridlines that land on whole numbers: 4 for 4 and 2 x 10^n, 5 for 1 and 5 x 10^n."""
    leading = top_value / 10 ** math.floor(math.log10(top_value))
    return 4 if round(leading) in (2, 4) else 5


def tick_label(value: float) -> str:
    return compact(int(value)) if value == int(value) else f"{value:g}"


@dataclass(frozen=True, slots=True)
class LineChart:
    width: int
    height: int
    top: int
    left: int
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    marks: list[Tick] = field(default_factory=list)  # deploy marks (kiq.api.deploy_mark)

    @property
    def bottom(self) -> int:
        return self.height - 20


def nice_max(value: float) -> float:
    """The round number at or above ``value`` the y axis ends at (4, then 1, 2, 5 x 10^n).

    At least 4, so the four gridlines of a chart of counts fall on whole numbers.
    """
    if value <= 4:
        return 4.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1.0, 2.0, 5.0, 10.0) if step * power >= value)


def line_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    *,
    width: int = 900,
    height: int = 220,
    x_ticks: int = 7,
    marks: Sequence[tuple[float, str]] = (),
) -> LineChart:
    """Polylines for ``series`` [(name, css class, values)] over ``labels`` (oldest first).

    ``marks`` are vertical lines at (fractional index into ``labels``, label): deploys.
    """
    left, top, bottom, right = 56, 10, height - 20, 30
    top_value = nice_max(max((max(v, default=0) for _, _, v in series), default=0))
    span = max(len(labels) - 1, 1)

    def xy(index: int, value: float) -> str:
        x = left + (width - left - right) * index / span
        y = bottom - (bottom - top) * value / top_value
        return f"{x:.1f},{y:.1f}"

    lines = [
        Line(name, css, " ".join(xy(i, v) for i, v in enumerate(values)), sum(values))
        for name, css, values in series
    ]
    parts = divisions(top_value)
    y_ticks = [
        Tick(bottom - (bottom - top) * part / parts, tick_label(top_value * part / parts))
        for part in range(parts + 1)
    ]
    step = max(1, math.ceil(len(labels) / x_ticks))
    x_positions = [
        Tick(left + (width - left - right) * i / span, labels[i])
        for i in range(0, len(labels), step)
    ]
    pins = [Tick(left + (width - left - right) * at / span, label) for at, label in marks]
    return LineChart(width, height, top, left, lines, y_ticks, x_positions, pins)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    count: int


def bar_chart(labels: Sequence[str], counts: Sequence[int], *, width: int = 900) -> list[Bar]:
    """Vertical bars in a ``width`` x 200 box (the execution-time histogram)."""
    top_value = nice_max(max(counts, default=0))
    slot = width / max(len(counts), 1)
    bars = []
    for index, (label, count) in enumerate(zip(labels, counts, strict=True)):
        height = 170 * count / top_value
        bars.append(Bar(index * slot + 2, 180 - height, slot - 4, height, label, count))
    return bars
