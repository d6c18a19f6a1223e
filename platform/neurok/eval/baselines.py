"""The IK baselines of Table 1, fitted on the training split: a linear (PCA) deformation subspace of the
same dimension as NeuROK's reduced coordinates, and nearest-neighbour retrieval of a training deformation.

Objects differ in topology, so a deformation is carried between objects as a displacement field on fixed
anchor points over the unit cube (the store's normalisation): vertices -> anchors and anchors -> vertices
by inverse-distance weights of the K nearest. Both baselines see the target object's rest mesh, as NeuROK
does, and deform it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from neurok.dynamics.rigid import floating_position
from neurok.geometry import chamfer_distance


def grid_anchors(n: int) -> np.ndarray:
    """n^3 points on a regular grid over the unit cube [-0.5, 0.5]^3."""
    axis = np.linspace(-0.5, 0.5, n)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def idw_matrix(src: np.ndarray, dst: np.ndarray, k: int = 4) -> np.ndarray:
    """(len(dst), len(src)) rows of inverse-square-distance weights of each dst point's k nearest src
    points; a dst point on a src point gets that point's value exactly."""
    d = np.linalg.norm(dst[:, None, :] - src[None, :, :], axis=-1)
    k = min(k, len(src))
    nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
    w = 1.0 / np.maximum(np.take_along_axis(d, nearest, 1), 1e-12) ** 2
    matrix = np.zeros((len(dst), len(src)))
    np.put_along_axis(matrix, nearest, w / w.sum(axis=1, keepdims=True), 1)
    return matrix


@dataclass
class DeformationBank:
    """Training displacement fields on the anchors: rows (N, A * 3)."""

    anchors: np.ndarray  # (A, 3)
    fields: np.ndarray  # (N, A * 3)

    @classmethod
    def fit(cls, examples: list[tuple[np.ndarray, np.ndarray]], anchors: np.ndarray) -> DeformationBank:
        """examples: (rest (V, 3), displacements (T, V, 3)) per training sequence, normalised."""
        rows = []
        for rest, displacement in examples:
            to_anchors = idw_matrix(rest, anchors)
            rows.append(np.einsum("av,tvc->tac", to_anchors, displacement).reshape(len(displacement), -1))
        return cls(anchors, np.concatenate(rows))

    def to_vertices(self, rest: np.ndarray) -> torch.Tensor:
        """(V, A) weights that carry an anchor field onto the vertices of `rest`."""
        return torch.from_numpy(idw_matrix(self.anchors, rest)).float()


def chamfer_fit(
    shape: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    target: torch.Tensor,
    iterations: int,
    lr: float,
) -> np.ndarray:
    """shape(s) (V, 3) for the coordinates s, from `start`, that best fit `target` (n, 3) by Chamfer L1:
    NeuROK's IK objective and optimiser (Adam, cosine decay), for every baseline alike."""
    s = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([s], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))
    for _ in range(iterations):
        loss = chamfer_distance(shape(s), target, "l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        return shape(s).numpy()


def on_rigid_frame(
    deformed: Callable[[torch.Tensor], torch.Tensor], rest: torch.Tensor, dims: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """deformed(c) carried by a rigid frame (dynamics.rigid, unit masses), as NeuROK's `frame` IK is, and
    the start: the frame at the rest shape's centre, unturned, c = 0."""
    masses = torch.ones(len(rest))
    start = torch.cat([rest.mean(dim=0), torch.zeros(3 + dims)])
    return (lambda s: floating_position(deformed, masses, s)), start


def rigid_fit(rest: np.ndarray, target: torch.Tensor, iterations: int, lr: float = 0.05) -> np.ndarray:
    """The rest mesh moved by a rigid frame alone (6 coordinates), fitted to `target` by Chamfer L1: the
    floor any deformation model on a frame must beat."""
    rest_t = torch.from_numpy(rest).float()
    return chamfer_fit(*on_rigid_frame(lambda c: rest_t, rest_t, 0), target, iterations, lr)


class PCABaseline:
    """Displacement = mean + U c on the anchors; c (dims,) fitted to a target cloud by Chamfer. With
    `frame`, the deformed shape rides a rigid frame (dynamics.rigid), as NeuROK's `frame` IK does, so the
    two compare at the same number of coordinates (6 + dims)."""

    def __init__(self, bank: DeformationBank, dims: int, frame: bool = False):
        self.bank, self.frame = bank, frame
        self.mean = bank.fields.mean(axis=0)
        _, singular, vt = np.linalg.svd(bank.fields - self.mean, full_matrices=False)
        self.components = vt[:dims]  # (dims, A * 3)
        self.dims = len(self.components)
        self.std = singular[: self.dims] / np.sqrt(max(len(bank.fields) - 1, 1))  # of each coefficient

    def _field(self, c: torch.Tensor) -> torch.Tensor:
        mean = torch.from_numpy(self.mean).float()
        return (mean + c @ torch.from_numpy(self.components).float()).reshape(-1, 3)

    def project(self, rest: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        """Least-squares fit with correspondence: the deformed vertices (V, 3) nearest rest + displacement."""
        W = self.bank.to_vertices(rest).double().numpy()
        basis = np.einsum("va,dac->dvc", W, self.components.reshape(self.dims, -1, 3)).reshape(self.dims, -1)
        offset = (W @ self.mean.reshape(-1, 3)).reshape(-1)
        c, *_ = np.linalg.lstsq(basis.T, displacement.reshape(-1) - offset, rcond=None)
        return rest + (offset + c @ basis).reshape(-1, 3)

    def fit(self, rest: np.ndarray, target: torch.Tensor, iterations: int, lr: float = 0.05) -> np.ndarray:
        """Vertices (V, 3) of rest deformed by the subspace field (on its rigid frame, with `frame`) that best
        fit `target` (n, 3) by Chamfer L1."""
        W, rest_t = self.bank.to_vertices(rest), torch.from_numpy(rest).float()
        deformed = lambda c: rest_t + W @ self._field(c)  # noqa: E731
        if self.frame:
            return chamfer_fit(*on_rigid_frame(deformed, rest_t, self.dims), target, iterations, lr)
        return chamfer_fit(deformed, torch.zeros(self.dims), target, iterations, lr)

    def sample(self, rest: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, V, 3): rest deformed by coefficients drawn from the Gaussian the training fields span in this
        subspace (the generative baseline of prior samples)."""
        W = self.bank.to_vertices(rest).double().numpy()
        c = rng.standard_normal((n, self.dims)) * self.std
        fields = (self.mean + c @ self.components).reshape(n, -1, 3)
        return (rest + np.einsum("va,nac->nvc", W, fields)).astype(np.float32)


class NearestBaseline:
    """The training deformation that, on the target's rest mesh, is nearest the target (Chamfer L1 of the
    deformed vertices, NeuROK's IK objective)."""

    def __init__(self, bank: DeformationBank):
        self.bank = bank

    def fit(self, rest: np.ndarray, target: torch.Tensor, batch: int = 32) -> np.ndarray:
        W, rest_t = self.bank.to_vertices(rest), torch.from_numpy(rest).float()
        fields = torch.from_numpy(self.bank.fields).float().reshape(len(self.bank.fields), -1, 3)
        best, best_score = None, float("inf")
        for i in range(0, len(fields), batch):
            shapes = rest_t + torch.einsum("va,nac->nvc", W, fields[i : i + batch])
            scores = chamfer_distance(shapes, target.expand(len(shapes), -1, -1), "l1")
            j = int(scores.argmin())
            if float(scores[j]) < best_score:
                best, best_score = shapes[j], float(scores[j])
        return best.numpy()
