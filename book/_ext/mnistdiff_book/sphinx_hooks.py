"""The Sphinx extension (``book/_config.yml``: ``local_extensions``): generated pages, clean notebooks.

Before the table of contents is read it writes, into the book's folder:

* ``results.md``: every JSON file under ``results/<profile>/`` as tables (:mod:`.results_pages`);
* ``_generated/course_times.md``: the time per chapter and profile, included by the introduction;
* ``api/``: one autodoc page per module of the package (:mod:`.api_pages`), and
  ``_generated/_toc.yml``: ``_toc.yml`` with the API pages listed in reading order.

It also sets the MyST substitutions the introduction quotes (``{{ book_train_minutes }}``, from the
committed book models' own files: :func:`substitutions`). So a plain ``jupyter-book build book``
regenerates them too. As Sphinx reads each notebook it
removes the widget views that a static book cannot show (:mod:`.widgets_strip`) and puts under each chapter's title
how long the course command took to execute it, on which CPU and when (``course_times.json``), and it adds the live
generator's script to the pages that place one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .api_pages import api_modules, api_pages, expand_api_toc, package_modules
from .layout import BOOK_DIR, GENERATED_NOTE, default_results_dir, write_if_changed
from .results_pages import chapter_run_time, course_times_markdown, results_markdown
from .widgets_strip import clean_notebook_source

__all__ = ["write_generated", "setup"]


def write_generated(
    book_dir: Path = BOOK_DIR, results_dir: Path | None = None, modules: Sequence[str] | None = None
) -> list[Path]:
    """Write the results page, the course-times table and the API pages into ``book_dir``.

    ``modules``: the package's modules as found (default: walk the package now). Returns the files
    written or kept; stale API pages (modules no longer in the package) are removed.
    """
    book_dir = Path(book_dir)
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir(book_dir)
    files = {
        "results.md": results_markdown(results_dir),
        "_generated/course_times.md": GENERATED_NOTE + "\n\n" + course_times_markdown(results_dir, book_dir=book_dir),
    }
    files.update(api_pages(modules))
    api_dir = book_dir / "api"
    if api_dir.is_dir():
        for old in api_dir.glob("*.rst"):
            if f"api/{old.name}" not in files:
                old.unlink()
    for rel, text in files.items():
        write_if_changed(book_dir / rel, text)
    return [book_dir / rel for rel in files]


def substitutions(checkpoints: Path | None = None) -> dict[str, str]:
    """Numbers the book's Markdown pages quote, generated: ``book_train_minutes``, the minutes the committed
    ``checkpoints/book/*.safetensors`` models took to train together (each file records its own seconds)."""
    from mnistdiff.modelfile import SUFFIX, read_model_meta

    folder = Path(checkpoints) if checkpoints is not None else BOOK_DIR.parent / "checkpoints" / "book"
    seconds = [read_model_meta(path).get("seconds") for path in sorted(folder.glob(f"*{SUFFIX}"))]
    known = [float(s) for s in seconds if isinstance(s, (int, float))]
    minutes = f"{sum(known) / 60:.0f}" if known and len(known) == len(seconds) else "(not recorded)"
    return {"book_train_minutes": minutes}


def _on_config_inited(app: Any, config: Any) -> None:
    config.myst_substitutions = {**(config.myst_substitutions or {}), **substitutions()}
    book_dir = Path(app.srcdir)
    results_dir = config.mnistdiff_results_dir or None
    modules = package_modules()  # once: the pages and the table of contents list the same modules
    write_generated(book_dir, Path(results_dir) if results_dir else None, modules)
    toc_path = Path(config.external_toc_path or "_toc.yml")
    toc_path = toc_path if toc_path.is_absolute() else book_dir / toc_path
    if toc_path.is_file():
        expanded = expand_api_toc(toc_path.read_text(encoding="utf-8"), api_modules(modules))
        if expanded is not None:
            generated = book_dir / "_generated" / "_toc.yml"
            write_if_changed(generated, expanded)
            config.external_toc_path = str(generated)


def _on_source_read(app: Any, docname: str, source: list[str]) -> None:
    if str(app.env.doc2path(docname)).endswith(".ipynb"):
        cleaned = clean_notebook_source(source[0])
        if cleaned is not None:
            source[0] = cleaned
        results_dir = app.config.mnistdiff_results_dir or default_results_dir(Path(app.srcdir))
        line = chapter_run_time(Path(results_dir), Path(docname).name) if docname.startswith("chapters/") else None
        if line:
            source[0] = _with_line_after_title(source[0], line)


def _with_line_after_title(text: str, line: str) -> str:
    """The notebook JSON ``text`` with a Markdown cell holding ``line`` after its first cell (the title); ``text``
    unchanged if it is not a notebook (myst-nb reports that itself)."""
    try:
        nb = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text
    if not isinstance(nb, dict) or not nb.get("cells"):
        return text
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": line})
    return json.dumps(nb, ensure_ascii=False)


#: The live generator's script (book/_assets, copied to _static/), added to the pages that place one.
GENERATOR_JS = "generator/generator.js"
GENERATOR_MARK = 'class="mnistdiff-generator"'


def _on_html_page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if GENERATOR_MARK in context.get("body", ""):
        app.add_js_file(GENERATOR_JS)  # called here, it goes on this page only
    # sphinx-thebe (loaded by Jupyter Book even with thebe off) registers its inline
    # configuration script twice, which throws "THEBE_JS_URL has already been declared" on
    # every page; keep each script once.
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = json.dumps(getattr(script, "attributes", {}), sort_keys=True, default=str)
        key = (str(getattr(script, "filename", script) or ""), attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: extensions that run later (MathJax) append to this same list


def setup(app: Any) -> dict[str, Any]:
    """Sphinx extension: generate the results/API pages before the table of contents is read."""
    app.add_config_value("mnistdiff_results_dir", "", "env")
    app.connect("config-inited", _on_config_inited, priority=400)  # before sphinx_external_toc (900)
    app.connect("source-read", _on_source_read)
    app.connect("html-page-context", _on_html_page_context, priority=100)  # before handlers that return a template
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
