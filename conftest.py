"""Repository-wide pytest setup: tests and nbval run the notebooks under the smoke profile.

The stored outputs in notebooks/*.ipynb (what nbval compares) come from the smoke profile, so the
kernels nbval starts must use it too; they inherit this process's environment.

Chapters 6 and 7 write their results files when they run. Under pytest they write into a copy of
``results/`` (``$MNISTDIFF_RESULTS_DIR``, which the package and the book build both read), so running the
tests leaves the checkout as it was; ``python -m mnistdiff course`` writes the real ones.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("MNISTDIFF_PROFILE", "smoke")
os.environ.setdefault("PYTHONHASHSEED", "0")

if "MNISTDIFF_RESULTS_DIR" not in os.environ:
    _copy = Path(tempfile.mkdtemp(prefix="mnistdiff-results-")) / "results"
    shutil.copytree(Path(__file__).resolve().parent / "results", _copy)
    os.environ["MNISTDIFF_RESULTS_DIR"] = str(_copy)
    atexit.register(shutil.rmtree, _copy.parent, True)


# --------------------------------------------------------------------------------------------
# The tests leave the checkout as they found it
# --------------------------------------------------------------------------------------------

_ROOT = Path(__file__).resolve().parent


def _tree_state() -> dict[str, bytes] | None:
    """The bytes of every file git lists as changed or untracked (``None`` outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=_ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = [entry[3:] for entry in out.decode().split("\0") if len(entry) > 3]
    return {p: (_ROOT / p).read_bytes() if (_ROOT / p).is_file() else b"" for p in paths}


def pytest_sessionstart(session):
    session.config._tree_before = _tree_state()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if it changed, added or removed a file of the checkout (results/, notebooks/, …): tests and nbval
    write into temporary folders. Files that were already changed before the run are compared by content."""
    before = getattr(session.config, "_tree_before", None)
    after = _tree_state()
    if before is None or after is None or session.config.getoption("collectonly", False):
        return
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                     and not p.startswith(("artifacts/", ".pytest_cache/")))
    if changed:
        print("\nthe tests changed the checkout (they must write into temporary folders):\n  " + "\n  ".join(changed))
        session.exitstatus = 1
