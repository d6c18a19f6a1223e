"""Reconstructions of a few held-out objects at full mesh resolution, for the run's plots.

Each example: rest = frame 0, target = the frame deformed most; the posterior mean of E_vae on P surface
points of the rest mesh is decoded at every rest vertex (the inference setting of paper s9.2).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from neurok.data import sampling
from neurok.data.schema import SPLITS
from neurok.data.store import Store
from neurok.geometry import without_rigid_motion
from neurok.model import ModelConfig
from neurok.track.plots import reconstruction_figure


class ReconstructionExamples:
    def __init__(self, store_path: str, n_objects: int, points: int, model: ModelConfig, seed: int = 0):
        store = Store(store_path)
        self.examples = []
        seen = set()
        for split in ("val", "test", "train"):  # held-out objects first
            for s in np.flatnonzero(store.column("split") == SPLITS.index(split)):
                obj = int(store.column("object_id")[s])
                if len(self.examples) >= n_objects or obj in seen:
                    continue
                seen.add(obj)
                self.examples.append(self._prepare(store, int(s), points, model, seed))

    @staticmethod
    def _prepare(
        store: Store, s: int, points: int, model: ModelConfig, seed: int, target: int | None = None
    ) -> dict:
        """E_vae's inputs for (frame 0, `target`), by default the frame that moved most, as `model` reads
        them (its dual quaternions; the target's rigid motion undone for a deformation-only model)."""
        seq = store.sequence(s)
        frames = sampling.normalise(seq.frames, store.norm_center[s], store.norm_scale[s])
        if target is None:
            target = sampling.most_moved_frame(frames)
        rest, moved = frames[0], frames[target]
        if model.deformation_only:
            moved = without_rigid_motion(rest, moved).astype(np.float32)
        face, bary = sampling.sample_surface(rest, seq.faces, points, np.random.default_rng(seed))
        on_rest = sampling.interpolate(rest, seq.faces, face, bary)
        inputs = {
            "points": on_rest,
            "displacement": sampling.interpolate(moved, seq.faces, face, bary) - on_rest,
        }
        if model.dual_quaternion:
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

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module) -> Figure:
        model = module.model
        was_training = model.training
        model.eval()
        shown = []
        for ex in self.examples:
            inputs = {k: v.to(module.device) for k, v in ex["inputs"].items()}
            shape_tokens, _ = model.encode_shape(inputs["points"])
            mu, _ = model.encode_deformation(
                inputs["points"], inputs["displacement"], inputs.get("dual_quaternion")
            )
            vertices = torch.from_numpy(ex["rest"])[None].to(module.device)
            deformation = model.decode(mu, shape_tokens, vertices)[0].float().cpu().numpy()
            shown.append({**ex, "predicted": ex["rest"] + deformation})
        model.train(was_training)
        return reconstruction_figure(shown, title=f"step {getattr(module, 'global_step', 0)}")
