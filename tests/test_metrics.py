"""Tests for mnistdiff.evaluation.classifier and mnistdiff.evaluation.metrics.

Golden values come from independent computations (closed forms worked out by hand, a naive
double-loop MMD), and the metrics are checked to separate real digits from noise, blurred and
single-class batches. Kept small (≤ 500 images, a 1000-image reference) so the file runs in well
under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.evaluation import metrics
from mnistdiff.evaluation.classifier import (
    CLASSIFIER_META_PATH,
    CLASSIFIER_PATH,
    ClassifierWeightsError,
    MNISTClassifier,
    evaluate_accuracy,
    load_classifier,
)

N = 400
N_REF = 1000


@pytest.fixture(scope="module")
def clf():
    return load_classifier("cpu")


@pytest.fixture(scope="module")
def test_split():
    return load_mnist("test")


@pytest.fixture(scope="module")
def real_batch():
    """N training images (float, 32×32, [-1, 1]) with labels."""
    return load_mnist("train").subset(N, seed=1)


def _eval(x, **kw):
    return metrics.evaluate(x, n_ref=N_REF, device="cpu", kid_subsets=20, **kw)


@pytest.fixture(scope="module")
def eval_real(clf, real_batch):
    return _eval(real_batch.images)


# ------------------------------------------------------------------ classifier


def test_committed_classifier_meets_spec(clf, test_split):
    meta = json.loads(CLASSIFIER_META_PATH.read_text())
    assert CLASSIFIER_PATH.stat().st_size < 2_000_000
    assert meta["test_accuracy"] >= 0.993
    assert meta["size_bytes"] == CLASSIFIER_PATH.stat().st_size
    assert not clf.training
    # re-measure on 1000 test images (the full-set number is in the sidecar)
    sub = test_split.subset(1000, seed=0)
    acc = evaluate_accuracy(clf, sub.images[:, :, 2:30, 2:30], sub.labels)
    assert acc >= 0.99
    feats = clf.features(sub.images[:8, :, 2:30, 2:30])
    assert feats.shape == (8, 128)


def test_load_classifier_is_cached(clf):
    assert load_classifier("cpu") is clf


def test_corrupt_or_mismatched_weights_are_refused(tmp_path):
    pt, js = tmp_path / "classifier.pt", tmp_path / "classifier.json"
    shutil.copy(CLASSIFIER_PATH, pt)
    shutil.copy(CLASSIFIER_META_PATH, js)
    blob = bytearray(pt.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    pt.write_bytes(bytes(blob))
    with pytest.raises(ClassifierWeightsError, match="SHA-256"):
        load_classifier("cpu", path=pt)
    pt.unlink()
    with pytest.raises(ClassifierWeightsError, match="missing"):
        load_classifier("cpu", path=pt)


def test_train_classifier_writes_verified_weights(tmp_path):
    from mnistdiff.evaluation.classifier_training import train_classifier

    out = tmp_path / "tiny.pt"
    model, meta = train_classifier(epochs=1, subset=256, test_subset=200, batch_size=64, out_path=out, log=None)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side == meta
    for key in ("sha256", "test_accuracy", "seed", "torch_version", "seconds"):
        assert key in side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pt"]  # no temp files left
    loaded = load_classifier("cpu", path=out)
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_classifier_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        MNISTClassifier().eval().features(torch.zeros(2, 1, 32, 32))


# ------------------------------------------------------------------ prepare_images


def test_prepare_images_formats_agree(test_split):
    x = test_split.images[:5]  # (5, 1, 32, 32) float in [-1, 1]
    u8 = to_uint8(x)
    ref = metrics.prepare_images(x)
    assert ref.shape == (5, 1, 28, 28) and ref.dtype == torch.float32
    for variant in (u8, u8.numpy(), u8[:, 0], u8[:, :, 2:30, 2:30], x.numpy(), x[:, 0, 2:30, 2:30].double()):
        got = metrics.prepare_images(variant)
        assert got.shape == (5, 1, 28, 28)
        assert torch.allclose(got, ref, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 1, 32, 32), "empty"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.full((2, 1, 28, 28), float("inf")), "NaN/inf"),
        (torch.zeros(28, 28), "2 dimensions"),
        (torch.zeros(1, 2, 1, 28, 28), "5 dimensions"),
        (torch.zeros(2, 1, 30, 30), "30×30"),
        (torch.zeros(2, 3, 28, 28), "3 channels"),
        (torch.full((2, 1, 28, 28), 255.0), r"\[-1, 1\]"),
        (torch.full((2, 1, 28, 28), -1.5), r"\[-1, 1\]"),
        (torch.full((2, 1, 28, 28), 300, dtype=torch.int32), r"\[0, 255\]"),
        (np.zeros((2, 1, 28, 28), dtype=bool), "dtype"),
        ([[0.0]], "list"),
    ],
)
def test_prepare_images_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match) as info:
        metrics.prepare_images(bad)
    assert "expected images of shape" in str(info.value)


def test_evaluate_rejects_bad_input(clf):
    x = torch.zeros(10, 1, 32, 32)
    x[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate(x, n_ref=N_REF, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        metrics.evaluate(np.zeros((0, 1, 32, 32), np.uint8), n_ref=N_REF, device="cpu")


# ------------------------------------------------------------------ FID


def _with_exact_moments(rng, n, mean, cov):
    """n samples whose sample mean and (ddof=1) covariance are exactly `mean` and `cov`."""
    d = len(mean)
    z = rng.standard_normal((n, d))
    z -= z.mean(0)
    white = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return white @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    # diagonal covariances: d² = |Δμ|² + Σ (√a − √b)²
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    f1 = _with_exact_moments(rng, 500, mu1, np.diag(a))
    f2 = _with_exact_moments(rng, 300, mu2, np.diag(b))
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0  # = 7
    assert metrics.frechet_distance(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(torch.from_numpy(f2), f1) == pytest.approx(expected, rel=1e-9)

    # non-commuting 2×2: tr √(S1 S2) = √(tr(S1 S2) + 2 √(det S1 · det S2))
    s1 = np.array([[4.0, 0.0], [0.0, 1.0]])
    c, s = math.cos(0.6), math.sin(0.6)
    rot = np.array([[c, -s], [s, c]])
    s2 = rot @ np.diag([1.0, 9.0]) @ rot.T
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 2.0**2 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    g1 = _with_exact_moments(rng, 400, np.array([0.0, 0.0]), s1)
    g2 = _with_exact_moments(rng, 400, np.array([2.0, 0.0]), s2)
    assert metrics.frechet_distance(g1, g2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_identity_and_errors():
    f = np.random.default_rng(1).standard_normal((200, 16))
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(f[:1], f)
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.frechet_distance(f, f[:, :8])
    with pytest.raises(ValueError, match="2-D"):
        metrics.frechet_distance(f[0], f)


# ------------------------------------------------------------------ KID


def _naive_kid(x, y):
    m, d = len(x), x.shape[1]
    k = lambda u, v: (float(u @ v) / d + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_naive_mmd():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4)) + 0.5
    # subset_size = n: each subset is a permutation of the whole set, and MMD² is permutation-invariant
    got = metrics.kernel_inception_distance(x, y, subset_size=30, num_subsets=3, seed=0)
    assert got == pytest.approx(_naive_kid(x, y), rel=1e-10)


@pytest.mark.parametrize("limit", [None, 0], ids=["whole-set kernels", "per-subset kernels"])
def test_kid_sums_equal_the_subset_by_subset_definition(limit, monkeypatch):
    from mnistdiff.evaluation import distances

    if limit is not None:
        monkeypatch.setattr(distances, "KERNEL_ENTRIES_LIMIT", limit)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((90, 6)), rng.standard_normal((150, 6)) + 0.3

    def by_definition(y):
        draws = np.random.default_rng(7)  # the same draws, in the same order, as kernel_inception_distance(seed=7)
        values = []
        for _ in range(5):
            ia, ib = draws.choice(90, 40, replace=False), draws.choice(150, 40, replace=False)
            values.append(_naive_kid(x[ia], y[ib]))
        return pytest.approx((np.mean(values), np.std(values)), rel=1e-10)

    got = metrics.kernel_inception_distance(x, y, subset_size=40, num_subsets=5, seed=7, return_std=True)
    assert got == by_definition(y)
    # the second set's terms are reused for the same set and draws, and never for another set of the same shape
    assert metrics.kernel_inception_distance(x, y, subset_size=40, num_subsets=5, seed=7, return_std=True) == got
    assert metrics.kernel_inception_distance(x, 2 * y, subset_size=40, num_subsets=5, seed=7,
                                             return_std=True) == by_definition(2 * y)


def test_kid_identical_near_zero_and_shift_positive():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 8))
    y = rng.standard_normal((600, 8))
    same = metrics.kernel_inception_distance(x, y, subset_size=200, num_subsets=20, seed=0)
    shifted = metrics.kernel_inception_distance(x, y + 1.0, subset_size=200, num_subsets=20, seed=0)
    assert abs(same) < 0.05 * shifted
    assert shifted > 0
    again = metrics.kernel_inception_distance(x, y, subset_size=200, num_subsets=20, seed=0)
    assert same == again
    mean, std = metrics.kernel_inception_distance(x, y + 1.0, subset_size=200, num_subsets=20, seed=0, return_std=True)
    assert mean == shifted and std > 0


# ------------------------------------------------------------------ precision / recall


def test_precision_recall_golden_cases():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((200, 5))
    assert metrics.precision_recall(a, a.copy(), k=3) == (1.0, 1.0)
    far = rng.standard_normal((200, 5)) + 100.0
    assert metrics.precision_recall(a, far, k=3) == (0.0, 0.0)
    # real: two well-separated clusters; fake: only the first → precision 1, recall ≈ 1/2
    c1, c2 = rng.standard_normal((150, 5)), rng.standard_normal((150, 5)) + 50.0
    real = np.concatenate([c1, c2])
    fake = c1 + 0.01 * rng.standard_normal(c1.shape)
    p, r = metrics.precision_recall(real, fake, k=3)
    assert p == 1.0
    assert r == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="at least 4 rows"):
        metrics.precision_recall(a[:3], a, k=3)


def test_precision_recall_hand_computed_1d():
    # k = 2; radii of the real points (2nd-nearest other real point): 0→3, 1→2, 3→3, 6→4, 10→7
    real = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    fake = np.array([[4.5], [20.0], [17.0], [-3.5], [-2.9]])
    # fake inside a real ball: 4.5 (|4.5−3| ≤ 3), 17 (|17−10| = 7, on the boundary: the ball is
    # closed), −2.9 (|−2.9−0| ≤ 3) → 3/5
    # every real point lies within 7.4 of −2.9 or 8 of 4.5 (fake radii) → recall 1
    assert metrics.precision_recall(real, fake, k=2) == (0.6, 1.0)


def _naive_pr(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def cov(q, s, r):
        d = np.linalg.norm(q[:, None] - s[None], axis=2)
        return float(np.mean([(d[i] <= r).any() for i in range(len(q))]))

    return cov(fake, real, radii(real)), cov(real, fake, radii(fake))


def test_precision_recall_matches_naive():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((120, 4))
    fake = 0.5 * rng.standard_normal((90, 4)) + 1.0
    got = metrics.precision_recall(real, fake, k=3, chunk_size=7)
    assert got == _naive_pr(real, fake, 3)
    assert 0.05 < got[0] < 0.95 and 0.05 < got[1] < 0.95  # a non-trivial case


# ------------------------------------------------------------------ memorisation


def test_nearest_train_distance(real_batch, test_split):
    train = load_mnist("train").images[:5000]
    copies = to_uint8(train[100:110])
    d, idx = metrics.nearest_train_neighbours(copies, train, train_chunk=1024, query_chunk=4)
    assert torch.equal(idx, torch.arange(100, 110))
    assert float(d.max()) < 1e-2
    # held-out digits are several pixel-units away; brute-force check of one distance
    held = test_split.images[:20]
    s = metrics.nearest_train_distance(held, train)
    assert 0.5 < s["min"] <= s["median"] and 2.0 < s["mean"] < 15
    x01 = (held[0, 0, 2:30, 2:30].flatten() + 1) / 2
    t01 = (train[:, 0, 2:30, 2:30].flatten(1) + 1) / 2
    d0, _ = metrics.nearest_train_neighbours(held[:1], train)
    assert float(d0[0]) == pytest.approx(float((t01 - x01).norm(dim=1).min()), rel=1e-4)


# ------------------------------------------------------------------ evaluate: good vs bad


def test_evaluate_keys_and_json(eval_real):
    json.dumps(eval_real)
    for key in metrics.METRIC_KEYS + ("n", "n_ref", "kid_std", "class_histogram"):
        assert key in eval_real
    assert eval_real["n"] == N and eval_real["n_ref"] == N_REF
    assert len(eval_real["class_histogram"]) == 10
    assert sum(eval_real["class_histogram"]) == pytest.approx(1.0)


def test_real_images_score_well(eval_real):
    assert eval_real["fid"] < 5
    assert abs(eval_real["kid"]) < 0.05
    assert eval_real["precision"] > 0.6 and eval_real["recall"] > 0.6
    assert eval_real["confidence"] > 0.97
    assert eval_real["class_max_deviation"] < 0.05
    assert eval_real["class_entropy"] > 3.25
    assert eval_real["nn_train_distance_min"] < 1e-3  # these *are* training images


def test_metrics_separate_good_from_bad(eval_real, real_batch):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(N, 1, 32, 32, generator=g) * 2 - 1
    kernel = torch.ones(1, 1, 5, 5) / 25
    blurred = F.conv2d(real_batch.images, kernel, padding=2)
    ones = real_batch.images[real_batch.labels == 1]
    e_noise = _eval(noise)
    e_blur, e_one = (_eval(x, include_memorisation=False) for x in (blurred, ones))

    for bad in (e_noise, e_blur, e_one):
        assert bad["fid"] > 10 * max(eval_real["fid"], 1.0)
        assert bad["kid"] > 10 * max(eval_real["kid"], 1e-3)
    assert e_noise["fid"] > e_blur["fid"]
    assert e_noise["precision"] < 0.2 and e_noise["recall"] < 0.05
    assert e_noise["nn_train_distance"] > 2 * eval_real["nn_train_distance"] + 5
    assert e_blur["confidence"] < eval_real["confidence"]
    # a single-class batch: precise but with poor recall and a collapsed histogram
    assert e_one["precision"] > 0.6
    assert e_one["recall"] < 0.3
    assert max(e_one["class_histogram"]) > 0.95
    assert e_one["class_entropy"] < 0.5 and e_one["class_max_deviation"] > 0.8


def test_evaluate_is_deterministic(eval_real, real_batch):
    again = _eval(to_uint8(real_batch.images).numpy())  # same images, another input format
    for key in metrics.METRIC_KEYS:
        assert again[key] == pytest.approx(eval_real[key], rel=1e-5, abs=1e-7), key


def test_real_floor_cached_and_matches_evaluate(eval_real):
    floor = metrics.real_floor(N, seed=1, device="cpu", n_ref=N_REF, kid_subsets=20, include_memorisation=False)
    # the floor draws the same seeded training subset as the `real_batch` fixture
    direct = _eval(load_mnist("train").subset(N, seed=1).images, seed=1, include_memorisation=False)
    assert floor == direct
    assert floor["fid"] < 5
    again = metrics.real_floor(N, seed=1, device="cpu", n_ref=N_REF, kid_subsets=20, include_memorisation=False)
    assert again == floor
    again["class_histogram"][0] = -1.0  # callers cannot corrupt the cache
    assert metrics.real_floor(N, seed=1, device="cpu", n_ref=N_REF, kid_subsets=20, include_memorisation=False) == floor
    table = metrics.format_metrics({"real": eval_real}, floor)
    assert "fid" in table and "real floor" in table


# ------------------------------------------------------------------ npz


def test_evaluate_npz(tmp_path, real_batch, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metrics.evaluate_npz(tmp_path / "nope.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((4, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="no array 'samples'.*'images'"):
        metrics.evaluate_npz(wrong)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        metrics.evaluate_npz(garbage)

    good = tmp_path / "samples.npz"
    np.savez(good, samples=to_uint8(real_batch.images[:60]).numpy())
    # keep the test small: a 1000-image reference and fewer KID subsets
    real_eval = metrics.evaluate

    def small_eval(x, **kw):
        return real_eval(x, n_ref=N_REF, kid_subsets=5, include_memorisation=False, **kw)

    monkeypatch.setattr(metrics, "evaluate", small_eval)
    out = metrics.evaluate_npz(good, n=50, device="cpu", include_floor=False)
    json.dumps(out)
    assert out["n"] == 50 and out["metrics"]["n"] == 50
    with pytest.raises(ValueError, match="holds only 60"):
        metrics.evaluate_npz(good, n=100)
    assert "label_accuracy" not in out["metrics"]

    # a cldm's npz: the digits asked for (−1: none) give the fraction read as asked, over the labelled ones
    labelled = tmp_path / "labelled.npz"
    true = real_batch.labels[:60].numpy().astype(np.int64)
    wrong_half = true.copy()
    wrong_half[:30] = (wrong_half[:30] + 1) % 10
    for labels, low, high in ((true, 0.95, 1.0), (wrong_half, 0.45, 0.55), (np.full(60, -1), None, None)):
        np.savez(labelled, samples=to_uint8(real_batch.images[:60]).numpy(), labels=labels)
        got = metrics.evaluate_npz(labelled, device="cpu", include_floor=False)["metrics"]
        if low is None:
            assert "label_accuracy" not in got
        else:
            assert low <= got["label_accuracy"] <= high, got["label_accuracy"]
