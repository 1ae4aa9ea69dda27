"""The history chart, drawn on the server as SVG geometry (``energy.html`` writes it out).

Import rises above a zero line and export hangs below it, one pair per period, the way an
energy dashboard shows use and feed-in. Colours and fonts are the stylesheet's (CSS classes:
the CSP allows no inline style); sizes are SVG attributes in a fixed ``viewBox`` that the
browser scales to the page's width. The numbers themselves are in the table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.energy.history import History

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 16, 30
#: at most this many labels under the axis (every n-th period is labelled)
MAX_LABELS = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # "import" or "export"
    title: str  # label and value, for a pointer's tooltip


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    zero_y: float
    left: float
    right: float
    bars: tuple[Bar, ...]
    labels: tuple[Tick, ...]  # under the axis
    scale: tuple[Tick, ...]  # the kWh marks on the left
    empty: bool


def chart(past: History) -> Chart:
    periods = past.periods
    n = max(1, len(periods))
    top_wh = max([p.import_wh for p in periods] + [0])
    low_wh = max([p.export_wh for p in periods] + [0])
    plot = HEIGHT - TOP - BOTTOM
    total = top_wh + low_wh
    up = plot / 2 if total == 0 else plot * top_wh / total
    zero = TOP + up
    per_wh = 0.0 if total == 0 else plot / total
    slot = (WIDTH - LEFT - RIGHT) / n
    bar = max(1.0, slot * 0.7)
    bars: list[Bar] = []
    labels: list[Tick] = []
    every = max(1, -(-n // MAX_LABELS))
    for i, p in enumerate(periods):
        x = LEFT + i * slot + (slot - bar) / 2
        if p.import_wh:
            h = p.import_wh * per_wh
            bars.append(Bar(x, zero - h, bar, h, "import", f"{p.label}: {p.import_wh / 1000:.2f}"))
        if p.export_wh:
            h = p.export_wh * per_wh
            bars.append(Bar(x, zero, bar, h, "export", f"{p.label}: {p.export_wh / 1000:.2f}"))
        if i % every == 0:
            short = p.label[-5:] if past.by != "month" else p.label[-2:]
            if past.by == "day":
                short = p.label[-2:]
            labels.append(Tick(LEFT + i * slot + slot / 2, HEIGHT - 6, short))
    scale = [Tick(LEFT - 4, zero + 4, "0")]
    if top_wh:
        scale.append(Tick(LEFT - 4, TOP + 6, f"{top_wh / 1000:.1f}"))
    if low_wh:
        scale.append(Tick(LEFT - 4, HEIGHT - BOTTOM, f"-{low_wh / 1000:.1f}"))
    return Chart(
        WIDTH,
        HEIGHT,
        zero,
        LEFT,
        WIDTH - RIGHT,
        tuple(bars),
        tuple(labels),
        tuple(scale),
        total == 0,
    )
