"""The walls between the stages (README "Layout"): parsed from every import statement, function-level ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("utils", "geometry", "dataloaders", "models", "inference", "evaluation", "trainers", "pipeline", "render",
            "webdemo")
# package -> project packages it must not import
WALLS: dict[str, set[str]] = {
    "utils": set(PACKAGES) - {"utils"},
    "geometry": set(PACKAGES) - {"utils", "geometry"},
    "dataloaders": {"models", "inference", "evaluation", "trainers", "pipeline"},
    "models": {"dataloaders", "inference", "evaluation", "trainers", "pipeline"},
    "evaluation": {"dataloaders", "inference", "trainers", "pipeline"},
    "inference": {"trainers", "pipeline"},
    "trainers": {"pipeline"},
    "pipeline": set(),
    # rendering/export reads npz files: geometry + utils only, never the training stack
    "render": {"dataloaders", "models", "inference", "evaluation", "trainers", "pipeline"},
    # the web demo is a page over inference + render (and the synthetic corpus for its examples): no model code of
    # its own, no training, no evaluation
    "webdemo": {"models", "evaluation", "trainers", "pipeline"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level module, line) of every absolute import in a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


def crossings(root: Path) -> list[str]:
    bad = []
    for pkg, forbidden in WALLS.items():
        for f in sorted((root / pkg).rglob("*.py")):
            for mod, line in imported_packages(f):
                if mod in forbidden:
                    bad.append(f"{f.relative_to(root)}:{line} imports {mod}")
    return bad


def test_no_wall_is_crossed():
    assert crossings(REPO_ROOT) == []


def test_every_package_is_walled():
    found = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert found == set(PACKAGES)


def test_a_crossing_is_reported(tmp_path):
    for pkg in WALLS:
        (tmp_path / pkg).mkdir()
    (tmp_path / "evaluation" / "bad.py").write_text("def f():\n    from trainers.base import BaseTrainer\n")
    (tmp_path / "models" / "ok.py").write_text("import torch\nfrom utils.io import save_json\nfrom . import x\n")
    assert crossings(tmp_path) == ["evaluation/bad.py:2 imports trainers"]


def test_utils_holds_no_evaluator_code():
    names = {p.stem for p in (REPO_ROOT / "utils").glob("*.py")}
    assert not names & {"metrics", "evaluate", "evaluator", "body_model", "rotations", "skeleton"}


@pytest.mark.parametrize(
    "script", ["train.py", "test.py", "run_pipeline.py", "rvq_beatx_train.py", "render_video.py", "export_motion.py",
               "gesture_inference.py", "inference_cli.py", "run_example.py", "demo.py"]
)
def test_entry_scripts_stay_thin(script):
    """Entry scripts parse arguments and call one room: no classes, few lines."""
    tree = ast.parse((REPO_ROOT / script).read_text())
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len((REPO_ROOT / script).read_text().splitlines()) < 150
