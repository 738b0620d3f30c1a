"""Where the repository is: the one place that finds its root.

The course writes next to the code (``checkpoints/``, ``results/``, ``book/``). In a git checkout
(an editable install) that is the folder above ``mnistdiff/``; a copy installed into
``site-packages`` has no such folder, so there the root is ``$MNISTDIFF_ROOT`` or else the current
working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT_ENV_VAR", "repo_root"]

ROOT_ENV_VAR = "MNISTDIFF_ROOT"
_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root(package_dir: Path | None = None) -> Path:
    """``$MNISTDIFF_ROOT`` if set; else the checkout holding the package (the parent of ``mnistdiff/``
    when it has a ``pyproject.toml``); else the current working directory."""
    env = os.environ.get(ROOT_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    parent = (package_dir or _PACKAGE_DIR).parent
    if (parent / "pyproject.toml").is_file():
        return parent
    return Path.cwd()
