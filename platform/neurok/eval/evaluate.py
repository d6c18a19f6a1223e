"""`neurok eval`: reconstruction, inverse kinematics against two baselines, simulation fidelity, speed.

Protocol (all in the store's normalisation; research/neurok-paper.md s7, s9.2 where the paper is silent):
- cases: up to `objects` sequences per (object type, split), for the chosen split and the held-out one;
  each case pairs the rest frame 0 with the frame that moved most (as the training plots do), or with
  target=deformation the one whose shape changed most once its rigid motion is taken out;
- reconstruction: E_vae's posterior mean on surface points of the pair, decoded at every vertex;
- inverse kinematics (Table 1): fit the target's surface samples from the rest mesh by Chamfer L1 of
  the fitted vertices, with the same Adam steps for every method: in NeuROK's reduced coordinates q, on
  the rigid frame and in its full latent z (all three, whatever dynamics.ik.space says), in a PCA
  subspace of k_q dimensions, alone and on the frame, and in one of as many as the latent has (or as
  the training bank allows), and by nearest-neighbour retrieval (eval.baselines); Chamfer L1/L2 on fixed
  surface samples and volumetric IoU; k_q and the share of decoded variation the reduced space retains;
- generative (generative_samples > 0): prior samples of each object against its true states (MMD,
  coverage, 1-NN accuracy), beside a Gaussian in the PCA space;
- simulation: the sequence's recorded conditions become initial states and forces (conditions_for), a
  latent rollout over its horizon is compared to the simulated truth frame by frame; energy drift with
  damping off;
- speed: the latent rollout against MuJoCo simulating the same sequence (re-planned from the store's
  recipe), both timed here in this process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from neurok.data import sampling
from neurok.data.examples import encoder_example
from neurok.data.schema import CONDITION_FIELDS, FLAG_DRAGGED, FLAG_PINNED, FLAG_POKED, OBJECT_TYPES, SPLITS
from neurok.data.store import Store
from neurok.dynamics import (
    BoundaryConditions,
    Forcing,
    IKConfig,
    PointForce,
    ReducedShape,
    checks,
    fit,
    solve_initial_state,
)
from neurok.dynamics.config import Space
from neurok.dynamics.simulator import warm_up
from neurok.errors import BadInputError, NeurokError
from neurok.eval import metrics
from neurok.eval.baselines import DeformationBank, NearestBaseline, PCABaseline, grid_anchors, rigid_fit
from neurok.eval.config import EvalConfig
from neurok.eval.rollout_files import MeshRollout, checked_scene, reduced_model_shape, simulated_body
from neurok.geometry import without_rigid_motion
from neurok.model import ModelConfig, NeuROK
from neurok.model.diagnostics import latent_diagnostics

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One evaluated sequence, normalised."""

    index: int
    name: str
    object_type: str
    split: str
    frames: np.ndarray  # (T, V, 3)
    faces: np.ndarray
    target: int  # the frame it fits (target_frame)
    inputs: dict  # E_vae's inputs for (rest, target)
    encoded: np.ndarray  # (V, 3) the target as E_vae reads it (a deformation-only model: rigid motion undone)
    conditions: dict[str, float]
    flags: np.ndarray  # (V,) FLAG_* bits
    center: np.ndarray
    scale: float
    ground: float | None = None  # normalised height of the scene's ground plane; None: not known


@dataclass
class CaseResult:
    case: str
    object_type: str
    split: str
    values: dict[str, float] = field(default_factory=dict)
    horizon: list[float] = field(default_factory=list)  # rollout Chamfer L1 per frame
    rollout: MeshRollout | None = None
    truth: np.ndarray | None = None  # (T, V, 3) the simulated sequence in mesh units, beside `rollout`


def select_cases(store: Store, cfg: EvalConfig) -> list[int]:
    """Up to cfg.objects sequences of distinct objects per (object type, split)."""
    if cfg.split not in SPLITS:
        raise BadInputError(f"eval: split must be one of {SPLITS}, got {cfg.split!r}")
    splits = [cfg.split] + (["heldout"] if cfg.heldout and cfg.split != "heldout" else [])
    chosen: list[int] = []
    for split in splits:
        for type_code in range(len(OBJECT_TYPES)):
            mask = (store.column("split") == SPLITS.index(split)) & (store.column("object_type") == type_code)
            seen: set[int] = set()
            for s in np.flatnonzero(mask):
                obj = int(store.column("object_id")[s])
                if obj not in seen and len(seen) < cfg.objects:
                    seen.add(obj)
                    chosen.append(int(s))
    if not chosen:
        raise BadInputError(f"{store.path}: no sequences in split(s) {splits} to evaluate")
    return chosen


def target_frame(frames: np.ndarray, kind: str) -> int:
    """The frame a case fits: the one that moved most (`motion`), or the one whose shape changed most once
    its best rigid motion is taken out (`deformation`: what the latent is for; a rigid frame, NeuROK's or
    PCA's, takes up the rest)."""
    if kind == "motion":
        return sampling.most_moved_frame(frames)
    if kind == "deformation":
        masses = np.ones(frames.shape[1])
        residual = [np.abs(checks.deformation(masses, frames[0], f)).max() for f in frames]
        return int(np.argmax(residual))
    raise BadInputError(f"eval: target must be 'motion' or 'deformation', got {kind!r}")


def load_case(store: Store, s: int, cfg: EvalConfig, model: ModelConfig) -> Case:
    seq = store.sequence(s)
    center, scale = store.norm_center[s], float(store.norm_scale[s])
    frames = ((seq.frames - center) / scale).astype(np.float32)
    target = target_frame(frames, cfg.target)
    example = encoder_example(
        store, s, cfg.shape.points, cfg.seed, target, model.dual_quaternion, model.deformation_only
    )
    conditions = dict(zip(CONDITION_FIELDS, store.conditions[s].tolist(), strict=True))
    # generated scenes stand on MuJoCo's ground plane, y = 0 in the store's frame; ingested ones say nothing
    ground = -float(center[1]) / scale if store.attrs.get("provenance", {}).get("recipe") else None
    return Case(
        s, seq.name, seq.object_type, seq.split, frames, seq.faces.astype(np.int64), target,
        example["inputs"], example["target"], conditions, seq.vertex_flags, center, scale, ground,
    )  # fmt: skip


def training_banks(store: Store, cfg: EvalConfig) -> tuple[DeformationBank, DeformationBank]:
    """The baselines' training deformations, from a few frames of up to cfg.baseline_sequences train
    sequences read once: as recorded, and with each frame's best rigid motion from frame 0 undone (what a
    subspace on a rigid frame needs: the frame carries the rest)."""
    rng = np.random.default_rng(cfg.seed)
    train = np.flatnonzero(store.column("split") == SPLITS.index("train"))
    if len(train) == 0:
        raise BadInputError(
            f"{store.path}: no training sequences for the PCA and nearest-neighbour baselines"
        )
    recorded, deformed = [], []
    for s in rng.permutation(train)[: cfg.baseline_sequences]:
        seq = store.sequence(int(s))
        frames = (seq.frames - store.norm_center[s]) / store.norm_scale[s]
        picked = rng.choice(
            np.arange(1, len(frames)), min(cfg.baseline_frames, len(frames) - 1), replace=False
        )
        rest, poses = frames[0], frames[picked]
        recorded.append((rest, poses - rest))
        deformed.append((rest, np.stack([without_rigid_motion(rest, f) for f in poses]) - rest))
    anchors = grid_anchors(cfg.anchors)
    return DeformationBank.fit(recorded, anchors), DeformationBank.fit(deformed, anchors)


def reduction_values(shape: ReducedShape) -> dict[str, float]:
    """k_q and the share of the latent's decoded variation the reduced space retains (dynamics.reduction)."""
    retained = getattr(shape, "retained", None)
    return {"k_q": float(shape.dims), "retained": float("nan") if retained is None else float(retained)}


def reconstruction(
    model: NeuROK, shape: ReducedShape, case: Case, sampler: metrics.SurfaceSampler, cfg: EvalConfig
) -> dict[str, float]:
    """The posterior mean's decode against the case's target, and its error in the target's change of shape
    (metrics.shape_change_error: travel, most of a falling object's motion, does not count)."""
    target = case.encoded
    with torch.no_grad():
        mu, _ = model.encode_deformation(
            case.inputs["points"], case.inputs["displacement"], case.inputs.get("dual_quaternion")
        )
        predicted = shape.latent.decode(mu.flatten()).numpy()
    a, b = sampler(predicted), sampler(target)
    l1, l2 = metrics.chamfer_l1_l2(a, b)
    shape_error, change = metrics.shape_change_error(case.frames[0], target, predicted)
    return {
        "recon_chamfer_l1": l1,
        "recon_chamfer_l2": l2,
        "recon_fscore": metrics.fscore(a, b, cfg.fscore_threshold),
        "recon_vertex_error": metrics.vertex_error(predicted, target),
        "recon_shape_error": shape_error,
        "shape_change": change,
    }


def inverse_kinematics(
    shape: ReducedShape,
    case: Case,
    sampler: metrics.SurfaceSampler,
    pcas: dict[str, PCABaseline],
    nearest: NearestBaseline,
    ik: IKConfig,
    grid: int,
) -> dict[str, float]:
    """IK fits of the case's target by NeuROK in q and in the full latent z, by each PCA baseline (named
    by the key of `pcas`), by nearest-neighbour retrieval and by the rigid frame alone (`rigid`: what a
    deformation model adds is measured against it): Chamfer L1/L2 and volumetric IoU each."""
    rest, target = case.frames[0], case.frames[case.target]
    points = sampler(target)
    fits = {
        f"neurok_{space}": fit(shape, points[None], dataclasses.replace(ik, space=space)).vertices[0].numpy()
        for space in Space
    }
    fits |= {name: pca.fit(rest, points, ik.iterations, ik.lr) for name, pca in pcas.items()}
    fits["nn"] = nearest.fit(rest, points)
    fits["rigid"] = rigid_fit(rest, points, ik.iterations, ik.lr)
    values, samples = {}, {method: sampler(vertices) for method, vertices in fits.items()}
    for method, fitted in samples.items():
        l1, l2 = metrics.chamfer_l1_l2(fitted, points)
        values[f"ik_{method}_chamfer_l1"] = l1
        values[f"ik_{method}_chamfer_l2"] = l2
    meshes = {method: (vertices, samples[method].numpy()) for method, vertices in fits.items()}
    ious = metrics.volumetric_ious(meshes, target, points.numpy(), case.faces, grid)
    return values | {f"ik_{method}_iou": iou for method, iou in ious.items()}


def object_states(store: Store, case: Case, n: int, rng: np.random.Generator) -> np.ndarray:
    """(<= n, V, 3): frames drawn from every sequence of the case's object, each in its own normalisation
    and carried by its best rigid motion onto the case's rest mesh (the shapes a generative model of that
    object should cover; where it stands is the rigid frame's business)."""
    objects = store.column("object_id")
    frames = []
    for s in np.flatnonzero(objects == objects[case.index]):
        seq = store.sequence(int(s))
        frames.append((seq.frames - store.norm_center[s]) / store.norm_scale[s])
    states = np.concatenate(frames)
    states = states[rng.choice(len(states), min(n, len(states)), replace=False)]
    return np.stack([without_rigid_motion(case.frames[0], x) for x in states]).astype(np.float32)


def generative(
    shape: ReducedShape, case: Case, store: Store, pca: PCABaseline, cfg: EvalConfig
) -> dict[str, float]:
    """Prior samples of the object (z ~ N(mu_cond, I), decoded) against its true states, beside as many
    samples of a Gaussian fitted to the training deformations in PCA space (metrics.generative_scores), on
    cfg.generative_points surface samples a shape: the metric compares (2S choose 2) pairs of shapes.
    Shapes compare modulo rigid motion: each sample and state is carried onto the rest mesh, and `pca` is
    fitted to deformations with their rigid motion undone."""
    rng = np.random.default_rng(cfg.seed + case.index)
    sampler = metrics.SurfaceSampler(case.frames[0], case.faces, cfg.generative_points, cfg.seed)
    references = sampler(object_states(store, case, cfg.generative_samples, rng))
    latent = shape.latent
    z = latent.mu_cond + torch.from_numpy(rng.standard_normal((len(references), latent.latent_dims)))
    with torch.no_grad():
        ours = torch.stack([latent.decode(zi.to(latent.mu_cond.dtype)) for zi in z]).float()
    theirs = pca.sample(case.frames[0], len(references), rng)
    values = {}
    for method, samples in (("neurok", ours.numpy()), ("pca_gauss", theirs)):
        samples = np.stack([without_rigid_motion(case.frames[0], x) for x in samples]).astype(np.float32)
        scores = metrics.generative_scores(sampler(samples), references)
        values |= {f"gen_{method}_{k}": v for k, v in scores.items()}
    return values


def _region_mass(region: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, float]:
    """A 0/1 region (the flagged vertices, else `fallback`) and its share of the model object's unit mass."""
    region = region if region.any() else fallback
    return region.astype(np.float32), float(region.mean())


def conditions_for(case: Case, shape: ReducedShape) -> tuple[BoundaryConditions, Forcing, list[float]]:
    """The recorded conditions in the model's units (normalised lengths, total mass 1; approximations):
    initial (angular) velocity -> a velocity field; a poke -> its region's velocity change (impulse over
    the object's mass density x volume share), at t = 0 as a boundary condition, later as a one-frame
    force; a drag -> a push-then-brake force pair that moves its region by the offset over its window;
    gravity -> gravity; pinned vertices -> pins at their rest positions."""
    c, rest, s = case.conditions, case.frames[0], case.scale
    vec = lambda prefix: np.array([c[f"{prefix}_{k}"] for k in "xyz"])  # noqa: E731
    velocity = vec("init_velocity") / s + np.cross(vec("init_angular_velocity"), rest - rest.mean(axis=0))
    velocity = np.broadcast_to(velocity, rest.shape).copy()
    forces: list[PointForce] = []
    frame_dt = c["frame_dt"] or 1 / 30
    impulse = vec("poke_impulse")
    if np.abs(impulse).sum() > 0:
        region, share = _region_mass(case.flags & FLAG_POKED > 0, np.ones(len(rest), bool))
        mass = c["density"] * abs(mesh_volume(rest * s, case.faces)) * share or share  # kg of the region
        dv = impulse / mass / s  # normalised units per second
        if c["poke_time"] < frame_dt / 2:
            velocity[region > 0] += dv
        else:
            start = c["poke_time"]
            forces.append(
                PointForce(
                    torch.from_numpy(region), (share * dv / frame_dt).tolist(), start, start + frame_dt
                )
            )
    offset = vec("drag_offset")
    if np.abs(offset).sum() > 0 and c["drag_end"] > c["drag_start"]:
        region, share = _region_mass(case.flags & FLAG_DRAGGED > 0, np.ones(len(rest), bool))
        t0, t1 = c["drag_start"], c["drag_end"]
        push = (4 * share * offset / s / (t1 - t0) ** 2).tolist()  # x = d after accelerating, then braking
        mid = (t0 + t1) / 2
        forces += [
            PointForce(torch.from_numpy(region), push, t0, mid),
            PointForce(torch.from_numpy(region), [-f for f in push], mid, t1),
        ]
    dtype = shape.basis.dtype
    pinned = torch.from_numpy((case.flags & FLAG_PINNED > 0).astype(np.float64))
    forcing = Forcing.stack(
        [Forcing.build(len(rest), forces, dtype=dtype, pin=pinned, pin_position=torch.from_numpy(rest))]
    )
    bc = BoundaryConditions.stack([BoundaryConditions.velocity_field(torch.from_numpy(velocity).to(dtype))])
    return bc, forcing, (vec("gravity") / s).tolist()


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a triangle mesh (divergence theorem); about 0 for an open sheet."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.einsum("fi,fi->f", a, np.cross(b, c)).sum() / 6)


def simulation(
    shape: ReducedShape, case: Case, sampler: metrics.SurfaceSampler, cfg: EvalConfig
) -> tuple[dict[str, float], list[float], MeshRollout | None]:
    bc, forcing, gravity = conditions_for(case, shape)
    prepared = simulated_body(shape, cfg.shape, cfg.dynamics, forcing, case.ground is not None)
    body, sim = prepared.full, prepared.sim
    frame_dt = case.conditions["frame_dt"] or 1 / sim.fps
    horizon_frames = min(len(case.frames) - 1, sim.frames)  # simulator.frames caps the horizon (budget)
    sim = dataclasses.replace(
        sim, fps=1 / frame_dt, frames=horizon_frames, gravity=gravity, ground=case.ground
    )
    try:
        q0, qdot0 = solve_initial_state(body, bc, cfg.dynamics.boundary)
        warm_up()  # the compiled loop loaded before the clock starts: the speed is the sustained one
        start = time.perf_counter()
        out = prepared.run(q0, qdot0, sim, forcing)
        wall = time.perf_counter() - start
        free = (
            out
            if sim.damping == 0
            else prepared.run(q0, qdot0, dataclasses.replace(sim, damping=0.0), forcing)
        )
    except NeurokError as exc:  # a blow-up is a result of the model, not a failure of the evaluation
        log.warning("%s: latent rollout failed: %s", case.name, exc)
        return {"rollout_failed": 1.0}, [], None
    predicted = sampler(out.vertices[0])
    truth = sampler(case.frames[: horizon_frames + 1])
    horizon = [float(x) for x in metrics.chamfer_distance(predicted, truth, "l1")]
    two_seconds = min(len(horizon) - 1, round(2 / frame_dt))
    values = {
        "rollout_failed": 0.0,
        "rollout_chamfer_l1": float(np.mean(horizon[1:])),
        "rollout_chamfer_l1_2s": horizon[two_seconds],
        "energy_drift": float(free.energy_drift()[0]),
        "latent_frames_per_s": sim.frames / wall,
        "latent_frames": float(sim.frames),
        "latent_steps": float(sum(out.steps)),
        "latent_compiled": float(out.path == "compiled"),
        "surrogate": float(prepared.decoder["decoder"] == "surrogate"),
        **{f"surrogate_{k}": v for k, v in prepared.decoder.items() if isinstance(v, float)},
    }
    result = MeshRollout.from_rollout(out, case.faces, case.center, case.scale)
    result.decoder = prepared.decoder
    scene = checked_scene(case.frames[0], shape.latent.masses, sim, forcing)
    result.checks = checks.physics_checks(
        scene, result.time, result.normalised, result.velocities, result.energy_drift
    )
    values |= {f"check_{c.name.replace(' ', '_')}": c.value for c in result.checks}
    values["checks_passed"] = float(np.mean([c.passed for c in result.checks]))
    return values, horizon, result


def mujoco_frames_per_s(store: Store, case: Case) -> float | None:
    """MuJoCo re-simulating the case's sequence from the store's recipe; None without a recipe."""
    recipe_dict = store.attrs.get("provenance", {}).get("recipe")
    if not recipe_dict:
        return None
    from omegaconf import OmegaConf

    from neurok.data.generate.plan import plan
    from neurok.data.generate.recipe import Recipe
    from neurok.data.generate.scenes import CATEGORIES, simulate

    recipe = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), recipe_dict))
    spec = next((sp for sp in plan(recipe, CATEGORIES) if sp.name == case.name), None)
    if spec is None:
        return None
    start = time.perf_counter()
    seq = simulate(spec, recipe.physics)
    return (seq.n_frames - 1) / (time.perf_counter() - start)


@dataclass
class EvalResult:
    cases: list[CaseResult]
    speed: dict[str, float | str]
    latent: dict[str, float] = field(default_factory=dict)  # model.diagnostics over the cases


def latent_use(model: NeuROK, cases: list[Case]) -> dict[str, float]:
    """The latent diagnostics with the cases as one batch: E_vae's points double as the queries, where
    the case's own displacement is known."""
    if not cases:
        return {}
    inputs = {k: torch.cat([c.inputs[k] for c in cases]) for k in cases[0].inputs}
    batch = inputs | {"queries": inputs["points"], "query_displacement": inputs["displacement"]}
    return latent_diagnostics(model, batch).scalars()


def evaluate(model: NeuROK, store: Store, cfg: EvalConfig) -> EvalResult:
    torch.manual_seed(cfg.seed)
    indices = select_cases(store, cfg)
    bank, deformations = training_banks(store, cfg)
    nearest = NearestBaseline(bank)
    results, speed, cases = [], {}, []
    for n, s in enumerate(indices):
        case = load_case(store, s, cfg, model.cfg)
        cases.append(case)
        log.info("eval %d/%d: %s (%s, %s)", n + 1, len(indices), case.name, case.object_type, case.split)
        shape = reduced_model_shape(model, case.frames[0], case.faces, cfg.shape, cfg.dynamics, cfg.seed)
        sampler = metrics.SurfaceSampler(case.frames[0], case.faces, cfg.surface_samples, cfg.seed)
        result = CaseResult(case.name, case.object_type, case.split)
        result.values |= reduction_values(shape)
        result.values |= reconstruction(model, shape, case, sampler, cfg)
        pcas = {
            "pca": PCABaseline(bank, shape.dims),
            "pca_frame": PCABaseline(deformations, shape.dims, frame=True),
            "pca_k": PCABaseline(bank, shape.latent.latent_dims),
            "pca_k_frame": PCABaseline(deformations, shape.latent.latent_dims, frame=True),
        }
        result.values["pca_k_dims"] = float(pcas["pca_k"].dims)
        result.values |= inverse_kinematics(shape, case, sampler, pcas, nearest, cfg.dynamics.ik, cfg.grid)
        if cfg.generative_samples:
            result.values |= generative(shape, case, store, pcas["pca_k_frame"], cfg)
        if sum(r.rollout is not None or "rollout_failed" in r.values for r in results) < cfg.rollouts:
            values, result.horizon, result.rollout = simulation(shape, case, sampler, cfg)
            result.values |= values
            if result.rollout is not None and sum(r.truth is not None for r in results) < cfg.renders:
                result.truth = case.frames[: len(result.rollout.time)] * case.scale + case.center
            if cfg.speed and not speed and "latent_frames_per_s" in values:
                mujoco = mujoco_frames_per_s(store, case)
                speed = {
                    "sequence": case.name,
                    "frames": values["latent_frames"],
                    "mujoco_frames": float(len(case.frames) - 1),  # MuJoCo runs the whole sequence
                    "vertices": float(case.frames.shape[1]),
                    "k_q": float(shape.dims),
                    "latent_frames_per_s": values["latent_frames_per_s"],
                    "mujoco_frames_per_s": mujoco if mujoco is not None else "n/a (store has no recipe)",
                }
                if mujoco is not None:
                    speed["speedup"] = values["latent_frames_per_s"] / mujoco
        results.append(result)
    return EvalResult(results, speed, latent_use(model, cases))
