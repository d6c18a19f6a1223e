"""The model -> LatentShape adapter and the checkpoint loader. `tiny_checkpoint` is shared by the eval,
simulate and viewer tests."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch.func import jacfwd

from neurok.dynamics import Forcing, LatentShape, ReducedShape
from neurok.dynamics.from_model import latent_shape
from neurok.dynamics.mechanics import Physics, System
from neurok.dynamics.shape import jacobian
from neurok.errors import BadInputError
from neurok.model import ModelConfig, NeuROK, drive_vertices
from neurok.model.checkpoint import load_model

torch.set_num_threads(1)

TINY = ModelConfig(width=32, heads=2, tokens=4, latent_dim=4, encoder_depth=1, decoder_depth=1, frequencies=4)


OUTPUTS = ("displacement", "dual_quaternion")


def tiny_model(seed: int = 0, decoder_output: str = "displacement") -> NeuROK:
    """An untrained tiny CVAE whose decoder moves the shape (its last layer starts at zero otherwise)."""
    torch.manual_seed(seed)
    model = NeuROK(replace(TINY, decoder_output=decoder_output))
    torch.nn.init.normal_(model.decoder.head[-1].weight, std=0.5)
    return model.eval().requires_grad_(False)


def tiny_checkpoint(path: Path, seed: int = 0, decoder_output: str = "displacement") -> Path:
    """A checkpoint laid out as NeurokModule writes it (hyper-parameters as plain dicts, `model.` weights)."""
    model = tiny_model(seed, decoder_output)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hyper = {"model": asdict(model.cfg), "optim": {}, "max_steps": 1}
    torch.save({"hyper_parameters": hyper, "state_dict": state}, path)
    return path


def sphere(subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.45)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)


@pytest.mark.parametrize("decoder_output", OUTPUTS)
@pytest.mark.parametrize("max_queries", [1000, 60])  # the vertices themselves, or fewer surface queries
def test_adapter_decodes_as_the_model_drives_vertices(max_queries, decoder_output):
    model = tiny_model(decoder_output=decoder_output)
    rest, faces = sphere()
    shape = latent_shape(model, rest, faces, points=128, max_queries=max_queries)
    z = shape.mu_cond + 0.5 * torch.randn(shape.latent_dims)
    queries = shape.context.features.points[None]
    vertices = torch.from_numpy(rest)[None]

    def driven(z: torch.Tensor) -> torch.Tensor:
        tokens = shape.context.shape_tokens[None]
        features = model.decoder.features(queries)
        motion = model.decoder.motion(z.view(1, TINY.tokens, TINY.latent_dim), tokens, features)
        return drive_vertices(vertices, queries, motion, TINY.k_drive)[0]

    # the deformation is measured from what the decoder makes of M0 at the prior mean, so the rest state
    # is the input mesh exactly (issue 15: start where the user's mesh is)
    assert driven(shape.mu_cond).abs().max() > 1e-2
    torch.testing.assert_close(shape.decode(z), vertices[0] + driven(z) - driven(shape.mu_cond))
    torch.testing.assert_close(shape.decode(shape.mu_cond), vertices[0], rtol=0, atol=1e-6)
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


@pytest.mark.parametrize("decoder_output", OUTPUTS)
@pytest.mark.parametrize("max_queries", [1000, 60])
def test_linearized_adapter_matches_jacfwd(max_queries, decoder_output):
    """The dynamics' Jacobian (the adapter's hand-written forward mode, then for the dual-quaternion head
    a JVP of the blending) equals jacfwd of its decode, for one object and for a stack of two under the
    System's vmap."""
    model = tiny_model(decoder_output=decoder_output)
    rest, faces = sphere(1)
    shapes = [latent_shape(model, r, faces, points=64, max_queries=max_queries) for r in (rest, rest * 0.8)]
    basis = torch.linalg.qr(
        torch.randn(shapes[0].latent_dims, 3, generator=torch.Generator().manual_seed(0))
    )[0].T
    q = torch.tensor([0.3, -0.2, 0.5])
    one = ReducedShape(shapes[0], basis)
    x, J = one.jacobian_fn(one.tensors)(q)
    x_ref, J_ref = jacobian(one.position_fn(one.tensors), q)
    assert J.shape == (len(rest), 3, 3) and J_ref.abs().max() > 1e-2
    torch.testing.assert_close(x, x_ref)
    torch.testing.assert_close(J, J_ref, rtol=1e-4, atol=1e-5)

    both = ReducedShape(LatentShape.stack(shapes), torch.stack([basis, basis]))
    physics = Physics(1.0, 0.0, torch.zeros(3), 1e-6)
    forcing = Forcing.stack([Forcing.build(len(rest))] * 2)
    _, J_both = System(both, physics, forcing).jacobian(torch.stack([q, -q]))
    torch.testing.assert_close(J_both[0], J)
    second = ReducedShape(shapes[1], basis)
    torch.testing.assert_close(
        J_both[1], jacobian(second.position_fn(second.tensors), -q)[1], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("decoder_output", OUTPUTS)
def test_checkpoint_loads_into_an_eval_model(tmp_path, decoder_output):
    path = tiny_checkpoint(tmp_path / "m.ckpt", decoder_output=decoder_output)
    model = load_model(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.cfg.decoder_output == decoder_output
    expected = tiny_model(decoder_output=decoder_output).state_dict().values()
    for x, y in zip(model.state_dict().values(), expected, strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(BadInputError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    torch.save({"something": 1}, tmp_path / "other.ckpt")
    with pytest.raises(BadInputError, match="not a NeuROK training checkpoint"):
        load_model(tmp_path / "other.ckpt")
