"""Animated glTF 2.0 (`gltf`): `.glb`/`.gltf` files, one sequence per animation.

trimesh loads only the bind pose, so this module evaluates the animation itself (numpy + pygltflib):
node TRS channels (LINEAR, with slerp for rotations; STEP; CUBICSPLINE), the node hierarchy, morph
targets (POSITION deltas weighted by the mesh's `weights`, animated by `weights` channels) and linear
blend skinning (JOINTS_n/WEIGHTS_n with the skin's inverseBindMatrices; a skinned mesh ignores its own
node's transform, as the spec says). Every mesh instance of the default scene joins one mesh, in scene
order. An animation is sampled at `fps` (default 30) from its first to its last keyframe.

glTF is y-up metres by its spec, so the default `up_axis`/`scale` convert nothing. Each file is one
object. Refused with an error naming the file: sparse accessors, primitives that are not triangle
lists, animated nodes given by a `matrix`. pygltflib drops a node's own default morph `weights`, so
the mesh's defaults are used.
"""

from __future__ import annotations

import base64
import json
import posixpath
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np
from fsspec import AbstractFileSystem
from pygltflib import GLTF2

from neurok.data.ingest.common import SourceRef, files_with_suffix, make_sequence, relative_name, source_label
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig

DEFAULT_FPS = 30.0
COMPONENT_TYPES = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
TRIANGLES = 4


class _Document:
    """A parsed glTF file with its binary buffers, decoding accessors into numpy arrays."""

    def __init__(self, fs: AbstractFileSystem, path: str):
        self.fs, self.path = fs, path
        data = fs.cat_file(path)
        try:
            if data[:4] == b"glTF":
                self.gltf = GLTF2.load_from_bytes(data)
            else:
                self.gltf = GLTF2.from_json(data.decode("utf-8"), infer_missing=True)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{path}: not a readable glTF file ({exc})") from None
        if self.gltf is None:
            raise BadInputError(f"{path}: a GLB file without a JSON chunk")

    @cached_property
    def buffers(self) -> list[bytes]:
        out = []
        for i, buf in enumerate(self.gltf.buffers):
            if buf.uri is None:  # the GLB's own binary chunk
                blob = self.gltf.binary_blob() or b""
            elif buf.uri.startswith("data:"):
                blob = base64.b64decode(buf.uri.split(",", 1)[1])
            else:
                uri = posixpath.join(posixpath.dirname(self.path), unquote(buf.uri))
                if not self.fs.isfile(uri):
                    raise BadInputError(f"{self.path}: buffer {i} refers to '{buf.uri}', which is not there")
                blob = self.fs.cat_file(uri)
            if len(blob) < (buf.byteLength or 0):
                raise BadInputError(
                    f"{self.path}: buffer {i} holds {len(blob)} bytes of {buf.byteLength}: truncated"
                )
            out.append(blob)
        return out

    def accessor(self, index: int) -> np.ndarray:
        """Accessor `index` as (count, width) (MAT4: (count, 4, 4)); floats and normalized ints as float64."""
        try:
            acc = self.gltf.accessors[index]
            if acc.sparse is not None:
                raise BadInputError(f"{self.path}: accessor {index} is sparse, which ingest does not support")
            dtype, width = np.dtype(COMPONENT_TYPES[acc.componentType]), WIDTHS[acc.type]
            if acc.bufferView is None:  # all zeros, by the spec
                out = np.zeros((acc.count, width), dtype)
            else:
                view = self.gltf.bufferViews[acc.bufferView]
                item = dtype.itemsize * width
                stride = view.byteStride or item
                start = (view.byteOffset or 0) + (acc.byteOffset or 0)
                if (
                    acc.count
                    and start + stride * (acc.count - 1) + item > (view.byteOffset or 0) + view.byteLength
                ):
                    raise BadInputError(f"{self.path}: accessor {index} runs past the end of its bufferView")
                out = np.ndarray(
                    (acc.count, width),
                    dtype,
                    buffer=self.buffers[view.buffer],
                    offset=start,
                    strides=(stride, dtype.itemsize),
                ).copy()
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"{self.path}: accessor {index} is malformed ({exc!r})") from None
        if dtype.kind == "f":
            out = out.astype(np.float64)
        elif acc.normalized:  # unsigned ints map to [0, 1], signed to [-1, 1]
            out = np.maximum(out / np.iinfo(dtype).max, -1.0)
        else:
            out = out.astype(np.int64)
        return out.reshape(-1, 4, 4).transpose(0, 2, 1) if acc.type == "MAT4" else out  # MAT4 is column-major


def discover(fs: AbstractFileSystem, root: str) -> list[SourceRef]:
    category = source_label(root)
    refs = []
    for path in files_with_suffix(fs, root, (".glb", ".gltf")):
        animations = _Document(fs, path).gltf.animations
        if not animations:
            raise BadInputError(
                f"{path}: has no animation, so it is no 4D sequence; remove it from the source"
            )
        rel = relative_name(root, path)
        for i, animation in enumerate(animations):
            name = f"{rel}/{i}-{animation.name}" if animation.name else f"{rel}/{i}"
            refs.append(SourceRef(name=name, path=path, object_key=rel, category=category, key=str(i)))
    return refs


def read(fs: AbstractFileSystem, ref: SourceRef, cfg: IngestConfig) -> Sequence:
    doc = _Document(fs, ref.path)
    channels = _sample_animation(doc, doc.gltf.animations[int(ref.key)], cfg.fps or DEFAULT_FPS)
    world = _world_matrices(doc, channels)
    frames, faces, n_vertices = [], [], 0
    for node_index in _mesh_instances(doc):
        positions, instance_faces = _instance(doc, node_index, channels, world)
        frames.append(positions)
        faces.append(instance_faces + n_vertices)
        n_vertices += positions.shape[1]
    if not frames:
        raise BadInputError(f"{ref.path}: its scene holds no mesh")
    dt = 1.0 / (cfg.fps or DEFAULT_FPS)
    return make_sequence(ref, np.concatenate(frames, axis=1), np.concatenate(faces), dt, cfg)


def _sample_animation(doc: _Document, animation, fps: float) -> dict[tuple[int, str], np.ndarray]:
    """Every channel's value at the sample times, keyed (node, path); the times under key (-1, "time")."""
    curves = []
    for channel in animation.channels:
        if channel.target.node is None:  # e.g. KHR_animation_pointer targets, which carry no geometry
            continue
        sampler = animation.samplers[channel.sampler]
        keys = doc.accessor(sampler.input).ravel()
        if len(keys) == 0 or np.any(np.diff(keys) <= 0):
            raise BadInputError(
                f"{doc.path}: animation input accessor {sampler.input} is empty or not increasing"
            )
        interpolation = sampler.interpolation or "LINEAR"
        if interpolation not in ("LINEAR", "STEP", "CUBICSPLINE"):
            raise BadInputError(f"{doc.path}: unknown animation interpolation '{interpolation}'")
        curves.append(
            (channel.target.node, channel.target.path, keys, doc.accessor(sampler.output), interpolation)
        )
    if not curves:
        raise BadInputError(f"{doc.path}: animation '{animation.name}' has no node channels")
    start, end = min(c[2][0] for c in curves), max(c[2][-1] for c in curves)
    times = start + np.arange(int(np.floor((end - start) * fps + 1e-6)) + 1) / fps
    sampled = {(-1, "time"): times}
    for node, path, keys, values, interpolation in curves:
        sampled[(node, path)] = _interpolate(times, keys, values, interpolation, path == "rotation")
    return sampled


def _interpolate(times, keys, values, interpolation: str, is_rotation: bool) -> np.ndarray:
    """glTF sampler interpolation at `times`, clamped to the first/last keyframe outside the keyed range."""
    n = len(keys)
    if interpolation == "CUBICSPLINE":  # each key holds (in-tangent, value, out-tangent)
        triples = values.reshape(n, 3, -1)
        tangent_in, points, tangent_out = triples[:, 0], triples[:, 1], triples[:, 2]
    else:
        points = values.reshape(n, -1)
    if n == 1:
        return np.repeat(points, len(times), axis=0)
    k = np.clip(np.searchsorted(keys, times, side="right") - 1, 0, n - 2)
    span = (keys[k + 1] - keys[k])[:, None]
    s = np.clip((times[:, None] - keys[k][:, None]) / span, 0.0, 1.0)
    if interpolation == "STEP":
        return points[np.where(s[:, 0] >= 1.0, k + 1, k)]
    if interpolation == "LINEAR":
        return _slerp(points[k], points[k + 1], s) if is_rotation else (1 - s) * points[k] + s * points[k + 1]
    s2, s3 = s * s, s * s * s
    out = (
        (2 * s3 - 3 * s2 + 1) * points[k]
        + (s3 - 2 * s2 + s) * span * tangent_out[k]
        + (-2 * s3 + 3 * s2) * points[k + 1]
        + (s3 - s2) * span * tangent_in[k + 1]
    )
    return out / np.linalg.norm(out, axis=1, keepdims=True) if is_rotation else out


def _slerp(q0: np.ndarray, q1: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc."""
    dot = np.sum(q0 * q1, axis=1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    theta = np.arccos(np.clip(np.abs(dot), 0.0, 1.0))
    sin = np.sin(theta)
    near = sin < 1e-9  # (almost) equal quaternions: plain lerp avoids dividing by ~0
    safe = np.where(near, 1.0, sin)
    w0 = np.where(near, 1 - s, np.sin((1 - s) * theta) / safe)
    w1 = np.where(near, s, np.sin(s * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _rotation_matrices(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (x, y, z, w) -> (N, 3, 3)."""
    x, y, z, w = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def _local_matrix(doc: _Document, index: int, channels: dict) -> np.ndarray:
    """The node's local transform, (T, 4, 4) when animated, else (1, 4, 4)."""
    node = doc.gltf.nodes[index]
    animated = {
        p: channels[(index, p)] for p in ("translation", "rotation", "scale") if (index, p) in channels
    }
    if node.matrix is not None:
        if animated:
            raise BadInputError(f"{doc.path}: node {index} is given by a matrix but animated by TRS channels")
        return np.asarray(node.matrix, np.float64).reshape(4, 4).T[None]  # stored column-major
    t = animated.get("translation", np.asarray([node.translation or [0.0, 0.0, 0.0]], np.float64))
    r = animated.get("rotation", np.asarray([node.rotation or [0.0, 0.0, 0.0, 1.0]], np.float64))
    s = animated.get("scale", np.asarray([node.scale or [1.0, 1.0, 1.0]], np.float64))
    n = max(len(t), len(r), len(s))
    m = np.zeros((n, 4, 4))
    m[:, :3, :3] = _rotation_matrices(r) * s[:, None, :]  # R @ diag(s)
    m[:, :3, 3] = t
    m[:, 3, 3] = 1.0
    return m


def _world_matrices(doc: _Document, channels: dict) -> list[np.ndarray]:
    """Every node's world transform over time, walking the hierarchy from each root."""
    nodes = doc.gltf.nodes
    children = {c for node in nodes for c in node.children or []}
    world: list[np.ndarray | None] = [None] * len(nodes)
    stack = [(i, None) for i in range(len(nodes)) if i not in children]
    while stack:
        i, parent = stack.pop()
        local = _local_matrix(doc, i, channels)
        world[i] = local if parent is None else parent @ local
        stack += [(c, world[i]) for c in nodes[i].children or []]
    return world


def _mesh_instances(doc: _Document) -> list[int]:
    """Nodes with a mesh in the default scene, depth-first in file order."""
    gltf = doc.gltf
    if gltf.scenes:
        roots = list(gltf.scenes[gltf.scene or 0].nodes or [])
    else:
        children = {c for node in gltf.nodes for c in node.children or []}
        roots = [i for i in range(len(gltf.nodes)) if i not in children]
    out, stack = [], roots[::-1]
    while stack:
        i = stack.pop()
        if gltf.nodes[i].mesh is not None:
            out.append(i)
        stack += (gltf.nodes[i].children or [])[::-1]
    return out


def _instance(doc: _Document, index: int, channels: dict, world: list) -> tuple[np.ndarray, np.ndarray]:
    """One mesh instance over time: positions (T, V, 3) and faces (F, 3) of all its primitives."""
    node = doc.gltf.nodes[index]
    mesh = doc.gltf.meshes[node.mesh]
    times = channels[(-1, "time")]
    morph = channels.get((index, "weights"))
    positions, faces, n_vertices = [], [], 0
    for primitive in mesh.primitives:
        if primitive.mode not in (None, TRIANGLES):
            raise BadInputError(
                f"{doc.path}: mesh {node.mesh} has a primitive of mode {primitive.mode}, not triangles"
            )
        base = doc.accessor(primitive.attributes.POSITION)
        p = np.repeat(base[None], len(times), axis=0)
        if primitive.targets:
            weights = (
                morph if morph is not None else np.asarray([mesh.weights or [0.0] * len(primitive.targets)])
            )
            deltas = np.stack(
                [
                    doc.accessor(t["POSITION"]) if "POSITION" in t else np.zeros_like(base)
                    for t in primitive.targets
                ]
            )
            p = p + np.einsum("tk,kvc->tvc", weights, deltas)
        tri = np.arange(len(base)) if primitive.indices is None else doc.accessor(primitive.indices).ravel()
        if len(tri) % 3:
            raise BadInputError(f"{doc.path}: mesh {node.mesh} has {len(tri)} indices, not a multiple of 3")
        positions.append(
            _skin(doc, node, primitive, p, world) if node.skin is not None else _place(world[index], p)
        )
        faces.append(tri.reshape(-1, 3) + n_vertices)
        n_vertices += len(base)
    return np.concatenate(positions, axis=1), np.concatenate(faces)


def _place(matrix: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply a (T or 1, 4, 4) transform to positions (T, V, 3)."""
    return p @ matrix[:, :3, :3].transpose(0, 2, 1) + matrix[:, None, :3, 3]


def _skin(doc: _Document, node, primitive, p: np.ndarray, world: list) -> np.ndarray:
    """Linear blend skinning: each vertex moves by the weighted sum of its joints' (world @ inverse bind)."""
    skin = doc.gltf.skins[node.skin]
    n_joints = len(skin.joints)
    if skin.inverseBindMatrices is None:
        inverse_bind = np.broadcast_to(np.eye(4), (n_joints, 4, 4))
    else:
        inverse_bind = doc.accessor(skin.inverseBindMatrices)
    joint_matrices = np.stack(  # (T, J, 4, 4)
        [np.broadcast_to(world[j] @ inverse_bind[k], (len(p), 4, 4)) for k, j in enumerate(skin.joints)],
        axis=1,
    )
    joints, weights = [], []
    attributes = vars(primitive.attributes)
    for n in range(8):  # sets JOINTS_0/WEIGHTS_0, JOINTS_1/WEIGHTS_1, ...
        if attributes.get(f"JOINTS_{n}") is None:
            break
        if attributes.get(f"WEIGHTS_{n}") is None:
            raise BadInputError(f"{doc.path}: mesh {node.mesh} has JOINTS_{n} without WEIGHTS_{n}")
        joints.append(doc.accessor(attributes[f"JOINTS_{n}"]))
        weights.append(doc.accessor(attributes[f"WEIGHTS_{n}"]))
    if not joints:
        raise BadInputError(f"{doc.path}: mesh {node.mesh} is skinned but has no JOINTS_0/WEIGHTS_0")
    joints, weights = np.concatenate(joints, axis=1), np.concatenate(weights, axis=1)
    if joints.max() >= n_joints:
        raise BadInputError(
            f"{doc.path}: JOINTS_n of mesh {node.mesh} index joint {joints.max()} of {n_joints}"
        )
    total = weights.sum(axis=1, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), weights)  # exporters round
    out = np.empty_like(p)
    for t in range(len(p)):  # per frame, to keep memory at V x influences x 16
        blended = np.einsum("vn,vnij->vij", weights, joint_matrices[t][joints])
        out[t] = np.einsum("vij,vj->vi", blended[:, :3, :3], p[t]) + blended[:, :3, 3]
    return out
