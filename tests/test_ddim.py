"""DDIM (Song, Meng & Ermon 2020): the timestep list, one step against numpy (eq. 12 and 16), its
equivalence with DDPM's ancestral step at η = 1, and the delicate first step of the cosine schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FixedEps, OracleEps, SmoothStub, randomize_zero_params, ref_alpha_bar, ref_betas
from mnistdiff.ddim import ddim_sample_loop, ddim_sigma, ddim_step, ddim_timesteps
from mnistdiff.ddpm import PIXEL_RANGE, SampleOutput, p_sample, p_sample_loop, q_sample
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet

T = 20


def _np(x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def _tt(t: int, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


# ----------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize(
    "num_timesteps,steps", [(1000, 50), (1000, 5), (1000, 1000), (100, 20), (20, 3), (20, 20), (7, 2)]
)
def test_ddim_timesteps_properties(num_timesteps, steps):
    ts = ddim_timesteps(num_timesteps, steps)
    assert len(ts) == steps
    assert ts[0] == num_timesteps - 1
    assert ts[-1] == 0
    assert all(b < a for a, b in zip(ts, ts[1:]))
    assert all(isinstance(t, int) for t in ts)


def test_ddim_timesteps_examples():
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]  # evenly spaced from T−1 to 0
    assert ddim_timesteps(20, 20) == list(range(19, -1, -1))
    assert ddim_timesteps(10, 1) == [9]


@pytest.mark.parametrize("bad", [0, -3, 21, 1000])
def test_ddim_timesteps_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="ddim_steps"):
        ddim_timesteps(20, bad)


# ----------------------------------------------------------------------------- sigma (eq. 16)


def test_ddim_sigma_eta0_is_zero():
    assert ddim_sigma(0.3, 0.6, 0.0) == 0.0


@pytest.mark.parametrize("t", [1, 5, 19])
def test_ddim_sigma_eta1_is_ddpm_posterior_std(t):
    """With consecutive steps and η = 1, σ² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t."""
    b = ref_betas("cosine", T)
    ab = np.cumprod(1 - b)
    sigma = ddim_sigma(ab[t], ab[t - 1], 1.0)
    assert sigma**2 == pytest.approx((1 - ab[t - 1]) / (1 - ab[t]) * b[t], rel=1e-10)


def test_ddim_sigma_scales_with_eta():
    assert ddim_sigma(0.2, 0.5, 0.5) == pytest.approx(0.5 * ddim_sigma(0.2, 0.5, 1.0))


# ----------------------------------------------------------------------------- one step (eq. 12)


def _hand_ddim(ab_t: float, ab_prev: float, xt: np.ndarray, eps: np.ndarray, eta: float, z: np.ndarray | None,
               clip: bool):
    """Song et al. eq. 12 with σ from eq. 16, float64; with clipping, ε is recomputed from the clipped x̂_0."""
    x0 = (xt - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
    if clip:
        x0 = np.clip(x0, -1, 1)
        eps = (xt - np.sqrt(ab_t) * x0) / np.sqrt(1 - ab_t)
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t)) * np.sqrt(1 - ab_t / ab_prev)
    out = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps
    if sigma > 0:
        out = out + sigma * z
    return out, x0


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("t,t_prev", [(19, 14), (10, 9), (5, 0), (3, -1)])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_matches_hand_computation(eta, t, t_prev, clip, cosine_small):
    g = torch.Generator().manual_seed(t * 100 + t_prev)
    xt = torch.randn((2, 1, 6, 6), generator=g)
    eps = torch.randn((2, 1, 6, 6), generator=g)
    z = torch.randn((2, 1, 6, 6), generator=g)
    ab = ref_alpha_bar("cosine", T)
    ab_prev = ab[t_prev] if t_prev >= 0 else 1.0
    ref_out, ref_x0 = _hand_ddim(ab[t], ab_prev, _np(xt), _np(eps), eta, _np(z), clip)
    out, x0 = ddim_step(cosine_small, xt, eps, t, t_prev, eta=eta, noise=z, clip_range=PIXEL_RANGE if clip else None)
    assert out.dtype == xt.dtype and x0.dtype == xt.dtype
    np.testing.assert_allclose(_np(x0), ref_x0, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(_np(out), ref_out, rtol=2e-5, atol=2e-5)


def test_ddim_step_eta0_is_deterministic(cosine_small):
    xt, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    a, _ = ddim_step(cosine_small, xt, eps, 12, 6, eta=0.0, noise=torch.randn(2, 1, 4, 4))
    b, _ = ddim_step(cosine_small, xt, eps, 12, 6, eta=0.0, noise=torch.randn(2, 1, 4, 4) * 50)
    torch.testing.assert_close(a, b)


def test_ddim_step_to_clean_returns_x0(cosine_small):
    """t_prev = −1 means ᾱ = 1: the step returns x̂_0 exactly, with no noise even at η = 1."""
    xt, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4) * 0.3
    out, x0 = ddim_step(cosine_small, xt, eps, 0, -1, eta=1.0, noise=torch.randn(2, 1, 4, 4))
    torch.testing.assert_close(out, x0)


def test_ddim_loop_rejects_bad_eta(cosine_small):
    with pytest.raises(ValueError, match="eta"):
        ddim_sample_loop(SmoothStub(1), cosine_small, (1, 1, 2, 2), ddim_steps=3, eta=1.5)


# ----------------------------------------------------------------------------- η = 1, every step ≡ DDPM


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("t", [0, 1, 7, 15, 19])
def test_ddim_eta1_step_equals_p_sample(kind, t):
    """Same mean and variance: with the same ε̂ and the same z, ddim_step(t, t−1, η=1) = p_sample(t)."""
    sched = NoiseSchedule.make(kind, T)
    g = torch.Generator().manual_seed(40 + t)
    xt = torch.randn((3, 1, 5, 5), generator=g) * 1.5  # large enough that x̂_0 is sometimes clipped
    eps = torch.randn((3, 1, 5, 5), generator=g)
    z = torch.randn((3, 1, 5, 5), generator=g)
    ddpm_out, ddpm_x0 = p_sample(FixedEps(eps), sched, xt, _tt(t, 3), z)
    ddim_out, ddim_x0 = ddim_step(sched, xt, eps, t, t - 1, eta=1.0, noise=z)
    torch.testing.assert_close(ddim_x0, ddpm_x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddim_out, ddpm_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_ddim_eta1_mean_and_variance_equal_ddpm(kind):
    """Separately: the z-free part is the posterior mean and the z coefficient is √β̃_t."""
    sched = NoiseSchedule.make(kind, T)
    b = ref_betas(kind, T)
    ab = np.cumprod(1 - b)
    xt, eps = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3) * 0.5
    for t in (3, 12):
        zero, _ = ddim_step(sched, xt, eps, t, t - 1, eta=1.0, noise=torch.zeros_like(xt))
        one, _ = ddim_step(sched, xt, eps, t, t - 1, eta=1.0, noise=torch.ones_like(xt))
        mean, _ = p_sample(FixedEps(eps), sched, xt, _tt(t, 1), torch.zeros_like(xt))
        torch.testing.assert_close(zero, mean, rtol=1e-4, atol=1e-5)
        std = np.sqrt(b[t] * (1 - ab[t - 1]) / (1 - ab[t]))
        np.testing.assert_allclose(_np(one - zero), std, rtol=1e-4)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_ddim_full_loop_eta1_equals_ddpm_loop(kind):
    """Whole loops with the same generator: DDIM over all T steps with η = 1 is DDPM's ancestral sampler."""
    sched = NoiseSchedule.make(kind, T)
    stub = SmoothStub(2, seed=5)
    shape = (3, 2, 4, 4)
    ddpm, _ = p_sample_loop(stub, sched, shape, generator=torch.Generator().manual_seed(21))
    ddim, _ = ddim_sample_loop(stub, sched, shape, ddim_steps=T, eta=1.0, generator=torch.Generator().manual_seed(21))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)


def test_ddim_full_loop_eta1_equals_ddpm_loop_with_unet(tiny_latent_unet_config):
    torch.manual_seed(2)
    model = randomize_zero_params(UNet(tiny_latent_unet_config), std=0.1).eval()
    sched = NoiseSchedule.make("cosine", 10)
    ddpm, _ = p_sample_loop(model, sched, (2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    ddim, _ = ddim_sample_loop(model, sched, (2, 2, 4, 4), ddim_steps=10, eta=1.0,
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the delicate first step


@pytest.mark.parametrize("steps", [10, 50, 250])
def test_first_step_with_oracle_recovers_q_sample(cosine_1000, steps):
    """At t = T−1, ᾱ ≈ 2.4e-9: with the true ε for a known x_0, the first step lands on q_sample(x_0, t_prev, ε)."""
    ts = ddim_timesteps(1000, steps)
    t, t_prev = ts[0], ts[1]
    assert t == 999 and float(cosine_1000.alphas_cumprod[t]) < 3e-9
    g = torch.Generator().manual_seed(steps)
    x0 = (torch.rand((4, 1, 8, 8), generator=g) * 2 - 1) * 0.98
    x0[0, 0, 0, :2] = torch.tensor([1.0, -1.0])  # the boundary values
    eps = torch.randn((4, 1, 8, 8), generator=g)
    xt = q_sample(cosine_1000, x0, _tt(t, 4), eps)
    eps_hat = OracleEps(x0, ref_alpha_bar("cosine", 1000))(xt, _tt(t, 4))
    out, x0_hat = ddim_step(cosine_1000, xt, eps_hat, t, t_prev, eta=0.0)
    assert torch.isfinite(out).all() and torch.isfinite(x0_hat).all()
    assert x0_hat.abs().max() <= 1.0
    expected = q_sample(cosine_1000, x0, _tt(t_prev, 4), eps)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-3)
    # x̂_0 itself is only as good as float32 x_t allows (error ≈ 6e-8/√ᾱ ≈ 1e-3)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-2)


def test_first_step_clips_x0_and_stays_bounded(cosine_1000):
    """A poor ε̂ at t = T−1 makes the raw x̂_0 ~ 1e4; it is clipped to [−1, 1] and the step stays O(1)."""
    g = torch.Generator().manual_seed(0)
    xt = torch.randn((4, 1, 8, 8), generator=g)
    bad_eps = torch.zeros_like(xt)
    raw, raw_x0 = ddim_step(cosine_1000, xt, bad_eps, 999, 979, eta=0.0, clip_range=None)
    assert raw_x0.abs().max() > 1e3  # without clipping the prediction explodes
    out, x0 = ddim_step(cosine_1000, xt, bad_eps, 999, 979, eta=0.0)
    assert x0.min() >= -1.0 and x0.max() <= 1.0
    assert torch.isfinite(out).all()
    ab_prev = float(cosine_1000.alphas_cumprod[979])
    # out = √ᾱ' x̂_0 + √(1−ᾱ') ε' with ε' = (x_t − √ᾱ x̂_0)/√(1−ᾱ) ≈ x_t: bounded by the input's size
    assert out.abs().max() <= np.sqrt(ab_prev) + np.sqrt(1 - ab_prev) * (xt.abs().max() + 1e-3) + 1e-4


def test_first_step_float32_overflow_guard(cosine_1000):
    """Huge inputs (1e30) do not overflow: the arithmetic is float64 and the result is finite."""
    xt = torch.full((1, 1, 2, 2), 1e30)
    out, x0 = ddim_step(cosine_1000, xt, torch.zeros_like(xt), 999, 500, eta=1.0, noise=torch.zeros_like(xt))
    assert torch.isfinite(x0).all()
    assert out.dtype == torch.float32


def test_oracle_full_loop_recovers_x0(cosine_1000):
    """DDIM-20 with an oracle ε̂ lands on x_0 (η = 0): every x̂_0 is x_0 and the last step returns it."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((2, 2, 4, 4), generator=g) * 2 - 1
    oracle = OracleEps(x0, ref_alpha_bar("cosine", 1000))
    out, _ = ddim_sample_loop(oracle, cosine_1000, x0.shape, ddim_steps=20, eta=0.0,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- the loop


def test_loop_eta0_depends_only_on_x_T(cosine_small):
    stub = SmoothStub(1)
    xT = torch.randn(2, 1, 4, 4)
    a, _ = ddim_sample_loop(stub, cosine_small, xT.shape, ddim_steps=5, x_T=xT,
                            generator=torch.Generator().manual_seed(0), eta=0.0)
    b, _ = ddim_sample_loop(stub, cosine_small, xT.shape, ddim_steps=5, x_T=xT,
                            generator=torch.Generator().manual_seed(9), eta=0.0)
    assert torch.equal(a, b)


def test_loop_determinism_and_seed_dependence(cosine_small):
    stub = SmoothStub(1)
    runs = [ddim_sample_loop(stub, cosine_small, (2, 1, 4, 4), ddim_steps=4, eta=0.5,
                             generator=torch.Generator().manual_seed(s)).images for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_loop_visits_the_timesteps_in_order(cosine_small):
    model = FixedEps(torch.zeros(1))
    ddim_sample_loop(model, cosine_small, (2, 1, 2, 2), ddim_steps=4, eta=0.0)
    assert [int(c[0]) for c in model.calls] == ddim_timesteps(T, 4)
    assert all(c.shape == (2,) for c in model.calls)


def test_loop_intermediates(cosine_small):
    xT = torch.randn(2, 1, 4, 4)
    out, frames = ddim_sample_loop(SmoothStub(1), cosine_small, xT.shape, ddim_steps=5, x_T=xT,
                                   return_intermediates=True, eta=0.0)
    assert len(frames) == 6
    assert frames[0][0] == T and torch.equal(frames[0][1], xT)
    # the state after the step at t is labelled t_prev + 1 (as p_sample_loop does); x_0 is 0, once
    assert [t for t, _ in frames[1:]] == [t + 1 for t in ddim_timesteps(T, 5)[1:]] + [0]
    assert len({t for t, _ in frames}) == len(frames)
    assert torch.equal(frames[-1][1], out)


def test_loop_intermediates_labelled_like_ddpm(cosine_small):
    """With every timestep and η = 1, DDIM's frames carry the same labels and states as DDPM's."""
    stub = SmoothStub(1, seed=2)
    _, ddpm = p_sample_loop(stub, cosine_small, (2, 1, 4, 4), return_intermediates=True, keep_every=1,
                            generator=torch.Generator().manual_seed(5))
    _, ddim = ddim_sample_loop(stub, cosine_small, (2, 1, 4, 4), ddim_steps=T, eta=1.0, return_intermediates=True,
                               generator=torch.Generator().manual_seed(5))
    assert [t for t, _ in ddim] == [t for t, _ in ddpm] == list(range(T, -1, -1))
    for (_, a), (_, b) in zip(ddim, ddpm):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_loop_custom_timesteps(cosine_small):
    model = FixedEps(torch.zeros(1))
    ddim_sample_loop(model, cosine_small, (1, 1, 2, 2), timesteps=[19, 10, 3], eta=0.0)
    assert [int(c[0]) for c in model.calls] == [19, 10, 3]


@pytest.mark.parametrize("steps", [[10, 10, 3], [3, 10], [20, 5], [5, -1]])
def test_loop_rejects_bad_timesteps(steps, cosine_small):
    with pytest.raises(ValueError, match="timesteps"):
        ddim_sample_loop(SmoothStub(1), cosine_small, (1, 1, 2, 2), timesteps=steps, eta=0.0)


def test_loop_rejects_too_many_steps(cosine_small):
    with pytest.raises(ValueError, match="ddim_steps"):
        ddim_sample_loop(SmoothStub(1), cosine_small, (1, 1, 2, 2), ddim_steps=T + 1, eta=0.0)


def test_loop_unet_cosine_1000_is_finite():
    """A real (random) UNet through 5 DDIM steps of the full cosine schedule: no NaN, x̂_0 ∈ [−1, 1]."""
    from mnistdiff.config import UNetConfig

    torch.manual_seed(0)
    model = randomize_zero_params(UNet(UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1,),
                                                  num_res_blocks=1, attention_resolutions=(), num_heads=1)))
    out, _ = ddim_sample_loop(model.eval(), NoiseSchedule.make("cosine", 1000), (2, 2, 4, 4), ddim_steps=5,
                           generator=torch.Generator().manual_seed(0), eta=0.0)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-6


def test_every_loop_returns_one_type(cosine_small):
    """Both sampler loops return a SampleOutput, with or without frames (frames empty when not asked)."""
    stub = SmoothStub(1)
    for loop, kw in ((p_sample_loop, {}), (ddim_sample_loop, {"ddim_steps": 4, "eta": 0.0})):
        plain = loop(stub, cosine_small, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), **kw)
        full = loop(stub, cosine_small, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0),
                    return_intermediates=True, **kw)
        assert isinstance(plain, SampleOutput) and isinstance(full, SampleOutput)
        assert plain.frames == [] and len(full.frames) >= 2
        assert torch.equal(plain.images, full.images) and torch.equal(full.frames[-1][1], full.images)


def test_clip_range_is_the_range_clipped_to(cosine_small):
    """A narrow clip range bounds x̂_0 to exactly that range; None leaves it unclipped."""
    g = torch.Generator().manual_seed(5)
    xt, eps = torch.randn((2, 1, 4, 4), generator=g) * 3, torch.randn((2, 1, 4, 4), generator=g)
    _, x0 = ddim_step(cosine_small, xt, eps, 15, 10, clip_range=(-0.25, 0.5), eta=0.0)
    assert float(x0.min()) == pytest.approx(-0.25) and float(x0.max()) == pytest.approx(0.5)
    _, raw = ddim_step(cosine_small, xt, eps, 15, 10, clip_range=None, eta=0.0)
    assert float(raw.abs().max()) > 1
    with pytest.raises(ValueError, match="low < high"):
        ddim_step(cosine_small, xt, eps, 15, 10, clip_range=(1.0, -1.0), eta=0.0)
