"""The repository root: one helper, with an environment override and a fallback outside a checkout."""

from __future__ import annotations

from pathlib import Path

from mnistdiff import paths


def test_root_of_this_checkout_holds_the_package_and_pyproject(monkeypatch):
    monkeypatch.delenv(paths.ROOT_ENV_VAR, raising=False)
    root = paths.repo_root()
    assert (root / "pyproject.toml").is_file() and (root / "mnistdiff" / "paths.py").is_file()


def test_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ROOT_ENV_VAR, str(tmp_path))
    assert paths.repo_root() == tmp_path.resolve()


def test_installed_outside_a_checkout_falls_back_to_the_working_directory(monkeypatch, tmp_path):
    """A package in site-packages has no pyproject.toml above it: the root is the current directory."""
    monkeypatch.delenv(paths.ROOT_ENV_VAR, raising=False)
    site = tmp_path / "site-packages" / "mnistdiff"
    site.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert paths.repo_root(site) == Path.cwd() == work
    (site.parent / "pyproject.toml").write_text("")  # a checkout after all
    assert paths.repo_root(site) == site.parent


def test_every_module_uses_the_one_helper():
    """No module computes the root from its own file any more."""
    package = Path(paths.__file__).parent
    offenders = [p.name for p in package.glob("*.py") if "parent.parent" in p.read_text()]
    assert offenders == []
