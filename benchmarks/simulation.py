"""The fast simulation path against the reference path and against MuJoCo, side by side in one run.

Per object type (one test sequence each, its own conditions and horizon, as `neurok eval` rolls it out):
latent frames/s with every step through the decoder at every vertex (reference), through the object's
surrogate on its cubature in torch (torch), and through the surrogate's moments in the compiled loop
(fast, the default: dynamics.compiled), MuJoCo re-simulating the same sequence, the fast rollout's
Chamfer-L1 from the reference one (as a share of the object's size) and its energy drift; the fast
path's and MuJoCo's frames/s are each the best of REPEATS runs (the slow paths run once). Then the
predict path (`neurok simulate`: a mesh under gravity) on spheres of about 1k, 10k and 100k vertices:
preparation time and sustained output frames/s (best of REPEATS). One thread (torch and BLAS) for every
simulator.

usage: .venv/bin/python benchmarks/simulation.py --model CKPT [--data STORE] [--sizes 1000,10000,100000]
Writes benchmarks/results/simulation.json and simulation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np
import torch
import trimesh

from common import write_results
from neurok.config import load_config
from neurok.data.schema import OBJECT_TYPES
from neurok.data.store import Store
from neurok.dynamics import Forcing
from neurok.eval import metrics
from neurok.eval.config import EvalConfig, SimulateConfig
from neurok.eval.evaluate import load_case, mujoco_frames_per_s, select_cases, simulation
from neurok.eval.rollout_files import reduced_model_shape, simulated_body
from neurok.model.checkpoint import load_model
from neurok.threads import limit_threads

PATHS = ("reference", "torch", "fast")
REPEATS = 3  # the fast path and MuJoCo: best of (this machine's speed varies by 10-40% between runs)


def paths(cfg, path: str):
    """cfg for one of PATHS: the decoder at every vertex; the surrogate on a cubature, in torch; the
    compiled loop."""
    d = cfg.dynamics
    dynamics = dataclasses.replace(
        d,
        surrogate=dataclasses.replace(d.surrogate, enabled=path != "reference"),
        cubature=dataclasses.replace(d.cubature, enabled=path != "reference"),
        simulator=dataclasses.replace(d.simulator, compiled=path == "fast"),
    )
    return dataclasses.replace(cfg, dynamics=dynamics)


def object_rows(model, store: Store, cfg: EvalConfig) -> list[dict]:
    rows = []
    for s in select_cases(store, cfg):
        case = load_case(store, s, cfg, model.cfg)
        shape = reduced_model_shape(model, case.frames[0], case.faces, cfg.shape, cfg.dynamics, cfg.seed)
        sampler = metrics.SurfaceSampler(case.frames[0], case.faces, cfg.surface_samples)
        runs = {name: simulation(shape, case, sampler, paths(cfg, name)) for name in PATHS}
        row = {"object": f"{case.object_type} ({case.name})", "vertices": int(case.frames.shape[1])}
        for name, (values, _, _) in runs.items():
            row[f"{name}_frames_per_s"] = values.get("latent_frames_per_s", float("nan"))
            row[f"{name}_steps"] = values.get("latent_steps", float("nan"))
            row[f"{name}_energy_drift"] = values.get("energy_drift", float("nan"))
        fast_values = runs["fast"][0]
        row["surrogate"] = fast_values.get("surrogate", 0.0)
        row["compiled"] = fast_values.get("latent_compiled", 0.0)
        row["torch_cubature_points"] = runs["torch"][0].get("surrogate_cubature_points", float("nan"))
        row["prepare_s"] = fast_values.get("surrogate_seconds", 0.0)
        again = (simulation(shape, case, sampler, paths(cfg, "fast"))[0] for _ in range(REPEATS - 1))
        row["fast_frames_per_s"] = max(
            row["fast_frames_per_s"], *(v.get("latent_frames_per_s", 0.0) for v in again)
        )
        row["mujoco_frames_per_s"] = max(
            mujoco_frames_per_s(store, case) or float("nan") for _ in range(REPEATS)
        )
        row["speedup"] = row["fast_frames_per_s"] / row["mujoco_frames_per_s"]
        reference, fast = runs["reference"][2], runs["fast"][2]
        if reference is not None and fast is not None:
            a, b = (sampler(torch.from_numpy(r.normalised)) for r in (reference, fast))
            size = float(np.linalg.norm(np.ptp(case.frames[0], axis=0)))
            row["chamfer_fast_vs_reference"] = float(metrics.chamfer_distance(a, b, "l1").max()) / size
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def predict_rows(model, sizes: list[int], overrides: list[str]) -> list[dict]:
    """`overrides`: the dynamics.* and shape.* ones of the command line (EvalConfig and SimulateConfig share
    those sections)."""
    shared = [o for o in overrides if o.startswith(("dynamics.", "shape."))]
    cfg = load_config(SimulateConfig, "pipelines/simulate.yaml", shared)
    rows = []
    for target in sizes:
        subdivisions = max(1, round(np.log((target - 2) / 10) / np.log(4)))
        mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
        rest, faces = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)
        start = time.perf_counter()
        shape = reduced_model_shape(model, rest, faces, cfg.shape, cfg.dynamics, cfg.seed)
        body = simulated_body(shape, cfg.shape, cfg.dynamics)
        prepare = time.perf_counter() - start
        sim = dataclasses.replace(body.sim, gravity=[0.0, -9.81, 0.0])
        s0 = body.full.start(1)
        forcing = Forcing.stack([Forcing.build(len(rest))])
        body.run(s0, torch.zeros_like(s0), dataclasses.replace(sim, frames=2), forcing)  # warm-up
        wall = float("inf")
        for _ in range(REPEATS):
            start = time.perf_counter()
            out = body.run(s0, torch.zeros_like(s0), sim, forcing)
            wall = min(wall, time.perf_counter() - start)
        row = {
            "vertices": len(rest),
            "k_q": body.full.dims,
            "prepare_s": prepare,
            "frames": sim.frames,
            "steps": sum(out.steps),
            "frames_per_s": sim.frames / wall,
            "cubature_points": body.decoder.get("cubature_points", float("nan")),
            "energy_drift": float(out.energy_drift()[0]),
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys)
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="a generated store: the per-object-type rows (skipped without)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="predict-path vertex counts ('' skips)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="EvalConfig key=value (the dynamics.* and shape.* ones reach the predict path)",
    )
    args = parser.parse_args()
    limit_threads(1)
    cfg = load_config(EvalConfig, "pipelines/eval.yaml", ["objects=1", "heldout=false", *args.overrides])
    model = load_model(args.model)
    cores = f"{os.cpu_count()} cores"
    machine = f"{platform.machine()}, {cores}, 1 torch thread, torch {torch.__version__}"
    objects = object_rows(model, Store(args.data), cfg) if args.data else []
    sizes = [int(s) for s in args.sizes.split(",") if s]
    predict = predict_rows(model, sizes, args.overrides) if sizes else []
    lines = [
        f"# Latent simulation speed ({machine})",
        "",
        f"model {args.model}; object types {OBJECT_TYPES}",
        "",
    ]
    if objects:
        title = "## Per object type: reference, surrogate + cubature in torch, compiled loop (fast), MuJoCo"
        lines += [title, "", *table(objects)]
    if predict:
        lines += ["", "## Predict path (a sphere under gravity, 60 frames at 30 fps)", "", *table(predict)]
    write_results(
        "simulation", {"machine": machine, "objects": objects, "predict": predict}, "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
