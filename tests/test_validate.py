"""Every planted fault is caught by `validate`, and named."""

import numpy as np
import pytest
import zarr

from conftest import wobbling_sphere
from neurok.cli.main import main
from neurok.data.store import StoreWriter
from neurok.data.validate import validate


def _write(path, seqs):
    with StoreWriter(path) as writer:
        writer.write_shard(0, seqs)
    return path


def test_clean_store_is_valid(small_store, capsys):
    path, _ = small_store
    report = validate(path)
    assert report.ok, report.format()
    assert main(["data", "validate", path]) == 0
    assert "VALID" in capsys.readouterr().out


def test_nan_is_caught_by_finite_and_hash(small_store, capsys):
    path, _ = small_store
    vertices = zarr.open_group(path, mode="r+")["shards/000001/vertices"]
    vertices[5, 1] = np.nan  # first sequence of shard 1 is seq2
    report = validate(path)
    assert report.faults["finite"] == ["sequence 'seq2' (shards/000001): NaN/Inf in frames [0]"]
    assert "shards/000001: content hash" in report.faults["hash"][0]
    assert main(["data", "validate", path]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_topology_drift_is_caught(tmp_path):
    seq = wobbling_sphere("scrambled", 0)
    seq.frames[3] = seq.frames[3][np.random.default_rng(0).permutation(seq.n_vertices)]
    report = validate(_write(str(tmp_path / "s.zarr"), [seq]))
    assert "sequence 'scrambled'" in report.faults["topology"][0]
    assert "frame 3" in report.faults["topology"][0]


def test_degenerate_faces_are_caught(tmp_path):
    seq = wobbling_sphere("degenerate", 0)
    seq.faces[7] = [1, 1, 2]
    report = validate(_write(str(tmp_path / "s.zarr"), [seq]))
    assert report.faults["faces"] == [
        "sequence 'degenerate' (shards/000000): 1 degenerate faces (e.g. face 7)"
    ]


def test_scale_and_velocity_outliers_are_caught(tmp_path):
    huge = wobbling_sphere("huge", 1)
    huge.frames *= 1e4
    jumpy = wobbling_sphere("jumpy", 2)
    jumpy.frames[4:] += np.array([50.0, 0, 0], np.float32)
    report = validate(_write(str(tmp_path / "s.zarr"), [wobbling_sphere("ok", 0), huge, jumpy]))
    assert any("sequence 'huge'" in m and "outside" in m for m in report.faults["scale"])
    assert any("sequence #1" in m and "median" in m for m in report.faults["scale"])
    assert len(report.faults["velocity"]) == 1 and "sequence 'jumpy'" in report.faults["velocity"][0]


def test_split_leakage_is_caught(tmp_path):
    seqs = [wobbling_sphere("a", 5, split="train"), wobbling_sphere("b", 5, split="test")]
    report = validate(_write(str(tmp_path / "s.zarr"), seqs))
    assert report.faults["leakage"] == ["object 5 appears in several splits: ['test', 'train']"]


def test_missing_attribute_is_a_schema_fault(small_store):
    path, _ = small_store
    root = zarr.open_group(path, mode="r+")
    del root.attrs["units"]
    assert validate(path).faults["schema"] == ["group attribute 'units' is missing"]


def test_not_a_store_is_reported(tmp_path):
    report = validate(str(tmp_path / "missing.zarr"))
    assert not report.ok and "no 4D store" in report.faults["schema"][0]


@pytest.mark.parametrize("override", ["max_speed=0.001"])
def test_thresholds_are_configurable(small_store, override):
    path, _ = small_store
    assert main(["data", "validate", path, override]) == 1
