"""Bad input, planted one fault at a time: every command must stop with a clear error that names the file,
key, field or sequence at fault, exit with the right code (2: bad input, 1: a failed check or run), print
no traceback, and leave the folder it was given exactly as it was (nothing half-written, nothing lost).

Each `Fault` plants its input under a fresh folder and returns the `neurok` command line to run there.
`make test` runs them; `make faults` also writes their scoreboard to docs/reliability.md
(scripts/fault_scoreboard.py, from pytest's JUnit XML: the stage and message are recorded properties).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import zarr

from conftest import wobbling_sphere
from neurok.cli.main import main
from neurok.data.store import StoreWriter
from test_eval_adapter import tiny_checkpoint


@dataclass(frozen=True)
class Fault:
    name: str
    stage: str
    plant: Callable[[Path], list[str]]  # plants the fault under a folder; returns the neurok arguments
    message: str  # a regular expression the error must match: it names what is at fault
    code: int = 2


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def store(path: Path) -> str:
    """A valid store of two wobbling spheres."""
    with StoreWriter(str(path), attrs={"provenance": {"recipe_hash": "faults"}}) as writer:
        writer.write_shard(0, [wobbling_sphere("seq0", 0), wobbling_sphere("seq1", 1, seed=1)])
    return str(path)


def sphere_obj(path: Path, edit: Callable[[str], str] = lambda text: text) -> str:
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
    return write(path, edit(trimesh.exchange.obj.export_obj(mesh)))


def big_ply(path: Path) -> str:
    """A 163,842-vertex sphere: over the simulator's limit of 50,000."""
    mesh = trimesh.creation.icosphere(subdivisions=7)
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh))
    return str(path)


def simulate(tmp: Path, mesh: str, *extra: str, model: str | None = None) -> list[str]:
    model = model or str(tiny_checkpoint(tmp / "model.ckpt"))
    return ["simulate", "--model", model, "--mesh", mesh, "--frames", "2", "--out", str(tmp / "sim"), *extra]


def train(tmp: Path, *extra: str) -> list[str]:
    """Training on a valid store, with `extra` (the fault) last."""
    valid = store(tmp / "train.zarr") if not (tmp / "train.zarr").exists() else tmp / "train.zarr"
    return [
        "train",
        "pipelines/train.yaml",
        f"data.store={valid}",
        f"output_dir={tmp / 'out'}",
        "preset=tiny",
        "trainer.max_steps=1",
        "data.num_workers=0",
        *extra,
    ]


def generate(tmp: Path, *extra: str) -> list[str]:
    return ["data", "generate", "datasets/default.yaml", "--out", str(tmp / "new.zarr"), "objects=4", *extra]


def shard_array(path: str, key: str) -> zarr.Array:
    return zarr.open_group(path, mode="r+")[f"shards/000000/{key}"]


def plant_nan(tmp: Path) -> list[str]:
    path = store(tmp / "s.zarr")
    vertices = shard_array(path, "vertices")
    vertices[3, 0] = np.nan
    return ["data", "validate", path]


def truncated_chunk(tmp: Path) -> list[str]:
    path = store(tmp / "s.zarr")
    chunk = max(
        (p for p in Path(path, "shards", "000000", "vertices").rglob("*") if p.is_file()), key=os.path.getsize
    )
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return ["data", "validate", path]


def schema_version(tmp: Path, command: list[str]) -> list[str]:
    path = store(tmp / "s.zarr")
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 99
    return [*command, path] if command[0] == "data" else train(tmp, f"data.store={path}")


class Payload:
    """A pickle that runs code when loaded: a checkpoint must never be unpickled with full trust."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def code_in_pickle(tmp: Path) -> list[str]:
    path = tmp / "evil.ckpt"
    torch.save({"hyper_parameters": Payload(tmp / "pwned"), "state_dict": {}}, path, pickle_protocol=2)
    return simulate(tmp, sphere_obj(tmp / "m.obj"), model=str(path))


def truncated_checkpoint(tmp: Path) -> list[str]:
    path = tiny_checkpoint(tmp / "model.ckpt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return simulate(tmp, sphere_obj(tmp / "m.obj"), model=str(path))


def other_size_checkpoint(tmp: Path) -> list[str]:
    path = tiny_checkpoint(tmp / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["model"]["width"] *= 2  # weights of one size, a config of another
    torch.save(checkpoint, path)
    return simulate(tmp, sphere_obj(tmp / "m.obj"), model=str(path))


def frames_folder(tmp: Path, meshes: list[trimesh.Trimesh]) -> str:
    folder = tmp / "seq"
    folder.mkdir()
    for i, mesh in enumerate(meshes):
        (folder / f"frame_{i}.obj").write_text(trimesh.exchange.obj.export_obj(mesh))
    return str(folder)


def ingest(tmp: Path, source: str, fmt: str = "objseq") -> list[str]:
    return ["data", "ingest", source, "--format", fmt, "--out", str(tmp / "in.zarr")]


def mixed_topology(tmp: Path) -> list[str]:
    meshes = [trimesh.creation.icosphere(subdivisions=s) for s in (1, 1, 2)]
    return ingest(tmp, frames_folder(tmp, meshes))


def nan_frame(tmp: Path) -> list[str]:
    meshes = [trimesh.creation.icosphere(subdivisions=1) for _ in range(3)]
    meshes[1].vertices[4] = np.nan
    return ingest(tmp, frames_folder(tmp, meshes))


def empty_registry(tmp: Path, command: list[str]) -> list[str]:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp.parent}/registry.db"  # restored by the test
    return command


FIRST_FACE = re.compile(r"^f .*\n", re.M)  # a face given twice: its edges have three faces each
NAN_VERTEX = lambda text: text.replace("v ", "v nan ", 1).replace("v nan ", "v nan 0 0\nv ", 1)  # noqa: E731


FAULTS = [
    # configs and the command line
    Fault("config file missing", "config", lambda t: ["train", str(t / "none.yaml")], r"none\.yaml"),
    Fault("config is a folder", "config", lambda t: ["train", str(t)], r"is a folder"),
    Fault(
        "config is not YAML",
        "config",
        lambda t: ["train", write(t / "bad.yaml", "trainer: [max_steps: 3\n")],
        r"bad\.yaml",
    ),
    Fault("unknown override key", "config", lambda t: train(t, "model.widht=64"), r"widht"),
    Fault("override of the wrong type", "config", lambda t: train(t, "trainer.max_steps=many"), r"max_steps"),
    Fault("unknown preset", "config", lambda t: train(t, "preset=huge"), r"huge"),
    Fault(
        "unknown decoder output",
        "config",
        lambda t: train(t, "model.decoder_output=spline"),
        r"decoder_output",
    ),
    Fault(
        "extends a missing file",
        "config",
        lambda t: ["train", write(t / "child.yaml", "extends: parent.yaml\n")],
        r"parent\.yaml",
    ),
    Fault("batch size of zero", "config", lambda t: train(t, "data.batch_size=0"), r"batch_size"),
    Fault("negative learning rate", "config", lambda t: train(t, "optim.lr=-1"), r"lr"),
    Fault(
        "training store missing", "config", lambda t: train(t, f"data.store={t / 'none.zarr'}"), r"none\.zarr"
    ),
    # recipes
    Fault(
        "recipe missing",
        "recipe",
        lambda t: ["data", "generate", str(t / "r.yaml"), "--out", str(t / "o.zarr")],
        r"r\.yaml",
    ),
    Fault("unknown object type", "recipe", lambda t: generate(t, "types.jelly.weight=1"), r"jelly"),
    Fault("no objects", "recipe", lambda t: generate(t, "objects=0"), r"objects"),
    Fault("one frame", "recipe", lambda t: generate(t, "frames=1"), r"frames"),
    Fault("negative type weight", "recipe", lambda t: generate(t, "types.cloth.weight=-1"), r"weight"),
    Fault("split share above 1", "recipe", lambda t: generate(t, "splits.val=1.5"), r"val"),
    # stores
    Fault(
        "store missing", "store", lambda t: ["data", "validate", str(t / "none.zarr")], r"none\.zarr", code=1
    ),
    Fault("folder is not a store", "store", lambda t: ["data", "inspect", str(t)], str(os.sep) + r"|store"),
    Fault("NaN in a frame", "store", plant_nan, r"seq0.*NaN", code=1),
    Fault("truncated shard chunk", "store", truncated_chunk, r"shards/000000", code=1),
    Fault(
        "schema version from the future",
        "store",
        lambda t: schema_version(t, ["data", "validate"]),
        r"schema_version|99",
        code=1,
    ),
    Fault(
        "training on a future schema", "store", lambda t: schema_version(t, ["train"]), r"schema_version|99"
    ),
    # meshes given to the simulator
    Fault("mesh missing", "mesh", lambda t: simulate(t, str(t / "none.obj")), r"none\.obj"),
    Fault("NaN vertex", "mesh", lambda t: simulate(t, sphere_obj(t / "m.obj", NAN_VERTEX)), r"m\.obj"),
    Fault("empty mesh", "mesh", lambda t: simulate(t, write(t / "m.obj", "# nothing\n")), r"m\.obj"),
    Fault(
        "face index out of range",
        "mesh",
        lambda t: simulate(t, sphere_obj(t / "m.obj", lambda s: s + "f 1 2 999\n")),
        r"m\.obj",
    ),
    Fault(
        "vertices in no face",
        "mesh",
        lambda t: simulate(t, sphere_obj(t / "m.obj", lambda s: s + "v 5 5 5\n")),
        r"m\.obj: 1 vertices .* in no face",
    ),
    Fault(
        "edges shared by three faces",
        "mesh",
        lambda t: simulate(t, sphere_obj(t / "m.obj", lambda s: s + FIRST_FACE.search(s).group(0))),
        r"m\.obj: not manifold",
    ),
    Fault("mesh over the vertex limit", "mesh", lambda t: simulate(t, big_ply(t / "m.ply")), r"max_vertices"),
    Fault("unsupported mesh format", "mesh", lambda t: simulate(t, write(t / "m.xyz", "0 0 0\n")), r"m\.xyz"),
    Fault(
        "bad poke syntax", "mesh", lambda t: simulate(t, sphere_obj(t / "m.obj"), "--poke", "1,2:3"), r"poke"
    ),
    Fault(
        "gravity of two numbers",
        "mesh",
        lambda t: simulate(t, sphere_obj(t / "m.obj"), "--gravity", "0,-9.8"),
        r"gravity",
    ),
    Fault(
        "negative frame count",
        "mesh",
        lambda t: simulate(t, sphere_obj(t / "m.obj"), "--frames", "-3"),
        r"frames",
    ),
    # checkpoints
    Fault(
        "checkpoint missing",
        "checkpoint",
        lambda t: simulate(t, sphere_obj(t / "m.obj"), model=str(t / "none.ckpt")),
        r"none\.ckpt",
    ),
    Fault("truncated checkpoint", "checkpoint", truncated_checkpoint, r"model\.ckpt"),
    Fault(
        "not a checkpoint",
        "checkpoint",
        lambda t: (
            torch.save({"weights": 1}, t / "x.ckpt"),
            simulate(t, sphere_obj(t / "m.obj"), model=str(t / "x.ckpt")),
        )[1],
        r"x\.ckpt",
    ),
    Fault("code in the pickle", "checkpoint", code_in_pickle, r"evil\.ckpt"),
    Fault("weights of another model size", "checkpoint", other_size_checkpoint, r"model\.ckpt"),
    # ingest
    Fault("unknown ingest format", "ingest", lambda t: ingest(t, str(t), "fbx"), r"fbx"),
    Fault("ingest source missing", "ingest", lambda t: ingest(t, str(t / "none")), r"none"),
    Fault("frames of different topology", "ingest", mixed_topology, r"frame_2\.obj|seq"),
    Fault("NaN in an ingested frame", "ingest", nan_frame, r"frame_1\.obj|seq"),
    # the registry
    Fault(
        "promote a missing alias",
        "registry",
        lambda t: empty_registry(t, ["registry", "promote", "neurok@champion"]),
        r"neurok",
    ),
    Fault(
        "pull a missing model",
        "registry",
        lambda t: empty_registry(t, ["registry", "pull", "nomodel@champion", "--out", str(t / "p")]),
        r"nomodel",
    ),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    fault, tmp_path, capsys, monkeypatch, record_property
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/unused.db")
    monkeypatch.chdir(Path(__file__).parents[2])  # the repository root: configs are given relative to it
    work = tmp_path / "work"
    work.mkdir()
    argv = fault.plant(work)
    before = snapshot(work)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors (exit code 2, the choices named)
        code = exc.code
    out, err = capsys.readouterr()
    err = out + err  # a check's report (data validate) goes to stdout
    record_property("stage", fault.stage)
    record_property("outcome", "clear error, nothing changed")
    shown = next((line for line in err.splitlines() if "error:" in line), err.strip()[-240:])
    record_property("message", shown.replace(str(tmp_path), "<tmp>")[:240])
    assert "Traceback" not in err, err
    assert code == fault.code, f"exit code {code}, expected {fault.code}: {err}"
    assert re.search(fault.message, err), f"the error does not name what is at fault ({fault.message}): {err}"
    assert snapshot(work) == before, "the command changed or half-wrote files it was given"
    assert not (work / "pwned").exists()
