"""v-prediction (Salimans & Ho 2022), issue 22: the target against its definition as a velocity, the ε it
implies, the min-SNR-γ objective shown equal in both parameterisations, a v-network seen as an ε-network against
the closed-form optimum of a Gaussian toy, and a v model's file, sampling and old files."""

from __future__ import annotations

import math

import pytest
import torch

from mnistdiff.config import ConfigError, DDPMRunConfig, DiffusionConfig, TrainConfig, UNetConfig
from mnistdiff.ddim import ddim_sample_loop
from mnistdiff.ddpm import EpsFromV, min_snr_weight, predict_eps_from_v, q_sample, v_target
from mnistdiff.model import DiffusionModel
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet


@pytest.mark.parametrize("t", [0, 7, 19])
def test_v_is_the_velocity_along_the_quarter_circle(cosine_small, x0_pixels, t):
    """x(φ) = cos φ · x_0 + sin φ · ε with cos φ = √ᾱ_t: v = dx/dφ, by a central difference in float64."""
    eps = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(3))
    phi = math.acos(float(cosine_small.sqrt_alphas_cumprod[t]))
    h = 1e-6
    x = lambda p: math.cos(p) * x0_pixels.double() + math.sin(p) * eps.double()  # noqa: E731
    numeric = (x(phi + h) - x(phi - h)) / (2 * h)
    got = v_target(cosine_small, x0_pixels, torch.full((4,), t), eps)
    torch.testing.assert_close(got.double(), numeric, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [0, 10, 19])
def test_eps_from_v_inverts_the_target(cosine_small, x0_pixels, t):
    eps = torch.randn(x0_pixels.shape, generator=torch.Generator().manual_seed(5))
    tt = torch.full((4,), t)
    x_t = q_sample(cosine_small, x0_pixels, tt, eps)
    torch.testing.assert_close(predict_eps_from_v(cosine_small, x_t, tt, v_target(cosine_small, x0_pixels, tt, eps)),
                               eps, atol=1e-5, rtol=1e-5)


def test_min_snr_gives_one_objective_in_either_parameterisation(cosine_1000, x0_pixels):
    """Any v̂ and the ε̂ it implies have the same min-SNR-γ loss: w_v‖v − v̂‖² = w_ε‖ε − ε̂‖² per sample."""
    g = torch.Generator().manual_seed(9)
    t = torch.tensor([0, 250, 700, 999])
    eps, v_hat = torch.randn(x0_pixels.shape, generator=g), torch.randn(x0_pixels.shape, generator=g)
    x_t = q_sample(cosine_1000, x0_pixels, t, eps)
    eps_hat = predict_eps_from_v(cosine_1000, x_t, t, v_hat)
    v = v_target(cosine_1000, x0_pixels, t, eps)
    as_v = min_snr_weight(cosine_1000, t, 5.0, "v") * (v - v_hat).pow(2).flatten(1).sum(1)
    as_eps = min_snr_weight(cosine_1000, t, 5.0, "eps") * (eps - eps_hat).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(as_v, as_eps, rtol=1e-3, atol=1e-4)


class _GaussianOptimum(torch.nn.Module):
    """The optimal network for data x_0 ~ N(0, s²) per pixel: E[ε | x_t] or E[v | x_t], in closed form."""

    def __init__(self, sched: NoiseSchedule, s: float, target: str) -> None:
        super().__init__()
        self.sched, self.s, self.target = sched, s, target

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.sched.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        var = a * self.s**2 + 1 - a  # x_t ~ N(0, var)
        eps = (1 - a).sqrt() / var * x.double()  # Cov(ε, x_t) / Var(x_t) · x_t
        x0 = a.sqrt() * self.s**2 / var * x.double()
        return (eps if self.target == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0).float()


def test_a_v_network_seen_as_eps_is_the_optimal_eps_network_and_samples_alike(cosine_small):
    x_t = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 9, 19])
    eps_net, v_net = (_GaussianOptimum(cosine_small, 0.5, k) for k in ("eps", "v"))
    eps_from_v = EpsFromV(v_net, cosine_small)(x_t, t)
    assert eps_from_v.dtype == torch.float64  # kept in float64 for the sampler's x̂_0 (tests/test_export.py)
    torch.testing.assert_close(eps_from_v.float(), eps_net(x_t, t), atol=1e-5, rtol=1e-5)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    a = ddim_sample_loop(eps_net, cosine_small, x_T.shape, x_T=x_T, ddim_steps=10, eta=0.0, clip_range=None)
    b = ddim_sample_loop(EpsFromV(v_net, cosine_small), cosine_small, x_T.shape, x_T=x_T, ddim_steps=10, eta=0.0,
                         clip_range=None)
    torch.testing.assert_close(a.images, b.images, atol=1e-4, rtol=1e-4)


TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(16,), num_heads=2)


def test_a_v_model_file_holds_the_unet_and_samples_through_eps_from_v(tmp_path):
    cfg = DDPMRunConfig(unet=TINY, diffusion=DiffusionConfig(timesteps=20, prediction="v"), train=TrainConfig())
    torch.manual_seed(0)
    net = UNet(TINY).eval()
    sched = NoiseSchedule.from_config(cfg.diffusion)
    path = DiffusionModel(EpsFromV(net, sched), sched, cfg).save(tmp_path / "v.safetensors", seconds=1.0)
    model = DiffusionModel.load(path)
    assert isinstance(model.unet, EpsFromV) and set(model.network.state_dict()) == set(net.state_dict())
    got = model.sample(3, sampler="ddim", steps=5, eta=0.0, seed=4).images
    want = DiffusionModel(EpsFromV(net, sched), sched, cfg).sample(3, sampler="ddim", steps=5, eta=0.0, seed=4).images
    torch.testing.assert_close(got, want)
    eps_model = DiffusionModel(net, sched, DDPMRunConfig(unet=TINY, diffusion=DiffusionConfig(timesteps=20)))
    same = eps_model.sample(3, sampler="ddim", steps=5, eta=0.0, seed=4).images
    assert not torch.equal(same, got)  # the wrapper is used


def test_prediction_is_checked_and_old_configs_mean_eps():
    with pytest.raises(ConfigError, match="prediction must be 'eps' or 'v'"):
        DiffusionConfig(prediction="x0")
    from mnistdiff.config import from_dict, to_dict

    old = to_dict(DDPMRunConfig())
    del old["diffusion"]["prediction"]
    assert from_dict(DDPMRunConfig, old).diffusion.prediction == "eps"
