"""Reading training checkpoints without executing code, and turning one into a model for inference.

Shared by training (resume), evaluation, `neurok simulate` and the registered simulator package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neurok.errors import BadInputError
from neurok.model.config import ModelConfig
from neurok.model.cvae import NeuROK

MODEL_PREFIX = "model."  # NeurokModule keeps the CVAE as `self.model`


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded without executing code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refuses anything but tensors and plain containers
        raise BadInputError(f"{path}: not a readable NeuROK checkpoint ({exc})") from None


def training_run(path: str | Path) -> dict | None:
    """{"run_id", "tracking_uri"}: the MLflow run that wrote a training checkpoint, if it recorded one."""
    recorded = read_checkpoint(path).get("mlflow")
    return recorded if isinstance(recorded, dict) and recorded.get("run_id") else None


def load_model(path: str | Path) -> NeuROK:
    """The CVAE of a training checkpoint, in eval mode with frozen parameters (inference and torch.func)."""
    ckpt = read_checkpoint(path)
    try:
        cfg = ModelConfig(**ckpt["hyper_parameters"]["model"])
        weights = ckpt["state_dict"]
        state = {k.removeprefix(MODEL_PREFIX): v for k, v in weights.items() if k.startswith(MODEL_PREFIX)}
    except (KeyError, TypeError) as exc:
        raise BadInputError(f"{path}: not a NeuROK training checkpoint (missing {exc})") from None
    model = NeuROK(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or mis-sized weights: the first lines say which
        detail = " ".join(str(exc).split("\n")[:2]).strip()
        raise BadInputError(f"{path}: its weights do not fit its model config ({detail})") from None
    model.eval()
    model.requires_grad_(False)
    return model


def slim_checkpoint(checkpoint: dict) -> dict:
    """The model's part of a training checkpoint (no optimiser state), still readable by load_model."""
    return {
        "hyper_parameters": {"model": dict(checkpoint["hyper_parameters"]["model"])},
        "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)},
    }
