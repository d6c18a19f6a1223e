"""Training: config layering, the LR schedule, and resuming into the same MLflow run with identical losses."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from neurok.errors import ConfigError
from neurok.train.config import load_train_config
from neurok.train.local import read_checkpoint, train
from neurok.train.module import warmup_cosine
from test_loader_stores import write_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("train") / "s.zarr", (4, 4, 4, 4), splits={3: "val", 9: "val"})


def tiny_config(store: str, out, *extra: str):
    return load_train_config(
        "pipelines/smoke.yaml",
        [
            f"data.store={store}",
            f"output_dir={out}",
            "data.pairs_per_sequence=2",
            "trainer.max_steps=10",
            "trainer.val_every_n_steps=4",
            "trainer.checkpoint_every_n_steps=4",
            "trainer.plot_objects=1",
            *extra,
        ],
    )


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


class StopAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.step


def test_config_layers_defaults_preset_file_and_overrides():
    cfg = load_train_config("pipelines/train.yaml", ["preset=tiny", "model.width=48", "trainer.max_steps=7"])
    assert cfg.model.width == 48 and cfg.model.heads == 4  # override, then the tiny preset
    assert cfg.data.store == "datasets/out/default.zarr" and cfg.trainer.max_steps == 7  # the pipeline file
    assert load_train_config("pipelines/train.yaml").model.width == 128  # base is the default preset
    with pytest.raises(ConfigError, match="model.widht"):
        load_train_config("pipelines/train.yaml", ["model.widht=3"])
    with pytest.raises(ConfigError, match="preset 'huge' not found"):
        load_train_config("pipelines/train.yaml", ["preset=huge"])


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, warmup=10, total=110, final=0.01) for s in (0, 9, 10, 60, 110, 200)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[3] == pytest.approx(0.505) and lrs[4] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.01)


@pytest.mark.e2e
def test_resume_matches_the_uninterrupted_run(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # 14 train sequences x 2 pairs / batch 8 -> 3 batches an epoch: the interruption at step 5 is mid-epoch
    straight = LossRecorder()
    train(tiny_config(store, tmp_path / "a", "run_name=straight"), callbacks=[straight])

    first = LossRecorder()
    part = train(tiny_config(store, tmp_path / "b", "run_name=interrupted"), callbacks=[first, StopAt(5)])
    assert part.global_step == 5
    ckpt = read_checkpoint(part.last_checkpoint)  # loads with weights_only=True
    assert ckpt["global_step"] == 5 and ckpt["mlflow"]["run_id"] == part.run_id
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batch"] == 2  # mid-epoch position

    second = LossRecorder()
    capsys.readouterr()
    resumed_cfg = tiny_config(
        store, tmp_path / "b", f"resume={part.last_checkpoint}", "trainer.progress_bar=true"
    )
    resumed = train(resumed_cfg, callbacks=[second])
    assert resumed.run_id == part.run_id and resumed.global_step == 10
    bar = capsys.readouterr().err  # one bar over the run's steps, from where it resumed
    assert "train:  50%" in bar and "5/10" in bar and "10/10" in bar and "val/loss=" in bar
    assert sorted(second.losses) == list(range(6, 11))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(straight.losses[step], rel=1e-6, abs=1e-9), step
    assert first.losses == {s: pytest.approx(straight.losses[s], rel=1e-6) for s in range(1, 6)}
