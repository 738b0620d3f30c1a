"""Distances between a generated and a real set: FID, KID, precision/recall, memorisation, classes.

* **classifier-FID** — the Fréchet distance between Gaussians fitted to the two feature sets
  (Heusel et al. 2017, eq. 6):  ``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``.
* **KID** — the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (xᵀy / d + 1)³``, averaged over random subsets (Bińkowski et al. 2018, §3).
* **precision / recall** — the k-nearest-neighbour manifold estimate of Kynkäänniemi et al. 2019.
* **nearest-training-image distance** — a memorisation check in pixel space.
* **class statistics** — confidence, class histogram, entropy and the largest deviation from 10 %.

:mod:`mnistdiff.evaluation.metrics` combines them into one ``evaluate``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from mnistdiff.devices import resolve_device
from mnistdiff.evaluation.features import ArrayLike, pixels01

__all__ = [
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
    "nearest_train_neighbours",
    "nearest_train_distance",
    "class_statistics",
    "label_statistics",
]


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
    g = x @ y.T / x.shape[1] + 1.0
    return g * g * g  # not g ** 3: numpy's power is ten times slower than two products


#: A kernel between two whole sets is computed once, and each subset's terms read from it, up to this many entries
#: (a float64 matrix of 400 MB); a larger pair has its kernels computed per subset.
KERNEL_ENTRIES_LIMIT = 50_000_000

#: Each reference set's within-set term per subset, by (the set's bytes' hash, the draws' arguments): ``evaluate``
#: compares every generator with the same 10,000 test digits and draws the same subsets of them.
_WITHIN_CACHE: dict[tuple, np.ndarray] = {}


def _indicators(draws: list[np.ndarray], n: int) -> np.ndarray:
    """``(S, n)``: row s is 1 at the rows of subset s, 0 elsewhere, so that ``rows @ K @ cols.T`` sums K over each
    pair of subsets with two matrix products instead of S gathers."""
    out = np.zeros((len(draws), n))
    for s, i in enumerate(draws):
        out[s, i] = 1.0
    return out


def _within_means(f: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """Σ_{i≠j} k(f_i, f_j) / (m(m−1)) over each subset of rows ``draws`` (each of m rows)."""
    m = len(draws[0])
    if f.shape[0] ** 2 <= KERNEL_ENTRIES_LIMIT:
        k, rows = _poly_kernel(f, f), _indicators(draws, f.shape[0])
        return (((rows @ k) * rows).sum(1) - rows @ np.diag(k)) / (m * (m - 1))
    out = []
    for i in draws:
        k = _poly_kernel(f[i], f[i])
        out.append((k.sum() - np.trace(k)) / (m * (m - 1)))
    return np.array(out)


def _cross_means(a: np.ndarray, b: np.ndarray, draws: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Σ_{i,j} k(a_i, b_j) / m² over each pair of subsets ``draws``."""
    m = len(draws[0][0])
    if a.shape[0] * b.shape[0] <= KERNEL_ENTRIES_LIMIT:
        rows, cols = _indicators([ia for ia, _ in draws], a.shape[0]), _indicators([ib for _, ib in draws], b.shape[0])
        return ((rows @ _poly_kernel(a, b)) * cols).sum(1) / (m * m)
    return np.array([_poly_kernel(a[ia], b[ib]).mean() for ia, ib in draws])


def _mmd2_subsets(a: np.ndarray, b: np.ndarray, draws: list[tuple[np.ndarray, np.ndarray]], key: tuple) -> np.ndarray:
    """The unbiased MMD² of ``a[ia]`` against ``b[ib]`` (Gretton et al. 2012, eq. 3; the formula in
    :func:`kernel_inception_distance`) for each ``(ia, ib)`` of ``draws``, with each kernel
    computed once for the whole sets where it fits (:data:`KERNEL_ENTRIES_LIMIT`) and ``b``'s within-set terms
    cached under ``key`` (its hash and the draws' arguments)."""
    syy = _WITHIN_CACHE.get(key)
    if syy is None:
        syy = _within_means(b, [ib for _, ib in draws])
        if len(_WITHIN_CACHE) >= 16:
            _WITHIN_CACHE.pop(next(iter(_WITHIN_CACHE)))
        _WITHIN_CACHE[key] = syy
    return _within_means(a, [ia for ia, _ in draws]) + syy - 2 * _cross_means(a, b, draws)


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
    distributions. Seeded (``numpy.random.default_rng(seed)``) and deterministic. Each kernel is computed once
    for the whole sets where it fits and the subsets' terms read from it, and the second set's own terms are kept
    for the next call with the same set and draws (the test digits every generator is compared with): the same
    sums as subset by subset, in a fraction of the time.
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
    draws = [(rng.choice(a.shape[0], m, replace=False), rng.choice(b.shape[0], m, replace=False))
             for _ in range(num_subsets)]
    key = (hashlib.sha256(b.tobytes()).hexdigest(), b.shape, a.shape[0], m, seed, num_subsets)
    vals = _mmd2_subsets(a, b, draws, key)
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
    device = resolve_device(device)
    q = pixels01(x).to(device)
    t = pixels01(train_images).to(device)
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


def label_statistics(probs: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """How often the classifier reads each sample as the class it was asked for.

    ``probs``: class probabilities ``(N, 10)``; ``labels``: ``(N,)`` classes asked for, ``−1`` (no label) rows
    ignored. Returns ``label_accuracy`` (over the labelled rows) and ``per_class_accuracy`` (a list of 10;
    ``None`` for a class never asked for).
    """
    p = torch.as_tensor(probs).detach().float().cpu()
    y = torch.as_tensor(labels).detach().long().cpu()
    if p.ndim != 2 or p.shape[1] != 10 or y.shape != (p.shape[0],):
        raise ValueError(f"need probs (N, 10) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}")
    asked = y >= 0
    if not bool(asked.any()):
        raise ValueError("no sample has a label (all are -1)")
    hit = (p.argmax(1) == y).double()
    per_class = [float(hit[y == c].mean()) if bool((y == c).any()) else None for c in range(p.shape[1])]
    return {"label_accuracy": float(hit[asked].mean()), "per_class_accuracy": per_class}
