"""The training loader: a WebDataset pipeline over a 4D store's loader shards, and its Lightning data module.

What one (rank, DataLoader worker) runs each epoch::

    shard list (permuted by seed, epoch) -> split_by_node -> split_by_worker -> cycle
      -> read shard (one large read per array) -> frame-pair specs -> shuffle buffer -> skip (resume)
      -> sample (surface points carried to the target frame, normalised, augmented) -> batch

- Equal batches on every rank by construction: every (rank, worker) stream cycles through its own shards
  (reshuffled each pass) and stops after exactly `batches_per_worker` batches, so uneven shards can never
  desynchronise DDP ranks (traps.md 6). Fewer shards than ranks x workers is an error at start.
- Order is a pure function of (seed, epoch, rank, worker): every random choice draws from a generator
  seeded by that tuple (plus the sample's position for per-sample choices).
- Resumable: `EpochLoader` counts delivered batches; batch b of an epoch is the (b // W)-th batch of worker
  b % W, so a resumed epoch skips what each worker had delivered and rotates worker ids to keep the order.
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


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


@dataclass(frozen=True)
class PairSpec:
    """One frame pair of one sequence, pointing into its (already read) shard arrays."""

    sequence: int
    rest: int
    target: int
    arrays: dict


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
            partial(self._read_pairs, rng=_rng(*key, 2)),
            wds.shuffle(buffer, initial=buffer, rng=random.Random(shuffle_seed)) if self.train else None,
            partial(self._skip_and_sample, key=key, skip=done * self.cfg.batch_size),
            wds.batched(self.cfg.batch_size, collation_fn=collate, partial=False),
        )
        return islice(iter(pipeline), self.batches_per_worker - done)

    def _read_pairs(self, src, rng: np.random.Generator):
        """Read each shard in one go and emit `pairs_per_sequence` frame pairs per sequence of the split."""
        store = self.store
        split_code = SPLITS.index(self.split)
        for item in src:
            arrays = store.read_shard_arrays(item["shard"])
            for s in store.sequences_in_shard(item["shard"]):
                if store.index[s, _COL["split"]] != split_code:
                    continue
                n_frames = int(store.index[s, _COL["n_frames"]])
                for _ in range(self.cfg.pairs_per_sequence):
                    if not self.train:  # evaluation: the inference setting, a deformation away from frame 0
                        rest, target = 0, int(rng.integers(1, n_frames))
                    else:
                        rest, target = (int(f) for f in rng.choice(n_frames, 2, replace=False))
                        if not self.cfg.augment.frame_order:
                            rest, target = min(rest, target), max(rest, target)
                    yield PairSpec(int(s), rest, target, arrays)

    def _skip_and_sample(self, src, key: tuple, skip: int):
        for k, spec in enumerate(src):
            if k >= skip:  # skipped specs are never turned into samples: resuming costs only the reads
                yield self.make_sample(spec, _rng(*key, 3, k))

    def make_sample(self, spec: PairSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, store, s = self.cfg, self.store, spec.sequence
        row = store.index[s]
        n_frames, n_vertices = int(row[_COL["n_frames"]]), int(row[_COL["n_vertices"]])
        offset, face_offset = int(row[_COL["vertex_offset"]]), int(row[_COL["face_offset"]])
        frames = spec.arrays["vertices"][offset : offset + n_frames * n_vertices].reshape(
            n_frames, n_vertices, 3
        )
        faces = spec.arrays["faces"][face_offset : face_offset + int(row[_COL["n_faces"]])]
        rest, target = sampling.normalise(
            frames[[spec.rest, spec.target]], store.norm_center[s], store.norm_scale[s]
        )

        # Drawn even when off, so switching augmentation off changes nothing else about a sample.
        angle, scale = rng.uniform(0.0, 2 * np.pi), rng.uniform(*cfg.augment.scale)
        if self.train and (cfg.augment.rotate or cfg.augment.scale[0] != cfg.augment.scale[1]):
            rotation = sampling.rotation_about_up(angle if cfg.augment.rotate else 0.0) * np.float32(scale)
            rest, target = rest @ rotation.T, target @ rotation.T

        n_points = cfg.points + cfg.queries
        face, bary = sampling.sample_surface(rest, faces, n_points, rng)
        both = sampling.interpolate(np.concatenate([rest, target], axis=1), faces, face, bary)
        on_rest, carried = both[:, :3], both[:, 3:]  # the same material points on both frames
        vertex = rng.choice(n_vertices, cfg.vertices, replace=n_vertices < cfg.vertices)
        sample = {
            "points": on_rest[: cfg.points],
            "displacement": carried[: cfg.points] - on_rest[: cfg.points],
            "queries": on_rest[cfg.points :],
            "query_displacement": carried[cfg.points :] - on_rest[cfg.points :],
            "vertices": rest[vertex],
            "vertex_displacement": target[vertex] - rest[vertex],
            "conditions": store.conditions[s].astype(np.float32),
            "category": np.int64(row[_COL["category"]]),
            "object_type": np.int64(row[_COL["object_type"]]),
            "sequence": np.int64(s),
            "frames": np.array([spec.rest, spec.target], np.int64),
        }
        if self.dual_quaternion:
            dq = sampling.vertex_dual_quaternions(rest, target, faces)
            sample["dual_quaternion"] = sampling.blend_dual_quaternions(
                sampling.interpolate(dq, faces, face[: cfg.points], bary[: cfg.points])
            )
        return sample


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
            generator=torch.Generator().manual_seed(self.stream.cfg.seed),
        )
        for batch in islice(loader, len(self) - self.batch):
            if self.advance:
                self.batch += 1
            yield batch

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
