"""Small server-rendered SVG charts for the dashboard: no JavaScript, no build step, readable without colour."""
from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#2f6fde", "#2e9d5b", "#d64541", "#c98a00", "#7b4fd6", "#1b9aaa"]
WIDTH, HEIGHT = 520, 230
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 14, 46


def _frame(body: list[str], legend: list[tuple[str, str]]) -> SafeString:
    keys = "".join(f'<span class="key"><i style="background:{color}"></i>{escape(name)}</span>'
                   for name, color in legend)
    svg = f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img">{"".join(body)}</svg>'
    return mark_safe(svg + (f'<div class="legend">{keys}</div>' if keys else ""))


def _axis(top_value: float, unit: str) -> list[str]:
    """Horizontal grid lines at 0, ½ and the top value."""
    lines = []
    for fraction in (0, 0.5, 1):
        y = HEIGHT - BOTTOM - fraction * (HEIGHT - TOP - BOTTOM)
        label = _number(top_value * fraction, unit)
        lines.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    return lines


def _number(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:.0f}" if float(value).is_integer() or value >= 10 else f"{value:.2f}"


def _x_labels(names: list[str], slot: float) -> list[str]:
    every = max(1, len(names) // 10)  # at most about ten labels under the axis
    return [f'<text class="tick" x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{escape(name)}</text>'
            for i, name in enumerate(names) if i % every == 0]


def bar_chart(groups: list[str], series: dict[str, list[float]], unit: str = "",
              top: float | None = None) -> SafeString:
    """Bars per group, one bar per series side by side (one series: plain bars). `unit="%"` for shares 0..1."""
    values = [v for vs in series.values() for v in vs if v is not None]
    top = top or max(values + [1e-9])
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(groups))
    width = slot * 0.8 / max(1, len(series))
    body = _axis(top, unit)
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for i, value in enumerate(vs):
            if value is None:
                continue
            h = plot_height * min(value, top) / top
            x = LEFT + slot * i + slot * 0.1 + width * s
            body.append(f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                        f'fill="{color}"><title>{escape(groups[i])} · {escape(name)}: '
                        f'{_number(value, unit)}</title></rect>')
            body.append(f'<text class="value" x="{x + width / 2:.1f}" y="{HEIGHT - BOTTOM - h - 3:.1f}" '
                        f'text-anchor="middle">{_number(value, unit)}</text>')
    body += _x_labels(groups, slot)
    legend = [(name, PALETTE[s % len(PALETTE)]) for s, name in enumerate(series)] if len(series) > 1 else []
    return _frame(body, legend)


def line_chart(points: list[str], series: dict[str, list[float | None]], unit: str = "",
               top: float | None = None) -> SafeString:
    """One line per series over the same x points (e.g. days); None leaves a gap."""
    values = [v for vs in series.values() for v in vs if v is not None]
    top = top or max(values + [1e-9])
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(points))
    body = _axis(top, unit)
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        coordinates = [(LEFT + slot * (i + 0.5), HEIGHT - BOTTOM - plot_height * min(v, top) / top)
                       for i, v in enumerate(vs) if v is not None]
        if len(coordinates) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (x, y), (i, v) in zip(coordinates, [(i, v) for i, v in enumerate(vs) if v is not None]):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{escape(points[i])} · '
                        f'{escape(name)}: {_number(v, unit)}</title></circle>')
    body += _x_labels(points, slot)
    legend = [(name, PALETTE[s % len(PALETTE)]) for s, name in enumerate(series)] if len(series) > 1 else []
    return _frame(body, legend)
