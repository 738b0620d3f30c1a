"""The model kinds, one entry each: what the command line, load-else-train and ``train all`` read.

An entry says once how a kind is configured (its run config class, whose ``kind`` tag names it and whose
``latent`` flag says it diffuses in a VAE's latents), trained, loaded and described. Adding a kind is one
:class:`Kind` here plus its run config and train function; nothing dispatches on a kind's name elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistdiff.config import RUN_CONFIGS, CLDMRunConfig, DDPMRunConfig, FlowRunConfig, LDMRunConfig, VAERunConfig
from mnistdiff.model import DiffusionModel
from mnistdiff.modelfile import load_vae
from mnistdiff.training.loop import TrainResult
from mnistdiff.training.pipelines import train_cldm, train_ddpm, train_flow, train_ldm, train_vae
from mnistdiff.vae import VAE

__all__ = ["Kind", "KINDS"]


@dataclass(frozen=True)
class Kind:
    """One model kind: its run config class, its train function and what the command line says of it."""

    config: type[Any]
    train_fn: Callable[..., TrainResult]
    help: str

    @property
    def name(self) -> str:
        return str(self.config().kind)

    @property
    def latent(self) -> bool:
        """Whether it diffuses in a VAE's latents: its commands and functions take the VAE checkpoint too."""
        return bool(self.config.latent)

    @property
    def conditional(self) -> bool:
        """Whether it is asked for digits (``sample --digit``, classifier-free guidance)."""
        unet = getattr(self.config(), "unet", None)
        return unet is not None and unet.num_classes is not None

    @property
    def samples(self) -> bool:
        """Whether it is a diffusion model (``sample`` takes it) rather than the VAE."""
        return self.config is not VAERunConfig

    def train(self, cfg: Any, vae: str | Path | None = None, **kw: Any) -> TrainResult:
        """Train ``cfg`` (a ``self.config``); ``vae``: the VAE checkpoint of a latent kind. ``kw``: ``out``,
        ``device``, ``data_dir``, ``resume``, ``progress``, ``compile``."""
        return self.train_fn(cfg, vae, **kw) if self.latent else self.train_fn(cfg, **kw)

    def load(self, path: str | Path, vae: str | Path | VAE | None = None,
             device: str | torch.device = "cpu") -> DiffusionModel | VAE:
        """The trained model at ``path`` (verified): a :class:`~mnistdiff.model.DiffusionModel`, or the VAE."""
        if not self.samples:
            return load_vae(path, device)
        return DiffusionModel.load(path, vae=vae, device=device, kind=self.name)


#: Every kind, in the order ``train all`` trains them (the latent ones after the VAE they encode with).
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(DDPMRunConfig, train_ddpm, "the pixel-space DDPM"),
    Kind(VAERunConfig, train_vae, "the VAE"),
    Kind(LDMRunConfig, train_ldm, "the latent diffusion model"),
    Kind(CLDMRunConfig, train_cldm, "the class-conditional latent diffusion model (classifier-free guidance)"),
    Kind(FlowRunConfig, train_flow, "the pixel-space flow-matching model (the straight path; Euler or Heun)"),
)}
assert set(KINDS) == set(RUN_CONFIGS), "every run config is a kind"
