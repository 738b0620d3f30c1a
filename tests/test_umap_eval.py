"""Tests for mnistdiff.evaluation.umap_eval: the k-NN two-sample test and the seeded UMAP protocol.

Small sizes (a few hundred images) keep this fast on CPU; the first UMAP fit pays numba's
JIT compilation once.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mnistdiff.data import load_mnist, to_uint8  # noqa: E402
from mnistdiff.evaluation.features import pixels01  # noqa: E402
from mnistdiff.evaluation.umap_eval import (  # noqa: E402
    embed,
    fit_umap,
    knn_two_sample_accuracy,
    save_umap_plot,
    umap_evaluation,
)


@pytest.fixture(scope="module")
def real():
    return load_mnist("train").subset(600, seed=3)


@pytest.fixture(scope="module")
def reducer(real):
    return fit_umap(real.images[:300], seed=0)


def test_knn_accuracy_same_vs_disjoint():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 3)), rng.standard_normal((400, 3))
    same = knn_two_sample_accuracy(a, b, k=5, seed=0)
    assert 0.4 < same < 0.6
    assert knn_two_sample_accuracy(a, b + 20.0, k=5, seed=0) == 1.0
    assert knn_two_sample_accuracy(a, b, k=5, seed=0) == same  # deterministic
    # unbalanced inputs are subsampled to a balanced pooled set: still separable → 1.0
    assert knn_two_sample_accuracy(a[:50], b + 20.0, k=5, seed=1) == 1.0
    # golden 1-D case, worked by hand: a = {0, 10}, b = {1, 11}
    pts_a, pts_b = np.array([[0.0], [10.0]]), np.array([[1.0], [11.0]])
    # k=1: every point's nearest neighbour is in the other set → all wrong
    assert knn_two_sample_accuracy(pts_a, pts_b, k=1) == 0.0
    # k=2: 0 → {1(b), 10(a)} tie ½; 1 → {0(a), 10(a)} wrong; 10 → {11(b), 1(b)} wrong; 11 → {10(a), 1(b)} tie ½
    assert knn_two_sample_accuracy(pts_a, pts_b, k=2) == 0.25


def test_knn_accuracy_errors():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k must be"):
        knn_two_sample_accuracy(a, a, k=0)
    with pytest.raises(ValueError, match="different dimensions"):
        knn_two_sample_accuracy(a, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 2 points"):
        knn_two_sample_accuracy(a[:1], a, k=1)
    with pytest.raises(ValueError, match="NaN"):
        knn_two_sample_accuracy(np.full((10, 2), np.nan), a)
    with pytest.raises(ValueError, match="expected images"):
        knn_two_sample_accuracy(np.zeros((10, 1, 30, 30)), a)


def test_fit_umap_is_seeded_and_reproducible(real, reducer):
    again = fit_umap(real.images[:300], seed=0)
    assert reducer.embedding_.shape == (300, 2)
    np.testing.assert_array_equal(reducer.embedding_, again.embedding_)
    x = to_uint8(real.images[300:340])
    np.testing.assert_array_equal(embed(reducer, x), embed(again, x))
    with pytest.raises(ValueError, match="more than n_neighbors"):
        fit_umap(real.images[:10], seed=0)


def test_umap_evaluation_scores_and_plot(real, reducer, tmp_path):
    g = torch.Generator().manual_seed(0)
    held_real = load_mnist("test").subset(150, seed=0).images
    generated = {
        "real (other)": held_real,
        "noise": torch.rand(150, 1, 32, 32, generator=g) * 2 - 1,
    }
    fig, scores = umap_evaluation(
        real.images[300:], real.labels[300:], generated, seed=0, heldout_images=real.images[:150],
        reducer=reducer, device="cpu",
    )
    assert set(scores) == set(generated)
    ok, bad = scores["real (other)"], scores["noise"]
    for key in ("knn_accuracy_umap", "knn_accuracy_pixels", "knn_accuracy_features"):
        assert 0.3 < ok[key] < 0.7, (key, ok)
    # UMAP's transform pulls out-of-distribution points onto the real map, so the 2-D number
    # understates the gap; pixels and features see it fully
    assert bad["knn_accuracy_umap"] > 0.75, bad
    assert bad["knn_accuracy_pixels"] > 0.95 and bad["knn_accuracy_features"] > 0.95, bad
    assert ok["n"] == 150
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(visible) == 3  # held-out real + two generators
    path = save_umap_plot(fig, tmp_path / "umap.png")
    assert path.stat().st_size > 1000


def test_umap_evaluation_splits_real_when_no_heldout(real):
    gen = {"copies": to_uint8(load_mnist("test").subset(60, seed=1).images)}
    fig, scores = umap_evaluation(real.images[:240], None, gen, seed=0, feature_space=False)
    assert set(scores["copies"]) == {"n", "knn_accuracy_umap", "knn_accuracy_pixels"}
    assert scores["copies"]["n"] == 60
    with pytest.raises(ValueError, match="at least one"):
        umap_evaluation(real.images[:240], None, {}, seed=0)
    with pytest.raises(ValueError, match="real_labels"):
        umap_evaluation(real.images[:240], real.labels[:10], gen, seed=0)


def test_fit_umap_builds_the_graph_umap_learns_own_euclidean_search_builds(real, reducer):
    # the distances handed to umap-learn are computed by the package (torch.cdist); umap-learn's own Euclidean
    # search on the same pixels must give the same fuzzy neighbour graph, edge for edge
    import umap

    pixels = pixels01(real.images[:300]).numpy()
    own = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="euclidean", random_state=0, n_jobs=1).fit(pixels)
    ours, theirs = reducer.umap.graph_.tocsr(), own.graph_.tocsr()
    assert ours.nnz == theirs.nnz > 300 * 14
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-4, atol=1e-6)
