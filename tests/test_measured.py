"""What chapters quote from ``results/book/`` (``mnistdiff.course.measured``), on hand-written files in a temporary
results directory: the numbers come through, and an absent file reads "not measured yet"."""

from __future__ import annotations

import json
import math

import pytest

from mnistdiff.course.measured import (
    NOT_MEASURED,
    autoguided_spreads,
    book_result,
    guidance_label,
    interval_label,
    paired_spreads,
    paired_spreads_table,
    seed_difference,
    time_to_quality_table,
)

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


def _spread(sha: str, draws: dict[int, tuple[float, float]], guide: str | None = None, w: float = 2.0,
            interval: list | None = None) -> dict:
    """A seed-spread file: seed → (classifier FID, ResNet FID); precision and recall 0.8 / 0.9, floors 0.2 / 0.1;
    with a ``guide``, its weight ``w`` and ``interval`` as ``seed_spread.py`` records them."""
    def row(seed: int, fid: float, fid_resnet: float) -> dict:
        return {"seed": seed, "fid": fid, "fid_resnet": fid_resnet, "precision": 0.8, "recall": 0.9,
                "precision_resnet": 0.8, "recall_resnet": 0.9}
    sampling = {"sampler": "ddim"} | ({"guide": {"weights_sha256": guide}, "guidance": w} if guide else {})
    if interval is not None:
        sampling["guidance_interval"] = interval
    return {"n": 2000, "model": {"weights_sha256": sha}, "sampling": sampling,
            "draws": [row(s, *fids) for s, fids in draws.items()],
            "floors": [row(s, 0.2, 0.1) for s in draws]}


def test_paired_spreads_compare_the_common_seeds(tmp_path, monkeypatch):
    base = _spread("m", {0: (0.6, 0.3), 1: (0.4, 0.5), 2: (9.0, 9.0)})
    guided = _spread("m", {0: (0.3, 0.4), 1: (0.2, 0.3)}, guide="g")
    _results(tmp_path, monkeypatch, {"base.json": base, "guided.json": guided})
    got = paired_spreads({"plain": "base.json", "guided": "guided.json"}, "m", "g")
    assert got["seeds"] == [0, 1] and got["n"] == 2000  # seed 2 is the baseline's alone
    plain, ours = got["rows"]["plain"], got["rows"]["guided"]
    assert abs(plain["fid"] - 0.5) < 1e-12 and abs(plain["fid_resnet"] - 0.4) < 1e-12
    assert abs(ours["fid"] - 0.25) < 1e-12 and abs(ours["fid_resnet"] - 0.35) < 1e-12
    assert (ours["lower_fid"], ours["lower_fid_resnet"], plain["lower_fid"]) == (2, 1, 0)
    assert abs(ours["floor_fid"] - 0.2) < 1e-12 and ours["recall_resnet"] == 0.9
    assert abs(ours["worst_fid"] - 1.5) < 1e-12 and abs(plain["worst_fid_resnet"] - 5.0) < 1e-12  # 0.3/0.2, 0.5/0.1


def test_paired_spreads_refuse_other_weights(tmp_path, monkeypatch):
    _results(tmp_path, monkeypatch, {"base.json": _spread("m", {0: (1.0, 1.0)}),
                                     "guided.json": _spread("m", {0: (1.0, 1.0)}, guide="g")})
    files = {"plain": "base.json", "guided": "guided.json"}
    assert paired_spreads(files, "other", "g") is None  # another model
    assert paired_spreads(files, "m", "another guide") is None
    assert paired_spreads({**files, "absent": "none.json"}, "m", "g") is None
    assert paired_spreads(files, "m", "g") is not None
    (tmp_path / "other_n").mkdir()
    _results(tmp_path / "other_n", monkeypatch, {"base.json": _spread("m", {0: (1.0, 1.0)}),
                                                 "guided.json": {**_spread("m", {0: (1.0, 1.0)}, guide="g"), "n": 500}})
    with pytest.raises(ValueError, match="different n"):
        paired_spreads(files, "m", "g")


def test_a_seed_difference_is_level_where_two_standard_errors_cover_zero(tmp_path, monkeypatch):
    import statistics

    base = _spread("m", {0: (0.50, 0.30), 1: (0.40, 0.20), 2: (0.45, 0.25)})
    near = _spread("m", {0: (0.49, 0.20), 1: (0.42, 0.11), 2: (0.44, 0.14)}, guide="g")
    _results(tmp_path, monkeypatch, {"base.json": base, "near.json": near})
    paired = paired_spreads({"plain": "base.json", "near": "near.json"}, "m", "g")
    assert paired["rows"]["near"]["seeds_fid"] == [0.49, 0.42, 0.44]
    cl, res = (seed_difference(paired, "near", "plain", k) for k in ("fid", "fid_resnet"))
    diffs = [-0.01, 0.02, -0.01]  # classifier: 0.49 - 0.50, 0.42 - 0.40, 0.44 - 0.45
    assert cl["mean"] == pytest.approx(statistics.mean(diffs))
    assert cl["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert (cl["lower"], cl["seeds"], cl["word"]) == (2, 3, "level")
    assert res["mean"] == pytest.approx(-0.1) and res["word"] == "lower" and res["lower"] == 3
    assert seed_difference(paired, "plain", "near", "fid_resnet")["word"] == "higher"


def test_the_paired_table_puts_each_fid_over_its_floor(tmp_path, monkeypatch):
    _results(tmp_path, monkeypatch, {"base.json": _spread("m", {0: (0.6, 0.3), 1: (0.4, 0.5)}),
                                     "guided.json": _spread("m", {0: (0.3, 0.4), 1: (0.2, 0.3)}, guide="g")})
    lines = paired_spreads_table(paired_spreads({"plain": "base.json", "w = 2": "guided.json"}, "m", "g")).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| sampler | classifier FID (× floor) | precision | recall | ResNet FID")
    assert lines[2] == "| plain | 0.500 (2.50×) | 0.800 | 0.900 | 0.400 (4.00×) | 0.800 | 0.900 |"
    assert lines[3] == ("| w = 2 | 0.250 (1.25×, lower at 2 of 2) | 0.800 | 0.900 | "
                        "0.350 (3.50×, lower at 1 of 2) | 0.800 | 0.900 |")


def test_guidance_labels_name_the_weight_and_the_interval():
    assert guidance_label({"sampler": "ddim"}) == "unguided"
    guided = {"guide": {"weights_sha256": "g"}, "guidance": 1.5}
    assert guidance_label(guided) == "autoguided, w = 1.5"
    assert guidance_label({**guided, "guidance_interval": [0.33, None]}) == "autoguided, w = 1.5, σ > 0.33"
    assert guidance_label({**guided, "guidance_interval": [0.3, 5.0]}) == "autoguided, w = 1.5, 0.3 < σ ≤ 5"
    assert guidance_label({**guided, "guidance_interval": [0.0, None]}) == "autoguided, w = 1.5"


def test_an_interval_reads_alike_as_the_package_takes_it_and_as_a_record_holds_it():
    assert interval_label(None) is None and interval_label((0.0, math.inf)) is None
    assert interval_label([0, None]) is None
    assert interval_label((0.33, math.inf)) == interval_label([0.33, None]) == "σ > 0.33"
    assert interval_label((0.3, 5.0)) == interval_label([0.3, 5.0]) == "0.3 < σ ≤ 5"
    assert interval_label((0.0, 5.0)) == "0 < σ ≤ 5"


def test_autoguided_spreads_gather_every_guided_file_of_these_models_and_sampler(tmp_path, monkeypatch):
    seeds = {0: (0.6, 0.3), 1: (0.4, 0.5)}
    _results(tmp_path, monkeypatch, {
        "seed_spread_ddpm.json": _spread("m", seeds),
        "seed_spread_ddpm_autoguided_w150_sigma033_ddim_50.json": _spread("m", {0: (0.2, 0.1), 1: (0.2, 0.1)}, "g",
                                                                          1.5, [0.33, None]),
        "seed_spread_ddpm_autoguided_w150_ddim_50.json": _spread("m", {0: (0.3, 0.2), 1: (0.3, 0.2)}, "g", 1.5),
        "seed_spread_ddpm_autoguided_w125_ddim_50.json": _spread("m", {0: (0.4, 0.3), 1: (0.4, 0.3)}, "g", 1.25),
        "seed_spread_ddpm_autoguided_w200_ddim_50.json": _spread("m", seeds, "another guide", 2.0),
        "seed_spread_ddpm_autoguided_w125_dpmpp_2m_sde_16.json": _spread("m", seeds, "g", 1.25),
    })
    got = autoguided_spreads("seed_spread_ddpm.json", "ddpm", "ddim_50", "m", "g")
    assert list(got["rows"]) == ["unguided", "autoguided, w = 1.25", "autoguided, w = 1.5",
                                 "autoguided, w = 1.5, σ > 0.33"]
    assert [round(r["fid"], 6) for r in got["rows"].values()] == [0.5, 0.4, 0.3, 0.2]
    assert got["rows"]["autoguided, w = 1.5, σ > 0.33"]["lower_fid_resnet"] == 2
    assert autoguided_spreads("seed_spread_ddpm.json", "ddpm", "ddim_50", "m", "no such guide") is None
    assert autoguided_spreads("seed_spread_ddpm.json", "ddpm", "ddim_50", "other model", "g") is None
    assert autoguided_spreads("absent.json", "ddpm", "ddim_50", "m", "g") is None
