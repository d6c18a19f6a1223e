"""Ray Train DDP benchmarks. Writes benchmarks/results/ray_train.json and .md (ray_train_<part> with --only).

- scaling: training throughput (samples/s, after warm-up steps) of `neurok train launcher=ray` on a
  preset (default `base`) with 2 workers x 1 CPU against 1 worker x 1 CPU, on a local Ray with 2 CPUs;
- comm: the communication share of a DDP step as the model grows: gloo all-reduce of the gradient bytes
  alone / the whole DDP step (forward, backward, all-reduce), 2 workers, for several model widths;
- recovery: seconds from SIGKILL of one training worker to training resumed (its replacement starts its
  fit) and to the run's end, through the CLI.

The machine is shared and loaded: figures are what one run measured, not best-of-many.
Usage: python benchmarks/ray_train.py [--only scaling|comm|recovery] [--store PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

from common import ROOT, write_results

WARMUP = 3  # steps left out of the throughput: worker start, first allocations


class StepTimer(pl.Callback):
    """Rank 0 appends the wall time of every training step to `path` (runs inside the Ray workers)."""

    def __init__(self, path: str):
        self.path = path
        self.last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if trainer.is_global_zero and self.last is not None:
            with open(self.path, "a") as f:
                f.write(f"{now - self.last}\n")
        self.last = now


def scaling(store: str, preset: str, steps: int, work: Path) -> dict:
    import ray

    from neurok.train.config import load_train_config
    from neurok.train.ray_launcher import start_local_ray, train

    out = {}
    for workers in (1, 2):
        timer = work / f"steps-{workers}.txt"
        cfg = load_train_config(
            "pipelines/cluster-local.yaml",
            [
                f"preset={preset}",
                f"data.store={store}",
                f"output_dir={work / f'out-{workers}'}",
                f"run_name=scaling-{workers}",
                f"trainer.max_steps={steps}",
                f"trainer.val_every_n_steps={steps * 10}",
                f"trainer.checkpoint_every_n_steps={steps * 10}",  # only the final one
                "trainer.sanity_val_steps=0",
                "trainer.progress_bar=false",
                "trainer.plot_objects=0",
                "trainer.system_metrics=false",
                f"ray.num_workers={workers}",
            ],
        )
        start_local_ray(num_cpus=2, log_to_driver=False)  # as `neurok train launcher=ray` starts one
        try:
            train(cfg, callbacks=[StepTimer(str(timer))])
        finally:
            ray.shutdown()
        times = [float(t) for t in timer.read_text().split()][WARMUP:]
        step = sum(times) / len(times)
        out[f"{workers}x1cpu"] = {
            "step_s": step,
            "samples_per_s": workers * cfg.data.batch_size / step,
            "steps_timed": len(times),
        }
    out["speedup_2_over_1"] = out["2x1cpu"]["samples_per_s"] / out["1x1cpu"]["samples_per_s"]
    return out


def comm_worker(config: dict) -> None:
    """One rank: time whole DDP steps and the bare all-reduce of the same gradient bytes, per width."""
    import ray.train
    import torch
    import torch.distributed as dist

    from neurok.data.loader import LoaderConfig, make_loader
    from neurok.model import ModelConfig, NeuROK, cvae_loss

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    loader_cfg = LoaderConfig(store=config["store"], batch_size=8, points=512, queries=512, num_workers=0)
    batch = next(iter(make_loader(loader_cfg, "train", ctx.get_world_rank(), ctx.get_world_size())))
    rows = []
    for width in config["widths"]:
        model = NeuROK(ModelConfig(width=width, heads=4, tokens=32, encoder_depth=3, decoder_depth=3))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        grads = torch.zeros(sum(p.numel() for p in model.parameters()))

        def step(ddp=ddp, model=model):
            loss = cvae_loss(ddp(batch), batch, model.cfg)["loss"]
            loss.backward()

        def reduce(grads=grads):
            dist.all_reduce(grads)

        timings = {}
        for name, fn in (("step", step), ("allreduce", reduce)):
            fn()  # warm-up
            dist.barrier()
            start = time.perf_counter()
            for _ in range(config["repeats"]):
                fn()
            dist.barrier()
            timings[name] = (time.perf_counter() - start) / config["repeats"]
        rows.append(
            {"width": width, "params": grads.numel(), "grad_mb": grads.numel() * 4 / 2**20, **timings}
        )
    if ctx.get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(rows))


def comm(store: str, work: Path, widths: list[int], repeats: int) -> list[dict]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from neurok.train.ray_launcher import start_local_ray

    out = work / "comm.json"
    start_local_ray(num_cpus=2, log_to_driver=False)
    try:
        TorchTrainer(
            comm_worker,
            train_loop_config={"store": store, "widths": widths, "repeats": repeats, "out": str(out)},
            torch_config=TorchConfig(backend="gloo", timeout_s=300),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="comm", storage_path=str(work / "comm_results")),
        ).fit()
    finally:
        ray.shutdown()
    rows = json.loads(out.read_text())
    for row in rows:
        row["comm_share"] = row["allreduce"] / row["step"]
    return rows


def recovery(store: str, work: Path) -> dict:
    """Kill rank 1 once Ray has registered a checkpoint; time until its replacement starts training."""
    run = work / "rec" / "ray_results" / "recovery"
    cmd = [
        *(sys.executable, "-m", "neurok.cli.main", "train", "pipelines/cluster-local.yaml", "preset=tiny"),
        *(f"data.store={store}", f"output_dir={work / 'rec'}", "run_name=recovery", "trainer.max_steps=60"),
        *("trainer.checkpoint_every_n_steps=10", "trainer.val_every_n_steps=1000", "trainer.plot_objects=0"),
        *("trainer.progress_bar=false", "trainer.system_metrics=false", "trainer.sanity_val_steps=0"),
    ]
    log = work / "recovery.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def read(path: Path):
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait(predicate):
        while (value := predicate()) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"training ended early, see {log}")
            time.sleep(0.1)
        return value

    snapshot = run / "checkpoint_manager_snapshot.json"
    wait(lambda: True if (s := read(snapshot)) and s["checkpoint_results"] else None)
    victim = read(run / "ranks" / "rank-1.json")
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.perf_counter()
    back = wait(
        lambda: r if (r := read(run / "ranks" / "rank-1.json")) and r["pid"] != victim["pid"] else None
    )
    resumed = time.perf_counter() - killed
    proc.wait()
    return {
        "kill_to_resumed_s": resumed,
        "kill_to_end_s": time.perf_counter() - killed,
        "resumed_from_step": back["start_step"],
        "checkpoint_every": 10,
        "exit_code": proc.returncode,
    }


def markdown(results: dict) -> str:
    lines = [f"# Ray Train benchmarks ({results['machine']})", ""]
    if "scaling" in results:
        s = results["scaling"]
        lines += [
            f"## DDP scaling, preset {results['preset']}",
            "",
            "| workers | step s | samples/s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['step_s']:.3f} | {v['samples_per_s']:.2f} |" for k, v in s.items() if "cpu" in k
        ]
        lines += ["", f"speed-up 2 workers / 1 worker: **{s['speedup_2_over_1']:.2f}x**", ""]
    if "comm" in results:
        lines += [
            "## Communication share (2 workers, gloo)",
            "",
            "| width | params | grad MB | step s | all-reduce s | share |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['width']} | {r['params']} | {r['grad_mb']:.1f} | {r['step']:.3f} | {r['allreduce']:.4f} "
            f"| {r['comm_share']:.1%} |"
            for r in results["comm"]
        ]
        lines.append("")
    if "recovery" in results:
        r = results["recovery"]
        lines += [
            "## Fault recovery",
            "",
            f"SIGKILL of rank 1 -> replacement training: {r['kill_to_resumed_s']:.1f} s "
            f"(resumed from step {r['resumed_from_step']}, checkpoints every {r['checkpoint_every']})",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["scaling", "comm", "recovery"])
    parser.add_argument("--store", default="datasets/out/default.zarr")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    os.chdir(ROOT)
    store = str(Path(args.store).resolve())
    temp = tempfile.mkdtemp(prefix="nrb", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ |= {
        "RAY_TMPDIR": temp,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
    }
    os.environ.pop("RAY_ADDRESS", None)
    work = Path(temp) / "work"
    work.mkdir()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    results = {"machine": f"{os.cpu_count()} cores, shared with other work", "preset": args.preset}
    try:
        if args.only in (None, "scaling"):
            results["scaling"] = scaling(store, args.preset, args.steps, work)
        if args.only in (None, "comm"):
            results["comm"] = comm(store, work, widths=[64, 128, 256, 512], repeats=5)
        if args.only in (None, "recovery"):
            results["recovery"] = recovery(store, work)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    # a partial run keeps the full one's files
    write_results(f"ray_train_{args.only}" if args.only else "ray_train", results, markdown(results))


if __name__ == "__main__":
    main()
