"""Noise schedules against closed forms computed independently (numpy / math, float64).

Convention under test (improved-diffusion's): timesteps are 0 … T−1 and ``alphas_cumprod[t]`` is ᾱ
after t + 1 noising steps, so for the cosine schedule ``alphas_cumprod[t] = f(t+1)/f(0)`` exactly
(β_t = 1 − f(t+1)/f(t) telescopes), except at the very last step where β is clipped at 0.999.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import ref_alpha_bar, ref_betas, ref_cosine_f
from mnistdiff.config import DiffusionConfig
from mnistdiff.schedules import NoiseSchedule, cosine_betas, extract, linear_betas, make_betas


def _f(t: float, T: int, s: float = 0.008) -> float:
    # The closed form, spelled out once more here (not imported from the package).
    return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2


@pytest.mark.parametrize("t", [0, 1, 2, 10, 100, 250, 500, 750, 900, 990, 998])
def test_cosine_alpha_bar_closed_form(cosine_1000, t):
    """ᾱ stored at index t equals f(t+1)/f(0): the value after t+1 steps, unclipped."""
    expected = _f(t + 1, 1000) / _f(0, 1000)
    got = float(cosine_1000.alphas_cumprod[t])
    assert got == pytest.approx(expected, rel=2e-6)


def test_cosine_index_convention_first_principles(cosine_1000):
    """t = 0 is already noisy (ᾱ_0 = f(1)/f(0) < 1, not f(0)/f(0) = 1) and ᾱ_{t−1} is stored as the 'prev'."""
    ab = cosine_1000.alphas_cumprod.double()
    assert float(ab[0]) < 1.0
    assert float(ab[0]) == pytest.approx(_f(1, 1000) / _f(0, 1000), rel=1e-6)
    assert float(ab[0]) != pytest.approx(1.0, abs=1e-6)
    # ᾱ_t = ∏_{s ≤ t} α_s: check the product from the stored alphas.
    prod = torch.cumprod(cosine_1000.alphas.double(), 0)
    torch.testing.assert_close(prod, ab, rtol=1e-5, atol=0)
    # prev: 1 at t = 0, then the previous ᾱ.
    assert float(cosine_1000.alphas_cumprod_prev[0]) == 1.0
    torch.testing.assert_close(cosine_1000.alphas_cumprod_prev[1:], cosine_1000.alphas_cumprod[:-1])


def test_cosine_last_step_clipped(cosine_1000):
    """Unclipped, β_{T−1} = 1 − f(T)/f(T−1) = 1 (f(T) = 0); it is clipped at 0.999, so ᾱ_{T−1} = 0.001·ᾱ_{T−2}."""
    raw_last = 1 - _f(1000, 1000) / _f(999, 1000)
    assert raw_last == pytest.approx(1.0, abs=1e-12)
    assert float(cosine_1000.betas[-1]) == pytest.approx(0.999, abs=1e-7)
    expected = _f(999, 1000) / _f(0, 1000) * (1 - 0.999)
    assert float(cosine_1000.alphas_cumprod[-1]) == pytest.approx(expected, rel=1e-5)
    assert 1e-9 < float(cosine_1000.alphas_cumprod[-1]) < 5e-9  # ≈ 2.4e-9: nearly pure noise, but finite


def test_cosine_only_last_beta_clipped():
    """Only steps whose raw β exceeds 0.999 are clipped: for T = 1000 that is the last one alone."""
    b = cosine_betas(1000)
    raw = np.array([1 - _f(i + 1, 1000) / _f(i, 1000) for i in range(1000)])
    clipped = np.where(raw > 0.999)[0]
    assert clipped.tolist() == [999]
    np.testing.assert_allclose(b.numpy()[:-1], raw[:-1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("T", [2, 20, 100, 1000])
def test_cosine_betas_match_reference(T):
    np.testing.assert_allclose(cosine_betas(T).numpy(), ref_betas("cosine", T), rtol=1e-12, atol=1e-15)
    assert cosine_betas(T).dtype == torch.float64


@pytest.mark.parametrize("T", [2, 20, 100, 1000])
def test_cosine_betas_in_range_and_increasing(T):
    b = cosine_betas(T).numpy()
    assert b.shape == (T,)
    assert np.all(b > 0) and np.all(b <= 0.999)
    assert np.all(np.diff(b) > 0)


def test_linear_betas_ho_values():
    """Ho et al.: β from 1e-4 to 0.02 over 1000 steps, evenly spaced."""
    b = linear_betas(1000).numpy()
    assert b[0] == pytest.approx(1e-4, abs=1e-12)
    assert b[-1] == pytest.approx(0.02, abs=1e-12)
    assert b[500] == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999, rel=1e-10)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-8)


@pytest.mark.parametrize("T", [50, 100, 250])
def test_linear_betas_rescaled(T):
    """For T ≠ 1000 both ends are multiplied by 1000/T (improved-diffusion)."""
    b = linear_betas(T).numpy()
    assert b[0] == pytest.approx(1e-4 * 1000 / T, rel=1e-10)
    assert b[-1] == pytest.approx(0.02 * 1000 / T, rel=1e-10)
    assert len(b) == T


@pytest.mark.parametrize("T", [2, 5, 10, 20])
def test_linear_betas_short_schedules_stay_valid(T):
    """With few steps the rescaled end 0.02·1000/T reaches ≥ 1; β is clipped at 0.999 so ᾱ stays positive."""
    b = linear_betas(T).numpy()
    assert np.all(b > 0) and np.all(b <= 0.999)
    s = NoiseSchedule.make("linear", T)
    assert torch.all(s.alphas_cumprod > 0)
    for name in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert torch.isfinite(getattr(s, name)).all(), name


def test_linear_alpha_bar_golden():
    sched = NoiseSchedule.make("linear", 1000)
    b = np.linspace(1e-4, 0.02, 1000)
    for t in (0, 1, 10, 500, 999):
        assert float(sched.alphas_cumprod[t]) == pytest.approx(float(np.prod(1 - b[: t + 1])), rel=1e-5)


def test_make_betas_dispatch_and_unknown():
    assert torch.equal(make_betas("cosine", 10), cosine_betas(10))
    assert torch.equal(make_betas("linear", 10), linear_betas(10))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic", 10)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("T", [20, 1000])
def test_derived_coefficients(kind, T):
    """Every derived coefficient against the paper's formulas in float64 from the reference β."""
    s = NoiseSchedule.make(kind, T)
    b = ref_betas(kind, T)
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    expected = {
        "betas": b,
        "alphas": a,
        "alphas_cumprod": ab,
        "alphas_cumprod_prev": ab_prev,
        "sqrt_alphas_cumprod": np.sqrt(ab),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ab),
        "sqrt_recip_alphas_cumprod": 1 / np.sqrt(ab),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ab - 1),
        "posterior_variance": b * (1 - ab_prev) / (1 - ab),  # Ho eq. 7
        "posterior_mean_coef1": np.sqrt(ab_prev) * b / (1 - ab),  # Ho eq. 7
        "posterior_mean_coef2": np.sqrt(a) * (1 - ab_prev) / (1 - ab),
    }
    for name, ref in expected.items():
        got = getattr(s, name)
        assert got.dtype == torch.float32, name
        assert got.shape == (T,), name
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=3e-6, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_posterior_log_variance_clipped(kind):
    """β̃_0 = 0, so its log is replaced by log β̃_1; the rest are log β̃_t."""
    s = NoiseSchedule.make(kind, 50)
    b = ref_betas(kind, 50)
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    var = b * (1 - ab_prev) / (1 - ab)
    assert var[0] == 0.0
    lv = s.posterior_log_variance_clipped.double().numpy()
    assert np.all(np.isfinite(lv))
    assert lv[0] == pytest.approx(math.log(var[1]), rel=1e-5)
    np.testing.assert_allclose(lv[1:], np.log(var[1:]), rtol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_monotone_and_finite(kind):
    s = NoiseSchedule.make(kind, 1000)
    ab = s.alphas_cumprod
    assert torch.all(ab[1:] < ab[:-1])
    assert torch.all(ab > 0) and torch.all(ab < 1)
    for name in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance"):
        assert torch.isfinite(getattr(s, name)).all(), name


def test_linear_end_not_pure_noise_but_close():
    """Ho's linear schedule ends at ᾱ_T ≈ 4e-5 (an independent product)."""
    ab = ref_alpha_bar("linear", 1000)[-1]
    assert 1e-5 < ab < 1e-4
    assert float(NoiseSchedule.make("linear", 1000).alphas_cumprod[-1]) == pytest.approx(ab, rel=1e-4)


def test_from_config_and_num_timesteps():
    s = NoiseSchedule.from_config(DiffusionConfig(timesteps=37, schedule="linear"))
    assert s.num_timesteps == 37
    torch.testing.assert_close(s.betas, linear_betas(37).float())


def test_to_device_keeps_values(cosine_small):
    moved = cosine_small.to("cpu")
    assert moved is not cosine_small
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef1"):
        assert torch.equal(getattr(moved, name), getattr(cosine_small, name))


def test_extract_shapes_and_values(cosine_small):
    t = torch.tensor([0, 5, 19])
    out = extract(cosine_small.alphas_cumprod, t, 4)
    assert out.shape == (3, 1, 1, 1)
    assert torch.equal(out.flatten(), cosine_small.alphas_cumprod[t])
    assert extract(cosine_small.betas, t, 2).shape == (3, 1)


def test_reference_closed_form_helper_agrees():
    """Guard for the test helper itself: f(0) = cos²(s/(1+s)·π/2)."""
    assert ref_cosine_f(0, 1000) == pytest.approx(math.cos(0.008 / 1.008 * math.pi / 2) ** 2)
    assert ref_cosine_f(1000, 1000) == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_log_snr_against_the_closed_form(kind):
    """λ_t = log(ᾱ_t / (1 − ᾱ_t)) in float64 against numpy's from the independent reference ᾱ_t (to the float32 the
    schedule stores its roots in); decreasing in t, as the image gives way to noise."""
    sched = NoiseSchedule.make(kind, 1000)
    ab = ref_alpha_bar(kind, 1000)
    lam = sched.log_snr()
    assert lam.dtype == torch.float64 and lam.shape == (1000,)
    np.testing.assert_allclose(lam.numpy(), np.log(ab) - np.log1p(-ab), rtol=1e-5, atol=1e-5)
    assert bool((lam[1:] < lam[:-1]).all())
