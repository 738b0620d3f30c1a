"""Habits that keep the codebase easy to find one's way in: ruff and mypy pass, functions and
modules stay small, and the layers import only downwards (core ← training ← evaluation ← course)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mnistdiff"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
#: the layers, lowest first; a module may import from its own layer and the ones before it
LAYERS = ("core", "training", "evaluation", "course", "entry")
ENTRY = {"cli", "cli_options", "cli_checks", "cli_distill", "cli_export", "__main__", "book", "__init__"}


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (it pins the version CI uses)")
    return [name]


def test_ruff_passes():
    res = subprocess.run([*_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_core_type_checks():
    """mypy on the files [tool.mypy] lists (the diffusion core and the command line)."""
    res = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_60_lines_and_no_module_over_400():
    long_functions, long_modules = [], []
    for path in _modules():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({len(source.splitlines())} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long_functions == [] and long_modules == []


def _layer(module: str) -> str:
    """``mnistdiff.training.loop`` → ``training``; a top-level module is ``core`` unless it is an entry point."""
    parts = module.split(".")
    if len(parts) > 2:
        return parts[1]
    return "entry" if parts[-1] in ENTRY else "core"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistdiff"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnistdiff")}
    return found


def test_layers_import_only_downwards():
    """The core never imports the machinery; training never imports evaluation or the course; evaluation
    never imports the course (so a reader of the core meets no course or book code)."""
    wrong = []
    for path in _modules():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)  # e.g. mnistdiff.training.__init__
        mine = _layer(name)
        for target in _imports(path):
            theirs = "core" if target == "mnistdiff" else _layer(target)
            if LAYERS.index(theirs) > LAYERS.index(mine):
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_the_layer_check_can_fail(tmp_path):
    """A core module that imported the course would be reported (the check is not vacuous)."""
    assert _layer("mnistdiff.ddpm") == "core" and _layer("mnistdiff.course.widgets") == "course"
    assert _layer("mnistdiff.training.__init__") == "training" and _layer("mnistdiff.__init__") == "entry"
    assert LAYERS.index(_layer("mnistdiff.course.pretrained")) > LAYERS.index(_layer("mnistdiff.unet"))
    fake = tmp_path / "m.py"
    fake.write_text("from mnistdiff.course.pretrained import get_ddpm\nimport mnistdiff.training.loop\n")
    assert _imports(fake) == {"mnistdiff.course.pretrained", "mnistdiff.training.loop"}
