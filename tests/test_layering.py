"""Imports run one way, down the stages of the data flow: a subpackage imports only the shared modules and
the stages below it, so no two subpackages import each other and any stage can be read (and imported)
without the ones above it. Every import counts, also those inside functions and under TYPE_CHECKING: each
one is a dependency a reader must follow."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "neurok"

# Lowest first. The shared modules (errors, geometry, threads, config) import no stage.
STAGES = ["errors", "geometry", "threads", "config", "data", "model", "dynamics", "eval", "track", "train",
          "tune", "serve", "cli"]  # fmt: skip
SHARED = 4  # the first SHARED entries are shared modules: they may not import each other upwards either


def imported_stages(path: Path) -> set[str]:
    """The neurok.<part> names a module imports, wherever in the module the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from neurok import data` names a stage; `from neurok import __version__`, the root's metadata
            subs = [a.name for a in node.names if node.module == "neurok" and not a.name.startswith("__")]
            names = [node.module] + [f"neurok.{name}" for name in subs]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("neurok.")}
    return found


def stage_of(path: Path, package: Path) -> str | None:
    part = path.relative_to(package).parts[0]
    name = part.removesuffix(".py")
    return None if name == "__init__" else name


def upward_imports(package: Path) -> list[str]:
    """'module: imports neurok.X (rank) above its stage Y (rank)' for every import up the STAGES, or of a
    part of the package the order does not name."""
    rank = {name: i for i, name in enumerate(STAGES)}
    problems = []
    for path in sorted(package.rglob("*.py")):
        stage = stage_of(path, package)
        if stage is None:
            continue
        if stage not in rank:
            problems.append(f"{path.relative_to(package)}: stage {stage!r} is not in STAGES")
            continue
        for other in sorted(imported_stages(path) - {stage}):
            if other not in rank:
                problems.append(
                    f"{path.relative_to(package)}: imports neurok.{other}, which is not in STAGES"
                )
            elif rank[other] > rank[stage]:
                problems.append(
                    f"{path.relative_to(package)}: stage {stage} imports neurok.{other}, a higher stage"
                )
    return problems


def test_every_import_runs_down_the_stages():
    assert upward_imports(PACKAGE) == []


def test_the_order_names_every_part_of_the_package():
    parts = {stage_of(p, PACKAGE) for p in PACKAGE.rglob("*.py")} - {None}
    assert parts == set(STAGES)


@pytest.mark.parametrize(
    ("module", "code", "expected"),
    [
        ("eval/evaluate.py", "from neurok.train.local import train\n", "stage eval imports neurok.train"),
        ("data/store.py", "def f():\n    import neurok.model.cvae\n", "stage data imports neurok.model"),
        ("model/cvae.py", "from neurok import dynamics\n", "stage model imports neurok.dynamics"),
        ("data/store.py", "from neurok.plugins import x\n", "imports neurok.plugins, which is not in STAGES"),
    ],
)
def test_a_planted_upward_import_is_found(tmp_path, module, code, expected):
    for path in PACKAGE.rglob("*.py"):  # a copy of the package, one import planted
        copy = tmp_path / path.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + code)
    problems = upward_imports(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(module) and expected in problems[0], problems
