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


def without_rigid_motion(rest: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """x (V, 3) with its best rigid motion from `rest` undone: its pose in the rest frame, so that what
    differs from `rest` is deformation alone."""
    R, c_rest, c_x = rigid_fit(rest, x, weights)
    return (np.asarray(x, np.float64) - c_x) @ R + c_rest


def rigid_modes(rest: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The infinitesimal rigid motions of `rest` (V, 3), translations and rotations about its weighted
    centre, as a weights-orthonormal basis (R, V, 3): sum_v w_v a_v . b_v = [a is b]. R = 6, fewer for a
    mesh on a line or a point (the rotations about that line move nothing)."""
    centred = rest - weights @ rest / weights.sum()
    eye = torch.eye(3, dtype=rest.dtype, device=rest.device)
    modes = torch.cat([eye[:, None].expand(3, *rest.shape), torch.linalg.cross(eye[:, None], centred[None])])
    root = weights.sqrt()[:, None]
    U, S, _ = torch.linalg.svd((modes * root).flatten(1).T, full_matrices=False)
    kept = S[0] * 1e-6 < S  # drop what a degenerate mesh (a line, a point) cannot turn
    return U[:, kept].T.reshape(-1, *rest.shape) / root


def without_rigid_modes(u: torch.Tensor, modes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Displacements u (..., V, 3) less their weighted projection on the rigid `modes` (R, V, 3)
    (`rigid_modes`): the part no small rigid motion makes, to first order in the rotation."""
    coefficients = torch.einsum("...vc,rvc,v->...r", u, modes, weights)
    return u - torch.einsum("...r,rvc->...vc", coefficients, modes)
