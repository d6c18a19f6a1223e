"""The LightningModule every launcher trains: the CVAE loss, validation metrics and latent diagnostics (on
rank 0's first validation batch), AdamW with warmup + cosine, and the global RNG state in checkpoints (the
posterior sample is the only random draw of a step)."""

from __future__ import annotations

import math
from dataclasses import asdict

import lightning.pytorch as pl
import torch

from neurok.data.schema import OBJECT_TYPES
from neurok.model import ModelConfig, NeuROK, cvae_loss, reconstruction_metrics, shape_change_distances
from neurok.model.diagnostics import latent_diagnostics
from neurok.model.losses import kl_ramp
from neurok.train.config import OptimConfig


def warmup_cosine(step: int, warmup: int, total: int, final: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine down to `final` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NeurokModule(pl.LightningModule):
    def __init__(self, model: dict, optim: dict, max_steps: int):
        super().__init__()
        self.save_hyperparameters(logger=False)  # plain dicts: checkpoints load with weights_only=True
        self.model = NeuROK(ModelConfig(**model))
        self.optim = OptimConfig(**optim)
        self.max_steps = max_steps
        # validation: summed shape error and change per object type (val/shape_share)
        self.shape_sums = torch.zeros(len(OBJECT_TYPES), 2)

    @classmethod
    def from_configs(cls, model: ModelConfig, optim: OptimConfig, max_steps: int) -> NeurokModule:
        return cls(asdict(model), asdict(optim), max_steps)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg = self.model.cfg
        ramp = kl_ramp(self.global_step, cfg.kl_warmup_steps)
        losses = cvae_loss(self.model(batch, noise=ramp), batch, cfg, kl_scale=ramp)
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log("train/loss_epoch", losses["loss"], on_step=False, on_epoch=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch, noise=0.0)  # the posterior mean: deterministic reconstruction
        cfg = self.model.cfg
        values = cvae_loss(out, batch, cfg) | reconstruction_metrics(out, batch, cfg.k_drive)
        size = batch["points"].shape[0]
        error, change = shape_change_distances(
            batch["queries"], out["deformation"].float(), batch["query_displacement"]
        )
        self.shape_sums = self.shape_sums.to(error.device).index_add(
            0, batch["object_type"], torch.stack([error, change], dim=1).to(self.shape_sums.dtype)
        )
        self.log("val/loss", values.pop("loss"), prog_bar=True, sync_dist=True, batch_size=size)
        self.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=True, batch_size=size)
        if batch_idx == 0 and self.trainer.is_global_zero:  # the first batch is enough to see latent use
            diagnostics = latent_diagnostics(self.model, batch, out).scalars()
            self.log_dict(
                {f"latent/{k}": v for k, v in diagnostics.items()}, rank_zero_only=True, batch_size=size
            )

    def on_validation_epoch_end(self) -> None:
        """val/shape_share: 1 - summed shape error / summed change of shape over the whole validation set
        (all ranks): the share of the change of shape the posterior mean reproduces, which travel (most of
        a falling object's displacement, and of val/mse) cannot fake. val/shape_share/<type> is the same
        per object type, since the multibody chains' large changes dominate the overall share."""
        sums = self.all_gather(self.shape_sums).reshape(-1, len(OBJECT_TYPES), 2).sum(dim=0)
        self.shape_sums = torch.zeros_like(self.shape_sums)
        error, change = sums.sum(dim=0)
        if change > 0:
            self.log("val/shape_share", 1.0 - error / change)  # the same on every rank
        for name, (error, change) in zip(OBJECT_TYPES, sums, strict=True):
            if change > 0:
                self.log(f"val/shape_share/{name}", 1.0 - error / change)

    def configure_optimizers(self):
        named = list(self.named_parameters())
        decay = [p for name, p in named if p.ndim >= 2 and not name.endswith("tokens")]
        rest = [p for name, p in named if not (p.ndim >= 2 and not name.endswith("tokens"))]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.optim.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step, self.optim.warmup_steps, self.max_steps, self.optim.final_lr_ratio
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
