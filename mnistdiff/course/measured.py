"""What the book quotes from its measurement files (``results/book/*.json``), so that a chapter reads one name.

Benchmarks and evaluation scripts write those files (each names its CPU and date); a chapter shows them through
these functions instead of assembling paths and schemas itself, and says "not measured yet" where a file is absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mnistdiff.evaluation.nfe_sweep import paired_difference
from mnistdiff.evaluation.report import results_dir

__all__ = ["book_result", "paired_spreads", "paired_spreads_table", "autoguided_spreads", "guidance_label",
           "interval_label", "seed_difference", "time_to_quality_table", "not_measured", "NOT_MEASURED"]


def not_measured(script: str) -> str:
    """What a page says where ``benchmarks/<script>.py`` has not written its file yet."""
    return f"*Not measured yet* (`benchmarks/{script}.py` writes it)."


NOT_MEASURED = not_measured("time_to_quality")


def book_result(name: str) -> dict[str, Any] | None:
    """The measured document ``results/book/<name>`` (a JSON file), or ``None`` where it is not measured yet."""
    path = results_dir() / "book" / name
    return json.loads(path.read_text()) if path.is_file() else None


def time_to_quality_table(files: Mapping[str, str], model: str = "model") -> str:
    """A Markdown table of the last snapshot of each ``benchmarks/time_to_quality.py`` file (label → file name in
    ``results/book/``): training minutes and FID over its real floor at the same n, in both feature spaces."""
    rows = []
    for label, name in files.items():
        doc = book_result(name)
        if doc is not None:
            last, floor = doc["snapshots"][-1], doc["floor"]
            rows.append(f"| {label} | {last['training_seconds'] / 60:.1f} | {doc['n']:,} | "
                        f"{last['fid']:.3f} ({last['fid'] / floor['fid']:.2f}×) | "
                        f"{last['fid_resnet']:.3f} ({last['fid_resnet'] / floor['fid_resnet']:.2f}×) |")
    if not rows:
        return NOT_MEASURED
    head = (f"| {model} | training min | n | classifier FID (× floor) | ResNet FID (× floor) |\n"
            "| --- | --- | --- | --- | --- |\n")
    return head + "\n".join(rows)


def paired_spreads(files: Mapping[str, str], weights_sha256: str, guide_sha256: str | None = None
                   ) -> dict[str, Any] | None:
    """``benchmarks/seed_spread.py`` files (label → name in ``results/book/``; the first is the baseline) of one model,
    compared on the seeds they all drew: ``{"seeds", "n", "sampling": {label: how it drew}, "rows": {label: {key: mean,
    "floor_<fid key>": mean floor, "lower_<fid key>": seeds where the FID is below the baseline's, "worst_<fid key>":
    the largest FID over its own seed's floor, "seeds_<fid key>": the FID at each seed}}}`` for FID, precision and
    recall in both spaces. ``None`` where a file is absent, or drew other weights than ``weights_sha256`` (an
    autoguided one: other guide weights than ``guide_sha256``): not measured for these models. Files of different
    ``n`` are refused (``ValueError``): their FIDs are not comparable."""
    from mnistdiff.evaluation.classifier import FEATURE_SPACES
    from mnistdiff.evaluation.metrics import space_key

    docs = {label: book_result(name) for label, name in files.items()}

    def drew_these(d: dict[str, Any]) -> bool:
        guide = d["sampling"].get("guide")
        same_guide = guide is None or guide["weights_sha256"] == guide_sha256
        return d["model"]["weights_sha256"] == weights_sha256 and same_guide

    if any(d is None or not drew_these(d) for d in docs.values()):
        return None
    if len({d["n"] for d in docs.values()}) > 1:
        raise ValueError(f"{', '.join(files.values())} drew different n: compare seed spreads drawn at one n")
    seeds = sorted(set.intersection(*({x["seed"] for x in d["draws"]} for d in docs.values())))
    keys = [space_key(m, s) for s in FEATURE_SPACES for m in ("fid", "precision", "recall")]
    fid_keys = [space_key("fid", s) for s in FEATURE_SPACES]
    at = {label: ({x["seed"]: x for x in d["draws"]}, {x["seed"]: x for x in d["floors"]}) for label, d in docs.items()}
    base = at[next(iter(files))][0]
    rows = {}
    for label, (draws, floors) in at.items():
        row = {k: sum(draws[s][k] for s in seeds) / len(seeds) for k in keys}
        row |= {f"floor_{k}": sum(floors[s][k] for s in seeds) / len(seeds) for k in fid_keys}
        row |= {f"lower_{k}": sum(draws[s][k] < base[s][k] for s in seeds) for k in fid_keys}
        row |= {f"worst_{k}": max(draws[s][k] / floors[s][k] for s in seeds) for k in fid_keys}
        row |= {f"seeds_{k}": [draws[s][k] for s in seeds] for k in fid_keys}
        rows[label] = row
    return {"seeds": seeds, "n": next(iter(docs.values()))["n"], "rows": rows,
            "sampling": {label: d["sampling"] for label, d in docs.items()}}


def seed_difference(paired: Mapping[str, Any], label: str, other: str, key: str) -> dict[str, Any]:
    """``label``'s FID ``key`` (``fid``, ``fid_resnet``) minus ``other``'s, seed by seed over :func:`paired_spreads`'
    seeds: :func:`~mnistdiff.evaluation.nfe_sweep.paired_difference`'s ``{"mean", "se", "lower", "seeds"}`` and
    ``"word"``: "lower" or "higher" where the mean is more than two standard errors from 0, else
    "level" (the seed alone could have made it)."""
    d = paired_difference(paired["rows"][label][f"seeds_{key}"], paired["rows"][other][f"seeds_{key}"])
    word = "level" if abs(d["mean"]) <= 2 * d["se"] else "lower" if d["mean"] < 0 else "higher"
    return {**d, "word": word}


def interval_label(interval: Sequence[float | None] | None) -> str | None:
    """A guidance interval in words: "σ > 0.33", or "0.1 < σ ≤ 2" where it has an upper end; ``None`` where it is
    every step. ``interval`` as the package takes it, (σ_lo, σ_hi) with inf for no upper end, or as a record holds it
    (null for no upper end); ``None`` is every step."""
    lo, hi = interval or (0, None)
    top = None if hi is None or math.isinf(hi) else hi
    if not lo and top is None:
        return None
    return f"σ > {lo:g}" if top is None else f"{lo:g} < σ ≤ {top:g}"


def guidance_label(sampling: Mapping[str, Any]) -> str:
    """How a seed-spread file's draws were guided, from its ``sampling`` record: "unguided", "autoguided, w = 1.5",
    or with a guidance interval "autoguided, w = 1.5, σ > 0.33" (:func:`interval_label`)."""
    if "guide" not in sampling:
        return "unguided"
    where = interval_label(sampling.get("guidance_interval"))
    return f"autoguided, w = {sampling['guidance']:g}" + (f", {where}" if where else "")


def autoguided_spreads(unguided: str, kind: str, sampler: str, weights_sha256: str, guide_sha256: str
                       ) -> dict[str, Any] | None:
    """:func:`paired_spreads` of the unguided seed spread ``unguided`` (a file name in ``results/book/``) and every
    autoguided one of these two models drawn with the same sampler, ``seed_spread_<kind>_autoguided_*_<sampler>.json``
    (``sampler`` as in the names, e.g. ``ddim_50``), each labelled by :func:`guidance_label`, in order of weight, then
    interval. ``None`` where the unguided file or every guided one is missing (or drew other models)."""
    base = book_result(unguided)
    if base is None or base["model"]["weights_sha256"] != weights_sha256:
        return None
    guided = []
    for path in sorted((results_dir() / "book").glob(f"seed_spread_{kind}_autoguided_*_{sampler}.json")):
        doc = json.loads(path.read_text())
        how = doc["sampling"]
        if doc["model"]["weights_sha256"] == weights_sha256 and how.get("guide", {}).get("weights_sha256") == \
                guide_sha256:
            lo, hi = how.get("guidance_interval") or (0, None)
            guided.append(((how["guidance"], lo, float("inf") if hi is None else hi), guidance_label(how), path.name))
    if not guided:
        return None
    return paired_spreads({"unguided": unguided, **{label: name for _, label, name in sorted(guided)}},
                          weights_sha256, guide_sha256)


def paired_spreads_table(paired: Mapping[str, Any], what: str = "sampler") -> str:
    """:func:`paired_spreads` as a Markdown table: per label the mean FID (× the mean floor), precision and recall in
    each feature space, and at how many seeds its FID is below the baseline's (the first row)."""
    from mnistdiff.evaluation.classifier import FEATURE_SPACES
    from mnistdiff.evaluation.metrics import space_key

    head = f"| {what} | " + " | ".join(f"{'ResNet' if s == 'resnet' else s} FID (× floor) | precision | recall"
                                      for s in FEATURE_SPACES)
    lines = [head + " |", "| --- " * (1 + 3 * len(FEATURE_SPACES)) + "|"]
    for i, (label, row) in enumerate(paired["rows"].items()):
        cells = []
        for s in FEATURE_SPACES:
            fid = space_key("fid", s)
            lower = "" if i == 0 else f", lower at {row[f'lower_{fid}']} of {len(paired['seeds'])}"
            cells += [f"{row[fid]:.3f} ({row[fid] / row[f'floor_{fid}']:.2f}×{lower})",
                      f"{row[space_key('precision', s)]:.3f}", f"{row[space_key('recall', s)]:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
