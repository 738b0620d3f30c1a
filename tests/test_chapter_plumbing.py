"""The plumbing chapters 6 and 7 call instead of writing it: ``report.save_results`` (issue 20, item 6).

A chapter writes its results file with one call. The file must be byte for byte what the chapter wrote before, when
it assembled the document itself with ``build_results`` and ``write_results`` (the book's results page reads these
files), land in ``results/<profile>/<name>.json``, come back as a path to print, and be written atomically.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnistdiff.evaluation import report
from mnistdiff.evaluation.report import FLOOR_NAME, SavedResults, build_results, save_results, write_results
from mnistdiff.files import FileWriteError

PROFILE = SimpleNamespace(name="smoke")  # what save_results reads of a profile: its name


@pytest.fixture(autouse=True)
def _fixed_date_and_dirs(tmp_path, monkeypatch):
    """Today's date fixed (a document records it), and the repository root and results folder in ``tmp_path``."""

    class _Date(datetime.date):
        @classmethod
        def today(cls):
            return cls(2026, 12, 1)

    monkeypatch.setattr(report, "_dt", SimpleNamespace(date=_Date))
    monkeypatch.setenv("MNISTDIFF_ROOT", str(tmp_path / "repo"))
    monkeypatch.delenv("MNISTDIFF_RESULTS_DIR", raising=False)


def _metrics(seed: int) -> dict:
    """A scored row as ``score_samples`` or ``guidance_sweep`` gives it (floats with many digits, a histogram)."""
    base = 1.0 + seed / 7
    return {"n": 100, "fid": base * 3.141592653589, "kid": base / 3000, "kid_std": 1e-4 / base,
            "precision": 0.5 + seed / 97, "recall": 0.25 + seed / 89, "class_histogram": [0.1] * 10}


def _guidance_inputs() -> dict:
    """Chapter 7's: the sweep's rows (with their per-digit accuracies), its floor, and the trained model."""
    rows = {}
    for i, w in enumerate((0.0, 1.0, 2.0)):
        per_digit = [min(1.0, 0.1 + 0.3 * i + d / 100) for d in range(10)]
        rows[f"w = {w:g}"] = {"guidance": w, "label_accuracy": sum(per_digit) / 10, "per_class_accuracy": per_digit,
                              **_metrics(i), "sampling_seconds": 1.5 + i, "seconds_per_sample": 0.015 + i / 100}
    floor = {**_metrics(9), "label_accuracy": 0.9985}
    floor.pop("class_histogram")  # chapter 7's floor is evaluation.metrics.real_floor's, plus the accuracy
    return {"rows": rows, "floor": floor, "model": SimpleNamespace(meta={"seconds": 798.123}),
            "sampler": "DDIM-20, eta 1", "scales": [0.0, 1.0, 2.0], "recommended": 2.0}


def _chapter_7_before(inputs: dict, path: Path) -> dict:
    """What chapter 7 did before save_results existed (its code, with its names)."""
    rows = {name: dict(row) for name, row in inputs["rows"].items()}
    per_class = {name: row.pop("per_class_accuracy") for name, row in rows.items()}
    results = build_results(
        PROFILE.name, "cpu", 100, inputs["floor"], rows, seed=0,
        extra={"sampler": inputs["sampler"], "guidance_scales": inputs["scales"],
               "recommended_guidance": inputs["recommended"], "per_class_accuracy": per_class,
               "checkpoint_minutes": round(inputs["model"].meta["seconds"] / 60, 1)},
    )
    write_results(results, path)
    return results


def _chapter_7_now(inputs: dict) -> SavedResults:
    return save_results("guidance", PROFILE, device="cpu", n_samples=100, floor=inputs["floor"],
                        generators=inputs["rows"], seed=0, model=inputs["model"], sampler=inputs["sampler"],
                        guidance_scales=inputs["scales"], recommended_guidance=inputs["recommended"])


def _evaluation_inputs() -> dict:
    """Chapter 6's: scored generators (one on fewer samples), its floor, UMAP scores with the floor's, other floors."""
    scores = {name: {"label": name.upper(), "space": "pixel", "sampler": "ddim", "steps": 20, "eta": 1.0,
                     **_metrics(i), "sampling_seconds": 2.0 + i, "seconds_per_sample": 0.02 + i / 100}
              for i, name in enumerate(("ddpm", "ddim_20_eta1", "ldm_ddpm"))}
    scores["ddpm"]["n"] = 50
    umap = {name: {"knn_accuracy_umap": 0.51 + i / 50, "knn_accuracy_pixels": 0.6, "knn_accuracy_features": 0.7}
            for i, name in enumerate([FLOOR_NAME, *scores])}
    floor = {**_metrics(9), "nn_train_distance": float("nan")}  # NaN: written as null
    other = {"50": {k: v for k, v in _metrics(8).items() if k != "class_histogram"}}
    return {"scores": scores, "umap": umap, "floor": floor, "other": other}


def test_guidance_results_are_byte_identical_to_what_chapter_7_wrote(tmp_path):
    inputs = _guidance_inputs()
    before = _chapter_7_before(inputs, tmp_path / "before.json")
    saved = _chapter_7_now(inputs)
    written = tmp_path / "repo" / "results" / "smoke" / "guidance.json"
    assert written.read_bytes() == (tmp_path / "before.json").read_bytes()
    assert saved.results == before == json.loads(written.read_text())
    keys = list(saved.results)
    assert keys.index("recommended_guidance") < keys.index("per_class_accuracy") < keys.index("checkpoint_minutes")
    assert saved.results["per_class_accuracy"]["w = 2"][0] == pytest.approx(0.7)
    assert all("per_class_accuracy" not in row for row in saved.results["generators"].values())  # flat rows
    assert saved.results["checkpoint_minutes"] == 13.3
    assert all("per_class_accuracy" in row for row in inputs["rows"].values())  # the caller's rows are unchanged


def test_evaluation_results_are_byte_identical_to_what_chapter_6_wrote(tmp_path):
    inputs = _evaluation_inputs()
    before = build_results(
        PROFILE.name, "cpu", 100, inputs["floor"], inputs["scores"], umap_scores=inputs["umap"],
        floor_umap_name=FLOOR_NAME, seed=0, extra={"umap_real": 1000}, other_floors=inputs["other"],
    )
    old_path = write_results(before)  # chapter 6 wrote to the default path, results_path(profile)
    old_bytes = old_path.read_bytes()
    saved = save_results("evaluation", PROFILE, device="cpu", n_samples=100, floor=inputs["floor"],
                         generators=inputs["scores"], seed=0, umap_scores=inputs["umap"],
                         other_floors=inputs["other"], umap_real=1000)
    assert (tmp_path / "repo" / saved.path).resolve() == old_path.resolve() == report.results_path(PROFILE).resolve()
    assert old_path.read_bytes() == old_bytes and saved.results == before
    assert saved.results["floor"]["knn_accuracy_umap"] == pytest.approx(0.51)  # the floor's UMAP entry, moved
    assert saved.results["floor"]["nn_train_distance"] is None
    assert list(saved.results)[6] == "umap_real" and "floors" in saved.results


def test_the_returned_path_is_relative_to_the_repository_for_printing(tmp_path, monkeypatch):
    saved = _chapter_7_now(_guidance_inputs())
    assert isinstance(saved, tuple) and saved.path == Path("results", "smoke", "guidance.json")
    results, path = saved  # how a chapter takes it
    assert path == saved.path and not path.is_absolute()
    assert (tmp_path / "repo" / path).is_file()
    # results kept elsewhere ($MNISTDIFF_RESULTS_DIR outside the repository): the full path
    monkeypatch.setenv("MNISTDIFF_RESULTS_DIR", str(tmp_path / "elsewhere"))
    saved = save_results("guidance", "book", device="cpu", n_samples=100, floor=_guidance_inputs()["floor"],
                         generators=_guidance_inputs()["rows"])
    assert saved.path == tmp_path / "elsewhere" / "book" / "guidance.json" and saved.path.is_file()
    assert saved.results["profile"] == "book"  # a profile's name works as well as a profile


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous file intact and no temporary file behind."""
    inputs = _guidance_inputs()
    path = tmp_path / "repo" / _chapter_7_now(inputs).path
    previous = path.read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    inputs["recommended"] = 1.0
    with pytest.raises(FileWriteError, match="out of disk space"):
        _chapter_7_now(inputs)
    assert path.read_bytes() == previous
    assert [p.name for p in path.parent.iterdir()] == ["guidance.json"]


def test_bad_names_and_clashing_fields_are_refused():
    inputs = _guidance_inputs()
    for name in ("", "../guidance", "a/b", "."):
        with pytest.raises(ValueError, match="plain file stem"):
            save_results(name, PROFILE, device="cpu", n_samples=100, floor=inputs["floor"], generators=inputs["rows"])
    with pytest.raises(ValueError, match="per_class_accuracy"):
        save_results("guidance", PROFILE, device="cpu", n_samples=100, floor=inputs["floor"],
                     generators=inputs["rows"], per_class_accuracy={})


def test_course_times_of_a_partial_run_are_merged_with_each_chapters_cpu():
    from mnistdiff.course.runner import _merged

    intel, amd = "CPU: Intel", "CPU: AMD"
    previous = {"profile": "book", "device": intel, "notebooks": {"01_unet": 10.0, "02_ddpm": 20.0},
                "total_seconds": 30.0, "runs": "a note", "executed": {"02_ddpm": "2026-12-01"}}
    same = _merged(previous, {"profile": "book", "device": intel, "notebooks": {"02_ddpm": 25.0},
                              "total_seconds": 25.0, "executed": {"02_ddpm": "2026-12-02"}})
    assert same["notebooks"] == {"01_unet": 10.0, "02_ddpm": 25.0} and same["total_seconds"] == 35.0
    assert same["device"] == intel and "devices" not in same and same["runs"] == "a note"
    assert same["total_of"] == "a sum of 2 runs"  # 01 from one run, 02 from another: the total says so
    other = _merged(same, {"profile": "book", "device": amd, "notebooks": {"03_ddim": 5.0}, "total_seconds": 5.0,
                           "executed": {"03_ddim": "2026-12-02"}})
    assert other["devices"] == {"01_unet": intel, "02_ddpm": intel, "03_ddim": amd}
    assert other["device"] == f"{intel} (01, 02); {amd} (03)" and other["total_seconds"] == 40.0
    again = _merged(other, {"profile": "book", "device": amd, "notebooks": {"01_unet": 9.0}, "total_seconds": 9.0,
                            "executed": {"01_unet": "2026-12-03"}})
    assert again["devices"]["01_unet"] == amd and again["device"] == f"{amd} (01, 03); {intel} (02)"


def test_course_times_are_recorded_after_each_chapter(tmp_path):
    """A run stopped half-way keeps the times of the chapters it finished; a finished whole run replaces the record."""
    import json

    from mnistdiff.course.runner import _record_times

    path = tmp_path / "course_times.json"
    previous = {"profile": "book", "device": "CPU: X", "notebooks": {"01_unet": 10.0, "07_guidance": 70.0},
                "total_seconds": 80.0, "executed": {"01_unet": "a", "07_guidance": "a"}}
    _record_times(path, "book", {"01_unet": 12.0}, "b", previous)  # the first chapter of a run, which then stops
    partial = json.loads(path.read_text())
    assert partial["notebooks"] == {"01_unet": 12.0, "07_guidance": 70.0} and partial["total_of"] == "a sum of 2 runs"
    _record_times(path, "book", {"01_unet": 12.0, "07_guidance": 71.0}, "b", None)  # the whole run, finished
    whole = json.loads(path.read_text())
    assert whole["notebooks"] == {"01_unet": 12.0, "07_guidance": 71.0} and whole["total_of"] == "one run"
    assert whole["total_seconds"] == 83.0
