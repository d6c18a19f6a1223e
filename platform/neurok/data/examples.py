"""One sequence as E_vae reads it at inference: the pair (frame 0, a target frame) as surface samples of
the rest mesh with their displacements (paper s9.2). Shared by the training run's reconstruction plots and
the evaluation."""

from __future__ import annotations

import numpy as np
import torch

from neurok.data import sampling
from neurok.data.store import Store
from neurok.geometry import without_rigid_motion


def encoder_example(
    store: Store,
    s: int,
    points: int,
    seed: int,
    target: int | None = None,
    dual_quaternion: bool = False,
    deformation_only: bool = False,
) -> dict:
    """E_vae's inputs for (frame 0, `target`) of sequence s, by default the frame that moved most: its
    dual quaternions when the model reads them, the target's rigid motion undone for a deformation-only
    model. Returns name, faces, rest, target (normalised vertices) and inputs (batch of one)."""
    seq = store.sequence(s)
    frames = sampling.normalise(seq.frames, store.norm_center[s], store.norm_scale[s])
    if target is None:
        target = sampling.most_moved_frame(frames)
    rest, moved = frames[0], frames[target]
    if deformation_only:
        moved = without_rigid_motion(rest, moved).astype(np.float32)
    face, bary = sampling.sample_surface(rest, seq.faces, points, np.random.default_rng(seed))
    on_rest = sampling.interpolate(rest, seq.faces, face, bary)
    inputs = {
        "points": on_rest,
        "displacement": sampling.interpolate(moved, seq.faces, face, bary) - on_rest,
    }
    if dual_quaternion:
        dq = sampling.vertex_dual_quaternions(rest, moved, seq.faces)
        inputs["dual_quaternion"] = sampling.blend_dual_quaternions(
            sampling.interpolate(dq, seq.faces, face, bary)
        )
    return {
        "name": f"{seq.name} ({seq.split}) frame {target}",
        "faces": seq.faces,
        "rest": rest,
        "target": moved,
        "inputs": {k: torch.from_numpy(v)[None] for k, v in inputs.items()},
    }
