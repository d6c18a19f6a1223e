"""The DDP scaling this machine allows without Ray or Lightning: plain torch DDP (gloo, one thread per
process) on `base` with a fixed synthetic batch, 1 process against 2, and two independent 1-process
runs at once (what the cores give without any communication). The Ray Train figure
(benchmarks/ray_train.py --only scaling) is read against these.

Usage: python benchmarks/ddp_floor.py [--steps 20] [--preset base]
"""

from __future__ import annotations

import argparse
import os
import socket
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


def seconds_per_step(rank: int, world: int, port: int, preset: str, steps: int, ddp: bool, out) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(**yaml.safe_load((ROOT / f"pipelines/model/{preset}.yaml").read_text())["model"])
    model = NeuROK(cfg)
    if ddp:
        os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        dist.init_process_group("gloo", rank=rank, world_size=world)
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
        cvae_loss(model(batch), batch, cfg.kl_weight, cfg.field_points)["loss"].backward()
        optimizer.step()
    out.put((time.perf_counter() - start) / steps)
    if ddp:
        dist.destroy_process_group()


def run(processes: int, ddp: bool, preset: str, steps: int) -> float:
    """The slowest process's seconds per step."""
    context = mp.get_context("spawn")
    out, port = context.Queue(), free_port()
    procs = [
        context.Process(target=seconds_per_step, args=(r, processes, port, preset, steps, ddp, out))
        for r in range(processes)
    ]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="base")
    args = parser.parse_args()
    one = run(1, False, args.preset, args.steps)
    apart = run(2, False, args.preset, args.steps)
    together = run(2, True, args.preset, args.steps)
    print(f"{args.preset}: 1 process {one:.3f} s/step; 2 independent processes {apart:.3f} s/step each")
    print(f"2-rank DDP {together:.3f} s/step: {2 * one / together:.2f}x the throughput of 1 process")
    print(f"(the cores alone allow {2 * one / apart:.2f}x)")


if __name__ == "__main__":
    main()
