"""Typed configs of `neurok eval` and `neurok simulate` (pipelines/eval.yaml, pipelines/simulate.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from neurok.dynamics import DynamicsConfig


@dataclass
class ModelShapeConfig:
    """How a rest mesh becomes a LatentShape (dynamics.from_model.latent_shape)."""

    points: int = 2048  # surface samples E_cond reads
    max_queries: int = 512  # decoder queries: the vertices themselves up to this many (training: 512)
    frequency: float = 1.0  # Hz: sets the stiffness so the mean reduced mode oscillates at this rate; 0 keeps
    #                         dynamics.simulator.stiffness as it is
    rigid: bool = True  # the deformation rides a rigid frame (dynamics.rigid): falls, throws and spins come
    #                     from mechanics, not the decoder; false simulates in the reduced latent alone


@dataclass
class RenderConfig:
    video: str = "mp4"  # mp4 | gif | none
    viewer: bool = True
    obj: bool = True  # an OBJ per frame
    size: int = 320  # pixels per panel


@dataclass
class SimulateConfig:
    shape: ModelShapeConfig = field(default_factory=ModelShapeConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    poke_radius: float = 0.15  # normalised units (the mesh spans the unit cube): region a poke acts on
    max_vertices: int = 50_000  # larger meshes are refused (decimate them first)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (every core)
    seed: int = 0


@dataclass
class EvalConfig:
    data: str = ""  # the store (also --data)
    split: str = "test"  # the split to evaluate; the held-out categories are added when `heldout`
    heldout: bool = True
    objects: int = 2  # sequences per (object type, split): the budget
    target: str = "motion"  # the frame each case fits: motion (moved most) | deformation (changed shape most)
    surface_samples: int = 2048  # Chamfer/F-score points per shape (paper s9.2: 10k)
    fscore_threshold: float = 0.01  # in the store's normalisation (the rest shape spans the unit cube)
    grid: int = 32  # occupancy grid per axis for the volumetric IoU (paper s9.2: 64)
    baseline_frames: int = 4  # training frames per sequence the PCA and NN baselines see
    baseline_sequences: int = 64  # training sequences they see
    anchors: int = 8  # the baselines' deformations live on an anchors^3 grid over the unit cube
    generative_samples: int = 0  # prior samples per case scored against as many true states of its object
    #                              (coverage, MMD, 1-NN accuracy; beside a PCA-space Gaussian); 0: none
    generative_points: int = 512  # surface samples a shape for those scores
    rollouts: int = 2  # cases given a latent rollout (simulation fidelity, energy drift): the costly part
    speed: bool = True  # latent rollout vs MuJoCo frames/s (needs the store's generation recipe)
    render: RenderConfig = field(default_factory=RenderConfig)
    renders: int = 1  # rollouts to render as video + viewer
    shape: ModelShapeConfig = field(default_factory=ModelShapeConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    out_dir: str = "outputs/eval"
    mlflow_run_id: str = ""  # log to this run (default: the active run, if any)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (every core)
    seed: int = 0
