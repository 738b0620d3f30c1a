"""What chapters quote from ``results/book/`` (``mnistdiff.course.measured``), on hand-written files in a temporary
results directory: the numbers come through, and an absent file reads "not measured yet"."""

from __future__ import annotations

import json

from mnistdiff.course.measured import NOT_MEASURED, book_result, time_to_quality_table

DOC = {"n": 2000, "floor": {"fid": 0.25, "fid_resnet": 0.2},
       "snapshots": [{"training_seconds": 60.0, "fid": 1.0, "fid_resnet": 1.0},
                     {"training_seconds": 1200.0, "fid": 0.5, "fid_resnet": 0.3}]}


def _results(tmp_path, monkeypatch, files: dict) -> None:
    monkeypatch.setenv("MNISTDIFF_RESULTS_DIR", str(tmp_path))
    (tmp_path / "book").mkdir()
    for name, doc in files.items():
        (tmp_path / "book" / name).write_text(json.dumps(doc))


def test_absent_files_are_not_measured(tmp_path, monkeypatch):
    _results(tmp_path, monkeypatch, {})
    assert book_result("course_times.json") is None
    assert time_to_quality_table({"a": "missing.json"}) == NOT_MEASURED


def test_the_table_shows_the_last_snapshot_over_its_floor(tmp_path, monkeypatch):
    _results(tmp_path, monkeypatch, {"ttq.json": DOC})
    lines = time_to_quality_table({"missing": "none.json", "critic": "ttq.json"}, "VAE").splitlines()
    assert lines[0].startswith("| VAE | training min | n |") and len(lines) == 3
    assert lines[2] == "| critic | 20.0 | 2,000 | 0.500 (2.00×) | 0.300 (1.50×) |"


def test_no_chapter_builds_a_results_path_itself():
    """Chapters quote measurements through ``mnistdiff.course.measured`` (issue 20: no plumbing in a chapter)."""
    from mnistdiff.files import repo_root

    offenders = [p.name for p in sorted((repo_root() / "notebooks").glob("*.py"))
                 if any(name in p.read_text() for name in ("results_dir", "repo_root", "course_times.json"))]
    assert offenders == []
