"""Run a recipe: simulate its sequences (process pool or Ray tasks) and write them as loader shards.

Deterministic from the recipe seed, resumable (committed shards are skipped), and safe to interrupt:
every shard committed before a crash or Ctrl-C stays readable.
"""

from __future__ import annotations

import logging

import mujoco
from tqdm import tqdm

from neurok import __version__
from neurok.config import to_dict
from neurok.data.card import dataset_card
from neurok.data.generate.executors import process_pool, ray_tasks
from neurok.data.generate.plan import plan, shard_plan
from neurok.data.generate.recipe import Recipe, recipe_hash
from neurok.data.generate.scenes import CATEGORIES
from neurok.data.store import Store, StoreLayout, StoreWriter
from neurok.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = {"process": process_pool, "ray": ray_tasks}

CARD_NOTES = [
    "Simulated with MuJoCo: elastic solids (flex dim 3), cloth and shells (flex dim 2), articulated rigid "
    "parts on hinge/slide joints, multi-body systems in contact.",
    "Plastic and continuum (MPM-like) materials are out of reach of MuJoCo and are not included.",
    "Rest shapes are procedural; no third-party assets are stored.",
]


def generate(recipe: Recipe, out: str, progress: bool = True) -> dict:
    """Generate (or resume) the store at `out`; returns its dataset card."""
    if recipe.executor not in EXECUTORS:
        raise ConfigError(f"recipe: executor '{recipe.executor}' is not one of {sorted(EXECUTORS)}")
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
        todo = {k: shards[k] for k in range(len(shards)) if k not in writer.completed_shards}
        if len(todo) < len(shards):
            log.info(
                "resuming %s: %d of %d loader shards complete", out, len(shards) - len(todo), len(shards)
            )
        completed = EXECUTORS[recipe.executor](out, todo, recipe.physics, layout, recipe.workers)
        with tqdm(
            total=sum(map(len, todo.values())), desc=recipe.name, unit="seq", disable=not progress
        ) as bar:
            for shard_id, commit in completed:
                for reason in commit["dropped"]:
                    log.warning("left out of the store: %s", reason)
                writer.record(shard_id, commit)
                bar.update(commit["n_sequences"] + len(commit["dropped"]))
        card = dataset_card(
            Store(out), sources=[provenance["engine"] + " (procedural scenes)"], notes=CARD_NOTES
        )
        writer.finalize(card=card)
    return card
