"""`neurok eval` end to end on a tiny synthetic store with a tiny untrained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurok.cli.main import main
from test_eval_adapter import tiny_checkpoint
from test_loader_stores import write_store

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

torch.set_num_threads(1)

BUDGET = [
    "objects=1",
    "surface_samples=128",
    "grid=8",
    "baseline_sequences=4",
    "baseline_frames=2",
    "anchors=4",
    "shape.points=64",
    "shape.max_queries=64",
    "dynamics.reduction.samples=8",
    "dynamics.reduction.dims=2",
    "dynamics.boundary.iterations=5",
    "dynamics.ik.iterations=5",
    "dynamics.simulator.integrator=rk4",
    "dynamics.simulator.dt=0.03333333333333333",  # one step per 30 fps frame: the test checks plumbing
    "render.video=gif",
    "render.size=64",
    "render.obj=true",
]


def test_eval_writes_the_table_json_plots_and_a_rendered_rollout(tmp_path, capsys):
    # sequences 0..5: 4 and 5 are test and held-out objects, the rest train (all elastic)
    store = write_store(tmp_path / "s.zarr", (3, 3), splits={4: "test", 5: "heldout"})
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(ckpt), "--data", store, "split=test", f"out_dir={out}", *BUDGET])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert [(r["object_type"], r["split"]) for r in report["rows"]] == [
        ("elastic", "test"),
        ("elastic", "heldout"),
        ("all", "all"),
    ]
    row = report["rows"][0]
    for key in (
        "recon_chamfer_l1",
        "recon_fscore",
        "ik_neurok_q_chamfer_l1",
        "ik_neurok_z_chamfer_l1",
        "ik_pca_iou",
        "ik_pca_k_chamfer_l1",
        "ik_nn_chamfer_l2",
    ):
        assert 0 <= row[key] < 10, key
    assert row["k_q"] == 2 and 0 <= row["retained"] <= 1 + 1e-6
    assert row["pca_k_dims"] > row["k_q"]  # as many as the latent has, or as the training bank allows
    assert {"explained_own", "explained_shuffled", "active_dims", "jacobian_sv_1"} <= set(report["latent"])
    assert row["rollout_failed"] == 0 and row["energy_drift"] < 0.5
    assert report["speed"]["mujoco_frames_per_s"].startswith("n/a")  # a synthetic store has no recipe
    table = (out / "metrics.md").read_text()
    assert "| elastic | heldout | 1 |" in table and "IK CD-L1 PCA k_q" in table and "IK CD-L1 PCA k " in table
    assert "Latent diagnostics" in table
    assert (out / "horizon.png").stat().st_size > 0 and (out / "energy.png").stat().st_size > 0
    rendered = next((out / "rollouts").iterdir())
    assert {p.name for p in rendered.iterdir()} >= {"rollout.npz", "rollout.gif", "viewer.html", "frames"}
    assert "| IK NeuROK (frame) |" in capsys.readouterr().out  # the summary, in the default IK space


def test_eval_of_a_trained_checkpoint_logs_to_a_child_of_its_training_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    store = write_store(tmp_path / "s.zarr", (3, 3), splits={4: "test", 5: "heldout"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("neurok", artifact_location=(tmp_path / "artifacts").as_uri())
    training = client.create_run(experiment, run_name="train").info.run_id
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(ckpt, weights_only=True) | {"mlflow": {"run_id": training, "tracking_uri": uri}}
    torch.save(checkpoint, ckpt)
    out = tmp_path / "science"
    overrides = [f"out_dir={out}", "rollouts=0", "speed=false", "renders=0", "generative_samples=4"]
    assert main(["eval", "--model", str(ckpt), "--data", store, *overrides, *BUDGET]) == 0

    summary = (out / "summary.md").read_text()
    assert "| test | all | 1 |" in summary and "| heldout | elastic | 1 |" in summary
    assert "- test: ratio" in summary and "coverage NeuROK" in summary
    assert summary in capsys.readouterr().out  # the table is what the command prints first
    row = json.loads((out / "metrics.json").read_text())["rows"][0]
    assert 0 <= row["gen_neurok_coverage"] <= 1 and 0 <= row["gen_pca_gauss_nna"] <= 1
    assert row["ik_neurok_frame_chamfer_l1"] < 10 and row["ik_pca_frame_chamfer_l1"] < 10

    (child,) = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{training}'")
    assert child.info.run_name == "eval-science" and child.info.status == "FINISHED"
    assert "eval/elastic/test/gen_neurok_mmd" in child.data.metrics
    assert "summary.md" in {f.path.split("/")[-1] for f in client.list_artifacts(child.info.run_id, "eval")}


def test_the_target_frame_is_the_one_that_moved_or_the_one_that_changed_shape_most():
    from neurok.eval.evaluate import target_frame

    rest = np.random.default_rng(0).normal(size=(50, 3))
    squashed = rest * np.array([1.0, 0.8, 1.0])  # a small change of shape
    turned_and_moved = rest @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) + 3.0
    frames = np.stack([rest, squashed, turned_and_moved])
    assert target_frame(frames, "motion") == 2 and target_frame(frames, "deformation") == 1
