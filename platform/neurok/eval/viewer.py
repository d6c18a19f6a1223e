"""A self-contained interactive HTML viewer of mesh sequences: one file, no network, no WebGL.

Panels (e.g. truth and prediction) side by side on 2D canvases, drawn like render.py (orthographic
camera, flat two-sided Lambert shading, faces back to front). Drag to orbit, wheel to zoom, play/pause,
a frame slider. The frames travel as base64 float32, so MLflow's artifact view opens the file as it is.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from neurok.eval.render import COLOURS

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 14px sans-serif; margin: 8px; background: #fff; }
#panels { display: flex; gap: 8px; }
.panel { text-align: center; }
canvas { border: 1px solid #ccc; cursor: grab; }
#controls { margin-top: 6px; display: flex; gap: 8px; align-items: center; }
#frame { width: 400px; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div id="panels"></div>
<div id="controls">
  <button id="play">pause</button>
  <input id="frame" type="range" min="0" value="0">
  <span id="label"></span>
  <span>drag: orbit, wheel: zoom</span>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
function floats(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}
const faces = Int32Array.from(data.faces);
const nV = data.vertices, nT = data.frames, nF = faces.length / 3;
const panels = data.panels.map(p => ({ name: p.name, colour: p.colour, xyz: floats(p.xyz) }));
// scene bounds over every frame of every panel: the camera does not follow the motion
let lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
for (const p of panels) for (let i = 0; i < p.xyz.length; i += 3) for (let k = 0; k < 3; k++) {
  lo[k] = Math.min(lo[k], p.xyz[i + k]); hi[k] = Math.max(hi[k], p.xyz[i + k]);
}
const centre = [0, 1, 2].map(k => (lo[k] + hi[k]) / 2);
const half = Math.max(Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2, 1e-6);
const light = (() => { const l = [0.4, 0.8, 0.45], n = Math.hypot(...l); return l.map(x => x / n); })();
let azimuth = 35 * Math.PI / 180, elevation = 20 * Math.PI / 180, zoom = 1, frame = 0, playing = true;
const size = data.size;
const container = document.getElementById("panels");
const canvases = panels.map(p => {
  const div = document.createElement("div"); div.className = "panel";
  const c = document.createElement("canvas"); c.width = size; c.height = size;
  div.appendChild(c); div.appendChild(document.createElement("br"));
  div.appendChild(document.createTextNode(p.name)); container.appendChild(div);
  return c;
});
function view() {
  const ce = Math.cos(elevation);
  const f = [-ce * Math.sin(azimuth), -Math.sin(elevation), -ce * Math.cos(azimuth)];
  let r = [-f[2], 0, f[0]];  // f x (0, 1, 0)
  const rn = Math.hypot(...r) || 1; r = r.map(x => x / rn);
  const u = [r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2], r[0] * f[1] - r[1] * f[0]];
  return [r, u, f];
}
function draw(ctx, xyz, colour, [r, u, f]) {
  const off = frame * nV * 3, scale = zoom * size * 0.45 / half;
  const sx = new Float32Array(nV), sy = new Float32Array(nV), sz = new Float32Array(nV);
  for (let v = 0; v < nV; v++) {
    const x = xyz[off + 3 * v] - centre[0];
    const y = xyz[off + 3 * v + 1] - centre[1], z = xyz[off + 3 * v + 2] - centre[2];
    sx[v] = size / 2 + (r[0] * x + r[1] * y + r[2] * z) * scale;
    sy[v] = size / 2 - (u[0] * x + u[1] * y + u[2] * z) * scale;
    sz[v] = f[0] * x + f[1] * y + f[2] * z;
  }
  const order = Array.from({ length: nF }, (_, i) => i);
  const depth = new Float32Array(nF);
  for (let i = 0; i < nF; i++) depth[i] = sz[faces[3 * i]] + sz[faces[3 * i + 1]] + sz[faces[3 * i + 2]];
  order.sort((a, b) => depth[b] - depth[a]);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
  for (const i of order) {
    const a = faces[3 * i], b = faces[3 * i + 1], c = faces[3 * i + 2];
    const p = k => [xyz[off + 3 * k], xyz[off + 3 * k + 1], xyz[off + 3 * k + 2]];
    const A = p(a), B = p(b), C = p(c);
    const e1 = [B[0] - A[0], B[1] - A[1], B[2] - A[2]], e2 = [C[0] - A[0], C[1] - A[1], C[2] - A[2]];
    const n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]];
    const nn = Math.hypot(...n) || 1;
    const shade = 0.3 + 0.7 * Math.abs((n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) / nn);
    const fill = `rgb(${colour.map(x => Math.round(x * shade)).join(",")})`;
    ctx.fillStyle = fill; ctx.strokeStyle = fill;
    ctx.beginPath(); ctx.moveTo(sx[a], sy[a]); ctx.lineTo(sx[b], sy[b]); ctx.lineTo(sx[c], sy[c]);
    ctx.closePath(); ctx.fill(); ctx.stroke();
  }
}
const slider = document.getElementById("frame"), label = document.getElementById("label");
slider.max = nT - 1;
function render() {
  const cam = view();
  panels.forEach((p, i) => draw(canvases[i].getContext("2d"), p.xyz, p.colour, cam));
  slider.value = frame;
  label.textContent = `frame ${frame} / ${nT - 1}  t = ${(frame / data.fps).toFixed(3)} s`;
  document.body.dataset.rendered = "yes";  // the screenshot test waits for this
}
const play = document.getElementById("play");
play.onclick = () => { playing = !playing; play.textContent = playing ? "pause" : "play"; };
slider.oninput = () => {
  frame = Number(slider.value); playing = false; play.textContent = "play"; render();
};
let dragging = null;
for (const c of canvases) {
  c.onmousedown = e => { dragging = [e.clientX, e.clientY]; };
  c.onwheel = e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); render(); };
}
window.onmouseup = () => { dragging = null; };
window.onmousemove = e => {
  if (!dragging) return;
  azimuth -= (e.clientX - dragging[0]) * 0.01;
  elevation = Math.max(-1.5, Math.min(1.5, elevation + (e.clientY - dragging[1]) * 0.01));
  dragging = [e.clientX, e.clientY]; render();
};
let last = 0;
function tick(now) {
  if (playing && now - last >= 1000 / data.fps) { frame = (frame + 1) % nT; last = now; render(); }
  requestAnimationFrame(tick);
}
render();
requestAnimationFrame(tick);
</script></body></html>
"""


def viewer_html(
    panels: dict[str, np.ndarray], faces: np.ndarray, fps: float, title: str, size: int = 400
) -> str:
    """The viewer page of named sequences (T, V, 3) that share `faces` (F, 3)."""
    frames = min(len(s) for s in panels.values())
    vertices = {np.asarray(s).shape[1] for s in panels.values()}
    if len(vertices) != 1:
        raise ValueError(f"viewer_html: every panel needs the same vertex count, got {sorted(vertices)}")
    payload = {
        "faces": np.asarray(faces, np.int64).reshape(-1).tolist(),
        "vertices": vertices.pop(),
        "frames": frames,
        "fps": fps,
        "size": size,
        "panels": [
            {
                "name": name,
                "colour": list(COLOURS[i % len(COLOURS)]),
                "xyz": base64.b64encode(np.ascontiguousarray(seq[:frames], np.float32).tobytes()).decode(),
            }
            for i, (name, seq) in enumerate(panels.items())
        ],
    }
    # "</" inside the JSON would end the script element early
    data = json.dumps(payload).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_viewer(
    path: str | Path,
    panels: dict[str, np.ndarray],
    faces: np.ndarray,
    fps: float,
    title: str = "NeuROK rollout",
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(viewer_html(panels, faces, fps, title))
    return path
