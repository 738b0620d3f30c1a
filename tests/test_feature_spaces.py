"""The two feature spaces behind every sample-quality metric, and an independent check of ours.

* the second network (``resnet``) is committed, verified and independent of the first (another
  architecture, another seed), and its features see blur far more than the floor's noise;
* ``evaluate`` and ``real_floor`` report both spaces, and a space can be left out;
* FID and KID agree with torchmetrics' implementations (a second library) on the same features.

Small sets (≤ 500 images against a 1,000-image reference) keep the file to seconds.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.evaluation import metrics
from mnistdiff.evaluation.classifier import (
    FEATURE_SPACES,
    PRIMARY_SPACE,
    SPACE_RECIPES,
    ClassifierWeightsError,
    MNISTResNet,
    evaluate_accuracy,
    load_classifier,
)
from mnistdiff.evaluation.distances import frechet_distance, kernel_inception_distance

N, N_REF = 400, 1000


@pytest.fixture(scope="module")
def real():
    return load_mnist("train").subset(N, seed=3).images


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = 3
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def test_the_second_space_is_committed_verified_and_independent():
    assert set(FEATURE_SPACES) == {"classifier", "resnet"} and PRIMARY_SPACE == "classifier"
    metas = {s: json.loads(p.with_suffix(".json").read_text()) for s, p in FEATURE_SPACES.items()}
    assert metas["resnet"]["architecture"] == "resnet" != metas["classifier"]["architecture"]
    assert metas["resnet"]["seed"] != metas["classifier"]["seed"]
    for space, meta in metas.items():  # the committed files are what their recipes make
        assert {k: meta[k] for k in SPACE_RECIPES[space]} == SPACE_RECIPES[space]
        assert meta["size_bytes"] == FEATURE_SPACES[space].stat().st_size < 2_000_000
    net = load_classifier("cpu", space="resnet")
    assert isinstance(net, MNISTResNet) and not net.training
    sub = load_mnist("test").subset(1000, seed=0)
    assert evaluate_accuracy(net, sub.images[:, :, 2:30, 2:30], sub.labels) >= 0.99
    assert metas["resnet"]["test_accuracy"] >= 0.993


def test_a_corrupt_second_space_is_refused_with_its_own_hint(tmp_path, monkeypatch):
    pt = tmp_path / "resnet.pt"
    shutil.copy(FEATURE_SPACES["resnet"], pt)
    shutil.copy(FEATURE_SPACES["resnet"].with_suffix(".json"), tmp_path / "resnet.json")
    blob = bytearray(pt.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    pt.write_bytes(bytes(blob))
    with pytest.raises(ClassifierWeightsError, match="SHA-256"):
        load_classifier("cpu", path=pt)
    monkeypatch.setitem(FEATURE_SPACES, "resnet", tmp_path / "gone" / "resnet.pt")  # as if it were deleted
    with pytest.raises(ClassifierWeightsError, match=r"missing.*--space resnet"):
        load_classifier("cpu", space="resnet")
    with pytest.raises(ValueError, match="unknown feature space"):
        load_classifier("cpu", space="inception")


def test_evaluate_reports_both_spaces_and_can_leave_one_out(real):
    both = metrics.evaluate(real, n_ref=N_REF, device="cpu", kid_subsets=10, include_memorisation=False)
    one = metrics.evaluate(real, n_ref=N_REF, device="cpu", kid_subsets=10, include_memorisation=False,
                           spaces=("classifier",))
    for key in ("fid", "kid", "precision", "recall"):
        assert both[key] == one[key]  # the primary space does not depend on the second
        assert metrics.space_key(key, "resnet") in both and metrics.space_key(key, "resnet") not in one
    assert both["fid_resnet"] != both["fid"]
    with pytest.raises(ValueError, match="spaces must include"):
        metrics.evaluate(real, n_ref=N_REF, device="cpu", spaces=("resnet",))
    floor = metrics.real_floor(N, n_ref=N_REF, device="cpu", kid_subsets=10, include_memorisation=False)
    assert {"fid", "fid_resnet", "precision_resnet", "recall_resnet"} <= set(floor)
    picked = metrics.distribution_metrics(both)  # what every benchmark's results row keeps
    assert picked == {k: both[k] for k in ("fid", "precision", "recall", "fid_resnet", "precision_resnet",
                                           "recall_resnet")}


def test_the_second_space_sees_blur(real):
    """A lightly blurred copy of real digits must score far above the floor in the ResNet's space, and
    further above it than in the classifier's (at this small n the floor is high, so the ratios are lower
    than chapter 6's at n = 2,000)."""
    kw = dict(n_ref=N_REF, device="cpu", kid_subsets=10, include_memorisation=False)
    floor = metrics.evaluate(real, **kw)
    blurred = metrics.evaluate(_gaussian_blur(real, 0.7).clamp(-1, 1), **kw)
    ratio = {s: blurred[metrics.space_key("fid", s)] / floor[metrics.space_key("fid", s)] for s in FEATURE_SPACES}
    assert ratio["resnet"] > 10, ratio
    assert ratio["resnet"] > 2 * ratio["classifier"], ratio


class _Features(nn.Module):
    """uint8 images (N, 1, 28, 28) → a feature network's features, as torchmetrics' ``feature`` argument."""

    def __init__(self, space: str) -> None:
        super().__init__()
        self.space = space
        self.num_features = int(metrics.classifier_features(torch.zeros(1, 1, 28, 28), space=space)[0].shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return metrics.classifier_features(x, device="cpu", space=self.space)[0].double()


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save:UserWarning")
@pytest.mark.parametrize("space", sorted(FEATURE_SPACES))
def test_fid_and_kid_agree_with_torchmetrics(space, real):
    from torchmetrics.image import fid as tm_fid  # a test dependency ([dev]): missing, it fails
    from torchmetrics.image import kid as tm_kid
    fake = _gaussian_blur(real, 0.5).clamp(-1, 1)
    ref = load_mnist("test").subset(N, seed=4).images
    fake_u8, ref_u8 = (to_uint8(x)[:, :, 2:30, 2:30] for x in (fake, ref))
    fid = tm_fid.FrechetInceptionDistance(feature=_Features(space))
    fid.update(ref_u8, real=True)
    fid.update(fake_u8, real=False)
    kid = tm_kid.KernelInceptionDistance(feature=_Features(space), subsets=1, subset_size=N)
    kid.update(ref_u8, real=True)
    kid.update(fake_u8, real=False)
    f_fake, f_ref = (metrics.classifier_features(x, device="cpu", space=space)[0] for x in (fake_u8, ref_u8))
    assert frechet_distance(f_fake, f_ref) == pytest.approx(float(fid.compute()), rel=1e-4)
    # one subset of all N images: both estimators are the same unbiased MMD², whatever the shuffling
    ours = kernel_inception_distance(f_fake, f_ref, subset_size=N, num_subsets=1)
    assert ours == pytest.approx(float(kid.compute()[0]), rel=1e-4, abs=1e-7)
