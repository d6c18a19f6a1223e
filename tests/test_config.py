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
