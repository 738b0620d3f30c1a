"""The course book's tooling (Jupyter Book 1.x): not part of the installed :mod:`mnistdiff` package.

It lives beside the book it builds, in ``book/_ext/``, which ``book/_config.yml`` puts on Sphinx's
``sys.path`` (``sphinx: local_extensions: {mnistdiff_book.sphinx_hooks: _ext}``). One idea a module:

* :mod:`.layout`: where the book, the repository and the results are; the chapter list;
* :mod:`.tables`: any JSON value as Markdown tables;
* :mod:`.results_pages`: the results page and the introduction's table of times per chapter;
* :mod:`.api_pages`: the API reference (one autodoc page per module of the package);
* :mod:`.widgets_strip`: ipywidget views and CDN links out of the notebooks, as Sphinx reads them;
* :mod:`.sphinx_hooks`: the Sphinx extension (``setup``) that writes the generated pages;
* :mod:`.build`: the build runner and its command line (``python -m mnistdiff.book``);
* :mod:`.vendor`: copying MathJax and onnxruntime-web into ``book/_vendor`` (maintainers only).

Importing this package imports none of them.
"""
