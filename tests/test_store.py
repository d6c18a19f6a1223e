import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from conftest import wobbling_sphere
from neurok.data.schema import INDEX_FIELDS
from neurok.data.store import LOCK_NAME, Store, StoreWriter
from neurok.data.validate import validate
from neurok.errors import BadInputError, StoreError, StoreLockedError


def test_round_trip_is_exact(small_store):
    path, seqs = small_store
    store = Store(path)
    assert len(store) == 5
    assert store.index.shape == (5, len(INDEX_FIELDS))
    assert [s["n_sequences"] for s in store.shards] == [2, 2, 1]
    for i, (got, want) in enumerate(zip(store.iter_sequences(), seqs, strict=True)):
        assert got.name == want.name
        np.testing.assert_array_equal(got.frames, want.frames)
        np.testing.assert_array_equal(got.faces, want.faces)
        np.testing.assert_array_equal(store.sequence(i).frames, want.frames)
        assert got.conditions == pytest.approx(want.conditions)
    assert store.split_of(4) == "test" and store.category_of(0) == "elastic/blob"
    # normalisation maps frame 0's bounding box into the unit cube
    rest = (seqs[3].frames[0] - store.norm_center[3]) / store.norm_scale[3]
    assert rest.min() >= -0.5 - 1e-6 and rest.max() <= 0.5 + 1e-6
    assert np.isclose((rest.max(0) - rest.min(0)).max(), 1.0)


def test_each_shard_array_is_one_zarr_shard(small_store):
    path, _ = small_store
    shard_dir = os.path.join(path, "shards", "000000", "vertices", "c")
    files = [f for _, _, fs in os.walk(shard_dir) for f in fs]
    assert files == ["0"]  # one shard file holds every chunk of the loader shard's vertices


def test_fsspec_memory_url_round_trip():
    seq = wobbling_sphere("mem", 0)
    with StoreWriter("memory://neurok-test/store.zarr") as writer:
        writer.write_shard(0, [seq])
    got = next(Store("memory://neurok-test/store.zarr").iter_sequences())
    np.testing.assert_array_equal(got.frames, seq.frames)


def test_two_writers_fail_fast(tmp_path):
    path = str(tmp_path / "s.zarr")
    with StoreWriter(path), pytest.raises(StoreLockedError, match="being written by another process"):
        StoreWriter(path).__enter__()
    with StoreWriter(path):  # released on exit: a later writer gets in
        pass


def test_resume_skips_committed_shards_and_rejects_other_recipe(small_store):
    path, _ = small_store
    with StoreWriter(path, attrs={"provenance": {"recipe_hash": "fixture"}}) as writer:
        assert writer.completed_shards == {0, 1, 2}
    with (
        pytest.raises(StoreError, match="different recipe"),
        StoreWriter(path, attrs={"provenance": {"recipe_hash": "other"}}),
    ):
        pass


def test_crash_mid_shard_keeps_completed_shards(tmp_path):
    """A writer killed halfway through a shard: the store stays readable and the shard is rewritten."""
    path = str(tmp_path / "crash.zarr")
    script = textwrap.dedent(f"""
        import os, sys, zarr
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import wobbling_sphere
        from neurok.data.store import StoreWriter
        w = StoreWriter({path!r}).__enter__()
        w.write_shard(0, [wobbling_sphere("a", 0)])
        g = w.root.create_group("shards/000001")  # shard 1 started: arrays but no commit record
        g.create_array("vertices", shape=(10, 3), dtype="float32")
        os._exit(1)  # crash: no cleanup, lock left behind
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 1
    assert os.path.exists(os.path.join(path, LOCK_NAME))
    assert len(Store(path)) == 1
    report = validate(path)
    assert any("000001 is incomplete" in m for m in report.faults["complete"])
    with StoreWriter(path) as writer:  # the dead writer's lock is taken over
        assert writer.completed_shards == {0}
        writer.write_shard(1, [wobbling_sphere("b", 1)])
    assert validate(path).ok and len(Store(path)) == 2


def test_bad_sequence_is_rejected_with_its_name():
    with pytest.raises(BadInputError, match="sequence 'broken': face indices"):
        seq = wobbling_sphere("broken", 0)
        seq.faces[0, 0] = 10_000
        type(seq)(**{**seq.__dict__})


def test_stale_index_is_a_clear_error(small_store):
    path, _ = small_store
    root = zarr.open_group(path, mode="r+")
    root.attrs["n_sequences"] = 7
    with pytest.raises(StoreError, match="interrupted"):
        Store(path)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no 4D store"):
        Store(str(tmp_path / "nowhere.zarr"))


def test_manifest_hashes_are_stable(small_store, tmp_path):
    path, seqs = small_store
    again = str(tmp_path / "again.zarr")
    with StoreWriter(again) as writer:
        for shard, block in enumerate([seqs[0:2], seqs[2:4], seqs[4:5]]):
            writer.write_shard(shard, block)
    digests = [[s["sha256"] for s in Store(p).shards] for p in (path, again)]
    assert digests[0] == digests[1]
    assert json.dumps(Store(path).attrs["normalisation"])
