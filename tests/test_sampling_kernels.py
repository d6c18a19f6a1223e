"""The compiled sampling kernels against straightforward numpy on small meshes."""

from __future__ import annotations

import numpy as np

from neurok.data import sampling


def mesh(rng: np.random.Generator, n_meshes: int = 3, n_vertices: int = 12, n_faces: int = 20):
    """Random meshes (K, V, 3) sharing random faces, one of them without area (a repeated corner)."""
    faces = rng.integers(0, n_vertices, (n_faces, 3)).astype(np.int32)
    faces[5] = [2, 2, 7]
    return rng.standard_normal((n_meshes, n_vertices, 3)).astype(np.float32), faces


def test_surface_sampling_is_inverse_cdf_of_the_areas_and_uniform_barycentric():
    rng = np.random.default_rng(0)
    vertices, faces = mesh(rng)
    uniform = rng.random((3, 3, 5000), np.float32)
    face, bary = sampling.sample_surfaces(vertices, faces, uniform)
    for k in range(3):
        a, b, c = (vertices[k][faces[:, i]].astype(np.float64) for i in range(3))
        cdf = np.cumsum(np.linalg.norm(np.cross(b - a, c - a), axis=-1))
        expected = np.searchsorted(cdf / cdf[-1], uniform[k, 0], side="right")
        assert (face[k] == expected).mean() > 0.999  # only draws within rounding of a face boundary differ
    assert not (face == 5).any()  # never the face without area
    s, r2 = np.sqrt(uniform[:, 1]), uniform[:, 2]
    np.testing.assert_allclose(bary, np.stack([1 - s, s * (1 - r2), s * r2], axis=-1), atol=1e-6)


def test_surface_sampling_of_a_mesh_without_area_is_uniform_over_faces():
    faces = np.array([[0, 1, 2]] * 4)
    face, _ = sampling.sample_surfaces(np.zeros((1, 3, 3), np.float32), faces, np.full((1, 3, 4), 0.3))
    assert face.tolist() == [[1, 1, 1, 1]]
    face, _ = sampling.sample_surface(np.zeros((3, 3)), faces, 8000, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(face, minlength=4) / 8000, 0.25, atol=0.02)


def test_carrying_points_and_vertices_matches_numpy():
    rng = np.random.default_rng(1)
    rest, faces = mesh(rng)
    target = rest + rng.standard_normal(rest.shape).astype(np.float32)
    uniform = sampling.surface_draws(rng, 3, 50)
    face, bary = sampling.sample_surfaces(rest, faces, uniform)
    corners = faces[face]  # (K, n, 3)
    on = [np.einsum("kni,knic->knc", bary, m[np.arange(3)[:, None, None], corners]) for m in (rest, target)]
    carried = np.empty((3, 2, 50, 3), np.float32)
    sampling.carry_surface_points(rest, target, faces, uniform, carried)
    np.testing.assert_allclose(carried[:, 0], on[0], atol=1e-5)
    np.testing.assert_allclose(carried[:, 1], on[1] - on[0], atol=1e-5)
    np.testing.assert_allclose(sampling.interpolate(rest, faces, face, bary), on[0], atol=1e-5)
    index, rows = rng.integers(0, 12, (3, 7)), np.arange(3)[:, None]
    sampling.carry_vertices(rest, target, index, carried[:, :, :7])
    np.testing.assert_array_equal(carried[:, 0, :7], rest[rows, index])
    np.testing.assert_allclose(carried[:, 1, :7], target[rows, index] - rest[rows, index])


def test_normalised_pairs_matches_normalise_then_the_linear_map():
    rng = np.random.default_rng(2)
    frames = rng.standard_normal((5, 12, 3)).astype(np.float32)
    pairs = np.array([[0, 3], [4, 1]])
    center, scale = np.array([0.1, -0.2, 0.3], np.float32), np.float32(1.7)
    linear = sampling.rotation_about_up(np.array([0.4, 2.0])) * np.float32(1.1)
    both = sampling.normalised_pairs(frames, pairs, center, scale, linear)
    expected = sampling.normalise(frames[pairs], center, scale) @ linear[:, None].swapaxes(-1, -2)
    np.testing.assert_allclose(both, expected, atol=1e-5)


def test_choose_is_distinct_per_row_and_uniform():
    rng = np.random.default_rng(3)
    index = sampling.choose(10, rng.random((4000, 4)))
    assert all(len(set(row)) == 4 for row in index.tolist())
    np.testing.assert_allclose(np.bincount(index.ravel(), minlength=10) / index.size, 0.1, atol=0.01)
    np.testing.assert_allclose(np.bincount(index[:, -1], minlength=10) / len(index), 0.1, atol=0.02)
    repeats = sampling.choose(3, rng.random((5, 8)))  # more than there are: independent picks
    assert repeats.shape == (5, 8) and repeats.min() >= 0 and repeats.max() <= 2
