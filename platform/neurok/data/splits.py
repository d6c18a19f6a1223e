"""Splits by object, never by frame: every sequence of an object lands in the same split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from neurok.errors import require


@dataclass
class SplitSpec:
    val: float = 0.1  # fraction of objects
    test: float = 0.1
    heldout_categories: list[str] = field(default_factory=list)  # whole categories kept out of training

    def __post_init__(self) -> None:
        for key in ("val", "test"):
            require(0 <= getattr(self, key) < 1, f"splits.{key}", getattr(self, key), "must be in [0, 1)")
        require(self.val + self.test < 1, "splits.val + splits.test", self.val + self.test, "must be below 1")


def assign_split(object_key: str, category: str, spec: SplitSpec, seed: int) -> str:
    """The split of an object: a pure function of its key, so re-runs and resumes agree."""
    if category in spec.heldout_categories:
        return "heldout"
    digest = hashlib.sha256(f"{seed}:{object_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    if u < spec.val:
        return "val"
    if u < spec.val + spec.test:
        return "test"
    return "train"
