"""The VAE: shapes (1×32×32 ↔ 2×4×4), the KL term against its closed form computed independently,
the reparameterisation gradient, the loss by hand, and a loss that falls over a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistdiff.config import ConfigError, VAEConfig, VAERunConfig
from mnistdiff.data import load_mnist
from mnistdiff.vae import VAE, Decoder, DiagonalGaussian, Encoder, vae_loss


def _vae(cfg: VAEConfig | None = None, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(cfg or VAEConfig(base_channels=8))


@pytest.fixture(scope="module")
def vae() -> VAE:
    return _vae()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_mnist("test").images[:8].clone()


# ----------------------------------------------------------------------------- shapes


def test_default_shapes(vae, digits):
    post = vae.encode(digits)
    assert post.mean.shape == (8, 2, 4, 4)
    assert post.logvar.shape == (8, 2, 4, 4)
    assert post.std.shape == (8, 2, 4, 4)
    assert post.sample().shape == (8, 2, 4, 4)
    assert vae.decode(post.mode()).shape == (8, 1, 32, 32)
    recon, post2 = vae(digits)
    assert recon.shape == digits.shape
    assert torch.isfinite(recon).all()
    assert vae.config.latent_size == 4


@pytest.mark.parametrize(
    "cfg,latent",
    [
        (VAEConfig(base_channels=8, latent_channels=4), (4, 4, 4)),
        (VAEConfig(base_channels=16, channel_mults=(1, 2)), (2, 8, 8)),
        (VAEConfig(base_channels=8, channel_mults=(1, 1, 2, 2)), (2, 2, 2)),
        (VAEConfig(base_channels=8, latent_channels=1, norm_groups=4), (1, 4, 4)),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_configured_shapes(cfg, latent, batch):
    m = _vae(cfg)
    x = torch.rand(batch, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        post = m.encode(x)
        assert post.mean.shape == (batch, *latent)
        assert cfg.latent_size == latent[-1]
        assert m.decode(post.mode()).shape == (batch, 1, 32, 32)


def test_encoder_decoder_modules_shapes():
    cfg = VAEConfig(base_channels=8)
    assert Encoder(cfg)(torch.zeros(2, 1, 32, 32)).shape == (2, 4, 4, 4)  # mean and log-variance
    assert Decoder(cfg)(torch.zeros(2, 2, 4, 4)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 2, 32, 32), (1, 32, 32)])
def test_wrong_input_shape_raises(vae, shape):
    with pytest.raises(ValueError, match="VAE expects"):
        vae.encode(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs", [dict(base_channels=0), dict(latent_channels=0), dict(base_channels=12), dict(in_channels=-1)]
)
def test_bad_vae_config_raises(kwargs):
    with pytest.raises(ConfigError):
        VAEConfig(**kwargs)


def test_negative_kl_weight_raises():
    with pytest.raises(ConfigError, match="kl_weight"):
        VAERunConfig(kl_weight=-1e-6)


# ----------------------------------------------------------------------------- the Gaussian and its KL


def _params(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return torch.cat([mean, logvar], dim=1)


def test_kl_closed_form_numpy():
    """KL(N(μ, σ²) ‖ N(0, 1)) = Σ ( −log σ + (σ² + μ²)/2 − 1/2 ), per example, from scratch in float64."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn((3, 2, 4, 4), generator=g) * 2
    logvar = torch.randn((3, 2, 4, 4), generator=g)
    kl = DiagonalGaussian(_params(mean, logvar)).kl()
    mu, sigma = mean.double().numpy(), np.exp(0.5 * logvar.double().numpy())
    expected = (-np.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5).reshape(3, -1).sum(1)
    assert kl.shape == (3,)
    np.testing.assert_allclose(kl.double().numpy(), expected, rtol=1e-5)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn((2, 4, 2, 2), generator=g)
    logvar = torch.randn((2, 4, 2, 2), generator=g) * 0.5
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).flatten(1).sum(1)
    torch.testing.assert_close(DiagonalGaussian(_params(mean, logvar)).kl(), ref, rtol=1e-5, atol=1e-5)


def test_kl_zero_for_standard_normal_and_positive_otherwise():
    zero = DiagonalGaussian(torch.zeros(2, 4, 3, 3)).kl()
    torch.testing.assert_close(zero, torch.zeros(2))
    off = DiagonalGaussian(_params(torch.full((1, 2, 3, 3), 0.1), torch.zeros(1, 2, 3, 3))).kl()
    assert float(off) == pytest.approx(0.5 * 0.01 * 18, rel=1e-5)


def test_logvar_is_clamped():
    p = _params(torch.zeros(1, 1, 1, 2), torch.tensor([[[[100.0, -100.0]]]]))
    g = DiagonalGaussian(p)
    assert g.logvar.flatten().tolist() == [20.0, -30.0]
    torch.testing.assert_close(g.std.flatten(), torch.tensor([np.exp(10.0), np.exp(-15.0)], dtype=torch.float32))
    assert torch.isfinite(g.kl()).all()


def test_sample_is_reparameterised():
    """z = μ + σ ε: with ε given, z is exact; dz/dμ = 1 and dz/dlogvar = ½ σ ε."""
    g = torch.Generator().manual_seed(2)
    params = torch.randn((2, 4, 3, 3), generator=g).requires_grad_(True)
    noise = torch.randn((2, 2, 3, 3), generator=g)
    dist = DiagonalGaussian(params)
    z = dist.sample(noise)
    mean, logvar = params.detach().chunk(2, dim=1)
    torch.testing.assert_close(z.detach(), mean + torch.exp(0.5 * logvar) * noise)
    z.sum().backward()
    g_mean, g_logvar = params.grad.chunk(2, dim=1)
    torch.testing.assert_close(g_mean, torch.ones_like(g_mean))
    torch.testing.assert_close(g_logvar, 0.5 * torch.exp(0.5 * logvar) * noise)


def test_sample_is_random_and_mode_is_mean():
    dist = DiagonalGaussian(torch.randn(2, 4, 3, 3))
    torch.manual_seed(0)
    a = dist.sample()
    torch.manual_seed(0)
    b = dist.sample()
    c = dist.sample()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(dist.mode(), dist.mean)


def test_sample_statistics():
    dist = DiagonalGaussian(_params(torch.full((1, 1, 100, 100), 0.5), torch.full((1, 1, 100, 100), np.log(0.25))))
    torch.manual_seed(3)
    z = dist.sample()
    assert float(z.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(z.std()) == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- the loss and training


def test_vae_loss_by_hand(vae, digits):
    noise = torch.randn((8, 2, 4, 4), generator=torch.Generator().manual_seed(4))
    loss, parts = vae_loss(vae, digits, kl_weight=0.1, noise=noise)
    with torch.no_grad():
        post = vae.encode(digits)
        recon = vae.decode(post.mean + post.std * noise)
        rec = ((recon - digits) ** 2).reshape(8, -1).sum(1).mean()
        mu, lv = post.mean.double(), post.logvar.double()
        kl = (0.5 * (mu**2 + lv.exp() - 1 - lv)).reshape(8, -1).sum(1).mean()
    assert float(parts["recon"]) == pytest.approx(float(rec), rel=1e-5)
    assert float(parts["kl"]) == pytest.approx(float(kl), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(rec) + 0.1 * float(kl), rel=1e-5)
    assert not parts["recon"].requires_grad and loss.requires_grad


def test_reparameterisation_gradient_reaches_encoder(digits):
    """Gradients of the reconstruction term flow through z = μ + σε into both heads of the encoder."""
    m = _vae(seed=1)
    loss, _ = vae_loss(m, digits[:2], kl_weight=0.0, noise=torch.randn(2, 2, 4, 4))
    loss.backward()
    head = m.encoder.net[-1]  # the 1×1 conv giving [μ, log σ²]
    w = head.weight.grad
    assert w is not None
    assert torch.any(w[:2] != 0)  # μ channels
    assert torch.any(w[2:] != 0)  # log σ² channels: only reachable through σ·ε
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_kl_weight_zero_ignores_kl(vae, digits):
    noise = torch.zeros(8, 2, 4, 4)
    l0, parts = vae_loss(vae, digits, 0.0, noise)
    assert float(l0.detach()) == pytest.approx(float(parts["recon"]), rel=1e-6)


def test_loss_decreases_over_a_few_steps(digits):
    m = _vae(seed=5)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x = digits[:4]
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(5):
        loss, _ = vae_loss(m, x, 1e-4, torch.randn((4, 2, 4, 4), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]


def test_forward_deterministic_with_given_noise(vae, digits):
    noise = torch.randn(8, 2, 4, 4)
    with torch.no_grad():
        a, _ = vae(digits, noise)
        b, _ = vae(digits, noise)
    assert torch.equal(a, b)


def test_reconstruct_is_the_posterior_mean_decoded_without_autograd_and_keeps_the_mode(digits):
    """reconstruct = clamp(decode(mean of q(z|x))) in eval mode, computed by hand here; it records no graph (its
    output needs no gradient although the weights do) and leaves a training module training."""
    vae = _vae(seed=3)
    vae.train()
    out = vae.reconstruct(digits, batch_size=3)
    assert vae.training and not out.requires_grad and out.grad_fn is None
    vae.eval()
    with torch.no_grad():
        want = vae.decoder(vae.encode(digits).mean).float().clamp(-1, 1)
    torch.testing.assert_close(out, want)
