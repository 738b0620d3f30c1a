"""Exercises and their solutions: every exercise has a solution; code solutions are tagged so that the
book collapses them (``hide-cell``) and nbval runs them like any other cell.

An exercise is a MyST admonition ``:::{admonition} Exercise N.k (kind): title`` with ``:class: tip`` in a
markdown cell; its prose solution is ``:::{admonition} Solution N.k`` with ``:class: dropdown``
(collapsed in the book), and a code solution is the next code cell, tagged ``solution`` and
``hide-cell``, whose first line is ``# Solution N.k: …``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jupytext
import pytest

from mnistdiff.course.chapters import CHAPTERS, LESSONS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KINDS = "derivation|a change to the code|an experiment"
EXERCISE = re.compile(rf":::\{{admonition\}} Exercise (\d+)\.(\d+) \(({KINDS})\): \S")
SOLUTION = re.compile(r":::\{admonition\} Solution (\d+)\.(\d+)\n:class: dropdown\n")


BOOK = NOTEBOOKS.parent / "book"
SMOKE_NOTE = ":::{admonition} The smoke profile\n:class: note\n"


@functools.cache
def _cells(chapter: str) -> list:
    return jupytext.read(NOTEBOOKS / f"{chapter}.py").cells


def _markdown(chapter: str) -> str:
    return "\n".join(c.source for c in _cells(chapter) if c.cell_type == "markdown")


def _exercises(chapter: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[dict]]:
    exercises, prose, code = [], [], []
    for cell in _cells(chapter):
        if cell.cell_type == "markdown":
            exercises += [(int(a), int(b)) for a, b, _ in EXERCISE.findall(cell.source)]
            prose += [(int(a), int(b)) for a, b in SOLUTION.findall(cell.source)]
        elif "solution" in cell.metadata.get("tags", []):
            code.append(cell)
    return exercises, prose, code


@pytest.mark.parametrize("chapter", LESSONS)
def test_every_exercise_has_a_collapsed_solution(chapter):
    exercises, prose, code = _exercises(chapter)
    number = int(chapter[:2])
    assert [e for e in exercises if e[0] != number] == [], f"{chapter}: exercises are numbered {number}.k"
    assert [k for _, k in exercises] == list(range(1, len(exercises) + 1)), f"{chapter}: not numbered 1, 2, …"
    assert sorted(prose) == sorted(exercises), f"{chapter}: an exercise without its Solution dropdown"
    for cell in code:
        assert "hide-cell" in cell.metadata["tags"], f"{chapter}: a solution cell the book would show open"
        m = re.match(r"# Solution (\d+)\.(\d+):", cell.source)
        assert m and (int(m[1]), int(m[2])) in exercises, f"{chapter}: solution cell names no exercise"


@pytest.mark.parametrize("chapter", LESSONS)
def test_every_chapter_has_three_to_five_exercises_of_mixed_kinds(chapter):
    exercises, _, _ = _exercises(chapter)
    assert 3 <= len(exercises) <= 5, f"{chapter} has {len(exercises)} exercises"
    kinds = set(re.findall(rf"Exercise \d+\.\d+ \(({KINDS})\)", _markdown(chapter)))
    assert len(kinds) >= 2, f"{chapter}: all exercises are of one kind ({kinds})"


def test_the_check_finds_exercises_and_can_fail():
    """Chapter 1 has exercises, and a solution without its tag is caught."""
    exercises, prose, code = _exercises("01_unet")
    assert len(exercises) >= 3 and len(code) >= 1
    assert EXERCISE.search(":::{admonition} Exercise 1.9 (derivation): x") and not SOLUTION.search(
        ":::{admonition} Solution 1.9\n:class: tip\n")



@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_links_the_notation_page(chapter):
    """One notation, stated once in book/notation.md (in the table of contents), linked from every chapter."""
    assert (BOOK / "notation.md").is_file() and "file: notation" in (BOOK / "_toc.yml").read_text()
    assert "](../notation.md)" in _markdown(chapter), f"{chapter} does not link ../notation.md"


@pytest.mark.parametrize("chapter", LESSONS)
def test_smoke_caveats_gather_in_one_admonition(chapter):
    """Each chapter states what the smoke profile changes once, in one note near its top."""
    text = _markdown(chapter)
    assert text.count(SMOKE_NOTE) == 1, f"{chapter}: expected one '{SMOKE_NOTE.splitlines()[0]}' note"
    assert text.index(SMOKE_NOTE) < text.index("\n## "), f"{chapter}: the smoke note belongs before the first section"
