"""DFAUST-style HDF5 registrations (`dfaust`), e.g. `registrations_f.hdf5`.

Every dataset but `faces` is one sequence, keyed `<subject>_<motion>` (e.g. `50004_jiggle_on_toes`)
with shape (V, 3, T); `faces` (F, 3) is shared by all. A source is one file or a folder of
`.hdf5`/`.h5` files. The subject id before the first underscore is the object, so all motions of one
person share a split. DFAUST registrations are in metres in the SMPL frame (y-up), so no conversion is
needed; they were captured at 60 frames per second, used unless `fps` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np
from fsspec import AbstractFileSystem

from neurok.data.ingest.common import SourceRef, files_with_suffix, frame_dt, make_sequence, source_label
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig

NATIVE_FPS = 60.0
FACES_KEY = "faces"


def discover(fs: AbstractFileSystem, root: str) -> list[SourceRef]:
    category = source_label(root)
    refs = []
    for path in files_with_suffix(fs, root, (".hdf5", ".h5")):
        with fs.open(path, "rb") as raw, _open_hdf5(raw, path) as f:
            keys = sorted(k for k in f if k != FACES_KEY)
        refs += [
            SourceRef(name=k, path=path, object_key=k.split("_")[0], category=category, key=k) for k in keys
        ]
    return refs


def read(fs: AbstractFileSystem, ref: SourceRef, cfg: IngestConfig) -> Sequence:
    with fs.open(ref.path, "rb") as raw, _open_hdf5(raw, ref.path) as f:
        if FACES_KEY not in f:
            raise BadInputError(
                f"{ref.path}: has no '{FACES_KEY}' dataset; DFAUST files keep the shared faces there"
            )
        data = f[ref.key]
        if not isinstance(data, h5py.Dataset) or data.ndim != 3 or data.shape[1] != 3:
            shape = getattr(data, "shape", "a group")
            raise BadInputError(f"{ref.where}: shape {shape}, expected (V, 3, T) as in DFAUST registrations")
        frames = np.asarray(data[...]).transpose(2, 0, 1)
        faces = np.asarray(f[FACES_KEY][...])
    return make_sequence(ref, frames, faces, frame_dt(cfg, NATIVE_FPS), cfg)


def _open_hdf5(raw, path: str) -> h5py.File:
    try:
        return h5py.File(raw, "r")
    except OSError as exc:
        raise BadInputError(f"{path}: not a readable HDF5 file ({exc})") from None
