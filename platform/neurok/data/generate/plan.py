"""Turn a recipe into the full, ordered list of sequences to simulate (deterministic from its seed)."""

from __future__ import annotations

import numpy as np

from neurok.data.generate.recipe import Recipe, SequenceSpec
from neurok.data.splits import assign_split
from neurok.errors import ConfigError


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` objects across types by weight (largest remainder), at least one per weighted type."""
    names = [n for n, w in weights.items() if w > 0]
    if not names:
        raise ConfigError("recipe: every object type has weight 0")
    if total < len(names):
        raise ConfigError(
            f"recipe: objects={total} is fewer than the {len(names)} object types with weight > 0"
        )
    w = np.array([weights[n] for n in names], float)
    exact = 1 + (total - len(names)) * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


def plan(recipe: Recipe, categories: dict[str, tuple[str, ...]]) -> list[SequenceSpec]:
    """Every sequence of the recipe, shuffled so each loader shard mixes object types and categories."""
    unknown = set(recipe.types) - set(categories)
    if unknown:
        raise ConfigError(f"recipe: unknown object types {sorted(unknown)}; known: {sorted(categories)}")
    rng = np.random.default_rng(recipe.seed)
    specs: list[SequenceSpec] = []
    counts = allocate(recipe.objects, {name: spec.weight for name, spec in recipe.types.items()})
    object_id = 0
    for type_name, n_objects in counts.items():
        cats = recipe.types[type_name].categories or list(categories[type_name])
        bad = set(cats) - set(categories[type_name])
        if bad:
            raise ConfigError(
                f"recipe: types.{type_name}.categories has unknown {sorted(bad)}; "
                f"known: {list(categories[type_name])}"
            )
        for k in range(n_objects):
            category = cats[k % len(cats)]  # round-robin: every listed category appears
            shape_seed = int(rng.integers(2**31))
            split = assign_split(f"{category}:{shape_seed}", category, recipe.splits, recipe.seed)
            for s in range(recipe.sequences_per_object):
                specs.append(
                    SequenceSpec(
                        index=-1,
                        name=f"{category.replace('/', '-')}-o{object_id:05d}-s{s}",
                        object_type=type_name,
                        category=category,
                        object_id=object_id,
                        split=split,
                        shape_seed=shape_seed,
                        condition_seed=int(rng.integers(2**31)),
                        frames=recipe.frames,
                        fps=recipe.fps,
                        target_vertices=recipe.target_vertices,
                        asset_packs=list(recipe.asset_packs),
                    )
                )
            object_id += 1
    order = rng.permutation(len(specs))
    specs = [specs[i] for i in order]
    for i, spec in enumerate(specs):
        spec.index = i
    return specs


def shard_plan(specs: list[SequenceSpec], sequences_per_shard: int) -> list[list[SequenceSpec]]:
    """Consecutive blocks of whole sequences: the loader shards."""
    if sequences_per_shard < 1:
        raise ConfigError(f"recipe: store.sequences_per_shard must be >= 1, got {sequences_per_shard}")
    return [specs[i : i + sequences_per_shard] for i in range(0, len(specs), sequences_per_shard)]
