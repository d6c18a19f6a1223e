"""The training loader: a WebDataset pipeline over a 4D store's loader shards, and its Lightning data module.

What one (rank, DataLoader worker) runs each epoch::

    shard list (permuted by seed, epoch) -> split_by_node -> split_by_worker -> cycle
      -> read shard (one large read per array) -> frame pairs of its split's sequences -> samples (surface
         points carried to the target frame, normalised, augmented; every pair of the shard at once, by one
         compiled kernel writing each sample's fields into one float32 and one int64 row)
      -> shuffle buffer -> skip (resume) -> batch (stacked into a shared-memory slot: `BatchRing`)

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

import contextlib
import logging
import math
import multiprocessing
import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from multiprocessing.shared_memory import SharedMemory

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from neurok.data import sampling
from neurok.data.schema import INDEX_FIELDS, SPLITS
from neurok.data.store import Store
from neurok.errors import BadInputError, require

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
    # Batches a worker may have ready ahead of the consumer (the DataLoader's prefetch_factor). A worker's
    # output is bursty (a shard read, then its samples), and batches are taken from the workers in turn:
    # with a short prefetch the main process waits on one worker while the other idles. Each worker holds
    # prefetch + 2 batches in shared memory (BatchRing).
    prefetch: int = 16
    start_method: str = "forkserver"  # forkserver | spawn
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # The share of training pairs whose input shape is frame 0, the undeformed rest state that evaluation,
    # IK and rollouts start from. At 0 (any frame: the paper's random pairs), a model that reproduced 0.23
    # of the change of shape between two frames reproduced 0.01 of it from frame 0 (README, "From the
    # rest state").
    from_rest: float = 0.0

    def __post_init__(self) -> None:
        require(0 <= self.from_rest <= 1, "data.from_rest", self.from_rest, "must be in [0, 1]")
        for key in ("batch_size", "points", "queries", "vertices", "pairs_per_sequence", "prefetch"):
            require(getattr(self, key) >= 1, f"data.{key}", getattr(self, key), "must be at least 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be 0 or more")


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
    """The batch's fields (B, ...) as views of its stacked float32 and int64 rows."""
    floats, ints = (np.stack([s[kind] for s in samples]) for kind in ("floats", "ints"))
    return _fields(floats, ints, samples[0]["layout"])


def _fields(floats: np.ndarray, ints: np.ndarray, layout: list) -> dict[str, np.ndarray]:
    """Views of float32 and int64 rows (B, L) as the fields (B, ...) of their layout."""
    rows, start, fields = {np.float32: floats, np.int64: ints}, {np.float32: 0, np.int64: 0}, {}
    for key, kind, shape in layout:
        size = math.prod(shape)
        fields[key] = rows[kind][:, start[kind] : start[kind] + size].reshape(len(floats), *shape)
        start[kind] += size
    return fields


def _row_length(layout: list, kind: type) -> int:
    return sum(math.prod(shape) for _, dtype, shape in layout if dtype is kind)


def as_numpy(batch):
    """The DataLoader's collate_fn: batches are already made (a `RingSlot` from a worker)."""
    return batch


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Contiguous tensors: collate's views are copied here without workers (a `BatchRing` copies them out)."""
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}


@dataclass(frozen=True)
class RingSlot:
    """What a worker sends for a batch: where its stacked rows lie in the worker's ring, and their layout."""

    ring: str
    slots: int
    slot: int
    shape: tuple[int, int, int]  # batch size, float32 and int64 row lengths
    layout: list


class BatchRing:
    """Batches from a DataLoader worker to the main process through a ring of shared-memory slots.

    Pickling a batch (~0.5 MB) through the worker's result pipe costs more CPU than making it: several copies
    on each side and a context switch per 64 KiB. Instead the worker (`put`) stacks a batch's rows straight
    into the next slot and sends only a `RingSlot`; the main process (`RingReader.take`) copies the fields out
    and frees the slot. A worker is at most its DataLoader prefetch ahead of the main process, so with two
    slots more than that (the batch being copied out, the one being made) `put` never waits. The worker
    creates its ring, named by the main process, on its first batch; the main process unlinks it when the
    epoch ends.
    """

    def __init__(self, name: str, slots: int, workers: int):
        self.name, self.slots, self.workers, self.produced = name, slots, workers, 0
        self.shm: SharedMemory | None = None

    def put(self, samples: list[dict]) -> RingSlot:
        shape = (len(samples), samples[0]["floats"].size, samples[0]["ints"].size)
        if self.shm is None:
            size = _ring_bytes(self.slots, shape)
            _check_shared_memory(size * self.workers, self.slots)
            self.shm = SharedMemory(self.name, create=True, size=size)
        slot = self.produced % self.slots
        consumed, floats, ints = _ring_arrays(self.shm, self.slots, shape, slot)
        while self.produced - consumed[0] >= self.slots:  # the main process has not copied this slot out yet
            time.sleep(0.001)
        np.stack([s["floats"] for s in samples], out=floats)
        np.stack([s["ints"] for s in samples], out=ints)
        self.produced += 1
        return RingSlot(self.name, self.slots, slot, shape, samples[0]["layout"])


class RingReader:
    """The main process's end of the rings of `workers` workers named `prefix`-worker."""

    def __init__(self, prefix: str, workers: int):
        self.prefix, self.workers = prefix, workers
        self.rings: dict[str, SharedMemory] = {}

    def take(self, at: RingSlot) -> dict[str, np.ndarray]:
        """Copy a batch out of its slot, and free the slot."""
        if at.ring not in self.rings:
            self.rings[at.ring] = SharedMemory(at.ring)
        consumed, floats, ints = _ring_arrays(self.rings[at.ring], at.slots, at.shape, at.slot)
        batch = {key: value.copy() for key, value in _fields(floats, ints, at.layout).items()}
        consumed[0] += 1
        return batch

    def close(self) -> None:
        """Unmap and unlink every worker's ring, those of workers whose batches were never taken included."""
        for worker in range(self.workers):
            name = ring_name(self.prefix, worker)
            with contextlib.suppress(FileNotFoundError):
                shm = self.rings.pop(name, None) or SharedMemory(name)
                shm.close()
                shm.unlink()


def _check_shared_memory(needed: int, slots: int) -> None:
    """Writing a ring beyond what /dev/shm holds kills the worker with SIGBUS: fail first, and say why."""
    if not os.path.isdir("/dev/shm"):
        return
    stat = os.statvfs("/dev/shm")
    free = stat.f_bavail * stat.f_frsize
    if needed > free:
        raise BadInputError(
            f"loader: the workers' batch rings need {needed / 2**20:.0f} MiB of shared memory ({slots} "
            f"batches each, data.prefetch + 2) and /dev/shm has {free / 2**20:.0f} MiB free: lower "
            "data.prefetch, data.num_workers or data.batch_size, or give the container a larger /dev/shm"
        )


def ring_name(prefix: str, worker: int) -> str:
    return f"{prefix}-{worker}"


def _ring_bytes(slots: int, shape: tuple[int, int, int]) -> int:
    batch, n_floats, n_ints = shape
    return 8 + slots * batch * (4 * n_floats + 8 * n_ints)


def _ring_arrays(shm: SharedMemory, slots: int, shape: tuple[int, int, int], slot: int):
    """Views of a ring: its count of batches copied out (1,) int64, and one slot's float and int rows."""
    batch, n_floats, n_ints = shape
    slot_bytes = batch * (4 * n_floats + 8 * n_ints)
    start = 8 + slot * slot_bytes
    floats = np.ndarray((batch, n_floats), np.float32, shm.buf, start)
    ints = np.ndarray((batch, n_ints), np.int64, shm.buf, start + 4 * batch * n_floats)
    return np.ndarray((1,), np.int64, shm.buf), floats, ints


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
        remove_rigid: bool = False,
    ):
        self.cfg, self.split, self.shards = cfg, split, list(shards)
        self.batches_per_worker = batches_per_worker
        self.rank, self.world, self.train, self.dual_quaternion = rank, world, train, dual_quaternion
        # the target frame's best rigid motion onto the rest frame is undone: the model sees deformation alone
        self.remove_rigid = remove_rigid
        self.epoch = 0
        self.start_batch = 0
        self.ring_prefix = ""  # named per epoch by EpochLoader
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
            wds.batched(self.cfg.batch_size, collation_fn=self._collation(info), partial=False),
        )
        return islice(iter(pipeline), self.batches_per_worker - done)

    def _collation(self, worker_info):
        """In a worker, batches go to the main process through a shared-memory ring (see BatchRing)."""
        if worker_info is None:
            return collate
        name = ring_name(self.ring_prefix, worker_info.id)
        return BatchRing(name, self.cfg.prefetch + 2, worker_info.num_workers).put

    def _read_samples(self, src, rng: np.random.Generator):
        """Read each shard in one go; make `pairs_per_sequence` samples of each of its split's sequences."""
        store = self.store
        split_code = SPLITS.index(self.split)
        for item in src:
            arrays = store.read_shard_arrays(item["shard"], LOADER_ARRAYS)
            sequences = store.sequences_in_shard(item["shard"])
            sequences = sequences[store.index[sequences, _COL["split"]] == split_code]
            if len(sequences):
                sequences = np.repeat(sequences, self.cfg.pairs_per_sequence)
                pairs = self.frame_pairs(store.index[sequences, _COL["n_frames"]], rng)
                yield from self.make_samples(sequences, arrays, pairs, rng)

    def frame_pairs(self, n_frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(K, 2) distinct (rest, target) frame indices of K sequences with n_frames (K,) frames."""
        if not self.train:  # evaluation: the inference setting, a deformation away from frame 0
            return np.stack([np.zeros_like(n_frames), rng.integers(1, n_frames)], axis=1)
        rest = rng.integers(n_frames)
        target = (rest + rng.integers(1, n_frames)) % n_frames  # uniform over the other frames
        pairs = np.stack([rest, target], axis=1)
        if not self.cfg.augment.frame_order:
            pairs.sort(axis=1)
        if self.cfg.from_rest > 0:  # drawn only when on, so the default's pairs are the same as before
            at_rest = rng.random(len(n_frames)) < self.cfg.from_rest
            pairs[at_rest, 0] = 0
            pairs[at_rest, 1] = rng.integers(1, n_frames[at_rest])
        return pairs

    def make_samples(
        self,
        sequences: np.ndarray,
        arrays: dict[str, np.ndarray],
        pairs: np.ndarray,
        rng: np.random.Generator,
        first_rows: tuple[int, int] = (0, 0),
    ) -> list[dict]:
        """One packed sample per frame pair pairs[k] (K, 2) of sequences[k] (K,). arrays["vertices"] and
        arrays["faces"] hold their shard's vertex and face rows from `first_rows` on (a partial read starts
        there).

        All K pairs, of every sequence of a shard, are made by one compiled kernel writing straight into the
        packed rows: per-sequence calls on arrays this small cost more in call overhead than in arithmetic.
        """
        store, cfg, n = self.store, self.cfg, len(pairs)
        index = store.index[sequences]
        rows = index[:, [_COL["vertex_offset"], _COL["n_vertices"], _COL["face_offset"], _COL["n_faces"]]]
        rows = (rows - [first_rows[0], 0, first_rows[1], 0]).astype(np.int64)
        center, scale = store.norm_center[sequences], store.norm_scale[sequences]
        augmentation = self._augmentation(n, rng)
        poses = None
        if self.remove_rigid:
            poses = (self._poses(arrays, rows[k], pairs[k], center[k], scale[k]) for k in range(n))
        maps = sampling.frame_maps(augmentation, poses)
        layout = self._layout(store.conditions.shape[1])
        floats, ints = (np.empty((n, _row_length(layout, kind)), kind) for kind in (np.float32, np.int64))
        # Area ratios survive the rotation and uniform scale: sampling the augmented rest frame is exact.
        uniform = sampling.surface_draws(rng, n, cfg.points + cfg.queries)
        sampling.pair_samples(
            arrays["vertices"],
            arrays["faces"],
            rows,
            pairs,
            center,
            scale,
            maps,
            uniform,
            rng.random((n, cfg.vertices)),
            floats,
        )
        fields = _fields(floats, ints, layout)
        fields["conditions"][:] = store.conditions[sequences]
        if self.dual_quaternion:
            for k, row in enumerate(rows):
                fields["dual_quaternion"][k] = self._dual_quaternions(
                    arrays, row, pairs[k], center[k], scale[k], maps[k], uniform[k]
                )
        fields["frames"][:] = pairs
        fields["category"][:] = index[:, _COL["category"]]
        fields["object_type"][:] = index[:, _COL["object_type"]]
        fields["sequence"][:] = sequences
        return [{"floats": floats[k], "ints": ints[k], "layout": layout} for k in range(n)]

    def _layout(self, n_conditions: int) -> list[tuple[str, type, tuple[int, ...]]]:
        """(key, dtype, shape) of a sample's fields, in the order of its packed float32 and int64 rows."""
        p, q, v = self.cfg.points, self.cfg.queries, self.cfg.vertices
        floats = {"points": (p, 3), "queries": (q, 3), "displacement": (p, 3), "query_displacement": (q, 3)}
        floats |= {"vertices": (v, 3), "vertex_displacement": (v, 3), "conditions": (n_conditions,)}
        if self.dual_quaternion:
            floats["dual_quaternion"] = (p, 8)
        ints = {"frames": (2,), "category": (), "object_type": (), "sequence": ()}
        return [(k, np.float32, shape) for k, shape in floats.items()] + [
            (k, np.int64, shape) for k, shape in ints.items()
        ]

    @staticmethod
    def _poses(arrays, row, pair, center, scale) -> tuple[np.ndarray, np.ndarray]:
        """The normalised vertices (V, 3) of a pair's rest and target frames; `row` as in `make_samples`."""
        first, n_vertices = row[0], row[1]
        return tuple(
            sampling.normalise(arrays["vertices"][at : at + n_vertices], center, scale)
            for at in first + pair * n_vertices
        )

    def _dual_quaternions(self, arrays, row, pair, center, scale, maps, uniform) -> np.ndarray:
        """(points, 8): per-vertex rigid motions from the pair's rest to its target frame, normalised and
        mapped by `maps` (2, 3, 4) as `sampling.pair_samples` does for the pair's `row`, blended at the input
        points (the first `points` of the pair's surface draws (3, n), so the pair's own points)."""
        poses = self._poses(arrays, row, pair, center, scale)
        rest, target = (x @ m[:, :3].T + m[:, 3] for x, m in zip(poses, maps, strict=True))
        faces = arrays["faces"][row[2] : row[2] + row[3]]
        dq = sampling.vertex_dual_quaternions(rest, target, faces)
        draws = np.ascontiguousarray(uniform[None, :, : self.cfg.points])
        face, bary = sampling.sample_surfaces(rest[None], faces, draws)
        return sampling.blend_dual_quaternions(sampling.interpolate(dq, faces, face[0], bary[0]))

    def _augmentation(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3, 3) per pair: a random rotation about up times a uniform scale, the same for both frames."""
        cfg = self.cfg.augment
        # Drawn even when off, so switching augmentation off changes nothing else about a sample.
        angle, scale = rng.uniform(0.0, 2 * np.pi, n), rng.uniform(*cfg.scale, n).astype(np.float32)
        if not self.train:
            return np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
        return sampling.rotation_about_up(angle if cfg.rotate else np.zeros(n)) * scale[:, None, None]


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
            prefetch_factor=self.stream.cfg.prefetch if self.workers else None,
            generator=torch.Generator().manual_seed(self.stream.cfg.seed),
        )
        self.stream.ring_prefix = f"neurok-{secrets.token_hex(6)}"
        reader, batches = RingReader(self.stream.ring_prefix, self.workers), iter(loader)
        try:
            for batch in islice(batches, len(self) - self.batch):
                if self.advance:
                    self.batch += 1
                yield to_tensors(reader.take(batch) if self.workers else batch)
        finally:
            # Dropping the last reference shuts the workers down: none makes its ring after the clean-up.
            del batches
            reader.close()

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
    remove_rigid: bool = False,
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
    if cfg.prefetch < 1:
        raise BadInputError(f"data.prefetch={cfg.prefetch}: a worker needs room for at least one batch")
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
    stream = FramePairStream(
        cfg, split, shards, per_worker, rank, world, train, dual_quaternion, remove_rigid
    )
    if workers == 0:
        stream._store = store  # same process: no need to reopen
    return EpochLoader(stream, workers, cfg.start_method, advance=train)


class FramePairDataModule(pl.LightningDataModule):
    """Train/val/test loaders of one store, split by object through the store's `split` column."""

    def __init__(self, cfg: LoaderConfig, dual_quaternion: bool = False, remove_rigid: bool = False):
        super().__init__()
        self.cfg, self.dual_quaternion, self.remove_rigid = cfg, dual_quaternion, remove_rigid
        self.store: Store | None = None

    def setup(self, stage: str | None = None) -> None:
        self.store = self.store or Store(self.cfg.store)

    def _loader(self, split: str) -> EpochLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.setup()
        return make_loader(self.cfg, split, rank, world, self.dual_quaternion, self.store, self.remove_rigid)

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
