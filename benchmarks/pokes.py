"""Pokes on MuJoCo's elastic solids and on NeuROK's rollout of the same meshes, side by side (issue 15).

Each case is an elastic solid of the data recipe (`generate.elastic`, every kind, `--objects` seeds each)
at rest in zero gravity, poked the recipe's way: a surface patch (radius 0.2 of the object's extent)
pushed into the surface at `--speed` m/s over one frame. MuJoCo simulates it; then the same rest mesh
goes through `neurok simulate`'s path with a force on the same patch that gives the same impulse per unit
mass over the same window. Both rollouts get dynamics.checks.poke_response: the alignment (cosine of the
force and the patch's motion) and the locality (the patch's deformation over the far quarter's, rigid
motion removed; issue 15's target >= 3). With nothing else acting, the unpoked twin is the rest pose.

Usage: python benchmarks/pokes.py MODEL [--objects 4] [--speed 2.0] [key=value ...]
(MODEL: a checkpoint, a pulled model folder or models:/NAME@ALIAS; key=value: SimulateConfig overrides)
"""

from __future__ import annotations

import argparse

import numpy as np
import trimesh

from common import simulator_of, write_results
from neurok.data.generate import elastic
from neurok.data.generate.mjcf import UnstableError
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.schema import FLAG_POKED, Sequence, normalisation
from neurok.dynamics import checks
from neurok.eval.config import SimulateConfig
from neurok.eval.rollout_files import MeshConditions, Poke, simulate_mesh
from neurok.threads import limit_threads

PATCH = 0.2  # generate.elastic's poke patch radius, a share of the object's largest extent
WHO, CHECKS = ("mujoco", "neurok"), ("alignment", "locality")


def pair(row: dict, who: str) -> str:
    return ", ".join(f"{row[who][key]:.2f}" for key in CHECKS)


def mujoco_poke(kind: str, seed: int, speed: float) -> Sequence:
    spec = SequenceSpec(
        0, f"poke-{kind}-{seed}", "elastic", f"elastic/{kind}", seed, "test", seed, seed, 30, 30.0, 400, []
    )
    physics = PhysicsSpec(
        gravity=[0.0, 0.0, 0.0],
        p_poke=1.0,
        poke_speed=[speed, speed],
        p_drag=0.0,
        p_init_velocity=0.0,
        p_pin=0.0,
    )
    return elastic.simulate(spec, physics)


def poke_checks(seq: Sequence, vertices: np.ndarray, impulse: np.ndarray) -> dict[str, float]:
    """poke_response of `vertices` (T, V, 3), the poke being the sequence's."""
    dt, start = seq.conditions["frame_dt"], seq.conditions["poke_time"]
    region = ((seq.vertex_flags & FLAG_POKED) > 0).astype(np.float64)
    rest = seq.frames[0].astype(np.float64)
    masses = np.full(len(rest), 1 / len(rest))
    scene = checks.Scene(
        rest,
        masses,
        np.zeros(3),
        [checks.Poke(region, impulse, start, start + dt)],
        np.zeros(len(rest)),
        False,
    )
    time = np.arange(len(vertices)) * dt
    alignment, locality = checks.poke_response(scene, scene.pokes[0], time, vertices)
    return {"alignment": alignment.value, "locality": locality.value}


def neurok_poke(model, seq: Sequence, impulse: np.ndarray, cfg: SimulateConfig) -> np.ndarray:
    """The rollout (T, V, 3) of the sequence's rest mesh under the same impulse per unit mass (the model's
    object has mass 1) on the same patch."""
    rest, faces = seq.frames[0].astype(np.float64), seq.faces
    region = (seq.vertex_flags & FLAG_POKED) > 0
    # the patch is a ball about one vertex: the one nearest its centroid
    centre = rest[region][np.linalg.norm(rest[region] - rest[region].mean(0), axis=1).argmin()]
    mass = seq.conditions["density"] * abs(trimesh.Trimesh(rest, faces, process=False).volume)
    dt, start = seq.conditions["frame_dt"], seq.conditions["poke_time"]
    force = impulse / mass / dt
    _, scale = normalisation(rest[None])
    radius = PATCH * float(np.ptp(rest, axis=0).max()) / scale * (1 + 1e-6)
    conditions = MeshConditions([Poke(tuple(centre), tuple(force), start, start + dt)])
    out = simulate_mesh(model, rest, faces, conditions, cfg.shape, cfg.dynamics, radius, cfg.seed)
    return out.vertices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--objects", type=int, default=4, help="seeds per kind of solid")
    parser.add_argument(
        "--speed", type=float, default=2.0, help="m/s given to the patch (the recipe's 0.5-3)"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    limit_threads(1)
    model, cfg = simulator_of(args.model, ["dynamics.simulator.frames=30", *args.overrides])
    rows = []
    for kind in elastic.SOLIDS:
        for seed in range(args.objects):
            try:
                seq = mujoco_poke(kind, seed, args.speed)
            except UnstableError as error:  # the recipe's generator drops these too
                print(f"{kind} {seed}: MuJoCo unstable, left out ({str(error)[:80]})")
                continue
            c = seq.conditions
            impulse = np.array([c["poke_impulse_x"], c["poke_impulse_y"], c["poke_impulse_z"]])
            truth = poke_checks(seq, seq.frames.astype(np.float64), impulse)
            ours = poke_checks(seq, neurok_poke(model, seq, impulse, cfg), impulse)
            rows.append({"kind": kind, "seed": seed, "mujoco": truth, "neurok": ours})
            print(f"{kind} {seed}: " + " | ".join(f"{who} {pair(rows[-1], who)}" for who in WHO), flush=True)
    summary = {who: {key: float(np.median([r[who][key] for r in rows])) for key in CHECKS} for who in WHO}
    lines = [
        "| solid | seed | MuJoCo alignment, locality | NeuROK alignment, locality |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['kind']} | {r['seed']} | {pair(r, 'mujoco')} | {pair(r, 'neurok')} |" for r in rows]
    lines.append(f"| median ({len(rows)}) | | {pair(summary, 'mujoco')} | {pair(summary, 'neurok')} |")
    write_results("pokes", {"speed": args.speed, "cases": rows, "median": summary}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
