"""DDPM (Ho et al. 2020): the forward process, the posterior and one ancestral step against numpy float64
computations from the paper's equations (4, 6, 7, Algorithm 2), the loss, and the sampling loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import FixedEps, OracleEps, SmoothStub, randomize_zero_params, ref_alpha_bar, ref_betas
from mnistdiff.ddpm import (
    diffusion_loss,
    min_snr_weight,
    p_mean_variance,
    p_sample,
    p_sample_loop,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior,
    q_sample,
    sample_timesteps,
)
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet

T = 20


def _np(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def _tt(t: int, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


# ----------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("t", [0, 7, 19])
def test_q_sample_eq4(kind, t, x0_pixels):
    sched = NoiseSchedule.make(kind, T)
    noise = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(t))
    ab = ref_alpha_bar(kind, T)[t]
    expected = np.sqrt(ab) * _np(x0_pixels) + np.sqrt(1 - ab) * _np(noise)
    got = q_sample(sched, x0_pixels, _tt(t, 4), noise)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-5, atol=1e-6)


def test_q_sample_per_example_timesteps(cosine_small, x0_pixels):
    """Each example uses its own t."""
    t = torch.tensor([0, 5, 10, 19])
    noise = torch.randn_like(x0_pixels)
    got = q_sample(cosine_small, x0_pixels, t, noise)
    for i, ti in enumerate(t.tolist()):
        one = q_sample(cosine_small, x0_pixels[i : i + 1], _tt(ti, 1), noise[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], one)


def test_q_sample_marginal_statistics(cosine_small):
    """Monte Carlo: x_t | x_0 has mean √ᾱ x_0 and variance 1 − ᾱ."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    t = 9
    xt = q_sample(cosine_small, x0, _tt(t, 20000), torch.randn(x0.shape, generator=g))
    ab = ref_alpha_bar("cosine", T)[t]
    assert float(xt.mean()) == pytest.approx(np.sqrt(ab) * 0.7, abs=0.02)
    assert float(xt.var()) == pytest.approx(1 - ab, rel=0.05)


@pytest.mark.parametrize("t", [0, 10, 19])
def test_predict_x0_and_eps_invert_q_sample(cosine_small, x0_pixels, t):
    noise = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(11))
    tt = _tt(t, 4)
    xt = q_sample(cosine_small, x0_pixels, tt, noise)
    torch.testing.assert_close(predict_eps_from_x0(cosine_small, xt, tt, x0_pixels), noise, rtol=1e-4, atol=1e-4)
    tol = 1e-4 if t < 19 else 1e-2  # at t = T−1 ᾱ is tiny and float32 rounding of x_t is amplified
    torch.testing.assert_close(predict_x0_from_eps(cosine_small, xt, tt, noise), x0_pixels, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- posterior (Ho eq. 6–7)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("t", [1, 5, 12, 19])
def test_q_posterior_matches_ho_eq7(kind, t, x0_pixels):
    sched = NoiseSchedule.make(kind, T)
    g = torch.Generator().manual_seed(t)
    xt = torch.randn(x0_pixels.shape, generator=g)
    b = ref_betas(kind, T)
    ab = np.cumprod(1 - b)
    ab_t, ab_prev, beta = ab[t], ab[t - 1], b[t]
    mean = (np.sqrt(ab_prev) * beta / (1 - ab_t) * _np(x0_pixels)
            + np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * _np(xt))
    var = (1 - ab_prev) / (1 - ab_t) * beta
    m, v, lv = q_posterior(sched, x0_pixels, xt, _tt(t, 4))
    np.testing.assert_allclose(_np(m), mean, rtol=1e-5, atol=1e-6)
    assert v.shape == (4, 1, 1, 1)
    np.testing.assert_allclose(_np(v).ravel(), var, rtol=1e-5)
    np.testing.assert_allclose(_np(lv).ravel(), np.log(var), rtol=1e-5)


@pytest.mark.parametrize("t", [1, 10, 19])
def test_q_posterior_by_gaussian_conditioning(t, cosine_small):
    """First principles: x_{t−1} = √ᾱ_{t−1}x_0 + √(1−ᾱ_{t−1})ε₁, x_t = √α_t x_{t−1} + √β_t ε₂.

    Conditioning this joint Gaussian on x_t gives mean √ᾱ_{t−1}x_0 + C/V (x_t − √ᾱ_t x_0) and variance
    (1 − ᾱ_{t−1}) − C²/V with C = √α_t (1 − ᾱ_{t−1}), V = 1 − ᾱ_t (no use of Ho's closed form).
    """
    b = ref_betas("cosine", T)
    ab = np.cumprod(1 - b)
    x0, xt = 0.3, -1.2
    C = np.sqrt(1 - b[t]) * (1 - ab[t - 1])
    V = 1 - ab[t]
    mean = np.sqrt(ab[t - 1]) * x0 + C / V * (xt - np.sqrt(ab[t]) * x0)
    var = (1 - ab[t - 1]) - C**2 / V
    m, v, _ = q_posterior(cosine_small, torch.full((1, 1, 1, 1), x0), torch.full((1, 1, 1, 1), xt), _tt(t, 1))
    assert float(m) == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert float(v) == pytest.approx(var, rel=1e-5)


def test_q_posterior_at_t0_is_x0(cosine_small, x0_pixels):
    """At t = 0 (ᾱ_{−1} = 1) the posterior is a point mass at x_0."""
    xt = torch.randn_like(x0_pixels)
    m, v, lv = q_posterior(cosine_small, x0_pixels, xt, _tt(0, 4))
    torch.testing.assert_close(m, x0_pixels, rtol=1e-5, atol=1e-6)
    assert torch.all(v == 0)
    assert torch.isfinite(lv).all()


# ----------------------------------------------------------------------------- one ancestral step


def _hand_p_sample(kind: str, t: int, xt: np.ndarray, eps: np.ndarray, z: np.ndarray, clip: bool = True):
    """Algorithm 2 with the 'fixed small' variance β̃_t, computed from scratch in float64."""
    b = ref_betas(kind, T)
    ab = np.cumprod(1 - b)
    ab_t = ab[t]
    ab_prev = ab[t - 1] if t > 0 else 1.0
    x0 = (xt - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = np.sqrt(ab_prev) * b[t] / (1 - ab_t) * x0 + np.sqrt(1 - b[t]) * (1 - ab_prev) / (1 - ab_t) * xt
    var = b[t] * (1 - ab_prev) / (1 - ab_t)
    out = mean + (np.sqrt(var) * z if t > 0 else 0.0)
    return out, x0


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("t", [0, 1, 8, 19])
def test_p_sample_matches_hand_computation(kind, t):
    sched = NoiseSchedule.make(kind, T)
    g = torch.Generator().manual_seed(100 + t)
    xt = torch.randn((3, 1, 8, 8), generator=g)
    eps = torch.randn((3, 1, 8, 8), generator=g) * 0.8
    z = torch.randn((3, 1, 8, 8), generator=g)
    model = FixedEps(eps)
    out, x0 = p_sample(model, sched, xt, _tt(t, 3), z)
    ref_out, ref_x0 = _hand_p_sample(kind, t, _np(xt), _np(eps), _np(z))
    np.testing.assert_allclose(_np(x0), ref_x0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(c, _tt(t, 3)) for c in model.calls)


def test_p_sample_without_clipping(cosine_small):
    g = torch.Generator().manual_seed(5)
    xt = torch.randn((2, 1, 4, 4), generator=g) * 3
    eps = torch.zeros_like(xt)
    z = torch.randn_like(xt)
    out, x0 = p_sample(FixedEps(eps), cosine_small, xt, _tt(15, 2), z, clip_range=None)
    ref_out, ref_x0 = _hand_p_sample("cosine", 15, _np(xt), _np(eps), _np(z), clip=False)
    assert np.abs(ref_x0).max() > 1  # clipping would have mattered
    np.testing.assert_allclose(_np(x0), ref_x0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, rtol=1e-4, atol=1e-5)


def test_p_sample_clips_x0(cosine_small):
    xt = torch.full((1, 1, 4, 4), 5.0)
    _, x0 = p_sample(FixedEps(torch.zeros(1, 1, 4, 4)), cosine_small, xt, _tt(10, 1), torch.zeros_like(xt))
    assert x0.max() <= 1.0 and x0.min() >= -1.0
    assert torch.allclose(x0, torch.ones_like(x0))


def test_p_sample_no_noise_at_t0(cosine_small):
    xt = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4) * 0.1
    a, _ = p_sample(FixedEps(eps), cosine_small, xt, _tt(0, 2), torch.randn(2, 1, 4, 4))
    b, _ = p_sample(FixedEps(eps), cosine_small, xt, _tt(0, 2), torch.randn(2, 1, 4, 4) * 100)
    torch.testing.assert_close(a, b)


def test_p_mean_variance_keys_and_shapes(cosine_small, x0_pixels):
    out = p_mean_variance(FixedEps(torch.zeros(1)), cosine_small, x0_pixels, _tt(4, 4))
    assert set(out) == {"mean", "variance", "log_variance", "pred_x0", "eps"}
    assert out["mean"].shape == x0_pixels.shape
    assert out["variance"].shape == (4, 1, 1, 1)


# ----------------------------------------------------------------------------- loss


def test_loss_zero_for_oracle(cosine_small, x0_pixels):
    t = torch.tensor([0, 3, 11, 19])
    noise = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(2))
    oracle = OracleEps(x0_pixels, ref_alpha_bar("cosine", T))
    assert float(diffusion_loss(oracle, cosine_small, x0_pixels, t, noise)) == pytest.approx(0.0, abs=1e-8)


def test_loss_matches_hand_mse(cosine_small, x0_pixels):
    """With a zero predictor the loss is mean(ε²); with a constant c it is mean((ε − c)²)."""
    noise = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 2, 3, 4])
    zero = diffusion_loss(lambda x, tt: torch.zeros_like(x), cosine_small, x0_pixels, t, noise)
    assert float(zero) == pytest.approx(float(np.mean(_np(noise) ** 2)), rel=1e-5)
    half = diffusion_loss(lambda x, tt: torch.full_like(x, 0.5), cosine_small, x0_pixels, t, noise)
    assert float(half) == pytest.approx(float(np.mean((_np(noise) - 0.5) ** 2)), rel=1e-5)


def test_loss_model_sees_q_sample(cosine_small, x0_pixels):
    t = torch.tensor([5, 6, 7, 8])
    noise = torch.randn_like(x0_pixels)
    seen = {}

    def model(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.zeros_like(x)

    diffusion_loss(model, cosine_small, x0_pixels, t, noise)
    torch.testing.assert_close(seen["x"], q_sample(cosine_small, x0_pixels, t, noise))
    assert torch.equal(seen["t"], t)


def test_loss_random_t_in_range(cosine_small, x0_pixels):
    seen = []

    def model(x, tt):
        seen.append(tt)
        return torch.zeros_like(x)

    torch.manual_seed(0)
    for _ in range(20):
        diffusion_loss(model, cosine_small, x0_pixels)
    ts = torch.cat(seen)
    assert ts.min() >= 0 and ts.max() <= T - 1 and ts.dtype == torch.long
    assert len(ts.unique()) > 5


def test_loss_gradients_reach_unet(tiny_unet_config, cosine_small, x0_pixels):
    torch.manual_seed(0)
    model = randomize_zero_params(UNet(tiny_unet_config))
    loss = diffusion_loss(model, cosine_small, x0_pixels[:2])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_loss_finite_at_every_t(cosine_1000):
    """Even t = T−1 (ᾱ ≈ 2e-9) gives a finite loss."""
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    for t in (0, 500, 998, 999):
        loss = diffusion_loss(lambda x, tt: torch.zeros_like(x), cosine_1000, x0, _tt(t, 4), torch.randn_like(x0))
        assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- sampling loop


def test_loop_shape_and_determinism(cosine_small):
    stub = SmoothStub(1)
    a, _ = p_sample_loop(stub, cosine_small, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    b, _ = p_sample_loop(stub, cosine_small, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    c, _ = p_sample_loop(stub, cosine_small, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_loop_equals_manual_steps(cosine_small):
    """The loop is x_T ~ N(0, I), then one p_sample per t = T−1 … 0 with fresh noise from the same generator."""
    stub = SmoothStub(1, seed=3)
    shape = (2, 1, 4, 4)
    got, _ = p_sample_loop(stub, cosine_small, shape, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    x = torch.randn(shape, generator=g)
    for i in range(T - 1, -1, -1):
        x, _ = p_sample(stub, cosine_small, x, _tt(i, 2), torch.randn(shape, generator=g))
    torch.testing.assert_close(got, x)


def test_loop_oracle_recovers_x0(cosine_small, x0_latents):
    """With the true ε for a fixed x_0 ∈ [−1, 1], every x̂_0 is x_0 and the last step returns x_0."""
    oracle = OracleEps(x0_latents, ref_alpha_bar("cosine", T))
    out, _ = p_sample_loop(oracle, cosine_small, x0_latents.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0_latents, rtol=1e-4, atol=1e-4)


def test_loop_intermediates(cosine_small):
    stub = SmoothStub(2)
    xT = torch.randn(2, 2, 4, 4)
    out, frames = p_sample_loop(stub, cosine_small, (2, 2, 4, 4), x_T=xT, return_intermediates=True, keep_every=5,
                                generator=torch.Generator().manual_seed(0))
    ts = [t for t, _ in frames]
    assert ts == [20, 15, 10, 5, 0]
    assert torch.equal(frames[0][1], xT)
    assert torch.equal(frames[-1][1], out)
    assert all(f.shape == (2, 2, 4, 4) for _, f in frames)


def test_loop_uses_given_x_T(cosine_small):
    stub = SmoothStub(1)
    xT = torch.randn(2, 1, 4, 4)
    a, _ = p_sample_loop(stub, cosine_small, (2, 1, 4, 4), x_T=xT, generator=torch.Generator().manual_seed(0))
    b, _ = p_sample_loop(stub, cosine_small, (2, 1, 4, 4), x_T=xT * -1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)


def test_loop_with_unet_is_finite_and_in_range(tiny_latent_unet_config, cosine_small):
    torch.manual_seed(1)
    model = randomize_zero_params(UNet(tiny_latent_unet_config)).eval()
    out, _ = p_sample_loop(model, cosine_small, (2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2, 4, 4)
    assert torch.isfinite(out).all()
    # the last step returns the clipped x̂_0's posterior mean at t = 0, i.e. x̂_0 itself: inside [−1, 1]
    assert out.abs().max() <= 1.0 + 1e-5


# ----------------------------------------------------------------------------- min-SNR-γ weighting (Hang et al. 2023)


@pytest.mark.parametrize("gamma", [0.5, 5.0, 50.0])
def test_min_snr_weight_against_numpy(cosine_1000, gamma):
    """w_t = min(SNR_t, γ)/SNR_t, with SNR_t from the cosine formula computed in numpy float64."""
    ab = ref_alpha_bar("cosine", 1000)
    snr = ab / (1 - ab)
    expected = np.minimum(snr, gamma) / snr
    t = torch.arange(1000)
    np.testing.assert_allclose(min_snr_weight(cosine_1000, t, gamma).numpy(), expected, rtol=1e-4)
    # 1 on the noisy steps, below 1 on the clean ones, never above 1
    assert expected[-1] == 1.0 and expected[0] < 0.01


def test_min_snr_loss_is_the_weighted_per_image_mse(cosine_small, x0_pixels):
    noise = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 2, 9, 19])
    c = torch.full((1, 1, 1, 1), 0.3)
    per_image = ((_np(noise) - 0.3) ** 2).reshape(4, -1).mean(1)
    ab = ref_alpha_bar("cosine", T)[t.numpy()]
    w = np.minimum(ab / (1 - ab), 2.0) / (ab / (1 - ab))
    got = diffusion_loss(FixedEps(c), cosine_small, x0_pixels, t, noise, min_snr_gamma=2.0)
    assert float(got) == pytest.approx(float((w * per_image).mean()), rel=1e-5)
    plain = diffusion_loss(FixedEps(c), cosine_small, x0_pixels, t, noise)
    assert float(plain) == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert float(got) < float(plain)  # the clean steps are down-weighted
    # γ above every SNR of the schedule: the weights are all 1 and the loss is L_simple
    huge = diffusion_loss(FixedEps(c), cosine_small, x0_pixels, t, noise, min_snr_gamma=1e12)
    assert float(huge) == pytest.approx(float(plain), rel=1e-6)


# ----------------------------------------------------------------------------- how training draws t


def test_uniform_timesteps_are_algorithm_1s_draw(cosine_1000):
    """``uniform`` is the draw every committed model trained with: torch.randint on the same generator, bit for bit."""
    got = sample_timesteps(cosine_1000, 4096, "uniform", torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(3)))


def test_logit_normal_timesteps_follow_the_flows_noise_levels(cosine_1000):
    """P(t ≤ k) against the closed form: λ ~ N(0, 4) lands on timestep k when it lies between the midpoints of
    λ_k and its neighbours (λ_t from the cosine formula in numpy float64), so P(t ≤ k) = 1 − Φ(m_k / 2), m_k the
    midpoint of λ_k and λ_{k+1}."""
    n = 200_000
    t = sample_timesteps(cosine_1000, n, "logit_normal", torch.Generator().manual_seed(0)).numpy()
    assert t.dtype == np.int64 and t.min() >= 0 and t.max() <= 999
    ab = ref_alpha_bar("cosine", 1000)
    lam = np.log(ab / (1 - ab))
    for k in (100, 250, 400, 500, 600, 750, 900):
        mid = (lam[k] + lam[k + 1]) / 2
        expected = 1 - 0.5 * (1 + math.erf(mid / 2 / math.sqrt(2)))
        assert abs((t <= k).mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    # against uniform t: more of the batch in the middle half (|λ| < 1.7; uniform: 0.5), far less at the noisiest
    # twentieth (λ < −5.1; uniform: 0.05)
    assert ((t >= 250) & (t < 750)).mean() > 0.55 and (t >= 950).mean() < 0.02


def test_unknown_time_sampling_is_refused(cosine_small):
    with pytest.raises(ValueError, match="time sampling is one of uniform, logit_normal"):
        sample_timesteps(cosine_small, 4, "beta")
