"""`neurok data ingest`: every format round-trips exactly into the store; bad input is named; resume."""

from __future__ import annotations

import math
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pygltflib
import pytest
import trimesh

from neurok.config import load_config
from neurok.data.ingest import IngestConfig, ingest, iter_sequences
from neurok.data.schema import SPLITS
from neurok.data.store import Store
from neurok.errors import BadInputError, ConfigError, StoreError


def make_frames(seed: int, n_frames: int, n_vertices: int) -> np.ndarray:
    """Positions on a 1/256 grid: exact in float32, in 9-digit text and under the .anime offset sums."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-512, 512, (n_frames, n_vertices, 3)) / 256).astype(np.float32)


def strip_faces(n_vertices: int) -> np.ndarray:
    return np.array([[i, i + 1, i + 2] for i in range(n_vertices - 2)], np.int32)


def stored(out) -> dict:
    store = Store(out)
    return {
        seq.name: (seq, store.category_of(i), store.split_of(i))
        for i, seq in enumerate(store.iter_sequences())
    }


def config(fmt: str, *overrides: str) -> IngestConfig:
    return load_config(IngestConfig, None, [f"format={fmt}", *overrides])


# ---- writers of each source format ------------------------------------------------------------------


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    path.write_bytes(trimesh.Trimesh(vertices, faces, process=False).export(file_type="ply"))


def write_mesh_sequence(folder: Path, frames: np.ndarray, faces: np.ndarray, suffix: str) -> None:
    folder.mkdir(parents=True)
    write = write_obj if suffix == ".obj" else write_ply
    for t, vertices in enumerate(frames):
        write(folder / f"frame_{t + 1}{suffix}", vertices, faces)  # frame_10 must sort after frame_9


def write_anime(path: Path, frames: np.ndarray, faces: np.ndarray) -> None:
    nf, nv, _ = frames.shape
    header = np.array([nf, nv, len(faces)], "<i4").tobytes()
    path.write_bytes(
        header
        + frames[0].astype("<f4").tobytes()
        + faces.astype("<i4").tobytes()
        + (frames[1:] - frames[0]).astype("<f4").tobytes()
    )


# ---- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, suffix", [("objseq", ".obj"), ("plyseq", ".ply")])
def test_mesh_sequences_round_trip(tmp_path, fmt, suffix):
    source = tmp_path / "cloth"
    expected = {"walk/a": make_frames(0, 11, 7), "walk/b": make_frames(1, 3, 5), "jump": make_frames(2, 4, 6)}
    for name, frames in expected.items():
        write_mesh_sequence(source / name, frames, strip_faces(frames.shape[1]), suffix)

    summary = ingest(str(source), str(tmp_path / "out.zarr"), config(fmt, "sequences_per_shard=2"))

    got = stored(tmp_path / "out.zarr")
    assert sorted(got) == sorted(expected)
    for name, frames in expected.items():
        seq, category, split = got[name]
        assert np.array_equal(seq.frames, frames), name
        assert np.array_equal(seq.faces, strip_faces(frames.shape[1]))
        assert (seq.object_type, category, split in SPLITS) == ("ingested", "cloth", True)
        assert seq.conditions["frame_dt"] == pytest.approx(1 / 30)
    assert summary["sequences"] == 3 and summary["shards"] == 2
    card = Store(tmp_path / "out.zarr").attrs["card"]  # the one card schema, as generate writes it
    assert card == summary["card"] and card["sequences"] == 3 and card["per_category"] == {"cloth": 3}
    assert card["frames"] == {"min": 3, "median": 4.0, "max": 11} and card["per_type_and_split"].keys() == {
        "ingested"
    }
    assert card["sources"] == [f"{summary['source']} ({fmt})"] and "not simulated" in card["notes"][0]


def test_anime_round_trip_with_category_option(tmp_path):
    source = tmp_path / "animals"
    expected = {
        "bear3EP_Agression": make_frames(3, 5, 9),
        "bear3EP_Jump": make_frames(4, 2, 9),
        "deer2MB_Run": make_frames(5, 3, 4),
    }
    for name, frames in expected.items():
        (source / name).mkdir(parents=True)
        write_anime(source / name / f"{name}.anime", frames, strip_faces(frames.shape[1]))

    ingest(str(source), str(tmp_path / "out.zarr"), config("anime", "category=quadruped", "fps=25"))

    got = stored(tmp_path / "out.zarr")
    for name, frames in expected.items():
        seq, category, _ = got[name]
        assert np.array_equal(seq.frames, frames) and np.array_equal(seq.faces, strip_faces(frames.shape[1]))
        assert category == "quadruped" and seq.conditions["frame_dt"] == pytest.approx(1 / 25)
    bear_a, bear_b, deer = (got[n][0] for n in expected)
    assert bear_a.object_id == bear_b.object_id != deer.object_id  # one object per DeformingThings4D animal
    assert got["bear3EP_Agression"][2] == got["bear3EP_Jump"][2]


def test_dfaust_round_trip(tmp_path):
    path = tmp_path / "registrations_f.hdf5"
    expected = {
        "50004_jiggle": make_frames(6, 4, 8),
        "50004_punch": make_frames(7, 3, 8),
        "50020_run": make_frames(8, 5, 8),
    }
    with h5py.File(path, "w") as f:
        f["faces"] = strip_faces(8)
        for key, frames in expected.items():
            f[key] = frames.transpose(1, 2, 0)  # DFAUST stores (V, 3, T)

    ingest(
        str(path), str(tmp_path / "out.zarr"), config("dfaust", "splits.heldout_categories=[registrations_f]")
    )

    got = stored(tmp_path / "out.zarr")
    for key, frames in expected.items():
        seq, category, split = got[key]
        assert np.array_equal(seq.frames, frames) and np.array_equal(seq.faces, strip_faces(8))
        assert (category, split) == ("registrations_f", "heldout")
        assert seq.conditions["frame_dt"] == pytest.approx(1 / 60)  # DFAUST's capture rate
    assert (
        got["50004_jiggle"][0].object_id == got["50004_punch"][0].object_id != got["50020_run"][0].object_id
    )


def test_npz_through_fsspec_urls(tmp_path):
    fs = fsspec.filesystem("memory")
    frames = make_frames(9, 6, 5)
    with fs.open("/ingest-src/clips/wave.npz", "wb") as f:
        np.savez(f, frames=frames, faces=strip_faces(5), fps=np.float32(50))

    out = f"file://{tmp_path}/out.zarr"
    summary = ingest("memory://ingest-src/clips", out, config("npz"))

    seq, category, _ = stored(out)["wave"]
    assert np.array_equal(seq.frames, frames) and np.array_equal(seq.faces, strip_faces(5))
    assert category == "clips" and seq.conditions["frame_dt"] == pytest.approx(1 / 50)  # the file's fps wins
    assert summary["source"] == "memory:///ingest-src/clips"
    assert Store(out).attrs["provenance"]["source"] == "memory:///ingest-src/clips"
    fs.rm("/ingest-src", recursive=True)


# ---- glTF: a small GLB writer and independently computed motions -------------------------------------


class GlbWriter:
    """Accessors packed into one binary chunk, plus whatever nodes/meshes/animations a test sets."""

    def __init__(self):
        self.gltf = pygltflib.GLTF2(scene=0, scenes=[pygltflib.Scene(nodes=[0])])
        self.blob = bytearray()

    def accessor(self, data, kind: str) -> int:
        data = np.ascontiguousarray(data)
        component = {
            np.float32: pygltflib.FLOAT,
            np.uint16: pygltflib.UNSIGNED_SHORT,
            np.uint32: pygltflib.UNSIGNED_INT,
        }[data.dtype.type]
        self.blob += b"\0" * (-len(self.blob) % 4)
        self.gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=data.nbytes)
        )
        self.blob += data.tobytes()
        count = len(data) if kind != "MAT4" else len(data) // 16
        self.gltf.accessors.append(
            pygltflib.Accessor(
                bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=count, type=kind
            )
        )
        return len(self.gltf.accessors) - 1

    def channel(self, animation, node: int, path: str, keys, values, interpolation: str = "LINEAR") -> None:
        kind = {"translation": "VEC3", "rotation": "VEC4", "scale": "VEC3", "weights": "SCALAR"}[path]
        values = np.asarray(values, np.float32)
        animation.samplers.append(
            pygltflib.AnimationSampler(
                input=self.accessor(np.asarray(keys, np.float32), "SCALAR"),
                output=self.accessor(values.reshape(-1, 1) if kind == "SCALAR" else values, kind),
                interpolation=interpolation,
            )
        )
        animation.channels.append(
            pygltflib.AnimationChannel(
                sampler=len(animation.samplers) - 1,
                target=pygltflib.AnimationChannelTarget(node=node, path=path),
            )
        )

    def save(self, path: Path) -> None:
        self.gltf.buffers = [pygltflib.Buffer(byteLength=len(self.blob))]
        self.gltf.set_binary_blob(bytes(self.blob))
        self.gltf.save_binary(str(path))


def rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def quaternion_x(angle: float) -> list[float]:
    return [math.sin(angle / 2), 0.0, 0.0, math.cos(angle / 2)]


def test_gltf_skinned_bar_follows_its_bones(tmp_path):
    """A bar along z on two bones under an offset root; bone 1 (at z=0.5) turns 90 deg about x (LINEAR),
    bone 0 jumps up at t=0.5 (STEP). Sampled at 4 fps over 1 s: 5 frames."""
    a, p1 = np.array([1.0, 0, 0]), np.array([0, 0, 0.5])
    rings = np.linspace(0, 1, 5)
    corners = [(-0.05, -0.05), (0.05, -0.05), (0.05, 0.05), (-0.05, 0.05)]
    bar = np.array([a + (x, y, z) for z in rings for x, y in corners], np.float32)
    quads = [
        (r * 4 + c, r * 4 + (c + 1) % 4, (r + 1) * 4 + (c + 1) % 4, (r + 1) * 4 + c)
        for r in range(4)
        for c in range(4)
    ]
    faces = np.array([tri for q in quads for tri in ((q[0], q[1], q[3]), (q[1], q[2], q[3]))], np.uint16)
    w1 = np.clip((bar[:, 2] - 0.25) / 0.5, 0, 1)  # z <= 0.25 on bone 0, z >= 0.75 on bone 1, blended between
    weights = np.stack([1 - w1, w1, 0 * w1, 0 * w1], 1).astype(np.float32)
    inverse_bind = np.stack([np.eye(4), np.eye(4)]).astype(np.float32)
    inverse_bind[0, :3, 3], inverse_bind[1, :3, 3] = -a, -(a + p1)

    glb = GlbWriter()
    g = glb.gltf
    root = pygltflib.Node(translation=a.tolist(), children=[1, 3])
    bone0, bone1 = pygltflib.Node(children=[2]), pygltflib.Node(translation=p1.tolist())
    skinned = pygltflib.Node(mesh=0, skin=0, translation=[5.0, 5.0, 5.0])  # ignored: the mesh is skinned
    g.nodes = [root, bone0, bone1, skinned]
    ibm = glb.accessor(inverse_bind.transpose(0, 2, 1).ravel(), "MAT4")  # glTF matrices are column-major
    g.skins = [pygltflib.Skin(joints=[1, 2], inverseBindMatrices=ibm)]
    attributes = pygltflib.Attributes(
        POSITION=glb.accessor(bar, "VEC3"),
        JOINTS_0=glb.accessor(np.tile(np.array([0, 1, 0, 0], np.uint16), (len(bar), 1)), "VEC4"),
        WEIGHTS_0=glb.accessor(weights, "VEC4"),
    )
    primitive = pygltflib.Primitive(attributes=attributes, indices=glb.accessor(faces.ravel(), "SCALAR"))
    g.meshes = [pygltflib.Mesh(primitives=[primitive])]
    animation = pygltflib.Animation(name="bend")
    glb.channel(animation, 2, "rotation", [0, 1], [quaternion_x(0), quaternion_x(math.pi / 2)])
    glb.channel(animation, 1, "translation", [0, 0.5, 1], [[0, 0, 0], [0, 0.25, 0], [0, 0.25, 0]], "STEP")
    g.animations = [animation]
    glb.save(tmp_path / "bar.glb")

    ingest(str(tmp_path / "bar.glb"), str(tmp_path / "out.zarr"), config("gltf", "fps=4"))

    seq, category, _ = stored(tmp_path / "out.zarr")["bar/0-bend"]
    times = np.arange(5) / 4
    expected = []
    for t in times:
        lift = np.array([0, 0.25 if t >= 0.5 else 0.0, 0])
        on_bone0 = bar + lift
        on_bone1 = a + lift + p1 + (bar - a - p1) @ rotation_x(math.pi / 2 * t).T
        expected.append((1 - w1)[:, None] * on_bone0 + w1[:, None] * on_bone1)
    np.testing.assert_allclose(seq.frames, np.stack(expected), atol=2e-6)
    np.testing.assert_allclose(seq.frames[-1, -4:].mean(0), a + [0, 0.25 - 0.5, 0.5], atol=2e-6)  # the tip
    assert np.array_equal(seq.faces, faces) and category == "bar"
    assert seq.conditions["frame_dt"] == pytest.approx(0.25)


def test_gltf_cubic_spline_morph_target_and_parent_matrix(tmp_path):
    """A triangle under a parent given by a matrix (scale 2) moves along a CUBICSPLINE with zero tangents
    (smoothstep) while a morph target lifts vertex 0 (LINEAR weight 0 -> 1). 10 fps over 1 s: 11 frames."""
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    delta = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 0]], np.float32)
    glb = GlbWriter()
    g = glb.gltf
    scale_2 = (2 * np.eye(4) - np.diag([0, 0, 0, 1])).ravel().tolist()
    g.nodes = [pygltflib.Node(matrix=scale_2, children=[1]), pygltflib.Node(mesh=0)]
    attributes = pygltflib.Attributes(POSITION=glb.accessor(base, "VEC3"))
    primitive = pygltflib.Primitive(
        attributes=attributes, targets=[{"POSITION": glb.accessor(delta, "VEC3")}]
    )
    g.meshes = [pygltflib.Mesh(weights=[0.0], primitives=[primitive])]
    animation = pygltflib.Animation()
    zero = [0.0, 0.0, 0.0]
    glb.channel(animation, 1, "translation", [0, 1], [zero, zero, zero, zero, [1, 2, 0], zero], "CUBICSPLINE")
    glb.channel(animation, 1, "weights", [0, 1], [0, 1])
    g.animations = [animation]
    glb.save(tmp_path / "tri.glb")

    ingest(str(tmp_path / "tri.glb"), str(tmp_path / "out.zarr"), config("gltf", "fps=10"))
    ((seq, _, _),) = stored(tmp_path / "out.zarr").values()

    t = np.arange(11)[:, None, None] / 10
    smoothstep = 3 * t**2 - 2 * t**3
    expected = 2 * (base + t * delta + smoothstep * np.array([1, 2, 0]))
    np.testing.assert_allclose(seq.frames, expected, atol=2e-6)
    assert seq.name == "tri/0" and np.array_equal(seq.faces, [[0, 1, 2]])


# ---- bad input: each error names the file (and key) at fault -------------------------------------------


def test_truncated_anime(tmp_path):
    path = tmp_path / "cat_Run.anime"
    write_anime(path, make_frames(0, 4, 5), strip_faces(5))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(BadInputError, match=r"cat_Run\.anime: truncated"):
        ingest(str(path), str(tmp_path / "out.zarr"), config("anime"))
    assert not (tmp_path / "out.zarr").exists()  # nothing half-written: the store it created is gone


def test_dfaust_wrong_shape_names_file_and_key(tmp_path):
    path = tmp_path / "regs.hdf5"
    with h5py.File(path, "w") as f:
        f["faces"] = strip_faces(8)
        f["50004_jiggle"] = make_frames(0, 4, 8)  # (T, V, 3): not transposed as DFAUST stores it
    with pytest.raises(
        BadInputError, match=r"regs\.hdf5 \[50004_jiggle\]: shape \(4, 8, 3\), expected \(V, 3, T\)"
    ):
        ingest(str(path), str(tmp_path / "out.zarr"), config("dfaust"))


def test_topology_drift_names_the_frame_file(tmp_path):
    folder = tmp_path / "src" / "seq"
    write_mesh_sequence(folder, make_frames(0, 3, 6), strip_faces(6), ".obj")
    write_obj(folder / "frame_3.obj", make_frames(1, 1, 7)[0], strip_faces(7))
    with pytest.raises(
        BadInputError, match=r"frame_3\.obj: 7 vertices, but the first frame .*frame_1\.obj has 6"
    ):
        ingest(str(tmp_path / "src"), str(tmp_path / "out.zarr"), config("objseq"))


@pytest.mark.parametrize("case", ["npz", "dfaust", "objseq"])
def test_missing_faces(tmp_path, case):
    if case == "npz":
        path = tmp_path / "clip.npz"
        np.savez(path, frames=make_frames(0, 3, 4))
        pattern = r"clip\.npz: no 'faces' array"
    elif case == "dfaust":
        path = tmp_path / "regs.h5"
        with h5py.File(path, "w") as f:
            f["50004_jiggle"] = make_frames(0, 3, 4).transpose(1, 2, 0)
        pattern = r"regs\.h5: has no 'faces' dataset"
    else:
        path = tmp_path / "points"
        path.mkdir()
        for t in range(2):
            (path / f"{t}.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
        pattern = r"points/0\.obj: has no faces"
    with pytest.raises(BadInputError, match=pattern):
        ingest(str(path), str(tmp_path / "out.zarr"), config(case))


def test_nan_names_file_frame_and_vertex(tmp_path):
    frames = make_frames(0, 3, 4)
    frames[2, 1, 0] = np.nan
    np.savez(tmp_path / "clip.npz", frames=frames, faces=strip_faces(4))
    with pytest.raises(BadInputError, match=r"clip\.npz: non-finite .* at frame 2, vertex 1"):
        ingest(str(tmp_path / "clip.npz"), str(tmp_path / "out.zarr"), config("npz"))


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(
        ConfigError, match="unknown format 'fbx'; known formats: objseq, plyseq, anime, dfaust, gltf"
    ):
        ingest(str(tmp_path), str(tmp_path / "out.zarr"), config("fbx"))


def test_config_loads_from_overrides_and_rejects_unknown_keys():
    cfg = config("gltf", "category=robot", "fps=24", "splits.val=0.5", "up_axis=z", "scale=0.01")
    assert (cfg.category, cfg.fps, cfg.splits.val, cfg.up_axis, cfg.scale) == ("robot", 24.0, 0.5, "z", 0.01)
    with pytest.raises(ConfigError, match="colour"):
        config("gltf", "colour=red")


def test_z_up_source_is_rotated_and_scaled(tmp_path):
    frames = make_frames(0, 2, 3)
    np.savez(tmp_path / "clip.npz", frames=frames, faces=strip_faces(3))
    (seq,) = iter_sequences(str(tmp_path / "clip.npz"), config("npz", "up_axis=z", "scale=0.5"))
    assert np.array_equal(seq.frames, 0.5 * np.stack([frames[..., 0], frames[..., 2], -frames[..., 1]], -1))


# ---- atomic shards and resume --------------------------------------------------------------------------


def shard_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "shards").rglob("*") if p.is_file()}


def test_failure_keeps_committed_shards_and_resume_finishes(tmp_path):
    source, out = tmp_path / "clips", tmp_path / "out.zarr"
    source.mkdir()
    clips = {f"clip{i}": make_frames(i, 3, 4) for i in range(5)}
    for name, frames in clips.items():
        np.savez(source / f"{name}.npz", frames=frames, faces=strip_faces(4))
    good = clips["clip3"].copy()
    clips["clip3"][1, 2, 1] = np.inf
    np.savez(source / "clip3.npz", frames=clips["clip3"], faces=strip_faces(4))
    cfg = config("npz", "sequences_per_shard=2")

    with pytest.raises(BadInputError, match=r"clip3\.npz"):
        ingest(str(source), str(out), cfg)
    assert sorted(stored(out)) == ["clip0", "clip1"]  # shard 0 committed and readable; shard 1 not written
    committed = shard_files(out)

    np.savez(source / "clip3.npz", frames=good, faces=strip_faces(4))
    summary = ingest(str(source), str(out), cfg)
    assert (summary["written_shards"], summary["skipped_shards"]) == ([1, 2], [0])
    assert all(shard_files(out)[k] == mtime for k, mtime in committed.items())

    hashes = [s["sha256"] for s in Store(out).shards]
    files = shard_files(out)
    summary = ingest(str(source), str(out), cfg)  # everything committed: nothing is read or rewritten
    assert (summary["written_shards"], summary["skipped_shards"]) == ([], [0, 1, 2])
    assert shard_files(out) == files and [s["sha256"] for s in Store(out).shards] == hashes
    assert summary["sequences"] == 5 and Store(out).attrs["card"]["sequences"] == 5


def test_resume_refuses_a_store_from_another_config(tmp_path):
    np.savez(tmp_path / "clip.npz", frames=make_frames(0, 2, 3), faces=strip_faces(3))
    ingest(str(tmp_path / "clip.npz"), str(tmp_path / "out.zarr"), config("npz"))
    with pytest.raises(StoreError, match="different recipe"):
        ingest(str(tmp_path / "clip.npz"), str(tmp_path / "out.zarr"), config("npz", "seed=1"))
