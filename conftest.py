"""Repository-wide pytest setup: tests and nbval run the notebooks under the smoke profile.

The stored outputs in notebooks/*.ipynb (what nbval compares) come from the smoke profile, so the
kernels nbval starts must use it too; they inherit this process's environment.
"""

import os

os.environ.setdefault("MNISTDIFF_PROFILE", "smoke")
os.environ.setdefault("PYTHONHASHSEED", "0")
