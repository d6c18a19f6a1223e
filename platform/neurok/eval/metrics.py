"""Shape metrics in the store's normalisation: Chamfer on fixed surface samples, F-score, vertex error,
volumetric IoU on an occupancy grid (research/neurok-paper.md s7.1, s9.2)."""

from __future__ import annotations

import numpy as np
import torch

from neurok.data import sampling
from neurok.geometry import chamfer_distance, nearest_distance


class SurfaceSampler:
    """n fixed surface points of a mesh family sharing `faces`: uniform by area on the rest shape, carried
    by barycentric coordinates to any deformed copy, so every shape is measured at the same points."""

    def __init__(self, rest: np.ndarray, faces: np.ndarray, n: int, seed: int = 0):
        self.faces = np.asarray(faces)
        self.face, self.bary = sampling.sample_surface(
            np.asarray(rest), self.faces, n, np.random.default_rng(seed)
        )

    def __call__(self, vertices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(..., V, 3) -> (..., n, 3)."""
        v = torch.as_tensor(
            np.asarray(vertices, np.float32) if not isinstance(vertices, torch.Tensor) else vertices
        )
        corners = v[..., torch.from_numpy(self.faces[self.face]), :]  # (..., n, 3, 3)
        return torch.einsum("nk,...nkc->...nc", torch.from_numpy(self.bary).to(v.dtype), corners)


def chamfer_l1_l2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return float(chamfer_distance(a, b, "l1")), float(chamfer_distance(a, b, "l2"))


def fscore(predicted: torch.Tensor, target: torch.Tensor, threshold: float) -> float:
    """F-score at a distance threshold: harmonic mean of precision (predicted points within it of the target)
    and recall (target points within it of the prediction)."""
    precision = (nearest_distance(predicted, target) <= threshold).float().mean()
    recall = (nearest_distance(target, predicted) <= threshold).float().mean()
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def vertex_error(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding vertices."""
    return float(np.linalg.norm(np.asarray(predicted) - np.asarray(target), axis=-1).mean())


def winding_number(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """Generalised winding number (N,) of a triangle mesh at points (N, 3): 1 inside a closed surface, 0
    outside (Jacobson et al. 2013; solid angles by Van Oosterom and Strackee)."""
    tri = vertices[faces].astype(np.float64)  # (F, 3, 3)
    out = np.empty(len(points))
    for i in range(0, len(points), chunk):
        r = tri[None] - points[i : i + chunk, None, None, :]  # (n, F, 3, 3)
        a, b, c = r[:, :, 0], r[:, :, 1], r[:, :, 2]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("nfi,nfi->nf", a, np.cross(b, c))
        dots = (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[i : i + chunk] = np.arctan2(det, la * lb * lc + dots).sum(axis=1) / (2 * np.pi)
    return out


def occupancy(
    vertices: np.ndarray, faces: np.ndarray, surface: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: int
) -> np.ndarray:
    """(grid^3,) bool: voxel centres inside the mesh (winding number >= 1/2), or voxels holding a surface
    sample, so that open surfaces (cloth) still occupy the voxels they pass through."""
    axes = [np.linspace(lo[k], hi[k], grid, endpoint=False) + (hi[k] - lo[k]) / (2 * grid) for k in range(3)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside = winding_number(centres, np.asarray(vertices, np.float64), faces) >= 0.5
    cell = np.clip(((surface - lo) / (hi - lo) * grid).astype(int), 0, grid - 1)
    inside[np.ravel_multi_index(cell.T, (grid,) * 3)] = True
    return inside


def volumetric_iou(
    a: np.ndarray, b: np.ndarray, faces: np.ndarray, a_surface: np.ndarray, b_surface: np.ndarray, grid: int
) -> float:
    """IoU of two meshes' occupancy on one grid over the bounding box of both (padded by a voxel)."""
    both = np.concatenate([a, b])
    lo, hi = both.min(axis=0), both.max(axis=0)
    pad = (hi - lo).max() / grid
    lo, hi = lo - pad, hi + pad
    occ_a = occupancy(a, faces, np.asarray(a_surface), lo, hi, grid)
    occ_b = occupancy(b, faces, np.asarray(b_surface), lo, hi, grid)
    return float((occ_a & occ_b).sum() / max((occ_a | occ_b).sum(), 1))
