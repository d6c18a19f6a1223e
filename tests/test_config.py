from pathlib import Path

import pytest

from neurok.config import load_config, to_dict
from neurok.data.generate.recipe import Recipe
from neurok.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: mine\nframes: 10\nphysics:\n  p_poke: 0.25\n")
    recipe = load_config(Recipe, path, ["frames=12", "physics.substeps=3", "splits.heldout_categories=[a,b]"])
    assert (recipe.name, recipe.frames, recipe.physics.p_poke, recipe.physics.substeps) == (
        "mine",
        12,
        0.25,
        3,
    )
    assert recipe.splits.heldout_categories == ["a", "b"]
    assert to_dict(recipe)["frames"] == 12


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("physics:\n  p_pokee: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: bad config key 'physics.p_pokee'"):
        load_config(Recipe, path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("frames: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: bad config key 'frames'.*many"):
        load_config(Recipe, path)


def test_bad_override_names_the_override():
    with pytest.raises(ConfigError, match=r"command line override 'seed=abc'"):
        load_config(Recipe, None, ["seed=abc"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Recipe, None, ["seed"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Recipe, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a folder; give the pipeline's YAML file"):
        load_config(Recipe, tmp_path)


def test_cli_ingest_formats_come_from_the_reader_table(tmp_path, capsys):
    from neurok.cli.main import main
    from neurok.data.ingest import FORMATS

    with pytest.raises(SystemExit) as stopped:
        main(["data", "ingest", str(tmp_path), "--format", "bogus", "--out", str(tmp_path / "s.zarr")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and all(f"'{name}'" in err for name in FORMATS)
    with pytest.raises(SystemExit):
        main(["data", "ingest", "--help"])
    assert f"one of {', '.join(FORMATS)}" in " ".join(capsys.readouterr().out.split())


def test_cli_train_unknown_launcher_names_the_launchers(capsys):
    from neurok.cli.main import main

    assert main(["train", "pipelines/train.yaml", "launcher=slurm"]) == ConfigError.exit_code
    assert "launcher=slurm: expected one of local, ray" in capsys.readouterr().err


# every config file in the repository -> how the platform loads it
ROOT = Path(__file__).resolve().parents[1]


def _schema_loaders():
    from neurok.eval.config import EvalConfig, SimulateConfig
    from neurok.track.registry import RegistryConfig
    from neurok.train.config import TrainConfig, load_train_config
    from neurok.tune.config import TuneConfig

    def sweep(path):
        cfg = load_config(TuneConfig, path)
        load_train_config(cfg.train_config, cfg.train_overrides)  # the trials' training config loads too
        return cfg

    return [
        ("datasets/*.yaml", lambda p: load_config(Recipe, p)),
        ("pipelines/model/*.yaml", lambda p: load_config(TrainConfig, p)),
        ("pipelines/{train,train-science,smoke,cluster-local,cluster-gpu}.yaml", load_train_config),
        ("pipelines/{eval,science}.yaml", lambda p: load_config(EvalConfig, p)),
        ("pipelines/simulate.yaml", lambda p: load_config(SimulateConfig, p)),
        ("pipelines/registry.yaml", lambda p: load_config(RegistryConfig, p)),
        ("tune/*.yaml", sweep),
    ]


def _matches(path: str, pattern: str) -> bool:
    import fnmatch

    head, _, rest = pattern.partition("{")
    names, _, tail = rest.partition("}")
    options = [head + n + tail for n in names.split(",")] if names else [pattern]
    return any(fnmatch.fnmatch(path, o) and o.count("/") == path.count("/") for o in options)


CONFIG_FILES = sorted(
    str(p.relative_to(ROOT)) for d in ("datasets", "pipelines", "tune") for p in (ROOT / d).rglob("*.yaml")
)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_file_loads_against_its_schema(path):
    loaders = [load for pattern, load in _schema_loaders() if _matches(path, pattern)]
    assert len(loaders) == 1, f"{path}: no schema (or several) in _schema_loaders; add the one that loads it"
    assert loaders[0](ROOT / path) is not None


def test_extends_builds_on_a_base_and_refuses_a_circle(tmp_path):
    from neurok.train.config import TrainConfig

    (tmp_path / "base.yaml").write_text("seed: 3\ntrainer: {max_steps: 50, threads: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrainer: {max_steps: 9}\n")
    cfg = load_config(TrainConfig, tmp_path / "child.yaml", ["seed=4"])
    assert (cfg.seed, cfg.trainer.max_steps, cfg.trainer.threads) == (4, 9, 2)
    (tmp_path / "base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_config(TrainConfig, tmp_path / "child.yaml")
    (tmp_path / "child.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(TrainConfig, tmp_path / "child.yaml")
