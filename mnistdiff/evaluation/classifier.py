"""The feature networks behind every sample-quality metric: the project's MNIST classifier, and a second one.

FID was defined on Inception-v3 features (Heusel et al. 2017), but Inception was trained on
ImageNet photographs and knows nothing about handwritten digits. For MNIST the usual practice is a
*classifier-FID*: the same Fréchet distance, computed on the penultimate layer of a small CNN
trained on MNIST itself. This module defines that CNN and a second, independent network (a small
ResNet, :class:`MNISTResNet`, whose features see what the first ignores), and loads their committed
weights (``mnistdiff/assets/classifier.pt`` and ``resnet.pt``, verified against the SHA-256 in their
JSON sidecars), so that nothing is ever downloaded and every reader gets the same numbers;
:mod:`mnistdiff.evaluation.classifier_training` trains them reproducibly (seeded, on CPU, in minutes).

Architecture (input ``(N, 1, 28, 28)`` in [-1, 1])::

    [conv3×3 → BN → ReLU] × 2, 32 ch  → maxpool   28 → 14
    [conv3×3 → BN → ReLU] × 2, 64 ch  → maxpool   14 → 7
    conv3×3 → BN → ReLU, 64 ch        → maxpool    7 → 3
    flatten 576 → linear 128 → BN → ReLU          = features(x), (N, 128)
    dropout → linear 10                           = forward(x), logits (N, 10)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnistdiff.devices import resolve_device
from mnistdiff.files import ASSET_DIR, shown_path
from mnistdiff.training.checkpoints import sha256_file

__all__ = [
    "MNISTClassifier",
    "ClassifierWeightsError",
    "CLASSIFIER_PATH",
    "CLASSIFIER_META_PATH",
    "FEATURE_DIM",
    "MNISTResNet",
    "ARCHITECTURES",
    "FEATURE_SPACES",
    "PRIMARY_SPACE",
    "SPACE_RECIPES",
    "load_classifier",
    "evaluate_accuracy",
    "sha256_file",
]

CLASSIFIER_PATH = ASSET_DIR / "classifier.pt"
CLASSIFIER_META_PATH = ASSET_DIR / "classifier.json"
FEATURE_DIM = 128

#: The feature spaces every sample-quality metric is computed in, by name → the weight file (its JSON
#: sidecar beside it). ``classifier`` is the project's classifier, ``resnet`` the second, independent one.
FEATURE_SPACES: dict[str, Path] = {"classifier": CLASSIFIER_PATH, "resnet": ASSET_DIR / "resnet.pt"}
#: The space whose class probabilities give confidence, the class histogram and the digit accuracy.
PRIMARY_SPACE = "classifier"
#: How each space's committed weights were trained (``scripts/train_classifier.py --space NAME``):
#: :func:`~mnistdiff.evaluation.classifier_training.train_classifier`'s keyword arguments.
SPACE_RECIPES: dict[str, dict] = {
    "classifier": {"architecture": "vgg", "seed": 0, "epochs": 4},
    "resnet": {"architecture": "resnet", "seed": 1, "epochs": 3, "num_threads": 1},
}


def _retrain_hint(path: Path) -> str:
    space = next((name for name, p in FEATURE_SPACES.items() if p == path), PRIMARY_SPACE)
    files = f"{shown_path(path)} {shown_path(path.with_suffix('.json'))}"
    return (f"Restore the committed file with `git checkout -- {files}` "
            f"or retrain it with `python scripts/train_classifier.py --space {space}` (minutes on a CPU).")


class ClassifierWeightsError(RuntimeError):
    """The classifier's weight file is missing, corrupt or does not match its sidecar JSON."""


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class MNISTClassifier(nn.Module):
    """A small VGG-style CNN (≈ 140 k parameters, ≈ 0.6 MB in float32).

    ``forward(x)``: ``(N, 1, 28, 28)`` in [-1, 1] → logits ``(N, 10)``.
    ``features(x)``: the same input → penultimate activations ``(N, 128)`` (after BN and ReLU),
    the embedding used for classifier-FID, KID and precision/recall.
    """

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_conv_block(1, w), *_conv_block(w, w), nn.MaxPool2d(2),  # 28 → 14
            *_conv_block(w, 2 * w), *_conv_block(2 * w, 2 * w), nn.MaxPool2d(2),  # 14 → 7
            *_conv_block(2 * w, 2 * w), nn.MaxPool2d(2),  # 7 → 3
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(2 * w * 3 * 3, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, 10)

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"MNISTClassifier expects images of shape (N, 1, 28, 28) in [-1, 1], got {tuple(x.shape)}; "
                "use mnistdiff.evaluation.metrics.prepare_images to convert uint8 / 32×32 / (N, H, W) inputs"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, 128)`` of images ``(N, 1, 28, 28)`` in [-1, 1]."""
        self._check(x)
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` of images ``(N, 1, 28, 28)`` in [-1, 1]."""
        return self.head(self.dropout(self.features(x)))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, 128), logits (N, 10))`` from one pass (eval mode: dropout is the identity)."""
        f = self.features(x)
        return f, self.head(self.dropout(f))


class _ResBlock(nn.Module):
    """A ResNet basic block (He et al. 2016): ``relu(x' + BN(conv(relu(BN(conv(x))))))``, ``x'`` the
    input, or its 1×1 projection where the stride or the width changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.skip(x) + self.bn2(self.conv2(h)))


class MNISTResNet(nn.Module):
    """The second, independent feature network: a small ResNet (≈ 0.17 M parameters).

    Another architecture than :class:`MNISTClassifier` (residual blocks, global average pooling, no
    fully connected bottleneck, no dropout), trained from another seed, so that a verdict which
    holds in both feature spaces is not an artefact of one network. Its features are read at all
    three stages, so they keep what the classifier's last layer has learnt to ignore: the first stage
    works at full resolution and sees the strokes' edges, hence blur.

        stem conv3×3 → BN → ReLU, block          28 × 28, widths[0]  ─ mean over space ─┐
        block (stride 2), block                  14 × 14, widths[1]  ─ mean over space ─┤ pooled(x)
        block (stride 2), block                   7 ×  7, widths[2]  ─ mean over space ─┘ (N, 112)
        linear 112 → 10 on pooled(x)                                  = forward(x), logits (N, 10)
        (pooled(x) − mean) / std / √(width / widths[0]), per stage    = features(x), (N, 112)

    The mean and standard deviation are per channel, over the training digits (set once after
    training by :meth:`fit_normalisation`, stored with the weights). Standardising puts every
    channel on one scale, and the stage factor gives each stage the same total variance, so the
    strokes (stage 1), their parts (stage 2) and the digit's shape (stage 3) count alike in a distance.
    """

    def __init__(self, widths: tuple[int, int, int] | list[int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList([
            _ResBlock(a, a),
            nn.Sequential(_ResBlock(a, b, stride=2), _ResBlock(b, b)),
            nn.Sequential(_ResBlock(b, c, stride=2), _ResBlock(c, c)),
        ])
        self.head = nn.Linear(a + b + c, 10)
        stage_scale = torch.cat([torch.full((w,), math.sqrt(w / a)) for w in (a, b, c)])
        self.register_buffer("feature_mean", torch.zeros(a + b + c))
        self.register_buffer("feature_std", stage_scale)  # becomes std · stage factor in fit_normalisation
        self.register_buffer("stage_scale", stage_scale)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-stage spatial means, concatenated: ``(N, 112)`` for images ``(N, 1, 28, 28)`` in [-1, 1]."""
        MNISTClassifier._check(x)
        h, pooled = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            pooled.append(h.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, 112), logits (N, 10))`` from one pass."""
        raw = self.pooled(x)
        return (raw - self.feature_mean) / self.feature_std, self.head(raw)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised, stage-balanced pooled features ``(N, 112)`` of images ``(N, 1, 28, 28)`` in [-1, 1]."""
        return self.embed(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` of images ``(N, 1, 28, 28)`` in [-1, 1]."""
        return self.head(self.pooled(x))

    @torch.no_grad()
    def fit_normalisation(self, images: torch.Tensor, batch_size: int = 1000) -> None:
        """Set the features' mean and scale from ``images`` ``(N, 1, 28, 28)`` (the training digits), in eval mode."""
        was_training = self.training
        self.eval()
        device = self.feature_mean.device
        raw = torch.cat([self.pooled(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
        self.feature_mean.copy_(raw.mean(0))
        self.feature_std.copy_(raw.std(0).clamp_min(1e-6) * self.stage_scale)
        self.train(was_training)


#: The feature networks' architectures, by the name a weight file's sidecar gives (``"architecture"``).
ARCHITECTURES: dict[str, type[nn.Module]] = {"vgg": MNISTClassifier, "resnet": MNISTResNet}


_LOADED: dict[tuple[str, str], nn.Module] = {}


def load_classifier(
    device: str | torch.device | None = None,
    path: str | Path | None = None,
    meta_path: str | Path | None = None,
    *,
    space: str = PRIMARY_SPACE,
) -> nn.Module:
    """A committed feature network in eval mode on ``device`` (default: CUDA if present, else CPU).

    ``space``: a key of :data:`FEATURE_SPACES` (default the project's classifier); ``path``: another
    weight file instead (its sidecar ``meta_path``, default beside it, names the architecture).
    The weight file's SHA-256 is checked against its sidecar JSON before it is read (with
    ``torch.load(..., weights_only=True)``); a missing, corrupt or mismatched file raises
    :class:`ClassifierWeightsError` saying how to restore it. The model is cached per
    (path, device), so repeated calls are free. Its parameters are frozen (``requires_grad=False``).
    """
    device = resolve_device(device)
    if space not in FEATURE_SPACES:
        raise ValueError(f"unknown feature space {space!r}; expected one of {sorted(FEATURE_SPACES)}")
    path = Path(path) if path is not None else FEATURE_SPACES[space]
    meta_path = Path(meta_path) if meta_path is not None else path.with_suffix(".json")
    key = (str(path.resolve()), str(device))
    if key in _LOADED:
        return _LOADED[key]
    hint = _retrain_hint(path)
    if not path.is_file():
        raise ClassifierWeightsError(f"classifier weights {path} are missing. {hint}")
    if not meta_path.is_file():
        raise ClassifierWeightsError(
            f"classifier sidecar {meta_path} (with the weights' SHA-256) is missing. {hint}"
        )
    try:
        meta = json.loads(meta_path.read_text())
        expected, architecture = meta["sha256"], ARCHITECTURES[meta["architecture"]]
    except (ValueError, KeyError) as err:
        raise ClassifierWeightsError(
            f"classifier sidecar {meta_path} is unreadable, or lacks 'sha256' or a known 'architecture' "
            f"({sorted(ARCHITECTURES)}): {err}. {hint}"
        ) from err
    actual = sha256_file(path)
    if actual != expected:
        raise ClassifierWeightsError(
            f"classifier weights {path} are corrupt or do not belong to {meta_path}: "
            f"SHA-256 {actual[:16]}… ≠ expected {str(expected)[:16]}…. {hint}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = architecture(**meta.get("arch", {}))
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any failure here means an unusable file
        raise ClassifierWeightsError(f"classifier weights {path} could not be loaded ({err}). {hint}") from err
    model.eval().requires_grad_(False).to(device)
    _LOADED[key] = model
    return model


@torch.no_grad()
def evaluate_accuracy(
    model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
) -> float:
    """Top-1 accuracy of ``model`` on ``images`` ``(N, 1, 28, 28)`` in [-1, 1] with ``labels`` ``(N,)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)
