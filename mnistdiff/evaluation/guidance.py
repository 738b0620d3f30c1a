"""Score classifier-free guidance: does a class-conditional model draw the digit it is asked for, and at what cost?

For each guidance weight w, :func:`guidance_sweep` draws the same n samples (the digits 0–9 in turn, the
same seed, so the same x_T for every w) and scores them with chapter 6's tools: the project classifier's
accuracy against the requested digit (:func:`label_accuracy`), and FID, KID, precision and recall against
the test set (:func:`~mnistdiff.evaluation.metrics.evaluate`). :func:`recommend_guidance` picks the w the
course recommends from those rows; the rows go into ``results/<profile>/guidance.json`` through
:mod:`~mnistdiff.evaluation.report`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mnistdiff.evaluation.distances import label_statistics
from mnistdiff.evaluation.features import ArrayLike, classifier_features
from mnistdiff.evaluation.metrics import evaluate
from mnistdiff.guidance import balanced_labels

__all__ = ["balanced_labels", "label_accuracy", "guidance_sweep", "recommend_guidance", "sampler_run",
           "ACCURACY_TOLERANCE"]

#: :func:`recommend_guidance` takes the best FID among the weights within this much of the best accuracy:
#: one sample in a hundred.
ACCURACY_TOLERANCE = 0.01


def sampler_run(sampler: str, steps: int) -> str:
    """The name of a sweep run by its sampler and steps, as ``results/<profile>/guidance_samplers.json`` keys its
    means: ``"ddim-50"``."""
    return f"{sampler}-{steps}"


def label_accuracy(images: ArrayLike, labels: torch.Tensor,
                   device: str | torch.device | None = None) -> tuple[float, list[float | None]]:
    """The fraction of ``images`` (N, 1, 32, 32) that the project classifier reads as their ``labels`` (N,),
    overall and per class (``None`` for a class never asked for), by
    :func:`~mnistdiff.evaluation.distances.label_statistics`."""
    _, probs = classifier_features(images, device=device)
    stats = label_statistics(probs, labels)
    return stats["label_accuracy"], stats["per_class_accuracy"]


def guidance_sweep(
    model: Any, scales: Sequence[float], n: int, *, sampler: str | None = None, steps: int | None = None,
    eta: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
) -> tuple[dict[str, dict[str, Any]], dict[float, torch.Tensor]]:
    """Draw n samples at each guidance weight w in ``scales`` with ``sampler`` at ``steps`` steps (``None``: the
    model's own, :meth:`~mnistdiff.model.DiffusionModel.sampling_defaults`), and score them.

    ``model``: a class-conditional :class:`~mnistdiff.model.DiffusionModel`. The labels
    are :func:`balanced_labels` ``(n)`` and the seed is the same for every w. Returns ``(rows, samples)``:
    ``rows["w = 2"]`` holds ``guidance``, ``label_accuracy``, ``per_class_accuracy``, the metrics of
    :func:`~mnistdiff.evaluation.metrics.evaluate` (without the memorisation distance), ``sampling_seconds`` and
    ``seconds_per_sample``; ``samples[w]`` the images (n, 1, 32, 32).
    """
    if model.num_classes is None:
        raise ValueError("guidance_sweep needs a class-conditional model (a cldm model file)")
    labels = balanced_labels(n, model.num_classes)
    rows: dict[str, dict[str, Any]] = {}
    samples: dict[float, torch.Tensor] = {}
    for w in scales:
        start = time.perf_counter()
        images, _ = model.sample(n, sampler=sampler, steps=steps, eta=eta, seed=seed, device=device,
                                 labels=labels, guidance=float(w))
        seconds = time.perf_counter() - start
        metrics = evaluate(images, seed=seed, device=device, include_memorisation=False, labels=labels)
        rows[f"w = {float(w):g}"] = {"guidance": float(w), **metrics, "sampling_seconds": round(seconds, 2),
                                      "seconds_per_sample": seconds / n}
        samples[float(w)] = images
    return rows, samples


def recommend_guidance(rows: Mapping[str, Mapping[str, Any]], tolerance: float = ACCURACY_TOLERANCE) -> float:
    """The w to use: the lowest FID among the weights whose accuracy is within ``tolerance`` of the best one.

    Accuracy first (the samples must be the digit asked for), then fidelity to the data (FID, which also
    falls as diversity is lost): more guidance than that buys no accuracy and costs FID.
    """
    if not rows:
        raise ValueError("no rows to choose from")
    best = max(float(r["label_accuracy"]) for r in rows.values())
    accurate = [r for r in rows.values() if float(r["label_accuracy"]) >= best - tolerance]
    return float(min(accurate, key=lambda r: float(r["fid"]))["guidance"])
