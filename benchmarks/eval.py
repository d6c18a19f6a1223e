"""Trained-model benchmarks: latent rollout vs MuJoCo (same sequence, same horizon, this process), IK time
per shape, and one step's cost split into decode / Jacobian / dT/dq / Christoffel / solve as V and k_q grow.

usage: .venv/bin/python benchmarks/eval.py --model CKPT --data STORE [--sequence I] [--threads 1]
Writes benchmarks/results/eval.json and eval.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import trimesh

from common import best_ms, write_results
from neurok.data.store import Store
from neurok.dynamics import Forcing, ReducedShape, fit
from neurok.dynamics.from_model import latent_shape
from neurok.dynamics.mechanics import Physics, System
from neurok.eval import metrics
from neurok.eval.config import EvalConfig
from neurok.eval.evaluate import load_case, mujoco_frames_per_s, simulation
from neurok.eval.rollout_files import reduced_model_shape
from neurok.model.checkpoint import load_model


def step_costs(model, vertices: int, kq: int) -> dict[str, float]:
    """One state of a sphere of about `vertices` vertices, random orthonormal A with k_q rows."""
    mesh = trimesh.creation.icosphere(
        subdivisions=max(1, round(np.log(max(vertices - 2, 10) / 10) / np.log(4)))
    )
    rest = np.asarray(mesh.vertices, np.float32) * 0.5
    shape = latent_shape(model, rest, np.asarray(mesh.faces), points=1024, max_queries=len(rest))
    basis = torch.linalg.qr(torch.randn(shape.latent_dims, kq))[0].T
    reduced = ReducedShape(shape, basis)
    system = System(
        reduced, Physics(1.0, 0.0, torch.zeros(3), 1e-6), Forcing.stack([Forcing.build(len(rest))])
    )
    q, v = torch.full((1, kq), 0.1), torch.full((1, kq), 0.5)
    terms = system.terms(q, 0.0)
    return {
        "V": float(len(rest)),
        "k_q": float(kq),
        "decode_ms": best_ms(lambda: reduced.positions(q)),
        "terms_jacobian_ms": best_ms(lambda: system.terms(q, 0.0)),
        "position_solve_decode_ms": best_ms(lambda: system.position(q)),
        "christoffel_rk4_ms": best_ms(lambda: system.coriolis(terms.J, q, v)),
        "solve_ms": best_ms(lambda: system.solve(terms.G, v), n=20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sequence", type=int, default=0, help="store index of the sequence to time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ik-iterations", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="EvalConfig key=value (e.g. dynamics.simulator.dt=...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from neurok.config import load_config

    cfg = load_config(EvalConfig, "pipelines/eval.yaml", args.overrides)
    model, store = load_model(args.model), Store(args.data)
    case = load_case(store, args.sequence, cfg, model.cfg)
    start = time.perf_counter()
    shape = reduced_model_shape(model, case.frames[0], case.faces, cfg.shape, cfg.dynamics, cfg.seed)
    reduction_s = time.perf_counter() - start
    sampler = metrics.SurfaceSampler(case.frames[0], case.faces, cfg.surface_samples)
    values, _, _ = simulation(shape, case, sampler, cfg)
    mujoco = mujoco_frames_per_s(store, case)
    ik = dataclasses.replace(cfg.dynamics.ik, iterations=args.ik_iterations)
    points = sampler(case.frames[case.target])[None]
    start = time.perf_counter()
    fit(shape, points, ik)
    ik_s = time.perf_counter() - start
    result = {
        "machine": f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "sequence": case.name,
        "frames": len(case.frames) - 1,
        "vertices": int(case.frames.shape[1]),
        "k_q": shape.dims,
        "dt": cfg.dynamics.simulator.dt,
        "integrator": str(cfg.dynamics.simulator.integrator),
        "active_subspace_s": reduction_s,
        "latent_frames_per_s": values.get("latent_frames_per_s"),
        "mujoco_frames_per_s": mujoco,
        "speedup": values["latent_frames_per_s"] / mujoco
        if mujoco and "latent_frames_per_s" in values
        else None,
        "energy_drift": values.get("energy_drift"),
        "ik_s_per_shape": ik_s,
        "ik_iterations": args.ik_iterations,
        "step_costs": [step_costs(model, v, k) for v, k in ((162, 4), (642, 4), (642, 8), (2562, 8))],
    }
    lines = [f"# Trained-model benchmarks ({result['machine']})", ""]
    lines += [f"- {k}: {v}" for k, v in result.items() if k not in ("step_costs", "machine")]
    keys = list(result["step_costs"][0])
    lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |" for row in result["step_costs"]]
    write_results("eval", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
