"""Typed configs of the latent dynamics (OmegaConf structured; load with neurok.config.load_config).

Defaults follow research/neurok-paper.md s9.2; none of them are from the paper itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from neurok.errors import ConfigError


class Integrator(StrEnum):
    variational = "variational"  # Stormer-Verlet in vertex space: symplectic, the default (integrators.py)
    rk4 = "rk4"


class Optimizer(StrEnum):
    adam = "adam"
    lbfgs = "lbfgs"


class Space(StrEnum):
    q = "q"  # reduced coordinates (the paper's IK setting)
    z = "z"  # the full latent
    frame = "frame"  # q carried by a rigid frame (dynamics.rigid): a shape that travelled or turned fits too
    frame_z = "frame_z"  # the full latent carried by the rigid frame


class ChamferKind(StrEnum):
    l1 = "l1"
    l2 = "l2"


@dataclass
class ReductionConfig:
    """Active subspace of the latent (paper s5.4)."""

    samples: int = 512  # z ~ N(mu_cond, I) draws for the gradient covariance and the retained share
    retain: float = 0.9  # k_q: the fewest directions keeping this share of the latent's decoded variation
    max_dims: int = 16  # cap on k_q
    min_dims: int = 1
    dims: int | None = None  # fix k_q instead of choosing it by the retained share
    min_inertia: float = 0.0  # skip a direction that would leave a metric eigenvalue below this share of
    #                           the largest; 0 keeps every direction the shapes need (IK), and the simulator
    #                           drops the light ones itself (simulator.min_inertia)
    seed: int = 0
    chunk_size: int | None = 64  # decoder evaluations per vectorised batch (bounds memory)


@dataclass
class SimulatorConfig:
    """Latent Lagrangian rollout (paper s5.1-5.3)."""

    # s, the coarsest integrator step (the paper's). 1/120 halves the cost but drifted 2-5% in energy over
    # 1.6 s on the demo model (0.2-1% at 1/240): gravity-driven motion, which max_omega_dt does not see.
    dt: float = 1 / 240
    fps: float = 30.0  # output frame rate; 1 / (fps dt) must be a whole number of steps
    frames: int = 60  # output frames after the initial one (2 s at 30 fps)
    integrator: Integrator = Integrator.variational
    compiled: bool = True  # a surrogate on a floating frame steps as one compiled loop (dynamics.compiled);
    #                        off: the torch path, the reference
    solver_iterations: int = 20  # most quasi-Newton iterations of the variational step's position solve
    solver_tol: float = 1e-5  # stop when a correction moves the vertices less (RMS; float32 noise ~1e-6)
    stiffness: float = 1.0  # kappa in V = kappa/2 |q|^2 (negative log prior in reduced coordinates)
    damping: float = 0.0  # c in the Rayleigh force -c G q', 1/s; 0 conserves energy
    gravity: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # m/s^2, y-up; Earth: [0, -9.81, 0]
    max_omega_dt: float = 0.2  # refine dt so the fastest mode's omega dt is at most this; 0: use dt as is
    max_omega_dt_contacts: float = 1.0  # and at most this with the contacts too (ground, wall)
    max_omega_dt_pins: float = 2.0  # and at most this with the pins too
    support: float | None = 2.0  # a wall keeps |q| (the deformation's coordinates) within support sqrt(k_q)
    #                              prior deviations, where the surrogate is fitted (surrogate.spread); None:
    #                              no wall
    support_frequency: float = 30.0  # Hz: the wall's stiffness per unit of q's mean inertia at the start:
    #                                  past it the vertices move ~g / (2 pi f)^2
    eps: float = 1e-6  # metric regulariser: solve with G + eps tr(G)/k_q I
    min_inertia: float = 1e-2  # simulate the reduced space's directions whose inertia at rest is at least
    #                            this share of the largest: a lighter one is a mode of almost no mass, too
    #                            fast for any affordable step (dynamics.reduction.heavy_directions)
    min_motion: float = 1e-4  # and whose prior deviation moves the vertices by at least this share of the
    #                           object's radius of gyration (RMS): float32 noise is ~1e-7 (0: keep them)
    max_energy_error: float = 0.5  # guard: stop when |E - E0 - W| exceeds this share of (max T + |W|)
    pin_frequency: float = 80.0  # Hz: the pins hold the whole object as a spring of this frequency: a sag
    #                              of g / (2 pi f)^2 = 0.04 mm. A 2 m torus hung by one vertex swung its pin
    #                              by 3.5e-3 of its size at 30 Hz, 1.1e-3 at 60, 5e-4 at 80, in the same
    #                              wall time (benchmarks/physics.py; the implicit step takes the stiffness)
    pin_damping: float = 1.0  # damping ratio of that spring: 1 (critical) holds without overshoot
    ground: float | None = None  # height of a ground plane y = ground (simulation units); None: no ground
    ground_frequency: float = 20.0  # Hz: contact stiffness per unit mass of a vertex below the plane
    ground_damping: float = 1.0  # damping ratio of that contact spring: 1 (critical) lands without a bounce

    def steps_per_frame(self) -> int:
        steps = round(1 / (self.fps * self.dt))
        if self.dt <= 0 or steps < 1 or abs(steps * self.dt * self.fps - 1) > 1e-6:
            raise ConfigError(
                f"simulator: 1 / (fps * dt) must be a whole number of steps, got fps={self.fps}, dt={self.dt}"
            )
        return steps


@dataclass
class SurrogateConfig:
    """The decoder replaced, for the simulator, by a function of q fitted per object (dynamics.surrogate)."""

    enabled: bool = True  # off: every step evaluates the decoder itself (the reference path)
    samples: int = 256  # decoder positions it is fitted to (a quarter of them with their Jacobians)
    spread: float = 2.0  # q is sampled out to this many prior standard deviations
    retain: float = 1 - 1e-6  # share of the sampled displacements' squared norm the modes B keep (float32
    #                           Gram noise sits near 1e-7)
    max_modes: int = 48  # r, at most
    hidden: int = 256  # random tanh features of g
    ridge: float = 1e-4  # relative ridge of the least-squares fit, on the features' weights
    tolerance: float = 0.01  # largest held-out RMS vertex error (share of the object's size) accepted;
    #                          past it the decoder itself is simulated, with a warning
    chunk_size: int | None = 16  # decoder evaluations per vectorised batch while sampling (bounds memory)
    seed: int = 0


@dataclass
class CubatureConfig:
    """The steps on a few weighted points instead of every vertex (dynamics.cubature); needs the surrogate."""

    enabled: bool = True  # off: every vertex steps (the reference path)
    max_points: int = 192  # cubature points at most; an object with fewer vertices steps all of them
    samples: int = 16  # sampled shapes whose floating-frame metric the weights reproduce
    held_out: int = 4  # further samples the fit is checked on
    spread: float = 2.0  # q is sampled out to this many prior standard deviations
    candidates: int = 2000  # vertices (a random subset on bigger meshes) the points are chosen from
    seed: int = 0


@dataclass
class BoundaryConfig:
    """Initial state (q0, q0') from prescribed vertex positions and velocities (paper s5.3)."""

    iterations: int = 300  # Adam steps on q0 (skipped when no position is prescribed)
    lr: float = 1e-2
    prior_weight: float = 1e-3  # lambda/2 |q0|^2: what the region does not see stays at rest
    ridge: float = 1e-6  # relative ridge of the least-squares velocity solve


@dataclass
class IKConfig:
    """Inverse kinematics: fit a latent to an observed point cloud (paper s6)."""

    # frame: the recorded shapes travel and turn, which no latent of the rest shape represents; in q alone IK
    # was 7.5x worse than on the frame on 20 unseen test objects (README, "The science table")
    space: Space = Space.frame
    optimizer: Optimizer = Optimizer.adam
    iterations: int = 500
    lr: float = 1e-2  # Adam's step (decayed by a cosine schedule), or L-BFGS's first step (1 is usual)
    loss: ChamferKind = ChamferKind.l1
    prior_weight: float = 1e-4  # lambda/2 |q|^2, the negative log prior
    track_iterations: int = 100  # per frame after the first, warm-started
    smoothness: float = 1.0  # weight of |q_t - (2 q_{t-1} - q_{t-2})|^2, i.e. of latent acceleration


@dataclass
class DynamicsConfig:
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    cubature: CubatureConfig = field(default_factory=CubatureConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    ik: IKConfig = field(default_factory=IKConfig)
