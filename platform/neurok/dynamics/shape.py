"""What the dynamics need from a learned model: one object's shape space, x = D(z), and its prior.

The simulator, the model reduction and the inverse kinematics see a model only through `LatentShape`,
so any pure, differentiable decoder works: the CVAE through an adapter, or a plain function in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.func import jacfwd, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map

from neurok.errors import NeurokError

Decoder = Callable[[torch.Tensor, Any], torch.Tensor]  # (z (k,), context) -> vertex positions (V, 3)
Position = Callable[[torch.Tensor], torch.Tensor]  # q (k_q,) -> x (V, 3)


def _decode(decode_fn: Decoder, z: torch.Tensor, context: Any) -> torch.Tensor:
    # Forward-mode AD has no fused-attention kernel on the CPU (research/traps.md 1); the math one has it.
    with sdpa_kernel(SDPBackend.MATH):
        return decode_fn(z, context)


def jacobian(position: Position, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (V, 3) and J = dx/dq (V, 3, k_q) by torch.func.jacfwd: k_q forward-mode JVPs."""

    def x_twice(q: torch.Tensor):  # the second copy comes back as jacfwd's aux: the value itself
        x = position(q)
        return x, x

    J, x = jacfwd(x_twice, has_aux=True)(q)
    return x, J


@dataclass(frozen=True)
class LatentShape:
    """One object's (or a stack of objects') decoder x = decode_fn(z, context), prior N(mu_cond, I), masses.

    decode_fn must be pure and differentiable in z, and work under torch.func (vmap, jvp, jacfwd): no
    random ops, so a torch model must be in eval mode. A decode_fn with a `linearize(z, directions,
    context) -> (x, dx/dz directions^T (V, 3, k_q))` method gives the Jacobians the dynamics take every
    step its own way (the CVAE's is hand-written and several times cheaper than jacfwd). `context` is a
    pytree of tensors the decoder needs besides z (for the CVAE: M0's shape tokens and query points).
    `rest` is M0's vertices, the reference the deformation is measured from. A stack of objects carries a
    leading batch dimension on mu_cond, masses, rest and every context tensor; objects with fewer
    vertices are padded with zero-mass vertices, which then carry no inertia, weight or force.
    """

    decode_fn: Decoder
    context: Any
    mu_cond: torch.Tensor  # (k,) or (B, k)
    masses: torch.Tensor  # (V,) or (B, V), kg
    rest: torch.Tensor  # (V, 3) or (B, V, 3), m

    @classmethod
    def from_callable(
        cls,
        decode: Callable[[torch.Tensor], torch.Tensor],
        mu_cond: torch.Tensor,
        masses: torch.Tensor | None = None,
        rest: torch.Tensor | None = None,
    ) -> LatentShape:
        """Wrap a plain z -> x function. Defaults: uniform masses of 1 kg in total (paper s9.2), and the
        decoded prior mean as the rest shape."""

        def decode_fn(z: torch.Tensor, context: Any) -> torch.Tensor:
            return decode(z)

        if rest is None:
            with torch.no_grad():
                rest = _decode(decode_fn, mu_cond, None)
        if masses is None:
            masses = torch.full(rest.shape[:1], 1 / rest.shape[0], dtype=rest.dtype, device=rest.device)
        return cls(decode_fn, None, mu_cond, masses, rest)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x = D(z) (V, 3), for one object."""
        return _decode(self.decode_fn, z, self.context)

    @property
    def batch_size(self) -> int | None:
        return self.mu_cond.shape[0] if self.mu_cond.dim() == 2 else None

    @property
    def latent_dims(self) -> int:
        return self.mu_cond.shape[-1]

    @property
    def num_vertices(self) -> int:
        return self.masses.shape[-1]

    def __getitem__(self, i: int) -> LatentShape:
        """Object i of a stack."""
        return LatentShape(
            self.decode_fn,
            tree_map(lambda t: t[i], self.context),
            self.mu_cond[i],
            self.masses[i],
            self.rest[i],
        )

    @staticmethod
    def stack(shapes: Sequence[LatentShape]) -> LatentShape:
        """Objects that share a decoder (same model), stacked to be simulated as one batch."""
        first = shapes[0]
        if any(s.decode_fn is not first.decode_fn for s in shapes):
            raise NeurokError("LatentShape.stack: every object must share one decode_fn (the same model)")
        if len({s.num_vertices for s in shapes}) > 1:
            raise NeurokError(
                "LatentShape.stack: vertex counts differ; pad the smaller objects with zero-mass vertices"
            )
        contexts = [s.context for s in shapes]
        return LatentShape(
            first.decode_fn,
            tree_map(lambda *leaves: torch.stack(leaves), *contexts) if first.context is not None else None,
            torch.stack([s.mu_cond for s in shapes]),
            torch.stack([s.masses for s in shapes]),
            torch.stack([s.rest for s in shapes]),
        )


class ShapeTensors(NamedTuple):
    """The tensors of a reduced object, as torch.func.vmap sees them (batched or not, together)."""

    context: Any
    mu_cond: torch.Tensor
    basis: torch.Tensor
    masses: torch.Tensor


def decode_reduced(decode_fn: Decoder, tensors: ShapeTensors, q: torch.Tensor) -> torch.Tensor:
    """x(q) = D(mu_cond + A^T q) for one object."""
    return _decode(decode_fn, tensors.mu_cond + q @ tensors.basis, tensors.context)


@dataclass(frozen=True)
class ReducedShape:
    """Reduced coordinates q of a LatentShape: z(q) = mu_cond + A^T q, A has orthonormal rows (s5.4)."""

    latent: LatentShape
    basis: torch.Tensor  # A: (k_q, k) or (B, k_q, k)
    eigenvalues: torch.Tensor | None = None  # of the gradient covariance, descending: (k,) or (B, k)

    @classmethod
    def identity(cls, latent: LatentShape) -> ReducedShape:
        """q = z - mu_cond: no reduction."""
        eye = torch.eye(latent.latent_dims, dtype=latent.mu_cond.dtype, device=latent.mu_cond.device)
        return cls(latent, eye if latent.batch_size is None else eye.expand(latent.batch_size, -1, -1))

    @property
    def dims(self) -> int:
        return self.basis.shape[-2]

    @property
    def batch_size(self) -> int | None:
        return self.latent.batch_size

    @property
    def tensors(self) -> ShapeTensors:
        return ShapeTensors(self.latent.context, self.latent.mu_cond, self.basis, self.latent.masses)

    @property
    def in_dims(self) -> int | None:
        """vmap's in_dims for `tensors`: 0 for a stack of objects, None for one object shared by a batch."""
        return None if self.batch_size is None else 0

    def position_fn(self, tensors: ShapeTensors) -> Callable[[torch.Tensor], torch.Tensor]:
        """q -> x for one object's tensors (inside vmap)."""
        return partial(decode_reduced, self.latent.decode_fn, tensors)

    def jacobian_fn(
        self, tensors: ShapeTensors
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """q -> (x (V, 3), J = dx/dq (V, 3, k_q)) for one object's tensors (inside vmap): the decoder's
        `linearize` when it has one, else jacfwd."""
        linearize = getattr(self.latent.decode_fn, "linearize", None)
        if linearize is None:
            return partial(jacobian, self.position_fn(tensors))

        def linearized(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return linearize(tensors.mu_cond + q @ tensors.basis, tensors.basis, tensors.context)

        return linearized

    @property
    def elastic(self) -> torch.Tensor:
        """(k_q,) 1 on every coordinate: the prior's restoring force and damping act on all of q."""
        return torch.ones(self.dims, dtype=self.basis.dtype, device=self.basis.device)

    def start(self, batch: int) -> torch.Tensor:
        """(B, k_q) the rest state q = 0."""
        return self.basis.new_zeros(batch, self.dims)

    def rechart(self, q: torch.Tensor, v: torch.Tensor) -> None:
        """q is one chart everywhere (FloatingShape's rotation needs two)."""
        return None

    def latents(self, q: torch.Tensor) -> torch.Tensor:
        """z(q) for q (B, ..., k_q); a stack of objects pairs object b with q[b]."""
        if self.batch_size is None:
            return self.latent.mu_cond + q @ self.basis
        mu = self.latent.mu_cond.view(self.batch_size, *(1,) * (q.dim() - 2), -1)
        return mu + torch.einsum("b...q,bqk->b...k", q, self.basis)

    def positions(self, q: torch.Tensor) -> torch.Tensor:
        """Decoded vertices (B, V, 3) of q (B, k_q); a stack of objects pairs object b with q[b]."""
        return vmap(lambda q, t: self.position_fn(t)(q), in_dims=(0, self.in_dims))(q, self.tensors)
