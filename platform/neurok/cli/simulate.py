"""`neurok simulate --model CKPT --mesh FILE [--poke ...] [--gravity ...] [--velocity ...] --out DIR`."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "simulate",
        help="simulate a mesh with a trained model: rollout NPZ, OBJ frames, video, HTML viewer",
        description="The mesh (OBJ, PLY or GLB; metres, y-up) is normalised to the unit cube, simulated in "
        "the model's latent space and written back in its own units. Overrides are dotted key=value pairs of "
        "pipelines/simulate.yaml, e.g. dynamics.simulator.damping=0.5 render.video=gif",
    )
    parser.add_argument(
        "--model", required=True, help="training checkpoint, pulled model folder, or models:/NAME@ALIAS"
    )
    parser.add_argument("--mesh", required=True, help="rest mesh: .obj, .ply or .glb")
    parser.add_argument(
        "--poke",
        action="append",
        default=[],
        metavar="x,y,z:fx,fy,fz@t0-t1",
        help="a force (N) on the surface near a point (m) during [t0, t1) s; repeatable",
    )
    parser.add_argument("--gravity", metavar="gx,gy,gz", help="m/s^2, y-up, e.g. 0,-9.81,0")
    parser.add_argument("--velocity", metavar="vx,vy,vz", help="initial velocity of the whole mesh, m/s")
    parser.add_argument("--frames", type=int, default=None, help="output frames after the first")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--config",
        default=None,
        help="pipeline YAML (default: a registered model's own settings, else pipelines/simulate.yaml)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import torch

    from neurok.config import config_path, load_config
    from neurok.errors import BadInputError
    from neurok.eval.config import SimulateConfig
    from neurok.eval.meshes import load_mesh
    from neurok.eval.rollout_files import conditions_from_cli, simulate_mesh, write_rollout
    from neurok.track.registry import model_files
    from neurok.train.checkpoint import load_model

    if args.frames is not None and args.frames < 1:
        raise BadInputError(f"--frames must be >= 1, got {args.frames}")
    overrides = list(args.overrides) + ([f"dynamics.simulator.frames={args.frames}"] if args.frames else [])
    with tempfile.TemporaryDirectory() as tmp:  # where a models:/ URI is downloaded
        checkpoint, package_settings = model_files(args.model, tmp)
        model = load_model(checkpoint)
        cfg = load_config(SimulateConfig, config_path(args.config or package_settings, "simulate"), overrides)
    conditions = conditions_from_cli(args.poke, args.gravity, args.velocity)
    vertices, faces = load_mesh(args.mesh, cfg.max_vertices)
    torch.manual_seed(cfg.seed)
    result = simulate_mesh(
        model, vertices, faces, conditions, cfg.shape, cfg.dynamics, cfg.poke_radius, cfg.seed
    )
    files = write_rollout(args.out, result, cfg.render, title=f"NeuROK: {Path(args.mesh).name}")
    print(
        f"{len(result.time) - 1} frames of {len(vertices)} vertices, energy drift {result.energy_drift:.2e}"
    )
    for kind, file in files.items():
        print(f"  {kind}: {file}")
    return 0
