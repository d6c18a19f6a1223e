"""`neurok data validate`: check a store's schema, hashes and contents; report every fault found.

Each check reads every loader shard once (one read per array) and names the shard or sequence at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from neurok.data.schema import CONDITION_FIELDS, INDEX_FIELDS, SCHEMA_VERSION, SPLITS
from neurok.data.store import SHARD_ARRAYS, Store, content_hash, shard_name
from neurok.errors import StoreError

CHECKS = ("schema", "complete", "hash", "finite", "topology", "faces", "scale", "velocity", "leakage")


@dataclass
class ValidateConfig:
    max_edge_ratio: float = 3.0  # median edge length vs frame 0: beyond this, vertex order drifted
    min_face_area: float = 1e-10  # in normalised units (frame 0 scaled to the unit cube)
    scale_range: list[float] = field(default_factory=lambda: [1e-3, 1e3])  # metres, frame-0 bounding box
    max_speed: float = 100.0  # normalised units per second: faster vertices are outliers
    scale_outlier_factor: float = 100.0  # vs the store's median scale


@dataclass
class Report:
    path: str
    faults: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CHECKS})
    sequences: int = 0

    @property
    def ok(self) -> bool:
        return not any(self.faults.values())

    def add(self, check: str, message: str) -> None:
        self.faults[check].append(message)

    def format(self, limit: int = 10) -> str:
        lines = [f"validate {self.path}: {self.sequences} sequences"]
        for check in CHECKS:
            found = self.faults[check]
            lines.append(f"  {'FAIL' if found else 'ok  '} {check}" + (f" ({len(found)})" if found else ""))
            lines += [f"       - {m}" for m in found[:limit]]
            if len(found) > limit:
                lines.append(f"       ... and {len(found) - limit} more")
        lines.append("VALID" if self.ok else "INVALID")
        return "\n".join(lines)


def validate(path: str, cfg: ValidateConfig | None = None) -> Report:
    cfg = cfg or ValidateConfig()
    report = Report(path)
    try:
        store = Store(path)
    except StoreError as exc:
        report.add("schema", str(exc))
        return report
    report.sequences = len(store)
    _check_schema(store, report)
    _check_complete(store, report)
    if report.faults["schema"]:
        return report  # the content checks below rely on the schema
    for shard in store.shards:
        _check_shard(store, shard, cfg, report)
    _check_scales(store, cfg, report)
    _check_leakage(store, report)
    return report


def _check_schema(store: Store, report: Report) -> None:
    attrs = store.attrs
    for key in ("schema_version", "units", "frame", "normalisation", "provenance", "shards", "index_fields"):
        if key not in attrs:
            report.add("schema", f"group attribute '{key}' is missing")
    if attrs.get("index_fields") and list(attrs["index_fields"]) != list(INDEX_FIELDS):
        report.add("schema", f"index_fields {attrs['index_fields']} differ from schema v{SCHEMA_VERSION}")
    shapes = {
        "index": (len(store), len(INDEX_FIELDS)),
        "conditions": (len(store), len(CONDITION_FIELDS)),
        "norm_center": (len(store), 3),
        "norm_scale": (len(store),),
    }
    for key, shape in shapes.items():
        if len(store) and (key not in store.root or store.root[key].shape != shape):
            got = store.root[key].shape if key in store.root else "missing"
            report.add("schema", f"array '{key}' should have shape {shape}, has {got}")
    splits = store.column("split") if len(store) else np.zeros(0, int)
    if len(splits) and (splits.min() < 0 or splits.max() >= len(SPLITS)):
        report.add("schema", "index column 'split' holds codes outside the known splits")


def _check_complete(store: Store, report: Report) -> None:
    listed = {s["id"] for s in store.shards}
    present = {}
    if "shards" in store.root:
        present = {int(name): group for name, group in store.root["shards"].groups()}
    for shard_id, group in sorted(present.items()):
        if "commit" not in group.attrs:
            report.add(
                "complete",
                f"loader shard {shard_name(shard_id)} is incomplete (no commit record): "
                "the write was interrupted; rerun generate/ingest to resume",
            )
        elif shard_id not in listed:
            report.add(
                "complete",
                f"loader shard {shard_name(shard_id)} is committed but not indexed; rerun "
                "generate/ingest to resume",
            )
    for shard_id in sorted(listed - set(present)):
        report.add("complete", f"loader shard {shard_name(shard_id)} is listed in the manifest but missing")


def _check_shard(store: Store, shard: dict, cfg: ValidateConfig, report: Report) -> None:
    name = shard["path"]
    try:
        group = store.root[name]
        arrays = {key: group[key][...] for key in SHARD_ARRAYS}
        records = store.shard_commit(shard["id"])["sequences"]
    except (KeyError, FileNotFoundError, ValueError, zarr.errors.BaseZarrError) as exc:
        report.add("schema", f"{name}: unreadable ({exc})")
        return
    digest = content_hash(arrays, records)
    if digest != shard["sha256"]:
        report.add(
            "hash", f"{name}: content hash {digest[:12]} differs from the manifest's {shard['sha256'][:12]}"
        )
    for rec in records:
        _check_sequence(arrays, rec, cfg, report, name)


def _check_sequence(arrays: dict, rec: dict, cfg: ValidateConfig, report: Report, shard: str) -> None:
    where = f"sequence '{rec['name']}' ({shard})"
    t, v, o = rec["n_frames"], rec["n_vertices"], rec["vertex_offset"]
    if o + t * v > len(arrays["vertices"]) or rec["face_offset"] + rec["n_faces"] > len(arrays["faces"]):
        report.add("schema", f"{where}: offsets run past the shard's arrays")
        return
    frames = arrays["vertices"][o : o + t * v].reshape(t, v, 3).astype(np.float64)
    faces = arrays["faces"][rec["face_offset"] : rec["face_offset"] + rec["n_faces"]]
    if not np.isfinite(frames).all():
        bad = np.flatnonzero(~np.isfinite(frames).all(axis=(1, 2)))
        report.add("finite", f"{where}: NaN/Inf in frames {bad[:5].tolist()}")
        return
    if faces.min() < 0 or faces.max() >= v:
        report.add("topology", f"{where}: face indices outside [0, {v})")
        return
    scale = rec["norm_scale"]
    # one edge per face is enough for a robust median, and keeps memory at (T, F)
    lengths = np.median(np.linalg.norm(frames[:, faces[:, 0]] - frames[:, faces[:, 1]], axis=-1), axis=1)
    ratio = lengths / max(lengths[0], 1e-12)
    drift = np.flatnonzero((ratio > cfg.max_edge_ratio) | (ratio < 1 / cfg.max_edge_ratio))
    if len(drift):
        report.add(
            "topology",
            f"{where}: median edge length changes {ratio[drift[0]]:.1f}x at frame "
            f"{drift[0]}: vertex order or topology drifted",
        )
    rest = frames[0] / scale
    a, b, c = rest[faces[:, 0]], rest[faces[:, 1]], rest[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    degenerate = np.flatnonzero(repeated | (area < cfg.min_face_area))
    if len(degenerate):
        report.add("faces", f"{where}: {len(degenerate)} degenerate faces (e.g. face {degenerate[0]})")
    lo, hi = cfg.scale_range
    if not lo <= scale <= hi:
        report.add("scale", f"{where}: size {scale:.3g} m is outside [{lo:g}, {hi:g}] m")
    dt = rec["conditions"].get("frame_dt") or 1.0
    speed = np.linalg.norm(np.diff(frames, axis=0), axis=-1).max() / scale / dt
    if speed > cfg.max_speed:
        report.add("velocity", f"{where}: a vertex moves at {speed:.3g} sizes/s (limit {cfg.max_speed:g})")


def _check_scales(store: Store, cfg: ValidateConfig, report: Report) -> None:
    if not len(store):
        return
    median = float(np.median(store.norm_scale))
    far = np.flatnonzero(np.abs(np.log(store.norm_scale / median)) > np.log(cfg.scale_outlier_factor))
    for i in far[:20]:
        report.add(
            "scale",
            f"sequence #{i} ({store.category_of(i)}): size {store.norm_scale[i]:.3g} m vs the "
            f"store's median {median:.3g} m",
        )


def _check_leakage(store: Store, report: Report) -> None:
    splits_of: dict[int, set[str]] = {}
    for obj, split in zip(store.column("object_id").tolist(), store.column("split").tolist(), strict=True):
        splits_of.setdefault(obj, set()).add(SPLITS[split])
    for obj, splits in sorted(splits_of.items()):
        if len(splits) > 1:
            report.add("leakage", f"object {obj} appears in several splits: {sorted(splits)}")
