"""The adversarial term of the latent-diffusion autoencoder: a patch critic that punishes blur.

A VAE trained on squared error alone decodes the *mean* of the images a latent could stand for, and a mean of
digits is a blurred digit. Latent diffusion's autoencoders (Esser et al. 2021, "Taming Transformers", eq. 4-6;
Rombach et al. 2022, appendix G) add a critic D that tells real images from reconstructions patch by patch
(PatchGAN, Isola et al. 2017) and train the decoder to fool it:

    L_VAE = ‖x − x̂‖² + β·KL + λ·(−D(x̂))        L_D = max(0, 1 − D(x)) + max(0, 1 + D(x̂))   (hinge loss)

with Esser et al.'s adaptive weight (their eq. 7): λ = w·‖∇_L L_rec‖ / ‖∇_L L_adv‖ at the decoder's last layer L,
so the adversarial gradient is ``w`` times the reconstruction's whatever the two losses' scales.

The critic is training machinery: it is trained beside the VAE (:class:`VAEWithCritic`, one optimiser, one
checkpoint, so a run resumes bit for bit) and left out of the model file, which holds the VAE alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mnistdiff.vae import VAE, vae_loss

__all__ = ["PatchCritic", "VAEWithCritic", "hinge_critic_loss", "adaptive_weight", "adversarial_vae_loss"]


class PatchCritic(nn.Module):
    """A PatchGAN critic: (B, C, 32, 32) images → (B, 1, 8, 8) logits, one per overlapping patch of 22 pixels."""

    def __init__(self, in_channels: int = 1, channels: int = 32, groups: int = 8) -> None:
        """``channels`` at the first of its three strided or 3×3 convolutions (twice that after)."""
        super().__init__()
        wide = 2 * channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, wide, 4, stride=2, padding=1), nn.GroupNorm(groups, wide), nn.LeakyReLU(0.2),
            nn.Conv2d(wide, wide, 3, padding=1), nn.GroupNorm(groups, wide), nn.LeakyReLU(0.2),
            nn.Conv2d(wide, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, H/4, W/4): positive where a patch looks real."""
        return self.net(x)


class VAEWithCritic(nn.Module):
    """The VAE and its critic as one module for training; ``.vae`` is what the model file keeps."""

    def __init__(self, vae: VAE, critic: PatchCritic) -> None:
        """Hold both; their parameters share one optimiser and one EMA."""
        super().__init__()
        self.vae, self.critic = vae, critic


def hinge_critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))]: the critic's hinge loss on real and reconstructed patches."""
    return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()


def adversarial_vae_loss(model: VAEWithCritic, x: torch.Tensor, kl_weight: float, adv_weight: float,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
    """One scalar that trains both players: the VAE's ``−ELBO + λ·(−D(x̂))`` plus the critic's L_D, for images
    ``x`` (B, C, 32, 32); λ = ``adv_weight`` × :func:`adaptive_weight`.

    The VAE's term sees the critic with its weights detached (so it moves the decoder, not the critic), and the
    critic's term sees the reconstructions detached (so it moves the critic, not the decoder). In eval mode the
    loss is the −ELBO alone, so eval losses compare with a VAE trained without the critic.
    """
    elbo, parts = vae_loss(model.vae, x, kl_weight, noise)
    if not model.training:
        return elbo
    x_hat = parts["x_hat"]
    frozen = {name: p.detach() for name, p in model.critic.named_parameters()}
    fool = -functional_call(model.critic, frozen, (x_hat,)).float().mean()
    critic = hinge_critic_loss(model.critic(x), model.critic(x_hat.detach()))
    last = model.vae.decoder.net[-1].weight
    return elbo + adv_weight * adaptive_weight(elbo, fool, last) * fool + critic


def adaptive_weight(rec: torch.Tensor, adv: torch.Tensor, last: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """‖∇_last rec‖ / (‖∇_last adv‖ + eps), clamped to [0, 10⁴] and detached (Esser et al. 2021, eq. 7)."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + eps)).clamp(0, 1e4).detach()
