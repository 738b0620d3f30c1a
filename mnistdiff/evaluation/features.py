"""Images in, classifier features out: the input checks every metric shares, and φ(x) ∈ R^128.

Images may be given as uint8 ``[0, 255]`` or float ``[-1, 1]``, as torch tensors or numpy arrays,
28×28 or 32×32 (the 2-pixel padding of :func:`mnistdiff.data.load_mnist` is cropped), shaped
``(N, 1, H, W)`` or ``(N, H, W)``; see :func:`prepare_images`. The features are the penultimate
layer of :class:`mnistdiff.evaluation.classifier.MNISTClassifier` or, in the second feature space,
the standardised, pooled stages of :class:`mnistdiff.evaluation.classifier.MNISTResNet`.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from mnistdiff.data import to_unit_range
from mnistdiff.devices import resolve_device
from mnistdiff.evaluation.classifier import PRIMARY_SPACE, load_classifier

__all__ = ["ArrayLike", "RANGE_TOL", "prepare_images", "pixels01", "classifier_features"]

ArrayLike = Union[torch.Tensor, np.ndarray]

#: tolerance on the [-1, 1] range of float inputs (values within it are clamped)
RANGE_TOL = 1e-3

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
        raise ValueError(
            f"got {x.shape[1]} channels (shape {tuple(x.shape)}); MNIST images have 1 channel; {_EXPECTED}"
        )
    h, w = int(x.shape[2]), int(x.shape[3])
    if (h, w) not in ((28, 28), (32, 32)):
        raise ValueError(f"got images of size {h}×{w} (shape {tuple(x.shape)}); {_EXPECTED}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"unsupported dtype {x.dtype}; {_EXPECTED}")
    x = x.cpu()
    if (h, w) == (32, 32):
        x = x[:, :, 2:30, 2:30]
    if not x.is_floating_point():  # uint8 or other integer types: pixel values
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must be pixel values in [0, 255], got range [{lo}, {hi}]; {_EXPECTED}")
        return to_unit_range(x).contiguous()
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


def pixels01(images: ArrayLike) -> torch.Tensor:
    """Images in any form :func:`prepare_images` accepts → float32 ``(N, 784)`` in [0, 1] (pixel-space distances)."""
    return prepare_images(images).add(1).div(2).flatten(1)


# ----------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def classifier_features(
    x: ArrayLike, batch_size: int = 500, device: str | torch.device | None = None, *, space: str = PRIMARY_SPACE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and class probabilities of a committed feature network.

    ``x``: images in any form :func:`prepare_images` accepts, N of them. ``space``: a key of
    :data:`~mnistdiff.evaluation.classifier.FEATURE_SPACES` (default the project's classifier, whose
    penultimate layer gives D = 128; ``"resnet"``, the independent ResNet, gives D = 112).
    Returns ``(feats, probs)`` as float32 CPU tensors of shapes ``(N, D)`` and ``(N, 10)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    images = prepare_images(x)
    device = resolve_device(device)
    model = load_classifier(device, space=space)
    feats, probs = [], []
    for i in range(0, images.shape[0], batch_size):
        f, logits = model.embed(images[i : i + batch_size].to(device))
        feats.append(f.float().cpu())
        probs.append(torch.softmax(logits, dim=1).float().cpu())
    return torch.cat(feats), torch.cat(probs)
