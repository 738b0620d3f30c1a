"""Evaluate generators of digits, and write the results file the book reads.

A generator is a :class:`GeneratorSpec` (the course's are :func:`mnistdiff.course.generators.course_generators`).
Each is scored with :func:`mnistdiff.evaluation.metrics.evaluate`, timed (seconds per sample), and placed on
a UMAP of real digits with a k-NN two-sample accuracy (:func:`mnistdiff.evaluation.umap_eval.umap_evaluation`).
Every metric depends on the sample count, so the results always carry the real-vs-real floor at the same
count (:func:`mnistdiff.evaluation.metrics.real_floor`; for the k-NN accuracies, held-out real test images
against real training images).

The results go to ``results/<profile>/<name>.json`` (or under ``$MNISTDIFF_RESULTS_DIR``),
written atomically by :func:`save_results` (chapter 6's ``evaluation.json``, chapter 7's ``guidance.json``),
with this layout::

    {"profile": "smoke", "device": "CPU (2 cores)", "n_samples": 200, "seed": 0, ...,
     "floor": {"fid": ..., "kid": ..., "knn_accuracy_umap": ..., ...},
     "generators": {"ddpm": {"label": ..., "fid": ..., ..., "seconds_per_sample": ...}, ...},
     "class_histograms": {"real (floor)": {"0": ..., ..., "9": ...}, "ddpm": {...}, ...}}

Every entry of ``floor`` and ``generators`` is a flat mapping of scalars, so the book's results
page renders ``generators`` as one table with a row per generator.

Typical use (what chapter 6 does, step by step)::

    n = PROFILE.eval_samples
    specs = course_generators(ddpm=ddpm, ldm=ldm, vae=vae, profile=PROFILE, device=DEVICE)  # mnistdiff.course
    samples = draw_samples(specs, n, seed=0, device=DEVICE)
    scores = score_samples(samples, seed=0, device=DEVICE)
    floor = floor_row(n, seed=0, device=DEVICE)
    real, labels, floor_images = umap_reference_sets(PROFILE.umap_real, n, seed=0)
    fig, umap_scores = umap_compare(samples, real, labels, floor_images, seed=0, device=DEVICE)
    results, path = save_results("evaluation", PROFILE, device=DEVICE, n_samples=n, floor=floor,
                                 generators=scores, umap_scores=umap_scores)  # build_results + write_results
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mnistdiff.data import load_mnist
from mnistdiff.devices import device_name, resolve_device
from mnistdiff.evaluation.metrics import METRIC_KEYS, TABLE_COLUMNS, floor_images, format_value
from mnistdiff.files import atomic_write_text, repo_root

__all__ = [
    "GeneratorSpec", "Samples", "draw_samples", "score_samples", "floor_row", "floors_for", "umap_reference_sets",
    "umap_compare", "build_results", "results_dir", "results_path", "write_results", "save_results", "SavedResults",
    "ROW_SECTIONS", "results_table", "FLOOR_NAME",
]

#: The name of the real-vs-real reference, in tables and in ``class_histograms``.
FLOOR_NAME = "real (floor)"

#: The metrics copied from :func:`mnistdiff.evaluation.metrics.evaluate` into the results file (all scalars).
_METRIC_KEYS = (*METRIC_KEYS, "kid_std")
_UMAP_KEYS = ("knn_accuracy_umap", "knn_accuracy_pixels", "knn_accuracy_features")

#: Per-generator lists (``guidance_sweep``'s): :func:`save_results` moves each to a section of its own, by generator.
ROW_SECTIONS = ("per_class_accuracy",)

Sampler = Callable[[int, int], torch.Tensor]


# -- the generators ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorSpec:
    """One way of making digits: a name, a description, and ``draw(n, seed)``.

    ``draw(n, seed)`` returns ``n`` images ``(n, 1, 32, 32)`` in [-1, 1] on the CPU, the same ones
    for the same seed. ``space`` is ``"pixel"``, ``"latent"`` or ``"vae"``; ``sampler`` is
    ``"ddpm"``, ``"ddim"``, ``"prior"`` or ``"reconstruction"``; ``steps`` is the number of
    network (or decoder) evaluations per sample and ``eta`` DDIM's η (None where it means nothing).
    """

    name: str
    label: str
    space: str
    sampler: str
    steps: int | None
    eta: float | None
    draw: Sampler = field(repr=False, compare=False)
    max_samples: int | None = None  # draw at most this many (the 1000-step samplers on a CPU); None: all asked for

    def describe(self) -> dict[str, Any]:
        """The scalar description stored with the generator's metrics."""
        return {"label": self.label, "space": self.space, "sampler": self.sampler, "steps": self.steps, "eta": self.eta}

    def count(self, n: int) -> int:
        """How many samples this generator draws when ``n`` are asked for."""
        return n if self.max_samples is None else min(n, self.max_samples)


# -- sampling and scoring ----------------------------------------------------------------------


@dataclass
class Samples:
    """One generator's output: its spec, the images ``(n, 1, 32, 32)`` in [-1, 1] (CPU) and the wall time."""

    spec: GeneratorSpec
    images: torch.Tensor
    seconds: float

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(int(self.images.shape[0]), 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_samples(specs: Sequence[GeneratorSpec], n: int, *, seed: int = 0, device: torch.device | str | None = None,
                 verbose: bool = True) -> dict[str, Samples]:
    """Draw ``n`` samples (``spec.count(n)``) from each generator with the same ``seed``, timing each (wall clock).

    The time includes decoding (latent diffusion, VAE) and the copy to the CPU, i.e. what a user
    waits for. Returns name → :class:`Samples`, in the order of ``specs``. With ``verbose``, prints
    one line per generator.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    device = resolve_device(device)
    out: dict[str, Samples] = {}
    for spec in specs:
        k = spec.count(n)
        _sync(device)
        t0 = time.perf_counter()
        images = spec.draw(k, seed)
        _sync(device)
        seconds = time.perf_counter() - t0
        if tuple(images.shape) != (k, 1, 32, 32):
            raise ValueError(f"generator {spec.name} returned shape {tuple(images.shape)}, expected ({k}, 1, 32, 32)")
        out[spec.name] = Samples(spec, images.detach().float().cpu(), seconds)
        if verbose:
            print(f"  {spec.label:<48} {k} samples in {seconds:7.2f} s")
    return out


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float(metrics[k]) for k in _METRIC_KEYS if k in metrics}


def _histogram(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {str(d): float(p) for d, p in enumerate(metrics.get("class_histogram", []))}


def score_samples(samples: Mapping[str, Samples], *, seed: int = 0, device: torch.device | str | None = None,
                  verbose: bool = True) -> dict[str, dict[str, Any]]:
    """:func:`mnistdiff.evaluation.metrics.evaluate` for each generator's samples, plus its description and timing.

    Returns name → a flat dict: the spec's ``label``, ``space``, ``sampler``, ``steps``, ``eta``;
    the scalar metrics (``fid``, ``kid``, ``kid_std``, ``precision``, ``recall``, ``confidence``,
    ``class_entropy``, ``class_max_deviation``, ``nn_train_distance``, ``nn_train_distance_min``);
    ``class_histogram`` (a list of 10 fractions, moved out by :func:`build_results`);
    ``sampling_seconds`` and ``seconds_per_sample``.
    """
    from mnistdiff.evaluation.metrics import evaluate

    out: dict[str, dict[str, Any]] = {}
    for name, s in samples.items():
        t0 = time.perf_counter()
        m = evaluate(s.images, seed=seed, device=device)
        entry = {**s.spec.describe(), "n": int(s.images.shape[0]), **_scalar_metrics(m),
                 "class_histogram": list(m["class_histogram"]),
                 "sampling_seconds": s.seconds, "seconds_per_sample": s.seconds_per_sample}
        out[name] = entry
        if verbose:
            print(f"  {s.spec.label:<48} FID {entry['fid']:8.2f}   ({time.perf_counter() - t0:.1f} s)")
    return out


def floor_row(n: int, *, seed: int = 0, device: torch.device | str | None = None) -> dict[str, Any]:
    """The real-vs-real floor at ``n`` samples as a row of the results table: the scalars of
    :func:`mnistdiff.evaluation.metrics.real_floor` (``n`` real training images scored like a generator), ``n``
    and the ``class_histogram``."""
    from mnistdiff.evaluation.metrics import real_floor as _floor

    m = _floor(n, seed=seed, device=device)
    return {"n": int(n), **_scalar_metrics(m), "class_histogram": list(m["class_histogram"])}


def floors_for(scores: Mapping[str, Mapping[str, Any]], n: int, *, seed: int = 0,
               device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """The real floor at every sample count in ``scores`` other than ``n`` (the main floor's), keyed by ``str(n)``:
    a generator scored on fewer samples is compared with the floor at its own count."""
    counts = sorted({int(e["n"]) for e in scores.values() if "n" in e} - {int(n)})
    return {str(k): {key: v for key, v in floor_row(k, seed=seed, device=device).items() if key != "class_histogram"}
            for k in counts}


def umap_reference_sets(
    n_real: int, n_floor: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real images for the UMAP evaluation, disjoint from every generator's inputs.

    Returns ``(real_images, real_labels, floor_images)``: ``n_real`` *test* images (the UMAP is
    fitted on part of them; the rest are the held-out real points every set is compared with) and
    the ``n_floor`` *training* images of :func:`floor_row` (the real-vs-real reference, scored in
    the UMAP exactly like a generator). The VAE reconstructions are of those same training images,
    never of the test images, so no reconstruction sits on top of its own original in the map.
    """
    test = load_mnist("test").subset(n_real, seed=seed)
    return test.images, test.labels, floor_images(n_floor, seed)


def umap_compare(samples: Mapping[str, Samples], real_images: torch.Tensor, real_labels: torch.Tensor | None,
                 floor_images: torch.Tensor, *, seed: int = 0, device: torch.device | str | None = None,
                 ncols: int = 4) -> tuple[Any, dict[str, dict[str, float]]]:
    """:func:`mnistdiff.evaluation.umap_eval.umap_evaluation` of every generator and of the real floor.

    The UMAP is fitted on part of ``real_images`` (see :func:`umap_reference_sets`); the rest are
    held out and compared, in the map, in pixel space and in classifier-feature space, with
    ``floor_images`` (real training images, the real-vs-real floor) and with each generator's
    samples. Panels are titled with the generators' labels. Returns ``(figure, scores)`` with
    ``scores`` keyed by generator name and by :data:`FLOOR_NAME`.
    """
    from mnistdiff.evaluation.umap_eval import umap_evaluation

    by_label = {FLOOR_NAME: floor_images}
    names = {FLOOR_NAME: FLOOR_NAME}
    for name, s in samples.items():
        if s.spec.label in by_label:
            raise ValueError(f"two generators share the label {s.spec.label!r}")
        by_label[s.spec.label] = s.images
        names[s.spec.label] = name
    fig, scores = umap_evaluation(real_images, real_labels, by_label, seed=seed, device=device, ncols=ncols)
    return fig, {names[label]: v for label, v in scores.items()}


# -- the results file --------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe scalars: floats rounded to 6 significant digits, NaN/inf → None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.6g}") + 0.0  # + 0.0: no "-0.0"
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def build_results(profile: str, device: torch.device | str | None, n_samples: int, floor: Mapping[str, Any],
                  generators: Mapping[str, Mapping[str, Any]], *,
                  umap_scores: Mapping[str, Mapping[str, float]] | None = None, floor_umap_name: str | None = None,
                  seed: int = 0, extra: Mapping[str, Any] | None = None,
                  other_floors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble the results file's dict (see the module docstring for its layout).

    ``floor``: :func:`floor_row`'s dict; ``generators``: :func:`score_samples`'s. ``umap_scores``:
    the scores of :func:`mnistdiff.evaluation.umap_eval.umap_evaluation` (name → ``knn_accuracy_*``); the
    entry named ``floor_umap_name`` holds the real-vs-real reference and goes into ``floor``, the
    others into their generators. Class histograms move to ``class_histograms`` (so every entry of
    ``generators`` is a flat row of scalars). ``extra``: more top-level fields (e.g. timings).
    ``other_floors`` (:func:`floors_for`): the floor at the other sample counts, stored as ``floors``.
    """
    umap_scores = dict(umap_scores or {})
    floor_entry = {k: v for k, v in floor.items() if k != "class_histogram"}
    hist = {FLOOR_NAME: _histogram(floor)}
    if floor_umap_name is not None and floor_umap_name in umap_scores:
        real_scores = umap_scores.pop(floor_umap_name)
        floor_entry.update({k: real_scores[k] for k in _UMAP_KEYS if k in real_scores})
    gens: dict[str, dict[str, Any]] = {}
    for name, entry in generators.items():
        row = {k: v for k, v in entry.items() if k != "class_histogram"}
        if name in umap_scores:
            row.update({k: umap_scores[name][k] for k in _UMAP_KEYS if k in umap_scores[name]})
        # keep the timing last, as the schema shows it
        for key in ("sampling_seconds", "seconds_per_sample"):
            if key in row:
                row[key] = row.pop(key)
        gens[name] = row
        hist[name] = _histogram(entry)
    unknown = set(umap_scores) - set(generators)
    if unknown:
        raise ValueError(f"UMAP scores for unknown generators: {sorted(unknown)}")
    results = {
        "profile": profile,
        "device": device_name(device),
        "n_samples": int(n_samples),
        "seed": int(seed),
        "torch": torch.__version__.split("+")[0],
        "date": _dt.date.today().isoformat(),
        **dict(extra or {}),
        "floor": floor_entry,
        **({"floors": {str(k): dict(v) for k, v in other_floors.items()}} if other_floors else {}),
        "generators": gens,
        "class_histograms": hist,
    }
    return _clean(results)


def results_dir() -> Path:
    """``$MNISTDIFF_RESULTS_DIR`` if set, else ``results/`` at the repository root
    (:func:`~mnistdiff.files.repo_root`)."""
    env = os.environ.get("MNISTDIFF_RESULTS_DIR")
    return Path(env) if env else repo_root() / "results"


def results_path(profile: Any) -> Path:
    """``<results_dir>/<profile>/evaluation.json`` for a profile's name (or a profile with a ``name``)."""
    name = str(getattr(profile, "name", profile))
    return results_dir() / name / "evaluation.json"


def write_results(results: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write ``results`` as indented JSON to ``path`` (default :func:`results_path` of its profile).

    The file is written to a temporary sibling and renamed into place, so a reader never sees half
    a file. Refuses a dict without ``profile``, ``device``, ``n_samples``, ``floor`` or
    ``generators``. Returns the path.
    """
    missing = [k for k in ("profile", "device", "n_samples", "floor", "generators") if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}; build them with build_results()")
    path = Path(path) if path is not None else results_path(results["profile"])
    text = json.dumps(_clean(dict(results)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return path


class SavedResults(NamedTuple):
    """:func:`save_results`' document, and its path (relative to the repository root when under it, to print)."""

    results: dict[str, Any]
    path: Path


def save_results(name: str, profile: Any, *, device: torch.device | str | None, n_samples: int,
                 floor: Mapping[str, Any], generators: Mapping[str, Mapping[str, Any]], seed: int = 0,
                 umap_scores: Mapping[str, Mapping[str, float]] | None = None,
                 other_floors: Mapping[str, Mapping[str, Any]] | None = None, model: Any = None,
                 **fields: Any) -> SavedResults:
    """:func:`build_results` written atomically to ``<results_dir>/<profile>/<name>.json``: a chapter's one call.

    ``name``: the file's stem (``"evaluation"``); ``profile``: a profile or its name; the keywords up to
    ``other_floors`` are :func:`build_results`' (``umap_scores`` with the floor's entry as :data:`FLOOR_NAME`).
    ``fields``: more top-level fields, in order; after them each generator's :data:`ROW_SECTIONS` entries, moved
    to sections of their own, and ``checkpoint_minutes`` of ``model`` (the trained model scored, its
    ``meta["seconds"]``). The inputs are not changed.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name must be a plain file stem such as 'evaluation', got {name!r}")
    rows = {gen: {k: v for k, v in row.items() if k not in ROW_SECTIONS} for gen, row in generators.items()}
    derived = {key: {gen: row[key] for gen, row in generators.items() if key in row} for key in ROW_SECTIONS}
    derived = {key: section for key, section in derived.items() if section}
    if model is not None:
        derived["checkpoint_minutes"] = round(model.meta["seconds"] / 60, 1)
    if set(fields) & set(derived):
        raise ValueError(f"fields {sorted(set(fields) & set(derived))} are written by save_results itself")
    prof = str(getattr(profile, "name", profile))
    results = build_results(prof, device, n_samples, floor, rows, umap_scores=umap_scores, floor_umap_name=FLOOR_NAME,
                            seed=seed, extra={**fields, **derived}, other_floors=other_floors)
    path, root = write_results(results, results_dir() / prof / f"{name}.json"), repo_root()
    return SavedResults(results, path.relative_to(root) if path.is_relative_to(root) else path)


def results_table(
    results: Mapping[str, Any], columns: Sequence[tuple[str, str, str, float]] = TABLE_COLUMNS
) -> str:
    """A Markdown table of ``results``: the real floor first, then one row per generator.

    ``columns``: ``(key, header, format, factor)`` (default :data:`TABLE_COLUMNS`); a column no row
    has is left out, a missing value shows as ``—``.
    """
    rows = [(f"**{FLOOR_NAME}**", results["floor"])]
    rows += [(f"**{FLOOR_NAME}, n = {k}**", f) for k, f in results.get("floors", {}).items()]
    rows += [(g.get("label", name), g) for name, g in results["generators"].items()]
    cols = [c for c in columns if any(c[0] in r for _, r in rows)]
    lines = [
        "| generator | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for label, row in rows:
        lines.append(
            f"| {label} | " + " | ".join(format_value(row.get(key), fmt, factor) for key, _, fmt, factor in cols) + " |"
        )
    return "\n".join(lines) + "\n"
