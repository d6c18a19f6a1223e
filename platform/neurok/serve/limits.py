"""What one request may ask of the service (stdlib only: the CLI reads the defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """Larger requests are refused before anything is simulated."""

    max_vertices: int = 20_000  # 422
    max_frames: int = 600  # 422
    max_body_bytes: int = 16 * 2**20  # 413
