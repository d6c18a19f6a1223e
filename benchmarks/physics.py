"""The physics checks of issue 15 on meshes no recipe generates, through `neurok simulate`'s own path.

Scenes on a torus (lying flat) and a box of ~1200 vertices, about 2 m across: free fall, a throw with
spin (no forces: momentum), a poke, pinned under gravity, dropped on a ground plane, and a long undamped
oscillation (energy over 240 steps, alone and batched is covered by tests). Each scene prints its checks
(target, value, verdict), and the table goes to benchmarks/results/physics.{json,md}.

Usage: python benchmarks/physics.py MODEL [--frames 60] [--rigid true|false] [key=value ...]
(MODEL: a checkpoint, a pulled model folder or models:/NAME@ALIAS)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import trimesh

from common import RESULTS, simulator_of
from neurok.eval.rollout_files import MeshConditions, Poke, simulate_mesh


def meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    torus = trimesh.creation.torus(major_radius=0.7, minor_radius=0.3, major_sections=40, minor_sections=30)
    # lying flat (its axis up, y): dropped upright on its rim, a torus rests in an unstable pose and topples
    torus.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1.0, 0.0, 0.0]))
    box = trimesh.creation.box(extents=(2.0, 0.6, 1.0)).subdivide().subdivide().subdivide()
    return {
        name: (np.asarray(m.vertices, np.float64) + [0.0, 1.5, 0.0], np.asarray(m.faces, np.int64))
        for name, m in (("torus", torus), ("box", box))
    }


def scenes(vertices: np.ndarray) -> dict[str, MeshConditions]:
    top = vertices[vertices[:, 1].argmax()]
    side = vertices[vertices[:, 2].argmin()]
    return {
        "free fall": MeshConditions(gravity=(0.0, -9.81, 0.0)),
        "throw with spin": MeshConditions(velocity=(1.0, 2.0, 0.0), spin=(0.0, 3.0, 1.5)),
        "poke": MeshConditions([Poke(tuple(side), (0.0, 0.0, 5.0), 0.0, 0.1)]),
        "pinned under gravity": MeshConditions(gravity=(0.0, -9.81, 0.0), pins=[tuple(top)]),
        "dropped on the ground": MeshConditions(
            gravity=(0.0, -9.81, 0.0), ground=float(vertices[:, 1].min()) - 0.3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rigid", default="true")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="SimulateConfig key=value (dynamics.surrogate.enabled=false: the reference path)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"dynamics.simulator.frames={args.frames}", f"shape.rigid={args.rigid}", *args.overrides]
    model, cfg = simulator_of(args.model, overrides)
    rows = []
    for mesh_name, (vertices, faces) in meshes().items():
        for scene_name, conditions in scenes(vertices).items():
            frames = 90 if scene_name == "dropped on the ground" else args.frames
            dynamics = cfg.dynamics
            dynamics.simulator.frames = frames
            out = simulate_mesh(
                model, vertices, faces, conditions, cfg.shape, dynamics, cfg.poke_radius, cfg.seed
            )
            print(f"{mesh_name} ({len(vertices)} vertices), {scene_name}: k = {out.q.shape[1]}", flush=True)
            for check in out.checks:
                print(f"  {check.line()}")
                rows.append(
                    {
                        "mesh": mesh_name,
                        "scene": scene_name,
                        "check": check.name,
                        "value": check.value,
                        "target": ("<= " if not check.at_least else ">= ") + f"{check.limit:g}",
                        "passed": check.passed,
                    }
                )
            for share in out.absorbed:
                print(f"  absorbed: all {share['all']:.3g}, deformation {share['deformation']:.3g}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "physics.json").write_text(json.dumps(rows, indent=2))
    lines = ["| mesh | scene | check | value | target | ok |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['mesh']} | {r['scene']} | {r['check']} | {r['value']:.3g} | {r['target']} | "
        f"{'yes' if r['passed'] else 'NO'} |"
        for r in rows
    ]
    (RESULTS / "physics.md").write_text("\n".join(lines) + "\n")
    print(f"{sum(r['passed'] for r in rows)} of {len(rows)} checks pass; {RESULTS / 'physics.md'}")


if __name__ == "__main__":
    main()
