"""`make bench`: data-stage benchmarks. Writes benchmarks/results/data.json and data.md.

- generation: sequences per minute per object type with 2 processes; the process pool against Ray
  tasks with 1 and 2 workers (wall time including Ray start-up); and the default recipe end to end
  (wall time and peak memory of the process tree);
- store: write and read throughput (MB/s of raw array bytes) against reading the same shard files and
  decompressing their chunks directly (the limit), bytes per sequence, and the store's size against its
  arrays compressed on their own.

Usage: python benchmarks/run.py [--only generate|store] [--quick]
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

from neurok.config import load_config
from neurok.data.card import bytes_on_disk
from neurok.data.generate.recipe import Recipe
from neurok.data.store import SHARD_ARRAYS, Store, StoreLayout, StoreWriter, shard_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
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


def run_generate(recipe_path: str, out: Path, overrides: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB, parent + the largest worker x workers) of one `neurok data generate`."""
    code = (
        "import resource, sys; from neurok.cli.main import main; rc = main(sys.argv[1:]); "
        "import json; print('RUSAGE', json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss])); sys.exit(rc)"
    )
    args = ["data", "generate", recipe_path, "--out", str(out), "--no-progress", *overrides]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"generate failed:\n{proc.stderr[-3000:]}")
    self_kb, child_kb = json.loads(proc.stdout.split("RUSAGE", 1)[1].strip().splitlines()[0])
    workers = load_config(Recipe, recipe_path, overrides).workers
    return wall, (self_kb + child_kb * workers) / 2**20


def bench_generate(quick: bool) -> dict:
    from neurok.data.generate.scenes import CATEGORIES

    results: dict = {"per_type": {}}
    n = 8 if quick else 24
    with tempfile.TemporaryDirectory() as tmp:
        for object_type in CATEGORIES:
            weights = [f"types.{t}.weight={1.0 if t == object_type else 0.0}" for t in CATEGORIES]
            overrides = [*weights, f"objects={n // 2}", "sequences_per_object=2", "workers=2"]
            wall, _ = run_generate(
                str(ROOT / "datasets/default.yaml"), Path(tmp) / f"{object_type}.zarr", overrides
            )
            results["per_type"][object_type] = {
                "sequences": n,
                "seconds": wall,
                "sequences_per_minute": 60 * n / wall,
            }
            print(f"generate {object_type}: {60 * n / wall:.1f} sequences/min")
        scaling = {}
        for executor, workers in (("process", 1), ("process", 2), ("ray", 1), ("ray", 2)):
            overrides = [f"objects={n}", "sequences_per_object=2", "store.sequences_per_shard=4"]
            overrides += [f"executor={executor}", f"workers={workers}"]
            out = Path(tmp) / f"{executor}{workers}.zarr"
            wall, _ = run_generate(str(ROOT / "datasets/default.yaml"), out, overrides)
            scaling[f"{executor} x{workers}"] = 60 * 2 * n / wall
            print(f"generate {executor} x{workers}: {60 * 2 * n / wall:.1f} sequences/min")
        scaling["ray 2 vs 1"] = scaling["ray x2"] / scaling["ray x1"]
        results["executors_sequences_per_minute"] = scaling
        if not quick:
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
        lines += ["| object type | sequences | seconds | sequences/min (2 processes) |", "|---|---|---|---|"]
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
    parser.add_argument("--only", choices=["generate", "store"])
    parser.add_argument("--quick", action="store_true", help="fewer sequences (a smoke run)")
    parser.add_argument("--store", help="an existing store to benchmark reads on (default: generate one)")
    args = parser.parse_args()
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    if args.only in (None, "generate"):
        results["generate"] = bench_generate(args.quick)
    if args.only in (None, "store"):
        source = Path(args.store) if args.store else None
        with tempfile.TemporaryDirectory() as tmp:
            if source is None:
                source = Path(tmp) / "bench.zarr"
                run_generate(
                    str(ROOT / "datasets/default.yaml"), source, [] if not args.quick else ["objects=8"]
                )
            results["store"] = bench_store(source)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "data.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
