"""``python -m mnistdiff.book``: build the course book (``book/_build/html/index.html``).

The book's tooling is not part of this package: it lives beside the book, in
``book/_ext/mnistdiff_book/`` (results and API pages, widget stripping, the Sphinx extension, the
build runner). This entry point puts that folder on ``sys.path`` and runs its command line;
``python -m mnistdiff.book --help`` lists the options.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Sequence

from mnistdiff.files import repo_root

__all__ = ["EXT_DIR", "extension", "main"]

#: The book's tooling: the package ``mnistdiff_book`` in the checkout's ``book/_ext``.
EXT_DIR = repo_root() / "book" / "_ext"


def extension(module: str) -> ModuleType:
    """A module of the book's tooling, ``book/_ext/mnistdiff_book/<module>.py``, imported."""
    if not (EXT_DIR / "mnistdiff_book").is_dir():
        raise ModuleNotFoundError(
            f"the book's tooling is not at {EXT_DIR / 'mnistdiff_book'}: build the book from a git checkout "
            "(or set $MNISTDIFF_ROOT to one)"
        )
    if str(EXT_DIR) not in sys.path:
        sys.path.insert(0, str(EXT_DIR))
    return importlib.import_module(f"mnistdiff_book.{module}")


def main(argv: Sequence[str] | None = None) -> int:
    """Build the book: ``book/_ext/mnistdiff_book/build.py``'s command line."""
    return extension("build").main(argv)


if __name__ == "__main__":
    sys.exit(main())
