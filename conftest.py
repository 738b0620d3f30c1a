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

import pytest

os.environ.setdefault("MNISTDIFF_PROFILE", "smoke")
os.environ.setdefault("PYTHONHASHSEED", "0")


def _is_worker() -> bool:
    """Whether this process is a pytest-xdist worker (the controller alone checks the tree, after every worker)."""
    return "PYTEST_XDIST_WORKER" in os.environ


# Under pytest-xdist (``-n``), each worker and the processes it starts (notebook kernels, CLI runs) get their share of
# the cores, so that two workers on two cores do not each run two torch threads (oversubscribed, torch slows a lot).
if _is_worker():
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

if "MNISTDIFF_RESULTS_DIR" not in os.environ:
    _copy = Path(tempfile.mkdtemp(prefix="mnistdiff-results-")) / "results"
    shutil.copytree(Path(__file__).resolve().parent / "results", _copy)
    os.environ["MNISTDIFF_RESULTS_DIR"] = str(_copy)
    atexit.register(shutil.rmtree, _copy.parent, True)

# The speed choices the package times and remembers per machine (precision, the attention kernel;
# :func:`mnistdiff.devices.remembered`) go to a folder of this run's, never the user's ``~/.cache``: timings taken
# while the tests share the cores must not become a real run's choice. Set here, before anything starts, so that the
# notebook kernels nbval starts inherit it too (the fixture below gives each test function a folder of its own).
if not os.environ.get("MNISTDIFF_TEST_RUN"):  # the first pytest process; its workers and kernels inherit
    os.environ["MNISTDIFF_CACHE"] = tempfile.mkdtemp(prefix="mnistdiff-choices-")
    os.environ["MNISTDIFF_TEST_RUN"] = "1"
    atexit.register(shutil.rmtree, os.environ["MNISTDIFF_CACHE"], True)


@pytest.fixture(autouse=True)
def _fresh_choices(tmp_path_factory, monkeypatch):
    """Each test (and what it starts) remembers its measured speed choices in a folder of its own
    (``$MNISTDIFF_CACHE``, :func:`mnistdiff.devices.remembered`), never in the user's ``~/.cache``, and finds none
    from another test."""
    monkeypatch.setenv("MNISTDIFF_CACHE", str(tmp_path_factory.mktemp("choices")))


# --------------------------------------------------------------------------------------------
# Parallel runs: one worker per test file, and the notebooks in order on one worker
# --------------------------------------------------------------------------------------------

#: The ``xdist_group`` of the notebooks and of any test that trains the smoke profile's models: the chapters train
#: ``checkpoints/smoke/*`` in order (chapter 3 loads chapter 2's DDPM), so they run one after another on one worker.
SMOKE_MODELS = "smoke-models"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Group the items for ``pytest -n N --dist loadgroup`` (the README's command): the notebooks' cells into
    :data:`SMOKE_MODELS`, every other test with the others of its file (a module's fixtures are built once)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = SMOKE_MODELS if item.path.suffix == ".ipynb" else item.path.name
            item.add_marker(pytest.mark.xdist_group(group))


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
    if not _is_worker():
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
