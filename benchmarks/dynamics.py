"""Latent rollout speed and the cost of one step split into decode / Jacobian / curvature / solve.

usage: .venv/bin/python benchmarks/dynamics.py [V] [k_q] [batch] [threads] [dtype]
"""

import sys
import time

import torch

from common import best_ms
from neurok.dynamics import ReductionConfig, SimulatorConfig, active_subspace, rollout, toys
from neurok.dynamics.forces import Forcing
from neurok.dynamics.mechanics import Physics, System

args = sys.argv[1:] + ["1000", "8", "1", "1", "float32"][len(sys.argv) - 1 :]
V, kq, B, threads, dtype = int(args[0]), int(args[1]), int(args[2]), int(args[3]), getattr(torch, args[4])
torch.set_num_threads(threads)
latent = toys.field(toys.cloud(V, dtype=dtype), latent_dims=16, hidden=64)
t0 = time.perf_counter()
shape = active_subspace(latent, ReductionConfig(samples=512, dims=kq))
print(f"V={V} k={latent.latent_dims} k_q={kq} batch={B} threads={threads} {args[4]}")
print(f"active subspace (512 gradient samples): {time.perf_counter() - t0:.2f} s")


system = System(
    shape,
    Physics(0.03, 0.0, torch.zeros(3, dtype=dtype), 1e-6),
    Forcing.stack([Forcing.build(V, dtype=dtype)] * B),
)
q, v = torch.full((B, kq), 0.2, dtype=dtype), torch.full((B, kq), 0.5, dtype=dtype)
tm = system.terms(q, 0.0)
cost = {
    "decode x(q)": best_ms(lambda: shape.positions(q)),
    "terms: J (jacfwd, k_q JVPs), G, dV/dq, Q": best_ms(lambda: system.terms(q, 0.0)),
    "decode in the variational position solve": best_ms(lambda: system.position(q)),
    "C (JVP nested in a JVP), rk4": best_ms(lambda: system.coriolis(tm.J, q, v)),
    "solve (G + eps I) by Cholesky": best_ms(lambda: system.solve(tm.G, v), n=50),
}
for name, ms in cost.items():
    print(f"  {name:42s} {ms:8.3f} ms")

calls = [0]
jacobian = System.jacobian


def counted(self, *a):
    calls[0] += 1
    return jacobian(self, *a)


System.jacobian = counted
for integrator in ("variational", "rk4"):
    cfg = SimulatorConfig(frames=30, integrator=integrator, stiffness=0.03)
    rollout(shape, q, v, SimulatorConfig(frames=1, integrator=integrator, stiffness=0.03))  # warm up
    calls[0] = 0
    t = time.perf_counter()
    out = rollout(shape, q, v, cfg)
    wall = time.perf_counter() - t
    steps = sum(out.steps)
    print(
        f"{integrator:8s}: {cfg.frames} frames at {cfg.fps:g} fps ({steps} steps) "
        f"in {wall:.2f} s: {cfg.frames / wall:.1f} frames/s, {B * cfg.frames / wall:.1f} object-frames/s, "
        f"{wall / steps * 1e3:.1f} ms/step, {calls[0] / steps:.1f} Jacobians/step; "
        f"energy drift {out.energy_drift().max().item():.2e}"
    )
