"""The compiled rollout (dynamics.compiled over dynamics.modal's moments) against the torch path it
replaces: the same terms from the moments as from every vertex, the same rollouts, the same errors.

Everything is float64 here, so the two paths differ by the compiled step's exact evaluation where
the torch step extrapolates to first order (measured 4e-9 to 5e-7 of the object's size over 30 frames),
and by round-off in the pins' energy from moments (sums of terms of the object's size squared).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neurok.dynamics import (
    Forcing,
    PointForce,
    ReducedShape,
    SimulatorConfig,
    compiled,
    heavy_directions,
    modal,
    rollout,
    toys,
)
from neurok.dynamics.config import SurrogateConfig
from neurok.dynamics.mechanics import metric, pullback
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.surrogate import rigid_surrogate, surrogate_shape
from neurok.errors import NeurokError

torch.set_num_threads(1)
F64 = torch.float64
GRAVITY = [0.0, -9.81, 0.0]


@pytest.fixture(scope="module")
def body() -> FloatingShape:
    latent = toys.field(toys.cloud(600, dtype=F64), latent_dims=8)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64))[0]
    shape = heavy_directions(ReducedShape(latent, basis.T.contiguous()), 0.05)
    return FloatingShape(surrogate_shape(shape, SurrogateConfig(spread=1.0))[0])


def state(body: FloatingShape, seed: int) -> torch.Tensor:
    """A state away from rest: moved, turned by about a radian, deformed."""
    s = body.start(1)[0] + torch.randn(body.dims, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return s


def test_the_moments_give_every_vertex_sums(body):
    """The metric and the integrator's pull-back of a displacement, from the moments, equal the sums over
    all vertices of the torch path (float64 round-off)."""
    a, E, m = modal.centred(body)
    moments = modal.body(body, a, E, m)
    jacobian = body.jacobian_fn(body.tensors)
    for seed in range(3):
        s, s1 = state(body, seed), state(body, seed + 10)
        x, J = jacobian(s)
        x1, _ = jacobian(s1)
        ev, ev1 = (compiled.evaluate(moments, modal.as_float64(t)) for t in (s, s1))
        G = torch.from_numpy(compiled.gram(moments.mass, ev, ev[4]))
        assert torch.allclose(G, metric(J, body.latent.masses), rtol=1e-9, atol=1e-12)
        moved = torch.from_numpy(
            compiled.pullback(moments, modal.as_float64(s), ev, modal.as_float64(s1), ev1)
        )
        assert torch.allclose(moved, pullback(J, body.latent.masses, x1 - x), rtol=1e-9, atol=1e-12)


def forcings(body: FloatingShape) -> dict[str, tuple[Forcing, dict, torch.Tensor]]:
    rest = body.latent.rest
    V = len(rest)
    region = (rest[:, 0] > 0.4).to(F64)
    pin = (rest[:, 1] > 0.45).to(F64)
    still = torch.zeros(1, body.dims, dtype=F64)
    spin = still.clone()
    spin[0, 3:6], spin[0, 6:] = torch.tensor([0.0, 8.0, 3.0]), 0.5  # past pi within the horizon: a rechart
    poke = [PointForce(region, [-2.0, 0.0, 1.0], 0.0, 0.1)]
    return {
        "poke under gravity": (Forcing.build(V, poke, dtype=F64), {"gravity": GRAVITY}, still),
        "wind, drag and damping": (
            Forcing.build(V, poke, wind=[1.0, 0.0, 0.0], drag=0.5, dtype=F64),
            {"damping": 0.3},
            still,
        ),
        "pinned, poked": (
            Forcing.build(V, poke, dtype=F64, pin=pin, pin_position=rest),
            {"gravity": GRAVITY},
            still,
        ),
        "dropped on a ground": (
            Forcing.build(V, dtype=F64),
            {"gravity": GRAVITY, "ground": float(rest[:, 1].min()) - 0.1},
            still,
        ),
        "dropped from a height": (  # culled whole while it falls, then vertex by vertex
            Forcing.build(V, dtype=F64),
            {"gravity": GRAVITY, "ground": float(rest[:, 1].min()) - 0.4},
            still,
        ),
        "spinning": (Forcing.build(V, dtype=F64), {}, spin),
    }


@pytest.mark.parametrize(
    "case",
    [
        "poke under gravity",
        "wind, drag and damping",
        "pinned, poked",
        "dropped on a ground",
        "dropped from a height",
        "spinning",
    ],
)
def test_compiled_rollout_is_the_torch_rollout(body, case):
    forcing, physics, v0 = forcings(body)[case]
    cfg = SimulatorConfig(frames=30, stiffness=0.5, **physics)
    s0, forcing = body.start(1), Forcing.stack([forcing])
    reference = rollout(body, s0, v0, dataclasses.replace(cfg, compiled=False), forcing)
    fast = rollout(body, s0, v0, cfg, forcing)
    assert (reference.path, fast.path) == ("torch", "compiled")
    assert fast.steps == reference.steps
    size = (body.latent.rest.amax(0) - body.latent.rest.amin(0)).norm()
    error = (fast.vertices - reference.vertices).square().sum(-1).mean(-1).sqrt().max() / size
    assert error < 2e-6
    assert torch.allclose(fast.kinetic, reference.kinetic, rtol=1e-5, atol=1e-6 * reference.kinetic.max())
    assert torch.allclose(fast.work, reference.work, rtol=1e-5, atol=1e-6 * reference.work.abs().max())
    assert abs(fast.energy_drift() - reference.energy_drift()).item() < 1e-5
    assert fast.energy_drift().item() < 0.02
    moved = (reference.vertices[0, -1] - reference.vertices[0, 0]).norm(dim=-1).max() / size
    assert moved > 1e-4  # compared over a motion, not a rest state (the pins hold it to 2e-4)


def test_compiled_rollout_batches_conditions(body):
    """Each batch item is its own rollout: the same as rolling it out alone."""
    forcing, physics, _ = forcings(body)["poke under gravity"]
    cfg = SimulatorConfig(frames=10, stiffness=0.5, **physics)
    quiet = Forcing.build(body.latent.num_vertices, dtype=F64)
    s0, v0 = body.start(2), torch.zeros(2, body.dims, dtype=F64)
    both = rollout(body, s0, v0, cfg, Forcing.stack([forcing, quiet]))
    alone = rollout(body, s0[1:], v0[1:], cfg, Forcing.stack([quiet]))
    assert torch.equal(both.vertices[1], alone.vertices[0])
    assert not torch.allclose(both.vertices[0], both.vertices[1])


def test_a_rigid_body_falls_at_g():
    """No deformation coordinates (k_q = 0): the frame alone, in free fall; the variational step is exact
    for a constant force."""
    latent = toys.field(toys.cloud(200, dtype=F64), latent_dims=8)
    rigid = FloatingShape(rigid_surrogate(ReducedShape(latent, torch.zeros(0, 8, dtype=F64))))
    assert rigid.dims == 6 and modal.applies(rigid)
    cfg = SimulatorConfig(frames=15, gravity=GRAVITY)
    out = rollout(rigid, rigid.start(1), torch.zeros(1, 6, dtype=F64), cfg)
    assert out.path == "compiled"
    drop = out.vertices[0, :, :, 1].mean(-1) - out.vertices[0, 0, :, 1].mean()
    assert torch.allclose(drop, -0.5 * 9.81 * out.time.square(), atol=1e-7)


def test_compiled_failure_names_the_step_and_the_limit(body):
    forcing, physics, _ = forcings(body)["poke under gravity"]
    cfg = SimulatorConfig(frames=10, stiffness=0.5, max_energy_error=1e-12, **physics)
    s0, v0, forcing = body.start(1), torch.zeros(1, body.dims, dtype=F64), Forcing.stack([forcing])
    messages = []
    for path in (False, True):
        with pytest.raises(NeurokError, match="total energy error") as info:
            rollout(body, s0, v0, dataclasses.replace(cfg, compiled=path), forcing)
        messages.append(str(info.value))
    assert "simulator.max_energy_error = 1e-12" in messages[1] and "batch item(s) [0]" in messages[1]
    assert messages[0].split(": the")[0] == messages[1].split(": the")[0]  # the same step and time


def test_limit_threads_reaches_torch_and_every_blas():
    """The compiled loop's products go through scipy's OpenBLAS: a thread limit must reach it too."""
    import threadpoolctl

    from neurok.threads import limit_threads

    for n in (2, 1):
        limit_threads(n)
        pools = threadpoolctl.threadpool_info()
        assert torch.get_num_threads() == n
        assert any("scipy" in p["filepath"] for p in pools if p["user_api"] == "blas")
        assert {p["num_threads"] for p in pools if p["user_api"] == "blas"} == {n}


@pytest.mark.parametrize("compiled", [False, True])
def test_an_object_at_rest_with_nothing_acting_stays_at_rest(body, compiled):
    """No gravity, force or velocity: round-off is not an energy error (it used to be 1 of the ~0 J in play,
    and the rollout 'blew up')."""
    cfg = SimulatorConfig(frames=10, stiffness=0.5, compiled=compiled)
    quiet = Forcing.stack([Forcing.build(body.latent.num_vertices, dtype=F64)])
    out = rollout(body, body.start(1), torch.zeros(1, body.dims, dtype=F64), cfg, quiet)
    assert out.path == ("compiled" if compiled else "torch")
    assert (out.vertices[0] - out.vertices[0, :1]).abs().max() < 1e-9
    assert out.energy_drift().item() < 1e-6
