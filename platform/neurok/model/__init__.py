"""The NeuROK conditional VAE: Perceiver-style encoders and a decoder of per-point deformation."""

from neurok.model.config import ModelConfig
from neurok.model.cvae import NeuROK, drive_vertices
from neurok.model.losses import (
    chamfer,
    cvae_loss,
    kl_divergence,
    reconstruction_metrics,
    shape_change_distances,
)

__all__ = [
    "ModelConfig",
    "NeuROK",
    "chamfer",
    "cvae_loss",
    "drive_vertices",
    "kl_divergence",
    "reconstruction_metrics",
    "shape_change_distances",
]
