"""NeuROK's conditional VAE (paper s2): prior encoder E_cond, deformation encoder E_vae, decoder D.

    E_cond(M0)             -> shape tokens, mu_cond        prior p(z | M0) = N(mu_cond, I)
    E_vae(M0, deformation) -> mu, logvar                   posterior q(z | phi, M0)
    D(z, M0, queries)      -> per-query deformation        M0 enters as E_cond's shape tokens

D's head gives each query a motion (model.decoder_output): a displacement, or a rigid motion as a unit
dual quaternion that moves the query itself. Mesh vertices follow their K nearest queries: the mean
displacement, or the blend of their dual quaternions (DQB) applied to the vertex.

`decode` is a pure function of its inputs (no randomness, no in-place updates, explicit-softmax attention)
so torch.func.jvp / jacfwd can differentiate it with respect to z.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from neurok.model import dual_quaternion
from neurok.model.basis import LinearBasis
from neurok.model.config import ModelConfig
from neurok.model.layers import Block, FourierEmbedding, mlp_head
from neurok.model.perceiver import PerceiverEncoder
from neurok.model.pointnet import PointNetTokens

DQ_FEATURES = 8
DISPLACEMENT = 3


class QueryFeatures(NamedTuple):
    """The query points and the decoder's work at them that z does not change: their embedding and their
    projected queries for the read. Computed once per object for the dynamics, which decode at fixed points.
    """

    points: torch.Tensor  # (B, Q, 3)
    embedded: torch.Tensor  # (B, Q, width)
    heads: torch.Tensor  # (B, heads, Q, width / heads)


class Decoder(nn.Module):
    """Self-attention over [shape tokens, lifted z tokens], then the embedded queries read them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.output = cfg.decoder_output
        self.lift = nn.Linear(cfg.latent_dim, cfg.width)  # project z tokens to the width (s9.2)
        self.layers = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.ff_mult, fused=False) for _ in range(cfg.decoder_depth)
        )
        self.query_embed = FourierEmbedding(cfg.frequencies, cfg.width)
        # The queries read the tokens with one cross-attention and no feed-forward, as 3DShape2VecSet's
        # decoder does: per-query compute is what a dense query set pays for. The MLP head is ours.
        self.read = Block(cfg.width, cfg.heads, 0, cross=True, fused=False)
        self.latent_code = nn.Linear(cfg.tokens * cfg.latent_dim, cfg.width) if cfg.global_latent else None
        channels = dual_quaternion.HEAD_CHANNELS if self.output == "dual_quaternion" else DISPLACEMENT
        self.head = mlp_head(cfg.width, cfg.head_layers, channels)
        nn.init.zeros_(self.head[-1].weight)  # ours: start from "no deformation" (both heads: zero is that)
        nn.init.zeros_(self.head[-1].bias)
        self.basis = LinearBasis(cfg) if cfg.linear_basis else None

    def features(self, queries: torch.Tensor) -> QueryFeatures:
        embedded = self.query_embed(queries)
        return QueryFeatures(queries, embedded, self.read.queries(embedded))

    def head_output(
        self, z: torch.Tensor, shape_tokens: torch.Tensor, features: QueryFeatures
    ) -> torch.Tensor:
        """The head's numbers per query (B, Q, 3 or 7), before they are made a motion (with the linear
        basis's displacement added)."""
        x = torch.cat([shape_tokens, self.lift(z)], dim=1)
        for layer in self.layers:
            x = layer(x)
        read = self.read.read(features.embedded, features.heads, x)
        if self.latent_code is not None:
            read = read + self.latent_code(z.flatten(1))[:, None]
        out = self.head(read)
        return out if self.basis is None else out + self.basis(z, shape_tokens, features.embedded)

    def motion(self, z: torch.Tensor, shape_tokens: torch.Tensor, features: QueryFeatures) -> torch.Tensor:
        """Per-query motion (B, Q, 3 or 8) at the queries of `features` (see query_motion)."""
        return query_motion(self.head_output(z, shape_tokens, features), self.output)

    def decode(self, z: torch.Tensor, shape_tokens: torch.Tensor, features: QueryFeatures) -> torch.Tensor:
        """Per-query deformation (B, Q, 3) at the queries of `features`: where their motion takes them."""
        return moved_by(self.motion(z, shape_tokens, features), features.points)

    def forward(self, z: torch.Tensor, shape_tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.decode(z, shape_tokens, self.features(queries))


class NeuROK(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.cond_encoder = PerceiverEncoder(cfg)  # E_cond
        self.prior_head = nn.Linear(cfg.width, cfg.latent_dim)
        extra = 3 + (DQ_FEATURES if cfg.dual_quaternion else 0)
        encoder = PointNetTokens if cfg.vae_encoder == "pointnet" else PerceiverEncoder
        self.vae_encoder = encoder(cfg, extra)  # E_vae
        self.posterior_head = nn.Linear(cfg.width, 2 * cfg.latent_dim)
        self.decoder = Decoder(cfg)  # D

    def encode_shape(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E_cond: M0's surface points (B, P, 3) -> shape tokens (B, M, width), mu_cond (B, M, d)."""
        tokens = self.cond_encoder(points)
        return tokens, self.prior_head(tokens)

    def encode_deformation(
        self, points: torch.Tensor, displacement: torch.Tensor, dual_quaternion: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E_vae: M0's points and the deformation at them -> posterior mean and log-variance (B, M, d)."""
        displacement = displacement * self.cfg.displacement_scale
        features = displacement if dual_quaternion is None else torch.cat([displacement, dual_quaternion], -1)
        mu, logvar = self.posterior_head(self.vae_encoder(points, features)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, shape_tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """D: latent (B, M, d), shape tokens, query points (B, Q, 3) -> deformation per query (B, Q, 3)."""
        return self.decoder(z, shape_tokens, queries)

    def forward(self, batch: dict[str, torch.Tensor], noise: float = 1.0) -> dict[str, torch.Tensor]:
        """One CVAE pass on a batch: a posterior sample decoded at the batch's queries, its noise scaled by
        `noise` (0: the posterior mean; below 1 in the KL warm-up)."""
        shape_tokens, mu_cond = self.encode_shape(batch["points"])
        dq = batch.get("dual_quaternion") if self.cfg.dual_quaternion else None
        mu, logvar = self.encode_deformation(batch["points"], batch["displacement"], dq)
        z = mu + noise * (0.5 * logvar).exp() * torch.randn_like(mu) if noise else mu
        motion = self.decoder.motion(z, shape_tokens, self.decoder.features(batch["queries"]))
        return {
            "deformation": moved_by(motion, batch["queries"]),
            "motion": motion,  # what the mesh vertices follow (drive_vertices)
            "mu": mu,
            "logvar": logvar,
            "mu_cond": mu_cond,
            "z": z,
            "shape_tokens": shape_tokens,
        }


def query_motion(raw: torch.Tensor, output: str) -> torch.Tensor:
    """The head's output -> each query's motion: its displacement (..., 3), or a unit dual quaternion
    (..., 8) of a rigid motion (model.decoder_output)."""
    return dual_quaternion.from_head(raw) if output == "dual_quaternion" else raw


def moved_by(motion: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The displacement (..., 3) of points (..., 3) under their motions (..., 3 or 8)."""
    return motion if motion.shape[-1] == DISPLACEMENT else dual_quaternion.apply(motion, points) - points


def blend_nearest(motions: torch.Tensor) -> torch.Tensor:
    """One motion (..., C) from those of a vertex's nearest queries (..., K, C), uniformly weighted: the mean
    displacement, or the dual-quaternion blend."""
    return motions.mean(dim=-2) if motions.shape[-1] == DISPLACEMENT else dual_quaternion.blend(motions)


def drive_vertices(
    vertices: torch.Tensor, queries: torch.Tensor, motion: torch.Tensor, k: int
) -> torch.Tensor:
    """Deformation of mesh vertices (B, V, 3) under the blended motion (B, Q, 3 or 8) of their K nearest
    query points (B, Q, 3)."""
    k = min(k, queries.shape[1])
    nearest = (
        torch.cdist(vertices, queries, compute_mode="donot_use_mm_for_euclid_dist")
        .topk(k, dim=-1, largest=False)
        .indices
    )  # (B, V, K)
    picked = torch.gather(
        motion.unsqueeze(1).expand(-1, vertices.shape[1], -1, -1),
        2,
        nearest.unsqueeze(-1).expand(-1, -1, -1, motion.shape[-1]),
    )
    return moved_by(blend_nearest(picked), vertices)
