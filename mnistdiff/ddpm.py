"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020): forward process, loss, ancestral sampler.

Every function takes the network ``model(x_t, t) → ε̂`` and a :class:`~mnistdiff.schedules.NoiseSchedule`
explicitly; nothing here holds state. Shapes: images ``(B, C, H, W)``, timesteps ``(B,)`` int64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mnistdiff.config import TIME_SAMPLINGS
from mnistdiff.schedules import NoiseSchedule, extract

__all__ = [
    "PIXEL_RANGE",
    "ClipRange",
    "SampleOutput",
    "clip_x0",
    "q_sample",
    "predict_x0_from_eps",
    "predict_eps_from_x0",
    "q_posterior",
    "p_mean_variance",
    "p_sample",
    "p_sample_loop",
    "min_snr_weight",
    "TIME_SAMPLINGS",
    "sample_timesteps",
    "diffusion_loss",
    "PREDICTIONS",
    "v_target",
    "predict_eps_from_v",
    "EpsFromV",
    "eps_network",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: A range ``(low, high)`` that a predicted x̂_0 is clipped to, or None for no clipping.
ClipRange = tuple[float, float] | None
#: The data range of pixels: the clip range of every pixel-space sampler.
PIXEL_RANGE: tuple[float, float] = (-1.0, 1.0)
#: What a network can be trained to predict: the noise ε (Ho et al.) or the velocity v (Salimans & Ho 2022).
PREDICTIONS = ("eps", "v")


class SampleOutput(NamedTuple):
    """What every sampler loop returns: ``images`` x_0 ``(B, C, H, W)`` and ``frames``, the trajectory
    ``[(t, x_t), …]`` on the CPU (empty unless ``return_intermediates``). Unpacks as ``x, frames = …``."""

    images: torch.Tensor
    frames: list[tuple[int, torch.Tensor]]


def as_float(eps: torch.Tensor) -> torch.Tensor:
    """A network's output as float32 (bf16 autocast's included), or kept in float64 where a wrapper computed it so
    (:class:`EpsFromV`)."""
    return eps if eps.dtype == torch.float64 else eps.float()


def clip_x0(x0: torch.Tensor, clip_range: ClipRange) -> torch.Tensor:
    """Clip a predicted x̂_0 to ``clip_range = (low, high)``: :data:`PIXEL_RANGE` for pixels, the range
    stored with a latent checkpoint for latents; ``None`` → unchanged."""
    if clip_range is None:
        return x0
    low, high = clip_range
    if not low < high:
        raise ValueError(f"clip_range must be (low, high) with low < high, got {clip_range}")
    return x0.clamp(float(low), float(high))


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) in one shot (Ho eq. 4):  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε."""
    return extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * x0 + extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim
    ) * noise


def predict_x0_from_eps(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for x_0:  x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
    return extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - extract(
        sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
    ) * eps


def predict_eps_from_x0(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for ε:  ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    return (x_t - extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * x0) / extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim
    )


def q_posterior(
    sched: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of q(x_{t−1} | x_t, x_0) (Ho eq. 6–7).

    μ̃_t = (√ᾱ_{t−1} β_t / (1 − ᾱ_t)) x_0 + (√α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)) x_t,   β̃_t = (1 − ᾱ_{t−1}) β_t / (1 − ᾱ_t).
    """
    mean = (extract(sched.posterior_mean_coef1, t, x_t.ndim) * x0
            + extract(sched.posterior_mean_coef2, t, x_t.ndim) * x_t)
    var = extract(sched.posterior_variance, t, x_t.ndim)
    log_var = extract(sched.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, var, log_var


def p_mean_variance(
    model: Denoiser, sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, clip_range: ClipRange = PIXEL_RANGE
) -> dict[str, torch.Tensor]:
    """p_θ(x_{t−1} | x_t): plug the network's x̂_0 (clipped by :func:`clip_x0`) into the posterior.

    Returns ``mean``, ``variance`` (β̃_t, the "fixed small" choice, so that DDIM with η = 1 over every
    step is the same sampler), ``log_variance``, ``pred_x0`` and ``eps``.
    """
    eps = model(x_t, t).float()
    x0 = predict_x0_from_eps(sched, x_t, t, eps)
    x0 = clip_x0(x0, clip_range)
    mean, var, log_var = q_posterior(sched, x0, x_t, t)
    return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": x0, "eps": eps}


@torch.no_grad()
def p_sample(
    model: Denoiser,
    sched: NoiseSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    clip_range: ClipRange = PIXEL_RANGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step (Ho Algorithm 2, line 4): x_{t−1} = μ_θ(x_t, t) + σ_t z, with no noise at t = 0.

    Returns ``(x_{t−1}, x̂_0)``.
    """
    out = p_mean_variance(model, sched, x_t, t, clip_range)
    if noise is None:
        noise = torch.randn_like(x_t)
    nonzero = (t != 0).float().reshape(-1, *([1] * (x_t.ndim - 1)))
    return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise, out["pred_x0"]


@torch.no_grad()
def p_sample_loop(
    model: Denoiser,
    sched: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    return_intermediates: bool = False,
    keep_every: int | None = None,
    clip_range: ClipRange = PIXEL_RANGE,
    progress: bool = False,
) -> SampleOutput:
    """Ancestral sampling over all T timesteps (Ho Algorithm 2): x_T ~ N(0, I), then t = T−1 … 0.

    ``clip_range`` bounds each x̂_0 (see :func:`clip_x0`): [−1, 1] for pixels, the stored range for latents.

    ``generator`` makes the noise reproducible (it lives on ``device``). Returns a :class:`SampleOutput`;
    with ``return_intermediates`` its ``frames`` are ``[(t, x_t), …]`` every ``keep_every`` steps (default
    T/10), plus the final x_0 as t = 0 (the state after the step at timestep i is labelled i; x_T is T).
    """
    T = sched.num_timesteps
    sched = sched.to(device)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator, device=device)
    keep_every = keep_every or max(T // 10, 1)
    frames: list[tuple[int, torch.Tensor]] = [(T, x.cpu())] if return_intermediates else []
    for i in tqdm(range(T - 1, -1, -1), desc="DDPM sampling", disable=not progress, leave=False):
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        noise = torch.randn(x.shape, generator=generator, device=device)
        x, _ = p_sample(model, sched, x, t, noise, clip_range)
        if return_intermediates and i % keep_every == 0 and i > 0:
            frames.append((i, x.cpu()))
    if return_intermediates:
        frames.append((0, x.cpu()))
    return SampleOutput(x, frames)


def v_target(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4): the rate of change of x_t along the
    quarter circle x_t = cos φ · x_0 + sin φ · ε, with cos φ = √ᾱ_t. Shapes as ``x0``."""
    return extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * noise - extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim
    ) * x0


def predict_eps_from_v(sched: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε from a predicted v:  ε = √ᾱ_t v + √(1 − ᾱ_t) x_t (substitute eq. 4 into v's definition)."""
    return extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * v + extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim
    ) * x_t


class EpsFromV(nn.Module):
    """A v-prediction network seen as an ε-network, so every sampler runs it unchanged: ``(x_t (B, C, H, W), t (B,)
    or (), y)`` → ε̂ = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t. Where ᾱ_t → 0 (pure noise) ε̂ leans on x_t itself, not on the
    network: the ill-conditioned x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t of an ε-network there is the reason to predict v."""

    def __init__(self, net: nn.Module, sched: NoiseSchedule) -> None:
        """``net``: the network that predicts v (its weights are the model's); ``sched``: its schedule."""
        super().__init__()
        self.net, self.sched = net, sched

    @property
    def config(self):  # noqa: ANN201 - the wrapped network's config (a UNetConfig)
        """The wrapped network's config."""
        return self.net.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ (B, C, H, W) in float64, from the same ᾱ_t the samplers read: their x̂_0 = (x − √(1 − ᾱ)·ε̂)/√ᾱ then
        recovers √ᾱ·x − √(1 − ᾱ)·v̂, where float32 coefficients would leave a rounding error multiplied by
        1/√ᾱ_t (≈ 3·10⁴ at a cosine schedule's last timestep)."""
        v = (self.net(x, t) if y is None else self.net(x, t, y)).double()
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        a = extract(self.sched.alphas_cumprod, t, x.ndim).double()
        return a.sqrt() * v + (1 - a).sqrt() * x.double()


def eps_network(net: nn.Module, sched: NoiseSchedule, prediction: str) -> nn.Module:
    """``net`` as the ε-network samplers call: itself for ``prediction="eps"``, :class:`EpsFromV` around it for "v"."""
    return net if prediction == "eps" else EpsFromV(net, sched)


def min_snr_weight(sched: NoiseSchedule, t: torch.Tensor, gamma: float, prediction: str = "eps") -> torch.Tensor:
    """The min-SNR-γ weight of the loss at timesteps ``t`` (Hang et al. 2023, eq. 9): ``(B,)``.

    For ε-prediction w_t = min(SNR_t, γ) / SNR_t with SNR_t = ᾱ_t / (1 − ᾱ_t): 1 where the image is mostly noise
    (SNR_t ≤ γ), γ / SNR_t → 0 as t → 0. In x_0 terms ‖ε − ε̂‖² = SNR_t ‖x_0 − x̂_0‖², so L_simple
    weights the x_0 error by SNR_t, unbounded at small t; min-SNR-γ caps that weight at γ.
    For v-prediction ‖v − v̂‖² = (SNR_t + 1) ‖x_0 − x̂_0‖², so w_t = min(SNR_t, γ) / (SNR_t + 1): the same
    weight on the x_0 error, hence the same objective, in the other parameterisation.
    """
    snr = sched.log_snr()[t].exp()
    return (snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)).float()


def sample_timesteps(sched: NoiseSchedule, n: int, how: str = "uniform", generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` training timesteps ``(n,)`` int64 in [0, T), drawn as ``how`` says (:data:`TIME_SAMPLINGS`).

    ``uniform``: over 0, …, T−1 (Ho et al. Algorithm 1). ``logit_normal``: the noise levels of the flow's
    logit-normal times (Esser et al. 2024): its time s = sigmoid(m), m ~ N(0, 1), puts x_s = (1 − s)·x_0 + s·ε at
    log-SNR λ = 2·log((1 − s)/s) = −2m, so λ ~ N(0, 4); each λ goes to the timestep whose
    λ_t = log(ᾱ_t/(1 − ᾱ_t)) (:meth:`NoiseSchedule.log_snr`) is nearest. Against uniform t on the cosine schedule
    (λ spread as sech(λ/2)/2π, a standard deviation of π), more of each batch lands at middle noise and less at the
    two ends.
    """
    if how == "uniform":
        return torch.randint(0, sched.num_timesteps, (n,), generator=generator, device=device)
    if how != "logit_normal":
        raise ValueError(f"time sampling is one of {', '.join(TIME_SAMPLINGS)}, got {how!r}")
    lam = 2.0 * torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    return (lam[:, None] - sched.log_snr().to(lam.device)[None, :]).abs().argmin(dim=1)


def diffusion_loss(
    model: Denoiser,
    sched: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
    prediction: str = "eps",
) -> torch.Tensor:
    """L_simple (Ho eq. 14): E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖², t ~ U{0, …, T−1}.

    With ``min_snr_gamma`` = γ each sample's squared error is weighted by :func:`min_snr_weight`. With
    ``prediction="v"`` the network's output is regressed on :func:`v_target` instead of ε.
    """
    if t is None:
        t = torch.randint(0, sched.num_timesteps, (x0.shape[0],), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    out = model(q_sample(sched, x0, t, noise), t).float()
    target = noise if prediction == "eps" else v_target(sched, x0, t, noise)
    if min_snr_gamma is None:
        return F.mse_loss(out, target)
    per_sample = (out - target).pow(2).flatten(1).mean(1)
    return (min_snr_weight(sched, t, min_snr_gamma, prediction) * per_sample).mean()
