"""The test suite leaves the checkout as it found it: the repository's ``conftest.py`` fails a run that changes it.

(Chapters 6 and 7 used to rewrite ``results/smoke/evaluation.json`` and ``guidance.json`` under nbval; they now write
into a temporary copy of ``results/``.) Shown here on a small git checkout with the same ``conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _checkout(tmp_path: Path, test_body: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "results" / "smoke").mkdir(parents=True)
    (repo / "results" / "smoke" / "evaluation.json").write_text("{}\n")
    shutil.copy(ROOT / "conftest.py", repo / "conftest.py")
    (repo / "test_it.py").write_text(test_body)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


def _pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # a run of its own: not in this run's results copy, nor (under pytest -n) one of this run's xdist workers
    env = {k: v for k, v in os.environ.items() if k != "MNISTDIFF_RESULTS_DIR" and not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:nbval",
                           *args, "test_it.py"], cwd=repo, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist-workers"])
def test_a_run_that_rewrites_a_tracked_results_file_fails(tmp_path: Path, workers: list[str]) -> None:
    repo = _checkout(tmp_path, "from pathlib import Path\n\ndef test_writes():\n"
                               "    Path('results/smoke/evaluation.json').write_text('{\"fid\": 1}')\n")
    run = _pytest(repo, *workers)  # with workers, the controller checks the tree once they are all done
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the tests changed the checkout" in run.stdout and "results/smoke/evaluation.json" in run.stdout


def test_a_run_that_writes_into_the_results_copy_passes(tmp_path: Path) -> None:
    repo = _checkout(tmp_path, "import os\nfrom pathlib import Path\n\ndef test_writes():\n"
                               "    Path(os.environ['MNISTDIFF_RESULTS_DIR'], 'smoke', 'evaluation.json')"
                               ".write_text('{\"fid\": 1}')\n")
    run = _pytest(repo)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (repo / "results" / "smoke" / "evaluation.json").read_text() == "{}\n"
