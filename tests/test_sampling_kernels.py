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


def shard(rng: np.random.Generator):
    """Two sequences stacked as in a loader shard: 4 frames of 12 vertices / 20 faces, 3 of 9 / 14."""
    first, second = mesh(rng, 4, 12, 20), mesh(rng, 3, 9, 14)
    frames = [first[0] + np.float32(0.1) * np.arange(4, dtype=np.float32)[:, None, None], second[0]]
    vertices = np.concatenate([f.reshape(-1, 3) for f in frames])
    faces = np.concatenate([first[1], second[1]])
    rows = np.array([[0, 12, 0, 20], [48, 9, 20, 14]])  # first vertex row, V, first face row, F
    return frames, (first[1], second[1]), vertices, faces, rows


def test_pair_samples_match_numpy_on_a_shard_of_two_sequences():
    rng = np.random.default_rng(1)
    frames, mesh_faces, vertices, faces, rows = shard(rng)
    which, pairs = np.array([0, 1, 0]), np.array([[0, 3], [2, 1], [3, 1]])
    center, scale = rng.standard_normal((3, 3)).astype(np.float32), np.float32([1.7, 0.6, 2.0])
    linear = sampling.rotation_about_up(np.array([0.4, 2.0, -1.0])) * np.float32(1.1)
    n, m = 50, 7
    uniform = sampling.surface_draws(rng, 3, n)
    out = np.full((3, 6 * (n + m) + 5), np.nan, np.float32)
    sampling.pair_samples(
        vertices, faces, rows[which], pairs, center, scale, sampling.frame_maps(linear), uniform,
        rng.random((3, m)), out,
    )  # fmt: skip
    assert np.isnan(out[:, 6 * (n + m) :]).all()  # nothing beyond the geometry's blocks
    for k, s in enumerate(which):
        rest, target = sampling.normalise(frames[s][pairs[k]], center[k], scale[k]) @ linear[k].T
        face, bary = sampling.sample_surfaces(rest[None], mesh_faces[s], uniform[k : k + 1])
        on = [np.einsum("ni,nic->nc", bary[0], x[mesh_faces[s][face[0]]]) for x in (rest, target)]
        surface = out[k, : 6 * n].reshape(2, n, 3)
        np.testing.assert_allclose(surface[0], on[0], atol=1e-5)
        np.testing.assert_allclose(surface[1], on[1] - on[0], atol=1e-5)
        at_vertices = out[k, 6 * n : 6 * (n + m)].reshape(2, m, 3)
        chosen = [int(np.argmin(np.linalg.norm(rest - p, axis=1))) for p in at_vertices[0]]
        assert len(set(chosen)) == m  # distinct vertices
        np.testing.assert_allclose(at_vertices[0], rest[chosen], atol=1e-6)
        np.testing.assert_allclose(at_vertices[1], target[chosen] - rest[chosen], atol=1e-5)


def test_pair_samples_choose_vertices_uniformly_and_repeat_only_when_asked_for_more():
    rng = np.random.default_rng(3)
    rest = np.arange(30, dtype=np.float32).reshape(10, 3)  # vertex v sits at x = 3 v
    faces, rows, pairs = (
        np.array([[0, 1, 2]]),
        np.array([[0, 10, 0, 1]] * 4000),
        np.zeros((4000, 2), np.int64),
    )
    identity = sampling.frame_maps(np.tile(np.eye(3, dtype=np.float32), (4000, 1, 1)))

    def chosen(m: int, k: int) -> np.ndarray:
        out = np.empty((k, 6 * (1 + m)), np.float32)
        args = (
            np.zeros((k, 3), np.float32),
            np.ones(k, np.float32),
            identity[:k],
            np.zeros((k, 3, 1), np.float32),
        )
        sampling.pair_samples(rest, faces, rows[:k], pairs[:k], *args, rng.random((k, m)), out)
        return (out[:, 6 : 6 + 3 * m].reshape(k, m, 3)[..., 0] / 3).astype(int)

    index = chosen(4, 4000)
    assert all(len(set(row)) == 4 for row in index.tolist())
    np.testing.assert_allclose(np.bincount(index.ravel(), minlength=10) / index.size, 0.1, atol=0.01)
    np.testing.assert_allclose(np.bincount(index[:, -1], minlength=10) / len(index), 0.1, atol=0.02)
    repeats = chosen(12, 5)  # more than there are: independent picks
    assert repeats.shape == (5, 12) and repeats.min() >= 0 and repeats.max() <= 9


def test_frame_maps_undo_the_targets_rigid_motion_and_keep_its_deformation():
    rng = np.random.default_rng(4)
    rest = rng.standard_normal((40, 3))
    bent = rest + [0.0, 0.1, 0.0] * rest[:, :1] ** 2  # a deformation, with some rigid part of its own
    turn = sampling.rotation_about_up(np.array(0.9)).astype(np.float64)
    linear = sampling.rotation_about_up(np.array([0.3])) * np.float32(1.2)
    mapped = lambda maps, x: x @ maps[0, 1, :, :3].T + maps[0, 1, :, 3]  # noqa: E731
    rigid_only = sampling.frame_maps(linear, [(rest, rest @ turn.T + 1.0)])
    np.testing.assert_allclose(rigid_only[0, 0], np.concatenate([linear[0], np.zeros((3, 1))], axis=1))
    np.testing.assert_allclose(mapped(rigid_only, rest @ turn.T + 1.0), rest @ linear[0].T, atol=1e-5)
    # turned and carried far away: the same displacements as the bend in place, augmented like the rest
    travelled = bent @ turn.T + [3.0, -2.0, 0.5]
    far = mapped(sampling.frame_maps(linear, [(rest, travelled)]), travelled) - rest @ linear[0].T
    near = mapped(sampling.frame_maps(linear, [(rest, bent)]), bent) - rest @ linear[0].T
    np.testing.assert_allclose(far, near, atol=1e-5)
    assert np.abs(far).max() < np.abs(bent - rest).max() < 3.0 < np.abs(travelled - rest).max()
