"""`routecar spend --chart out.png`: actual cost per day, stacked by one key (matplotlib, optional).

matplotlib is the optional `chart` extra (pip install 'routecar[chart]'); it is
imported when a chart is asked for, and its ImportError tells the caller to say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..traces.spend import SpendRow

MAX_SERIES = 8   # more keys than this: the smallest are summed as "other"


def stacks(rows: Sequence[SpendRow]) -> tuple[list[str], dict[str, list[float]]]:
    """Rows grouped by (day, key) -> the days in order and one cost series per key, biggest first."""
    days = sorted({r.keys[0] for r in rows})
    totals: dict[str, float] = {}
    for r in rows:
        totals[r.keys[1]] = totals.get(r.keys[1], 0.0) + r.actual_cost
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    keep = ranked if len(ranked) <= MAX_SERIES else ranked[: MAX_SERIES - 1]
    series = {k: [0.0] * len(days) for k in keep}
    if len(keep) < len(ranked):
        series["other"] = [0.0] * len(days)
    index = {d: i for i, d in enumerate(days)}
    for r in rows:
        name = r.keys[1] if r.keys[1] in series else "other"
        series[name][index[r.keys[0]]] += r.actual_cost
    return days, series


def draw_spend(rows: Sequence[SpendRow], split: str, out: str | Path, title: str) -> Path:
    """Write the PNG; raises ImportError without matplotlib, OSError if `out` cannot be written."""
    import matplotlib
    matplotlib.use("Agg")   # files only, never a window
    import matplotlib.pyplot as plt

    days, series = stacks(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(days) + 3), 4.5), dpi=110)
    try:
        bottom = [0.0] * len(days)
        for name, values in series.items():
            ax.bar(days, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel("actual cost (USD)")
        ax.set_xlabel("day (UTC)")
        ax.set_title(title, fontsize=10)
        if series:
            ax.legend(title=split, fontsize=8)
        else:
            ax.text(0.5, 0.5, "no governed calls in this range", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = Path(out)
        fig.savefig(path, format="png")
        return path
    finally:
        plt.close(fig)
