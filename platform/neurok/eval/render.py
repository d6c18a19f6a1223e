"""Headless CPU rendering of mesh sequences: a fixed orthographic camera, flat Lambert shading, faces drawn
back to front (painter's algorithm) with Pillow, panels side by side; MP4 (ffmpeg from imageio-ffmpeg)
and GIF (Pillow) writers. No GPU, display or OpenGL context is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ((110, 150, 210), (235, 140, 60), (120, 190, 120))  # truth, prediction, a third panel
BACKGROUND = (255, 255, 255)
LIGHT = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])


def camera(azimuth_deg: float = 35.0, elevation_deg: float = 20.0) -> np.ndarray:
    """World (y-up) -> camera rotation (3, 3): rows are the screen right, screen up and view directions."""
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    forward = -np.array(
        [np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)]
    )  # from the eye to the origin
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.stack([right, up, forward])


def draw_mesh(
    image: Image.Image,
    vertices: np.ndarray,
    faces: np.ndarray,
    box: tuple[int, int, int, int],
    view: np.ndarray,
    bounds: tuple[np.ndarray, float],
    colour: tuple[int, int, int],
) -> None:
    """Draw one mesh (V, 3) into the pixel box (x0, y0, x1, y1); `bounds` = (centre, half extent) of the
    scene, the same for every frame so the camera does not follow the motion."""
    x0, y0, x1, y1 = box
    centre, half = bounds
    cam = (vertices - centre) @ view.T
    size = min(x1 - x0, y1 - y0) * 0.45 / half
    px = np.stack([(x0 + x1) / 2 + cam[:, 0] * size, (y0 + y1) / 2 - cam[:, 1] * size], 1)
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shade = 0.3 + 0.7 * np.abs(normals @ LIGHT)  # two-sided: cloth and open surfaces light from either side
    depth = cam[faces, 2].mean(axis=1)
    draw = ImageDraw.Draw(image)
    base = np.asarray(colour, float)
    for i in np.argsort(-depth):  # farthest first
        fill = tuple(int(c) for c in base * shade[i])
        draw.polygon([tuple(p) for p in px[faces[i]]], fill=fill, outline=fill)


def scene_bounds(sequences: list[np.ndarray]) -> tuple[np.ndarray, float]:
    points = np.concatenate([s.reshape(-1, 3) for s in sequences])
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (lo + hi) / 2, float(max(np.linalg.norm(hi - lo) / 2, 1e-6))


def render_frames(
    panels: dict[str, np.ndarray],
    faces: np.ndarray,
    size: int = 320,
    azimuth_deg: float = 35.0,
    elevation_deg: float = 20.0,
) -> np.ndarray:
    """Frames (T, size, size * P, 3) uint8 of P named sequences (T, V, 3) side by side, one camera."""
    names = list(panels)
    sequences = [np.asarray(panels[n], np.float64) for n in names]
    frames = min(len(s) for s in sequences)
    bounds = scene_bounds(sequences)
    view = camera(azimuth_deg, elevation_deg)
    out = np.empty((frames, size, size * len(names), 3), np.uint8)
    for t in range(frames):
        image = Image.new("RGB", (size * len(names), size), BACKGROUND)
        for p, (name, seq) in enumerate(zip(names, sequences, strict=True)):
            box = (p * size, 0, (p + 1) * size, size)
            draw_mesh(image, seq[t], faces, box, view, bounds, COLOURS[p % len(COLOURS)])
            ImageDraw.Draw(image).text((p * size + 6, 4), f"{name}  frame {t}", fill=(0, 0, 0))
        out[t] = np.asarray(image)
    return out


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """frames (T, H, W, 3) uint8 to MP4 (H.264 by imageio-ffmpeg's bundled ffmpeg) or GIF (Pillow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False
        )
    elif path.suffix == ".mp4":
        import imageio_ffmpeg

        h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # yuv420p needs even sizes
        writer = imageio_ffmpeg.write_frames(
            str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1
        )
        writer.send(None)  # start the generator
        for frame in frames:
            writer.send(np.ascontiguousarray(frame[:h, :w]))
        writer.close()
    else:
        raise ValueError(f"write_video: {path} must end in .mp4 or .gif")
    return path
