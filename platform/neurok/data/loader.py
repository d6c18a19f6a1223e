"""The training loader: a WebDataset pipeline over a 4D store's loader shards, and its Lightning data module.

What one (rank, DataLoader worker) runs each epoch::

    shard list (permuted by seed, epoch) -> split_by_node -> split_by_worker -> cycle
      -> read shard (one large read per array) -> per sequence: frame pairs -> samples (surface points
         carried to the target frame, normalised, augmented; all pairs of a sequence at once)
      -> shuffle buffer -> skip (resume) -> batch

- Equal batches on every rank by construction: every (rank, worker) stream cycles through its own shards
  (reshuffled each pass) and stops after exactly `batches_per_worker` batches, so uneven shards can never
  desynchronise DDP ranks (traps.md 6). Fewer shards than ranks x workers is an error at start.
- Order and content are a pure function of (seed, epoch, rank, worker): every random choice draws, in
  stream order, from generators seeded by that tuple.
- Resumable: `EpochLoader` counts delivered batches; batch b of an epoch is the (b // W)-th batch of worker
  b % W, so a resumed epoch redraws and drops what each worker had delivered (sampling is cheap next to the
  epoch's training) and rotates worker ids to keep the order.
- Workers open the store lazily in their own process (`spawn`/`forkserver`, never fork: zarr runs an
  event-loop thread). A `memory://` store lives in one process, so it needs `num_workers=0`.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from neurok.data import sampling
from neurok.data.schema import INDEX_FIELDS, SPLITS
from neurok.data.store import Store
from neurok.errors import BadInputError

log = logging.getLogger(__name__)

_COL = {name: i for i, name in enumerate(INDEX_FIELDS)}
LOADER_ARRAYS = ("vertices", "faces")  # a sample needs no vertex flags: they are not read


@dataclass
class AugmentConfig:
    rotate: bool = True  # random rotation about the up (y) axis
    scale: list[float] = field(default_factory=lambda: [0.8, 1.2])  # uniform random global scale
    frame_order: bool = True  # either frame of a pair may be the input shape M0


@dataclass
class LoaderConfig:
    store: str = "datasets/out/default.zarr"
    batch_size: int = 16
    points: int = 1024  # P surface points of M0 seen by both encoders
    queries: int = 1024  # decoder query points, supervised with their carried-over deformation
    vertices: int = 256  # mesh vertices per sample, driven by their K nearest queries (vertex error)
    pairs_per_sequence: int = 8  # frame pairs drawn from a sequence each time its shard is read (ours)
    shuffle_buffer: int = 512
    num_workers: int = 2
    start_method: str = "forkserver"  # forkserver | spawn
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def split_by_node(src, rank: int, world: int):
    """wds.split_by_node with the rank given explicitly: wds reads it from RANK/WORLD_SIZE or
    torch.distributed, which DataLoader workers started by spawn/forkserver do not have."""
    yield from islice(src, rank, None, world)


def split_by_worker(src, worker: int, n_workers: int):
    """wds.split_by_worker with the worker given explicitly (resume rotates worker ids, see EpochLoader)."""
    yield from islice(src, worker, None, n_workers)


def cycle(src, rng: np.random.Generator):
    """Repeat a worker's shards, reshuffled on each pass after the first, for as long as batches are drawn."""
    items = list(src)
    yield from items
    while True:
        yield from (items[i] for i in rng.permutation(len(items)))


def skip(src, n: int):
    """Drop the first n samples: those a resumed worker had delivered (redrawn, so what follows matches)."""
    yield from islice(src, n, None)


def collate(samples: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def as_numpy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DataLoader's collate_fn in the workers: keep numpy. Pickled numpy crosses the worker pipe ~10x
    cheaper than tensors, which take a shared-memory segment and a file-descriptor handover each."""
    return batch


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in batch.items()}


class FramePairStream(IterableDataset):
    """The WebDataset pipeline of one rank for one epoch (`epoch`, `start_batch` are set by EpochLoader)."""

    def __init__(
        self,
        cfg: LoaderConfig,
        split: str,
        shards: list[int],
        batches_per_worker: int,
        rank: int,
        world: int,
        train: bool,
        dual_quaternion: bool,
    ):
        self.cfg, self.split, self.shards = cfg, split, list(shards)
        self.batches_per_worker = batches_per_worker
        self.rank, self.world, self.train, self.dual_quaternion = rank, world, train, dual_quaternion
        self.epoch = 0
        self.start_batch = 0
        self._store: Store | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # workers reopen the store themselves

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.cfg.store)
        return self._store

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        logical = (worker + self.start_batch) % n_workers
        done = max(0, -(-(self.start_batch - logical) // n_workers))  # batches this worker had delivered
        key = (self.cfg.seed, self.epoch, self.rank, logical)
        order = range(len(self.shards))
        if self.train:  # the same permutation on every rank, so that split_by_node partitions it
            order = _rng(self.cfg.seed, self.epoch).permutation(len(self.shards))
        shard_list = [{"shard": self.shards[i]} for i in order]
        # A buffer beyond what the worker yields in an epoch would only read ahead into the next pass.
        buffer = min(self.cfg.shuffle_buffer, self.batches_per_worker * self.cfg.batch_size)
        shuffle_seed = int(np.random.SeedSequence(list(key) + [1]).generate_state(1)[0])
        pipeline = wds.DataPipeline(
            partial(iter, shard_list),  # a bare list would be taken as a list of stages
            partial(split_by_node, rank=self.rank, world=self.world),
            partial(split_by_worker, worker=logical, n_workers=n_workers),
            partial(cycle, rng=_rng(*key, 0)),
            partial(self._read_samples, rng=_rng(*key, 2)),
            wds.shuffle(buffer, initial=buffer, rng=random.Random(shuffle_seed)) if self.train else None,
            partial(skip, n=done * self.cfg.batch_size),
            wds.batched(self.cfg.batch_size, collation_fn=collate, partial=False),
        )
        return islice(iter(pipeline), self.batches_per_worker - done)

    def _read_samples(self, src, rng: np.random.Generator):
        """Read each shard in one go; make `pairs_per_sequence` samples of each of its split's sequences."""
        store = self.store
        split_code = SPLITS.index(self.split)
        for item in src:
            arrays = store.read_shard_arrays(item["shard"], LOADER_ARRAYS)
            for s in store.sequences_in_shard(item["shard"]):
                if store.index[s, _COL["split"]] == split_code:
                    pairs = self.frame_pairs(int(store.index[s, _COL["n_frames"]]), rng)
                    yield from self.make_samples(int(s), arrays, pairs, rng)

    def frame_pairs(self, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        """(pairs_per_sequence, 2) distinct (rest, target) frame indices of a sequence."""
        n = self.cfg.pairs_per_sequence
        if not self.train:  # evaluation: the inference setting, a deformation away from frame 0
            return np.stack([np.zeros(n, np.int64), rng.integers(1, n_frames, n)], axis=1)
        rest = rng.integers(n_frames, size=n)
        target = (rest + rng.integers(1, n_frames, n)) % n_frames  # uniform over the other frames
        pairs = np.stack([rest, target], axis=1)
        if not self.cfg.augment.frame_order:
            pairs.sort(axis=1)
        return pairs

    def make_samples(
        self, sequence: int, arrays: dict, pairs: np.ndarray, rng: np.random.Generator
    ) -> list[dict[str, np.ndarray]]:
        """One sample per frame pair (K, 2) of `sequence`, whose shard's arrays (numpy or zarr) are `arrays`.

        The K pairs are built together, one numpy call per step: per-pair calls on arrays this small would
        cost more in call overhead than in arithmetic.
        """
        store, s, n_points = self.store, sequence, self.cfg.points
        row = store.index[s]
        n_frames, n_vertices = int(row[_COL["n_frames"]]), int(row[_COL["n_vertices"]])
        offset, face_offset = int(row[_COL["vertex_offset"]]), int(row[_COL["face_offset"]])
        frames = arrays["vertices"][offset : offset + n_frames * n_vertices].reshape(n_frames, n_vertices, 3)
        faces = arrays["faces"][face_offset : face_offset + int(row[_COL["n_faces"]])]
        both = sampling.normalise(frames[pairs], store.norm_center[s], store.norm_scale[s])
        rest, target = self._augment(both, rng).transpose(1, 0, 2, 3)  # (K, V, 3) each
        # (K, V, 6) positions and displacements: one interpolation carries the same points on both frames.
        values = np.concatenate([rest, target - rest], axis=-1)
        # Area ratios survive the rotation and uniform scale: sampling the augmented rest frame is exact.
        face, bary = sampling.sample_surfaces(rest, faces, n_points + self.cfg.queries, rng)
        surface = sampling.interpolate(values, faces, face, bary)  # (K, points + queries, 6)
        at_vertices = sampling.gather(values, self._vertex_choice(len(pairs), n_vertices, rng))
        per_pair = {
            "points": surface[:, :n_points, :3],
            "displacement": surface[:, :n_points, 3:],
            "queries": surface[:, n_points:, :3],
            "query_displacement": surface[:, n_points:, 3:],
            "vertices": at_vertices[..., :3],
            "vertex_displacement": at_vertices[..., 3:],
            "frames": pairs.astype(np.int64),
        }
        if self.dual_quaternion:
            per_pair["dual_quaternion"] = self._dual_quaternions(rest, target, faces, face, bary)
        shared = {
            "conditions": store.conditions[s].astype(np.float32),
            "category": np.int64(row[_COL["category"]]),
            "object_type": np.int64(row[_COL["object_type"]]),
            "sequence": np.int64(s),
        }
        return [{key: value[k] for key, value in per_pair.items()} | shared for k in range(len(pairs))]

    def _dual_quaternions(self, rest, target, faces, face, bary) -> np.ndarray:
        """(K, points, 8): per-vertex rigid motions rest -> target, blended at the input points."""
        pairs = zip(rest, target, strict=True)
        dq = np.stack([sampling.vertex_dual_quaternions(r, t, faces) for r, t in pairs])
        n = self.cfg.points
        return sampling.blend_dual_quaternions(sampling.interpolate(dq, faces, face[:, :n], bary[:, :n]))

    def _augment(self, both: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random rotation about up and a uniform scale per pair, the same for both frames (K, 2, V, 3)."""
        cfg, n = self.cfg.augment, len(both)
        # Drawn even when off, so switching augmentation off changes nothing else about a sample.
        angle, scale = rng.uniform(0.0, 2 * np.pi, n), rng.uniform(*cfg.scale, n).astype(np.float32)
        if not self.train or not (cfg.rotate or cfg.scale[0] != cfg.scale[1]):
            return both
        rotation = sampling.rotation_about_up(angle if cfg.rotate else np.zeros(n)) * scale[:, None, None]
        return both @ rotation[:, None].swapaxes(-1, -2)

    def _vertex_choice(self, n: int, n_vertices: int, rng: np.random.Generator) -> np.ndarray:
        """(n, vertices) mesh vertices per sample: distinct unless the mesh has fewer than asked for."""
        if n_vertices < self.cfg.vertices:
            return rng.integers(n_vertices, size=(n, self.cfg.vertices))
        order = rng.permuted(np.broadcast_to(np.arange(n_vertices), (n, n_vertices)), axis=1)
        return order[:, : self.cfg.vertices]


class EpochLoader:
    """Exactly `len(self)` batches per epoch on every rank; its position (epoch, batch) is checkpointable.

    Lightning saves `state_dict()` with the fit loop and calls `load_state_dict()` on resume. The DataLoader
    gets its own torch generator, so creating one never draws from the global RNG the model samples from.
    """

    def __init__(self, stream: FramePairStream, num_workers: int, start_method: str, advance: bool = True):
        self.stream, self.workers, self.start_method, self.advance = (
            stream,
            num_workers,
            start_method,
            advance,
        )
        self.epoch = 0
        self.batch = 0

    def __len__(self) -> int:
        return self.stream.batches_per_worker * max(self.workers, 1)

    def _layout(self) -> list[int]:
        return [self.stream.world, self.workers, self.stream.batches_per_worker, self.stream.cfg.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        self.stream.epoch, self.stream.start_batch = self.epoch, self.batch
        context = None
        if self.workers:
            context = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":  # workers fork from a server that has our imports loaded
                context.set_forkserver_preload([__name__])
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.workers,
            multiprocessing_context=context,
            collate_fn=as_numpy,
            generator=torch.Generator().manual_seed(self.stream.cfg.seed),
        )
        for batch in islice(loader, len(self) - self.batch):
            if self.advance:
                self.batch += 1
            yield to_tensors(batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "layout": self._layout()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if list(state.get("layout", [])) != self._layout():
            log.warning(
                "resuming with another loader layout (ranks, workers, batches/worker, batch size) %s -> %s: "
                "epoch %d restarts from its first batch",
                state.get("layout"),
                self._layout(),
                self.epoch,
            )
            self.batch = 0


def make_loader(
    cfg: LoaderConfig,
    split: str = "train",
    rank: int = 0,
    world: int = 1,
    dual_quaternion: bool = False,
    store: Store | None = None,
) -> EpochLoader:
    """The loader of one rank for one split. Training splits augment, advance epochs and can resume;
    evaluation splits replay the same batches every time."""
    store = store or Store(cfg.store)
    train = split == "train"
    if split not in SPLITS:
        raise BadInputError(f"data split '{split}' is not one of {SPLITS}")
    sequences = np.flatnonzero(store.column("split") == SPLITS.index(split))
    if len(sequences) == 0:
        raise BadInputError(f"{cfg.store}: no sequences in split '{split}'")
    shards = sorted({int(s) for s in store.column("shard")[sequences]})
    workers = cfg.num_workers
    if len(shards) < world * max(workers, 1):
        if train or len(shards) < world:
            raise BadInputError(
                f"{cfg.store}: {len(shards)} loader shards hold '{split}' sequences, fewer than ranks x "
                f"workers = {world} x {max(workers, 1)}; every worker needs a shard of its own. Lower "
                "data.num_workers "
                "or write the store with fewer sequences per shard"
            )
        workers = len(shards) // world  # evaluation only: fewer workers rather than an error
    pairs = len(sequences) * cfg.pairs_per_sequence
    per_worker = max(1, pairs // (world * max(workers, 1) * cfg.batch_size))
    stream = FramePairStream(cfg, split, shards, per_worker, rank, world, train, dual_quaternion)
    if workers == 0:
        stream._store = store  # same process: no need to reopen
    return EpochLoader(stream, workers, cfg.start_method, advance=train)


class FramePairDataModule(pl.LightningDataModule):
    """Train/val/test loaders of one store, split by object through the store's `split` column."""

    def __init__(self, cfg: LoaderConfig, dual_quaternion: bool = False):
        super().__init__()
        self.cfg, self.dual_quaternion = cfg, dual_quaternion
        self.store: Store | None = None

    def setup(self, stage: str | None = None) -> None:
        self.store = self.store or Store(self.cfg.store)

    def _loader(self, split: str) -> EpochLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.setup()
        return make_loader(self.cfg, split, rank, world, self.dual_quaternion, self.store)

    def has_split(self, split: str) -> bool:
        self.setup()
        return bool(np.any(self.store.column("split") == SPLITS.index(split)))

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochLoader | list:
        if not self.has_split("val"):
            log.warning("%s: no validation sequences; validation is skipped", self.cfg.store)
            return []
        return self._loader("val")

    def test_dataloader(self) -> EpochLoader | list:
        return self._loader("test") if self.has_split("test") else []
