"""`neurok simulate --model CKPT --mesh FILE [--poke ...] [--gravity ...] [--velocity ...] --out DIR`."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


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
    parser.add_argument(
        "--spin", metavar="wx,wy,wz", help="initial angular velocity about the centroid, rad/s"
    )
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="x,y,z",
        help="hold the surface near a point (m); repeatable",
    )
    parser.add_argument(
        "--ground", type=float, metavar="Y", help="a ground plane at height Y (m); none by default"
    )
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
    from neurok.model.checkpoint import load_model
    from neurok.threads import limit_threads
    from neurok.track.registry import model_files

    if not Path(args.mesh).is_file():  # before the model loads (tens of seconds)
        raise BadInputError(f"--mesh {args.mesh}: no such file")
    if args.frames is not None and args.frames < 1:
        raise BadInputError(f"--frames must be >= 1, got {args.frames}")
    overrides = list(args.overrides) + ([f"dynamics.simulator.frames={args.frames}"] if args.frames else [])
    with tempfile.TemporaryDirectory() as tmp:  # where a models:/ URI is downloaded
        checkpoint, package_settings = model_files(args.model, tmp)
        model = load_model(checkpoint)
        cfg = load_config(SimulateConfig, config_path(args.config or package_settings, "simulate"), overrides)
    conditions = conditions_from_cli(args.poke, args.gravity, args.velocity, args.spin, args.pin, args.ground)
    vertices, faces = load_mesh(args.mesh, cfg.max_vertices)
    if cfg.threads:
        limit_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    result = simulate_mesh(
        model, vertices, faces, conditions, cfg.shape, cfg.dynamics, cfg.poke_radius, cfg.seed
    )
    files = write_rollout(args.out, result, cfg.render, title=f"NeuROK: {Path(args.mesh).name}")
    print(
        f"{len(result.time) - 1} frames of {len(vertices)} vertices, energy drift {result.energy_drift:.2e}"
    )
    print("physics checks:")
    for check in result.checks:
        print(f"  {check.line()}")
    for n, share in enumerate(result.absorbed):
        of_all = share["deformation"] / max(share["all"], 1e-12)
        print(
            f"  poke {n + 1}: the coordinates take {share['all']:.2%} of its work (a rigid body "
            f"{share['rigid_body']:.2%}), the deformation {of_all:.0%} of that"
        )
        if of_all < 0.1:
            log.warning(
                "poke %d: the deformation takes only %.0f%% of what the coordinates take up: the poke will "
                "move the object more than dent it (raise dynamics.reduction.max_dims, or train on pokes "
                "like it)",
                n + 1,
                100 * of_all,
            )
    for check in result.failed_checks:
        log.warning("physics check failed: %s", check.line())
    for kind, file in files.items():
        print(f"  {kind}: {file}")
    return 0
