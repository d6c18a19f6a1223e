"""What every benchmark script shares: where results go, and a best-of-n timer."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def best_ms(f: Callable[[], object], n: int = 5) -> float:
    """The fastest of n calls of f, in ms, after one warm-up call."""
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def write_results(name: str, results: dict, markdown: str | None = None) -> None:
    """benchmarks/results/<name>.json (and .md), and print the markdown (or the JSON)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    if markdown is not None:
        (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown if markdown is not None else json.dumps(results, indent=2))


def simulator_of(model: str, overrides: list[str]):
    """A model (a checkpoint, a pulled folder or models:/NAME@ALIAS) and its simulate settings with
    `overrides`, as `neurok simulate` reads them."""
    from neurok.config import config_path, load_config
    from neurok.eval.config import SimulateConfig
    from neurok.model.checkpoint import load_model
    from neurok.track.registry import model_files

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, settings = model_files(model, tmp)
        return load_model(checkpoint), load_config(
            SimulateConfig, config_path(settings, "simulate"), overrides
        )
