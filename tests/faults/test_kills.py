"""Kills: generation SIGKILLed (the whole process group, as when a node or container dies) at seeded random
points, then rerun. The rerun must finish, the store must validate, and its shard hashes must equal an
uninterrupted run's: nothing committed is lost or corrupted, whatever the moment of the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurok.cli.main import main
from neurok.data.store import Store
from neurok.data.validate import validate
from neurok.errors import StoreError

pytestmark = pytest.mark.slow  # `make faults` (and `make test-full`) run them: ~1 min

TINY = Path(__file__).resolve().parents[2] / "datasets" / "tiny.yaml"
KILL_AFTER_S = sorted(np.random.default_rng(34).uniform(0.3, 3.5, 10).round(2).tolist())


def generate_args(path: Path) -> list[str]:
    return ["data", "generate", str(TINY), "--out", str(path), "--no-progress"]


def shard_hashes(path: Path) -> list[str]:
    return [s["sha256"] for s in Store(str(path)).shards]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("kills") / "whole.zarr"
    assert main(generate_args(path)) == 0
    return shard_hashes(path)


@pytest.mark.parametrize(
    "after", KILL_AFTER_S, ids=[f"SIGKILL of generation at {s:.2f} s" for s in KILL_AFTER_S]
)
def test_generation_killed_anywhere_resumes_to_the_same_store(
    after, uninterrupted, tmp_path, record_property
):
    path = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "neurok.cli.main", *generate_args(path)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        kept = len(Store(str(path)).shards)
    except StoreError:  # killed before the store's first table was written
        kept = 0
    start = time.perf_counter()
    assert main(generate_args(path)) == 0
    recovered = time.perf_counter() - start
    record_property("stage", "kill")
    record_property("outcome", "recovered, nothing lost")
    record_property(
        "message",
        f"{kept} of {len(uninterrupted)} shards committed at the kill; the rerun resumed and finished in "
        f"{recovered:.1f} s; the store validates and equals an uninterrupted run's, shard by shard",
    )
    report = validate(str(path))
    assert report.ok, report.format()
    assert shard_hashes(path) == uninterrupted
