"""The model -> LatentShape adapter and the checkpoint loader. `tiny_checkpoint` is shared by the eval,
simulate and viewer tests."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch.func import jacfwd

from neurok.dynamics import LatentShape
from neurok.dynamics.from_model import latent_shape
from neurok.errors import BadInputError
from neurok.model import ModelConfig, NeuROK, drive_vertices
from neurok.train.checkpoint import load_model

torch.set_num_threads(1)

TINY = ModelConfig(width=32, heads=2, tokens=4, latent_dim=4, encoder_depth=1, decoder_depth=1, frequencies=4)


def tiny_model(seed: int = 0) -> NeuROK:
    """An untrained tiny CVAE whose decoder moves the shape (its last layer starts at zero otherwise)."""
    torch.manual_seed(seed)
    model = NeuROK(TINY)
    torch.nn.init.normal_(model.decoder.head[-1].weight, std=0.5)
    return model.eval().requires_grad_(False)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint laid out as NeurokModule writes it (hyper-parameters as plain dicts, `model.` weights)."""
    model = tiny_model(seed)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"hyper_parameters": {"model": asdict(TINY), "optim": {}, "max_steps": 1}, "state_dict": state}, path
    )
    return path


def sphere(subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.45)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)


@pytest.mark.parametrize("max_queries", [1000, 60])  # the vertices themselves, or fewer surface queries
def test_adapter_decodes_as_the_model_drives_vertices(max_queries):
    model = tiny_model()
    rest, faces = sphere()
    shape = latent_shape(model, rest, faces, points=128, max_queries=max_queries)
    z = shape.mu_cond + 0.5 * torch.randn(shape.latent_dims)
    queries = shape.context.queries[None]
    deformation = model.decode(
        z.view(1, TINY.tokens, TINY.latent_dim), shape.context.shape_tokens[None], queries
    )
    vertices = torch.from_numpy(rest)[None]
    expected = vertices + drive_vertices(vertices, queries, deformation, TINY.k_drive)
    torch.testing.assert_close(shape.decode(z), expected[0])
    assert shape.mu_cond.shape == (TINY.tokens * TINY.latent_dim,)
    assert shape.masses.sum() == pytest.approx(1.0)


def test_adapter_is_differentiable_forward_mode_and_stackable():
    model = tiny_model()
    rest, faces = sphere(1)
    a = latent_shape(model, rest, faces, points=64)
    b = latent_shape(model, rest * 0.8, faces, points=64)
    J = jacfwd(a.decode)(a.mu_cond)
    assert J.shape == (len(rest), 3, a.latent_dims) and J.abs().sum() > 0
    stacked = LatentShape.stack([a, b])
    torch.testing.assert_close(stacked[1].decode(b.mu_cond), b.decode(b.mu_cond))


def test_checkpoint_loads_into_an_eval_model(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.ckpt")
    model = load_model(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for x, y in zip(model.state_dict().values(), tiny_model().state_dict().values(), strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(BadInputError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    torch.save({"something": 1}, tmp_path / "other.ckpt")
    with pytest.raises(BadInputError, match="not a NeuROK training checkpoint"):
        load_model(tmp_path / "other.ckpt")
