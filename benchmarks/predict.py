"""The registry package's predict path on a large mesh: wall time and peak memory (issue 6's target:
a 10k-vertex mesh for 120 frames in under 30 s, under 4 GB).

Runs what `SimulatorModel.predict` runs after parsing its input: `simulate_mesh` with the package's
config (pipelines/simulate.yaml), on an icosphere the model never saw, under gravity and a poke.

Usage: python benchmarks/predict.py CKPT [--subdivisions 5] [--frames 120] [--threads 1] [key=value ...]
Writes benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import trimesh

from common import write_results
from neurok.config import load_config
from neurok.eval.config import SimulateConfig
from neurok.eval.rollout_files import MeshConditions, Poke, simulate_mesh
from neurok.model.checkpoint import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--subdivisions", type=int, default=5, help="icosphere level: 5 = 10242 vertices")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 beat 2 on 2 cores)")
    parser.add_argument("overrides", nargs="*", help="SimulateConfig key=value")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(SimulateConfig, "pipelines/simulate.yaml", args.overrides)
    cfg.dynamics.simulator.frames = args.frames
    model = load_model(args.checkpoint)
    mesh = trimesh.creation.icosphere(subdivisions=args.subdivisions, radius=0.3)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    conditions = MeshConditions([Poke((0.3, 0.0, 0.0), (-2.0, 0.0, 0.0), 0.0, 0.1)], (0.0, -9.81, 0.0))
    start = time.perf_counter()
    out = simulate_mesh(model, vertices, faces, conditions, cfg.shape, cfg.dynamics, cfg.poke_radius)
    wall = time.perf_counter() - start
    result = {
        "machine": f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "vertices": len(vertices),
        "frames": args.frames,
        "seconds": round(wall, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "k_q": out.q.shape[1],
        "energy_drift": out.energy_drift,
        "output_shape": list(out.vertices.shape),
    }
    write_results("predict", result)


if __name__ == "__main__":
    main()
