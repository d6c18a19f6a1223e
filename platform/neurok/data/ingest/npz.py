"""NumPy archives (`npz`): `frames` (T, V, 3) and `faces` (F, 3), optionally `fps` (a scalar).

A source is one `.npz` file or a folder of them at any depth; each file is one sequence and its own
object. The file's `fps` wins over the configured one. Positions are taken as y-up metres unless
`up_axis`/`scale` say otherwise.
"""

from __future__ import annotations

import zipfile
from typing import TYPE_CHECKING

import numpy as np
from fsspec import AbstractFileSystem

from neurok.data.ingest.common import (
    SourceRef,
    files_with_suffix,
    frame_dt,
    make_sequence,
    relative_name,
    source_label,
)
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig


def discover(fs: AbstractFileSystem, root: str) -> list[SourceRef]:
    category = source_label(root)
    refs = []
    for path in files_with_suffix(fs, root, (".npz",)):
        name = relative_name(root, path)
        refs.append(SourceRef(name=name, path=path, object_key=name, category=category))
    return refs


def read(fs: AbstractFileSystem, ref: SourceRef, cfg: IngestConfig) -> Sequence:
    with fs.open(ref.path, "rb") as raw:
        try:
            archive = np.load(raw, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise BadInputError(f"{ref.path}: not a readable .npz archive ({exc})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise BadInputError(
                f"{ref.path}: holds a single array, not an .npz archive of 'frames' and 'faces'"
            )
        with archive:
            missing = [k for k in ("frames", "faces") if k not in archive.files]
            if missing:
                raise BadInputError(
                    f"{ref.path}: no {' or '.join(repr(k) for k in missing)} array; an npz sequence needs "
                    f"'frames' (T, V, 3) and 'faces' (F, 3), found {archive.files}"
                )
            frames, faces = archive["frames"], archive["faces"]
            fps = archive["fps"] if "fps" in archive.files else None
    if fps is not None and not (fps.size == 1 and float(fps) > 0):
        raise BadInputError(f"{ref.path}: 'fps' is {fps}; it must be one positive number")
    dt = 1.0 / float(fps) if fps is not None else frame_dt(cfg)
    return make_sequence(ref, frames, faces, dt, cfg)
