"""`neurok simulate` on a generated mesh, and its clear errors for meshes it cannot take."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from neurok.cli.main import main
from neurok.errors import BadInputError
from neurok.eval.meshes import check_mesh
from neurok.eval.rollout_files import parse_poke
from test_eval_adapter import tiny_checkpoint

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

torch.set_num_threads(1)

FAST = [
    "shape.points=64",
    "shape.max_queries=64",
    "dynamics.reduction.samples=8",
    "dynamics.reduction.dims=2",
    "dynamics.simulator.dt=0.03333333333333333",
    "render.video=gif",
    "render.size=64",
]


def test_simulate_writes_rollout_frames_video_and_viewer(tmp_path, capsys):
    mesh = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1, radius=2.0).export(mesh)  # 2 m: normalised, then mapped back
    out = tmp_path / "out"
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    argv = ["simulate", "--model", str(ckpt), "--mesh", str(mesh), "--poke", "2,0,0:-0.5,0,0@0-0.1"]
    argv += ["--gravity", "0,-9.81,0", "--velocity", "0.1,0,0", "--frames", "4", "--out", str(out), *FAST]
    assert main(argv) == 0
    rollout = np.load(out / "rollout.npz")
    assert rollout["vertices"].shape == (5, 42, 3) and np.isfinite(rollout["vertices"]).all()
    rest = trimesh.load(mesh, process=False).vertices
    assert rollout["scale"] == pytest.approx(np.ptp(rest, axis=0).max(), rel=1e-5)  # the unit cube <-> metres
    np.testing.assert_allclose(
        rollout["vertices"], rollout["normalised"] * rollout["scale"] + rollout["center"], atol=1e-5
    )
    assert len(list((out / "frames").glob("frame_*.obj"))) == 5
    assert (out / "rollout.gif").stat().st_size > 0 and (out / "viewer.html").stat().st_size > 0
    assert "energy drift" in capsys.readouterr().out


def _box() -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box()
    return np.asarray(box.vertices), np.asarray(box.faces)


def test_bad_meshes_get_clear_errors():
    v, f = _box()
    check_mesh(v, f, "box", 100)
    with pytest.raises(BadInputError, match="empty"):
        check_mesh(v[:0], f[:0], "m", 100)
    with pytest.raises(BadInputError, match="NaN"):
        check_mesh(np.where(np.arange(len(v))[:, None] == 3, np.nan, v), f, "m", 100)
    with pytest.raises(BadInputError, match="max_vertices"):
        check_mesh(v, f, "m", 4)
    fin = np.concatenate([f, [[0, 1, len(v)]]])  # a third face on edge (0, 1)
    with pytest.raises(BadInputError, match="not manifold"):
        check_mesh(np.concatenate([v, [[2.0, 2, 2]]]), fin, "m", 100)


def test_cli_refuses_a_broken_mesh_with_exit_code_2(tmp_path, capsys):
    mesh = tmp_path / "nan.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    assert main(["simulate", "--model", str(ckpt), "--mesh", str(mesh), "--out", str(tmp_path / "o")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_poke_syntax():
    poke = parse_poke("0.1,0,-2:0,5e-1,0@0.2-0.4")
    assert (
        poke.point == (0.1, 0.0, -2.0)
        and poke.force == (0.0, 0.5, 0.0)
        and (poke.start, poke.end) == (0.2, 0.4)
    )
    assert parse_poke("0,0,0:1,0,0").end == 0.1
    with pytest.raises(BadInputError, match="x,y,z:fx,fy,fz"):
        parse_poke("0,0:1,0,0")


def test_missing_mesh_is_reported_before_the_model_loads(tmp_path, capsys):
    missing = tmp_path / "nope.obj"
    # the model path does not exist either: the mesh is checked first, so its error is the one printed
    argv = [
        "simulate",
        "--model",
        str(tmp_path / "none.ckpt"),
        "--mesh",
        str(missing),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) != 0
    assert f"--mesh {missing}: no such file" in capsys.readouterr().err
