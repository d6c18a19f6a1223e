"""`make bench`: data-stage benchmarks. Writes benchmarks/results/data.json and data.md.

- generation: sequences per minute per object type with 2 processes; the process pool against Ray
  tasks with 1 and 2 workers (on a local cluster of a head and 1 or 2 one-CPU nodes, started before the
  timing, as `make train-cluster` starts one); and the default recipe end to end (wall time and peak
  memory of the process tree);
- store: write and read throughput (MB/s of raw array bytes) against reading the same shard files and
  decompressing their chunks directly (the limit), bytes per sequence, and the store's size against its
  arrays compressed on their own.

Usage: python benchmarks/run.py [--only generate|executors|store] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np

from common import ROOT, write_results
from neurok.config import load_config
from neurok.data.card import bytes_on_disk
from neurok.data.generate.recipe import Recipe
from neurok.data.store import SHARD_ARRAYS, Store, StoreLayout, StoreWriter, shard_name

sys.path.insert(0, str(ROOT / "scripts"))  # train_cluster.LocalCluster
MB = 2**20


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def drop_cache(path: Path) -> None:
    """Evict a store's files from the page cache so reads hit the disk (best effort, no root needed)."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def run_generate(
    recipe_path: str, out: Path, overrides: list[str], env: dict | None = None
) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB, parent + the largest worker x workers) of one `neurok data generate`."""
    code = (
        "import resource, sys; from neurok.cli.main import main; rc = main(sys.argv[1:]); "
        "import json; print('RUSAGE', json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss])); sys.exit(rc)"
    )
    args = ["data", "generate", recipe_path, "--out", str(out), "--no-progress", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=os.environ | (env or {})
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"generate failed:\n{proc.stderr[-3000:]}")
    self_kb, child_kb = json.loads(proc.stdout.split("RUSAGE", 1)[1].strip().splitlines()[0])
    workers = load_config(Recipe, recipe_path, overrides).workers
    return wall, (self_kb + child_kb * workers) / 2**20


def bench_types(quick: bool, tmp: Path) -> dict:
    from neurok.data.generate.scenes import CATEGORIES

    results = {}
    n = 8 if quick else 24
    for object_type in CATEGORIES:
        weights = [f"types.{t}.weight={1.0 if t == object_type else 0.0}" for t in CATEGORIES]
        overrides = [*weights, f"objects={n // 2}", "sequences_per_object=2", "workers=2"]
        wall, _ = run_generate(str(ROOT / "datasets/default.yaml"), tmp / f"{object_type}.zarr", overrides)
        results[object_type] = {"sequences": n, "seconds": wall, "sequences_per_minute": 60 * n / wall}
        print(f"generate {object_type}: {60 * n / wall:.1f} sequences/min")
    return results


def ray_cluster(workers: int):
    """A started local cluster (train_cluster.LocalCluster) whose `workers` CPUs have all joined."""
    from train_cluster import RAY, LocalCluster

    cluster = LocalCluster(workers)
    address = f"127.0.0.1:{cluster.port}"
    try:
        cluster.start()
        deadline = time.monotonic() + 120
        while (
            f"0.0/{workers}.0 CPU"
            not in subprocess.run(
                [RAY, "status", f"--address={address}"], capture_output=True, text=True
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"the local cluster's {workers} CPUs did not join in 120 s")
            time.sleep(1)
    except BaseException:  # whatever stops us here, stop the nodes we started
        cluster.stop()
        raise
    return cluster, address


def bench_executors(quick: bool, tmp: Path, objects: int | None = None) -> dict:
    """Each run pays a fixed start-up (interpreter, imports, Ray workers) of about 10 s here: more
    `objects` (2 sequences each) weigh it less."""
    n = objects or (8 if quick else 24)
    scaling = {}
    for executor, workers in (("process", 1), ("process", 2), ("ray", 1), ("ray", 2)):
        overrides = [f"objects={n}", "sequences_per_object=2", "store.sequences_per_shard=4"]
        overrides += [f"executor={executor}", f"workers={workers}"]
        cluster, env = None, {}
        if executor == "ray":
            cluster, address = ray_cluster(workers)
            env = {"RAY_ADDRESS": address}
        try:
            wall, _ = run_generate(
                str(ROOT / "datasets/default.yaml"), tmp / f"{executor}{workers}.zarr", overrides, env
            )
        finally:
            if cluster:
                cluster.stop()
        scaling[f"{executor} x{workers}"] = 60 * 2 * n / wall
        print(f"generate {executor} x{workers}: {60 * 2 * n / wall:.1f} sequences/min")
    scaling["ray 2 vs 1"] = scaling["ray x2"] / scaling["ray x1"]
    return scaling


def bench_generate(quick: bool, only_executors: bool, objects: int | None = None) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not only_executors:
            results["per_type"] = bench_types(quick, Path(tmp))
        results["executors_sequences_per_minute"] = bench_executors(quick, Path(tmp), objects)
        if not quick and not only_executors:
            out = Path(tmp) / "default.zarr"
            wall, peak = run_generate(str(ROOT / "datasets/default.yaml"), out, [])
            store = Store(str(out))
            results["default"] = {"sequences": len(store), "seconds": wall, "peak_memory_gb": peak}
            print(f"generate default: {len(store)} sequences in {wall:.0f} s, peak {peak:.2f} GB")
    return results


def raw_read(store_path: Path, store: Store) -> int:
    """Read every shard file and decompress its chunks without zarr: the limit a store read can reach."""
    total = 0
    for shard in store.shards:
        for key in SHARD_ARRAYS:
            array = store.root[f"{shard_name(shard['id'])}/{key}"]
            meta = array.metadata.codecs[0]
            chunk_rows = meta.chunk_shape[0]
            blosc = next(c for c in meta.codecs if c.__class__.__name__ == "BloscCodec")
            codec = numcodecs.Blosc(cname="zstd", clevel=blosc.clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)
            file = store_path / shard["path"] / key / "c" / "/".join(["0"] * array.ndim)
            if not file.exists():  # all fill value (e.g. no flagged vertices): zarr stores nothing
                total += array.nbytes
                continue
            data = file.read_bytes()
            n_chunks = -(-array.shape[0] // chunk_rows)
            index = np.frombuffer(data[-(16 * n_chunks + 4) : -4], "<u8").reshape(n_chunks, 2)
            for offset, nbytes in index:
                if offset != 2**64 - 1:  # empty chunk marker
                    total += len(codec.decode(data[offset : offset + nbytes]))
    return total


def bench_store(source: Path) -> dict:
    store = Store(str(source))
    sequences = list(store.iter_sequences())
    blocks = [list(store.iter_shard(s["id"])) for s in store.shards]
    raw = sum(s["nbytes"] for s in store.shards)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "copy.zarr"
        start = time.perf_counter()
        with StoreWriter(str(out), layout=StoreLayout()) as writer:
            for k, block in enumerate(blocks):
                writer.write_shard(k, block)
        write_s = time.perf_counter() - start
        copy = Store(str(out))
        reads, limits = [], []
        for _ in range(3):
            drop_cache(out)
            start = time.perf_counter()
            for shard in copy.shards:
                copy.read_shard_arrays(shard["id"])
            reads.append(time.perf_counter() - start)
            drop_cache(out)
            start = time.perf_counter()
            decoded = raw_read(out, copy)
            limits.append(time.perf_counter() - start)
        assert decoded >= raw, (decoded, raw)  # edge chunks decode padded to the full chunk shape
        compressed_alone = sum(
            len(numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE).encode(a))
            for block in blocks
            for a in _shard_arrays(block)
        )
        disk = bytes_on_disk(str(out))
    read_mbs, limit_mbs = raw / MB / min(reads), raw / MB / min(limits)
    result = {
        "sequences": len(sequences),
        "raw_mb": raw / MB,
        "write_mb_per_s": raw / MB / write_s,
        "read_mb_per_s": read_mbs,
        "raw_read_decompress_mb_per_s": limit_mbs,
        "read_vs_limit": read_mbs / limit_mbs,
        "bytes_per_sequence": disk / len(sequences),
        "disk_mb": disk / MB,
        "arrays_compressed_alone_mb": compressed_alone / MB,
        "size_vs_arrays_alone": disk / compressed_alone,
    }
    for k, v in result.items():
        print(f"store {k}: {v:.3f}" if isinstance(v, float) else f"store {k}: {v}")
    return result


def _shard_arrays(block) -> list[np.ndarray]:
    return [
        np.concatenate([s.frames.reshape(-1, 3) for s in block]),
        np.concatenate([s.faces for s in block]),
        np.concatenate([s.vertex_flags for s in block]),
    ]


def to_markdown(results: dict) -> str:
    lines = [f"# Data benchmarks ({results['machine']}, {results['date']})", ""]
    if "generate" in results:
        g = results["generate"]
        if "per_type" in g:
            lines += ["| object type | sequences | seconds | sequences/min (2 processes) |", "|---|" * 4]
            lines += [
                f"| {t} | {r['sequences']} | {r['seconds']:.1f} | {r['sequences_per_minute']:.1f} |"
                for t, r in g["per_type"].items()
            ]
        if "default" in g:
            d = g["default"]
            lines += [
                "",
                f"datasets/default.yaml: {d['sequences']} sequences in {d['seconds']:.0f} s, "
                f"peak memory {d['peak_memory_gb']:.2f} GB (targets: < 600 s, < 4 GB)",
            ]
        lines += ["", "| executor | sequences/min |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in g["executors_sequences_per_minute"].items()]
    if "store" in results:
        s = results["store"]
        lines += ["", "| store metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in s.items()]
        lines += ["", "targets: read_vs_limit >= 0.8, size_vs_arrays_alone <= 1.1"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["generate", "executors", "store"])
    parser.add_argument("--quick", action="store_true", help="fewer sequences (a smoke run)")
    parser.add_argument("--objects", type=int, help="objects per executor run (2 sequences each)")
    parser.add_argument("--store", help="an existing store to benchmark reads on (default: generate one)")
    args = parser.parse_args()
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    if args.only in (None, "generate", "executors"):
        results["generate"] = bench_generate(args.quick, args.only == "executors", args.objects)
    if args.only in (None, "store"):
        source = Path(args.store) if args.store else None
        with tempfile.TemporaryDirectory() as tmp:
            if source is None:
                source = Path(tmp) / "bench.zarr"
                run_generate(
                    str(ROOT / "datasets/default.yaml"), source, [] if not args.quick else ["objects=8"]
                )
            results["store"] = bench_store(source)
    # a partial run keeps the full one's files
    write_results(f"data_{args.only}" if args.only else "data", results, to_markdown(results))


if __name__ == "__main__":
    main()
