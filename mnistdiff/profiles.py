"""The one profile switch: ``MNISTDIFF_PROFILE=smoke|full``.

``full`` is the seed's defaults, meant for a GPU. ``smoke`` keeps every code path but shrinks
models, data and sample counts so that all six notebooks run in a few minutes on two CPU cores.
Without the variable the profile is ``full`` when CUDA is available and ``smoke`` otherwise.
This module is the only place that reads the variable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .config import DDPMRunConfig, DiffusionConfig, LDMRunConfig, TrainConfig, UNetConfig, VAEConfig, VAERunConfig

__all__ = ["Profile", "PROFILES", "get_profile", "profile_name", "default_device"]

ENV_VAR = "MNISTDIFF_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Every size that matters for one profile: the three run configs and the evaluation sizes."""

    name: str
    ddpm: DDPMRunConfig
    vae: VAERunConfig
    ldm: LDMRunConfig
    num_samples: int = 64  # samples shown in grids
    ddim_steps: int = 50
    eval_samples: int = 10_000  # samples per generator for metrics
    umap_real: int = 10_000  # real images the UMAP is fitted on
    ddim_step_sweep: tuple[int, ...] = (10, 20, 50, 100)
    widget_frames: int = 8


FULL = Profile(name="full", ddpm=DDPMRunConfig(), vae=VAERunConfig(), ldm=LDMRunConfig())

_SMOKE_TRAIN = TrainConfig(
    epochs=2, lr=2e-3, batch_size=64, subset=1024, sample_every=2, warmup_steps=4, num_samples=8, eval_size=128
)
_SMOKE_DIFFUSION = DiffusionConfig(timesteps=100)

SMOKE = Profile(
    name="smoke",
    ddpm=DDPMRunConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), num_heads=2),
        diffusion=_SMOKE_DIFFUSION,
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=6, sample_every=3),
    ),
    vae=VAERunConfig(
        vae=VAEConfig(base_channels=8),
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=3, lr=3e-3),
    ),
    ldm=LDMRunConfig(
        unet=UNetConfig(
            in_channels=2, image_size=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_heads=2,
        ),
        diffusion=_SMOKE_DIFFUSION,
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=3),
    ),
    num_samples=16,
    ddim_steps=20,
    eval_samples=128,
    umap_real=1000,
    ddim_step_sweep=(5, 10, 20),
    widget_frames=6,
)

PROFILES = {"smoke": SMOKE, "full": FULL}


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def profile_name(name: str | None = None) -> str:
    """The profile's name: ``name`` if given, else ``$MNISTDIFF_PROFILE``, else full on CUDA / smoke on CPU."""
    chosen = name or os.environ.get(ENV_VAR) or ("full" if torch.cuda.is_available() else "smoke")
    if chosen not in PROFILES:
        raise ValueError(f"{ENV_VAR} must be one of {sorted(PROFILES)}, got {chosen!r}")
    return chosen


def get_profile(name: str | None = None) -> Profile:
    """The :class:`Profile` chosen by :func:`profile_name`."""
    return PROFILES[profile_name(name)]
