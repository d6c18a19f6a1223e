"""The CVAE objective and the reconstruction metrics (paper s3 and Tab. 1)."""

from __future__ import annotations

import torch

from neurok.geometry import in_rest_frame
from neurok.model.config import ModelConfig
from neurok.model.cvae import drive_vertices


def kl_terms(mu: torch.Tensor, logvar: torch.Tensor, mu_cond: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(mu_cond, I)) per sample and latent dimension: (B, tokens, d)."""
    return 0.5 * (logvar.exp() + (mu - mu_cond).square() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, mu_cond: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(mu_cond, I)) per sample, summed over the k latent dimensions."""
    return kl_terms(mu, logvar, mu_cond).sum(dim=(1, 2))


def kl_ramp(step: int, warmup_steps: int) -> float:
    """The share of the KL weight and of the posterior noise at a training step: 0 for `warmup_steps` (an
    autoencoder), then rising linearly to 1 over as many."""
    return 1.0 if warmup_steps <= 0 else min(1.0, max(0.0, step / warmup_steps - 1.0))


def cvae_loss(out: dict, batch: dict, cfg: ModelConfig, kl_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """||delta_sample - delta_pred||^2 + lambda KL, averaged over the batch.

    The squared norm is over the whole field, as the paper writes it, i.e. a sum over points. Ours: we
    take the per-point mean times `field_points` (the paper's 4096 queries by default), so the balance
    against the KL does not change with a preset's query count. A plain per-point mean would let the KL
    term win and the posterior collapse. `mse` is the per-point mean.

    Free bits (Kingma et al. 2016): a latent dimension whose batch-mean KL is under `cfg.kl_free_bits`
    nats costs that much and no gradient, so the KL term cannot shut a dimension before the decoder has
    learnt to use it (with deformation-only targets the KL fell to 1 nat by step 250 without; with 0.5
    nats it held 40-90, but the decoder still ignored z). `kl` is the true KL, summed over the dimensions.
    `kl_scale` scales lambda (the warm-up: `kl_ramp`).

    With `cfg.error_floor` f > 0, a sample whose mean squared displacement m exceeds f has its error
    weighted by f / (m + f) (a constant of the target): large motions count by their relative error, so a
    few flailing multibody chains (m ~ 0.1, normalised) do not drown the elastic, cloth and articulated
    deformations (m ~ 0.001-0.005) of deformation-only targets, which were 1% of the loss without.
    """
    target = batch["query_displacement"]
    error = (out["deformation"].float() - target).square().sum(dim=-1)  # (B, Q)
    per_sample = error.mean(dim=1)
    if cfg.error_floor > 0:
        size = target.square().sum(dim=-1).mean(dim=1)
        per_sample = per_sample * cfg.error_floor / (size + cfg.error_floor)
    recon = per_sample.mean() * cfg.field_points
    per_dim = kl_terms(out["mu"].float(), out["logvar"].float(), out["mu_cond"].float()).mean(dim=0)
    kl_cost = per_dim.clamp(min=cfg.kl_free_bits).sum()
    losses = {
        "loss": recon + kl_scale * cfg.kl_weight * kl_cost,
        "recon": recon,
        "kl": per_dim.sum(),
        "mse": error.mean(),
    }
    if cfg.shape_weight > 0:
        losses["shape"] = shape_error(batch["queries"], out["deformation"].float(), target, cfg.shape_floor)
        losses["loss"] = losses["loss"] + cfg.shape_weight * losses["shape"]
    return losses


def shape_error(
    queries: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, floor: float
) -> torch.Tensor:
    """The batch mean of each sample's squared error in the change of shape (both displacements' best rigid
    motions undone), over the target's mean squared change of shape plus `floor`: about 1 for a prediction
    that only travels right, 0 for the right shape."""
    target_shape = in_rest_frame(queries, queries + target)
    predicted_shape = in_rest_frame(queries, queries + predicted)
    change = (target_shape - queries).square().sum(dim=-1).mean(dim=1)
    return ((predicted_shape - target_shape).square().sum(dim=-1).mean(dim=1) / (change + floor)).mean()


def shape_change_distances(
    queries: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (B,): the mean distance between the predicted and target shapes, and the target's mean
    change of shape, each deformed query set (queries + displacement) with its best rigid motion from the
    queries undone. Travel and turning do not count: a prediction that only travels right has error = change.
    Over a set, 1 - sum(error) / sum(change) is the share of the change of shape a model reproduces (the
    batched form of eval.metrics.shape_change_error)."""
    target_shape = in_rest_frame(queries, queries + target)
    predicted_shape = in_rest_frame(queries, queries + predicted)
    error = (predicted_shape - target_shape).norm(dim=-1).mean(dim=1)
    return error, (target_shape - queries).norm(dim=-1).mean(dim=1)


def chamfer(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric Chamfer distances between point sets (B, N, 3), (B, M, 3): L1 (mean nearest distance)
    and L2 (mean squared nearest distance), each averaged over both directions; per batch element."""
    d = torch.cdist(
        a, b, compute_mode="donot_use_mm_for_euclid_dist"
    )  # exact: the mm shortcut is off by 1e-5
    ab, ba = d.min(dim=2).values, d.min(dim=1).values
    l1 = 0.5 * (ab.mean(dim=1) + ba.mean(dim=1))
    l2 = 0.5 * (ab.square().mean(dim=1) + ba.square().mean(dim=1))
    return l1, l2


@torch.no_grad()
def reconstruction_metrics(out: dict, batch: dict, k_drive: int) -> dict[str, torch.Tensor]:
    """Chamfer L1/L2 of the deformed queries, and the error of vertices driven by their K nearest queries'
    motion."""
    predicted = batch["queries"] + out["deformation"].float()
    l1, l2 = chamfer(predicted, batch["queries"] + batch["query_displacement"])
    vertex_pred = drive_vertices(batch["vertices"], batch["queries"], out["motion"].float(), k_drive)
    vertex_error = (vertex_pred - batch["vertex_displacement"]).norm(dim=-1).mean(dim=1)
    return {"chamfer_l1": l1.mean(), "chamfer_l2": l2.mean(), "vertex_error": vertex_error.mean()}
