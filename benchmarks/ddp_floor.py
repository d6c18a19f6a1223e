"""The DDP scaling this machine allows without Lightning: plain torch DDP (gloo, one thread per process)
on `base` with a fixed synthetic batch, 1 process against 2, two independent 1-process runs at once (what
the cores give without any communication), and the same DDP loop in Ray Train workers on a local Ray of
2 CPUs (what Ray itself costs). The full path (benchmarks/ray_train.py --only scaling) is read against
these.

Usage: python benchmarks/ddp_floor.py [--steps 20] [--preset base] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.nn.parallel import DistributedDataParallel

from common import ROOT
from neurok.model import NeuROK, cvae_loss
from neurok.model.config import ModelConfig

WARMUP = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_steps(preset: str, steps: int, ddp: bool) -> float:
    """Seconds per optimiser step after WARMUP steps, on one thread (DDP if a process group is up)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(**yaml.safe_load((ROOT / f"pipelines/model/{preset}.yaml").read_text())["model"])
    model = NeuROK(cfg)
    if ddp:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    size, points = 16, 512  # the base preset's batch
    batch = {
        "points": torch.rand(size, points, 3) - 0.5,
        "displacement": 0.01 * torch.randn(size, points, 3),
        "queries": torch.rand(size, points, 3) - 0.5,
        "query_displacement": 0.01 * torch.randn(size, points, 3),
    }
    for i in range(WARMUP + steps):
        if i == WARMUP:
            start = time.perf_counter()
        optimizer.zero_grad()
        cvae_loss(model(batch), batch, cfg)["loss"].backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def process_worker(rank: int, world: int, port: int, preset: str, steps: int, ddp: bool, out) -> None:
    if ddp:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        dist.init_process_group("gloo", rank=rank, world_size=world)
    out.put(time_steps(preset, steps, ddp))
    if ddp:
        dist.destroy_process_group()


def run(processes: int, ddp: bool, preset: str, steps: int) -> float:
    """The slowest process's seconds per step."""
    context = mp.get_context("spawn")
    out, port = context.Queue(), free_port()
    procs = [
        context.Process(target=process_worker, args=(r, processes, port, preset, steps, ddp, out))
        for r in range(processes)
    ]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def ray_worker(config: dict) -> None:
    """One Ray Train rank (Ray has set up the gloo group): the same loop; rank 0 writes the slowest time."""
    seconds = torch.tensor(time_steps(config["preset"], config["steps"], ddp=True))
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        with open(config["out"], "w") as f:
            f.write(str(float(seconds)))


def run_ray(workers: int, preset: str, steps: int) -> float:
    """Seconds per step of the DDP loop in `workers` 1-CPU Ray Train workers (a fresh local Ray of 2 CPUs)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from neurok.train.ray_launcher import start_local_ray

    temp = tempfile.mkdtemp(prefix="nrd", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ["RAY_TMPDIR"] = temp
    start_local_ray(num_cpus=2, log_to_driver=False)  # as `neurok train launcher=ray` starts one
    try:
        TorchTrainer(
            ray_worker,
            train_loop_config={"preset": preset, "steps": steps, "out": f"{temp}/step_s"},
            torch_config=TorchConfig(backend="gloo", timeout_s=300),
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"floor-{workers}", storage_path=f"{temp}/results"),
        ).fit()
        with open(f"{temp}/step_s") as f:
            return float(f.read())
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Train rows")
    args = parser.parse_args()
    one = run(1, False, args.preset, args.steps)
    apart = run(2, False, args.preset, args.steps)
    together = run(2, True, args.preset, args.steps)
    print(f"{args.preset}: 1 process {one:.3f} s/step; 2 independent processes {apart:.3f} s/step each")
    print(f"2-rank DDP {together:.3f} s/step: {2 * one / together:.2f}x the throughput of 1 process")
    print(f"(the cores alone allow {2 * one / apart:.2f}x)")
    if not args.no_ray:
        os.environ |= {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}
        os.environ.pop("RAY_ADDRESS", None)
        ray_one, ray_two = run_ray(1, args.preset, args.steps), run_ray(2, args.preset, args.steps)
        print(f"the same loop in Ray Train: 1 worker {ray_one:.3f} s/step, 2 workers {ray_two:.3f} s/step:")
        print(f"{2 * ray_one / ray_two:.2f}x the throughput of 1 worker")


if __name__ == "__main__":
    main()
