"""The physics scenes behind `neurok data generate`: one entry point per sequence, dispatched by category.

Each object type has its own module (elastic, cloth, articulated, multibody) exposing `CATEGORIES` and
`simulate(spec, physics) -> Sequence`; MuJoCo does the physics, they build, drive and record the scenes.
"""

from __future__ import annotations

import dataclasses
import logging

from neurok.data.generate import articulated, assets, cloth, elastic, mjcf, multibody
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

log = logging.getLogger(__name__)

RETRIES = 2  # an unstable sequence is simulated again with twice, then four times the substeps

MODULES = {"elastic": elastic, "cloth": cloth, "articulated": articulated, "multibody": multibody}

CATEGORIES: dict[str, tuple[str, ...]] = {name: module.CATEGORIES for name, module in MODULES.items()}


def simulate(spec: SequenceSpec, physics: PhysicsSpec) -> Sequence:
    """Simulate one sequence: deterministic from the spec's shape and condition seeds."""
    module = MODULES.get(spec.object_type)
    if module is None or spec.category not in module.CATEGORIES:
        known = ", ".join(c for cats in CATEGORIES.values() for c in cats)
        raise BadInputError(
            f"sequence '{spec.name}': unknown object type/category '{spec.object_type}'/'{spec.category}'; "
            f"known categories: {known}"
        )
    if physics.substeps < 1:
        raise BadInputError(f"sequence '{spec.name}': physics.substeps must be >= 1, got {physics.substeps}")
    if spec.frames < 2 or spec.fps <= 0 or spec.target_vertices < 20:
        raise BadInputError(
            f"sequence '{spec.name}': needs frames >= 2, fps > 0 and target_vertices >= 20, got "
            f"{spec.frames}, {spec.fps}, {spec.target_vertices}"
        )
    for pack in spec.asset_packs:
        assets.pack_dir(pack)  # fail early and clearly when a pack is missing
    for _ in range(RETRIES):
        try:
            return module.simulate(spec, physics)
        except mjcf.UnstableError as exc:
            log.info("%s; retrying with %d substeps", exc, 2 * physics.substeps)
            physics = dataclasses.replace(physics, substeps=2 * physics.substeps)
    return module.simulate(spec, physics)
