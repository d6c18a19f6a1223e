"""Latent Lagrangian dynamics of decoded objects (research/neurok-paper.md s5-6).

shape       LatentShape: what the dynamics need from a model (a pure decoder, mu_cond, masses)
reduction   active subspace: reduced coordinates q, z(q) = mu_cond + A^T q
rigid       FloatingShape: the reduced shape carried by six rigid coordinates (falls, throws, spins)
surrogate   an object's decoder fitted, for the simulator, as a small function of q (issue 16)
cubature    the steps on a few weighted points of an object instead of all its vertices
modal       a surrogate-decoded object on a floating frame as mass moments of its modes
compiled    the variational rollout of such an object as one compiled (numba) loop: the fast path
mechanics   the Lagrangian terms: metric, Christoffel term, potential, generalized forces
integrators variational Stormer-Verlet in vertex space (symplectic, default) and RK4
simulator   batched rollouts with energy bookkeeping and blow-up guards
forces      persistent external forces (point forces over a window, wind with drag)
conditions  initial boundary conditions (pokes, drags, velocity fields) -> (q0, q0')
ik          inverse kinematics and tracking of observed point clouds
checks      physics checks of a finished rollout (start, free fall, momentum, energy, pokes, pins, ground)
config      typed configs (DynamicsConfig: reduction, simulator, surrogate, cubature, boundary, ik)
toys        small decoders with known structure, for tests and benchmarks
"""

from neurok.dynamics.conditions import BoundaryConditions, region_near, solve_initial_state
from neurok.dynamics.config import (
    BoundaryConfig,
    DynamicsConfig,
    IKConfig,
    ReductionConfig,
    SimulatorConfig,
)
from neurok.dynamics.forces import Forcing, PointForce
from neurok.dynamics.ik import IKResult, fit, track
from neurok.dynamics.reduction import active_subspace, heavy_directions
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.shape import LatentShape, ReducedShape
from neurok.dynamics.simulator import Rollout, rollout

__all__ = [
    "BoundaryConditions",
    "BoundaryConfig",
    "DynamicsConfig",
    "FloatingShape",
    "Forcing",
    "IKConfig",
    "IKResult",
    "LatentShape",
    "PointForce",
    "ReducedShape",
    "ReductionConfig",
    "Rollout",
    "SimulatorConfig",
    "active_subspace",
    "fit",
    "heavy_directions",
    "region_near",
    "rollout",
    "solve_initial_state",
    "track",
]
