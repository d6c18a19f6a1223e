"""Loader and training throughput: writes benchmarks/results/train.json and .md (train_PART.* with --only).

- loader: samples/s of the train split's WebDataset pipeline (2 workers) against (a) reading +
  decompressing the same shards in one process (the limit: train samples per second of reading, at the
  loader's pairs per sequence) and (b) a map-style Dataset that reads each sample's sequence by random access;
- training: step time and samples/s of `tiny` and `base`, their FLOPs per step, and MFU against the fp32
  matmul peak measured in the same run.

Usage: python benchmarks/train.py [STORE] [--only loader|training]
(STORE defaults to datasets/out/default.zarr, made by `make demo`)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from common import ROOT, write_results
from neurok.data.loader import LOADER_ARRAYS, FramePairStream, collate, make_loader
from neurok.data.store import Store, shard_name
from neurok.model import NeuROK, cvae_loss
from neurok.train.config import load_train_config


class RandomAccessPairs(Dataset):
    """The baseline: every sample reads its own sequence (partial zarr reads), in any order."""

    def __init__(self, stream: FramePairStream, sequences: list[int]):
        self.stream, self.sequences = stream, sequences

    def __len__(self) -> int:
        return len(self.sequences) * self.stream.cfg.pairs_per_sequence

    def __getitem__(self, i: int) -> dict:
        store = self.stream.store
        s = self.sequences[i // self.stream.cfg.pairs_per_sequence]
        shard = shard_name(int(store.column("shard")[s]))
        n_frames, n_vertices, n_faces, *first = (
            int(store.column(key)[s])
            for key in ("n_frames", "n_vertices", "n_faces", "vertex_offset", "face_offset")
        )
        end = first[0] + n_frames * n_vertices, first[1] + n_faces
        # partial reads: this sequence's rows only
        arrays = {
            key: store.root[f"{shard}/{key}"][a:b]
            for key, a, b in zip(LOADER_ARRAYS, first, end, strict=True)
        }
        rng = np.random.default_rng(i)
        pair = rng.choice(n_frames, 2, replace=False)
        return self.stream.make_samples(np.array([s]), arrays, pair[None], rng, tuple(first))[0]


def read_seconds(store: Store, sequences: list[int], repeats: int = 10) -> float:
    """Fastest of `repeats` passes reading + decompressing the shards that hold `sequences` (the arrays
    the loader reads). A pass takes ~0.1 s, so a few passes would leave the limit to scheduling noise.

    The pipeline measured is the train split's: a pass yields pairs_per_sequence samples of each train
    sequence, however many val/test sequences share its shards, so the limit counts those samples only.
    """
    shards = sorted({int(s) for s in store.column("shard")[sequences]})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for shard in shards:
            store.read_shard_arrays(shard, LOADER_ARRAYS)
        times.append(time.perf_counter() - start)
    return min(times)


def loader_rates(store_path: str, seconds: float = 20.0) -> dict:
    cfg = load_train_config(ROOT / "pipelines/train.yaml", ["preset=base", f"data.store={store_path}"]).data
    store = Store(store_path)
    train = [int(s) for s in (store.column("split") == 0).nonzero()[0]]
    limit = len(train) * cfg.pairs_per_sequence / read_seconds(store, train)

    def rate(batches) -> float:
        it = iter(batches)
        next(it)  # worker start-up excluded
        n, start = 0, time.perf_counter()
        for batch in it:
            n += len(batch["sequence"])
            if time.perf_counter() - start > seconds:
                break
        return n / (time.perf_counter() - start)

    loader = make_loader(cfg, store=store)
    # An epoch of a small store ends in about a second, and each worker fills its shuffle buffer (~60% of
    # its epoch here) before the first batch, outside the timed window: an endless epoch (the stream cycles
    # through its shards) times the steady state instead.
    loader.stream.batches_per_worker = 10**9
    pipeline = rate(loader)
    random_access = RandomAccessPairs(loader.stream, train)
    order = torch.randperm(len(random_access), generator=torch.Generator().manual_seed(0)).tolist()
    mapped = rate(
        DataLoader(
            torch.utils.data.Subset(random_access, order),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            multiprocessing_context="forkserver",
        )
    )
    return {
        "workers": cfg.num_workers,
        "load_average_1min": os.getloadavg()[0],  # other jobs on these cores: the pipeline suffers more
        "pipeline_samples_per_s": pipeline,
        "raw_read_decompress_samples_per_s": limit,
        "map_style_random_access_samples_per_s": mapped,
        "pipeline_vs_raw": pipeline / limit,
        "pipeline_vs_map_style": pipeline / mapped,
    }


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def training_rate(preset: str, store_path: str, steps: int = 12) -> dict:
    cfg = load_train_config(
        ROOT / "pipelines/train.yaml", [f"preset={preset}", f"data.store={store_path}", "data.num_workers=0"]
    )
    torch.manual_seed(0)
    batches = [b for _, b in zip(range(4), make_loader(cfg.data), strict=False)]
    model = NeuROK(cfg.model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch) -> None:
        loss = cvae_loss(model(batch), batch, cfg.model)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 4]  # a low quantile: other jobs may share these cores
    peak = max(matmul_peak() for _ in range(3))
    flops = counter.get_total_flops()
    return {
        "threads": torch.get_num_threads(),
        "batch_size": cfg.data.batch_size,
        "step_ms": step_s * 1e3,
        "samples_per_s": cfg.data.batch_size / step_s,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / step_s / 1e9,
        "fp32_matmul_peak_gflop_per_s": peak / 1e9,
        "mfu": flops / step_s / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Loader and training throughput.")
    parser.add_argument("store", nargs="?", default=str(ROOT / "datasets/out/default.zarr"))
    parser.add_argument(
        "--only", choices=("loader", "training"), help="measure one part (results: train_<part>.json/.md)"
    )
    args = parser.parse_args()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    if args.only != "training":
        results["loader"] = loader_rates(args.store)
    if args.only != "loader":
        results["training"] = {preset: training_rate(preset, args.store) for preset in ("tiny", "base")}
    if not args.only:
        results["loader"]["pipeline_vs_base_consumption"] = (
            results["loader"]["pipeline_samples_per_s"] / results["training"]["base"]["samples_per_s"]
        )
    write_results(f"train_{args.only}" if args.only else "train", results, to_markdown(results))


def to_markdown(results: dict) -> str:
    lines = [f"# Loader and training ({results['machine']}, {results['date']})", "", "| metric | value |"]
    lines.append("|---|---|")
    lines += [f"| loader {k} | {v:.2f} |" for k, v in results.get("loader", {}).items()]
    for preset, r in results.get("training", {}).items():
        lines += [f"| {preset} {k} | {v:.3g} |" for k, v in r.items()]
    lines += ["", "targets: pipeline_vs_raw >= 0.9, pipeline_vs_map_style >= 3, vs base consumption >= 5,"]
    lines += ["base MFU >= 50% of the fp32 matmul peak"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
