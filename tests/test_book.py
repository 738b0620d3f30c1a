"""The published book (issues 4 and 11): builds offline with warnings as errors, and reads right.

The first tests check the pieces of the book's tooling (``book/_ext/mnistdiff_book``, outside the
installed package) on small inputs, and the book's settings (one repository URL, launch buttons).
The rest build the book from a temporary copy of ``book/`` (with the repository's ``results/``)
exactly as the README command does, check its HTML (pages, links, launch buttons, no widget views)
and open pages in headless Chromium from ``file://`` with no network: math is typeset by the
vendored MathJax (its fonts load) and every image loads. A screenshot of a chapter is kept under
``artifacts/book/``.

Chromium is found on PATH (``chromium``, ``chromium-browser``, ``google-chrome``) or at
``$CHROMIUM``, and driven over the DevTools protocol on a pipe. Without it the browser tests skip
with one line saying how to install it; under ``CI=true`` they fail instead (CI installs Debian's
``chromium``).
"""

from __future__ import annotations

import ast
import base64
import fcntl
import functools
import http.server
import json
import os
import pkgutil
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from mnistdiff.book import extension
from mnistdiff.course.chapters import CHAPTERS, LESSONS
from mnistdiff.devices import cpu_name

# The book's tooling lives in book/_ext/mnistdiff_book (not in the installed package).
T = extension("tables")
R = extension("results_pages")
W = extension("widgets_strip")
A = extension("api_pages")
build_command = extension("build").build_command

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
RESULTS = REPO / "results"
ARTIFACTS = REPO / "artifacts" / "book"


# ------------------------------------------------------------------------------------------
# Pieces: tables from JSON, timings, widgets, the API list, MathJax
# ------------------------------------------------------------------------------------------


def test_list_of_flat_dicts_is_one_table_with_columns():
    md = T.render_json([{"steps": 10, "fid": 5.123456}, {"steps": 20, "fid": 3.0, "seconds": 2}])
    lines = md.strip().splitlines()
    assert lines[0] == "| steps | fid | seconds |"
    assert lines[2] == "| 10 | 5.123 | — |"
    assert lines[3] == "| 20 | 3 | 2 |"


def test_flat_dict_is_a_key_value_table():
    md = T.render_json({"fid": 1.5, "device": "cuda", "ok": True}, "eval")
    assert md.startswith("#### eval\n")
    assert "| key | value |" in md and "| fid | 1.5 |" in md and "| device | cuda |" in md and "| ok | yes |" in md


def test_nested_dict_is_one_row_per_name():
    md = T.render_json({"ddpm": {"fid": 1.0, "kid": 0.001}, "ldm": {"fid": 2.0, "recall": 0.5}})
    lines = md.strip().splitlines()
    assert lines[0] == "| name | fid | kid | recall |"
    assert lines[2] == "| ddpm | 1 | 0.001 | — |"
    assert lines[3] == "| ldm | 2 | — | 0.5 |"


def test_mixed_dict_gets_scalars_then_each_container():
    data = {"profile": "full", "device": "H100", "notebooks": {"01_unet": 12.0}, "sweep": [{"steps": 5, "fid": 9}]}
    md = T.render_json(data, "f")
    assert "| profile | full |" in md and "| 01_unet | 12 |" in md and "| steps | fid |" in md
    assert "f › notebooks" in md and "f › sweep" in md
    assert md.index("| profile | full |") < md.index("f › notebooks")


def test_long_lists_are_summarised():
    md = T.render_json({"loss": [float(i) for i in range(100, 0, -1)], "lr": 0.001}, "train")
    assert "100 values: 100, 99, …, 1 (min 1, max 100)" in md
    assert md.count("\n|") < 10


def test_values_are_formatted_and_escaped():
    assert T.cell_text(123456.7) == "123457"
    assert T.cell_text(0.000123456) == "0.0001235"
    assert T.cell_text(None) == "—"
    assert T.cell_text("a|b") == "a\\|b"


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_results_page_shows_profiles_devices_and_every_number(tmp_path):
    smoke = {"profile": "smoke", "device": "cpu", "notebooks": {"01_unet": 3.5}}
    _write(tmp_path / "smoke" / "course_times.json", smoke)
    _write(tmp_path / "full" / "evaluation.json", {"device": "NVIDIA H100", "ddpm": {"fid": 1.25}, "ldm": {"fid": 2.5}})
    md = R.results_markdown(tmp_path)
    assert md.index("Profile `full`") < md.index("Profile `smoke`")  # full first
    assert "| full | NVIDIA H100 |" in md and "| smoke | cpu |" in md
    # the one table with every number: one column per profile
    assert "| file | result | full | smoke |" in md
    assert "| evaluation | ddpm › fid | 1.25 | — |" in md
    assert "| course_times | notebooks › 01_unet | — | 3.5 |" in md
    assert "`results/full/evaluation.json`" in md and "`results/smoke/course_times.json`" in md


def test_results_page_without_results_says_so(tmp_path):
    assert "No results have been recorded yet" in R.results_markdown(tmp_path / "nothing")


def test_results_page_refuses_invalid_json(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        R.results_markdown(tmp_path)


def test_course_times_table(tmp_path):
    full = {"profile": "full", "device": "H100", "notebooks": {"01_unet": 30, "02_ddpm": 754.4}, "total_of": "one run"}
    _write(tmp_path / "full" / "course_times.json", full)
    smoke = {"profile": "smoke", "device": "cpu", "notebooks": {"01_unet": 4.2}}
    _write(tmp_path / "smoke" / "course_times.json", smoke)
    md = R.course_times_markdown(tmp_path)
    assert "| chapter | full (H100) | smoke (cpu) |" in md
    assert "| `01_unet` | 30 s | 4.2 s |" in md
    assert "| `02_ddpm` | 12 min 34 s | — |" in md
    assert "| **total** | 13 min 04 s (one run) | 4.2 s (runs not recorded) |" in md
    assert "No timings" in R.course_times_markdown(tmp_path / "none")


def test_chapter_run_time_line(tmp_path):
    times = {"profile": "book", "device": "CPU: B", "notebooks": {"02_ddpm": 203.6, "06_umap_evaluation": 811.3},
             "devices": {"02_ddpm": "CPU: A, 2 threads"}, "executed": {"02_ddpm": "2026-12-03T15:43:49"}}
    _write(tmp_path / "book" / "course_times.json", times)
    assert R.chapter_run_time(tmp_path, "02_ddpm") == (
        "*This page is the chapter as the course command executed it with the `book` profile on 2026-12-03: "
        "3 min 24 s on CPU: A, 2 threads.*")
    assert R.chapter_run_time(tmp_path, "06_umap_evaluation").endswith(": 13 min 31 s on CPU: B.*")  # no date kept
    assert R.chapter_run_time(tmp_path, "07_guidance") is None  # not recorded: no line, never a guess
    assert R.chapter_run_time(tmp_path / "none", "02_ddpm") is None


def _widget_nb(with_fallback: bool) -> dict:
    outputs = [
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {W.WIDGET_VIEW: {"model_id": "x"}, "text/plain": "IntSlider()"},
        }
    ]
    if with_fallback:
        figure = {"image/png": "iVBOR", "text/plain": "<Figure>"}
        outputs.append({"output_type": "display_data", "metadata": {}, "data": figure})
    return {
        "cells": [{"cell_type": "code", "source": "w", "metadata": {}, "outputs": outputs, "execution_count": 1}],
        "metadata": {"widgets": {W.WIDGET_STATE: {"state": {}}}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_widget_view_is_dropped_when_the_cell_has_a_static_fallback():
    nb = _widget_nb(with_fallback=True)
    assert W.strip_widget_outputs(nb) == 1
    outs = nb["cells"][0]["outputs"]
    assert [list(o["data"]) for o in outs] == [["image/png", "text/plain"]]
    assert "widgets" not in nb["metadata"]


def test_widget_view_without_fallback_becomes_a_note():
    nb = _widget_nb(with_fallback=False)
    assert W.strip_widget_outputs(nb) == 1
    (out,) = nb["cells"][0]["outputs"]
    assert W.WIDGET_VIEW not in out["data"] and "interactive widget" in out["data"]["text/markdown"]


def test_progress_bar_widget_keeps_its_text():
    nb = _widget_nb(with_fallback=False)
    bar = "100%|##########| 10/10 [00:01<00:00,  9.5it/s]"
    nb["cells"][0]["outputs"][0]["data"]["text/plain"] = bar
    W.strip_widget_outputs(nb)
    assert nb["cells"][0]["outputs"][0]["data"] == {"text/plain": bar}


def test_a_cell_that_names_a_live_generator_shows_it_in_place_of_its_outputs():
    nb = _widget_nb(with_fallback=True)
    nb["cells"][0]["metadata"] = {"mnistdiff": {"generator": {"model": "teacher", "steps": 16, "digit": "3"}}}
    plain = _widget_nb(with_fallback=True)["cells"][0]
    nb["cells"].append(plain)
    assert W.live_generator_outputs(nb) == 1
    (out,) = nb["cells"][0]["outputs"]
    assert out["data"] == {"text/html": '<div class="mnistdiff-generator" data-model="teacher" data-steps="16" '
                                        'data-digit="3"></div>'}
    assert len(nb["cells"][1]["outputs"]) == 2  # a cell without the metadata keeps its outputs
    fresh = _widget_nb(with_fallback=True)  # what Sphinx reads: the widget and its figure, not yet replaced
    fresh["cells"][0]["metadata"] = nb["cells"][0]["metadata"]
    cleaned = json.loads(W.clean_notebook_source(json.dumps(fresh)))
    assert cleaned["cells"][0]["outputs"] == [out]


@pytest.mark.parametrize("preset", [{"modle": "teacher"}, "teacher", {"steps": [4, 8]}, {"digit": True}])
def test_a_live_generator_preset_that_the_page_cannot_read_stops_the_build(preset):
    nb = _widget_nb(with_fallback=False)
    nb["cells"][0]["metadata"] = {"mnistdiff": {"generator": preset}}
    with pytest.raises(ValueError, match="model, steps, guidance, digit"):
        W.live_generator_outputs(nb)


def test_cdn_font_awesome_link_of_html_animations_is_dropped():
    html_out = '<link rel="stylesheet"\nhref="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css">\n<div>frames</div>'
    output = {"output_type": "display_data", "data": {"text/html": [html_out]}}
    nb = {"cells": [{"cell_type": "code", "outputs": [output]}]}
    assert W.offline_html_outputs(nb) == 1
    assert nb["cells"][0]["outputs"][0]["data"]["text/html"] == "<div>frames</div>"


def _modules_on_disk() -> set[str]:
    """Every public module of the package, found two ways: ``pkgutil.walk_packages`` (regular
    packages) and the ``.py`` files on disk (subfolders without ``__init__.py`` are namespace
    packages, which ``walk_packages`` skips)."""
    import mnistdiff

    walked = {m.name.removeprefix("mnistdiff.") for m in pkgutil.walk_packages(mnistdiff.__path__, "mnistdiff.")}
    package = REPO / "mnistdiff"
    files = {
        ".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts and "assets" not in p.parts
    }
    return {m for m in walked | files if not any(part.startswith("_") for part in m.split("."))}


def test_api_reference_documents_every_module_of_the_package_and_its_subpackages():
    modules = _modules_on_disk()
    assert {"config", "training.loop", "evaluation.metrics", "course.chapters"} <= modules  # subpackages walked
    assert set(A.package_modules()) == modules
    undocumented = sorted(modules - set(A.API_MODULES))
    assert not undocumented, f"not in the API reference: {undocumented}"
    assert len(set(A.API_MODULES)) == len(A.API_MODULES)
    named = [m for _, _, names in A.API_GROUPS for m in names]
    stale = sorted(set(named) - modules)
    assert not stale, f"book/_ext/mnistdiff_book/api_pages.py API_GROUPS names modules that do not exist: {stale}"


def test_a_new_module_joins_its_subpackage_group():
    found = [*A.package_modules(), "training.precision", "course.generators", "extra", "newpkg", "newpkg.tool"]
    groups = {key: names for key, _, names in A.api_groups(found)}
    assert "training.precision" in groups["training"]
    assert "course.generators" in groups["course"] and "extra" in groups[""]
    assert groups["newpkg"] == ["newpkg", "newpkg.tool"]
    order = A.api_modules(found)
    assert len(order) == len(set(order)) and set(order) >= set(found)
    assert order[: len(A.API_GROUPS[0][2])] == A.API_GROUPS[0][2]  # the reading order comes first


def test_api_pages_grouped_in_reading_order_and_toc_expanded():
    pages = A.api_pages()
    present = list(A.API_MODULES)
    index = pages["api/index.rst"]
    positions = [index.index(f"   mnistdiff.{m}\n") for m in present]
    assert positions == sorted(positions)
    headings = [heading for _, heading, names in A.api_groups() if names]
    starts = [index.index(f"\n{h}\n{'-' * len(h)}\n") for h in headings]  # one section per group, in order
    assert starts == sorted(starts) and len(headings) >= 4
    assert index.index(headings[1]) < index.index("   mnistdiff.training.loop\n")
    for m in present:
        assert f".. automodule:: mnistdiff.{m}" in pages[f"api/mnistdiff.{m}.rst"]
    toc = A.expand_api_toc((BOOK / "_toc.yml").read_text(), present)
    assert toc is not None and "glob" not in toc
    assert [line.split("api/")[1] for line in toc.splitlines() if "file: api/mnistdiff." in line] == [
        f"mnistdiff.{m}" for m in present
    ]


def test_a_listed_module_that_fails_to_import_fails_the_build():
    with pytest.raises(ImportError):
        A.api_pages(("data", "no_such_module_here"))


def test_build_command_treats_warnings_as_errors_and_executes_nothing():
    cmd = build_command(BOOK)
    assert "--warningiserror" in cmd and "build" in cmd
    assert re.search(r'execute_notebooks:\s*"?off"?', (BOOK / "_config.yml").read_text())


def test_toc_lists_the_chapters_in_order():
    chapters = re.findall(r"file:\s*chapters/(\S+)", (BOOK / "_toc.yml").read_text())
    assert tuple(chapters) == CHAPTERS


def test_the_tooling_lives_outside_the_package():
    """mnistdiff/book.py is only the entry point; the tooling is the extension in book/_ext."""
    entry = (REPO / "mnistdiff" / "book.py").read_text()
    imports = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(ast.parse(entry))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imports <= {"__future__", "importlib", "sys", "types", "typing", "mnistdiff.files"}, imports
    assert len(entry.splitlines()) <= 50
    for path in (REPO / "mnistdiff").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "def setup(app" not in text and "jupyter_book" not in text, f"book tooling in the package: {path}"
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"mnistdiff_book.sphinx_hooks": "_ext"}
    assert (BOOK / "_ext" / "mnistdiff_book" / "sphinx_hooks.py").is_file()
    assert callable(extension("sphinx_hooks").setup)
    proc = subprocess.run([sys.executable, "-m", "mnistdiff.book", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--book" in proc.stdout and "--vendor" in proc.stdout, proc.stderr


def test_tooling_modules_and_functions_are_small():
    too_long = []
    for path in sorted((BOOK / "_ext").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.name}:{node.lineno} {node.name}(): {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "over 400 lines a module or 60 a function:\n" + "\n".join(too_long)


def _repo_url() -> str:
    return yaml.safe_load((BOOK / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def test_repository_url_is_one_setting():
    """book/_config.yml's repository.url; every GitHub URL of this repository elsewhere agrees with it."""
    url = _repo_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    for path in (REPO / "README.md", BOOK / "intro.md", BOOK / "README.md"):
        for found in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text(encoding="utf-8")):
            assert found.removesuffix(".git") == url, f"{path.relative_to(REPO)} names {found}, _config.yml {url}"


def test_launch_buttons_open_the_chapters_in_colab_and_binder():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    buttons = config["launch_buttons"]
    assert buttons["colab_url"] == "https://colab.research.google.com"
    assert buttons["binderhub_url"] == "https://mybinder.org"
    assert config["repository"]["path_to_book"] == "book"
    # the buttons open book/chapters/<name>.ipynb of the repository: they must be committed
    tracked = subprocess.run(["git", "ls-files", "book/chapters"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0:  # (not a git checkout: nothing to check)
        assert {f"book/chapters/{c}.ipynb" for c in CHAPTERS} <= set(tracked.stdout.split())


def test_intro_gives_colab_users_the_one_cell_to_run():
    intro = (BOOK / "intro.md").read_text()
    cell = re.search(r"```text\n(.*?)```", intro[intro.index("Google Colab"):], re.S)
    assert cell, "book/intro.md: the Colab section shows the cell to run"
    lines = [line.strip() for line in cell.group(1).splitlines() if line.strip()]
    assert any("git clone" in line and _repo_url() in line for line in lines), lines
    assert any(line.startswith("%pip install") and ".[course]" in line for line in lines), lines


def test_mathjax_is_vendored_and_small():
    config = (BOOK / "_config.yml").read_text()
    match = re.search(r"mathjax_path:\s*(\S+)", config)
    assert match, "book/_config.yml must set mathjax_path (served from the book, not a CDN)"
    assert not match.group(1).startswith(("http:", "https:", "//"))
    root = BOOK / "_vendor"
    assert (root / match.group(1)).is_file()
    fonts = list((root / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) >= 20
    size = sum(p.stat().st_size for p in (root / "mathjax").rglob("*") if p.is_file())
    assert size < 2_500_000, f"vendored MathJax is {size} bytes"
    assert not (BOOK / "_static").exists(), (
        "jupyter-book adds every .js/.css under book/_static to every page: keep MathJax in book/_vendor"
    )


def test_onnxruntime_web_is_vendored_at_the_pinned_version_and_only_its_cpu_build():
    """book/_vendor/onnxruntime-web holds the WebAssembly CPU build of the version package.json pins (no WebGPU or
    WebGL builds, no source maps), with its licence; the generator's script loads it from there, never a CDN."""
    V = extension("vendor")
    folder = BOOK / "_vendor" / "onnxruntime-web"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*V.ORT_FILES, "LICENSE", "VERSION"])
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["onnxruntime-web"]
    assert (folder / "VERSION").read_text().startswith(f"onnxruntime-web {pinned} ")
    assert f"ONNX Runtime Web v{pinned}" in (folder / "ort.wasm.min.js").read_text()[:200]
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 16_000_000, f"vendored onnxruntime-web is {size} bytes"
    script = (BOOK / "_assets" / "generator" / "generator.js").read_text()
    assert "../onnxruntime-web/" in script and not re.search(r"https?://(?!localhost)", script)


# ------------------------------------------------------------------------------------------
# The built book
# ------------------------------------------------------------------------------------------


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_CHROMIUM = (
    "headless Chromium not found (looked for $CHROMIUM and " + ", ".join(CHROMIUM_NAMES) + " on PATH): "
    "install it to check the rendered book, e.g. `sudo apt-get install -y chromium` (Debian/Ubuntu), "
    "or set CHROMIUM=/path/to/chrome"
)


def _chromium() -> str | None:
    """The browser to drive: ``$CHROMIUM`` if set, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


# The tests that drive the browser. Without one they skip at setup, before the book is built, and
# pytest folds their skips into one summary line (it does so for a plain ``skip`` mark); under
# CI=true they run, and the ``browser`` fixture fails.
needs_chromium = pytest.mark.skip(reason=NO_CHROMIUM) if _chromium() is None and not _in_ci() else (lambda test: test)


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

    No network port and nothing but the standard library. Each check waits for what it asked
    (the load event, then a promise in the page), so the result does not depend on timing.
    """

    def __init__(self, executable: str, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mnistdiff-chromium-")
        self.log = open(os.path.join(self.profile, "stderr.log"), "w+")
        cmd_r, cmd_w = os.pipe()  # we write commands; Chromium reads them on its fd 3
        evt_r, evt_w = os.pipe()  # Chromium writes replies and events on its fd 4

        def child_fds() -> None:
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
            b = fcntl.fcntl(evt_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=child_fds,
            close_fds=False,  # fds 3 and 4 must reach Chromium; Python's own fds are not inheritable
        )
        os.close(cmd_r)
        os.close(evt_w)
        self.w, self.r = cmd_w, evt_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.r], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"no answer from Chromium in {self.timeout} s; stderr: {self.stderr()}")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe; stderr: {self.stderr()}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.w, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, match=lambda params: True) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method and ev.get("sessionId") == session and match(ev.get("params", {})):
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def open(self, url: str, width: int = 1280, height: int = 1600) -> str:
        """A new tab showing ``url`` after its load event; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        nav = self.send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise RuntimeError(f"{url}: {nav['errorText']}")
        # the load event of this navigation (not of the tab's initial about:blank)
        loaded = lambda p: p.get("name") == "load" and p.get("loaderId") == nav.get("loaderId")
        self.wait_event("Page.lifecycleEvent", session, loaded)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Uncaught JavaScript exceptions and failed loads (Chromium's log errors) of the page so far.

        (``console.error`` calls are left out: the theme uses one for a harmless notice.)
        """
        out = []
        for ev in [e for e in self.events if e.get("sessionId") == session]:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                what = d.get("exception", {}).get("description") or d.get("text")
                out.append(f"exception: {what} ({d.get('url', '')})")
            elif ev.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}")
        return out

    def requests(self, session: str) -> list[str]:
        """The URLs the page has requested so far (documents, scripts, styles, fonts, images, fetches)."""
        return [ev["params"]["request"]["url"] for ev in self.events
                if ev.get("sessionId") == session and ev.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, session: str, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skips (one line: how to install it) when there is none, fails under CI=true."""
    executable = _chromium()
    if executable is None:
        if _in_ci():
            pytest.fail(f"CI=true: {NO_CHROMIUM}", pytrace=False)
        pytest.skip(NO_CHROMIUM)
    chrome = DevTools(executable)
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The book built from a copy of ``book/`` by the README command; returns the html folder."""
    present = sorted(p.stem for p in (BOOK / "chapters").glob("*.ipynb"))
    missing = [c for c in CHAPTERS if c not in present]
    assert not missing, f"book/chapters lacks {missing} (written by python -m mnistdiff course)"
    root = tmp_path_factory.mktemp("book")
    copy = root / "book"
    generated = ("_build", "_generated", "api", "results.md", ".ipynb_checkpoints", "__pycache__")
    shutil.copytree(BOOK, copy, ignore=shutil.ignore_patterns(*generated))
    results = RESULTS if RESULTS.is_dir() else root / "no-results"
    cmd = [sys.executable, "-m", "mnistdiff.book", "--book", str(copy), "--results", str(results)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}"
    print(proc.stdout.strip().splitlines()[-1])
    html_dir = copy / "_build" / "html"
    assert (html_dir / "index.html").is_file()
    return html_dir


def _chapter_pages(html_dir: Path) -> list[Path]:
    names = sorted(set(CHAPTERS) | {p.stem for p in (BOOK / "chapters").glob("*.ipynb")})
    return [html_dir / "chapters" / f"{n}.html" for n in names]


def test_index_chapters_and_pages_exist(built):
    for page in ["index.html", "intro.html", "results.html", "references.html", "api/index.html"]:
        assert (built / page).is_file(), page
    for page in _chapter_pages(built):
        assert page.is_file(), f"chapter page missing: {page.relative_to(built)}"
    for m in A.API_MODULES:
        assert (built / "api" / f"mnistdiff.{m}.html").is_file(), m
        assert f'id="module-mnistdiff.{m}"' in (built / "api" / f"mnistdiff.{m}.html").read_text()
    # the results page was generated from the JSON files at build time
    results_html = (built / "results.html").read_text()
    for path in sorted(RESULTS.glob("*/*.json")) if RESULTS.is_dir() else []:
        assert f"results/{path.parent.name}/{path.name}" in results_html, path
    refs = (built / "references.html").read_text()
    for arxiv in ["2006.11239", "2010.02502", "2102.09672", "1312.6114", "2112.10752", "1802.03426",
                  "1706.08500", "1801.01401", "1904.06991"]:
        assert arxiv in refs, arxiv
    assert "CC BY-SA 3.0" in refs


class _Links(HTMLParser):
    ATTRS = {
        "a": "href", "link": "href", "script": "src", "img": "src", "source": "src", "iframe": "src", "area": "href"
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if d.get(key):
                self.ids.add(d[key])
        attr = self.ATTRS.get(tag)
        if attr and d.get(attr) is not None:
            self.urls.append((tag, d[attr]))


def _parse(path: Path, cache: dict) -> _Links:
    if path not in cache:
        parser = _Links()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser
    return cache[path]


def test_no_internal_link_is_broken_and_nothing_loads_from_the_network(built):
    cache: dict = {}
    pages = [p for p in built.rglob("*.html") if "_static" not in p.relative_to(built).parts]
    broken, external_assets, checked = [], [], 0
    for page in pages:
        for tag, url in _parse(page, cache).urls:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":  # a script, style sheet or image from the network: breaks offline
                    external_assets.append(f"{page.relative_to(built)}: <{tag}> {url}")
                continue
            if parts.scheme in ("mailto", "data", "javascript", "tel") or url in ("", "#"):
                continue
            checked += 1
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(built)}: {url} (no file)")
                continue
            if parts.fragment and target.suffix == ".html":
                if unquote(parts.fragment) not in _parse(target, cache).ids:
                    broken.append(f"{page.relative_to(built)}: {url} (no anchor)")
    assert checked > 50
    assert not external_assets, "\n".join(external_assets)
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(broken[:50])


def test_chapters_have_colab_and_binder_launch_buttons(built):
    """Each chapter page links its notebook in the repository (book/chapters/<name>.ipynb) on Colab and Binder."""
    url = _repo_url()
    org_repo = url.removeprefix("https://github.com/")
    branch = yaml.safe_load((BOOK / "_config.yml").read_text())["repository"]["branch"]
    for name in CHAPTERS:
        page = built / "chapters" / f"{name}.html"
        hrefs = [u for tag, u in _parse(page, {}).urls if tag == "a"]
        notebook = f"book/chapters/{name}.ipynb"
        colab = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{notebook}"
        binder = f"https://mybinder.org/v2/gh/{org_repo}/{branch}?urlpath=lab/tree/{notebook}"
        assert colab in hrefs, f"{page.name}: no Colab button {colab}: {[h for h in hrefs if 'colab' in h]}"
        assert binder in hrefs, f"{page.name}: no Binder button {binder}: {[h for h in hrefs if 'binder' in h]}"
        assert (BOOK / "chapters" / f"{name}.ipynb").is_file()
    intro = [u for tag, u in _parse(built / "intro.html", {}).urls if tag == "a"]
    assert not any(u.startswith("https://colab.research.google.com") for u in intro), "launch button on a Markdown page"


def test_widget_views_are_stripped(built):
    for page in _chapter_pages(built):
        text = page.read_text()
        assert "application/vnd.jupyter.widget-view+json" not in text, page.name
        assert "application/vnd.jupyter.widget-state+json" not in text, page.name
        assert "require.js" not in text and "html-manager" not in text, page.name


def test_a_live_generator_stands_where_its_cell_says(built):
    """Each executed chapter's cell whose metadata presets a live generator shows that generator on its page, in place
    of the cell's outputs (the widget's static fallback is gone), with the generator's script; at least one does."""
    placed = 0
    for notebook in sorted((BOOK / "chapters").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        presets = [c for c in cells if c["cell_type"] == "code" and "generator" in c["metadata"].get("mnistdiff", {})]
        if not presets:
            continue
        page = (built / "chapters" / f"{notebook.stem}.html").read_text()
        assert "generator/generator.js" in page, notebook.stem
        for cell in presets:
            preset = cell["metadata"]["mnistdiff"]["generator"]
            element = '<div class="mnistdiff-generator"' + "".join(f' data-{k}="{v}"' for k, v in preset.items())
            assert element + "></div>" in page, f"{notebook.stem}: no {element}"
            for out in cell["outputs"]:
                image = "".join(out.get("data", {}).get("image/png", ""))
                assert not image or image[:200] not in page, f"{notebook.stem}: the replaced cell's figure is there"
            placed += 1
    assert placed, "no chapter cell presets a live generator (chapter 7's guidance explorer should)"


# Run in each page after its load event: waits for MathJax and its fonts, reports what it found.
_CHECK_JS = """
(async () => {
  const out = {};
  try {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      await MathJax.startup.promise; out.mathjax = MathJax.version;
    }
  } catch (e) { out.error = String(e); }
  void document.body.offsetHeight;  // lay the typeset math out, so its fonts start loading
  if (document.fonts) {
    if (document.querySelector('mjx-container')) {
      // MathJax's main and italic TeX fonts, from the book's own files: fails if they do not load
      for (const f of ['16px MJXTEX', '16px MJXTEX-I']) {
        try { await document.fonts.load(f); } catch (e) { out.font_error = String(e); }
      }
    }
    await document.fonts.ready;
  }
  out.math = document.querySelectorAll('.math').length;
  out.mjx = document.querySelectorAll('mjx-container').length;
  out.merror = document.querySelectorAll('mjx-merror').length;
  out.images = Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);
  // the denoising player's buttons (matplotlib's HTML animation): each shows an icon drawn from the book's own files
  const buttons = Array.from(document.querySelectorAll('.anim-buttons button'));
  out.player_buttons = buttons.length;
  out.player_icons = buttons.filter(b => { const s = b.querySelector('svg');
    return s && s.getBoundingClientRect().width > 0; }).length;
  out.fonts = Array.from(document.fonts || []).filter(f => f.family.indexOf('MJX') >= 0).map(f => [f.family, f.status]);
  return out;
})()
"""


def _browser_check(browser: DevTools, page: Path, screenshot: Path | None = None) -> dict:
    session = browser.open(page.as_uri())
    result = browser.evaluate(session, _CHECK_JS)
    result["page_errors"] = browser.errors(session)
    result["requests"] = browser.requests(session)
    if screenshot is not None:
        browser.screenshot(session, screenshot)
    target = browser.send("Target.getTargetInfo", session=session)["targetInfo"]["targetId"]
    browser.send("Target.closeTarget", {"targetId": target})
    return result


def _rounding_sensitivity(models, z, y: list[int], case: dict) -> float:
    """How far Python's own digits move when the noise moves by one part in 10⁷ (float32 rounding): the unguided
    teacher's first step divides ε̂ by √ᾱ_T ≈ 5·10⁻⁵ wherever x̂_0 stays inside the clip, so two float32 runtimes
    (WebAssembly and onnxruntime's CPU kernels) can differ there by more than 1e-3 with no difference in the sampler;
    a sampler that differs moves the digits by tenths."""
    import torch

    from mnistdiff.export import onnx_sample

    kwargs = {"teacher_steps": case.get("steps"), "guidance": case.get("guidance")}
    base = onnx_sample(models, z, torch.tensor(y), **kwargs)
    return max((onnx_sample(models, z * (1 + k * 1e-7), torch.tensor(y), **kwargs) - base).abs().max().item()
               for k in (1, -1))


@needs_chromium
class TestInChromium:
    """The rendered pages in headless Chromium (a class, so that their skips fold into one line)."""

    def test_math_is_typeset_and_images_load(self, built, browser):
        pages = [built / "intro.html", built / "results.html", built / "references.html", *_chapter_pages(built)]
        report = {}
        for page in pages:
            r = _browser_check(browser, page)
            name = str(page.relative_to(built))
            report[name] = {k: r.get(k) for k in ("mathjax", "math", "mjx", "merror")} | {"images": len(r["images"])}
            assert "error" not in r, f"{name}: {r['error']}"
            assert "font_error" not in r, f"{name}: MathJax fonts: {r['font_error']}"
            assert not r["page_errors"], f"{name}: the page reported errors: {r['page_errors']}"
            own = (built.as_uri() + "/", "data:", "blob:")
            outside = [u for u in r["requests"] if not u.startswith(own)]
            assert r["requests"] and not outside, f"{name}: requests that leave the book's own files: {outside}"
            if r["math"]:
                assert r.get("mathjax"), f"{name}: has math but MathJax did not load (raw TeX shows)"
                assert r["mjx"] >= r["math"], f"{name}: {r['math']} math elements, {r['mjx']} typeset"
                assert r["merror"] == 0, f"{name}: MathJax reported {r['merror']} TeX errors"
                statuses = dict(r["fonts"])
                assert "error" not in statuses.values(), f"{name}: MathJax fonts failed: {r['fonts']}"
                assert "loaded" in statuses.values(), f"{name}: no MathJax font loaded: {r['fonts']}"
            not_loaded = [src for src, complete, width in r["images"] if not (complete and width > 0)]
            assert not not_loaded, f"{name}: images that did not load: {not_loaded}"
            if page.parent.name == "chapters":
                assert r["images"], f"{name}: a chapter without a single figure (were its outputs stored?)"
            assert r["player_icons"] == r["player_buttons"], f"{name}: player buttons without an icon: {r}"
            report[name]["player_buttons"] = r["player_buttons"]
        print("\n".join(f"{k}: {v}" for k, v in report.items()))
        assert report["intro.html"]["mjx"] > 0
        assert report["chapters/02_ddpm.html"]["player_buttons"] > 0, "chapter 2's denoising player is missing"
        assert sum(v["mjx"] for k, v in report.items() if k.startswith("chapters")) > 0, "no chapter has typeset math"


    def test_screenshot_of_a_chapter(self, built, browser, capsys):
        from PIL import Image

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        chapter = CHAPTERS[0]
        shot = ARTIFACTS / f"{chapter}.png"
        if shot.exists():
            shot.unlink()
        r = _browser_check(browser, built / "chapters" / f"{chapter}.html", screenshot=shot)
        assert shot.is_file(), "chromium wrote no screenshot"
        with Image.open(shot) as im:
            assert im.size == (1280, 1600)
            lo, hi = im.convert("L").getextrema()
            assert hi - lo > 100, "the screenshot is blank"
        assert r["mjx"] == r["math"]  # taken after MathJax finished
        with capsys.disabled():  # shown even when pytest captures output
            print(f"\n[book] screenshot of the rendered chapter: {shot}")


    def test_the_live_generator_draws_what_python_draws(self, built, browser):
        """Served over HTTP (as GitHub Pages serves it), the introduction's generator runs the exported models with the
        vendored onnxruntime-web: from fixed noise its JavaScript sampler gives Python's digits (``onnx_sample``, itself
        checked against the package's samplers in tests/test_export.py) within 1e-3, for the student and the guided
        teacher and the pixel DDPM (``onnx_pixel_sample``), with the network calls each should cost; nothing is
        fetched from outside the book. On the page itself, the classifier reads the digit asked for in at least 9 of
        10 of the generator's canvases, for three digits, and at least 5 of the pixel model's 10 lie among real
        digits; it prints one digit's time and the page's added download (at most 15 MB)."""
        import torch

        from mnistdiff.evaluation.guidance import label_accuracy
        from mnistdiff.export import onnx_pixel_sample, onnx_sample, pixel_noise

        models = built / "_static" / "generator" / "models"
        latent = json.loads((models / "sampler.json").read_text())["latent_shape"]
        z = torch.randn((3, *latent), generator=torch.Generator().manual_seed(0))
        y = [1, 4, 7]
        # (options, network calls per digit, frames): the student's 4 steps; guided, 2 calls a step; w = 0, one
        cases = [({"model": "student"}, 4, 4), ({"model": "teacher", "steps": 8, "guidance": 3.0}, 16, 8),
                 ({"model": "teacher", "steps": 4, "guidance": 0.0}, 4, 4)]
        with _http_server(built) as url:
            session = browser.open(url + "/intro.html")
            first = browser.evaluate(session, "(async () => { const t = performance.now(); await "
                                              "window.mnistdiffGenerator.load(); return performance.now() - t; })()")
            print(f"[generator] first load (runtime, student and decoder): {first:.0f} ms")
            for case, nfe, frames in cases:
                args = json.dumps({**case, "digits": y, "noise": z.flatten().tolist(), "frames": True})
                got = browser.evaluate(session, f"window.mnistdiffGenerator.sample({args}).then(r => ({{"
                                       "images: Array.from(r.images), nfe: r.nfe, frames: r.frames.length}))")
                want = onnx_sample(models, z, torch.tensor(y), teacher_steps=case.get("steps"),
                                   guidance=case.get("guidance"))
                error = (torch.tensor(got["images"]).reshape(want.shape) - want).abs().max().item()
                allowed = max(1e-3, 10 * _rounding_sensitivity(models, z, y, case))
                assert error < allowed, f"{case}: the page's digits differ from Python's by {error:.2e} ({allowed:.1e})"
                print(f"[generator] {case}: largest difference from Python {error:.1e} (allowed {allowed:.1e})")
                assert (got["nfe"], got["frames"]) == (nfe, frames), (case, got["nfe"], got["frames"])
            x_T, zs = pixel_noise(3, 10, seed=0)  # the pixel DDPM: x_T, then one fresh z a step
            args = json.dumps({"model": "pixel", "steps": 10, "digits": y, "frames": True,
                               "noise": torch.cat([x_T[None], zs]).flatten().tolist()})
            got = browser.evaluate(session, f"window.mnistdiffGenerator.sample({args}).then(r => ({{"
                                   "images: Array.from(r.images), nfe: r.nfe, frames: r.frames.length}))")
            want = onnx_pixel_sample(models, 3, 10, seed=0)
            error = (torch.tensor(got["images"]).reshape(want.shape) - want).abs().max().item()
            print(f"[generator] pixel DDPM, DPM-Solver++(2M) SDE, 10 steps: largest difference from Python {error:.1e}")
            assert error < 1e-3 and (got["nfe"], got["frames"]) == (10, 10), (error, got["nfe"], got["frames"])
            for digit in (0, 4, 7):  # the page itself: choose a digit, press Generate, read its ten canvases
                drawn = browser.evaluate(session, _GENERATE_JS % ("student", digit))
                assert drawn["frames"] == 4 and "network calls each" in drawn["status"], drawn
                images = torch.tensor(drawn["pixels"], dtype=torch.float32).reshape(-1, 1, 32, 32) / 127.5 - 1
                accuracy, _ = label_accuracy(images, torch.full((len(images),), digit), device="cpu")
                print(f"[generator] digit {digit}: the classifier reads {accuracy * len(images):.0f} of {len(images)}")
                assert len(images) == 10 and accuracy >= 0.9, (digit, accuracy, drawn["status"])
            drawn = browser.evaluate(session, _GENERATE_JS % ("pixel", "any"))  # unconditional: any digit
            assert drawn["frames"] == 6 and "10 network calls each" in drawn["status"], drawn
            images = torch.tensor(drawn["pixels"], dtype=torch.float32).reshape(-1, 1, 32, 32) / 127.5 - 1
            inside = _share_among_real_digits(images)
            print(f"[generator] pixel DDPM on the page: {inside * len(images):.0f} of {len(images)} canvases lie among "
                  "real digits (classifier features; pure noise: 0)")
            assert len(images) == 10 and inside >= 0.5, (inside, drawn["status"])
            for who, opts in (("student, 4 calls", '"model": "student"'),
                              ("pixel DDPM, 10 calls", '"model": "pixel", "steps": 10')):
                one = browser.evaluate(session, _ONE_DIGIT_JS % opts)
                print(f"[generator] one digit ({who}, no frames): median {one:.0f} ms of 5 "
                      f"on {cpu_name()} (one WebAssembly thread)")
            download = sum(_served_file(built, url, u).stat().st_size for u in set(browser.requests(session))
                           if "/_static/generator/" in u or "/_static/onnxruntime-web/" in u)
            print(f"[generator] the page's added download: {download / 1e6:.1f} MB")
            assert download <= 15e6, f"the generator downloads {download / 1e6:.1f} MB (at most 15)"
            errors = [e for e in browser.errors(session) if not e.endswith("/favicon.ico")]  # the browser's own ask
            assert not errors, errors
            outside = [u for u in browser.requests(session) if not u.startswith(url + "/")]
            assert not outside, f"requests that leave the book: {outside}"


# Choose the model %s and the digit %s (seed 0), press Generate, wait for the canvases; their grey levels and the
# status line.
_GENERATE_JS = """new Promise((resolve, reject) => {
  const root = document.querySelector('.mnistdiff-generator');
  const model = root.querySelector('select[aria-label=model]');
  model.value = '%s';
  model.dispatchEvent(new Event('change'));
  root.querySelector('select[aria-label=digit]').value = '%s';
  root.querySelector('.mg-digits').replaceChildren();
  root.querySelector('button').click();
  const started = Date.now();
  const timer = setInterval(() => {
    const canvases = [...root.querySelectorAll('.mg-digits canvas')];
    if (canvases.length || Date.now() - started > 60000) {
      clearInterval(timer);
      const pixels = canvases.flatMap(c => [...c.getContext('2d').getImageData(0, 0, 32, 32).data]
                                            .filter((_, i) => i %% 4 === 0));
      resolve({pixels: pixels, frames: root.querySelectorAll('.mg-frames canvas').length,
               status: root.querySelector('.mg-status').textContent});
    }
  }, 100);
})"""

# The median time of one digit (no frames) drawn with the options %s, of five, after the models have loaded.
_ONE_DIGIT_JS = """(async () => {
  const times = [];
  for (let i = 0; i < 5; i++) times.push((await window.mnistdiffGenerator.sample({%s, digits: [7], seed: i})).ms);
  return times.sort((a, b) => a - b)[2];
})()"""


def _share_among_real_digits(images) -> float:
    """The precision (Kynkäänniemi et al.) of ``images`` against 2,000 test digits in the project classifier's
    features: the share of them inside some real digit's 3rd-nearest-neighbour ball (noise scores 0)."""
    from mnistdiff.evaluation.distances import precision_recall
    from mnistdiff.evaluation.features import classifier_features
    from mnistdiff.evaluation.metrics import reference_features

    real, _ = reference_features("cpu", n_ref=2000)
    return precision_recall(real, classifier_features(images, device="cpu")[0], k=3)[0]


def _served_file(root: Path, base: str, url: str) -> Path:
    """The file under ``root`` that ``url`` (served from ``base``) names."""
    return root / unquote(urlsplit(url[len(base):]).path).lstrip("/")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler, silent, with the types the generator's files need on any machine."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".gz": "application/gzip"}

    def log_message(self, *args) -> None:
        pass


class _http_server:
    """The built book served on 127.0.0.1 (a free port) by the standard library, as ``python -m http.server`` would."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_each_chapter_page_says_how_long_its_execution_took(built):
    times = json.loads((RESULTS / "book" / "course_times.json").read_text())["notebooks"]
    for name in CHAPTERS:
        text = (built / "chapters" / f"{name}.html").read_text(encoding="utf-8")
        if name not in times:
            assert "as the course command executed it" not in text
            continue
        minutes, seconds = divmod(round(times[name]), 60)
        took = f"{minutes} min {seconds:02d} s" if minutes else None
        assert "as the course command executed it with the <code" in text, name
        assert took is None or took in text, (name, took)


def test_exercises_are_shown_and_solutions_collapsed(built):
    """Every chapter's exercises are admonitions; their prose solutions are dropdowns (one per
    exercise) and their code solutions toggled (closed) cells in the built book (the opener has none)."""
    for chapter in LESSONS:
        html = (built / "chapters" / f"{chapter}.html").read_text()
        n = int(chapter[:2])
        exercises = set(re.findall(rf"Exercise {n}\.(\d+)", html))
        assert 3 <= len(exercises) <= 5, f"{chapter}: {len(exercises)} exercises in the built page"
        dropdowns = re.findall(r'class="admonition dropdown|class="dropdown admonition', html)
        assert len(dropdowns) >= len(exercises), f"{chapter}: a solution the book shows open"
        assert "tag_hide-cell" in html and "tag_solution" in html, f"{chapter}: no collapsed code solution"


def test_notation_page_is_built_and_linked_from_every_chapter(built):
    assert (built / "notation.html").is_file()
    for chapter in CHAPTERS:
        assert 'href="../notation.html"' in (built / "chapters" / f"{chapter}.html").read_text(), chapter


def test_intro_quotes_the_training_minutes_the_model_files_record(built):
    """The introduction's training time is a substitution generated from the committed models' own records."""
    from mnistdiff.modelfile import read_model_meta

    seconds = sum(read_model_meta(p)["seconds"] for p in sorted((REPO / "checkpoints" / "book").glob("*.safetensors")))
    assert (BOOK / "intro.md").read_text().count("{{ book_train_minutes }} minutes") == 2
    html = (built / "intro.html").read_text()
    assert html.count(f"{seconds / 60:.0f} minutes on two CPU cores") == 2 and "book_train_minutes" not in html


def test_readme_table_of_chapter_times_is_generated_from_the_results():
    """The README's chapter times are the results files' (regenerate: ``python -m mnistdiff.book --readme``)."""
    readme = (REPO / "README.md").read_text()
    assert readme == R.readme_with_course_times(readme, REPO / "results"), (
        "README.md's table of chapter times differs from results/*/course_times.json: run "
        "`python -m mnistdiff.book --readme`"
    )
    stale = readme.replace("| `01_unet` |", "| `01_unet` | 1 s |", 1)
    assert R.readme_with_course_times(stale, REPO / "results") == readme  # the check can fail, and the fix restores it
    with pytest.raises(ValueError, match="no generated block"):
        R.readme_with_course_times("# a README without the markers\n", REPO / "results")
