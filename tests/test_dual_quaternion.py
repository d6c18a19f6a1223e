"""The dual-quaternion decoder head (paper s9.2): identity at zero, exact rigid motions, blending of rigid
parts at the vertices (DQB), and a short training run through `neurok train`'s code path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation
from torch.func import jacfwd

from neurok.data.sampling import vertex_dual_quaternions
from neurok.dynamics.from_model import latent_shape
from neurok.errors import ConfigError
from neurok.model import ModelConfig, NeuROK, drive_vertices
from neurok.model import dual_quaternion as dq
from neurok.model.checkpoint import load_model
from neurok.model.forward_mode import driven_with_tangents, dual_quaternions_with_tangents
from neurok.train.local import train
from test_loader_stores import write_store
from test_train import tiny_config

torch.set_num_threads(1)

F64 = torch.float64
DQ_TINY = ModelConfig(
    width=32,
    heads=4,
    tokens=8,
    latent_dim=4,
    encoder_depth=1,
    decoder_depth=1,
    decoder_output="dual_quaternion",
)


def rigid(rotvec, translation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rigid motion's unit quaternion (w, x, y, z), rotation matrix and translation, in float64."""
    rotation = Rotation.from_rotvec(rotvec)
    x, y, z, w = rotation.as_quat()
    quaternion = torch.tensor([w, x, y, z], dtype=F64)
    return quaternion, torch.tensor(rotation.as_matrix(), dtype=F64), torch.tensor(translation, dtype=F64)


def about_axis(angle: float, point: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The unit dual quaternion of a rotation by `angle` about the line through `point` along `direction`."""
    quaternion, matrix, _ = rigid((angle * direction / direction.norm()).numpy(), [0.0, 0.0, 0.0])
    return dq.from_rotation_translation(quaternion, point - matrix @ point)


def distance_to_axis(x: torch.Tensor, point: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    n = direction / direction.norm()
    offset = x - point
    return (offset - (offset @ n)[..., None] * n).norm(dim=-1)


def test_zero_head_output_is_the_identity():
    identity = dq.from_head(torch.zeros(5, 7))
    assert torch.equal(identity, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]).expand(5, 8))
    points = torch.rand(5, 3) - 0.5
    assert torch.equal(dq.apply(identity, points), points)

    model = NeuROK(DQ_TINY)  # the head's last layer starts at zero
    g = torch.Generator().manual_seed(0)
    batch = {
        "points": torch.rand(2, 64, 3, generator=g) - 0.5,
        "queries": torch.rand(2, 32, 3, generator=g) - 0.5,
    }
    batch["displacement"] = torch.zeros_like(batch["points"])
    out = model(batch)
    assert out["motion"].shape == (2, 32, 8)
    assert torch.equal(out["deformation"], torch.zeros(2, 32, 3))
    vertices = torch.rand(2, 10, 3, generator=g) - 0.5
    assert torch.equal(drive_vertices(vertices, batch["queries"], out["motion"], 8), torch.zeros(2, 10, 3))


def test_a_known_rigid_motion_is_reproduced_on_points():
    quaternion, matrix, translation = rigid([0.3, -1.1, 0.7], [0.2, -0.05, 0.4])
    points = torch.rand(100, 3, dtype=F64, generator=torch.Generator().manual_seed(1)) - 0.5
    expected = points @ matrix.T + translation
    motion = dq.from_rotation_translation(quaternion, translation)
    torch.testing.assert_close(dq.apply(motion, points), expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        dq.apply(-motion, points), expected, rtol=0, atol=1e-14
    )  # q and -q: one motion
    # the head's parametrisation reaches it: the quaternion's offset from the identity, and the translation
    raw = torch.cat([quaternion - torch.tensor([1.0, 0, 0, 0], dtype=F64), translation])
    torch.testing.assert_close(dq.from_head(raw), motion, rtol=0, atol=1e-15)
    # and it is the encoder's convention (data.sampling's Kabsch fit of the same motion on a mesh)
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.4)
    rest = np.asarray(mesh.vertices)
    fitted = vertex_dual_quaternions(rest, rest @ matrix.numpy().T + translation.numpy(), mesh.faces)
    sign = np.sign(fitted[:, :1] * quaternion[0].item())
    np.testing.assert_allclose(sign * fitted, motion.numpy()[None].repeat(len(rest), 0), atol=1e-5)


def test_blending_two_rigid_parts_gives_each_part_its_motion_and_a_screw_between():
    """Queries of part A (x < 0) turn 90 degrees about an axis, those of part B (x > 0) 30 degrees about the
    same axis (stored as -q, which blending must align). Vertices near one part move with it; a vertex
    halfway takes the 60-degree rotation and keeps its distance to the axis, where the mean of the two
    motions' results (linear blend skinning) pulls it toward the axis by cos(30 degrees)."""
    point, direction = torch.tensor([0.1, 0.2, -0.1], dtype=F64), torch.tensor([0.2, 0.3, 1.0], dtype=F64)
    part_a, part_b = about_axis(np.pi / 2, point, direction), -about_axis(np.pi / 6, point, direction)
    g = torch.Generator().manual_seed(2)
    spread = 0.02 * torch.randn(4, 3, dtype=F64, generator=g)
    queries = torch.cat([spread + torch.tensor([-0.4, 0, 0], dtype=F64), spread + torch.tensor([0.4, 0, 0])])
    motion = torch.cat([part_a.expand(4, 8), part_b.expand(4, 8)])[None]
    near = torch.tensor([[-0.42, 0.03, 0.01], [0.38, -0.02, 0.03]], dtype=F64)[None]
    moved = near + drive_vertices(near, queries[None], motion, k=4)
    torch.testing.assert_close(moved[0, 0], dq.apply(part_a, near[0, 0]), rtol=0, atol=1e-14)
    torch.testing.assert_close(moved[0, 1], dq.apply(part_b, near[0, 1]), rtol=0, atol=1e-14)

    halfway = torch.tensor([[[0.0, 0.25, 0.1]]], dtype=F64)
    blended = halfway + drive_vertices(halfway, queries[None], motion, k=8)  # all 8: equal weights
    screw = dq.apply(about_axis(np.pi / 3, point, direction), halfway)
    torch.testing.assert_close(blended, screw, rtol=0, atol=1e-14)
    radius = distance_to_axis(halfway, point, direction)
    torch.testing.assert_close(distance_to_axis(blended, point, direction), radius, rtol=0, atol=1e-14)
    linear = 0.5 * (dq.apply(part_a, halfway) + dq.apply(part_b, halfway))  # linear blend skinning
    assert distance_to_axis(linear, point, direction).item() < 0.9 * radius.item()


def test_hand_written_tangents_of_the_blend_match_jacfwd():
    """forward_mode's dual-quaternion construction and blending with tangents, against torch.func.jacfwd of
    dual_quaternion's, in float64, with neighbours of both quaternion signs (which blending aligns)."""
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(12, 7, dtype=F64, generator=g)  # offsets of order 1: some rotations exceed 180 degrees
    directions = torch.randn(3, 12, 7, dtype=F64, generator=g)
    nearest = torch.randint(0, 12, (20, 4), generator=g)
    vertices = torch.randn(20, 3, dtype=F64, generator=g)

    def driven(t: torch.Tensor) -> torch.Tensor:
        motion = dq.from_head(raw + torch.einsum("k,kqc->qc", t, directions))
        return dq.apply(dq.blend(motion[nearest]), vertices) - vertices

    motion = dual_quaternions_with_tangents(torch.cat([raw[None], directions]))
    neighbours = motion[:, nearest]
    assert (neighbours[0, ..., 0] < 0).any() and (neighbours[0, ..., 0] > 0).any()
    out = driven_with_tangents(neighbours, vertices)
    t0 = torch.zeros(3, dtype=F64)
    torch.testing.assert_close(out[0], driven(t0), rtol=0, atol=1e-14)
    torch.testing.assert_close(out[1:].permute(1, 2, 0), jacfwd(driven)(t0), rtol=1e-12, atol=1e-12)


def test_decoder_output_is_checked():
    with pytest.raises(ConfigError, match="model.decoder_output: 'quaternion' is not one of"):
        ModelConfig(decoder_output="quaternion")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("dq") / "s.zarr", (4, 4, 4, 4), splits={3: "val", 9: "val"})


def test_neurok_train_with_the_dual_quaternion_head(store, tmp_path, monkeypatch):
    """`neurok train ... model.decoder_output=dual_quaternion` end to end: training and validation run,
    and the checkpoint loads as a dual-quaternion model whose simulated object starts at its mesh. (That
    the head learns: tests/test_model.py::test_overfits_one_batch[dual_quaternion].)"""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = tiny_config(store, tmp_path, "model.decoder_output=dual_quaternion", "run_name=dq")
    result = train(cfg)
    assert result.global_step == 10 and np.isfinite(result.metrics["val/vertex_error"])
    model = load_model(result.last_checkpoint)
    assert model.cfg.decoder_output == "dual_quaternion" and model.decoder.head[-1].out_features == 7
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.4)
    rest = np.asarray(mesh.vertices, np.float32)
    shape = latent_shape(model, rest, mesh.faces, points=64)
    torch.testing.assert_close(shape.decode(shape.mu_cond), torch.from_numpy(rest), rtol=0, atol=1e-6)
