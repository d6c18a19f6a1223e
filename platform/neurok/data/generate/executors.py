"""Where a recipe's sequences are simulated: a local process pool, or Ray tasks on a cluster.

Both yield `(shard_id, commit)` as loader shards complete; the store's single writer indexes them. The
bytes are the same either way: a sequence depends only on its spec, never on where it ran. A sequence that
MuJoCo cannot keep stable even with more substeps (scenes.simulate retries) is left out of its shard and
named in the commit's `dropped` list, so one bad scene does not stop a run of thousands.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Iterator

from neurok.data.generate.mjcf import UnstableError
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.scenes import simulate
from neurok.data.schema import Sequence
from neurok.data.store import StoreLayout, write_shard
from neurok.errors import NeurokError

log = logging.getLogger(__name__)

Shards = dict[int, list[SequenceSpec]]


def _simulate(job: tuple[SequenceSpec, PhysicsSpec]) -> Sequence | str:
    """The sequence, or why it stayed unstable (the message names it)."""
    try:
        return simulate(*job)
    except UnstableError as exc:
        return str(exc)


def _write(path, shard_id: int, results: list[Sequence | str], layout: StoreLayout) -> dict:
    sequences = [r for r in results if not isinstance(r, str)]
    return write_shard(path, shard_id, sequences, layout, [r for r in results if isinstance(r, str)])


def process_pool(
    path: str, shards: Shards, physics: PhysicsSpec, layout: StoreLayout, workers: int
) -> Iterator:
    """Simulate sequence by sequence in `workers` processes; this process writes each completed shard.

    Per-sequence jobs balance the load even with few shards. forkserver: Zarr and fsspec are not
    fork-safe.
    """
    jobs = [(spec, physics) for block in shards.values() for spec in block]
    if workers <= 1:
        sequences = map(_simulate, jobs)
        yield from _write_in_order(path, shards, sequences, layout)
        return
    with mp.get_context("forkserver").Pool(workers) as pool:
        yield from _write_in_order(path, shards, pool.imap(_simulate, jobs, chunksize=1), layout)


def _write_in_order(path: str, shards: Shards, sequences: Iterator, layout: StoreLayout) -> Iterator:
    for shard_id, block in shards.items():
        yield shard_id, _write(path, shard_id, [next(sequences) for _ in block], layout)


def ray_tasks(path: str, shards: Shards, physics: PhysicsSpec, layout: StoreLayout, workers: int) -> Iterator:
    """One Ray task per loader shard: it simulates the shard's sequences and writes the shard's files.

    (Per-sequence simulation tasks plus a writer task per shard balanced the tail better, but Ray then ran
    every simulation before any write: no shard committed until the end, all sequences held in memory.)

    Connects to RAY_ADDRESS when set, else starts a local Ray with `workers` CPUs (and stops it after).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:  # a throwaway Ray: no dashboard; workers at normal priority, as the process pool's
            ray.init(
                num_cpus=workers,
                log_to_driver=False,
                include_dashboard=False,
                _temp_dir=os.environ.get("RAY_TMPDIR"),
                _system_config={"worker_niceness": 0},
            )
    task = ray.remote(num_cpus=1, max_retries=2)(_shard_task)
    try:
        pending = {task.remote(path, k, block, physics, layout): k for k, block in shards.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard_id = pending.pop(done[0])
            try:
                yield shard_id, ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, NeurokError):
                    raise NeurokError(str(cause).splitlines()[-1]) from None
                raise
    finally:
        if started:
            ray.shutdown()


def _shard_task(path: str, shard_id: int, specs: list[SequenceSpec], physics: PhysicsSpec, layout) -> dict:
    return _write(path, shard_id, [_simulate((spec, physics)) for spec in specs], layout)
