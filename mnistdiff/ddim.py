"""Denoising diffusion implicit models (Song, Meng & Ermon 2020): fewer steps with the same network.

DDIM reuses a DDPM's ε-network unchanged. Sampling walks an explicit, decreasing list of
timesteps τ_S > … > τ_1 (``ddim_timesteps``); each step reads its previous timestep from that
list, with ᾱ = 1 after the last one. Eq. 12 of the paper, with σ from eq. 16:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'}).

η = 0 is deterministic; η = 1 over every timestep is DDPM's ancestral sampler with σ² = β̃_t.

The first step is numerically delicate with the cosine schedule: at t = T−1, ᾱ ≈ 2·10⁻⁹, so
x̂_0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ multiplies the network's error by ~2·10⁴. We (1) do the update's
arithmetic in float64, (2) clip x̂_0 to the data range [−1, 1], and (3) recompute ε̂ from the
clipped x̂_0, so that the step stays on the line between x̂_0 and x_t and nothing overflows.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, Denoiser, SampleOutput, as_float, clip_x0
from mnistdiff.schedules import NoiseSchedule

__all__ = ["ddim_timesteps", "ddim_sigma", "ddim_step", "ddim_sample_loop"]


def ddim_timesteps(num_timesteps: int, ddim_steps: int) -> list[int]:
    """``ddim_steps`` timesteps evenly spaced from T−1 down to 0 (Lin et al. 2023's "linspace" spacing;
    like their "trailing" one it starts at T−1, so sampling starts from almost pure noise).

    >>> ddim_timesteps(1000, 5)
    [999, 749, 500, 250, 0]
    """
    if not 1 <= ddim_steps <= num_timesteps:
        raise ValueError(f"ddim_steps must be in [1, {num_timesteps}] (the model's timesteps), got {ddim_steps}")
    if ddim_steps == 1:
        return [num_timesteps - 1]
    steps = torch.linspace(num_timesteps - 1, 0, ddim_steps, dtype=torch.float64).round().long().tolist()
    return [int(s) for s in steps]


def _alpha_bar(sched: NoiseSchedule, t: int) -> float:
    """ᾱ_t as a Python float, with ᾱ_{−1} = 1 (the clean image)."""
    return 1.0 if t < 0 else float(sched.alphas_cumprod[t].double())


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """σ of Song et al. eq. 16."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)) ** 0.5 * (1 - alpha_bar_t / alpha_bar_prev) ** 0.5


def ddim_step(
    sched: NoiseSchedule,
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    eta: float,
    noise: torch.Tensor | None = None,
    clip_range: ClipRange = PIXEL_RANGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from timestep ``t`` to ``t_prev`` (< t; −1 means the clean image), eq. 12.

    ``x_t``, ``eps``: (B, C, H, W); ``eta`` in [0, 1] (0: deterministic, 1: DDPM's ancestral step). Returns
    ``(x_{t_prev}, x̂_0)`` in ``x_t``'s dtype; the arithmetic is float64. Nothing is checked per step:
    :func:`ddim_sample_loop` checks η and the timesteps once.
    """
    a_t, a_prev = _alpha_bar(sched, t), _alpha_bar(sched, t_prev)
    x, e = x_t.double(), eps.double()
    x0 = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
    if clip_range is not None:
        x0 = clip_x0(x0, clip_range)
        e = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    sigma = ddim_sigma(a_t, a_prev, eta)
    direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5 * e
    out = a_prev**0.5 * x0 + direction
    if sigma > 0:
        if noise is None:
            noise = torch.randn_like(x_t)
        out = out + sigma * noise.double()
    return out.to(x_t.dtype), x0.to(x_t.dtype)


@torch.no_grad()
def ddim_sample_loop(
    model: Denoiser,
    sched: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    ddim_steps: int = 50,
    eta: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    timesteps: list[int] | None = None,
    return_intermediates: bool = False,
    clip_range: ClipRange = PIXEL_RANGE,
    progress: bool = False,
) -> SampleOutput:
    """Sample with DDIM over ``timesteps`` (default :func:`ddim_timesteps` ``(T, ddim_steps)``) with noise ``eta``
    (0: deterministic DDIM, the paper's; 1: DDPM-like; :data:`~mnistdiff.config.DEFAULT_ETA` is the package's).

    ``clip_range`` bounds each x̂_0 (:func:`~mnistdiff.ddpm.clip_x0`): [−1, 1] for pixels, the stored range for
    latents.

    Returns a :class:`~mnistdiff.ddpm.SampleOutput`: x_0 (B, C, H, W) and, with ``return_intermediates``, the
    frames ``[(T, x_T), …, (0, x_0)]``: one after every step, labelled as in :func:`~mnistdiff.ddpm.p_sample_loop`
    (the step at t is labelled t_prev + 1).
    """
    T = sched.num_timesteps
    steps = timesteps if timesteps is not None else ddim_timesteps(T, ddim_steps)
    if any(b >= a for a, b in zip(steps, steps[1:])) or steps[0] >= T or steps[-1] < 0:
        raise ValueError(f"timesteps must decrease strictly within [0, {T - 1}], got {steps}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), got {eta}")
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator, device=device)
    frames: list[tuple[int, torch.Tensor]] = [(T, x.cpu())] if return_intermediates else []
    host_sched = sched.to("cpu")  # ddim_step reads ᾱ_t as Python floats: from the CPU, not one GPU sync each
    for i, t in enumerate(tqdm(steps, desc=f"DDIM-{len(steps)} sampling", disable=not progress, leave=False)):
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        eps = as_float(model(x, t_batch))
        noise = torch.randn(x.shape, generator=generator, device=device) if eta > 0 else None
        x, _ = ddim_step(host_sched, x, eps, t, t_prev, eta, noise, clip_range)
        if return_intermediates:
            # labelled like p_sample_loop's frames: the state after the step at t is t_prev + 1 (the clean x_0 is 0),
            # so the last two frames do not both get label 0
            frames.append((t_prev + 1, x.cpu()))
    return SampleOutput(x, frames)
