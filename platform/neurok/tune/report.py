"""A sweep's summary: the table of trials, the Pareto front of the objectives, a parallel-coordinates plot."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from neurok.tune.config import Objective


def pareto_front(rows: list[dict], objectives: list[Objective]) -> list[int]:
    """Indices of the rows that no other row dominates: none is as good in every objective and better in
    one. Equal rows do not dominate each other, so ties are all on the front. Every trial takes part with
    its last report, an early-stopped one too; rows missing an objective (failed trials) do not."""
    keys = [o.metric for o in objectives]
    complete = [i for i, r in enumerate(rows) if all(r.get(k) is not None for k in keys)]
    sign = np.array([1.0 if o.mode == "min" else -1.0 for o in objectives])
    values = {i: sign * np.array([rows[i][k] for k in keys]) for i in complete}
    return [
        i
        for i in complete
        if not any(
            np.all(values[j] <= values[i]) and np.any(values[j] < values[i]) for j in complete if j != i
        )
    ]


def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _finite_range(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the smallest and largest finite value; (0, 0) for a column with none (a metric no trial
    reported), where np.nanmin would warn."""
    finite = np.isfinite(table)
    lo = np.where(finite, table, np.inf).min(axis=0)
    hi = np.where(finite, table, -np.inf).max(axis=0)
    empty = ~finite.any(axis=0)
    return np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)


def parallel_coordinates(rows: list[dict], columns: list[str], colour_by: str) -> Figure:
    """One line per trial across the hyper-parameters and objectives, each axis scaled to [0, 1]."""
    fig = Figure(figsize=(1.6 * len(columns) + 2, 4), constrained_layout=True)
    ax = fig.add_subplot()
    table = np.array([[_number(r.get(c)) for c in columns] for r in rows], dtype=float)
    lo, hi = _finite_range(table)
    scaled = (table - lo) / np.where(hi > lo, hi - lo, 1.0)
    score = np.array([_number(r.get(colour_by)) for r in rows], dtype=float)
    finite = np.isfinite(score)
    norm = (
        (score - np.nanmin(score)) / max(np.nanmax(score) - np.nanmin(score), 1e-12)
        if finite.any()
        else score
    )
    cmap = colormaps["viridis"]
    for row, value, r in zip(scaled, norm, rows, strict=True):
        colour = cmap(value) if np.isfinite(value) else "0.7"
        style = "-o" if r.get("state") == "completed" else "--o"
        ax.plot(range(len(columns)), row, style, color=colour, alpha=0.85, label=r.get("trial_id"))
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
    for k in range(len(columns)):
        ax.annotate(f"{lo[k]:.3g}", (k, 0), xytext=(2, -10), textcoords="offset points", fontsize=6)
        ax.annotate(f"{hi[k]:.3g}", (k, 1), xytext=(2, 4), textcoords="offset points", fontsize=6)
    ax.set_yticks([])
    ax.set_title(f"trials (colour: {colour_by}, grey: not measured, dashed: stopped early)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
