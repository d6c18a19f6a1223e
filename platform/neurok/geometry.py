"""Point-set geometry shared by the model, the dynamics and the evaluation: Chamfer distances.

Imports nothing from the project, so every stage can use it.
"""

from __future__ import annotations

from typing import Literal

import torch


def nearest_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each point of a (..., N, 3), the distance to its nearest point of b (..., M, 3): (..., N).

    Rows of a are taken `chunk` at a time, so memory stays at chunk x M distances (10k x 10k is 400 MB).
    """
    parts = [
        torch.cdist(a[..., i : i + chunk, :], b).min(dim=-1).values for i in range(0, a.shape[-2], chunk)
    ]
    return torch.cat(parts, dim=-1)


def chamfer_distance(
    a: torch.Tensor, b: torch.Tensor, kind: Literal["l1", "l2"] = "l1", chunk: int = 4096
) -> torch.Tensor:
    """Symmetric Chamfer distance between point sets a (..., N, 3) and b (..., M, 3), per leading index.

    As in Occupancy Networks: "l1" is the mean Euclidean distance to the nearest neighbour, "l2" the mean
    squared distance; each is averaged over both directions, 1/2 (a->b + b->a).
    """
    ab, ba = nearest_distance(a, b, chunk), nearest_distance(b, a, chunk)
    if kind == "l2":
        ab, ba = ab.square(), ba.square()
    elif kind != "l1":
        raise ValueError(f"chamfer_distance: kind must be 'l1' or 'l2', got {kind!r}")
    return 0.5 * (ab.mean(dim=-1) + ba.mean(dim=-1))
