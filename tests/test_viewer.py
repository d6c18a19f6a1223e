"""The HTML viewer renders in headless Chromium: a screenshot shows both panels' mesh pixels."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import trimesh
from PIL import Image

from neurok.eval.render import COLOURS
from neurok.eval.viewer import write_viewer

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    """Pixels of the colour's hue at any shading (shade 0.3..1 scales all channels alike)."""
    rgb = image[..., :3].astype(float)
    c = np.asarray(colour, float)
    scale = (rgb @ c) / (c @ c)
    return int(((np.abs(rgb - scale[..., None] * c).max(-1) < 12) & (scale > 0.25)).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs Debian's chromium)")
def test_viewer_screenshot_shows_truth_and_prediction(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    truth = np.stack([v * (1 + 0.2 * np.sin(t / 3)) for t in range(10)])
    page = write_viewer(tmp_path / "viewer.html", {"truth": truth, "prediction": truth + 0.02}, f, fps=30)
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,560", "--virtual-time-budget=2000",
        f"--screenshot={shot}", page.as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=90)
    image = np.asarray(Image.open(shot).convert("RGB"))
    left, right = image[:, :450], image[:, 450:]
    assert _colour_pixels(left, COLOURS[0]) > 2000  # the truth panel's mesh
    assert _colour_pixels(right, COLOURS[1]) > 2000  # the prediction panel's mesh
    assert _colour_pixels(image, COLOURS[1]) < image.shape[0] * image.shape[1] / 2  # not a blank fill
