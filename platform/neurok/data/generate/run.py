"""Run a recipe: simulate its sequences in a process pool and write them as loader shards.

Deterministic from the recipe seed, resumable (committed shards are skipped), and safe to interrupt:
every shard committed before a crash or Ctrl-C stays readable.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterator

import mujoco
from tqdm import tqdm

from neurok import __version__
from neurok.config import to_dict
from neurok.data.card import dataset_card
from neurok.data.generate.plan import plan, shard_plan
from neurok.data.generate.recipe import PhysicsSpec, Recipe, SequenceSpec, recipe_hash
from neurok.data.generate.scenes import CATEGORIES, simulate
from neurok.data.schema import Sequence
from neurok.data.store import Store, StoreLayout, StoreWriter
from neurok.errors import ConfigError

log = logging.getLogger(__name__)

CARD_NOTES = [
    "Simulated with MuJoCo: elastic solids (flex dim 3), cloth and shells (flex dim 2), articulated rigid "
    "parts on hinge/slide joints, multi-body systems in contact.",
    "Plastic and continuum (MPM-like) materials are out of reach of MuJoCo and are not included.",
    "Rest shapes are procedural; no third-party assets are stored.",
]


def _simulate(job: tuple[SequenceSpec, PhysicsSpec]) -> Sequence:
    return simulate(*job)


def _simulated(jobs: list[tuple[SequenceSpec, PhysicsSpec]], workers: int) -> Iterator[Sequence]:
    """Sequences in job order, simulated in `workers` processes (forkserver: Zarr is not fork-safe)."""
    if workers <= 1:
        yield from map(_simulate, jobs)
        return
    with mp.get_context("forkserver").Pool(workers) as pool:
        yield from pool.imap(_simulate, jobs, chunksize=1)


def generate(recipe: Recipe, out: str, progress: bool = True) -> dict:
    """Generate (or resume) the store at `out`; returns its dataset card."""
    if recipe.executor != "process":
        raise ConfigError(f"recipe: executor '{recipe.executor}' is not available here; use 'process'")
    shards = shard_plan(plan(recipe, CATEGORIES), recipe.store.sequences_per_shard)
    provenance = {
        "generator": f"neurok {__version__}",
        "engine": f"mujoco {mujoco.__version__}",
        "seed": recipe.seed,
        "recipe": to_dict(recipe),
        "recipe_hash": recipe_hash(recipe),
    }
    layout = StoreLayout(chunk_rows=recipe.store.chunk_rows, clevel=recipe.store.clevel)
    with StoreWriter(out, attrs={"name": recipe.name, "provenance": provenance}, layout=layout) as writer:
        todo = [k for k in range(len(shards)) if k not in writer.completed_shards]
        jobs = [(spec, recipe.physics) for k in todo for spec in shards[k]]
        if len(todo) < len(shards):
            log.info(
                "resuming %s: %d of %d loader shards already complete",
                out,
                len(shards) - len(todo),
                len(shards),
            )
        sequences = _simulated(jobs, recipe.workers)
        bar = tqdm(total=len(jobs), desc=f"generate {recipe.name}", unit="seq", disable=not progress)
        for k in todo:
            block = []
            for _ in shards[k]:
                block.append(next(sequences))
                bar.update()
            writer.write_shard(k, block)
        bar.close()
        card = dataset_card(
            Store(out), sources=[provenance["engine"] + " (procedural scenes)"], notes=CARD_NOTES
        )
        writer.finalize(card=card)
    return card
