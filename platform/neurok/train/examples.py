"""Reconstructions of a few held-out objects at full mesh resolution, for the run's plots.

Each example: rest = frame 0, target = the frame deformed most; the posterior mean of E_vae on P surface
points of the rest mesh is decoded at every rest vertex (the inference setting of paper s9.2).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from neurok.data.examples import encoder_example
from neurok.data.schema import SPLITS
from neurok.data.store import Store
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
                self.examples.append(
                    encoder_example(
                        store, int(s), points, seed, None, model.dual_quaternion, model.deformation_only
                    )
                )

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
