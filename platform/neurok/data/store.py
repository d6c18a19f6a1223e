"""The 4D store: one Zarr v3 group holding loader shards of whole sequences and a per-sequence index.

Layout (schema v1)::

    zarr.json                 attrs: schema_version, units, frame, normalisation, card, provenance,
                              shards (manifest: id, sequences, sha256, bytes), n_sequences
    index        (S, 11) i64  INDEX_FIELDS: shard, offsets inside the shard, counts, ids, codes
    conditions   (S, C) f32   CONDITION_FIELDS
    norm_center  (S, 3) f32   centre of frame 0's bounding box
    norm_scale   (S,)   f32   largest side of frame 0's bounding box
    shards/000042/            one loader shard: a contiguous block of whole sequences
        vertices     (sum T*V, 3) f32   frames of its sequences, concatenated
        faces        (sum F, 3)   i32
        vertex_flags (sum V,)     u8
        zarr.json attrs["commit"] written last: sequence records + content hash

Each array of a loader shard is exactly one Zarr shard file (chunks of `chunk_rows` rows inside), so
reading a loader shard is a few large sequential reads, and one writer owning a loader shard can never
clobber another's rows (Zarr has no locking; the shard is its unit of safe concurrent writing).

A loader shard is complete when its commit record exists: a crash mid-write leaves it without one,
`validate` reports it and `generate`/`ingest` rewrite it. The root tables are derived from the commit
records after every committed shard, so the store is readable with every completed shard at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from neurok import __version__
from neurok.data.schema import (
    CONDITION_FIELDS,
    FRAME,
    INDEX_FIELDS,
    OBJECT_TYPES,
    SCHEMA_VERSION,
    SPLITS,
    UNITS,
    Sequence,
    normalisation,
)
from neurok.errors import StoreError, StoreLockedError

log = logging.getLogger(__name__)

SHARD_ARRAYS = ("vertices", "faces", "vertex_flags")
LOCK_NAME = ".writer.lock"
NORMALISATION = {
    "kind": "per-sequence frame-0 bounding box to the unit cube [-0.5, 0.5]^3",
    "apply": "x_normalised = (x - norm_center[s]) / norm_scale[s]",
}

# Zarr 3 warns that some of what we write is outside the v3 spec text (e.g. no consolidated metadata
# here, but shard listings go through the same code path); we keep to spec'd codecs and dtypes.
warnings.filterwarnings("ignore", message=".*not part in the Zarr format 3 specification.*")


def shard_name(shard_id: int) -> str:
    return f"shards/{shard_id:06d}"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def content_hash(arrays: dict[str, np.ndarray], records: list[dict]) -> str:
    """sha256 of a loader shard's decoded arrays and sequence records (independent of codecs)."""
    h = hashlib.sha256()
    for name in SHARD_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(json.dumps(records, sort_keys=True).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class StoreLayout:
    """Chunking and compression of a store's arrays."""

    chunk_rows: int = 131072  # vertex rows per chunk: 1.5 MiB raw; measured fastest here (make bench)
    clevel: int = 3


class _WriterLock:
    """An exclusive marker file in the store; a lock left by a dead process on this host is taken over."""

    def __init__(self, path: str):
        self.path = path.rstrip("/") + "/" + LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def acquire(self) -> None:
        if _is_local(self.path):
            p = _local_path(self.path)
            p.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    if not self._stale(p.read_text()):
                        raise self._locked(p.read_text()) from None
                    log.warning("taking over a stale writer lock %s", p)
                    p.unlink(missing_ok=True)
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(self.owner, f)
                return
            raise StoreLockedError(f"{self.path}: could not take the writer lock")
        fs, p = fsspec.url_to_fs(self.path)
        if fs.exists(p):  # object stores have no exclusive create; this is the best-effort check
            raise self._locked(fs.cat(p).decode())
        fs.pipe(p, json.dumps(self.owner).encode())

    def release(self) -> None:
        fs, p = fsspec.url_to_fs(self.path)
        if fs.exists(p):
            fs.rm(p)

    def _stale(self, text: str) -> bool:
        try:
            owner = json.loads(text)
        except json.JSONDecodeError:
            return False
        if owner.get("host") != self.owner["host"]:
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _locked(self, text: str) -> StoreLockedError:
        return StoreLockedError(
            f"{self.path}: the store is being written by another process ({text.strip()}); "
            "wait for it to finish, or remove the lock file if that process is gone"
        )


def _open_root(path: str, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(path, mode=mode, zarr_format=3)
    except FileNotFoundError:
        raise StoreError(f"{path}: no 4D store here") from None


class StoreWriter:
    """Writes loader shards into a store and keeps its index current. One writer per store.

    Use as a context manager: it takes the store's writer lock on entry and releases it on exit.
    Opening an existing store resumes it: `completed_shards` tells which shards can be skipped. A store this
    writer created is removed again if it fails before committing a shard (nothing half-written is left).
    """

    def __init__(
        self, path: str | os.PathLike, attrs: dict | None = None, layout: StoreLayout = StoreLayout()
    ):
        self.path = str(path)
        self.layout = layout
        self._new_attrs = attrs or {}
        self._lock = _WriterLock(self.path)
        self._commits: dict[int, dict] = {}

    def __enter__(self) -> StoreWriter:
        fs, root = fsspec.url_to_fs(self.path)
        self._fresh = not fs.exists(root)  # a failure before the first commit leaves no store behind
        self._lock.acquire()
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind, *exc) -> None:
        self._release(failed=kind is not None)

    def _release(self, failed: bool = True) -> None:
        self._lock.release()
        if failed and self._fresh and not self._commits:
            fs, root = fsspec.url_to_fs(self.path)
            fs.rm(root, recursive=True)

    def _open(self) -> None:
        exists = _store_exists(self.path)
        # file:// opens as a plain path: zarr's fsspec store on a local filesystem makes no parent folders
        local = str(_local_path(self.path)) if _is_local(self.path) else self.path
        self.root = zarr.open_group(local, mode="a", zarr_format=3)
        if exists and "schema_version" in self.root.attrs:
            old = self.root.attrs.get("provenance", {}).get("recipe_hash")
            new = self._new_attrs.get("provenance", {}).get("recipe_hash")
            if old and new and old != new:
                raise StoreError(
                    f"{self.path}: this store was written from a different recipe or source (hash "
                    f"{old[:12]} vs {new[:12]}); write to a new --out path or delete the store first"
                )
            self._commits = _read_commits(self.root)
            log.info("%s: resuming, %d loader shards already complete", self.path, len(self._commits))
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "units": UNITS,
            "frame": FRAME,
            "normalisation": NORMALISATION,
            "index_fields": list(INDEX_FIELDS),
            "condition_fields": list(CONDITION_FIELDS),
            "object_types": list(OBJECT_TYPES),
            "splits": list(SPLITS),
        }
        attrs.update(self._new_attrs)
        attrs["provenance"] = {"writer": f"neurok {__version__}", **attrs.get("provenance", {})}
        self.root.attrs.update(attrs)

    @property
    def completed_shards(self) -> set[int]:
        return set(self._commits)

    def write_shard(self, shard_id: int, sequences: list[Sequence]) -> dict:
        """Write one loader shard (all its arrays, then its commit record) and refresh the index."""
        commit = write_shard(self.root, shard_id, sequences, self.layout)
        self.record(shard_id, commit)
        return commit

    def record(self, shard_id: int, commit: dict) -> None:
        """Index a shard that was written (possibly by another process) with `write_shard`."""
        self._commits[shard_id] = commit
        self.finalize()

    def finalize(self, card: dict | None = None) -> None:
        """Rebuild the root tables and manifest from the commit records (cheap: S rows)."""
        shards = sorted(self._commits)
        rows, conds, centers, scales, manifest = [], [], [], [], []
        categories = list(self.root.attrs.get("categories", []))
        for shard_id in shards:
            commit = self._commits[shard_id]
            manifest.append(
                {
                    "id": shard_id,
                    "path": shard_name(shard_id),
                    "n_sequences": commit["n_sequences"],
                    "sha256": commit["sha256"],
                    "nbytes": commit["nbytes"],
                }
            )
            for rec in commit["sequences"]:
                if rec["category"] not in categories:
                    categories.append(rec["category"])
                rows.append(
                    [
                        shard_id,
                        rec["vertex_offset"],
                        rec["n_frames"],
                        rec["n_vertices"],
                        rec["face_offset"],
                        rec["n_faces"],
                        rec["flag_offset"],
                        rec["object_id"],
                        OBJECT_TYPES.index(rec["object_type"]),
                        categories.index(rec["category"]),
                        SPLITS.index(rec["split"]),
                    ]
                )
                conds.append([rec["conditions"].get(k, 0.0) for k in CONDITION_FIELDS])
                centers.append(rec["norm_center"])
                scales.append(rec["norm_scale"])
        n = len(rows)
        tables = {
            "index": np.asarray(rows, np.int64).reshape(n, len(INDEX_FIELDS)),
            "conditions": np.asarray(conds, np.float32).reshape(n, len(CONDITION_FIELDS)),
            "norm_center": np.asarray(centers, np.float32).reshape(n, 3),
            "norm_scale": np.asarray(scales, np.float32).reshape(n),
        }
        for key, data in tables.items():
            _write_table(self.root, key, data)
        dropped = [d for k in shards for d in self._commits[k].get("dropped", [])]
        attrs = {"categories": categories, "shards": manifest, "n_sequences": n, "dropped": dropped}
        if card is not None:
            attrs["card"] = card
        self.root.attrs.update(attrs)


def write_shard(
    root: zarr.Group | str,
    shard_id: int,
    sequences: list[Sequence],
    layout: StoreLayout,
    dropped: list[str] | None = None,
) -> dict:
    """Write one loader shard's arrays, then its commit record; returns the commit. `dropped`: why the
    shard's planned sequences that are not in it were left out (kept in the commit and the store's attrs).

    Safe from any process that owns this shard (e.g. a Ray task): it touches only the shard's own files.
    The store's writer then `record`s the commit into the index.
    """
    if isinstance(root, str):
        root = _open_root(root, "r+")
    if not sequences:
        raise StoreError(f"{root.store}: loader shard {shard_id} would be empty: {dropped or ''}")
    arrays, records = _pack(sequences)
    commit = {
        "sha256": content_hash(arrays, records),
        "n_sequences": len(records),
        "nbytes": int(sum(a.nbytes for a in arrays.values())),
        "sequences": records,
        "dropped": dropped or [],
    }
    name = shard_name(shard_id)
    if name in root:  # a half-written shard from an interrupted run
        del root[name]
    group = root.create_group(name)
    for key, data in arrays.items():
        _write_array(group, key, data, layout)
    group.attrs["commit"] = commit  # last: its presence marks the shard complete
    return commit


def _store_exists(path: str) -> bool:
    fs, p = fsspec.url_to_fs(path)
    return fs.exists(p.rstrip("/") + "/zarr.json")


def _write_array(group: zarr.Group, key: str, data: np.ndarray, layout: StoreLayout) -> None:
    rows = max(1, len(data))
    chunk = min(layout.chunk_rows, rows) if key == "vertices" else min(layout.chunk_rows * 3, rows)
    n_chunks = -(-rows // chunk)
    shuffle = BloscShuffle.bitshuffle if data.dtype == np.float32 else BloscShuffle.shuffle
    group.create_array(
        key,
        data=data,
        chunks=(chunk,) + data.shape[1:],
        shards=(chunk * n_chunks,) + data.shape[1:],  # one shard file holds the whole array
        compressors=BloscCodec(cname="zstd", clevel=layout.clevel, shuffle=shuffle),
    )


def _write_table(root: zarr.Group, key: str, data: np.ndarray) -> None:
    root.create_array(
        key,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(max(1, min(len(data), 65536)),) + data.shape[1:],
        compressors=ZstdCodec(level=3),
        overwrite=True,
    )
    if len(data):
        root[key][...] = data


def _pack(sequences: list[Sequence]) -> tuple[dict[str, np.ndarray], list[dict]]:
    vertex_offset = face_offset = flag_offset = 0
    records = []
    for seq in sequences:
        center, scale = normalisation(seq.frames)
        records.append(
            {
                "name": seq.name,
                "object_type": seq.object_type,
                "category": seq.category,
                "object_id": int(seq.object_id),
                "split": seq.split,
                "n_frames": seq.n_frames,
                "n_vertices": seq.n_vertices,
                "n_faces": len(seq.faces),
                "vertex_offset": vertex_offset,
                "face_offset": face_offset,
                "flag_offset": flag_offset,
                "conditions": {k: float(v) for k, v in seq.conditions.items()},
                "norm_center": [float(c) for c in center],
                "norm_scale": scale,
            }
        )
        vertex_offset += seq.n_frames * seq.n_vertices
        face_offset += len(seq.faces)
        flag_offset += seq.n_vertices
    arrays = {
        "vertices": np.concatenate([s.frames.reshape(-1, 3) for s in sequences]),
        "faces": np.concatenate([s.faces for s in sequences]),
        "vertex_flags": np.concatenate([s.vertex_flags for s in sequences]),
    }
    return arrays, records


def _read_commits(root: zarr.Group) -> dict[int, dict]:
    if "shards" not in root:
        return {}
    commits = {}
    for name, group in root["shards"].groups():
        if "commit" in group.attrs:
            commits[int(name)] = dict(group.attrs["commit"])
    return commits


class Store:
    """Read access to a 4D store (local path or fsspec URL)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.root = _open_root(self.path, "r")
        attrs = self.root.attrs.asdict()
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
        self.attrs = attrs
        self.index = (
            self.root["index"][:] if "index" in self.root else np.zeros((0, len(INDEX_FIELDS)), np.int64)
        )
        if len(self.index) != attrs.get("n_sequences", 0):
            raise StoreError(
                f"{self.path}: the index holds {len(self.index)} sequences but the manifest says "
                f"{attrs.get('n_sequences')}; the last write was interrupted: rerun it to resume"
            )
        self.conditions = (
            self.root["conditions"][:] if len(self.index) else np.zeros((0, len(CONDITION_FIELDS)))
        )
        self.norm_center = self.root["norm_center"][:] if len(self.index) else np.zeros((0, 3))
        self.norm_scale = self.root["norm_scale"][:] if len(self.index) else np.zeros(0)
        self.categories: list[str] = list(attrs.get("categories", []))
        self.shards: list[dict] = list(attrs.get("shards", []))
        self._arrays: dict[str, zarr.Array] = {}  # committed shards never change: open each array once

    def __len__(self) -> int:
        return len(self.index)

    def column(self, name: str) -> np.ndarray:
        return self.index[:, INDEX_FIELDS.index(name)]

    def split_of(self, i: int) -> str:
        return SPLITS[self.index[i, INDEX_FIELDS.index("split")]]

    def category_of(self, i: int) -> str:
        return self.categories[self.index[i, INDEX_FIELDS.index("category")]]

    def object_type_of(self, i: int) -> str:
        return OBJECT_TYPES[self.index[i, INDEX_FIELDS.index("object_type")]]

    def sequences_in_shard(self, shard_id: int) -> np.ndarray:
        return np.flatnonzero(self.column("shard") == shard_id)

    def read_shard_arrays(self, shard_id: int, keys: tuple[str, ...] = SHARD_ARRAYS) -> dict[str, np.ndarray]:
        """The arrays `keys` of one loader shard, each in one large read."""
        paths = {key: f"{shard_name(shard_id)}/{key}" for key in keys}
        for path in paths.values():
            if path not in self._arrays:
                self._arrays[path] = self.root[path]  # no group metadata read
        return {key: self._arrays[path][...] for key, path in paths.items()}

    def shard_commit(self, shard_id: int) -> dict:
        return dict(self.root[shard_name(shard_id)].attrs["commit"])

    def iter_shard(self, shard_id: int) -> Iterator[Sequence]:
        """The sequences of one loader shard, decoded from one read per array."""
        arrays = self.read_shard_arrays(shard_id)
        for rec in self.shard_commit(shard_id)["sequences"]:
            yield _unpack(arrays, rec)

    def sequence(self, i: int) -> Sequence:
        shard = int(self.index[i, 0])
        local = i - int(self.sequences_in_shard(shard)[0])
        rec = self.shard_commit(shard)["sequences"][local]
        group = self.root[shard_name(shard)]
        return _unpack({key: group[key] for key in SHARD_ARRAYS}, rec)  # zarr slices read only this sequence

    def iter_sequences(self, shards: Iterable[int] | None = None) -> Iterator[Sequence]:
        for shard in shards if shards is not None else (s["id"] for s in self.shards):
            yield from self.iter_shard(shard)


def _unpack(arrays: dict, rec: dict) -> Sequence:
    """One sequence out of its shard's arrays (numpy arrays, or zarr arrays for a partial read)."""
    t, v = rec["n_frames"], rec["n_vertices"]
    o = rec["vertex_offset"]
    return Sequence(
        name=rec["name"],
        frames=arrays["vertices"][o : o + t * v].reshape(t, v, 3),
        faces=arrays["faces"][rec["face_offset"] : rec["face_offset"] + rec["n_faces"]],
        object_type=rec["object_type"],
        category=rec["category"],
        object_id=rec["object_id"],
        split=rec["split"],
        vertex_flags=arrays["vertex_flags"][rec["flag_offset"] : rec["flag_offset"] + v],
        conditions=rec["conditions"],
    )
