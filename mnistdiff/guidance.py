"""Guidance: classifier-free (Ho & Salimans 2022), to ask a class-conditional ε-network for a digit, and
autoguidance (Karras et al. 2024), to steer any ε-network away from its own mistakes.

Training drops each label to ∅ with probability p_uncond (:func:`drop_labels`, their Algorithm 1), so one
network gives both ε(x_t, t, y) and ε(x_t, t, ∅). Sampling mixes the two (their eq. 6, in the convention of
this course):

    ε̃ = ε(x_t, t, ∅) + w · (ε(x_t, t, y) − ε(x_t, t, ∅)),

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1 pushes past it. (Ho & Salimans
write (1 + w')·ε(y) − w'·ε(∅): their w' is this w − 1.) Since ε = −√(1 − ᾱ_t)·∇ log p, the difference
ε(y) − ε(∅) is −√(1 − ᾱ_t)·∇ log p(y | x_t): guidance steps along the gradient of an implicit classifier.

:class:`GuidedDenoiser` is a plain ``(x_t, t) → ε̃`` callable, so every sampler (:func:`~mnistdiff.ddpm.p_sample_loop`,
:func:`~mnistdiff.ddim.ddim_sample_loop`) runs guided without a line of its own.

Either guidance can be limited to an interval of noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a
limited interval improves sample and distribution quality"): guided where lo < t ≤ hi, the model alone elsewhere
(``times``, in the network's own time; :meth:`mnistdiff.model.DiffusionModel.sample` takes the interval in σ).
At low noise a guide's own errors are what the weight amplifies; at high noise a label's pull costs variety.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mnistdiff.ddpm import Denoiser, as_float
from mnistdiff.unet import NULL_LABEL

__all__ = ["NULL_LABEL", "AutoGuidedDenoiser", "GuidedDenoiser", "autoguided_eps", "balanced_labels", "drop_labels",
           "guided_eps", "in_interval"]

#: ``model(x_t, t, y) → ε̂``: a class-conditional ε-network (a :class:`~mnistdiff.unet.UNet` with ``num_classes``).
ConditionalDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def balanced_labels(n: int, num_classes: int = 10) -> torch.Tensor:
    """The labels 0, 1, …, K−1, 0, 1, … (n of them): every class asked for equally often, (n,) int64."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return torch.arange(n) % num_classes


def drop_labels(y: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each label of ``y`` (B,) replaced by ∅ (:data:`~mnistdiff.unet.NULL_LABEL`) with probability ``p_uncond``."""
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, NULL_LABEL), y)


def guided_eps(model: ConditionalDenoiser, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
               w: float) -> torch.Tensor:
    """ε̃ = ε(x_t, t, ∅) + w·(ε(x_t, t, y) − ε(x_t, t, ∅)): ``x_t`` (B, C, H, W), ``t`` (B,), ``y`` (B,) → (B, C, H, W).

    w = 0 and w = 1 need one network call; any other w runs both halves as one batch of 2B. w is not checked
    here (once per network call): :meth:`mnistdiff.model.DiffusionModel.sample` checks it once.
    """
    null = torch.full_like(y, NULL_LABEL)
    if w == 0:
        return as_float(model(x_t, t, null))
    if w == 1:
        return as_float(model(x_t, t, y))
    eps_y, eps_null = as_float(model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))).chunk(2)
    return eps_null + w * (eps_y - eps_null)


def in_interval(t: torch.Tensor, times: tuple[float, float] | None) -> torch.Tensor:
    """Which of the times ``t`` (B,) lie in ``times`` = (lo, hi]: lo < t ≤ hi, (B,) bool (``None``: all of them)."""
    if times is None:
        return torch.ones_like(t, dtype=torch.bool)
    return (t > times[0]) & (t <= times[1])


def _within(guided: Callable[[], torch.Tensor], plain: Callable[[], torch.Tensor], t: torch.Tensor,
            times: tuple[float, float] | None) -> torch.Tensor:
    """``guided()`` where ``t`` (B,) is in ``times``, ``plain()`` elsewhere; each called only if some t needs it (a
    sampler's batch shares one t)."""
    inside = in_interval(t, times)
    if bool(inside.all()):
        return guided()
    if not bool(inside.any()):
        return plain()
    eps, alone = guided(), plain()
    return torch.where(inside.view(-1, *([1] * (eps.dim() - 1))), eps, alone)


class GuidedDenoiser:
    """``(x_t, t) → ε̃``: :func:`guided_eps` with the labels ``y`` (B,) and the weight ``w`` fixed, for any sampler;
    with ``times`` = (lo, hi], guided only where lo < t ≤ hi, the conditional model ε(x_t, t, y) elsewhere."""

    def __init__(self, model: ConditionalDenoiser, y: torch.Tensor, w: float,
                 times: tuple[float, float] | None = None) -> None:
        self.model, self.y, self.w, self.times = model, y, w, times

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _within(lambda: guided_eps(self.model, x_t, t, self.y, self.w),
                       lambda: guided_eps(self.model, x_t, t, self.y, 1.0), t, self.times)


def autoguided_eps(model: Denoiser, guide: Denoiser, x_t: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
    """ε̃ = ε_guide(x_t, t) + w·(ε(x_t, t) − ε_guide(x_t, t)) (Karras et al. 2024, eq. 2): ``x_t`` (B, C, H, W),
    ``t`` (B,) → (B, C, H, W).

    ``guide`` is a worse ε-network of the same schedule and parameterisation. w = 1 is ``model`` alone and w = 0
    ``guide`` alone (one network call); any other w calls both. w is not checked here (per network call):
    :meth:`mnistdiff.model.DiffusionModel.sample` checks it once.
    """
    if w == 1:
        return as_float(model(x_t, t))
    eps_guide = as_float(guide(x_t, t))
    if w == 0:
        return eps_guide
    return eps_guide + w * (as_float(model(x_t, t)) - eps_guide)


class AutoGuidedDenoiser:
    """``(x_t, t) → ε̃``: :func:`autoguided_eps` with the guide and the weight ``w`` fixed, for any sampler; with
    ``times`` = (lo, hi], guided only where lo < t ≤ hi, ``model`` alone elsewhere (no call of the guide there)."""

    def __init__(self, model: Denoiser, guide: Denoiser, w: float, times: tuple[float, float] | None = None) -> None:
        self.model, self.guide, self.w, self.times = model, guide, w, times

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _within(lambda: autoguided_eps(self.model, self.guide, x_t, t, self.w),
                       lambda: as_float(self.model(x_t, t)), t, self.times)
