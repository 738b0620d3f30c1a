"""Vendoring MathJax into the book (maintainers only: the vendored files are committed).

MathJax is served from the book itself (``book/_vendor/mathjax``, which ``_config.yml`` copies to
``_static/``), so math is typeset when the HTML is opened from ``file://`` without a network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .layout import BOOK_DIR

__all__ = ["MATHJAX_DEST", "vendor_mathjax"]

MATHJAX_DEST = BOOK_DIR / "_vendor" / "mathjax"
MATHJAX_FILES = ("tex-chtml-full.js",)
MATHJAX_FONTS = "output/chtml/fonts/woff-v2"


def vendor_mathjax(node_modules: Path, dest: Path = MATHJAX_DEST) -> Path:
    """Copy MathJax's TeX→CommonHTML bundle and its web fonts from ``node_modules`` into the book.

    ``node_modules`` comes from ``npm ci`` with the repository's ``package.json`` (MathJax pinned).
    Only ``es5/tex-chtml-full.js`` (TeX input with every extension built in, so nothing is
    fetched on demand) and the ``woff-v2`` fonts are kept, with MathJax's licence.
    """
    src = Path(node_modules) / "mathjax"
    version = json.loads((src / "package.json").read_text())["version"]
    if dest.exists():
        shutil.rmtree(dest)
    (dest / MATHJAX_FONTS).mkdir(parents=True)
    for name in MATHJAX_FILES:
        shutil.copy2(src / "es5" / name, dest / name)
    for font in sorted((src / "es5" / MATHJAX_FONTS).glob("*.woff")):
        shutil.copy2(font, dest / MATHJAX_FONTS / font.name)
    shutil.copy2(src / "LICENSE", dest / "LICENSE")
    (dest / "VERSION").write_text(f"mathjax {version} (npm), copied by python -m mnistdiff.book --vendor-mathjax\n")
    return dest
