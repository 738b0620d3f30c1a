"""The course's chapters, in reading order: the one list the runner, the book and the tests use."""

from __future__ import annotations

__all__ = ["CHAPTERS", "OPENER", "LESSONS", "chapter_name"]

#: The one-page opener: the whole idea on 2-D points, in seconds, with no exercises and no profile.
OPENER = "00_the_idea"

#: ``notebooks/<name>.ipynb`` (paired with ``<name>.py``) and ``book/chapters/<name>.ipynb``.
CHAPTERS: tuple[str, ...] = (
    OPENER,
    "01_unet",
    "02_ddpm",
    "03_ddim",
    "04_vae",
    "05_latent_diffusion",
    "06_umap_evaluation",
    "07_guidance",
    "08_flow_matching",
    "09_fast_sampling",
)

#: The chapters after the opener: each has exercises and a note on what the smoke profile changes.
LESSONS: tuple[str, ...] = tuple(c for c in CHAPTERS if c != OPENER)


def chapter_name(name: str) -> str:
    """``"2"``, ``"02"``, ``"02_ddpm"`` or ``"02_ddpm.ipynb"`` → ``"02_ddpm"``; a clear error otherwise."""
    for chapter in CHAPTERS:
        if name in (chapter, chapter[:2], chapter[:2].lstrip("0") or "0", f"{chapter}.ipynb", f"{chapter}.py"):
            return chapter
    raise ValueError(f"unknown chapter {name!r}; choose from {', '.join(CHAPTERS)}")
