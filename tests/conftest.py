"""Shared fixtures: tiny configs, seeded tensors, an independent float64 reference of the schedules.

Everything here is deliberately small so that the unit tests run in seconds on two CPU cores.
The reference schedule (:func:`ref_cosine_alpha_bar`, :func:`ref_betas`) is written from the
papers' formulas with numpy, without importing :mod:`mnistdiff.schedules`, so that golden values
are computed independently of the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnistdiff.config import UNetConfig, VAEConfig
from mnistdiff.schedules import NoiseSchedule

# --------------------------------------------------------------------------------------------
# Independent float64 reference of the noise schedules (Nichol & Dhariwal 2021; Ho et al. 2020)
# --------------------------------------------------------------------------------------------

COSINE_S = 0.008


def ref_cosine_f(t: float, T: int, s: float = COSINE_S) -> float:
    """f(t) = cos²(((t/T + s)/(1 + s))·π/2)  (Nichol & Dhariwal eq. 17)."""
    return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2


def ref_betas(kind: str, T: int) -> np.ndarray:
    """β_0 … β_{T−1} in float64, from the closed forms, clipped at 0.999 (which only bites at the end)."""
    if kind == "linear":
        scale = 1000.0 / T
        return np.minimum(np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64), 0.999)
    f = np.array([ref_cosine_f(t, T) for t in range(T + 1)], dtype=np.float64)
    return np.minimum(1.0 - f[1:] / f[:-1], 0.999)


def ref_alpha_bar(kind: str, T: int) -> np.ndarray:
    """ᾱ_t = ∏_{s≤t} (1 − β_s), float64, package indexing (ᾱ after t+1 steps)."""
    return np.cumprod(1.0 - ref_betas(kind, T))


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    return 0


@pytest.fixture
def gen():
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_unet_config() -> UNetConfig:
    """A 1×32×32 UNet small enough for many forward passes on a slow CPU."""
    return UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(16,), num_heads=2)


@pytest.fixture(scope="session")
def tiny_latent_unet_config() -> UNetConfig:
    """A UNet on 2×4×4 latents."""
    return UNetConfig(in_channels=2, image_size=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=(2,), num_heads=2)


@pytest.fixture(scope="session")
def tiny_vae_config() -> VAEConfig:
    return VAEConfig(base_channels=8)


@pytest.fixture(scope="session")
def cosine_small() -> NoiseSchedule:
    return NoiseSchedule.make("cosine", 20)


@pytest.fixture(scope="session")
def cosine_1000() -> NoiseSchedule:
    return NoiseSchedule.make("cosine", 1000)


@pytest.fixture(scope="session")
def linear_small() -> NoiseSchedule:
    return NoiseSchedule.make("linear", 20)


@pytest.fixture
def x0_pixels() -> torch.Tensor:
    """A seeded batch of 4 'images' in [−1, 1], shape (4, 1, 32, 32)."""
    g = torch.Generator().manual_seed(7)
    return torch.rand((4, 1, 32, 32), generator=g) * 2 - 1


@pytest.fixture
def x0_latents() -> torch.Tensor:
    """A seeded batch of 3 latents in [−1, 1], shape (3, 2, 4, 4)."""
    g = torch.Generator().manual_seed(8)
    return torch.rand((3, 2, 4, 4), generator=g) * 2 - 1


def randomize_zero_params(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give zero-initialised parameters (the UNet's last convs) small random values, so gradients reach every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


class FixedEps:
    """A stub denoiser that returns a fixed ε, whatever x_t and t are (records the calls)."""

    def __init__(self, eps: torch.Tensor) -> None:
        self.eps = eps
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.clone())
        return self.eps.expand_as(x).clone()


class OracleEps:
    """A stub denoiser that knows x_0: returns ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t), computed in float64."""

    def __init__(self, x0: torch.Tensor, alpha_bar: np.ndarray) -> None:
        self.x0 = x0.double()
        self.ab = torch.tensor(alpha_bar, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ab[t].reshape(-1, *([1] * (x.ndim - 1)))
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).to(x.dtype)


class SmoothStub:
    """A deterministic, non-trivial function of (x_t, t): tanh of a fixed channel mix plus a t-dependent offset."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn((channels, channels), generator=g) / math.sqrt(channels)
        self.b = torch.randn((channels,), generator=g) * 0.1

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", self.w, x)
        return torch.tanh(mixed + self.b[None, :, None, None] + 0.01 * t.float()[:, None, None, None])
