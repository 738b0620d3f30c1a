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
