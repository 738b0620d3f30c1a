"""The build runner and its command line: ``python -m mnistdiff.book``.

The book shows the six chapters as stored, already-executed notebooks (``book/chapters/*.ipynb``,
written by the course command): the build never executes a notebook, and any Sphinx warning
fails it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .layout import BOOK_DIR, CHAPTERS, REPO_ROOT, default_results_dir
from .vendor import vendor_all

__all__ = ["build_command", "build", "main"]

PROG = "python -m mnistdiff.book"


def build_command(book_dir: Path = BOOK_DIR, output_dir: Path | None = None, fresh: bool = True) -> list[str]:
    """``jupyter-book build BOOK --warningiserror --keep-going [--all]``, run by this Python."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(book_dir),
        "--warningiserror",  # any Sphinx warning (broken link, bad docstring, missing page) fails
        "--keep-going",  # ... after reporting all of them
    ]
    if fresh:
        cmd.append("--all")
    if output_dir is not None:
        cmd += ["--path-output", str(Path(output_dir).resolve())]
    return cmd


def _check_chapters(book_dir: Path) -> None:
    missing = [c for c in CHAPTERS if not (book_dir / "chapters" / f"{c}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing chapters in {book_dir / 'chapters'}: {', '.join(missing)} "
            "(the course command writes them: python -m mnistdiff course)"
        )


def _build_env(book_dir: Path, results_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["MNISTDIFF_RESULTS_DIR"] = str(Path(results_dir).resolve() if results_dir else default_results_dir(book_dir))
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # Sphinx imports this checkout's package (autodoc and the extension's imports), installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def build(
    book_dir: Path = BOOK_DIR,
    output_dir: Path | None = None,
    results_dir: Path | None = None,
    fresh: bool = True,
    quiet: bool = False,
) -> Path:
    """Build the static HTML book with warnings as errors; return the ``html`` folder.

    ``output_dir`` is the folder that receives ``_build/`` (default: ``book_dir``). Raises
    ``RuntimeError`` (with Sphinx's output) when the build fails or warns.
    """
    book_dir = Path(book_dir).resolve()
    _check_chapters(book_dir)
    t0 = time.perf_counter()
    proc = subprocess.run(
        build_command(book_dir, output_dir, fresh),
        env=_build_env(book_dir, results_dir),
        cwd=str(book_dir),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {proc.returncode}) after {seconds:.0f} s:\n{log[-20000:]}")
    html = (Path(output_dir).resolve() if output_dir is not None else book_dir) / "_build" / "html"
    if not quiet:
        print(log[-3000:] if log else "")
        print(f"[{PROG}] built in {seconds:.1f} s: {html / 'index.html'}")
    return html


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("--book", type=Path, default=BOOK_DIR, help="the book's folder (default: book/)")
    parser.add_argument("--output", type=Path, default=None, help="folder to hold _build/ (default: the book's folder)")
    parser.add_argument(
        "--results", type=Path, default=None, help="results folder (default: results/ or $MNISTDIFF_RESULTS_DIR)"
    )
    parser.add_argument("--incremental", action="store_true", help="rebuild only changed pages")
    parser.add_argument("--readme", action="store_true",
                        help="instead of building, regenerate the README's table of chapter times from the results")
    parser.add_argument(
        "--vendor", type=Path, metavar="NODE_MODULES", default=None,
        help="instead of building, copy MathJax and onnxruntime-web from NODE_MODULES (after `npm ci`) "
             "into book/_vendor",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mnistdiff.book [--book DIR] [--output DIR] [--results DIR]``: build the HTML book."""
    args = _parser().parse_args(argv)
    if args.readme:
        from mnistdiff.files import atomic_write_text

        from .results_pages import readme_with_course_times

        readme = REPO_ROOT / "README.md"
        results = args.results or default_results_dir(args.book)
        atomic_write_text(readme, readme_with_course_times(readme.read_text(encoding="utf-8"), results))
        print(f"[{PROG}] README's table of chapter times regenerated from {results}")
        return 0
    if args.vendor is not None:
        print(f"[{PROG}] vendored into {', '.join(str(p) for p in vendor_all(args.vendor))}")
        return 0
    try:
        build(args.book, args.output, args.results, fresh=not args.incremental)
    except (RuntimeError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0
