"""The MuJoCo scenes that generate the 4D dataset: shapes, determinism, and the physics they must show."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools

import mujoco
import numpy as np
import pytest

from neurok.data.generate import articulated, assets, elastic, mjcf, multibody, shapes
from neurok.data.generate.conditions import sample_conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.scenes import CATEGORIES, simulate
from neurok.data.schema import CONDITION_FIELDS, FLAG_DRAGGED, FLAG_PINNED, FLAG_POKED
from neurok.errors import BadInputError, NeurokError

ALL = [(t, c) for t, cats in CATEGORIES.items() for c in cats]
QUIET = dict(p_poke=0.0, p_drag=0.0, p_init_velocity=0.0, p_pin=0.0)  # gravity alone


def make_spec(object_type: str, category: str, shape_seed=11, condition_seed=5, frames=8, vertices=60):
    return SequenceSpec(
        index=0,
        name=f"{category}-test",
        object_type=object_type,
        category=category,
        object_id=3,
        split="val",
        shape_seed=shape_seed,
        condition_seed=condition_seed,
        frames=frames,
        fps=30.0,
        target_vertices=vertices,
        asset_packs=[],
    )


def physics(**kw) -> PhysicsSpec:
    return dataclasses.replace(PhysicsSpec(), **kw)


def test_categories_name_their_types():
    assert set(CATEGORIES) == {"elastic", "cloth", "articulated", "multibody"}
    assert all(len(cats) >= 2 for cats in CATEGORIES.values())
    assert len({c for _, c in ALL}) == len(ALL)


@pytest.mark.parametrize(("object_type", "category"), ALL)
def test_sequence_is_well_formed_and_deterministic(object_type, category):
    spec = make_spec(object_type, category)
    seq = simulate(spec, physics())
    again = simulate(spec, physics())
    t, v = seq.frames.shape[:2]
    assert (t, seq.frames.shape[2]) == (8, 3) and v >= 30
    assert seq.frames.dtype == np.float32 and np.isfinite(seq.frames).all()
    assert seq.faces.min() >= 0 and seq.faces.max() < v
    assert (seq.name, seq.object_type, seq.category, seq.object_id, seq.split) == (
        spec.name,
        object_type,
        category,
        3,
        "val",
    )
    assert seq.frames.tobytes() == again.frames.tobytes()
    assert np.array_equal(seq.faces, again.faces) and np.array_equal(seq.vertex_flags, again.vertex_flags)
    assert seq.conditions == again.conditions
    assert set(seq.conditions) <= set(CONDITION_FIELDS)
    assert seq.conditions["frame_dt"] == pytest.approx(1 / 30)
    assert 0 < seq.conditions["physics_dt"] <= seq.conditions["frame_dt"] / 8 + 1e-12
    assert np.linalg.norm([seq.conditions[f"gravity_{a}"] for a in "xyz"]) == pytest.approx(9.81)
    assert np.linalg.norm(seq.frames[-1] - seq.frames[0], axis=1).max() > 1e-3  # it moves


@pytest.mark.parametrize(("object_type", "category"), ALL)
def test_frame0_is_the_rest_shape_whatever_the_conditions(object_type, category):
    a = simulate(make_spec(object_type, category, condition_seed=1, frames=3), physics(p_pin=0.5))
    b = simulate(make_spec(object_type, category, condition_seed=2, frames=3), physics(p_pin=0.5))
    other = simulate(make_spec(object_type, category, shape_seed=12, condition_seed=1, frames=3), physics())
    assert a.conditions != b.conditions
    assert np.array_equal(a.frames[0], b.frames[0]) and np.array_equal(a.faces, b.faces)
    assert a.frames[0].shape != other.frames[0].shape or not np.allclose(a.frames[0], other.frames[0])


@pytest.mark.parametrize(
    ("object_type", "category"),
    [(t, c) for t, c in ALL if c not in ("articulated/door", "articulated/drawer")],  # fixed frames
)
def test_gravity_pulls_unpinned_vertices_down(object_type, category):
    seq = simulate(make_spec(object_type, category, frames=12), physics(**QUIET))
    free = (seq.vertex_flags & FLAG_PINNED) == 0
    drop = seq.frames[0, free, 1].mean() - seq.frames[-1, free, 1].mean()
    assert drop > 0.01, f"{category} fell only {drop:.4f} m"
    assert abs(seq.frames[-1, free, 0].mean() - seq.frames[0, free, 0].mean()) < drop  # mostly down


def test_tilted_gravity_is_recorded_and_keeps_its_magnitude():
    seq = simulate(make_spec("elastic", "elastic/blob"), physics(gravity_tilt_deg=40.0))
    g = np.array([seq.conditions[f"gravity_{a}"] for a in "xyz"])
    assert np.linalg.norm(g) == pytest.approx(9.81) and -9.81 < g[1] < -9.81 * np.cos(np.deg2rad(40)) + 1e-9


@pytest.mark.parametrize(
    "category",
    [
        "elastic/capsule",
        "elastic/torus",
        "cloth/square",
        "cloth/strip",
        "shell/dome",
        "articulated/door",
        "articulated/drawer",
        "multibody/chain",
        "multibody/stack",
    ],
)
def test_pinned_vertices_stay_put(category):
    object_type = next(t for t, c in ALL if c == category)
    seq = simulate(make_spec(object_type, category, frames=10), physics(p_pin=1.0))
    pinned = (seq.vertex_flags & FLAG_PINNED) != 0
    assert pinned.sum() >= 3
    assert np.abs(seq.frames[:, pinned] - seq.frames[0, pinned]).max() < 1e-6
    assert np.abs(seq.frames[:, ~pinned] - seq.frames[0, ~pinned]).max() > 0.01  # the rest is free


@pytest.mark.parametrize(("object_type", "category"), ALL)
def test_pokes_and_drags_flag_their_regions_and_record_their_conditions(object_type, category):
    seq = simulate(make_spec(object_type, category), physics(p_poke=1.0, p_drag=1.0, p_init_velocity=1.0))
    c = seq.conditions
    assert (seq.vertex_flags & FLAG_POKED).any()
    assert np.linalg.norm([c[f"poke_impulse_{a}"] for a in "xyz"]) > 0 and c["poke_time"] > 0
    if object_type == "articulated":  # driven by their joint instead
        assert c["actuation_amplitude"] > 0 and c["actuation_frequency"] > 0 and "drag_start" not in c
    else:
        assert (seq.vertex_flags & FLAG_DRAGGED).any()
        assert np.linalg.norm([c[f"drag_offset_{a}"] for a in "xyz"]) > 0
        assert 0 < c["drag_start"] < c["drag_end"]
    quiet = simulate(make_spec(object_type, category), physics(**QUIET))
    assert not (quiet.vertex_flags & (FLAG_POKED | FLAG_DRAGGED)).any()
    assert not any(k.startswith(("poke", "drag", "init_")) for k in quiet.conditions)


@pytest.mark.parametrize("category", ["elastic/blob", "cloth/square", "multibody/chain"])
def test_a_drag_carries_its_region_by_the_offset(category):
    object_type = next(t for t, c in ALL if c == category)
    spec = make_spec(object_type, category, frames=20, condition_seed=7)
    seq = simulate(spec, physics(gravity=[0.0, 0.0, 0.0], **{**QUIET, "p_drag": 1.0}))
    offset = np.array([seq.conditions[f"drag_offset_{a}"] for a in "xyz"])
    dragged = (seq.vertex_flags & FLAG_DRAGGED) != 0
    moved = seq.frames[-1, dragged].mean(axis=0) - seq.frames[0, dragged].mean(axis=0)
    assert np.linalg.norm(moved - offset) < 0.35 * np.linalg.norm(offset), (moved, offset)


def test_initial_velocity_moves_a_weightless_body_at_that_velocity():
    spec = make_spec("multibody", "multibody/stack", frames=4)
    seq = simulate(
        spec, physics(gravity=[0.0, 0.0, 0.0], **{**QUIET, "p_init_velocity": 1.0, "init_spin": [0.0, 0.0]})
    )
    v = np.array([seq.conditions[f"init_velocity_{a}"] for a in "xyz"])
    moved = (seq.frames[-1] - seq.frames[0]).mean(axis=0)
    assert np.allclose(moved, v * 3 / 30, atol=1e-3)  # the stack's bodies fly together, untouched


@pytest.mark.parametrize("category", articulated.CATEGORIES)
def test_articulated_parts_stay_rigid_while_the_joint_moves(category):
    spec = make_spec("articulated", category, frames=12)
    seq = simulate(spec, physics(**QUIET))
    _, assembly = articulated.assemble(spec)
    assert_rigid_parts(seq.frames, assembly.vertex_part)
    a, b = (np.flatnonzero(assembly.vertex_part == k)[0] for k in (0, 1))
    gap = np.linalg.norm(seq.frames[:, a] - seq.frames[:, b], axis=1)
    assert np.ptp(gap) > 1e-3  # the parts move relative to each other


@pytest.mark.parametrize("category", multibody.CATEGORIES)
def test_multibody_bodies_stay_rigid(category):
    spec = make_spec("multibody", category, frames=12)
    seq = simulate(spec, physics(p_poke=1.0))
    _, assembly = multibody.assemble(spec, pinned=False)
    assert_rigid_parts(seq.frames, assembly.vertex_part)


def assert_rigid_parts(frames: np.ndarray, labels: np.ndarray) -> None:
    for part in np.unique(labels):
        ids = np.flatnonzero(labels == part)[:40]
        pairs = np.array(list(itertools.combinations(ids, 2)))
        d = np.linalg.norm(frames[:, pairs[:, 0]] - frames[:, pairs[:, 1]], axis=-1)
        assert np.abs(d - d[0]).max() < 2e-5, f"part {part} deformed"


def test_elastic_solids_deform_and_keep_their_volume_roughly():
    seq = simulate(make_spec("elastic", "elastic/blob", frames=24, vertices=150), physics(**QUIET))
    volumes = [shapes.enclosed_volume(shapes.Surface(f.astype(float), seq.faces)) for f in seq.frames]
    assert min(volumes) / volumes[0] > 0.6 and max(volumes) / volumes[0] < 1.1
    rest = seq.frames[0] - seq.frames[0].mean(axis=0)
    last = seq.frames[-1] - seq.frames[-1].mean(axis=0)
    d0 = np.linalg.norm(rest[:, None] - rest[None], axis=-1)
    d1 = np.linalg.norm(last[:, None] - last[None], axis=-1)
    assert np.abs(d1 - d0).max() > 1e-3  # not a rigid motion: it squashed on landing


def test_elastic_interpolation_grid_matches_mujoco():
    spec = make_spec("elastic", "elastic/torus")
    body = elastic.rest_body(spec)
    points = body.solid.points
    xml = mjcf.scene_xml(
        "grid",
        timestep=0.004,
        gravity_y_up=np.zeros(3),
        friction=0.5,
        worldbody=f"""<flexcomp name="{elastic.FLEX}" type="direct" dim="3" dof="trilinear"
            cellcount="{mjcf.ints(body.cells)}" point="{mjcf.numbers(points)}"
            element="{mjcf.ints(body.solid.tets)}"><elasticity young="1e4"/></flexcomp>""",
    )
    model = mjcf.compile_model(xml, "grid")
    nodes = body.node_positions()
    assert np.allclose(model.flex_node0, nodes, atol=1e-8)
    weights = body.weights(body.solid.surface.vertices)
    assert np.allclose(weights @ nodes, body.solid.surface.vertices, atol=1e-9)
    used = np.flatnonzero(weights.sum(axis=0))  # nodes no vertex depends on get no body of their own
    assert [body.node_body(n) for n in used] == [model.body(b).name for b in model.flex_nodebodyid[used]]


@pytest.mark.parametrize("kind", sorted(shapes.SOLIDS))
def test_solid_fillings_are_valid(kind):
    for seed, n in ((0, 40), (1, 400)):
        solid = shapes.SOLIDS[kind](np.random.default_rng(seed), n, 0.1)
        volume = shapes.enclosed_volume(solid.surface)
        tets = np.abs(shapes.tet_volumes(solid.points, solid.tets))
        assert volume > 0 and tets.min() > 0
        assert tets.sum() == pytest.approx(volume, rel=1e-9)  # no overlaps, no gaps
        assert 0.6 * n <= len(solid.surface.vertices) <= 1.6 * n


def test_conditions_are_drawn_from_the_ranges():
    spec = make_spec("elastic", "elastic/blob")
    ranges = physics(youngs_modulus=[1e3, 1e5], density=[100.0, 200.0])
    draws = [sample_conditions(dataclasses.replace(spec, condition_seed=s), ranges) for s in range(200)]
    e = np.log10([d.youngs_modulus for d in draws])
    assert e.min() >= 3 and e.max() <= 5 and abs(np.median(e) - 4) < 0.25  # log-uniform
    assert all(100 <= d.density <= 200 for d in draws)
    assert 0.35 < np.mean([d.poke is not None for d in draws]) < 0.65  # p_poke = 0.5
    assert sample_conditions(spec, ranges).youngs_modulus == draws[spec.condition_seed].youngs_modulus


def test_unknown_category_is_a_clear_error():
    with pytest.raises(BadInputError, match="elastic/teapot"):
        simulate(make_spec("elastic", "elastic/teapot"), physics())
    with pytest.raises(BadInputError, match="fluid"):
        simulate(make_spec("fluid", "fluid/water"), physics())
    with pytest.raises(BadInputError, match="target_vertices >= 20"):
        simulate(make_spec("cloth", "cloth/square", vertices=5), physics())


def test_asset_packs_must_be_known_and_installed():
    spec = make_spec("multibody", "multibody/stack")
    with pytest.raises(BadInputError, match="'dm_control' is not supported"):
        simulate(dataclasses.replace(spec, asset_packs=["dm_control"]), physics())
    if importlib.util.find_spec("pybullet_data") is None:
        with pytest.raises(BadInputError, match="'pybullet_data' is not installed.*pip install pybullet"):
            simulate(dataclasses.replace(spec, asset_packs=["pybullet_data"]), physics())


def test_obj_reader_keeps_vertex_order_and_splits_polygons(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1 4//1\n")
    mesh = assets.read_obj(path)
    assert np.array_equal(mesh.vertices[:, :2], [[0, 0], [1, 0], [1, 1], [0, 1]])
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_a_diverging_simulation_is_an_error_naming_the_sequence():
    # An explicit stiff spring far beyond what a 10 ms Euler step can integrate.
    xml = """<mujoco><option timestep="0.01" integrator="Euler"/><worldbody><body>
        <joint type="slide" axis="0 0 1" stiffness="1e9"/><geom type="sphere" size="0.01" mass="0.001"/>
        </body></worldbody><keyframe><key qpos="0.1"/></keyframe></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    with pytest.raises(mjcf.UnstableError, match="'spring-1'.*unstable"):
        mjcf.record(
            model,
            "spring-1",
            10,
            4,
            lambda m, d: d.xpos[1:].copy(),
            setup=lambda m, d: mujoco.mj_resetDataKeyframe(m, d, 0),
        )


def test_a_scene_where_nothing_moves_is_an_error():
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><option gravity="0 0 0"/>'
        '<worldbody><body><freejoint/><geom size="0.1"/></body></worldbody></mujoco>'
    )
    with pytest.raises(NeurokError, match="'still'.*nothing moved"):
        mjcf.record(model, "still", 4, 2, lambda m, d: d.xpos[1:].copy() + np.eye(3))
