"""The results page (``book/results.md``) and the introduction's table of times per chapter.

Both are generated at build time from the JSON files under ``results/<profile>/``, never typed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .layout import CHAPTERS, GENERATED_NOTE
from .tables import cell_text, flatten, is_scalar, render_json, table

__all__ = ["PROFILE_ORDER", "PROVENANCE_KEYS", "load_results", "results_markdown", "course_times_markdown",
           "chapter_run_time", "README_BEGIN", "README_END", "readme_with_course_times"]

#: Profiles in the order the tables show them; others follow alphabetically.
PROFILE_ORDER: tuple[str, ...] = ("book", "full", "smoke")

#: Top-level keys that describe where a result file came from (shown above its tables).
PROVENANCE_KEYS: tuple[str, ...] = ("profile", "device", "device_name", "gpu", "torch", "git_commit", "date")

INTRO = (
    "Every metric and time the course measures, read from the JSON files that the course "
    "command and the evaluation write under `results/<profile>/`. This page is generated "
    "when the book is built; nothing here is typed by hand."
)
NO_RESULTS = [
    "```{note}",
    "No results have been recorded yet. Run `python -m mnistdiff course --profile book` "
    "(any machine, with the committed checkpoints) and build the book again.",
    "```",
    "",
]
ALL_RESULTS_INTRO = (
    "One row per number, one column per profile (`book`: the models this book is executed with, "
    "trained in under an hour on two CPU cores; `full`: the reference settings on a GPU; "
    "`smoke`: tiny models for checking the code, not for quality)."
)


def _profile_sort_key(name: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(name) if name in PROFILE_ORDER else len(PROFILE_ORDER), name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """``{profile: {file stem: parsed JSON}}`` for every ``results_dir/<profile>/*.json``, sorted.

    A file that is not valid JSON raises ``ValueError`` naming it (the results page would
    otherwise silently miss it).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return {}
    results: dict[str, dict[str, Any]] = {}
    profile_dirs = sorted((p for p in results_dir.iterdir() if p.is_dir()), key=lambda p: _profile_sort_key(p.name))
    for profile_dir in profile_dirs:
        files = sorted(profile_dir.glob("*.json"))
        if files:
            results[profile_dir.name] = {path.stem: _read_json(path) for path in files}
    return results


def _provenance(files: Mapping[str, Any]) -> dict[str, list[str]]:
    """Values of :data:`PROVENANCE_KEYS` found at the top level of a profile's files."""
    found: dict[str, list[str]] = {}
    for data in files.values():
        if not isinstance(data, Mapping):
            continue
        for key in PROVENANCE_KEYS:
            value = data.get(key)
            if is_scalar(value) and value is not None:
                texts = found.setdefault(key, [])
                if cell_text(value) not in texts:
                    texts.append(cell_text(value))
    return found


def _device_text(files: Mapping[str, Any]) -> str:
    prov = _provenance(files)
    devices = prov.get("device_name") or prov.get("gpu") or prov.get("device")
    return ", ".join(devices) if devices else "not recorded"


def _provenance_section(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for profile, files in results.items():
        names = ", ".join(f"`{name}.json`" for name in files)
        rows.append([profile, _device_text(files), names, "; ".join(_provenance(files).get("date", [])) or "—"])
    return ["## Where the numbers come from", "", table(["profile", "device", "files", "date"], rows)]


def _all_results_section(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One table with every number: rows are (file, result), columns are profiles."""
    profiles = list(results)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for profile in profiles:
        for stem, data in results[profile].items():
            for path, value in flatten(data):
                if path != ("profile",):
                    rows.setdefault((stem, " › ".join(path) if path else "value"), {})[profile] = value
    body = ([f, r, *(vals.get(p) for p in profiles)] for (f, r), vals in rows.items())
    return ["## All results", "", ALL_RESULTS_INTRO, "", table(["file", "result", *profiles], body)]


def _each_file_section(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = ["## Each file", ""]
    for profile, files in results.items():
        out += [f"### Profile `{profile}`", "", f"Device: {_device_text(files)}.", ""]
        for stem, data in files.items():
            out += [f"#### {stem}", "", f"From `results/{profile}/{stem}.json`.", ""]
            out.append(render_json(data, "", level=5))
    return out


def results_markdown(results_dir: Path) -> str:
    """The results page: one summary table of every number, then each file's own tables."""
    results = load_results(results_dir)
    out = [GENERATED_NOTE, "", "# Results", "", INTRO, ""]
    if not results:
        return "\n".join(out + NO_RESULTS)
    out += _provenance_section(results) + _all_results_section(results) + _each_file_section(results)
    return "\n".join(out)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return cell_text(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _read_course_times(results_dir: Path) -> tuple[dict[str, Mapping[str, Any]], dict[str, str], dict[str, str]]:
    """``({profile: {chapter: seconds}}, {profile: device}, {profile: what the total sums})`` from every
    ``*/course_times.json``."""
    times: dict[str, Mapping[str, Any]] = {}
    devices: dict[str, str] = {}
    sums: dict[str, str] = {}
    if not Path(results_dir).is_dir():
        return times, devices, sums
    paths = sorted(Path(results_dir).glob("*/course_times.json"), key=lambda p: _profile_sort_key(p.parent.name))
    for path in paths:
        data = _read_json(path)
        if not isinstance(data, Mapping) or not isinstance(data.get("notebooks"), Mapping):
            continue
        profile = str(data.get("profile") or path.parent.name)
        times[profile] = data["notebooks"]
        devices[profile] = cell_text(data.get("device") or data.get("device_name") or "not recorded")
        sums[profile] = str(data.get("total_of") or "runs not recorded")
    return times, devices, sums


def _total(notebooks: Mapping[str, Any]) -> str:
    vals = [v for v in notebooks.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return _duration(sum(vals)) if vals else "—"


def course_times_markdown(results_dir: Path, chapters: Sequence[str] = CHAPTERS, book_dir: Path | None = None) -> str:
    """The introduction's table of minutes per chapter and profile, from ``course_times.json``.

    Schema read: ``{"profile": ..., "device": ..., "notebooks": {"01_unet": seconds, ...}}``.
    Chapter names link to their page when ``book_dir/chapters/<name>.ipynb`` exists (the table
    is included by ``book_dir/intro.md``, so links are relative to it).
    """
    times, devices, sums = _read_course_times(results_dir)
    if not times:
        return (
            "No timings have been recorded yet: the course command writes them to "
            "`results/<profile>/course_times.json`, and this table is filled in when the book is built.\n"
        )
    profiles = list(times)
    names = list(chapters) + [n for t in times.values() for n in t if n not in chapters]
    names = list(dict.fromkeys(n for n in names if any(n in t for t in times.values())))

    def label(name: str) -> str:
        if book_dir is not None and (Path(book_dir) / "chapters" / f"{name}.ipynb").is_file():
            return f"[`{name}`](chapters/{name}.ipynb)"
        return f"`{name}`"

    rows = [[label(n), *(_duration(times[p][n]) if n in times[p] else "—" for p in profiles)] for n in names]
    rows.append(["**total**", *(f"{_total(times[p])} ({sums[p]})" for p in profiles)])
    return table(["chapter", *(f"{p} ({devices[p]})" for p in profiles)], rows)


def chapter_run_time(results_dir: Path, chapter: str, profile: str = "book") -> str | None:
    """One line for the top of ``chapter``'s page: how long its ``profile`` run took, on which CPU and when
    (``results_dir/<profile>/course_times.json``, as the course command recorded it); ``None`` if not recorded."""
    path = Path(results_dir) / profile / "course_times.json"
    data = _read_json(path) if path.is_file() else {}
    seconds = data.get("notebooks", {}).get(chapter) if isinstance(data, Mapping) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return None
    device = data.get("devices", {}).get(chapter) or data.get("device") or "a CPU not recorded"
    date = str(data.get("executed", {}).get(chapter, ""))[:10]
    when = f" on {date}" if date else ""
    return (f"*This page is the chapter as the course command executed it with the `{profile}` profile{when}: "
            f"{_duration(seconds)} on {cell_text(device)}.*")


#: The README's table of chapter times lies between these two lines, generated (``python -m mnistdiff.book --readme``).
README_BEGIN = "<!-- generated from results/*/course_times.json by `python -m mnistdiff.book --readme`: do not edit -->"
README_END = "<!-- end of generated table -->"


def readme_with_course_times(readme: str, results_dir: Path) -> str:
    """``readme`` with the text between :data:`README_BEGIN` and :data:`README_END` replaced by the course-times
    table (the one the introduction shows); a ``ValueError`` if the markers are missing."""
    start, end = readme.find(README_BEGIN), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no generated block: put the lines {README_BEGIN!r} and {README_END!r} "
                         "where the table of chapter times belongs")
    table_md = course_times_markdown(results_dir)
    return readme[: start + len(README_BEGIN)] + "\n\n" + table_md.rstrip("\n") + "\n\n" + readme[end:]
