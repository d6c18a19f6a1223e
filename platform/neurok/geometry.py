"""Point-set geometry shared by the data, the model, the dynamics and the evaluation: Chamfer distances and
the best rigid fit between two poses of a mesh.

Imports nothing from the project, so every stage can use it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
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


def rigid_fit(
    rest: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rigid motion that best carries `rest` (V, 3) onto `x` (V, 3) in weighted least squares (Kabsch,
    a proper rotation): (R (3, 3), c_rest (3,), c_x (3,)) with x ~ (rest - c_rest) @ R.T + c_x. Uniform
    weights by default."""
    w = np.ones(len(rest)) if weights is None else np.asarray(weights, np.float64)
    rest, x = np.asarray(rest, np.float64), np.asarray(x, np.float64)
    c_rest, c_x = w @ rest / w.sum(), w @ x / w.sum()
    U, _, Vt = np.linalg.svd(np.einsum("v,vi,vj->ij", w, x - c_x, rest - c_rest))
    flip = np.sign(np.linalg.det(U @ Vt)) or 1.0
    return U @ np.diag([1.0, 1.0, flip]) @ Vt, c_rest, c_x


def in_rest_frame(rest: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched without_rigid_motion for training: x (B, N, 3) with its best rigid motion from rest (B, N, 3)
    undone. The motion is fitted without gradient, so the gradient reaches x's shape and not the fit (an
    SVD's gradient is unstable on the symmetric shapes a dataset has)."""
    with torch.no_grad():
        c_rest, c_x = rest.mean(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)
        U, _, Vt = torch.linalg.svd((x - c_x).transpose(1, 2) @ (rest - c_rest))
        flip = torch.ones_like(U[:, 0])  # (B, 3)
        flip[:, 2] = torch.where(torch.linalg.det(U @ Vt) < 0, -1.0, 1.0)
        R = (U * flip[:, None, :]) @ Vt  # x ~ (rest - c_rest) @ R^T + c_x
    return (x - c_x) @ R + c_rest


def without_rigid_motion(rest: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """x (V, 3) with its best rigid motion from `rest` undone: its pose in the rest frame, so that what
    differs from `rest` is deformation alone."""
    R, c_rest, c_x = rigid_fit(rest, x, weights)
    return (np.asarray(x, np.float64) - c_x) @ R + c_rest
