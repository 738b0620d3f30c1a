"""Vendoring the book's front-end libraries (maintainers only: the vendored files are committed).

MathJax and onnxruntime-web are served from the book itself (``book/_vendor``, which ``_config.yml`` copies to
``_static/``), so math is typeset, and the live generator runs, with no CDN. Both come from ``npm ci`` with the
repository's ``package.json`` (versions pinned): ``python -m mnistdiff.book --vendor node_modules``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from .layout import BOOK_DIR

__all__ = ["MATHJAX_DEST", "ORT_DEST", "ORT_FILES", "vendor_mathjax", "vendor_onnxruntime", "vendor_all"]

MATHJAX_DEST = BOOK_DIR / "_vendor" / "mathjax"
MATHJAX_FILES = ("tex-chtml-full.js",)
MATHJAX_FONTS = "output/chtml/fonts/woff-v2"

ORT_DEST = BOOK_DIR / "_vendor" / "onnxruntime-web"
#: onnxruntime-web's WebAssembly CPU build only: the script, its loader module and the WebAssembly binary (the
#: one build, SIMD; the page asks for one thread, so no cross-origin-isolation headers are needed). The binary is
#: stored gzipped (15 MB → 3.8 MB): the page inflates it with the browser's DecompressionStream and hands it to
#: onnxruntime-web (``env.wasm.wasmBinary``), so any static host serves it as it is.
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm.gz")


#: The npm package ships no LICENSE file; its package.json says MIT and each file's header says
#: "Copyright (c) Microsoft Corporation. All rights reserved. Licensed under the MIT License."
ORT_LICENSE = """onnxruntime-web: {license} License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def _fresh(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    return dest


def _version(package: Path) -> str:
    return str(json.loads((package / "package.json").read_text())["version"])


def vendor_mathjax(node_modules: Path, dest: Path = MATHJAX_DEST) -> Path:
    """Copy MathJax's TeX→CommonHTML bundle and its web fonts from ``node_modules`` into the book.

    Only ``es5/tex-chtml-full.js`` (TeX input with every extension built in, so nothing is
    fetched on demand) and the ``woff-v2`` fonts are kept, with MathJax's licence.
    """
    src = Path(node_modules) / "mathjax"
    (_fresh(dest) / MATHJAX_FONTS).mkdir(parents=True)
    for name in MATHJAX_FILES:
        shutil.copy2(src / "es5" / name, dest / name)
    for font in sorted((src / "es5" / MATHJAX_FONTS).glob("*.woff")):
        shutil.copy2(font, dest / MATHJAX_FONTS / font.name)
    shutil.copy2(src / "LICENSE", dest / "LICENSE")
    (dest / "VERSION").write_text(f"mathjax {_version(src)} (npm), copied by python -m mnistdiff.book --vendor\n")
    return dest


def vendor_onnxruntime(node_modules: Path, dest: Path = ORT_DEST) -> Path:
    """Copy onnxruntime-web's WebAssembly build (:data:`ORT_FILES`) and its licence into the book."""
    src = Path(node_modules) / "onnxruntime-web"
    _fresh(dest)
    for name in ORT_FILES:
        if name.endswith(".gz"):
            data = (src / "dist" / name.removesuffix(".gz")).read_bytes()
            (dest / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        else:
            shutil.copy2(src / "dist" / name, dest / name)
    (dest / "LICENSE").write_text(ORT_LICENSE.format(license=json.loads((src / "package.json").read_text())["license"]))
    (dest / "VERSION").write_text(
        f"onnxruntime-web {_version(src)} (npm), copied by python -m mnistdiff.book --vendor\n"
    )
    return dest


def vendor_all(node_modules: Path) -> list[Path]:
    """Both libraries, from one ``node_modules``."""
    return [vendor_mathjax(node_modules), vendor_onnxruntime(node_modules)]
