"""mnistdiff.files: the repository root (one helper, an environment override, a fallback outside a
checkout) and the one home of atomic writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mnistdiff import files

PACKAGE = Path(files.__file__).parent


def test_root_of_this_checkout_holds_the_package_and_pyproject(monkeypatch):
    monkeypatch.delenv(files.ROOT_ENV_VAR, raising=False)
    root = files.repo_root()
    assert (root / "pyproject.toml").is_file() and (root / "mnistdiff" / "files.py").is_file()


def test_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(files.ROOT_ENV_VAR, str(tmp_path))
    assert files.repo_root() == tmp_path.resolve()


def test_installed_outside_a_checkout_falls_back_to_the_working_directory(monkeypatch, tmp_path):
    """A package in site-packages has no pyproject.toml above it: the root is the current directory."""
    monkeypatch.delenv(files.ROOT_ENV_VAR, raising=False)
    site = tmp_path / "site-packages" / "mnistdiff"
    site.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert files.repo_root(site) == Path.cwd() == work
    (site.parent / "pyproject.toml").write_text("")  # a checkout after all
    assert files.repo_root(site) == site.parent


def test_every_module_uses_the_one_root_helper():
    """No module computes the root or the assets folder from its own file."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "files.py" and "__file__" in p.read_text()]
    assert offenders == []


def test_every_write_goes_through_the_one_atomic_helper():
    """Only files.py (and the two-file checkpoint commit) make temporary files and rename them. (A temporary folder
    that holds no result, such as the course runner's kernel sockets, is not a write.)"""
    pattern = re.compile(r"\bos\.replace\(|\btempfile\.(?!TemporaryDirectory\b)|\bmkstemp\(")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "files.py" and p.relative_to(PACKAGE).as_posix() != "training/checkpoints.py"
                 and pattern.search(p.read_text())]
    assert offenders == []


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "deep" / "a.txt"
    files.atomic_write_text(target, "one")
    files.atomic_write_bytes(target, b"two")
    assert target.read_text() == "two"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(files.FileWriteError, match=r"ran out of disk space .*previous a\.txt is intact"):
        files.atomic_write_text(target, "new")
    with pytest.raises(files.FileWriteError, match=r"previous b\.txt is intact|nothing was written"):
        files.atomic_copy(target, tmp_path / "b.txt")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_copy_copies(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)))
    files.atomic_copy(src, tmp_path / "out" / "dst.bin")
    assert (tmp_path / "out" / "dst.bin").read_bytes() == src.read_bytes()


def test_unwritable_folder_says_what_to_do(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(files.FileWriteError, match="choose a writable location"):
        files.atomic_write_text(blocker / "x.txt", "x")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_copy_that_fails_midway_leaves_no_temporary(tmp_path, monkeypatch):
    import shutil

    src, dest = tmp_path / "src.bin", tmp_path / "out" / "dst.bin"
    src.write_bytes(b"x" * 100)

    def half_copy(a, b):
        Path(b).write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", half_copy)
    with pytest.raises(files.FileWriteError, match="ran out of disk space"):
        files.atomic_copy(src, dest)
    assert list(dest.parent.iterdir()) == []


def test_resolve_device_defaults_to_the_default_device():
    import torch

    from mnistdiff.devices import default_device, resolve_device

    assert resolve_device(None) == default_device()
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("meta")).type == "meta"


def test_atomic_write_json_reads_back_with_json_and_keeps_unicode(tmp_path):
    import json

    target = tmp_path / "doc.json"
    doc = {"device": "CPU: Xeon", "σ": [1.5, None], "n": 2000}
    files.atomic_write_json(target, doc)
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == doc and "σ" in text and text.endswith("}\n") and "\n  " in text


def test_shown_path_is_relative_to_the_checkout_inside_it_and_as_given_outside(tmp_path, monkeypatch):
    """Messages name files as ``git checkout`` wants them: relative to the root ($MNISTDIFF_ROOT here) when inside
    it, even given relative to another folder or through ``..``; a path outside is returned as given."""
    root = tmp_path / "checkout"
    (root / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv(files.ROOT_ENV_VAR, str(root))
    assert files.shown_path(root / "checkpoints" / "vae.safetensors") == os.path.join("checkpoints", "vae.safetensors")
    monkeypatch.chdir(root / "checkpoints")
    assert files.shown_path(Path("..") / "checkpoints" / "x.pt") == os.path.join("checkpoints", "x.pt")
    outside = tmp_path / "elsewhere" / "x.pt"
    assert files.shown_path(outside) == str(outside)
