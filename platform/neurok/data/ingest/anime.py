"""DeformingThings4D `.anime` files (`anime`).

Layout, little-endian: int32 nf, nv, nt; float32 v0[nv*3] (frame 0); int32 faces[nt*3]; float32
offsets[(nf-1)*nv*3], frames 1..nf-1 relative to frame 0. A source is one file or a folder searched
at any depth. DeformingThings4D names sequences `<objectID>_<actionID>` (e.g. `bear3EP_Agression`),
so the part before the first underscore is the object: all actions of one animal share a split.
The files carry no time (`fps` sets it) and no units; positions are taken as y-up metres unless
`up_axis`/`scale` say otherwise.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

import numpy as np
from fsspec import AbstractFileSystem

from neurok.data.ingest.common import SourceRef, files_with_suffix, frame_dt, make_sequence, source_label
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig

HEADER_BYTES = 12


def discover(fs: AbstractFileSystem, root: str) -> list[SourceRef]:
    category = source_label(root)
    refs = []
    for path in files_with_suffix(fs, root, (".anime",)):
        name = posixpath.splitext(posixpath.basename(path))[0]
        refs.append(SourceRef(name=name, path=path, object_key=name.split("_")[0], category=category))
    return refs


def read(fs: AbstractFileSystem, ref: SourceRef, cfg: IngestConfig) -> Sequence:
    data = fs.cat_file(ref.path)
    if len(data) < HEADER_BYTES:
        raise BadInputError(f"{ref.path}: {len(data)} bytes, too short for the 12-byte .anime header")
    nf, nv, nt = (int(n) for n in np.frombuffer(data, "<i4", count=3))
    if nf < 1 or nv < 1 or nt < 0:
        raise BadInputError(
            f"{ref.path}: header says {nf} frames, {nv} vertices, {nt} faces; not an .anime file?"
        )
    expected = HEADER_BYTES + 4 * (nv * 3 + nt * 3 + (nf - 1) * nv * 3)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise BadInputError(
            f"{ref.path}: {state}: {len(data)} bytes, but its header ({nf} frames, {nv} vertices, "
            f"{nt} faces) needs {expected}"
        )
    offset = HEADER_BYTES
    v0 = np.frombuffer(data, "<f4", count=nv * 3, offset=offset).reshape(nv, 3)
    offset += v0.nbytes
    faces = np.frombuffer(data, "<i4", count=nt * 3, offset=offset).reshape(nt, 3)
    offset += faces.nbytes
    deltas = np.frombuffer(data, "<f4", count=(nf - 1) * nv * 3, offset=offset).reshape(nf - 1, nv, 3)
    frames = np.concatenate([v0[None], v0[None] + deltas])
    return make_sequence(ref, frames, faces, frame_dt(cfg), cfg)
