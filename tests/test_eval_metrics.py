"""Evaluation metrics and IK baselines against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from neurok.eval import metrics
from neurok.eval.baselines import DeformationBank, NearestBaseline, PCABaseline, idw_matrix, rigid_fit

torch.set_num_threads(1)


def test_chamfer_by_hand():
    a = torch.tensor([[0.0, 0, 0], [2, 0, 0]])
    b = torch.tensor([[0.0, 0, 0]])
    # a->b: 0 and 2 (mean 1); b->a: 0. L1 = (1 + 0) / 2; L2 = ((0 + 4) / 2 + 0) / 2
    assert metrics.chamfer_l1_l2(a, b) == pytest.approx((0.5, 1.0))


def test_fscore_by_hand():
    predicted = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    target = torch.tensor([[0.0, 0, 0], [0.005, 0, 0]])
    # precision 1/2 (one predicted point is near the target), recall 1: F = 2 (1/2)(1) / (3/2)
    assert metrics.fscore(predicted, target, 0.01) == pytest.approx(2 / 3)
    assert metrics.fscore(predicted + 5, target, 0.01) == 0.0


def test_vertex_error_by_hand():
    assert metrics.vertex_error(np.zeros((2, 3)), np.array([[3.0, 4, 0], [0, 0, 1]])) == pytest.approx(3.0)


def test_winding_number_of_a_box():
    box = trimesh.creation.box(extents=(1, 1, 1))
    points = np.random.default_rng(0).uniform(-0.7, 0.7, (500, 3))
    inside = (np.abs(points) < 0.5).all(axis=1)
    w = metrics.winding_number(points, np.asarray(box.vertices), np.asarray(box.faces))
    np.testing.assert_allclose(w, inside.astype(float), atol=1e-5)  # float32; only compared with 1/2


def test_iou_of_shifted_unit_boxes_on_one_grid():
    box = trimesh.creation.box(extents=(1, 1, 1))
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    sampler = metrics.SurfaceSampler(v, f, 4000)
    moved = {"half": v + [0.5, 0, 0], "same": v, "apart": v + [3, 0, 0]}
    fits = {name: (x, sampler(x).numpy()) for name, x in moved.items()}
    ious = metrics.volumetric_ious(fits, v, sampler(v).numpy(), f, grid=64)
    # overlap 0.5 x 1 x 1, union 1.5 x 1 x 1; surface voxels make the grid estimate slightly larger
    assert ious["half"] == pytest.approx(1 / 3, abs=0.03)
    assert ious["same"] == 1.0
    assert ious["apart"] == 0.0


def test_surface_samples_follow_the_mesh():
    mesh = trimesh.creation.icosphere(subdivisions=1)
    v, f = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)
    sampler = metrics.SurfaceSampler(v, f, 256, seed=3)
    A = np.array([[1.0, 0.2, 0], [0, 2, 0], [0, 0, 0.5]], np.float32)
    # barycentric samples commute with an affine map of the vertices
    torch.testing.assert_close(sampler(v @ A.T), sampler(v) @ torch.from_numpy(A).T)


def _sphere_family():
    rest = np.asarray(trimesh.creation.icosphere(subdivisions=1, radius=0.4).vertices)
    x, y, z = rest.T
    fields = np.stack([np.stack([y**2, 0 * y, 0 * y], 1), np.stack([0 * x, 0.3 * x, z * x], 1)])
    return rest, fields


def test_idw_is_exact_on_its_source_points():
    rest, fields = _sphere_family()
    np.testing.assert_allclose(idw_matrix(rest, rest) @ fields[0], fields[0], atol=1e-12)


def test_pca_baseline_is_exact_inside_its_subspace():
    rest, fields = _sphere_family()
    coefficients = np.random.default_rng(0).normal(size=(20, 2))
    train = np.einsum("nk,kvc->nvc", coefficients, fields)
    pca = PCABaseline(DeformationBank.fit([(rest, train)], anchors=rest), dims=2)
    target = rest + 0.7 * fields[0] - 1.3 * fields[1]
    np.testing.assert_allclose(pca.project(rest, target - rest), target, atol=1e-8)
    outside = rest + 0.5 * np.stack([rest[:, 2] ** 3, 0 * rest[:, 0], 0 * rest[:, 0]], 1)
    assert np.abs(pca.project(rest, outside - rest) - outside).max() > 1e-3


def test_nearest_neighbour_retrieves_the_training_deformation():
    rest, fields = _sphere_family()
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.4)
    train = np.stack([0.2 * fields[0], -0.3 * fields[1], 0.1 * (fields[0] + fields[1])])
    nearest = NearestBaseline(DeformationBank.fit([(rest, train)], anchors=rest))
    sampler = metrics.SurfaceSampler(rest, np.asarray(mesh.faces), 512)
    target = rest + train[1]
    np.testing.assert_allclose(nearest.fit(rest, sampler(target)), target, atol=1e-5)


def test_pca_on_a_rigid_frame_follows_a_shifted_deformation_the_plain_subspace_cannot():
    rest, fields = _sphere_family()
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.4)
    coefficients = np.random.default_rng(0).normal(size=(20, 2))
    bank = DeformationBank.fit([(rest, np.einsum("nk,kvc->nvc", coefficients, fields))], anchors=rest)
    target = rest + 0.7 * fields[0] + np.array([0.15, -0.1, 0.2])  # deformed, then moved
    sampler = metrics.SurfaceSampler(rest, np.asarray(mesh.faces), 1024)
    points = sampler(target)
    plain = PCABaseline(bank, dims=2).fit(rest, points, iterations=200)
    framed = PCABaseline(bank, dims=2, frame=True).fit(rest, points, iterations=200)
    assert np.linalg.norm(framed.mean(axis=0) - target.mean(axis=0)) < 0.03
    assert np.linalg.norm(plain.mean(axis=0) - target.mean(axis=0)) > 0.2
    # not to 0: on a near-round shape the frame's turn trades off against the deformation (0.024 here)
    l1_framed, l1_plain = (
        metrics.chamfer_l1_l2(sampler(framed), points)[0],
        metrics.chamfer_l1_l2(sampler(plain), points)[0],
    )
    assert l1_framed < 0.3 * l1_plain


def test_rigid_frame_alone_fits_a_moved_shape_but_not_a_deformed_one():
    mesh = trimesh.creation.box(extents=(0.6, 0.3, 0.4)).subdivide()  # not round: the turn is observable
    rest = np.asarray(mesh.vertices, np.float64)
    turn = trimesh.transformations.rotation_matrix(0.3, [0.0, 1.0, 0.0])[:3, :3]
    moved = rest @ turn.T + np.array([0.1, -0.05, 0.08])
    squashed = rest * np.array([1.0, 0.5, 1.3])
    sampler = metrics.SurfaceSampler(rest, np.asarray(mesh.faces), 1024)
    l1 = {
        name: metrics.chamfer_l1_l2(
            sampler(rigid_fit(rest, sampler(target), iterations=300)), sampler(target)
        )[0]
        for name, target in (("moved", moved), ("squashed", squashed))
    }
    assert l1["moved"] < 0.01 and l1["squashed"] > 3 * l1["moved"], l1


def test_shape_change_error_counts_the_change_of_shape_not_the_travel():
    rest = np.asarray(trimesh.creation.box(extents=(0.6, 0.3, 0.4)).subdivide().vertices, np.float64)
    turn = trimesh.transformations.rotation_matrix(0.4, [0.0, 0.0, 1.0])[:3, :3]
    squashed = rest * np.array([1.0, 0.6, 1.2])
    target = squashed @ turn.T + [0.0, -2.0, 0.5]  # squashed, then fallen two sizes and turned
    noise = np.random.default_rng(0).normal(scale=0.1, size=rest.shape)
    error = lambda predicted: metrics.shape_change_error(rest, target, predicted)  # noqa: E731
    change = np.linalg.norm(squashed - rest, axis=-1).mean()  # the squash is already about the centre
    assert error(squashed + [3.0, 0.0, 0.0]) == pytest.approx(
        (0.0, change), abs=1e-9
    )  # right shape, anywhere
    assert error(rest @ turn.T + [0.0, -2.0, 0.5]) == pytest.approx((change, change), rel=1e-6)  # travel only
    assert error(rest + 0.5 * (squashed - rest))[0] == pytest.approx(0.5 * change, rel=0.1)
    assert error(rest + noise)[0] > change  # a shape change that is noise is worse than none


def test_generative_scores_tell_a_faithful_a_distant_and_a_collapsed_sampler_apart():
    rng = np.random.default_rng(0)
    references = torch.from_numpy(rng.normal(size=(8, 64, 3)) * np.linspace(0.2, 1.5, 8)[:, None, None])
    same = metrics.generative_scores(references.clone(), references, pairs=7)
    assert same["mmd"] < 1e-6 and same["coverage"] == 1.0
    distant = metrics.generative_scores(references + 10.0, references)
    assert distant["nna"] == 1.0 and distant["mmd"] > 9.0
    collapsed = metrics.generative_scores(references[:1].expand(8, -1, -1), references)
    assert collapsed["coverage"] == 1 / 8
