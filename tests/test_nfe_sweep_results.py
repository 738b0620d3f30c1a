"""Reading the NFE sweep back (``mnistdiff.evaluation.nfe_sweep``): curves as multiples of the floor, the table, the
fewest calls at equal quality, and the plot, on a small document written here by hand."""

from __future__ import annotations

import matplotlib
import pytest

from mnistdiff.evaluation.nfe_sweep import (
    best_per_nfe,
    compare_over_seeds,
    curve_label,
    equal_quality_table,
    fewest_calls,
    head_to_head,
    head_to_head_table,
    plot_sweep,
    reference_key,
    select,
    sweep_curves,
    sweep_report,
    sweep_table,
)

matplotlib.use("Agg")


def _row(model, sampler, eta, nfe, fid, fid_resnet):
    eta_key = "" if eta is None else f"-eta{eta:g}"
    return {"key": f"{model}:{sampler}{eta_key}:{nfe}", "model": model, "sampler": sampler, "eta": eta, "nfe": nfe,
            "steps": nfe, "samples_per_second": 100.0 / nfe, "fid": fid, "precision": 0.8, "recall": 0.9,
            "fid_resnet": fid_resnet, "precision_resnet": 0.7, "recall_resnet": 0.85}


DOC = {"n": 500, "floor": {"fid": 0.5, "fid_resnet": 0.25},
       "rows": [_row("ddpm", "ddim", 1.0, 50, 1.0, 1.0), _row("ddpm", "ddim", 1.0, 10, 3.0, 2.0),
                _row("ddpm", "dpmpp_2m", None, 10, 1.1, 1.3), _row("ddpm", "dpmpp_2m", None, 4, 2.0, 1.1),
                _row("flow", "euler", None, 8, 1.15, 1.0), _row("flow", "euler", None, 4, 1.5, 1.0)]}


def test_curves_are_fid_over_the_floor_by_calls():
    curves = sweep_curves(DOC, "resnet")
    assert curves["ddpm, DDIM η = 1"] == [(10, 8.0), (50, 4.0)]
    assert curves["ddpm, DPM-Solver++(2M)"] == [(4, 4.4), (10, 5.2)]
    assert sweep_curves(DOC, "classifier")["flow, Euler"] == [(4, 3.0), (8, 2.3)]


def test_a_solver_on_ddim_timesteps_is_its_own_curve():
    linspace = {**_row("ddpm", "dpmpp_2m", None, 10, 5.0, 5.0), "spacing": "linspace"}
    karras = {**_row("ddpm", "dpmpp_2m", None, 10, 1.1, 1.3), "spacing": "karras"}
    curves = sweep_curves({**DOC, "rows": [linspace, karras]}, "classifier")
    assert curves == {"ddpm, DPM-Solver++(2M) on DDIM's timesteps": [(10, 10.0)], "ddpm, DPM-Solver++(2M)": [(10, 2.2)]}


def test_fewest_calls_within_the_reference_in_both_spaces():
    # DPM++ at 4 calls is within 1.2× in the classifier's space (2.0 > 1.2: no); at 10, 1.1 and 1.3 > 1.2: no
    best = fewest_calls(DOC, "ddpm:ddim-eta1:50")
    assert {k: r and r["nfe"] for k, r in best.items()} == {"ddpm, DDIM η = 1": 50, "ddpm, DPM-Solver++(2M)": None,
                                                             "flow, Euler": 8}
    assert fewest_calls(DOC, "ddpm:ddim-eta1:50", within=1.3)["ddpm, DPM-Solver++(2M)"]["nfe"] == 10
    table = equal_quality_table(DOC, "ddpm:ddim-eta1:50").splitlines()
    ref = "`ddpm:ddim-eta1:50`"
    assert table[2:] == [f"| ddpm, DDIM η = 1 | {ref} | 50 | 2.0 |",
                         f"| ddpm, DPM-Solver++(2M) | {ref} | not within |  |", f"| flow, Euler | {ref} | 8 | 12.5 |"]
    with pytest.raises(KeyError, match="no row 'ddpm:heun:8'"):
        fewest_calls(DOC, "ddpm:heun:8")


def test_each_model_is_read_against_its_own_ddim_50_else_the_pixel_ddpms():
    # the LDM's own DDIM-50 (FID 2, 2) is the bar for its solver, not the pixel DDPM's (1, 1); the flow has none
    ldm = [_row("ldm", "ddim", 1.0, 50, 2.0, 2.0), _row("ldm", "dpmpp_2m", None, 10, 2.3, 2.2)]
    doc = {**DOC, "rows": DOC["rows"] + ldm}
    assert reference_key(doc, "ldm") == "ldm:ddim-eta1:50" and reference_key(doc, "flow") == "ddpm:ddim-eta1:50"
    best = fewest_calls(doc)
    assert best["ldm, DPM-Solver++(2M)"]["nfe"] == 10 and best["flow, Euler"]["nfe"] == 8
    assert fewest_calls(doc, "ddpm:ddim-eta1:50")["ldm, DPM-Solver++(2M)"] is None  # 2.3 > 1.2 × 1
    assert "| ldm, DPM-Solver++(2M) | `ldm:ddim-eta1:50` | 10 | 10.0 |" in equal_quality_table(doc).splitlines()
    no_reference = {**DOC, "rows": ldm[1:]}
    assert reference_key(no_reference, "ldm") is None and fewest_calls(no_reference) == {"ldm, DPM-Solver++(2M)": None}


def test_the_deterministic_ddim_50_is_a_second_reference():
    # η = 0 rows: the LDM's own (FID 3, 3) and the pixel DDPM's (4, 4), the flow read against the DDPM's
    eta0 = [_row("ldm", "ddim", 0.0, 50, 3.0, 3.0), _row("ldm", "dpmpp_2m", None, 10, 2.3, 2.2),
            _row("ddpm", "ddim", 0.0, 50, 4.0, 4.0)]
    doc = {**DOC, "rows": DOC["rows"] + eta0}
    assert reference_key(doc, "ldm", eta=0.0) == "ldm:ddim-eta0:50"
    assert reference_key(doc, "flow", eta=0.0) == "ddpm:ddim-eta0:50" and reference_key(DOC, "ldm", eta=0.0) is None
    best = fewest_calls(doc, eta=0.0)
    assert best["ldm, DPM-Solver++(2M)"]["nfe"] == 10 and best["ddpm, DPM-Solver++(2M)"]["nfe"] == 4  # 2.0 < 4.8
    assert fewest_calls(doc)["ddpm, DPM-Solver++(2M)"] is None  # against η = 1 (FID 1, 1): not within
    assert "| ldm, DPM-Solver++(2M) | `ldm:ddim-eta0:50` | 10 | 10.0 |" in equal_quality_table(doc, eta=0.0)
    _, text = sweep_report({**doc, "device": "CPU: X", "date": "2026-12-04"})
    assert text.endswith("deterministic DDIM-50 (η = 0):\n\n" + equal_quality_table(doc, eta=0.0))


def test_speed_not_timed_is_said_not_invented():
    untimed = {**DOC, "rows": [{k: v for k, v in r.items() if k != "samples_per_second"} for r in DOC["rows"]]}
    assert sweep_table(untimed).splitlines()[2].startswith("| ddpm, DDIM η = 1 | 50 | not measured | 1 (2.0×)")


def test_table_has_a_row_per_measurement_with_floor_multiples():
    table = sweep_table(DOC).splitlines()
    assert len(table) == 2 + len(DOC["rows"])
    assert table[2].startswith("| ddpm, DDIM η = 1 | 50 | 2.0 | 1 (2.0×) | 0.800 | 0.900 | 1 (4.0×) | 0.700 | 0.850 |")


def test_plot_draws_each_curve_in_each_space_with_floor_and_target():
    fig = plot_sweep(DOC)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.get_lines()) == 3 + 2  # three curves, the floor and the target
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert curve_label(DOC["rows"][0]) in [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]


def test_the_chapters_report_is_the_plot_and_table_or_says_not_measured():
    from mnistdiff.evaluation.nfe_sweep import NOT_MEASURED, sweep_report

    assert sweep_report(None) == (None, NOT_MEASURED)  # not measured: book_result gives None (test_measured.py)
    fig, text = sweep_report({**DOC, "device": "CPU: X", "date": "2026-12-03"})
    assert len(fig.axes) == 2 and text.startswith("Quality measured on CPU: X (2026-12-03), n = 500, seed 0; speed not")
    assert sweep_table(DOC) in text and text.endswith(equal_quality_table(DOC, "ddpm:ddim-eta1:50"))
    later = {**DOC["rows"][0], "key": "ddpm:ddim-eta1:10", "device": "CPU: Y", "date": "2026-12-04"}
    _, text = sweep_report({**DOC, "device": "CPU: Y", "date": "2026-12-04",  # rows scored on two machines
                            "rows": [{**r, "device": "CPU: X", "date": "2026-12-03"} for r in DOC["rows"]] + [later]})
    assert text.startswith("Quality measured on CPU: X (2026-12-03) and CPU: Y (2026-12-04), n = 500")
    speed = {"device": "CPU: Y", "date": "2026-12-04", "n": 256}
    _, text = sweep_report({**DOC, "device": "CPU: X", "date": "2026-12-03", "speed": speed})
    assert "speed timed in one run on CPU: Y (2026-12-04), 256 samples per configuration." in text


def test_best_per_nfe_takes_the_row_whose_worse_space_is_best():
    # worse-space ratios (classifier floor 0.5, ResNet 0.25): DDIM-10 η = 1 8.0, DPM++ at 10 5.2, DPM++ at 4 4.4
    best = best_per_nfe(DOC, "ddpm")
    assert {nfe: r["key"] for nfe, r in best.items()} == {4: "ddpm:dpmpp_2m:4", 10: "ddpm:dpmpp_2m:10",
                                                         50: "ddpm:ddim-eta1:50"}
    assert list(best_per_nfe(DOC, "ddpm", ["DDIM η = 1"])) == [10, 50]
    assert [r["key"] for r in select(DOC, ["flow"])["rows"]] == ["flow:euler:8", "flow:euler:4"]


def test_head_to_head_says_who_is_ahead_in_both_spaces_or_split():
    # at 4 calls: flow Euler (3.0×, 4.0×) against DDPM DPM++ (4.0×, 4.4×): the flow, in both spaces; at 10: flow
    # Euler (2.0×, 6.0×) against DPM++ (2.2×, 5.2×): ahead in one space each
    doc = {**DOC, "rows": DOC["rows"] + [_row("flow", "euler", None, 10, 1.0, 1.5)]}
    assert [(h["nfe"], h["ahead"]) for h in head_to_head(doc, ("flow", None), ("ddpm", None))] == [
        (4, "flow"), (10, "split")]  # no other NFE has both
    lines = head_to_head_table(doc, ("flow", None), ("ddpm", None)).splitlines()
    assert lines[2:] == ["| 4 | Euler | DPM-Solver++(2M) | 3.0× vs 4.0× | 4.0× vs 4.4× | flow |",
                         "| 10 | Euler | DPM-Solver++(2M) | 2.0× vs 2.2× | 6.0× vs 5.2× | split |"]
    assert lines[1].count("---") == len(lines[2].split(" | "))
    only_eta1 = head_to_head(doc, ("flow", None), ("ddpm", ["DDIM η = 1"]))
    assert [(h["nfe"], h["ahead"], h["rows"][1]["key"]) for h in only_eta1] == [(10, "flow", "ddpm:ddim-eta1:10")]


def test_karras_table_marks_the_packages_pair_and_says_not_measured():
    from mnistdiff.evaluation.nfe_sweep import karras_table

    row = {"model": "ddpm", "sampler": "dpmpp_2m_sde", "nfe": 10, "fid_resnet": 0.5}
    doc = {"n": 500, "device": "cpu X", "date": "2026-12-04", "package_sigma_max": {"ddpm": 20.0},
           "package_sigma_min": 0.2, "floor": DOC["floor"],
           "rows": [{**row, "sigma_max": 80.0, "sigma_min": 0.2, "fid": 2.0},
                    {**row, "sigma_max": 20.0, "sigma_min": 0.2, "fid": 1.0},
                    {**row, "sigma_max": 20.0, "sigma_min": 0.0064, "fid": 3.0}]}
    lines = karras_table(doc).splitlines()
    assert lines[0].startswith("n = 500, seed 0, on cpu X")
    assert lines[-3:] == ["| ddpm, DPM-Solver++(2M) SDE, 10 | 20 | 0.0064 | 3 (6.0×) | 0.5 (2.0×) |",
                          "| ddpm, DPM-Solver++(2M) SDE, 10 | 20 | 0.2 (the package's) | 1 (2.0×) | 0.5 (2.0×) |",
                          "| ddpm, DPM-Solver++(2M) SDE, 10 | 80 | 0.2 | 2 (4.0×) | 0.5 (2.0×) |"]
    assert "Not measured yet" in karras_table(None)


def _spread(values: dict[int, float]) -> dict:
    return {"draws": [{"seed": s, "fid": v, "fid_resnet": 2 * v} for s, v in values.items()]}


def test_compare_over_seeds_pairs_the_seeds_and_names_a_lead_a_tie_or_a_lag():
    import numpy as np

    ref = _spread({0: 0.50, 1: 0.40, 2: 0.60})
    # per-seed differences +0.02, +0.10, −0.06: mean 0.02, standard error (numpy's sample std / √3) above it: level
    ours = _spread({0: 0.52, 1: 0.50, 2: 0.54})
    d = np.array([0.02, 0.10, -0.06])
    got = compare_over_seeds(ours, ref)
    assert got["diff"] == pytest.approx(d.mean()) and got["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert got["ratio"] == pytest.approx(np.mean([0.52, 0.50, 0.54]) / 0.5) and got["verdict"] == "level"
    assert compare_over_seeds(ours, ref, "fid_resnet")["diff"] == pytest.approx(2 * d.mean())
    assert compare_over_seeds(_spread({0: 0.6, 1: 0.5, 2: 0.7}), ref)["verdict"] == "behind"  # +0.1 every seed
    assert compare_over_seeds(_spread({0: 0.45, 1: 0.41, 2: 0.58}), ref)["verdict"] == "ahead"
    assert compare_over_seeds(_spread({2: 0.6, 0: 0.5, 1: 0.4}), ref)["diff"] == 0  # paired by seed, not by order
    with pytest.raises(ValueError, match="not drawn from the same seeds"):
        compare_over_seeds(_spread({0: 0.5, 1: 0.4}), ref)
