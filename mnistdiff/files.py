"""Files: where the repository is, and writes that leave nothing half-done.

The course writes next to the code (``checkpoints/``, ``results/``, ``book/``). In a git checkout
(an editable install) that is the folder above ``mnistdiff/``; a copy installed into
``site-packages`` has no such folder, so there the root is ``$MNISTDIFF_ROOT`` or else the current
working directory (:func:`repo_root`).

Every file the package writes (checkpoints, the classifier, results, sample folders, notebooks)
goes through :func:`atomic_write_bytes`: a temporary file in the same folder, fsynced, then
``os.replace``. An interrupted write, or a full disk, leaves the previous file intact and no
temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT_ENV_VAR",
    "PACKAGE_DIR",
    "ASSET_DIR",
    "FileWriteError",
    "repo_root",
    "shown_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_copy",
    "accepts_new_files",
]

ROOT_ENV_VAR = "MNISTDIFF_ROOT"
#: The folder of the installed package, and its shipped data (MNIST, the evaluation classifier).
PACKAGE_DIR = Path(__file__).resolve().parent
ASSET_DIR = PACKAGE_DIR / "assets"


class FileWriteError(RuntimeError):
    """A write that failed (a full disk, a read-only folder); the message says what is left and what to do."""


def repo_root(package_dir: Path | None = None) -> Path:
    """``$MNISTDIFF_ROOT`` if set; else the checkout holding the package (the parent of ``mnistdiff/``
    when it has a ``pyproject.toml``); else the current working directory."""
    env = os.environ.get(ROOT_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    parent = (package_dir or PACKAGE_DIR).parent
    if (parent / "pyproject.toml").is_file():
        return parent
    return Path.cwd()


def shown_path(path: str | Path) -> str:
    """``path`` relative to :func:`repo_root` where it lies inside it (what messages, notebooks and ``git checkout``
    want), else as given."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def unlink_quiet(path: str | Path | None) -> None:
    """Remove ``path`` if it exists; never raise."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary file next to ``path`` (fsynced); return its name. Cleans up on error."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quiet(tmp)
        raise
    return tmp


def write_error(path: Path, err: OSError, cls: type[RuntimeError] = FileWriteError) -> RuntimeError:
    """An error of type ``cls`` for a failed write of ``path``, saying what is left and what to do."""
    if path.exists():
        left = f"the previous {path.name} is intact (it still loads) and no temporary file was left behind"
    else:
        left = f"nothing was written ({path.name} did not exist before) and no temporary file was left behind"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return cls(
            f"ran out of disk space while writing {path}; {left}. Free some space and run again "
            "(training runs continue with --resume)."
        )
    return cls(f"could not write {path} ({err.strerror or err}); {left}. Check the folder and run again.")


def ensure_folder(path: Path, cls: type[RuntimeError] = FileWriteError) -> None:
    """Create the folder of ``path``, or raise ``cls`` saying to choose a writable location."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cls(f"cannot create the folder {path.parent} for {path.name} ({err.strerror or err}): "
                  "choose a writable location") from err


def _replace_atomically(dest: Path, write: Callable[[Path], str]) -> None:
    """``write(dest)`` makes a complete temporary file next to ``dest`` and returns its name; rename it
    onto ``dest``. On any error the temporary file is removed and ``dest`` keeps its old content."""
    ensure_folder(dest)
    tmp = None
    try:
        tmp = write(dest)
        os.replace(tmp, dest)
    except BaseException as err:
        unlink_quiet(tmp)
        if isinstance(err, OSError):
            raise write_error(dest, err) from err
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, then ``os.replace``.

    On any error (a full disk included) the temporary file is removed and ``path`` keeps its old
    content; an ``OSError`` is raised as a :class:`FileWriteError` that says so.
    """
    _replace_atomically(Path(path), lambda dest: write_temp(dest, data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, doc: Any) -> None:
    """:func:`atomic_write_text` of ``doc`` as indented JSON (UTF-8 kept as written), ending in a newline."""
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def atomic_copy(src: str | Path, dest: str | Path) -> None:
    """Copy ``src`` to ``dest`` via a temporary file next to ``dest``, then ``os.replace``."""

    def copy(target: Path) -> str:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src, tmp)
        except BaseException:
            unlink_quiet(tmp)  # a half-written copy
            raise
        return str(tmp)

    _replace_atomically(Path(dest), copy)


def accepts_new_files(path: str | Path) -> tuple[bool, Path]:
    """Whether the folder ``path`` (or, where it does not exist yet, its nearest existing parent) accepts new
    files: tried by making and removing a temporary folder there, so nothing is left behind. Returns the answer
    and the folder that was tried."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            return False, probe
        os.rmdir(tempfile.mkdtemp(prefix=".mnistdiff-probe-", dir=probe))
    except OSError:
        return False, probe
    return True, probe
