"""Noise schedules: β_t and everything derived from it, computed in float64, stored as float32.

Indexing follows improved-diffusion: timesteps ``t = 0 … T−1``; ``alphas_cumprod[t]`` is ᾱ after
``t + 1`` noising steps, so ``q_sample(x0, t=0)`` is already slightly noisy and ``t = T−1`` is
(almost) pure noise.

* cosine (Nichol & Dhariwal 2021, eq. 17):  ᾱ(t) = f(t)/f(0),  f(t) = cos²(((t/T + s)/(1 + s))·π/2),
  s = 0.008, with β_t = 1 − ᾱ(t+1)/ᾱ(t) clipped at 0.999 so the last step stays finite;
* linear (Ho et al. 2020): β from 1e-4 to 0.02, rescaled by 1000/T (and clipped at 0.999 for T ≤ 20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = ["cosine_betas", "linear_betas", "make_betas", "NoiseSchedule"]


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """β_t of the cosine schedule, float64 of shape ``(T,)`` (Nichol & Dhariwal 2021, eq. 17)."""

    def f(t: float) -> float:
        return math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(
    timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999
) -> torch.Tensor:
    """β_t of Ho et al. (2020), rescaled to ``timesteps`` steps, float64 of shape ``(T,)``.

    Clipped at ``max_beta`` like the cosine schedule: for T ≤ 20 the rescaled end 0.02·1000/T reaches 1,
    which would make ᾱ zero (or α negative) and x̂_0 infinite.
    """
    scale = 1000 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64).clamp(max=max_beta)


def make_betas(kind: str, timesteps: int) -> torch.Tensor:
    """β_t for ``kind`` in ``{"cosine", "linear"}``."""
    if kind == "cosine":
        return cosine_betas(timesteps)
    if kind == "linear":
        return linear_betas(timesteps)
    raise ValueError(f"unknown schedule {kind!r}: use 'cosine' or 'linear'")


@dataclass(frozen=True)
class NoiseSchedule:
    """All per-timestep coefficients of the forward and reverse processes, each a float32 ``(T,)`` tensor.

    ``betas`` β_t, ``alphas`` α_t = 1 − β_t, ``alphas_cumprod`` ᾱ_t = ∏_{s≤t} α_s,
    ``alphas_cumprod_prev`` ᾱ_{t−1} (1 at t = 0), the square roots used by ``q_sample`` (Ho eq. 4),
    and the posterior q(x_{t−1} | x_t, x_0) (Ho eq. 6–7): variance β̃_t, its log clipped at t = 0,
    and mean coefficients ``posterior_mean_coef1`` (of x_0) and ``posterior_mean_coef2`` (of x_t).
    Use :meth:`from_config` or :meth:`make`; move it with :meth:`to`.
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def make(cls, kind: str = "cosine", timesteps: int = 1000) -> NoiseSchedule:
        """Compute every coefficient in float64 from β_t, then cast to float32."""
        b = make_betas(kind, timesteps)
        a = 1.0 - b
        ac = torch.cumprod(a, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        # β̃_0 = 0: clip the log with β̃_1 as improved-diffusion does.
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        values = dict(
            betas=b,
            alphas=a,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=b * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * a.sqrt() / (1.0 - ac),
        )
        return cls(**{k: v.float() for k, v in values.items()})

    @classmethod
    def from_config(cls, cfg) -> NoiseSchedule:  # cfg: DiffusionConfig
        return cls.make(cfg.schedule, cfg.timesteps)

    def log_snr(self) -> torch.Tensor:
        """λ_t = log SNR_t = log(ᾱ_t / (1 − ᾱ_t)), float64 ``(T,)``, falling from its largest at t = 0
        (nearly the data) to its smallest at T − 1 (nearly pure noise).

        The one place the loss weighting (:func:`mnistdiff.ddpm.min_snr_weight`) and the time sampling
        (:func:`mnistdiff.ddpm.sample_timesteps`) read the signal-to-noise ratio from; computed from the stored roots.
        """
        return 2.0 * (self.sqrt_alphas_cumprod.double() / self.sqrt_one_minus_alphas_cumprod.double()).log()

    def to(self, device: torch.device | str) -> NoiseSchedule:
        return NoiseSchedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def extract(coef: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``coef[t]`` for a batch of timesteps ``t`` (B,) and reshape to (B, 1, …, 1) with ``ndim`` dims."""
    out = coef.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))
