"""A small convolutional VAE (Kingma & Welling 2013): 1×32×32 images ↔ 2×4×4 latents.

The encoder outputs the mean and log-variance of a diagonal Gaussian q(z | x); the decoder maps a
latent back to an image in [−1, 1] (up to clamping). The loss is the negative ELBO with a weight on
the KL term, as in latent diffusion's first stage (Rombach et al. 2022): a small ``kl_weight`` gives
a near-deterministic autoencoder whose latent space is still smooth enough to diffuse in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistdiff.config import VAEConfig

__all__ = ["DiagonalGaussian", "Encoder", "Decoder", "VAE", "vae_loss", "loop_batch", "in_batches"]

#: How many images the VAE's loops (:meth:`VAE.reconstruct`, :meth:`VAE.sample_prior`,
#: :func:`~mnistdiff.latent.encode_dataset`, :meth:`~mnistdiff.latent.LatentCodec.decode`) pass at once on a CPU
#: (1,024 on an accelerator). Every layer acts on each image alone (convolutions, GroupNorm, SiLU), so the piece size
#: changes the speed, not the output: on a two-core CPU, pieces of 64 keep the activations in cache and ran 2.2×
#: (encoding) and 4× (decoding) the images per second of pieces of 1,024, bit for bit the same (Intel Xeon family 6
#: model 207, 2 threads, 4,096 images, docs/DESIGN.md).
CPU_LOOP_BATCH = 64


def loop_batch(device: torch.device | str) -> int:
    """The batch of the VAE's loops on ``device``: :data:`CPU_LOOP_BATCH` on a CPU, 1,024 elsewhere."""
    return CPU_LOOP_BATCH if torch.device(device).type == "cpu" else 1024


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int | None = None
               ) -> torch.Tensor:
    """``fn`` over ``x`` (N, …) in batches of ``batch_size`` (default :func:`loop_batch`), concatenated."""
    return torch.cat([fn(c) for c in x.split(batch_size or loop_batch(x.device))])


class DiagonalGaussian:
    """N(μ, diag(σ²)) from a (B, 2C, h, w) tensor split into μ and log σ² (clamped to [−30, 20])."""

    def __init__(self, params: torch.Tensor) -> None:
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The reparameterisation trick (Kingma & Welling eq. 10): z = μ + σ ⊙ ε, ε ~ N(0, I)."""
        if noise is None:
            noise = torch.randn_like(self.mean)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per example, summed over latent dims (Kingma & Welling appendix B):
        ½ Σ(μ² + σ² − 1 − log σ²)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


def _block(in_ch: int, out_ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.GroupNorm(groups, out_ch), nn.SiLU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.GroupNorm(groups, out_ch), nn.SiLU(),
    )


class Encoder(nn.Module):
    """(B, C, 32, 32) → (B, 2·latent_channels, 4, 4): conv blocks, each followed by a stride-2 conv."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)]
        ch = cfg.base_channels
        for mult in cfg.channel_mults:
            out = cfg.base_channels * mult
            layers += [_block(ch, out, cfg.norm_groups), nn.Conv2d(out, out, 3, stride=2, padding=1)]
            ch = out
        layers += [_block(ch, ch, cfg.norm_groups), nn.Conv2d(ch, 2 * cfg.latent_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent_channels, 4, 4) → (B, C, 32, 32): conv blocks, each followed by ×2 nearest upsampling."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mults = list(reversed(cfg.channel_mults))
        ch = cfg.base_channels * mults[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1), _block(ch, ch, cfg.norm_groups)]
        for mult in mults:
            out = cfg.base_channels * mult
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _block(ch, out, cfg.norm_groups)]
            ch = out
        layers += [nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """Encoder + decoder. ``encode(x)`` → :class:`DiagonalGaussian`; ``decode(z)`` → (B, C, 32, 32).

    ``meta``: what a loaded VAE's file records (its run config, training time, metrics; see
    :func:`mnistdiff.modelfile.load_vae`).
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or VAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.meta: dict[str, Any] = {}

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        if x.ndim != 4 or x.shape[1:] != (self.config.in_channels, self.config.image_size, self.config.image_size):
            raise ValueError(
                f"VAE expects (B, {self.config.in_channels}, {self.config.image_size}, {self.config.image_size}), "
                f"got {tuple(x.shape)}"
            )
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """One code's shape ``(latent_channels, latent_size, latent_size)``, e.g. ``(2, 4, 4)``."""
        return (self.config.latent_channels, self.config.latent_size, self.config.latent_size)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Deterministic reconstructions decode(mean of q(z|x)), clamped to [−1, 1]: (B, C, 32, 32) float32.

        Runs without autograd, in eval mode (then restores the module's mode), in batches of ``batch_size``
        (default :func:`loop_batch`).
        """
        was_training = self.training
        self.eval()
        out = in_batches(lambda c: self.decode(self.encode(c).mode()).float().clamp(-1, 1), x, batch_size)
        self.train(was_training)
        return out

    @torch.no_grad()
    def sample_prior(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                     batch_size: int | None = None) -> torch.Tensor:
        """Decode ``n`` draws z ~ N(0, I) of the prior: (n, C, 32, 32) float32 in [−1, 1] on ``device``, in batches
        of ``batch_size`` (default :func:`loop_batch`)."""
        was_training = self.training
        self.eval()
        z = torch.randn((n, *self.latent_shape), generator=generator, device=device)
        out = in_batches(lambda c: self.decode(c).float().clamp(-1, 1), z, batch_size)
        self.train(was_training)
        return out

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct ``x`` through a posterior sample: returns ``(x̂, q(z|x))``."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(noise)), posterior


def vae_loss(
    model: VAE, x: torch.Tensor, kl_weight: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """−ELBO with a weighted KL: mean over the batch of ‖x − x̂‖² (summed over pixels) + kl_weight · KL.

    The squared error is a Gaussian log-likelihood up to constants. Returns ``(loss, parts)`` with
    ``parts = {"recon": …, "kl": …}`` (per-example means, detached) and ``parts["x_hat"]``, the reconstructions
    (B, C, H, W), still in the graph (an adversarial term is computed on them).
    """
    recon, posterior = model(x, noise)
    rec = F.mse_loss(recon.float(), x, reduction="none").flatten(1).sum(1).mean()
    kl = posterior.kl().mean()
    return rec + kl_weight * kl, {"recon": rec.detach(), "kl": kl.detach(), "x_hat": recon}
