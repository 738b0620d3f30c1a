"""Latent diffusion (Rombach et al. 2022): run DDPM/DDIM on a frozen VAE's latents.

The VAE's latents are rescaled by a scale factor κ = 1/std(z) computed over the encoded training
set (Rombach et al. §4.3.2, "we rescale the latents … by the component-wise standard deviation"),
so that the diffusion model sees unit-variance inputs, as its noise schedule assumes. The factor is
stored with the latent-diffusion checkpoint, so a sampler always decodes with the right one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mnistdiff.vae import VAE, in_batches, loop_batch

__all__ = ["LatentCodec", "encode_dataset", "compute_latent_scale", "scaled_sample"]


@torch.no_grad()
def encode_dataset(vae: VAE, images: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of ``images`` (N, 1, 32, 32) → two (N, c, 4, 4) tensors, encoded in
    batches of ``batch_size`` (default :func:`~mnistdiff.vae.loop_batch`)."""
    vae.eval()
    means, stds = [], []
    for chunk in images.split(batch_size or loop_batch(images.device)):
        post = vae.encode(chunk)
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


def compute_latent_scale(latents: torch.Tensor) -> float:
    """s = 1 / std(z) over all latent entries (N, c, h, w) — one number, as in Stable Diffusion's 0.18215."""
    z = latents.double()  # float64: float32 rounding gives a constant tensor a spurious ~1e-8 spread
    std = z.std().item()
    if not std > 1e-6 * z.abs().max().item():
        raise ValueError("latents have zero spread: is the VAE trained?")
    return 1.0 / std


def scaled_sample(mean: torch.Tensor, std: torch.Tensor, scale: float, noise: torch.Tensor) -> torch.Tensor:
    """z = κ·(μ + σ·ε): a reparameterised posterior sample (Kingma & Welling eq. 10), scaled by κ. ``mean``, ``std``,
    ``noise``: (B, c, h, w). What a latent model trains on, and :meth:`LatentCodec.encode` (``sample=True``) gives."""
    return (mean + std * noise) * scale


@dataclass
class LatentCodec:
    """A frozen VAE plus its latent scale: images (B, 1, 32, 32) ↔ scaled latents (B, c, 4, 4)."""

    vae: VAE
    scale: float

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Images (B, 1, 32, 32) → scaled latents κ·μ (B, c, 4, 4), or a scaled posterior sample with ``sample``."""
        post = self.vae.encode(x)
        if sample:
            return scaled_sample(post.mean, post.std, self.scale, torch.randn_like(post.mean))
        return post.mode() * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """Unscale and decode; the result is clamped to [−1, 1]. ``precision``: ``"bf16…"`` decodes under bf16
        autocast, ``"…_cl"`` in channels_last (the codes are laid out so; the activations follow) — faster on some
        hardware (:meth:`mnistdiff.model.DiffusionModel.measure_precision` decides by timing them). Decodes in batches
        of :func:`~mnistdiff.vae.loop_batch`."""
        z = z / self.scale
        if precision.endswith("_cl"):
            z = z.contiguous(memory_format=torch.channels_last)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            return in_batches(lambda c: self.vae.decode(c).float(), z).contiguous().clamp(-1.0, 1.0)
