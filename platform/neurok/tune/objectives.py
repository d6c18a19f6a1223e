"""A trial's objectives on a few sequences of one split, with `neurok eval`'s own protocol and functions:
reconstruction Chamfer L1, inverse-kinematics Chamfer L1 (NeuROK's reduced coordinates, no baselines),
rollout energy drift, and inference speed (milliseconds per simulated frame)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from neurok.data.store import Store
from neurok.dynamics import fit
from neurok.eval import metrics
from neurok.eval.config import EvalConfig
from neurok.eval.evaluate import load_case, reconstruction, select_cases, simulation
from neurok.eval.rollout_files import reduced_model_shape
from neurok.model import NeuROK


def measure(model: NeuROK, store: Store, split: str, cfg: EvalConfig) -> dict[str, float]:
    """Means over up to cfg.objects sequences per object type of `split`, keyed `<split>/<metric>`."""
    cfg = dataclasses.replace(cfg, split=split, heldout=False)
    torch.manual_seed(cfg.seed)
    values: dict[str, list[float]] = {}
    for n, s in enumerate(select_cases(store, cfg)):
        case = load_case(store, s, cfg, model.cfg)
        shape = reduced_model_shape(model, case.frames[0], case.faces, cfg.shape, cfg.dynamics, cfg.seed)
        sampler = metrics.SurfaceSampler(case.frames[0], case.faces, cfg.surface_samples, cfg.seed)
        recon = reconstruction(model, shape, case, sampler, cfg)
        target = sampler(case.frames[case.target])
        ik = fit(shape, target[None], cfg.dynamics.ik).vertices[0]
        found = {
            "chamfer_l1": recon["recon_chamfer_l1"],
            "ik_chamfer_l1": metrics.chamfer_l1_l2(sampler(ik), target)[0],
        }
        if n < cfg.rollouts:  # the costly part: eval's own budget
            rollout, _, _ = simulation(shape, case, sampler, cfg)
            if not rollout.get("rollout_failed"):
                found["energy_drift"] = rollout["energy_drift"]
                found["ms_per_frame"] = 1000.0 / rollout["latent_frames_per_s"]
            else:  # a rollout that blew up is the worst drift and speed, not a missing value
                found["energy_drift"] = found["ms_per_frame"] = float("inf")
            found["rollout_failed"] = rollout.get("rollout_failed", 0.0)
        for key, value in found.items():
            values.setdefault(key, []).append(float(value))
    return {f"{split}/{k}": float(np.mean(v)) for k, v in values.items()}
