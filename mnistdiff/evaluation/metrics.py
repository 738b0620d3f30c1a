"""Sample-quality metrics for MNIST generators, in two independent feature spaces.

Every metric here compares a set of generated images with real MNIST images through features
``φ(x)``: the penultimate layer ``φ(x) ∈ R^128`` of the project's classifier
(:class:`mnistdiff.evaluation.classifier.MNISTClassifier`) and, as a second opinion, the pooled stages
``φ(x) ∈ R^112`` of an independently trained ResNet (:class:`~mnistdiff.evaluation.classifier.MNISTResNet`;
its metrics carry the suffix ``_resnet``, see :func:`space_key`). A model that looks good in only
one of them is not good:

* **classifier-FID** — the Fréchet distance between Gaussians fitted to the two feature sets
  (Heusel et al. 2017, eq. 6):  ``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.
* **KID** — the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (xᵀy / d + 1)³``, averaged over random subsets (Bińkowski et al. 2018, §3).
* **precision / recall** — the k-nearest-neighbour manifold estimate of Kynkäänniemi et al. 2019:
  precision is the fraction of generated samples that fall inside some real sample's k-NN ball,
  recall the fraction of real samples inside some generated sample's k-NN ball.
* **confidence and class histogram** — mean max-softmax probability, and the fraction of samples
  predicted as each digit (≈ 10 % each for a good unconditional model). Confidence alone proves
  little: the classifier calls uniform noise a single digit with > 99 % confidence, so read it
  together with FID/precision and the histogram.
* **nearest-training-image distance** — L2 distance in pixel space ([0, 1] pixel units, 28×28)
  from each sample to its nearest training image: a memorisation check (0 = a copied digit).

All of these depend on the number of samples (FID in particular is biased upwards at small N), so a
number means little on its own: :func:`real_floor` gives the same metrics for ``n`` real training
images against the test set, the best value a perfect generator could reach at that sample count.
:func:`format_metrics` prints the two side by side. The pieces live in
:mod:`mnistdiff.evaluation.features` and :mod:`mnistdiff.evaluation.distances`; this module
re-exports them, so ``metrics.frechet_distance`` and friends stay one import away.

Images may be given as uint8 ``[0, 255]`` or float ``[-1, 1]``, as torch tensors or numpy arrays,
28×28 or 32×32 (the 2-pixel padding of :func:`mnistdiff.data.load_mnist` is cropped), shaped
``(N, 1, H, W)`` or ``(N, H, W)``; see :func:`prepare_images`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistdiff.devices import resolve_device
from mnistdiff.evaluation.classifier import FEATURE_SPACES, PRIMARY_SPACE
from mnistdiff.evaluation.distances import (
    class_statistics,
    frechet_distance,
    kernel_inception_distance,
    label_statistics,
    nearest_train_distance,
    nearest_train_neighbours,
    precision_recall,
)
from mnistdiff.evaluation.features import RANGE_TOL, ArrayLike, classifier_features, prepare_images

__all__ = [
    "RANGE_TOL",
    "prepare_images",
    "classifier_features",
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
    "nearest_train_neighbours",
    "nearest_train_distance",
    "class_statistics",
    "label_statistics",
    "reference_features",
    "evaluate",
    "real_floor",
    "floor_images",
    "evaluate_npz",
    "format_metrics",
    "format_value",
    "TABLE_COLUMNS",
    "METRIC_KEYS",
    "SPACE_METRICS",
    "space_key",
    "distribution_metrics",
]

#: The metrics computed in every feature space (the others come from the primary space or from pixels).
SPACE_METRICS = ("fid", "kid", "kid_std", "precision", "recall")


def space_key(metric: str, space: str) -> str:
    """The results key of ``metric`` in feature ``space``: ``fid`` in the project's classifier's space,
    ``fid_resnet`` in the ResNet's."""
    return metric if space == PRIMARY_SPACE else f"{metric}_{space}"


def distribution_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """FID, precision and recall in every feature space, picked out of :func:`evaluate`'s (or :func:`real_floor`'s)
    ``metrics``: ``{"fid": …, "precision": …, "recall": …, "fid_resnet": …, …}``, the columns a results table keeps."""
    return {space_key(k, s): metrics[space_key(k, s)] for s in FEATURE_SPACES for k in ("fid", "precision", "recall")}


#: the scalar metrics that :func:`evaluate` and :func:`real_floor` return, in display order
METRIC_KEYS = (
    "fid", "kid", "precision", "recall",
    *(space_key(m, s) for s in FEATURE_SPACES if s != PRIMARY_SPACE for m in ("fid", "kid", "precision", "recall")),
    "confidence", "class_entropy", "class_max_deviation", "nn_train_distance", "nn_train_distance_min",
)

#: How a metric is shown in every table (:func:`format_metrics`, :func:`~mnistdiff.evaluation.report.results_table`):
#: ``(key, header, format, factor)``; a value is shown as
#: ``format.format(value * factor)``.
TABLE_COLUMNS: tuple[tuple[str, str, str, float], ...] = (
    ("n", "n", "{:d}", 1),
    ("label_accuracy", "accuracy ↑", "{:.3f}", 1.0),
    ("fid", "FID ↓", "{:.2f}", 1.0),
    ("kid", "KID ↓", "{:.4f}", 1.0),
    ("precision", "precision ↑", "{:.3f}", 1.0),
    ("recall", "recall ↑", "{:.3f}", 1.0),
    ("fid_resnet", "FID ResNet ↓", "{:.2f}", 1.0),
    ("precision_resnet", "precision ResNet ↑", "{:.3f}", 1.0),
    ("recall_resnet", "recall ResNet ↑", "{:.3f}", 1.0),
    ("confidence", "confidence ↑", "{:.3f}", 1.0),
    ("class_entropy", "class entropy (bits)", "{:.2f}", 1.0),
    ("nn_train_distance", "NN-train distance", "{:.2f}", 1.0),
    ("knn_accuracy_umap", "k-NN acc. UMAP", "{:.3f}", 1.0),
    ("knn_accuracy_pixels", "k-NN acc. pixels", "{:.3f}", 1.0),
    ("knn_accuracy_features", "k-NN acc. features", "{:.3f}", 1.0),
    ("seconds_per_sample", "ms / sample", "{:.4g}", 1e3),
)



def format_value(value: Any, fmt: str, factor: float = 1.0) -> str:
    """``fmt.format(value * factor)``; ``—`` for a missing value, ``nan``/``inf`` as such."""
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value * factor)


# ----------------------------------------------------------------------------------------------
# evaluation against the test set
# ----------------------------------------------------------------------------------------------

_REF_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_FLOOR_CACHE: dict[tuple, dict] = {}


def _subset_rows(n_total: int, n: int | None, seed: int) -> torch.Tensor | None:
    """A seeded choice of ``n`` of ``n_total`` rows (None: all of them)."""
    if n is None or n >= n_total:
        return None
    if n < 2:
        raise ValueError(f"reference size must be ≥ 2, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n]


def reference_features(
    device: str | torch.device | None = None, n_ref: int | None = None, seed: int = 0, *, space: str = PRIMARY_SPACE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(n_ref, D)`` and probabilities ``(n_ref, 10)`` in feature ``space`` of the MNIST test set
    (all 10 000 images, or a seeded subset of ``n_ref``), computed once per process and cached.

    A subset's features are computed from the subset's images (not sliced from the full set), so a
    result never depends on what was computed earlier in the process.
    """
    from mnistdiff.data import load_mnist

    device = resolve_device(device)
    test = load_mnist("test").images
    idx = _subset_rows(test.shape[0], n_ref, seed)
    key = (str(FEATURE_SPACES[space]), str(device), None if idx is None else (n_ref, seed))
    if key not in _REF_CACHE:
        _REF_CACHE[key] = classifier_features(test if idx is None else test[idx], device=device, space=space)
    return _REF_CACHE[key]


def _space_distances(
    feats: torch.Tensor,
    *,
    space: str,
    n_ref: int | None,
    seed: int,
    device: torch.device,
    kid_subset_size: int,
    kid_subsets: int,
    k: int,
) -> dict[str, Any]:
    """FID, KID, precision and recall of ``feats`` ``(N, D)`` against the test set, in feature ``space``
    (keys from :func:`space_key`), with ``n`` and ``n_ref``."""
    ref_f, _ = reference_features(device, n_ref, seed, space=space)
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"need more than k = {k} samples for precision/recall, got {n}")
    # precision/recall with equal set sizes (as in Kynkäänniemi et al.): a seeded subset of the reference
    pr_idx = _subset_rows(ref_f.shape[0], n, seed + 1)
    pr_ref = ref_f if pr_idx is None else ref_f[pr_idx]
    kid, kid_std = kernel_inception_distance(feats, ref_f, kid_subset_size, kid_subsets, seed, return_std=True)
    precision, recall = precision_recall(pr_ref, feats, k=k)
    values = {"fid": frechet_distance(feats, ref_f), "kid": kid, "kid_std": kid_std, "precision": precision,
              "recall": recall}
    return {"n": int(n), "n_ref": int(ref_f.shape[0]), **{space_key(m, space): v for m, v in values.items()}}


def _evaluate_images(images: torch.Tensor, spaces: Sequence[str], device: torch.device,
                     **kw: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """:func:`_space_distances` in every space of ``spaces`` (the primary first) and the class statistics
    of the primary space; returns the metrics and the primary space's probabilities ``(N, 10)``."""
    unknown = [s for s in spaces if s not in FEATURE_SPACES]
    if unknown or PRIMARY_SPACE not in spaces:
        raise ValueError(f"spaces must include {PRIMARY_SPACE!r} and name only {sorted(FEATURE_SPACES)}, "
                         f"got {list(spaces)}")
    out: dict[str, Any] = {}
    for space in (PRIMARY_SPACE, *(s for s in spaces if s != PRIMARY_SPACE)):
        feats, p = classifier_features(images, device=device, space=space)
        out.update(_space_distances(feats, space=space, device=device, **kw))
        if space == PRIMARY_SPACE:
            probs = p
            out.update(class_statistics(probs))
    return out, probs


def evaluate(
    samples: ArrayLike,
    *,
    n_ref: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    include_memorisation: bool = True,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
    labels: ArrayLike | None = None,
    spaces: Sequence[str] = tuple(FEATURE_SPACES),
) -> dict[str, Any]:
    """All metrics for a batch of generated images against the MNIST test set.

    ``samples``: N images (N > k) in any form :func:`prepare_images` accepts.
    ``n_ref``: how many test images form the reference (a seeded subset; default all 10 000).
    FID and KID use the whole reference; precision/recall use a seeded reference subset of
    ``min(N, n_ref)`` images so both sets have the same size, as in the paper.

    ``spaces``: the feature spaces (:data:`~mnistdiff.evaluation.classifier.FEATURE_SPACES`) to measure in,
    by default all of them: a verdict should hold in two independent ones.

    Returns a JSON-serialisable dict: ``n``, ``n_ref``, ``fid``, ``kid``, ``kid_std``,
    ``precision``, ``recall`` (in the classifier's space; ``fid_resnet``, ... in the ResNet's, see
    :func:`space_key`), ``confidence``, ``class_histogram`` (10 fractions),
    ``class_entropy`` (bits), ``class_max_deviation`` and, with ``include_memorisation``,
    ``nn_train_distance`` (mean) and ``nn_train_distance_min`` (see :func:`nearest_train_distance`).
    ``labels`` (N,), the classes a class-conditional model was asked for (−1: none), add
    :func:`~mnistdiff.evaluation.distances.label_statistics` (``label_accuracy``, ``per_class_accuracy``), read from
    the same classifier pass. Compare with :func:`real_floor` ``(N)``.
    """
    device = resolve_device(device)
    images = prepare_images(samples)
    out, probs = _evaluate_images(images, spaces, device, n_ref=n_ref, seed=seed, kid_subset_size=kid_subset_size,
                                  kid_subsets=kid_subsets, k=k)
    if labels is not None:
        out.update(label_statistics(probs, labels))
    if include_memorisation:
        nn = nearest_train_distance(images, device=device)
        out["nn_train_distance"] = nn["mean"]
        out["nn_train_distance_min"] = nn["min"]
    return out


def floor_images(n: int, seed: int = 0) -> torch.Tensor:
    """The ``n`` training digits that :func:`real_floor` scores at ``seed``: (n, 1, 32, 32) in [−1, 1]. A VAE's
    reconstructions of exactly these are what its floor ratio compares."""
    from mnistdiff.data import load_mnist

    return load_mnist("train").subset(n, seed=seed).images


def real_floor(
    n: int,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    n_ref: int | None = None,
    include_memorisation: bool = True,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
    spaces: Sequence[str] = tuple(FEATURE_SPACES),
) -> dict[str, Any]:
    """The same metrics as :func:`evaluate` for ``n`` real images: the best a generator can reach.

    FID, KID, precision/recall, confidence and the class histogram are computed for a seeded subset
    of ``n`` *training* images against the test set (exactly what :func:`evaluate` does with ``n``
    samples). The memorisation distance uses ``min(n, 10000)`` held-out *test* images against the
    training set instead (a training image's nearest training image is itself). Cached in-process
    per argument set, so showing it next to several generators costs nothing.
    """
    if n <= k:
        raise ValueError(f"n must be larger than k = {k}, got {n}")
    device = resolve_device(device)
    key = (n, seed, str(device), n_ref, include_memorisation, kid_subset_size, kid_subsets, k, tuple(spaces))
    if key not in _FLOOR_CACHE:
        from mnistdiff.data import load_mnist

        out, _ = _evaluate_images(prepare_images(floor_images(n, seed)), spaces, device, n_ref=n_ref, seed=seed,
                                  kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, k=k)
        if include_memorisation:
            held_out = load_mnist("test").subset(min(n, 10_000), seed=seed).images
            nn = nearest_train_distance(held_out, device=device)
            out["nn_train_distance"] = nn["mean"]
            out["nn_train_distance_min"] = nn["min"]
        _FLOOR_CACHE[key] = out
    return {k_: (list(v) if isinstance(v, list) else v) for k_, v in _FLOOR_CACHE[key].items()}


def evaluate_npz(
    path: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    include_floor: bool = True,
) -> dict[str, Any]:
    """Evaluate the samples stored in an ``.npz`` file (key ``samples``: uint8 ``(N, 1, 32, 32)``;
    any form :func:`prepare_images` accepts works). ``n``: use only the first ``n`` samples. An array
    ``labels`` (``sample cldm``'s digits, −1 for none) adds ``label_accuracy`` and ``per_class_accuracy`` to the
    metrics (:func:`~mnistdiff.evaluation.distances.label_statistics`).

    Returns ``{"path", "n", "metrics": evaluate(...), "real_floor": real_floor(n, ...)}`` (the floor
    only with ``include_floor``). A missing file raises ``FileNotFoundError``; a file without a
    ``samples`` array, or an unreadable one, raises ``ValueError`` naming what is expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist (expected an .npz with key 'samples')")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - zip/pickle/format errors
        raise ValueError(f"cannot read {path} as an .npz file with key 'samples' ({err})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} is a single .npy array, expected an .npz archive with key 'samples' (np.savez(path, samples=...))"
        )
    with data:
        if "samples" not in data.files:
            raise ValueError(
                f"{path} has no array 'samples' (it has {sorted(data.files)}); expected key 'samples' "
                "holding uint8 images of shape (N, 1, 32, 32), e.g. np.savez(path, samples=to_uint8(x).numpy())"
            )
        samples = data["samples"]
        labels = data["labels"] if "labels" in data.files else None
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        if samples.ndim >= 1 and n > samples.shape[0]:
            raise ValueError(f"n = {n} but {path} holds only {samples.shape[0]} samples")
        samples = samples[:n]
        labels = labels[:n] if labels is not None else None
    asked = labels if labels is not None and (labels >= 0).any() else None  # `sample cldm`'s digits (−1: none)
    metrics = evaluate(samples, seed=seed, device=device, labels=asked)
    out: dict[str, Any] = {"path": str(path), "n": metrics["n"], "metrics": metrics}
    if include_floor:
        out["real_floor"] = real_floor(metrics["n"], seed=seed, device=device)
    return out


def format_metrics(results: dict[str, dict[str, Any]], floor: dict[str, Any] | None = None) -> str:
    """A plain-text table: one row per metric, one column per entry of ``results`` (name → the
    dict of :func:`evaluate`), plus a ``real floor`` column when ``floor`` is given."""
    cols = dict(results)
    if floor is not None:
        cols["real floor"] = floor
    names = list(cols)
    keys = [k for k in METRIC_KEYS if any(k in c for c in cols.values())]
    width = max(12, *(len(n) for n in names))
    lines = ["metric".ljust(22) + "".join(n.rjust(width + 2) for n in names)]
    formats = {key: (fmt, factor) for key, _, fmt, factor in TABLE_COLUMNS}
    for key in ("n",) + tuple(keys):
        fmt, factor = formats.get(key, ("{:.4f}", 1.0))
        lines.append(
            key.ljust(22) + "".join(format_value(cols[n].get(key), fmt, factor).rjust(width + 2) for n in names)
        )
    return "\n".join(lines)
