"""What the format readers share: finding files, naming sequences, checks and the `Sequence` they build.

Every reader has two steps: `discover(fs, root)` lists the sequences of a source cheaply (a
`SourceRef` each, nothing decoded), and `read(fs, ref, cfg)` decodes one into a checked `Sequence`.
Keeping discovery apart lets a resumed ingest skip committed shards without reading their files.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from fsspec import AbstractFileSystem

from neurok.data.schema import Sequence
from neurok.data.splits import assign_split
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig

DEFAULT_FPS = 30.0  # frame rate assumed where neither the format nor the config gives one


@dataclass(frozen=True)
class SourceRef:
    """One sequence of a source: where it lives, its name in the store and the object it shows."""

    name: str  # unique within the source; the sequence's name in the store
    path: str  # the file or folder holding it, as the filesystem names it
    object_key: str  # sequences of one object share it, and so their object_id and split
    category: str  # the default category: the source's folder or file name
    key: str = ""  # the part of the file holding it, where a file holds several (HDF5 key, animation)

    @property
    def where(self) -> str:
        """The file (and key) to name in an error message."""
        return f"{self.path} [{self.key}]" if self.key else self.path


def natural_key(text: str) -> list:
    """Sort key that orders numbers by value: frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def source_label(root: str) -> str:
    """The name of a source folder or file, without its suffix: the default category."""
    return posixpath.splitext(posixpath.basename(root.rstrip("/")))[0]


def files_with_suffix(fs: AbstractFileSystem, root: str, suffixes: tuple[str, ...]) -> list[str]:
    """`root` itself if it is such a file, else every such file below it, in natural order."""
    if fs.isfile(root):
        paths = [root] if root.lower().endswith(suffixes) else []
    else:
        paths = [p for p in fs.find(root) if p.lower().endswith(suffixes)]
    return sorted(paths, key=natural_key)


def relative_name(root: str, path: str) -> str:
    """`path` relative to the source root, without suffix (the file's stem when the root is the file)."""
    rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
    stem, _ = posixpath.splitext(rel)
    return stem


def stable_id(object_key: str) -> int:
    """A stable non-negative integer for an object (48 bits: collisions are negligible, fits any int64)."""
    return int.from_bytes(hashlib.sha256(object_key.encode()).digest()[:6], "little")


def frame_dt(cfg: IngestConfig, native_fps: float = DEFAULT_FPS) -> float:
    """Seconds per frame for a format that carries no time: the configured rate, else the format's own."""
    return 1.0 / (cfg.fps or native_fps)


def to_y_up_metres(frames: np.ndarray, cfg: IngestConfig) -> np.ndarray:
    """Rotate a z-up source to y-up ((x, y, z) -> (x, z, -y), keeping it right-handed) and scale to metres.

    Both are no-ops at the defaults, so positions stay bit-exact when the source is already y-up metres.
    """
    if cfg.up_axis == "z":
        frames = np.stack([frames[..., 0], frames[..., 2], -frames[..., 1]], axis=-1)
    if cfg.scale != 1.0:
        frames = frames * np.float32(cfg.scale)
    return frames


def make_sequence(
    ref: SourceRef, frames: np.ndarray, faces: np.ndarray, dt: float, cfg: IngestConfig
) -> Sequence:
    """The checked `Sequence` of one source sequence; any fault is reported against its file (and key)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3 and not np.isfinite(frames).all():
        t, v = np.argwhere(~np.isfinite(frames))[0][:2]
        raise BadInputError(f"{ref.where}: non-finite vertex position (NaN or inf) at frame {t}, vertex {v}")
    category = cfg.category or ref.category
    try:
        return Sequence(
            name=ref.name,
            frames=to_y_up_metres(frames, cfg),
            faces=faces,
            object_type="ingested",
            category=category,
            object_id=stable_id(ref.object_key),
            split=assign_split(ref.object_key, category, cfg.splits, cfg.seed),
            conditions={"frame_dt": dt},
        )
    except BadInputError as exc:
        raise BadInputError(f"{ref.where}: {exc}") from None
