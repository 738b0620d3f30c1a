"""Every notebook is paired with a py:percent script, and the two have not drifted apart."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

from mnistdiff.course.chapters import CHAPTERS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_every_chapter_has_its_pair() -> None:
    missing = [c for c in CHAPTERS if not (NOTEBOOKS / f"{c}.ipynb").is_file() or not (NOTEBOOKS / f"{c}.py").is_file()]
    assert not missing, f"chapters without an .ipynb/.py pair: {missing}"


def test_jupytext_pairing_config() -> None:
    config = (NOTEBOOKS / "jupytext.toml").read_text()
    assert "ipynb,py:percent" in config


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_pair_has_not_drifted(chapter: str) -> None:
    """The .py must equal what jupytext writes from the .ipynb (run `jupytext --sync notebooks/*.ipynb` to fix)."""
    nb = jupytext.read(NOTEBOOKS / f"{chapter}.ipynb")
    expected = jupytext.writes(nb, fmt="py:percent")
    actual = (NOTEBOOKS / f"{chapter}.py").read_text()
    assert actual == expected, (
        f"notebooks/{chapter}.ipynb and .py have drifted apart: run `jupytext --sync notebooks/{chapter}.ipynb`"
    )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_notebook_has_stored_outputs(chapter: str) -> None:
    """nbval compares against stored outputs, so the committed notebook must have been executed."""
    nb = jupytext.read(NOTEBOOKS / f"{chapter}.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert any(c.get("outputs") for c in code), (
        f"{chapter}.ipynb has no stored outputs: run the course command with --inplace"
    )
