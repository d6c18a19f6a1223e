"""Prepared meshes by the hash of their vertices and faces: a second request on a mesh skips its encoding,
reduction and surrogate fit (rollout_files.prepare_mesh) and starts rolling out at once."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def mesh_key(vertices: np.ndarray, faces: np.ndarray) -> str:
    """sha256 of the vertex count and the float64 vertices' and int64 faces' bytes."""
    digest = hashlib.sha256(str(len(vertices)).encode())
    digest.update(np.ascontiguousarray(vertices, np.float64).tobytes())
    digest.update(np.ascontiguousarray(faces, np.int64).tobytes())
    return digest.hexdigest()


class PreparedCache(Generic[T]):
    """The `size` prepared objects last used, by key. A miss prepares under the cache's lock, so a mesh
    that two requests bring at once is prepared once (the second waits for it)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_or_prepare(self, key: str, prepare: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
            value = prepare()  # a failure caches nothing
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
            return value
