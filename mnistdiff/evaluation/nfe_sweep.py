"""Quality against network calls (chapters 8 and 9): what ``benchmarks/nfe_sweep.py`` measured, read back as curves,
one plot and one table.

The sweep's file (``results/<profile>/nfe_sweep.json``) holds one row per model, sampler and number of network calls
per sample (NFE): FID, precision and recall in each feature space, the real-vs-real floor at the same n, and the
samples per second that its speed pass timed, all configurations in one run (``speed``: the CPU, date and n). Each
FID is shown as a multiple of its space's floor, so the two spaces share one scale and 1 is the best an n-sample
estimate can say.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from mnistdiff.evaluation.classifier import FEATURE_SPACES
from mnistdiff.evaluation.metrics import space_key

__all__ = ["SAMPLER_NAMES", "sampler_label", "NOT_MEASURED", "REFERENCE", "sweep_report", "curve_label", "sweep_curves",
           "plot_sweep", "sweep_table", "reference_key", "fewest_calls", "equal_quality_table", "select",
           "best_per_nfe", "head_to_head", "head_to_head_table", "karras_table", "compare_over_seeds",
           "paired_difference"]

#: How the book names each sampler.
SAMPLER_NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "dpmpp_2m_sde": "DPM-Solver++(2M) SDE", "heun": "Heun",
                 "euler": "Euler"}


def sampler_label(sampler: str, steps: int, eta: float | None = None) -> str:
    """``"DPM-Solver++(2M) SDE, 16 steps"``, ``"DDIM, 50 steps, η = 1"``: a sampler as the book names it."""
    return f"{SAMPLER_NAMES.get(sampler, sampler)}, {steps} steps" + ("" if eta is None else f", η = {eta:g}")


#: What a chapter says where the book's sweep has not been measured.
NOT_MEASURED = ("*Not measured yet:* `python benchmarks/nfe_sweep.py --model checkpoints/book/ddpm.safetensors "
                "--model checkpoints/book/flow.safetensors --model checkpoints/book/ldm.safetensors --vae "
                "checkpoints/book/vae.safetensors --n 2000` writes `results/book/nfe_sweep.json`.")


#: The row a pixel model is compared with at equal quality: the pixel DDPM at DDIM-50 with η = 1, the course's
#: sampler before chapter 9. A model with its own DDIM-50 η = 1 row (the LDM) is compared with that instead.
REFERENCE = "ddpm:ddim-eta1:50"


def sweep_report(doc: Mapping[str, Any] | None) -> tuple[Any, str]:
    """What a chapter shows of the sweep ``doc`` (``mnistdiff.course.measured.book_result("nfe_sweep.json")``):
    ``(figure, Markdown)``, the plot and the table under a line naming the CPU, date and n, then each curve's fewest
    calls and speed at its reference's quality (:func:`reference_key`); ``(None, NOT_MEASURED)`` where it is not
    measured (``None``)."""
    if doc is None:
        return None, NOT_MEASURED
    runs = dict.fromkeys((r.get("device", doc["device"]), r.get("date", doc["date"])) for r in doc["rows"])
    where = " and ".join(f"{device} ({date})" for device, date in runs)
    text = f"Quality measured on {where}, n = {doc['n']:,}, seed 0; " + _speed_line(doc)
    text += "\n\n" + sweep_table(doc)
    if any(reference_key(doc, r["model"]) for r in doc["rows"]):
        text += "\n\nAt equal quality, against the course's DDIM-50 (η = 1):\n\n" + equal_quality_table(doc)
    if any(reference_key(doc, r["model"], eta=0.0) for r in doc["rows"]):
        text += ("\n\nAnd against Song et al.'s deterministic DDIM-50 (η = 0):\n\n"
                 + equal_quality_table(doc, eta=0.0))
    return plot_sweep(doc), text


def _speed_line(doc: Mapping[str, Any]) -> str:
    sp = doc.get("speed")
    if not sp:
        return "speed not measured (`benchmarks/nfe_sweep.py --speed`)."
    return f"speed timed in one run on {sp['device']} ({sp['date']}), {sp['n']:,} samples per configuration."


def select(doc: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """``doc`` with only the rows of ``models`` (e.g. chapter 8's ``("ddpm", "flow")``)."""
    return {**doc, "rows": [r for r in doc["rows"] if r["model"] in models]}


def best_per_nfe(doc: Mapping[str, Any], model: str, samplers: Sequence[str] | None = None
                 ) -> dict[int, Mapping[str, Any]]:
    """``{nfe: row}``: at each NFE, ``model``'s row (among ``samplers``, a curve label's sampler part such as
    ``"DDIM η = 0"``; ``None``: all) with the smallest FID / floor, the larger of its two spaces' ratios."""
    best: dict[int, Mapping[str, Any]] = {}
    for row in doc["rows"]:
        if row["model"] != model or (samplers is not None and _sampler_label(row) not in samplers):
            continue
        if row["nfe"] not in best or _worst_ratio(doc, row) < _worst_ratio(doc, best[row["nfe"]]):
            best[row["nfe"]] = row
    return dict(sorted(best.items()))


def _sampler_label(row: Mapping[str, Any]) -> str:
    return curve_label(row).split(", ", 1)[1]


def _worst_ratio(doc: Mapping[str, Any], row: Mapping[str, Any]) -> float:
    return max(float(row[space_key("fid", s)]) / float(doc["floor"][space_key("fid", s)]) for s in FEATURE_SPACES)


def head_to_head(doc: Mapping[str, Any], a: tuple[str, Sequence[str] | None],
                 b: tuple[str, Sequence[str] | None]) -> list[dict[str, Any]]:
    """At each NFE both models were measured at, the best row of each (:func:`best_per_nfe`; ``a``, ``b``:
    ``(model, samplers)``): ``{"nfe", "rows": (row a, row b), "ratios": (FID / floor per space of a, of b),
    "ahead": a's model, b's, or "split" (each ahead in one space)}``."""
    best_a, best_b = best_per_nfe(doc, *a), best_per_nfe(doc, *b)
    out = []
    for nfe in sorted(set(best_a) & set(best_b)):
        rows = (best_a[nfe], best_b[nfe])
        ra, rb = ([float(r[space_key("fid", s)]) / float(doc["floor"][space_key("fid", s)]) for s in FEATURE_SPACES]
                  for r in rows)
        ahead = a[0] if all(x < y for x, y in zip(ra, rb)) else b[0] if all(y < x for x, y in zip(ra, rb)) else "split"
        out.append({"nfe": nfe, "rows": rows, "ratios": (ra, rb), "ahead": ahead})
    return out


def head_to_head_table(doc: Mapping[str, Any], a: tuple[str, Sequence[str] | None],
                       b: tuple[str, Sequence[str] | None]) -> str:
    """:func:`head_to_head` as Markdown: NFE, each model's best sampler, FID / floor of both per space, who is
    ahead in both spaces."""
    spaces = list(FEATURE_SPACES)
    lines = [f"| NFE | best {a[0]} | best {b[0]} | " + " | ".join(f"{s}: {a[0]} vs {b[0]}" for s in spaces)
             + " | ahead in both spaces |", "|" + " --- |" * (4 + len(spaces))]
    for h in head_to_head(doc, a, b):
        cells = [f"{x:.1f}× vs {y:.1f}×" for x, y in zip(*h["ratios"])]
        lines.append(f"| {h['nfe']} | {_sampler_label(h['rows'][0])} | {_sampler_label(h['rows'][1])} | "
                     + " | ".join(cells) + f" | {h['ahead']} |")
    return "\n".join(lines)


def curve_label(row: Mapping[str, Any]) -> str:
    """``"ddpm, DDIM η = 0"``: the model and its sampler (η where it has one; ``" on DDIM's timesteps"`` where a
    solver ran there instead of on its default Karras σ)."""
    name = SAMPLER_NAMES.get(row["sampler"], row["sampler"])
    eta = "" if row.get("eta") is None else f" η = {row['eta']:g}"
    spacing = " on DDIM's timesteps" if row.get("spacing") == "linspace" else ""
    return f"{row['model']}, {name}{eta}{spacing}"


def sweep_curves(doc: Mapping[str, Any], space: str) -> dict[str, list[tuple[int, float]]]:
    """Per model and sampler, ``[(nfe, FID / floor), …]`` by NFE, in feature ``space``."""
    key = space_key("fid", space)
    floor = float(doc["floor"][key])
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in doc["rows"]:
        curves.setdefault(curve_label(row), []).append((int(row["nfe"]), float(row[key]) / floor))
    return {label: sorted(points) for label, points in curves.items()}


def plot_sweep(doc: Mapping[str, Any], target: float = 2.0) -> Any:
    """One panel per feature space: FID as a multiple of the floor (log) against network calls per sample (log 2),
    one line per model and sampler; the floor (1×) and ``target`` drawn. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    spaces = list(FEATURE_SPACES)
    fig, axes = plt.subplots(1, len(spaces), figsize=(5.2 * len(spaces), 3.8), sharey=True)
    for ax, space in zip(axes, spaces):
        for label, points in sweep_curves(doc, space).items():
            nfe, ratio = zip(*points)
            ax.plot(nfe, ratio, marker="o", ms=3.5, label=label, ls="--" if label.startswith("flow") else "-")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("network calls per sample")
        ax.set_title(f"{space} features (n = {doc['n']:,}; floor = 1, {target:g}× dotted)")
    axes[0].set_ylabel("FID / real floor")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def sweep_table(doc: Mapping[str, Any]) -> str:
    """Every row as a Markdown table: model and sampler, NFE, samples/s, then FID (× floor), P and R per space."""
    spaces = list(FEATURE_SPACES)
    head = ["model, sampler", "NFE", "samples/s"] + [f"{s} {m}" for s in spaces for m in ("FID (× floor)", "P", "R")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in doc["rows"]:
        cells = [curve_label(row), str(row["nfe"]), _speed(row)]
        for s in spaces:
            fid, floor = row[space_key("fid", s)], doc["floor"][space_key("fid", s)]
            cells += [f"{fid:.3g} ({fid / floor:.1f}×)", f"{row[space_key('precision', s)]:.3f}",
                      f"{row[space_key('recall', s)]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speed(row: Mapping[str, Any]) -> str:
    return f"{row['samples_per_second']:.1f}" if "samples_per_second" in row else "not measured"


def reference_key(doc: Mapping[str, Any], model: str, eta: float = 1.0) -> str | None:
    """The row ``model``'s curves are compared with at equal quality: its own DDIM-50 row at ``eta`` where the sweep
    has one, else the pixel DDPM's (:data:`REFERENCE` at η = 1: a flow is read against the DDPM of the same pixels);
    ``None`` if neither is there."""
    keys = {r["key"] for r in doc["rows"]}
    own, pixel = (f"{m}:ddim-eta{eta:g}:50" for m in (model, REFERENCE.split(":")[0]))
    return own if own in keys else pixel if pixel in keys else None


def fewest_calls(doc: Mapping[str, Any], reference: str | None = None, within: float = 1.2,
                 eta: float = 1.0) -> dict[str, Mapping[str, Any] | None]:
    """For each curve, its row with the fewest network calls whose FID is within ``within`` × the FID of the
    reference row in every feature space (``reference``: a row's ``key``, e.g. ``"ddpm:ddim-eta1:50"``; ``None``:
    each model's :func:`reference_key` at ``eta``), so that its NFE and samples per second are read at equal
    quality; ``None`` where no row of the curve is (or the curve has no reference)."""
    if reference is not None and not any(r["key"] == reference for r in doc["rows"]):
        raise KeyError(f"no row {reference!r} in the sweep (its rows: {', '.join(r['key'] for r in doc['rows'])})")
    by_key = {r["key"]: r for r in doc["rows"]}
    keys = [space_key("fid", s) for s in FEATURE_SPACES]
    best: dict[str, Mapping[str, Any] | None] = dict.fromkeys(curve_label(r) for r in doc["rows"])  # the file's order
    for row in sorted(doc["rows"], key=lambda r: r["nfe"]):
        label = curve_label(row)
        ref = by_key.get(reference or reference_key(doc, row["model"], eta) or "")
        if best.get(label) is None and ref is not None:
            best[label] = row if all(row[k] <= within * ref[k] for k in keys) else None
    return best


def equal_quality_table(doc: Mapping[str, Any], reference: str | None = None, within: float = 1.2,
                        eta: float = 1.0) -> str:
    """Markdown: each curve's fewest network calls within ``within`` × its reference's FID in both spaces
    (:func:`fewest_calls`; the reference at ``eta`` unless given), and its samples per second there (timed in one
    run, on one CPU)."""
    head = f"| model, sampler | compared with | fewest calls within {within:g}× its FID (both spaces) | samples/s |"
    lines = [head, "| --- | --- | --- | --- |"]
    models = {curve_label(r): r["model"] for r in doc["rows"]}
    for label, row in fewest_calls(doc, reference, within, eta).items():
        ref = reference or reference_key(doc, models[label], eta) or "none"
        calls, speed = (str(row["nfe"]), _speed(row)) if row else ("not within", "")
        lines.append(f"| {label} | `{ref}` | {calls} | {speed} |")
    return "\n".join(lines)


def karras_table(doc: Mapping[str, Any] | None) -> str:
    """What ``benchmarks/karras_sigmas.py`` measured (``results/<profile>/karras_sigmas.json``) as Markdown: per
    model, solver and calls, FID (× floor) in each space for each σ_max the spacing started from and σ_min it ended
    at, the package's pair for the kind marked; a sentence that says it is not measured where ``doc`` is ``None``."""
    if doc is None:
        return ("*Not measured yet:* `python benchmarks/karras_sigmas.py --model checkpoints/book/ddpm.safetensors` "
                "writes `results/book/karras_sigmas.json`.")
    spaces = list(FEATURE_SPACES)
    lines = ["| model, sampler, calls | σ_max | σ_min | " + " | ".join(f"{s} FID (× floor)" for s in spaces) + " |",
             "|" + " --- |" * (3 + len(spaces))]
    for row in sorted(doc["rows"], key=lambda r: (r["model"], r["sampler"], r["nfe"], r["sigma_max"], r["sigma_min"])):
        package = (doc["package_sigma_max"].get(row["model"]), doc["package_sigma_min"])  # σ_max: the model kind's
        mark = " (the package's)" if (row["sigma_max"], row["sigma_min"]) == package else ""
        cells = [f"{row[space_key('fid', s)]:.3g} ({row[space_key('fid', s)] / doc['floor'][space_key('fid', s)]:.1f}×)"
                 for s in spaces]
        name = SAMPLER_NAMES.get(row["sampler"], row["sampler"])
        lines.append(f"| {row['model']}, {name}, {row['nfe']} | {row['sigma_max']:g} | {row['sigma_min']:.2g}{mark} | "
                     + " | ".join(cells) + " |")
    return f"n = {doc['n']:,}, seed 0, on {doc['device']} ({doc['date']}).\n\n" + "\n".join(lines)


def compare_over_seeds(ours: Mapping[str, Any], ref: Mapping[str, Any], key: str = "fid") -> dict[str, Any]:
    """Two ``benchmarks/seed_spread.py`` files drawn from the same seeds, compared in the FID ``key`` (``"fid"``,
    ``"fid_resnet"``): the ratio of their means, the mean of the per-seed differences (ours − ref) and its standard
    error, and a verdict: ``"ahead"`` (mean difference ≤ 0), ``"level"`` (above 0 by at most one standard error: the
    seeds cannot tell the two apart) or ``"behind"``. Raises ``ValueError`` if the seeds differ."""
    a, b = ({d["seed"]: d[key] for d in doc["draws"]} for doc in (ours, ref))
    if sorted(a) != sorted(b):
        raise ValueError(f"not drawn from the same seeds: {sorted(a)} and {sorted(b)} (draw the rest: seed_spread.py)")
    d = paired_difference([a[s] for s in sorted(a)], [b[s] for s in sorted(a)])
    verdict = "ahead" if d["mean"] <= 0 else "level" if d["mean"] <= d["se"] else "behind"
    return {"ratio": statistics.fmean(a.values()) / statistics.fmean(b.values()), "diff": d["mean"], "se": d["se"],
            "verdict": verdict}


def paired_difference(ours: Sequence[float], ref: Sequence[float]) -> dict[str, Any]:
    """Two scores drawn at the same seeds, in the same order, compared seed by seed: ``{"mean"`` (of ours − ref),
    ``"se"`` (its standard error, sd/√n; inf for one seed), ``"lower"`` (seeds where ours is lower), ``"seeds"}``."""
    diffs = [x - y for x, y in zip(ours, ref, strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return {"mean": statistics.fmean(diffs), "se": se, "lower": sum(x < 0 for x in diffs), "seeds": len(diffs)}
