"""Widget views and CDN links out of the notebooks, as Sphinx reads them.

A widget view needs a live kernel, or its saved state plus JavaScript from a CDN, so in a static,
offline book it is blank; the notebooks show a static fallback (an image or an HTML animation) in
the same cell, which the book keeps. Where the book's live generator shows the same thing as a
cell's widget, the cell says so in its metadata (``{"mnistdiff": {"generator": {"model": "teacher"}}}``,
in the paired script ``# %% mnistdiff={"generator": {...}}``), and the book shows the generator,
its controls preset from it, in place of the cell's outputs. The stored notebooks are not changed:
only what Sphinx reads.
"""

from __future__ import annotations

import html
import json
import re

__all__ = [
    "WIDGET_VIEW",
    "WIDGET_STATE",
    "FALLBACK_MIMES",
    "strip_widget_outputs",
    "GENERATOR_PRESETS",
    "live_generator_outputs",
    "offline_html_outputs",
    "clean_notebook_source",
]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
FALLBACK_MIMES = ("text/html", "image/png", "image/jpeg", "image/svg+xml", "image/gif", "text/markdown")

# The text/plain of a widget is its Python repr, ``IntSlider(value=0, max=7)`` or
# ``interactive(children=(...))``; a tqdm bar's is the bar itself (``100%|####| 10/10 [...]``).
_WIDGET_REPR = re.compile(r"^\s*[A-Za-z_][\w.]*\(.*\)\s*$", re.S)

_WIDGET_NOTE = {
    "output_type": "display_data",
    "metadata": {},
    "data": {
        "text/markdown": "*(An interactive widget is here: run the notebook to use it.)*",
        "text/plain": "(interactive widget)",
    },
}

# matplotlib's HTML animations (``FuncAnimation.to_jshtml()``) link Font Awesome 4's style sheet
# from a CDN for their buttons' icons. Offline that link fails; the book theme already ships
# Font Awesome (as JavaScript that also knows the old ``fa fa-play`` names), so the link is dropped.
_CDN_FONT_AWESOME = re.compile(r"<link\b[^>]*href=[\"']https?://[^\"']*font-awesome[^\"']*[\"'][^>]*>\s*", re.I)


def _text(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _has_fallback(outputs: list[dict]) -> bool:
    """Whether a cell has a rich output that is not a widget view (an image, HTML, an animation)."""
    return any(
        any(m in out.get("data", {}) for m in FALLBACK_MIMES) and WIDGET_VIEW not in out.get("data", {})
        for out in outputs
    )


def _replace_view(out: dict, cell_has_fallback: bool) -> dict | None:
    """What stays of one widget-view output: its own fallback, its text, a note, or nothing."""
    data = out.get("data", {})
    other = {k: v for k, v in data.items() if k not in (WIDGET_VIEW, "text/plain")}
    text = _text(data.get("text/plain", ""))
    if other:  # the same output carries a fallback: keep that
        return {**out, "data": other}
    if cell_has_fallback:
        return None
    if text.strip() and not _WIDGET_REPR.match(text):
        # a progress bar (tqdm) or another widget whose text says what it showed
        return {**out, "data": {"text/plain": text}}
    return json.loads(json.dumps(_WIDGET_NOTE))


def strip_widget_outputs(nb: dict) -> int:
    """Remove ipywidget views from a notebook (nbformat 4 dict, changed in place); return how many.

    Where the cell has another rich output (an image, HTML, an animation) the view is dropped;
    where it has none, its text is kept if it is more than the widget's Python repr (a tqdm
    progress bar), else the view is replaced by a short note. The notebook's saved widget state
    is removed too, so no page loads widget JavaScript.
    """
    removed = 0
    for cell in nb.get("cells", []):
        outputs = cell.get("outputs")
        if cell.get("cell_type") != "code" or not outputs:
            continue
        fallback = _has_fallback(outputs)
        kept = []
        for out in outputs:
            if WIDGET_VIEW not in out.get("data", {}):
                kept.append(out)
                continue
            removed += 1
            replacement = _replace_view(out, fallback)
            if replacement is not None:
                kept.append(replacement)
        cell["outputs"] = kept
    nb.get("metadata", {}).pop("widgets", None)
    return removed


#: What a cell may preset on the live generator (book/_assets/generator/generator.js reads them as
#: ``data-*`` attributes): the model, the steps, the guidance weight, the digit.
GENERATOR_PRESETS = ("model", "steps", "guidance", "digit")


def _generator_div(preset: object, where: str) -> dict:
    """The live generator's element with ``preset``'s controls, as a display output; a preset that
    is not a dict of the known names to strings or numbers stops the build with what to fix."""
    if not isinstance(preset, dict) or not set(preset) <= set(GENERATOR_PRESETS) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in preset.values()):
        raise ValueError(f"{where}: the cell's mnistdiff.generator metadata must map some of "
                         f"{', '.join(GENERATOR_PRESETS)} to a string or a number, got {preset!r}")
    attributes = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in preset.items())
    element = f'<div class="mnistdiff-generator"{attributes}></div>'
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": element}}


def live_generator_outputs(nb: dict) -> int:
    """Replace the outputs of each code cell whose metadata names a live generator preset
    (``mnistdiff.generator``) by that generator (changed in place); return how many cells."""
    replaced = 0
    for i, cell in enumerate(nb.get("cells", [])):
        preset = cell.get("metadata", {}).get("mnistdiff", {}).get("generator")
        if cell.get("cell_type") != "code" or preset is None:
            continue
        cell["outputs"] = [_generator_div(preset, f"cell {i}")]
        replaced += 1
    return replaced


def offline_html_outputs(nb: dict) -> int:
    """Drop CDN style-sheet links that offline pages cannot load from HTML outputs; return how many."""
    dropped = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            data = out.get("data", {})
            if "text/html" not in data:
                continue
            cleaned, n = _CDN_FONT_AWESOME.subn("", _text(data["text/html"]))
            if n:
                data["text/html"] = cleaned
                dropped += n
    return dropped


def clean_notebook_source(text: str) -> str | None:
    """The notebook JSON ``text`` with its live generators in place of the outputs they replace, and without widget
    views, widget state and CDN links; None if unchanged.

    Text that is not a notebook is left to myst-nb, which reports an unreadable notebook itself.
    """
    try:
        nb = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(nb, dict):
        return None
    had_state = "widgets" in nb.get("metadata", {})
    if live_generator_outputs(nb) + strip_widget_outputs(nb) + offline_html_outputs(nb) or had_state:
        return json.dumps(nb, ensure_ascii=False)
    return None
