"""The WebDataset loader: batch contents, equal batches per rank, determinism, resume, correspondence."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import trimesh

from neurok.data import sampling
from neurok.data.loader import (
    AugmentConfig,
    FramePairDataModule,
    LoaderConfig,
    _check_shared_memory,
    make_loader,
)
from neurok.data.store import Store
from neurok.errors import BadInputError, ConfigError
from neurok.geometry import without_rigid_motion
from test_loader_stores import write_store

torch.set_num_threads(1)

SMALL = dict(batch_size=4, points=48, queries=32, vertices=16, shuffle_buffer=32, num_workers=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Six uneven loader shards; sequences 3 and 9 are validation objects."""
    path = tmp_path_factory.mktemp("loader") / "s.zarr"
    return write_store(path, (5, 1, 3, 1, 2, 4), splits={3: "val", 9: "val"})


def config(store: str, **kw) -> LoaderConfig:
    return LoaderConfig(store=store, **(SMALL | kw))


def keys(batches: list[dict]) -> list[tuple]:
    """What identifies a batch: its sequences, frame pairs and first sampled point."""
    return [(b["sequence"].tolist(), b["frames"].tolist(), b["points"][:, 0].tolist()) for b in batches]


def test_batch_shapes_and_dtypes(store):
    batch = next(iter(make_loader(config("file://" + store), dual_quaternion=True)))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
    f32 = torch.float32
    assert shapes["points"] == ((4, 48, 3), f32) and shapes["displacement"] == ((4, 48, 3), f32)
    assert shapes["queries"] == ((4, 32, 3), f32) and shapes["query_displacement"] == ((4, 32, 3), f32)
    assert shapes["vertices"] == ((4, 16, 3), f32) and shapes["vertex_displacement"] == ((4, 16, 3), f32)
    assert shapes["dual_quaternion"] == ((4, 48, 8), f32)
    assert shapes["conditions"] == ((4, 27), f32)
    assert shapes["category"] == ((4,), torch.int64) and shapes["frames"] == ((4, 2), torch.int64)
    assert batch["points"].abs().max() < 0.5 * 1.2 * 3**0.5 + 1e-4  # normalised, at most scaled by 1.2
    unit = batch["dual_quaternion"][..., :4].norm(dim=-1)
    assert torch.allclose(unit, torch.ones_like(unit), atol=1e-5)


def test_equal_batches_on_every_rank_with_uneven_shards(store):
    cfg = config(store, pairs_per_sequence=3)
    loaders = [make_loader(cfg, rank=r, world=2) for r in (0, 1)]
    # 14 train sequences x 3 pairs / (2 ranks x 4 per batch) -> 5 batches each, however uneven their shards
    assert [len(lo) for lo in loaders] == [5, 5]
    for epoch in range(3):
        got = [list(lo) for lo in loaders]
        assert [len(g) for g in got] == [5, 5], epoch
        seqs = [{int(s) for b in g for s in b["sequence"]} for g in got]
        assert not seqs[0] & seqs[1]  # split by node: the ranks read disjoint shards


def test_too_few_shards_is_an_error_at_start(store):
    with pytest.raises(BadInputError, match="fewer than ranks x workers"):
        make_loader(config(store, num_workers=2), rank=0, world=4)  # 6 train shards < 4 x 2


def test_prefetch_and_shared_memory_limits_are_clear_errors(store):
    with pytest.raises(BadInputError, match="data.prefetch=0"):
        make_loader(config(store, prefetch=0))
    if os.path.isdir("/dev/shm"):  # a ring /dev/shm cannot hold would crash the worker with SIGBUS
        with pytest.raises(BadInputError, match=r"need 953674316 MiB of shared memory \(18 batches"):
            _check_shared_memory(10**15, 18)


def test_order_is_a_pure_function_of_seed_epoch_and_rank(store):
    first, again = make_loader(config(store)), make_loader(config(store))
    epoch0 = keys(list(first))
    assert keys(list(again)) == epoch0
    assert keys(list(first)) != epoch0  # the next epoch reshuffles
    assert keys(list(make_loader(config(store, seed=1)))) != epoch0
    assert keys(list(make_loader(config(store), rank=1, world=2))) != keys(
        list(make_loader(config(store), world=2))
    )


def test_resume_continues_with_unseen_batches_across_workers(store):
    """Two forkserver workers: interrupt after 3 batches (odd: worker 1 is next), resume in a new loader."""
    cfg = config("file://" + store, num_workers=2)
    reference = make_loader(cfg)
    n = len(reference)
    full = keys(list(reference)) + keys(list(reference))[:2]  # epoch 0, then 2 batches of epoch 1
    assert keys(list(make_loader(cfg))) == full[:n]  # determinism with worker processes

    interrupted = make_loader(cfg)
    it = iter(interrupted)
    seen = keys([next(it) for _ in range(3)])
    state = interrupted.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 3
    resumed = make_loader(cfg)
    resumed.load_state_dict(state)
    rest = keys(list(resumed))
    assert seen + rest == full[:n]
    assert keys(list(resumed))[:2] == full[n:]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory is listed in /dev/shm")
def test_spawned_workers_match_and_leave_no_shared_memory(store):
    """Worker batches cross in shared-memory rings (BatchRing), unlinked when an epoch ends or stops."""
    spawned = iter(make_loader(config("file://" + store, num_workers=2, start_method="spawn")))
    first = next(spawned)
    spawned.close()  # the other worker may have made its ring, never read
    assert keys([first]) == keys(list(make_loader(config("file://" + store, num_workers=2))))[:1]
    assert not [name for name in os.listdir("/dev/shm") if name.startswith("neurok-")]


def test_point_correspondence_with_the_target_frame(store):
    cfg = config(store, augment=AugmentConfig(rotate=False, scale=[1.0, 1.0]))
    batch = next(iter(make_loader(cfg)))
    st = Store(store)
    for b in range(2):
        s, (i, j) = int(batch["sequence"][b]), batch["frames"][b].tolist()
        seq = st.sequence(s)
        rest, target = sampling.normalise(seq.frames[[i, j]], st.norm_center[s], st.norm_scale[s])
        points = batch["points"][b].numpy()
        # brute force: the face each point lies on and its barycentric coordinates there
        tri = rest[seq.faces]
        n_p, n_f = len(points), len(tri)
        bary = trimesh.triangles.points_to_barycentric(
            np.repeat(tri[None], n_p, 0).reshape(-1, 3, 3), np.repeat(points, n_f, 0)
        ).reshape(n_p, n_f, 3)
        on_face = np.einsum("pfk,fkc->pfc", bary, tri)
        inside = (bary > -1e-4).all(-1) & (np.linalg.norm(on_face - points[:, None], axis=-1) < 1e-5)
        assert inside.any(axis=1).all()
        face = inside.argmax(axis=1)
        expected = np.einsum("pk,pkc->pc", bary[np.arange(n_p), face], target[seq.faces[face]])
        np.testing.assert_allclose(points + batch["displacement"][b].numpy(), expected, atol=1e-5)


def test_removing_rigid_motion_leaves_each_pairs_deformation(store):
    cfg = config(store, augment=AugmentConfig(rotate=False, scale=[1.0, 1.0]))
    plain, aligned = (next(iter(make_loader(cfg, remove_rigid=remove))) for remove in (False, True))
    assert torch.equal(plain["frames"], aligned["frames"]) and torch.equal(plain["points"], aligned["points"])
    st = Store(store)
    for b in range(len(aligned["points"])):
        s, (i, j) = int(aligned["sequence"][b]), aligned["frames"][b].tolist()
        seq = st.sequence(s)
        rest, target = sampling.normalise(seq.frames[[i, j]], st.norm_center[s], st.norm_scale[s])
        vertices = aligned["vertices"][b].numpy()
        chosen = np.linalg.norm(vertices[:, None] - rest[None], axis=-1).argmin(axis=1)
        expected = without_rigid_motion(rest, target)[chosen] - rest[chosen]
        np.testing.assert_allclose(aligned["vertex_displacement"][b].numpy(), expected, atol=1e-5)
    assert aligned["displacement"].abs().mean() < plain["displacement"].abs().mean()  # less than all motion


def test_augmentation_is_a_rotation_about_up_and_a_scale(store):
    plain = config(store, augment=AugmentConfig(rotate=False, scale=[1.0, 1.0]))
    aug = dataclasses.replace(plain, augment=AugmentConfig(rotate=True, scale=[0.8, 1.2], frame_order=True))
    a, b = next(iter(make_loader(plain))), next(iter(make_loader(aug)))
    assert torch.equal(a["sequence"], b["sequence"]) and torch.equal(a["frames"], b["frames"])
    for k in range(len(a["points"])):
        p, q = a["queries"][k].double(), b["queries"][k].double()
        scale = q.norm(dim=-1) / p.norm(dim=-1)
        assert 0.8 <= scale.mean() <= 1.2 and scale.std() < 1e-4
        torch.testing.assert_close(q[:, 1], scale.mean() * p[:, 1], atol=1e-5, rtol=1e-4)  # y is the axis
        assert not torch.allclose(q[:, 0], scale.mean() * p[:, 0], atol=1e-3)


def test_memory_url_store():
    path = write_store("memory://loader-test/s.zarr", (2, 2), splits={1: "val"})
    batches = list(make_loader(config(path)))
    assert len(batches) == 3 * 8 // 4 and all(b["points"].shape == (4, 48, 3) for b in batches)


def test_datamodule_serves_splits_by_object(store):
    dm = FramePairDataModule(config(store))
    val = {int(s) for b in dm.val_dataloader() for s in b["sequence"]}
    train = {int(s) for b in dm.train_dataloader() for s in b["sequence"]}
    assert val == {3, 9} and not train & val
    assert dm.test_dataloader() == []


def test_vertex_dual_quaternions_of_a_rigid_motion():
    mesh = trimesh.creation.icosphere(subdivisions=1)
    rest = np.asarray(mesh.vertices, np.float32)
    angle, shift = 0.7, np.array([0.1, -0.2, 0.3], np.float32)
    moved = rest @ sampling.rotation_about_up(angle).T + shift
    dq = sampling.vertex_dual_quaternions(rest, moved, np.asarray(mesh.faces))
    real = np.array([np.cos(angle / 2), 0, np.sin(angle / 2), 0])
    np.testing.assert_allclose(dq[:, :4], np.tile(real, (len(rest), 1)), atol=1e-5)
    # translation back from the dual part: t = 2 * dual * conj(real)
    t = 2 * sampling._quaternion_product(dq[:, 4:], dq[:, :4] * np.array([1, -1, -1, -1]))
    np.testing.assert_allclose(t[:, 1:], np.tile(shift, (len(rest), 1)), atol=1e-5)


def test_surface_samples_are_uniform_by_area_on_each_mesh():
    """Two triangles with areas 1:3 on one mesh and 3:1 on the other: counts follow the areas per mesh,
    in both halves of the draw (independent order), with weights uniform over each triangle."""
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    unit = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    meshes = np.stack([np.concatenate([unit, 3**0.5 * unit + 2]), np.concatenate([3**0.5 * unit, unit + 2])])
    n = 40_000
    face, bary = sampling.sample_surfaces(
        meshes, faces, sampling.surface_draws(np.random.default_rng(0), 2, n)
    )
    assert face.shape == (2, n) and bary.shape == (2, n, 3) and bary.dtype == np.float32
    for half in (slice(None, n // 2), slice(n // 2, None)):  # 4 sigma of a binomial share is < 0.013
        share = (face[:, half] == 1).mean(axis=1)
        np.testing.assert_allclose(share, [0.75, 0.25], atol=0.013)
    assert (bary >= 0).all() and np.allclose(bary.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(bary.reshape(-1, 3).mean(axis=0), [1 / 3] * 3, atol=0.003)


def test_from_rest_starts_that_share_of_training_pairs_at_frame_0(store):
    default = [b["frames"] for b in make_loader(config(store))]
    assert keys(make_loader(config(store, from_rest=0.0))) == keys(make_loader(config(store)))
    every = torch.cat([b["frames"] for b in make_loader(config(store, from_rest=1.0))])
    assert (every[:, 0] == 0).all() and (every[:, 1] > 0).all()
    half = torch.cat([b["frames"] for b in make_loader(config(store, from_rest=0.5))])
    at_rest = float((half[:, 0] == 0).float().mean())
    assert len(half) == len(torch.cat(default)) and 0.3 < at_rest < 0.7, at_rest
    with pytest.raises(ConfigError, match=r"data.from_rest=1.5: must be in \[0, 1\]"):
        config(store, from_rest=1.5)


def test_interpolation_over_stacked_meshes_matches_one_mesh_at_a_time():
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 10, (7, 3))
    values = rng.random((3, 10, 5)).astype(np.float32)
    face, bary = rng.integers(0, 7, (3, 20)), rng.dirichlet([1, 1, 1], (3, 20)).astype(np.float32)
    stacked = sampling.interpolate(values, faces, face, bary)
    for k in range(3):
        np.testing.assert_allclose(
            stacked[k], sampling.interpolate(values[k], faces, face[k], bary[k]), atol=1e-6
        )


def test_training_pairs_are_two_frames_and_evaluation_starts_at_rest(store):
    cfg = config(store, augment=AugmentConfig(frame_order=False))
    train = torch.cat([b["frames"] for b in make_loader(cfg)])
    val = torch.cat([b["frames"] for b in make_loader(cfg, split="val")])
    assert (train[:, 0] < train[:, 1]).all() and (val[:, 0] == 0).all() and (val[:, 1] > 0).all()
    unordered = torch.cat([b["frames"] for b in make_loader(config(store))])
    assert (unordered[:, 0] != unordered[:, 1]).all() and (unordered[:, 0] > unordered[:, 1]).any()
