"""The core imports only the core, and ``import mnistdiff`` imports nothing heavy: checked in fresh interpreters.

``tests/test_code_health.py`` checks the import statements; this checks what Python really loads
(``sys.modules``), which also catches an ``__init__`` that imports a subpackage eagerly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted(p.stem for p in (ROOT / "mnistdiff").glob("*.py")
              if p.stem not in {"__init__", "__main__", "cli", "cli_options", "cli_checks", "book"})
MACHINERY = ("mnistdiff.training", "mnistdiff.evaluation", "mnistdiff.course")


def loaded_after(code: str) -> list[str]:
    """The modules of ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def machinery(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(MACHINERY)]


def test_the_core_is_what_we_think():
    assert {"ddpm", "ddim", "unet", "vae", "latent", "guidance", "schedules", "model", "modelfile"} <= set(CORE)


def test_every_core_module_loads_no_machinery():
    modules = loaded_after("\n".join(f"import mnistdiff.{name}" for name in CORE))
    assert {f"mnistdiff.{name}" for name in CORE} <= set(modules)
    assert machinery(modules) == []


def test_import_mnistdiff_loads_nothing_heavy():
    modules = loaded_after("import mnistdiff")
    assert [m for m in modules if m.startswith("mnistdiff")] == ["mnistdiff"]
    assert "torch" not in modules


def test_names_load_on_first_use():
    """``mnistdiff.q_sample`` loads the core module that defines it; ``mnistdiff.get_ddpm`` the course (so the
    probe above can see machinery when it is there)."""
    core = loaded_after("import mnistdiff\nmnistdiff.q_sample")
    assert "mnistdiff.ddpm" in core and machinery(core) == []
    course = loaded_after("from mnistdiff import get_ddpm")
    assert "mnistdiff.course.pretrained" in course and "mnistdiff.training.loop" in course


def test_every_exported_name_resolves():
    import mnistdiff

    missing = [name for name in mnistdiff.__all__ if not hasattr(mnistdiff, name)]  # a value may be None
    assert missing == []
    assert set(mnistdiff.__all__) <= set(dir(mnistdiff))


def test_the_core_loads_no_compiler():
    """``torch._dynamo`` (about 1.3 s to import) loads only where something compiles or the attention kernel is first
    chosen, not with the core."""
    assert "torch._dynamo" not in loaded_after("\n".join(f"import mnistdiff.{name}" for name in CORE))
