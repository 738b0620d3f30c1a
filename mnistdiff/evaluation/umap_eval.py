"""UMAP of real vs generated digits, done so that the picture and the number can be trusted.

UMAP (McInnes, Healy & Melville 2018) embeds images in 2-D by preserving a k-nearest-neighbour
graph. Fitting one UMAP on real and generated images together lets the generated points shape the
map; fitting separate UMAPs makes the maps incomparable. The sound protocol, used here:

1. fit UMAP once, on real images only (pixel space, flattened 28×28 in [0, 1]), seeded with
   ``random_state=seed`` and ``n_jobs=1`` so that the embedding is reproducible;
2. *transform* held-out real images and each generator's samples into that fixed map — both go
   through the same ``transform`` code path, so they are comparable with each other (points that
   were fitted are placed by a different procedure than transformed ones);
3. quantify the overlap with a k-NN two-sample test (Friedman 2003; Lopez-Paz & Oquab 2017):
   the leave-one-out accuracy of a k-NN classifier telling real from generated in a balanced pooled
   set. 0.5 means indistinguishable, 1.0 fully separable. The same test is run on the raw pixels and,
   optionally, the classifier features, because a 2-D embedding can hide (or invent) differences.

The real-vs-real floor of the accuracy is 0.5 up to sampling noise (about ±0.5/√n).

A caveat the numbers make visible: ``transform`` places every new point near its nearest fitted
real images, so even pure noise lands *on* the real map (its 2-D accuracy stays well below 1 while
the pixel and feature accuracies are 1.0). A UMAP picture can show missing or over-represented
regions (mode collapse, class imbalance) but cannot prove that samples look real.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistdiff.evaluation.features import ArrayLike, classifier_features, pixels01, prepare_images
from mnistdiff.extras import require

__all__ = [
    "PixelUMAP",
    "fit_umap",
    "embed",
    "knn_two_sample_accuracy",
    "umap_evaluation",
    "save_umap_plot",
]


def _pixels(images: ArrayLike) -> np.ndarray:
    """Images → float32 numpy ``(N, 784)`` in [0, 1]."""
    return pixels01(images).numpy().astype(np.float32)


def pixel_distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Euclidean distances ``(M, N)`` between pixel rows ``a`` ``(M, 784)`` and ``b`` ``(N, 784)``, float64.

    ``cdist`` computes them by a matrix product, which leaves about 1e-7 where two images are identical; those are
    set to exactly 0 (two different MNIST images lie at least 1/255 apart), as umap-learn's own search finds them:
    UMAP measures each point's neighbourhood from its nearest non-zero distance.
    """
    d = torch.cdist(a, b)
    return d.masked_fill_(d < 1e-5, 0.0).numpy()


@dataclass(frozen=True)
class PixelUMAP:
    """A UMAP map fitted on real pixels: :attr:`embedding_` places the fitted images, :meth:`transform` new ones.

    The pixel distances are computed here (``torch.cdist``, float64) and handed to umap-learn as
    ``metric="precomputed"``. umap-learn finds the exact neighbours of fewer than 4,096 points from all pairwise
    distances, but it computes them through scikit-learn with one Python call per pair: placing 2,000 images on a
    map of 4,000 means 8 million calls. ``cdist`` gives the same exact neighbours with one matrix product.
    """

    umap: Any  # the fitted umap.UMAP (metric="precomputed")
    fit_pixels: torch.Tensor  # (N, 784) float64 in [0, 1]: the images it was fitted on

    @property
    def embedding_(self) -> np.ndarray:
        """Where the fitted images lie: ``(N, 2)``."""
        return self.umap.embedding_

    def transform(self, pixels: torch.Tensor) -> np.ndarray:
        """Place ``pixels`` ``(M, 784)`` in [0, 1] on the map (umap-learn's ``transform``): ``(M, 2)``."""
        distances = pixel_distances(pixels.double(), self.fit_pixels)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Transforming new data with precomputed metric")
            return self.umap.transform(distances)


def fit_umap(real_images: ArrayLike, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> PixelUMAP:
    """Fit UMAP (McInnes et al. 2018) on real images in pixel space (Euclidean distances between them).

    ``real_images``: N images in any form :func:`mnistdiff.evaluation.metrics.prepare_images` accepts, with
    ``N > n_neighbors``; they are flattened to ``(N, 784)`` in [0, 1]. Seeded (``random_state=seed``)
    and single-threaded (``n_jobs=1``) so the same inputs always give the same embedding
    (``embedding_``, ``(N, 2)``). Returns the fitted :class:`PixelUMAP`.
    """
    umap = require("umap", "the UMAP evaluation")  # imported lazily: numba compilation makes the import slow

    x = pixels01(real_images).double()
    if x.shape[0] <= n_neighbors:
        raise ValueError(f"UMAP needs more than n_neighbors = {n_neighbors} real images, got {x.shape[0]}")
    reducer = umap.UMAP(
        n_neighbors=n_neighbors, min_dist=min_dist, n_components=2, metric="precomputed",
        random_state=seed, n_jobs=1, transform_seed=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="using precomputed metric; inverse_transform will be unavailable")
        reducer.fit(pixel_distances(x, x))
    return PixelUMAP(reducer, x)


def embed(reducer: PixelUMAP, images: ArrayLike) -> np.ndarray:
    """Place images ``(N, …)`` into a fitted UMAP map: returns ``(N, 2)`` float32."""
    return np.asarray(reducer.transform(pixels01(images)), dtype=np.float32)


def _as_points(x: ArrayLike, name: str) -> np.ndarray:
    """2-D arrays are taken as points (N, D); anything else as images (flattened pixels)."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu()
        if arr.ndim == 2:
            arr = arr.double().numpy()
        else:
            return _pixels(arr).astype(np.float64)
    else:
        arr = np.asarray(x)
        if arr.ndim != 2:
            return _pixels(arr).astype(np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return arr


def knn_two_sample_accuracy(a: ArrayLike, b: ArrayLike, k: int = 5, seed: int = 0) -> float:
    """Leave-one-out k-NN two-sample accuracy between sets ``a`` and ``b`` (0.5 = same distribution).

    ``a``: ``(N_a, D)`` points or N_a images, ``b`` likewise (images are flattened to pixels in [0, 1]).
    The larger set is subsampled (seeded) to the size of the smaller, so the pooled set of ``2m``
    points is balanced and chance accuracy is exactly 0.5. Each point is classified by the majority
    label of its ``k`` nearest *other* points (Euclidean; a tie counts as half correct), and the
    accuracy is averaged over all ``2m`` points. Values near 1 mean the sets are separable.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    NearestNeighbors = require("sklearn.neighbors", "the k-NN two-sample test").NearestNeighbors

    xa, xb = _as_points(a, "a"), _as_points(b, "b")
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a and b have different dimensions: {xa.shape[1]} vs {xb.shape[1]}")
    m = min(xa.shape[0], xb.shape[0])
    if 2 * m <= k + 1 or m < 2:
        raise ValueError(
            f"need at least 2 points per set and 2·min(N_a, N_b) > k + 1; got {xa.shape[0]}, {xb.shape[0]} with k = {k}"
        )
    rng = np.random.default_rng(seed)
    if xa.shape[0] > m:
        xa = xa[np.sort(rng.choice(xa.shape[0], m, replace=False))]
    if xb.shape[0] > m:
        xb = xb[np.sort(rng.choice(xb.shape[0], m, replace=False))]
    pooled = np.concatenate([xa, xb])
    labels = np.concatenate([np.zeros(m), np.ones(m)])
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=1).fit(pooled)
    idx = nn.kneighbors(return_distance=False)  # X=None: each point's neighbours exclude itself
    vote = labels[idx].mean(1)
    correct = np.where(vote == 0.5, 0.5, ((vote > 0.5) == (labels == 1)).astype(np.float64))
    return float(correct.mean())


def umap_evaluation(
    real_images: ArrayLike,
    real_labels: ArrayLike | None,
    generated: Mapping[str, ArrayLike],
    *,
    seed: int = 0,
    heldout_images: ArrayLike | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    k: int = 5,
    feature_space: bool = True,
    reducer: PixelUMAP | None = None,
    ncols: int = 3,
    device: str | torch.device | None = None,
) -> tuple[Any, dict[str, dict[str, float]]]:
    """Fit UMAP on real images, place each generator's samples on it, plot and score the overlap.

    ``real_images``: N real images; ``real_labels``: their digits ``(N,)`` (colours the real points;
    None for grey); ``generated``: name → images. When ``heldout_images`` is None, the real images are
    split (seeded): ``min(max generated count, N // 2)`` are held out and transformed like the
    samples, the rest fit the UMAP (unless a fitted ``reducer`` is given, then all N are shown).

    Returns ``(fig, scores)`` where ``scores[name]`` holds ``knn_accuracy_umap`` (held-out real vs
    samples in the 2-D map), ``knn_accuracy_pixels`` (the same in pixel space) and, with
    ``feature_space``, ``knn_accuracy_features`` (in classifier-feature space), plus ``n``. Each
    accuracy's real-vs-real floor is 0.5. The figure has one panel for the held-out real images
    (the visual floor) and one per generator: real fit points coloured by digit, samples in black.
    """
    if not generated:
        raise ValueError("generated must map at least one name to a batch of images")
    real, labels = prepare_images(real_images), _labels(real_labels, real_images)
    gens = {name: prepare_images(x) for name, x in generated.items()}
    if heldout_images is None:
        n_hold = min(max(g.shape[0] for g in gens.values()), real.shape[0] // 2)
        perm = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(seed))
        hold_idx, fit_idx = perm[:n_hold], perm[n_hold:]
        held = real[hold_idx]
        if reducer is None:
            real, labels = real[fit_idx], (labels[fit_idx.numpy()] if labels is not None else None)
    else:
        held = prepare_images(heldout_images)
    if reducer is None:
        reducer = fit_umap(real, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist)
        real_emb = np.asarray(reducer.embedding_)
    else:
        real_emb = embed(reducer, real)
    held_emb = embed(reducer, held)
    held_feats = classifier_features(held, device=device)[0] if feature_space else None
    scores: dict[str, dict[str, float]] = {}
    embs: dict[str, np.ndarray] = {}
    for name, g in gens.items():
        embs[name] = embed(reducer, g)
        scores[name] = _scores(held, held_emb, held_feats, g, embs[name], k, seed, device)
    panels = [("real (held out)", held_emb, None)] + [(n, e, scores[n]) for n, e in embs.items()]
    return _plot_panels(panels, real_emb, labels, ncols), scores


def _labels(real_labels: ArrayLike | None, real_images: ArrayLike) -> np.ndarray | None:
    """The real digits as a flat numpy array (one per real image), or None."""
    if real_labels is None:
        return None
    labels = np.asarray(torch.as_tensor(real_labels).cpu()).reshape(-1)
    if labels.shape[0] != len(real_images):
        raise ValueError(f"real_labels has {labels.shape[0]} entries for {len(real_images)} real images")
    return labels


def _scores(held: torch.Tensor, held_emb: np.ndarray, held_feats: torch.Tensor | None, g: torch.Tensor,
            emb: np.ndarray, k: int, seed: int, device: str | torch.device | None) -> dict[str, float]:
    """The k-NN two-sample accuracies of one generator's samples against the held-out real images."""
    s = {
        "n": int(min(g.shape[0], held.shape[0])),
        "knn_accuracy_umap": knn_two_sample_accuracy(held_emb, emb, k=k, seed=seed),
        "knn_accuracy_pixels": knn_two_sample_accuracy(held, g, k=k, seed=seed),
    }
    if held_feats is not None:
        s["knn_accuracy_features"] = knn_two_sample_accuracy(held_feats, classifier_features(g, device=device)[0],
                                                             k=k, seed=seed)
    return s


def _panel_title(name: str, s: Mapping[str, float] | None) -> str:
    """A panel's title on three short lines (name, then the accuracies), so neighbouring titles never overlap."""
    if s is None:
        return f"{name}\nthe reference\n(k-NN accuracy 0.5)"
    title = f"{name}\nk-NN accuracy: UMAP {s['knn_accuracy_umap']:.2f}\npixels {s['knn_accuracy_pixels']:.2f}"
    if "knn_accuracy_features" in s:
        title += f", features {s['knn_accuracy_features']:.2f}"
    return title


def _plot_panels(panels: list[tuple[str, np.ndarray, Mapping[str, float] | None]], real_emb: np.ndarray,
                 labels: np.ndarray | None, ncols: int) -> Any:
    """One panel per set: the real fit points (coloured by digit, or grey) under the set's points (black)."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 1, 4.2 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    size = max(1.0, min(6.0, 3000 / max(1, real_emb.shape[0])))
    for ax, (name, emb, s) in zip(axes.flat, panels):
        if labels is not None:
            sc = ax.scatter(real_emb[:, 0], real_emb[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5,
                            s=size, alpha=0.35, linewidths=0, rasterized=True)
        else:
            ax.scatter(real_emb[:, 0], real_emb[:, 1], c="0.75", s=size, linewidths=0, rasterized=True)
        ax.scatter(emb[:, 0], emb[:, 1], c="black", s=max(2.0, size), linewidths=0, alpha=0.8, rasterized=True)
        ax.set_title(_panel_title(name, s), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None:
        cbar = fig.colorbar(sc, ax=axes.ravel().tolist(), ticks=range(10), shrink=0.6, pad=0.02)
        cbar.set_label("real digit")
    fig.suptitle(f"UMAP fitted on {real_emb.shape[0]} real images (colour); black: transformed points "
                 "(k-NN accuracy 0.5 = indistinguishable)", fontsize=10)
    return fig


def save_umap_plot(fig, path: str | Path, *, dpi: int = 150) -> Path:
    """Save a figure from :func:`umap_evaluation` (PNG, PDF or SVG by suffix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
