"""Optional dependencies: the core needs torch, numpy, matplotlib, tqdm and pillow; the chapters'
widgets and the UMAP evaluation need the ``course`` extra (``pip install "mnistdiff[course]"``)."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

#: module → the pip package that provides it (all in the ``course`` extra)
PACKAGES = {"ipywidgets": "ipywidgets", "umap": "umap-learn", "sklearn": "scikit-learn"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = PACKAGES.get(module.split(".")[0], module)
        raise ImportError(
            f"{purpose} needs {package}, which is not installed: pip install \"mnistdiff[course]\" "
            f"(or pip install {package})"
        ) from err
