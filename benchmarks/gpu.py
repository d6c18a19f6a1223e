"""The GPU path in one short run: writes benchmarks/results/gpu.json and .md.

- peak: torch, CUDA and the GPU, and the bf16 (and fp32) matmul peak measured in this run;
- steps: training step time of `base` and `paper` on real batches of STORE, bf16 autocast and fp32: step
  ms, samples/s, FLOPs per step (FlopCounterMode), MFU against the bf16 peak, peak GPU memory;
- train: `neurok train`'s own path (neurok.train.local.train: NeurokModule, FramePairDataModule with 2
  loader workers, Lightning, bf16-mixed, validation, checkpoints, MLflow) for a few dozen `base` steps:
  steps/s and whether the loss fell, and the GPU checkpoint read back on the CPU; then a one-GPU DDP run
  (Lightning's DDP strategy, devices=1, gloo: no NCCL) of the same parts (neurok.train.parts). Both log to
  an MLflow store in a temporary folder: the default SQLite store, or MLflow's file store
  (--mlflow-store file: no sqlalchemy, alembic or cryptography needed);
- rollout: latent-dynamics rollouts of a `base` model (untrained: a step costs the same whatever the
  weights) batched over B initial conditions of one object, and over a stack of B objects.

Every part is bounded by steps, runs on its own (a failure prints its traceback and the others go on),
prints its numbers as it ends and updates gpu.json. With --device cpu, sizes and steps shrink to a smoke
test of the same code.

Usage: python benchmarks/gpu.py [STORE] [--device cuda|cpu] [--parts peak,steps,train,rollout]
                                [--mlflow-store sqlite|file]
(STORE: a store made by `neurok data generate`, default datasets/out/default.zarr; a small one for a GPU
machine: `neurok data generate datasets/default.yaml objects=24 store.sequences_per_shard=6 --out ...`)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import RESULTS, ROOT, write_results
from neurok.train.config import load_train_config

PARTS = ("peak", "steps", "train", "rollout")


@dataclasses.dataclass
class Sizes:
    """What a run measures: full sizes on a GPU, a smoke test on the CPU."""

    matmul_n: int
    matmul_reps: int
    steps: int  # timed training steps per configuration, after `warmup`
    warmup: int
    runs: list[tuple[str, int, str]]  # (preset, batch size, bf16 | fp32)
    data: list[str]  # loader overrides for every step run (the CPU smoke shrinks the point counts)
    train_steps: int
    ddp_steps: int
    train_overrides: list[str]
    rollout_batches: list[int]
    rollout_frames: int
    rollout_points: int


def sizes(device: torch.device) -> Sizes:
    if device.type == "cuda":
        runs = [("base", b, p) for b in (16, 128) for p in ("bf16", "fp32")]
        runs += [("base", 512, "bf16"), ("paper", 64, "bf16"), ("paper", 64, "fp32")]
        return Sizes(8192, 10, 20, 5, runs, [], 80, 20, [], [1, 16, 128], 10, 2048)
    small = ["data.points=256", "data.queries=256", "data.vertices=128"]
    runs = [("base", 4, "bf16"), ("base", 4, "fp32"), ("paper", 2, "bf16")]
    return Sizes(512, 2, 2, 1, runs, small, 6, 3, [*small, "data.batch_size=4"], [1, 4], 2, 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of an n^3 matrix product: mean of `reps` after 3 warm-ups, synchronised."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def software() -> dict:
    names = ("torch", "lightning", "numpy", "numba", "zarr", "numcodecs", "webdataset", "omegaconf")
    versions = {}
    for name in (*names, "mlflow", "mlflow-skinny", "sqlalchemy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), **versions}


def peak(device: torch.device, size: Sizes) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "gpu": props.name,
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    else:
        out |= {"cpu": platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    bf16 = max(matmul_peak(device, torch.bfloat16, size.matmul_n, size.matmul_reps) for _ in range(2))
    fp32 = matmul_peak(device, torch.float32, size.matmul_n, max(1, size.matmul_reps // 2))
    return out | {
        "matmul_n": size.matmul_n,
        "bf16_matmul_tflop_per_s": bf16 / 1e12,
        "fp32_matmul_tflop_per_s": fp32 / 1e12,  # TF32 off, as training runs it
        "tf32_allowed": torch.backends.cuda.matmul.allow_tf32,
    }


def step_rate(
    store: str, preset: str, batch_size: int, precision: str, device: torch.device, size: Sizes, peak_flops
) -> dict:
    """One configuration: AdamW steps of the CVAE loss on 4 real batches, moved to the device."""
    from neurok.data.loader import make_loader
    from neurok.model import NeuROK, cvae_loss

    cfg = load_train_config(
        ROOT / "pipelines/train.yaml",
        [
            f"preset={preset}",
            f"data.store={store}",
            "data.num_workers=0",
            f"data.batch_size={batch_size}",
            *size.data,
        ],
    )
    torch.manual_seed(0)
    batches = [
        {k: v.to(device, non_blocking=True) for k, v in b.items()}
        for _, b in zip(range(4), make_loader(cfg.data), strict=False)
    ]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = NeuROK(cfg.model).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = precision == "bf16"
    losses = []

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = cvae_loss(model(batch), batch, cfg.model)["loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())

    with FlopCounterMode(display=False) as counter:
        step(0)
    for i in range(size.warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(size.steps):
        step(i)
    sync(device)
    step_s = (time.perf_counter() - start) / size.steps
    flops = counter.get_total_flops()
    out = {
        "preset": preset,
        "precision": precision,
        "batch_size": batch_size,
        "points": cfg.data.points,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_ms": step_s * 1e3,
        "samples_per_s": batch_size / step_s,
        "gflop_per_step": flops / 1e9,
        "tflop_per_s": flops / step_s / 1e12,
        "mfu_vs_bf16_peak": flops / step_s / peak_flops if peak_flops else None,
        "loss_finite": bool(torch.stack(losses).isfinite().all()),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def clock(device: torch.device):
    """A Lightning callback: the time and loss of every training step, synchronised so that a step's time
    includes its GPU work; and the process group, if any."""
    import lightning.pytorch as pl

    class Clock(pl.Callback):
        def __init__(self):
            self.times, self.losses, self.distributed = [], [], None

        def on_train_start(self, trainer, pl_module) -> None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                self.distributed = {"backend": dist.get_backend(), "world_size": dist.get_world_size()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)
            self.times.append(time.perf_counter())
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(loss.detach().float().cpu())

        def summary(self) -> dict:
            losses = [float(x) for x in self.losses]
            gaps = sorted(b - a for a, b in zip(self.times, self.times[1:], strict=False))
            n = min(10, len(losses) // 2) or 1
            first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
            out = {
                "steps": len(losses),
                "steady_steps_per_s": 1 / gaps[len(gaps) // 2] if gaps else None,  # median step
                "overall_steps_per_s": (len(gaps) / (self.times[-1] - self.times[0])) if gaps else None,
                "loss_first": first,
                "loss_last": last,
                "loss_decreased": last < first,
                "loss_finite": all(x == x and abs(x) != float("inf") for x in losses),
            }
            if self.distributed:
                out["process_group"] = self.distributed
            return out

    return Clock()


def train_config(store: str, device: torch.device, steps: int, out_dir: str, extra: list[str]):
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    every = max(1, steps // 2)
    return load_train_config(
        ROOT / "pipelines/train.yaml",
        [
            "preset=base",
            f"data.store={store}",
            "data.num_workers=2",
            f"trainer.max_steps={steps}",
            "trainer.max_minutes=0",
            f"trainer.val_every_n_steps={every}",
            f"trainer.checkpoint_every_n_steps={every}",
            "trainer.val_batches=2",
            "trainer.log_every_n_steps=5",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"trainer.precision={precision}",
            "trainer.progress_bar=false",
            "trainer.plot_objects=1",
            "optim.warmup_steps=10",
            f"output_dir={out_dir}",
            "run_name=gpu-smoke",
            *extra,
        ],
    )


@contextlib.contextmanager
def tracking_env(choice: str, tmp: str):
    """Runs track to an MLflow store under tmp: the default SQLite store (`<output_dir>/mlflow.db`), or
    MLflow's file store, which needs none of SQLite's packages (sqlalchemy, alembic, cryptography)."""
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if choice == "file":
        os.environ |= {"MLFLOW_TRACKING_URI": Path(tmp, "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def end_to_end(store: str, device: torch.device, size: Sizes, store_choice: str) -> dict:
    """`neurok train`'s own function (local launcher) for a few dozen steps; its checkpoint read back."""
    from mlflow.tracking import MlflowClient

    from neurok.model.checkpoint import load_model
    from neurok.train.local import train

    with tempfile.TemporaryDirectory(prefix="neurok-gpu-") as tmp, tracking_env(store_choice, tmp):
        cfg = train_config(store, device, size.train_steps, tmp, size.train_overrides)
        steps = clock(device)
        start = time.perf_counter()
        result = train(cfg, callbacks=[steps])
        wall = time.perf_counter() - start
        run = MlflowClient(result.tracking_uri).get_run(result.run_id)
        load_model(result.last_checkpoint)  # the checkpoint written on the GPU reads back on the CPU
        out = {
            "mlflow_store": result.tracking_uri.split(":")[0],
            "global_step": result.global_step,
            "val_loss": result.metrics.get("val/loss"),
            "mlflow_metrics": sorted(run.data.metrics),
            "mlflow_status": run.info.status,
            "checkpoints": sorted(p.name for p in result.last_checkpoint.parent.iterdir()),
            "wall_s": wall,
            "precision": cfg.trainer.precision,
            "workers": cfg.data.num_workers,
        }
    out |= steps.summary()
    print(f"[train] {json.dumps(out)}", flush=True)
    return out


def ddp(store: str, device: torch.device, size: Sizes, store_choice: str) -> dict:
    """One-GPU DDP (gloo: no NCCL) of the parts every launcher builds (neurok.train.parts), tracked."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from neurok.track import open_run, tracking_uri
    from neurok.train.parts import fit_parts

    with tempfile.TemporaryDirectory(prefix="neurok-ddp-") as tmp, tracking_env(store_choice, tmp):
        cfg = train_config(store, device, size.ddp_steps, tmp, size.train_overrides)
        uri = tracking_uri(cfg.output_dir)
        parts = fit_parts(cfg, uri, open_run(uri, cfg.experiment, "gpu-ddp", cfg.output_dir), resumed=False)
        steps = clock(device)
        options = parts.trainer_options | {"limit_val_batches": 0, "num_sanity_val_steps": 0}
        trainer = pl.Trainer(
            devices=1,
            strategy=DDPStrategy(process_group_backend="gloo"),
            callbacks=[*parts.callbacks, steps],
            default_root_dir=tmp,
            enable_checkpointing=False,
            **options | {"val_check_interval": None},
        )
        start = time.perf_counter()
        try:
            trainer.fit(parts.module, datamodule=parts.data)
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        out = {"strategy": type(trainer.strategy).__name__, "global_step": trainer.global_step}
        out |= {"wall_s": time.perf_counter() - start} | steps.summary()
    print(f"[ddp] {json.dumps(out)}", flush=True)
    return out


def rollouts(store_path: str, device: torch.device, size: Sizes) -> dict:
    """Latent rollouts of an untrained `base` model on one store object: B conditions, B stacked objects."""
    from neurok.data import sampling
    from neurok.data.store import Store
    from neurok.dynamics import (
        LatentShape,
        ReducedShape,
        ReductionConfig,
        SimulatorConfig,
        active_subspace,
        rollout,
    )
    from neurok.dynamics.from_model import latent_shape
    from neurok.dynamics.mechanics import metric
    from neurok.errors import NeurokError
    from neurok.model import NeuROK

    cfg = load_train_config(ROOT / "pipelines/train.yaml", ["preset=base"]).model
    torch.manual_seed(0)
    model = NeuROK(cfg)
    # The last layer starts at zero ("no deformation"): D would be constant in z and the metric zero.
    torch.nn.init.normal_(model.decoder.head[-1].weight, std=0.02)
    model.to(device).eval().requires_grad_(False)
    store = Store(store_path)
    s = int((store.column("split") == 0).nonzero()[0][0])
    seq = store.sequence(s)
    rest = sampling.normalise(seq.frames, store.norm_center[s], store.norm_scale[s])[0]
    start = time.perf_counter()
    latent = latent_shape(model, rest, seq.faces, points=size.rollout_points, max_queries=size.rollout_points)
    reduced = active_subspace(latent, ReductionConfig(dims=8))
    sync(device)
    setup_s = time.perf_counter() - start
    with torch.no_grad():
        _, J = reduced.jacobian_fn(reduced.tensors)(reduced.basis.new_zeros(reduced.dims))
        lightest = float(torch.linalg.eigvalsh(metric(J, latent.masses))[0])
    # The fastest mode at rest at 2 Hz: no step refinement, so every rollout takes fps * dt steps a frame.
    sim = SimulatorConfig(frames=size.rollout_frames, stiffness=(2 * torch.pi * 2.0) ** 2 * lightest)
    out = {
        "vertices": latent.num_vertices,
        "k": latent.latent_dims,
        "k_q": reduced.dims,
        "dt": sim.dt,
        "fps": sim.fps,
        "stiffness": sim.stiffness,
        "latent_shape_and_active_subspace_s": setup_s,
        "runs": [],
    }
    for mode in ("conditions", "objects"):
        for batch in size.rollout_batches:
            row = {"mode": mode, "batch": batch, "frames": sim.frames}
            try:
                if mode == "conditions":
                    shape = reduced
                else:
                    stacked = LatentShape.stack([latent] * batch)
                    shape = ReducedShape(stacked, reduced.basis.expand(batch, -1, -1).contiguous())
                generator = torch.Generator().manual_seed(batch)
                q0 = torch.zeros(batch, reduced.dims, device=device)
                qdot0 = (0.1 * torch.randn(batch, reduced.dims, generator=generator)).to(device)
                rollout(shape, q0, qdot0, dataclasses.replace(sim, frames=1))  # warm-up
                sync(device)
                start = time.perf_counter()
                result = rollout(shape, q0, qdot0, sim)
                sync(device)
                wall = time.perf_counter() - start
                steps = sum(result.steps)
                row |= {
                    "steps": steps,
                    "wall_s": wall,
                    "ms_per_step": wall / steps * 1e3,
                    "frames_per_s_per_rollout": sim.frames / wall,
                    "object_frames_per_s": batch * sim.frames / wall,
                    "energy_drift_max": float(result.energy_drift().max()),
                    "on_device": str(result.vertices.device),
                }
            except NeurokError as exc:
                row["error"] = str(exc)
            print(f"[rollout] {json.dumps(row)}", flush=True)
            out["runs"].append(row)
    return out


def imported_distributions() -> dict[str, str]:
    """The installed distributions this process imported, with their versions."""
    mapping = importlib.metadata.packages_distributions()
    names = {d for m in list(sys.modules) for d in mapping.get(m.partition(".")[0], [])}
    versions = {}
    for name in sorted(names, key=str.lower):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default=str(ROOT / "datasets/out/default.zarr"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument(
        "--mlflow-store",
        choices=("sqlite", "file"),
        default="sqlite",
        help="the MLflow store the train and ddp parts log to (file: without SQLite's packages)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    size = sizes(device)
    store = str(Path(args.store).resolve())
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "store": store, "software": software()}
    failed = []

    def save() -> None:  # after every part: a run killed by its time limit keeps what it measured
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu.json").write_text(json.dumps(results, indent=2, default=str))

    def run(name: str, fn) -> None:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            results[name] = fn()
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
        save()

    if "peak" in parts:
        run("peak", lambda: peak(device, size))
        print(json.dumps(results["peak"], indent=1), flush=True)
    peak_flops = (results.get("peak") or {}).get("bf16_matmul_tflop_per_s", 0) * 1e12
    if "steps" in parts:
        results["steps"] = []
        for preset, batch, precision in size.runs:
            name = f"steps {preset} b{batch} {precision}"
            run(
                name,
                lambda p=preset, b=batch, x=precision: step_rate(store, p, b, x, device, size, peak_flops),
            )
            row = results.pop(name)
            results["steps"].append({"preset": preset, "batch_size": batch, "precision": precision} | row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "train" in parts:
        run("train", lambda: end_to_end(store, device, size, args.mlflow_store))
        run("ddp", lambda: ddp(store, device, size, args.mlflow_store))
    if "rollout" in parts:
        run("rollout", lambda: rollouts(store, device, size))
    results["imported"] = imported_distributions()
    results["failed_parts"] = failed
    write_results("gpu", results, to_markdown(results))


def to_markdown(r: dict) -> str:
    p = r.get("peak", {})
    title = p.get("gpu") or f"{p.get('device', '?')}"
    lines = [f"# GPU check ({title}, torch {p.get('torch', '?')}, CUDA {p.get('cuda')}, {r['date']})", ""]
    if "bf16_matmul_tflop_per_s" in p:
        lines += [
            f"- matmul peak, n={p['matmul_n']}: bf16 {p['bf16_matmul_tflop_per_s']:.1f} TFLOP/s, "
            f"fp32 {p['fp32_matmul_tflop_per_s']:.1f} TFLOP/s",
            "",
        ]
    steps = [s for s in r.get("steps", []) if "step_ms" in s]
    if steps:
        lines += [
            "| preset | batch | precision | step ms | samples/s | GFLOP/step | TFLOP/s | MFU (bf16 peak) "
            "| peak GiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in steps:
            mfu = f"{100 * s['mfu_vs_bf16_peak']:.1f}%" if s.get("mfu_vs_bf16_peak") else "-"
            mem = f"{s['peak_memory_gib']:.2f}" if "peak_memory_gib" in s else "-"
            lines.append(
                f"| {s['preset']} | {s['batch_size']} | {s['precision']} | {s['step_ms']:.2f} | "
                f"{s['samples_per_s']:.0f} | {s['gflop_per_step']:.1f} | {s['tflop_per_s']:.2f} | "
                f"{mfu} | {mem} |"
            )
        lines.append("")
    for key in ("train", "ddp"):
        if key in r:
            lines.append(
                f"- {key}: " + ", ".join(f"{k}={v}" for k, v in r[key].items() if k != "mlflow_metrics")
            )
    runs = r.get("rollout", {}).get("runs", [])
    if runs:
        info = {k: v for k, v in r["rollout"].items() if k != "runs"}
        lines += ["", "rollouts: " + ", ".join(f"{k}={v}" for k, v in info.items()), ""]
        lines += ["| mode | batch | frames | steps | ms/step | frames/s per rollout | object-frames/s |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for x in runs:
            if "error" in x:
                lines.append(
                    f"| {x['mode']} | {x['batch']} | {x['frames']} | error: {x['error'][:80]} | | | |"
                )
            else:
                lines.append(
                    f"| {x['mode']} | {x['batch']} | {x['frames']} | {x['steps']} | {x['ms_per_step']:.2f} | "
                    f"{x['frames_per_s_per_rollout']:.1f} | {x['object_frames_per_s']:.1f} |"
                )
    failed = r.get("failed_parts") or []
    lines += ["", f"failed parts: {', '.join(failed) if failed else 'none'}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
