"""An account's usage as `nofx usage` prints it (per day, agent and currency), its totals, and a
stacked bar chart of cost per day and agent drawn on the server as SVG (pygal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pygal
from pygal.style import Style

# Dark enough on white for text and bars alike (WCAG AA for the labels).
CHART_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#222222",
    foreground_strong="#000000",
    foreground_subtle="#555555",
    colors=("#1f5fa8", "#b3541e", "#2d7d46", "#7b3fa0", "#8a6d00", "#a3193d", "#00697a"),
    font_family="sans-serif",
)


@dataclass(frozen=True)
class Total:
    currency: str
    attempts: int
    wall_seconds: float
    cost: Decimal


def totals(rows: Sequence[Mapping[str, Any]]) -> list[Total]:
    """Sums over every day and agent, per currency (costs in two currencies never add up)."""
    sums: dict[str, list[Any]] = {}
    for row in rows:
        entry = sums.setdefault(row["currency"], [0, 0.0, Decimal(0)])
        entry[0] += row["attempts"]
        entry[1] += row["wall_seconds"]
        entry[2] += Decimal(row["cost"])
    return [Total(currency, *sums[currency]) for currency in sorted(sums)]


def chart_svg(rows: Sequence[Mapping[str, Any]], account: str) -> str:
    """Cost per day, one stacked series per agent and currency; '' when there is nothing."""
    if not rows:
        return ""
    days = sorted({str(row["day"]) for row in rows})
    series: dict[str, dict[str, float]] = {}
    for row in rows:
        name = f"{row['agent']} ({row['currency']})"
        series.setdefault(name, {})[str(row["day"])] = float(row["cost"])
    title = f"Cost per day and agent, account {account}"
    chart = pygal.StackedBar(
        title=title,
        style=CHART_STYLE,
        js=[],  # no script from elsewhere: the page reads without JavaScript
        disable_xml_declaration=True,
        height=320,
        x_title="day (UTC)",
        y_title="cost",
        legend_at_bottom=True,
    )
    chart.x_labels = days
    for name in sorted(series):
        chart.add(name, [series[name].get(day) for day in days])
    svg: str = chart.render(is_unicode=True)
    return svg.replace("<svg", f'<svg role="img" aria-label="{title}"', 1)
