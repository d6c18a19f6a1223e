"""A sweep trial whose process is killed (SIGKILL) is restarted by Tune and resumes from its last report:
its first report after the restart is the next validation, and it ends at the configured step in the same
MLflow run (slow: a Ray start-up and two trial start-ups)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from test_loader_stores import write_store

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 2  # tune/ci.yaml: trainer.max_steps, trainer.val_every_n_steps


def trial_actors(driver: psutil.Process) -> list[psutil.Process]:
    """The Tune trial processes the sweep driver's own Ray instance runs (Ray titles them by actor class)."""
    found = []
    for proc in driver.children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def reported_checkpoints(experiment: Path) -> int:
    """Tune checkpoints the trial has written (it writes report k's before sending it, and sends it only
    after Tune took report k-1: so two of them mean Tune holds at least the first)."""
    return max((int(p.name.rsplit("_", 1)[1]) + 1 for p in experiment.glob("*/checkpoint_*")), default=0)


def test_killed_trial_restarts_from_its_last_report(tmp_path):
    store = write_store(tmp_path / "s.zarr", (4, 4), splits={3: "val", 6: "val"})
    out, uri = tmp_path / "tune", f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"MLFLOW_TRACKING_URI": uri}
    log = tmp_path / "sweep.log"
    cmd = [
        *(sys.executable, "-m", "neurok.cli.main", "tune", "tune/ci.yaml", "name=restart"),
        *(f"store={store}", f"output_dir={out}", "search.algorithm=random", "search.num_samples=1"),
        *("scheduler.asha=false", "register=false", "resources.max_failures=1"),
    ]
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while reported_checkpoints(out / "ray_results" / "restart") < 2:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no second report in 300 s:\n" + log.read_text()[-3000:]
            time.sleep(0.05)
        (victim,) = trial_actors(psutil.Process(driver.pid))
        victim.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()

    (results,) = (out / "ray_results" / "restart").glob("*/result.json")
    reports = [json.loads(line) for line in results.read_text().splitlines()]
    before = [r for r in reports if r["pid"] == victim.pid]
    after = [r for r in reports if r["pid"] != victim.pid]
    assert before and after, f"no restart seen: {[(r['pid'], r['step']) for r in reports]}"
    # resumed from the last report Tune took, not from step 0: the next validation comes next
    assert after[0]["step"] == before[-1]["step"] + EVERY
    assert after[0]["training_iteration"] == before[-1]["training_iteration"] + 1
    assert [r["step"] for r in after][-2:] == [STEPS, STEPS]  # the last validation, then the final report
    assert "checkpoint" in after[-1] and after[-1]["val/ik_chamfer_l1"] >= 0

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
    (trial_run,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the same run, resumed
    assert trial_run.info.run_id == after[-1]["run_id"] == before[0]["run_id"]
    assert trial_run.info.status == "FINISHED"
