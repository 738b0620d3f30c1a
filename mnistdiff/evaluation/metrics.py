"""Sample-quality metrics for MNIST generators, on the features of the project's own classifier.

Every metric here compares a set of generated images with real MNIST images through the
penultimate features ``φ(x) ∈ R^128`` of :class:`mnistdiff.evaluation.classifier.MNISTClassifier`:

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
:func:`format_metrics` prints the two side by side.

Images may be given as uint8 ``[0, 255]`` or float ``[-1, 1]``, as torch tensors or numpy arrays,
28×28 or 32×32 (the 2-pixel padding of :func:`mnistdiff.data.load_mnist` is cropped), shaped
``(N, 1, H, W)`` or ``(N, H, W)``; see :func:`prepare_images`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from mnistdiff.evaluation.classifier import load_classifier

__all__ = [
    "prepare_images",
    "classifier_features",
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
    "nearest_train_neighbours",
    "nearest_train_distance",
    "class_statistics",
    "reference_features",
    "evaluate",
    "real_floor",
    "evaluate_npz",
    "format_metrics",
    "format_value",
    "TABLE_COLUMNS",
    "METRIC_KEYS",
]

ArrayLike = Union[torch.Tensor, np.ndarray]

#: tolerance on the [-1, 1] range of float inputs (values within it are clamped)
RANGE_TOL = 1e-3

#: the scalar metrics that :func:`evaluate` and :func:`real_floor` return, in display order
METRIC_KEYS = (
    "fid", "kid", "precision", "recall", "confidence", "class_entropy", "class_max_deviation",
    "nn_train_distance", "nn_train_distance_min",
)

#: How a metric is shown in every table (:func:`format_metrics`, :func:`~mnistdiff.evaluation.report.results_table`): ``(key, header, format, factor)``; a value is shown as
#: ``format.format(value * factor)``.
TABLE_COLUMNS: tuple[tuple[str, str, str, float], ...] = (
    ("n", "n", "{:d}", 1),
    ("fid", "FID ↓", "{:.2f}", 1.0),
    ("kid", "KID ↓", "{:.4f}", 1.0),
    ("precision", "precision ↑", "{:.3f}", 1.0),
    ("recall", "recall ↑", "{:.3f}", 1.0),
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


_EXPECTED = (
    "expected images of shape (N, 1, H, W) or (N, H, W) with H = W = 28 or 32, N ≥ 1, "
    "either uint8 in [0, 255] or float in [-1, 1] (torch tensor or numpy array)"
)


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------


def prepare_images(x: ArrayLike) -> torch.Tensor:
    """Validate and convert images to float32 ``(N, 1, 28, 28)`` in [-1, 1] on the CPU.

    Accepts a torch tensor or numpy array shaped ``(N, 1, H, W)`` or ``(N, H, W)`` with
    ``H = W ∈ {28, 32}`` (32×32 inputs have their 2-pixel padding cropped). Integer inputs are
    read as pixel values in [0, 255] (``x ↦ 2x/255 − 1``); float inputs must lie in [-1, 1]
    (up to ``RANGE_TOL``, then clamped). Raises ``ValueError`` saying what is expected for an empty
    batch, NaN/inf values, a wrong number of dimensions, channels or size, out-of-range values or an
    unsupported dtype.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"unsupported numpy dtype {x.dtype}; {_EXPECTED}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"got a {type(x).__name__}; {_EXPECTED}")
    x = x.detach()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"got an array of shape {tuple(x.shape)} ({x.ndim} dimensions); {_EXPECTED}")
    if x.shape[0] == 0:
        raise ValueError(f"got an empty batch of shape {tuple(x.shape)}; {_EXPECTED}")
    if x.shape[1] != 1:
        raise ValueError(f"got {x.shape[1]} channels (shape {tuple(x.shape)}); MNIST images have 1 channel; {_EXPECTED}")
    h, w = int(x.shape[2]), int(x.shape[3])
    if (h, w) not in ((28, 28), (32, 32)):
        raise ValueError(f"got images of size {h}×{w} (shape {tuple(x.shape)}); {_EXPECTED}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"unsupported dtype {x.dtype}; {_EXPECTED}")
    x = x.cpu()
    if (h, w) == (32, 32):
        x = x[:, :, 2:30, 2:30]
    if x.dtype == torch.uint8:
        return x.float().div(127.5).sub(1.0).contiguous()
    if not x.is_floating_point():  # other integer types: pixel values
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must be pixel values in [0, 255], got range [{lo}, {hi}]; {_EXPECTED}")
        return x.float().div(127.5).sub(1.0).contiguous()
    x = x.float()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"images contain {bad} NaN/inf values; {_EXPECTED}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
        hint = " (they look like [0, 255] floats: pass uint8 or divide by 127.5 and subtract 1)" if hi > 2 else ""
        raise ValueError(
            f"float images must lie in [-1, 1], got range [{lo:.4g}, {hi:.4g}]{hint}; "
            f"clamp generated samples with x.clamp(-1, 1); {_EXPECTED}"
        )
    return x.clamp(-1, 1).contiguous()


def _as_float64_2d(f: ArrayLike, name: str, min_rows: int = 1) -> np.ndarray:
    """Features as a float64 numpy array ``(N, D)``, validated."""
    if isinstance(f, torch.Tensor):
        f = f.detach().cpu().double().numpy()
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D feature array (N, D), got shape {f.shape}")
    if f.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows (samples), got {f.shape[0]}")
    if f.shape[1] == 0:
        raise ValueError(f"{name} has zero feature dimensions (shape {f.shape})")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return f


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        from mnistdiff.devices import default_device

        return default_device()
    return torch.device(device)


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def classifier_features(
    x: ArrayLike, batch_size: int = 500, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and class probabilities of the committed classifier.

    ``x``: images in any form :func:`prepare_images` accepts, N of them.
    Returns ``(feats, probs)`` as float32 CPU tensors of shapes ``(N, 128)`` and ``(N, 10)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    images = prepare_images(x)
    device = _resolve_device(device)
    model = load_classifier(device)
    feats, probs = [], []
    for i in range(0, images.shape[0], batch_size):
        f = model.features(images[i : i + batch_size].to(device))
        feats.append(f.float().cpu())
        probs.append(torch.softmax(model.head(f), dim=1).float().cpu())
    return torch.cat(feats), torch.cat(probs)


# ----------------------------------------------------------------------------------------------
# distances between feature sets
# ----------------------------------------------------------------------------------------------


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition (float64)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1: ArrayLike, f2: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).

    ``f1``: ``(N₁, D)``, ``f2``: ``(N₂, D)``, N ≥ 2 each. With sample means ``μᵢ`` and sample
    covariances ``Σᵢ`` (``ddof = 1``, as ``np.cov``)::

        d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}

    computed in float64; ``tr (Σ₁ Σ₂)^{1/2} = tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}`` is the sum of the
    square roots of the eigenvalues of a symmetric PSD matrix, which avoids the complex round-off
    of a general ``sqrtm``. Returns the squared distance (the number usually reported as "FID").
    """
    a = _as_float64_2d(f1, "f1", min_rows=2)
    b = _as_float64_2d(f2, "f2", min_rows=2)
    _check_same_dim(a, b)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.atleast_2d(np.cov(a, rowvar=False))
    s2 = np.atleast_2d(np.cov(b, rowvar=False))
    r1 = _sqrtm_psd(s1)
    eig = np.linalg.eigvalsh((r1 @ s2 @ r1 + (r1 @ s2 @ r1).T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    d2 = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(d2, 0.0)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with the cubic polynomial kernel; x, y: (m, D)."""
    m = x.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(
    f1: ArrayLike,
    f2: ArrayLike,
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
    *,
    return_std: bool = False,
) -> float | tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): mean unbiased MMD² over random subsets.

    ``f1``: ``(N₁, D)``, ``f2``: ``(N₂, D)``. For each of ``num_subsets`` draws, ``m`` rows of each
    set are sampled without replacement (``m = min(subset_size, N₁, N₂)``, at least 2) and ::

        MMD²ᵤ = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(m(m−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/m² Σ_{i,j} k(xᵢ, yⱼ)

    with ``k(x, y) = (xᵀy / D + 1)³``. Unbiased, so it can be slightly negative for identical
    distributions. Seeded (``numpy.random.default_rng(seed)``) and deterministic.
    Returns the mean, or ``(mean, std over subsets)`` with ``return_std=True``.
    """
    a = _as_float64_2d(f1, "f1", min_rows=2)
    b = _as_float64_2d(f2, "f2", min_rows=2)
    _check_same_dim(a, b)
    if subset_size < 2:
        raise ValueError(f"subset_size must be ≥ 2, got {subset_size}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be ≥ 1, got {num_subsets}")
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for s in range(num_subsets):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        vals[s] = _mmd2_unbiased(a[ia], b[ib])
    mean, std = float(vals.mean()), float(vals.std())
    return (mean, std) if return_std else mean


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` via ‖a‖² + ‖b‖² − 2 a·b, clamped at 0."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0)


def _kth_nn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Squared distance of each row of x to its k-th nearest other row (self excluded)."""
    out = []
    for i in range(0, x.shape[0], chunk):
        d = _sq_dists(x[i : i + chunk], x)
        # the k+1 smallest include the point itself (distance 0)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of queries within the k-NN ball of at least one support point."""
    inside = 0
    for i in range(0, queries.shape[0], chunk):
        d = _sq_dists(queries[i : i + chunk], support)
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3, chunk_size: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1–3).

    ``real_feats``: ``(N_r, D)``, ``fake_feats``: ``(N_f, D)``, each with more than ``k`` rows.
    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour in the same set; precision = fraction of fake points inside the
    real manifold, recall = fraction of real points inside the fake manifold. Distances in float64,
    computed in chunks of ``chunk_size`` rows so memory stays bounded. The paper uses ``k = 3`` and
    equal set sizes. Returns ``(precision, recall)`` in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    r = torch.from_numpy(_as_float64_2d(real_feats, "real_feats", min_rows=k + 1))
    f = torch.from_numpy(_as_float64_2d(fake_feats, "fake_feats", min_rows=k + 1))
    _check_same_dim(r.numpy(), f.numpy())
    radii_r = _kth_nn_radii(r, k, chunk_size)
    radii_f = _kth_nn_radii(f, k, chunk_size)
    precision = _coverage(f, r, radii_r, chunk_size)
    recall = _coverage(r, f, radii_f, chunk_size)
    return precision, recall


# ----------------------------------------------------------------------------------------------
# memorisation
# ----------------------------------------------------------------------------------------------


def _pixels01(x: ArrayLike) -> torch.Tensor:
    """Images → float32 ``(N, 784)`` in [0, 1]."""
    return prepare_images(x).add(1).div(2).flatten(1)


@torch.no_grad()
def nearest_train_neighbours(
    x: ArrayLike,
    train_images: ArrayLike | None = None,
    *,
    query_chunk: int = 1024,
    train_chunk: int = 8192,
    device: str | torch.device | None = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the L2 distance to its nearest training image and that image's index.

    ``x``: N images; ``train_images``: M images (default: the 60 000 MNIST training images); both
    in any form :func:`prepare_images` accepts. Distances are between 28×28 images in [0, 1] pixel
    units (so the largest possible is 28). The N × M distance matrix is never held: it is computed
    in ``query_chunk × train_chunk`` blocks, keeping a running minimum.
    Returns ``(distances (N,) float32, indices (N,) int64)`` on the CPU.
    """
    if train_images is None:
        from mnistdiff.data import load_mnist

        train_images = load_mnist("train").images
    device = torch.device(device) if device is not None else _resolve_device(None)
    q = _pixels01(x).to(device)
    t = _pixels01(train_images).to(device)
    t_sq = (t * t).sum(1)
    best_d = torch.empty(q.shape[0], device=device)
    best_i = torch.empty(q.shape[0], dtype=torch.long, device=device)
    for i in range(0, q.shape[0], query_chunk):
        qi = q[i : i + query_chunk]
        q_sq = (qi * qi).sum(1, keepdim=True)
        run_d = torch.full((qi.shape[0],), float("inf"), device=device)
        run_i = torch.zeros(qi.shape[0], dtype=torch.long, device=device)
        for j in range(0, t.shape[0], train_chunk):
            d = (q_sq + t_sq[None, j : j + train_chunk] - 2.0 * (qi @ t[j : j + train_chunk].T)).clamp_min_(0)
            dmin, imin = d.min(1)
            better = dmin < run_d
            run_d = torch.where(better, dmin, run_d)
            run_i = torch.where(better, imin + j, run_i)
        best_d[i : i + query_chunk] = run_d
        best_i[i : i + query_chunk] = run_i
    return best_d.sqrt().cpu(), best_i.cpu()


def nearest_train_distance(
    x: ArrayLike, train_images: ArrayLike | None = None, **kwargs: Any
) -> dict[str, float]:
    """Summary of :func:`nearest_train_neighbours`: ``{"mean", "median", "min"}`` L2 distances
    ([0, 1] pixel units, 28×28) from the images to their nearest training image. A mean close to
    the real floor (held-out test images: see :func:`real_floor`) means no memorisation; a minimum
    near 0 means at least one training digit was reproduced.
    """
    d, _ = nearest_train_neighbours(x, train_images, **kwargs)
    return {"mean": float(d.mean()), "median": float(d.median()), "min": float(d.min())}


# ----------------------------------------------------------------------------------------------
# class statistics
# ----------------------------------------------------------------------------------------------


def class_statistics(probs: ArrayLike) -> dict[str, Any]:
    """Confidence and predicted-class balance from class probabilities ``(N, 10)``.

    Returns ``confidence`` (mean max-softmax probability), ``class_histogram`` (fraction of samples
    predicted as each digit, a list of 10), ``class_entropy`` (entropy of that histogram in bits;
    log₂ 10 ≈ 3.32 for a uniform one) and ``class_max_deviation`` (max ``|fraction − 0.1|``).
    """
    p = torch.as_tensor(probs).detach().float().cpu()
    if p.ndim != 2 or p.shape[1] != 10 or p.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, 10) with N ≥ 1, got {tuple(p.shape)}")
    hist = torch.bincount(p.argmax(1), minlength=10).double() / p.shape[0]
    nz = hist[hist > 0]
    entropy = float(-(nz * nz.log2()).sum()) + 0.0  # + 0.0 turns −0.0 into 0.0
    return {
        "confidence": float(p.max(1).values.double().mean()),
        "class_histogram": [float(h) for h in hist],
        "class_entropy": entropy,
        "class_max_deviation": float((hist - 0.1).abs().max()),
    }


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
    device: str | torch.device | None = None, n_ref: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier features ``(n_ref, 128)`` and probabilities ``(n_ref, 10)`` of the MNIST test set
    (all 10 000 images, or a seeded subset of ``n_ref``), computed once per process and cached.

    A subset's features are computed from the subset's images (not sliced from the full set), so a
    result never depends on what was computed earlier in the process.
    """
    from mnistdiff.data import load_mnist
    from mnistdiff.evaluation.classifier import CLASSIFIER_PATH

    device = _resolve_device(device)
    test = load_mnist("test").images
    idx = _subset_rows(test.shape[0], n_ref, seed)
    key = (str(CLASSIFIER_PATH), str(device), None if idx is None else (n_ref, seed))
    if key not in _REF_CACHE:
        _REF_CACHE[key] = classifier_features(test if idx is None else test[idx], device=device)
    return _REF_CACHE[key]


def _evaluate_features(
    feats: torch.Tensor,
    probs: torch.Tensor,
    *,
    n_ref: int | None,
    seed: int,
    device: torch.device,
    kid_subset_size: int,
    kid_subsets: int,
    k: int,
) -> dict[str, Any]:
    ref_f, _ = reference_features(device, n_ref, seed)
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"need more than k = {k} samples for precision/recall, got {n}")
    # precision/recall with equal set sizes (as in Kynkäänniemi et al.): a seeded subset of the reference
    pr_idx = _subset_rows(ref_f.shape[0], n, seed + 1)
    pr_ref = ref_f if pr_idx is None else ref_f[pr_idx]
    kid, kid_std = kernel_inception_distance(feats, ref_f, kid_subset_size, kid_subsets, seed, return_std=True)
    precision, recall = precision_recall(pr_ref, feats, k=k)
    out: dict[str, Any] = {
        "n": int(n),
        "n_ref": int(ref_f.shape[0]),
        "fid": frechet_distance(feats, ref_f),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }
    out.update(class_statistics(probs))
    return out


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
) -> dict[str, Any]:
    """All metrics for a batch of generated images against the MNIST test set.

    ``samples``: N images (N > k) in any form :func:`prepare_images` accepts.
    ``n_ref``: how many test images form the reference (a seeded subset; default all 10 000).
    FID and KID use the whole reference; precision/recall use a seeded reference subset of
    ``min(N, n_ref)`` images so both sets have the same size, as in the paper.

    Returns a JSON-serialisable dict: ``n``, ``n_ref``, ``fid``, ``kid``, ``kid_std``,
    ``precision``, ``recall``, ``confidence``, ``class_histogram`` (10 fractions),
    ``class_entropy`` (bits), ``class_max_deviation`` and, with ``include_memorisation``,
    ``nn_train_distance`` (mean) and ``nn_train_distance_min`` (see :func:`nearest_train_distance`).
    Compare with :func:`real_floor` ``(N)``.
    """
    device = _resolve_device(device)
    images = prepare_images(samples)
    feats, probs = classifier_features(images, device=device)
    out = _evaluate_features(
        feats, probs, n_ref=n_ref, seed=seed, device=device,
        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, k=k,
    )
    if include_memorisation:
        nn = nearest_train_distance(images, device=device)
        out["nn_train_distance"] = nn["mean"]
        out["nn_train_distance_min"] = nn["min"]
    return out


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
    device = _resolve_device(device)
    key = (n, seed, str(device), n_ref, include_memorisation, kid_subset_size, kid_subsets, k)
    if key not in _FLOOR_CACHE:
        from mnistdiff.data import load_mnist

        train = load_mnist("train").subset(n, seed=seed)
        feats, probs = classifier_features(train.images, device=device)
        out = _evaluate_features(
            feats, probs, n_ref=n_ref, seed=seed, device=device,
            kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, k=k,
        )
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
    any form :func:`prepare_images` accepts works). ``n``: use only the first ``n`` samples.

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
        raise ValueError(f"{path} is a single .npy array, expected an .npz archive with key 'samples' (np.savez(path, samples=...))")
    with data:
        if "samples" not in data.files:
            raise ValueError(
                f"{path} has no array 'samples' (it has {sorted(data.files)}); expected key 'samples' "
                "holding uint8 images of shape (N, 1, 32, 32), e.g. np.savez(path, samples=to_uint8(x).numpy())"
            )
        samples = data["samples"]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        if samples.ndim >= 1 and n > samples.shape[0]:
            raise ValueError(f"n = {n} but {path} holds only {samples.shape[0]} samples")
        samples = samples[:n]
    metrics = evaluate(samples, seed=seed, device=device)
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
        lines.append(key.ljust(22) + "".join(format_value(cols[n].get(key), fmt, factor).rjust(width + 2) for n in names))
    return "\n".join(lines)
