"""Reconstruction figures: rest, target and predicted shape of a few validation objects, side by side."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state


def reconstruction_figure(examples: list[dict], title: str = "") -> Figure:
    """examples: dicts with `name`, `faces` (F, 3) and y-up (V, 3) `rest`, `target`, `predicted`."""
    columns = ("rest", "target", "predicted")
    fig = Figure(figsize=(3.2 * len(columns), 3.0 * len(examples)), constrained_layout=True)
    if title:
        fig.suptitle(title)
    for row, ex in enumerate(examples):
        error = np.linalg.norm(ex["predicted"] - ex["target"], axis=1)
        everything = np.concatenate([ex[c] for c in columns])
        lo, hi = everything.min(axis=0), everything.max(axis=0)
        for col, name in enumerate(columns):
            ax = fig.add_subplot(len(examples), len(columns), row * len(columns) + col + 1, projection="3d")
            v = ex[name]
            surface = ax.plot_trisurf(
                v[:, 0],
                v[:, 2],
                v[:, 1],
                triangles=ex["faces"],
                linewidth=0.1,
                edgecolor="k",
                alpha=0.9,
                cmap="viridis" if name == "predicted" else None,
            )
            if name == "predicted":  # colour by per-face vertex error
                surface.set_array(error[ex["faces"]].mean(axis=1))
            ax.set(
                xlim=(lo[0], hi[0]), ylim=(lo[2], hi[2]), zlim=(lo[1], hi[1]), xticks=[], yticks=[], zticks=[]
            )
            ax.set_box_aspect(np.maximum(hi - lo, 1e-6)[[0, 2, 1]])
            label = f"{name}\nmean error {error.mean():.4f}" if name == "predicted" else name
            ax.set_title(f"{ex['name']}: {label}" if col == 0 else label, fontsize=8)
    return fig
