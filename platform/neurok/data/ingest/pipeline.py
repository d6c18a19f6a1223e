"""`neurok data ingest`: stream the sequences of a public 4D source into a store, in loader shards.

The source is listed first (cheap: no geometry decoded), which fixes the order of sequences and so the
loader shards: shard i holds sequences [i*n, (i+1)*n). A shard is read whole into memory, then written
and committed, so a bad sequence aborts before its shard is committed while earlier shards stay
committed and the store readable. Rerunning the same command resumes: the provenance hash (source,
listing, config) must match, and committed shards are skipped without reading their files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import fsspec
from fsspec import AbstractFileSystem
from tqdm import tqdm

import neurok
from neurok.config import to_dict
from neurok.data.card import dataset_card
from neurok.data.ingest import anime, dfaust, gltf, meshseq, npz
from neurok.data.ingest.common import SourceRef
from neurok.data.schema import Sequence
from neurok.data.splits import SplitSpec
from neurok.data.store import Store, StoreWriter
from neurok.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    format: str = ""  # one of FORMATS
    category: str | None = None  # None: the source's folder or file name
    seed: int = 0  # of the split assignment
    splits: SplitSpec = field(default_factory=SplitSpec)
    sequences_per_shard: int = 16  # whole sequences per loader shard
    fps: float | None = None  # where the format has no time; glTF's sampling rate. None: 30 (DFAUST 60)
    up_axis: str = "y"  # the source's up axis: y, or z (rotated to y-up)
    scale: float = 1.0  # metres per source unit (0.01 for centimetres)


@dataclass(frozen=True)
class Reader:
    discover: Callable[[AbstractFileSystem, str], list[SourceRef]]
    read: Callable[[AbstractFileSystem, SourceRef, IngestConfig], Sequence]


INGESTED = (
    "Ingested from an existing 4D dataset, not simulated: physical conditions are unknown and recorded as 0, "
    "except frame_dt. The source dataset's licence applies to this store."
)

FORMATS: dict[str, Reader] = {
    "objseq": Reader(partial(meshseq.discover, suffix=".obj"), partial(meshseq.read, suffix=".obj")),
    "plyseq": Reader(partial(meshseq.discover, suffix=".ply"), partial(meshseq.read, suffix=".ply")),
    "anime": Reader(anime.discover, anime.read),
    "dfaust": Reader(dfaust.discover, dfaust.read),
    "gltf": Reader(gltf.discover, gltf.read),
    "npz": Reader(npz.discover, npz.read),
}


def check_config(cfg: IngestConfig) -> None:
    if cfg.format not in FORMATS:
        raise ConfigError(f"format: unknown format '{cfg.format}'; known formats: {', '.join(FORMATS)}")
    if cfg.sequences_per_shard < 1:
        raise ConfigError(f"sequences_per_shard: must be at least 1, got {cfg.sequences_per_shard}")
    if cfg.fps is not None and not cfg.fps > 0:
        raise ConfigError(f"fps: must be positive, got {cfg.fps}")
    if cfg.up_axis not in ("y", "z"):
        raise ConfigError(f"up_axis: must be 'y' or 'z', got '{cfg.up_axis}'")
    if not cfg.scale > 0:
        raise ConfigError(f"scale: must be positive, got {cfg.scale}")


def discover(source: str, cfg: IngestConfig) -> tuple[AbstractFileSystem, list[SourceRef]]:
    """The sequences of a source (a local path or fsspec URL), in store order; nothing is decoded."""
    check_config(cfg)
    fs, root = fsspec.url_to_fs(source)
    if not fs.exists(root):
        raise BadInputError(f"{source}: no such file or folder")
    refs = FORMATS[cfg.format].discover(fs, root)
    if not refs:
        raise BadInputError(f"{source}: no {cfg.format} sequences found")
    seen: dict[str, SourceRef] = {}
    for ref in refs:
        if ref.name in seen:
            raise BadInputError(
                f"{ref.where} and {seen[ref.name].where}: both give sequence name '{ref.name}'"
            )
        seen[ref.name] = ref
    return fs, refs


def iter_sequences(source: str, cfg: IngestConfig) -> Iterator[Sequence]:
    """Read a source's sequences one at a time, without a store."""
    fs, refs = discover(source, cfg)
    for ref in refs:
        yield FORMATS[cfg.format].read(fs, ref, cfg)


def provenance(fs: AbstractFileSystem, source: str, refs: list[SourceRef], cfg: IngestConfig) -> dict:
    """Where a store's content came from; its hash decides whether an existing store can be resumed."""
    url = fs.unstrip_protocol(fsspec.url_to_fs(source)[1])
    config = to_dict(cfg)
    content = {"source": url, "sequences": [r.where for r in refs], "config": config}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {
        "tool": "neurok data ingest",
        "version": neurok.__version__,
        "source": url,
        "format": cfg.format,
        "config": config,
        "recipe_hash": digest,  # the key StoreWriter compares before resuming
    }


def ingest(source: str, out: str, cfg: IngestConfig) -> dict:
    """Convert the 4D source at `source` into the store at `out`; returns a summary of what was done."""
    fs, refs = discover(source, cfg)
    prov = provenance(fs, source, refs, cfg)
    reader = FORMATS[cfg.format]
    n = cfg.sequences_per_shard
    batches = [refs[i : i + n] for i in range(0, len(refs), n)]
    written, skipped = [], []
    with StoreWriter(out, attrs={"provenance": prov}) as writer:
        done = writer.completed_shards
        with tqdm(total=len(refs), unit="seq", desc="ingest", disable=None) as bar:
            for shard_id, batch in enumerate(batches):
                if shard_id in done:
                    skipped.append(shard_id)
                else:
                    writer.write_shard(shard_id, [reader.read(fs, ref, cfg) for ref in batch])
                    written.append(shard_id)
                    log.info("%s: loader shard %d committed (%d sequences)", out, shard_id, len(batch))
                bar.update(len(batch))
        card = dataset_card(Store(out), [f"{prov['source']} ({cfg.format})"], [INGESTED])
        writer.finalize(card=card)
    return {
        "store": out,
        "source": prov["source"],
        "format": cfg.format,
        "sequences": card["sequences"],
        "shards": len(batches),
        "written_shards": written,
        "skipped_shards": skipped,
        "card": card,
    }
