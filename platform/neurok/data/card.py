"""The dataset card: what a store holds (counts per type, category and split; frames; vertices; sizes)."""

from __future__ import annotations

from collections import Counter

import fsspec
import numpy as np

from neurok.data.schema import OBJECT_TYPES, SPLITS
from neurok.data.store import Store


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def dataset_card(store: Store, sources: list[str] | None = None, notes: list[str] | None = None) -> dict:
    """Facts computed from the store's index, plus the sources and notes its writer supplies."""
    types = [OBJECT_TYPES[t] for t in store.column("object_type")]
    splits = [SPLITS[s] for s in store.column("split")]
    cats = [store.categories[c] for c in store.column("category")]
    by_type_split: dict[str, dict[str, int]] = {}
    for t, s in zip(types, splits, strict=True):
        by_type_split.setdefault(t, {}).setdefault(s, 0)
        by_type_split[t][s] += 1
    return {
        "sequences": len(store),
        "objects": len(set(store.column("object_id").tolist())),
        "loader_shards": len(store.shards),
        "per_type_and_split": by_type_split,
        "per_category": dict(sorted(Counter(cats).items())),
        "per_split": dict(Counter(splits)),
        "frames": _stats(store.column("n_frames")),
        "vertices": _stats(store.column("n_vertices")),
        "faces": _stats(store.column("n_faces")),
        "raw_bytes": int(sum(s["nbytes"] for s in store.shards)),
        "dropped": list(store.attrs.get("dropped", [])),  # planned sequences MuJoCo could not keep stable
        "sources": sources or [],
        "notes": notes or [],
    }


def bytes_on_disk(path: str) -> int:
    fs, p = fsspec.url_to_fs(path)
    return int(fs.du(p, total=True)) if fs.exists(p) else 0


def format_card(card: dict, path: str, disk_bytes: int) -> str:
    """The card as a short human-readable report."""
    mb = 1 / 2**20
    lines = [
        f"4D store {path}",
        f"  sequences {card['sequences']}  objects {card['objects']}  loader shards {card['loader_shards']}",
        *(
            f"  {key:<8} min {card[key]['min']}  median {card[key]['median']:g}  max {card[key]['max']}"
            for key in ("frames", "vertices", "faces")
        ),
        f"  size     {disk_bytes * mb:.1f} MB on disk, {card['raw_bytes'] * mb:.1f} MB raw "
        f"({disk_bytes / max(card['sequences'], 1) / 1024:.0f} KB per sequence)",
        "  per type and split:",
    ]
    header = "".join(f"{s:>9}" for s in SPLITS)
    lines.append(f"    {'type':<12}{header}")
    for t, counts in sorted(card["per_type_and_split"].items()):
        lines.append(f"    {t:<12}" + "".join(f"{counts.get(s, 0):>9}" for s in SPLITS))
    lines.append("  per category:")
    lines += [f"    {c:<28}{n:>6}" for c, n in card["per_category"].items()]
    for key in ("sources", "notes", "dropped"):
        if card.get(key):
            lines.append(f"  {key}:")
            lines += [f"    - {x}" for x in card[key]]
    return "\n".join(lines)
