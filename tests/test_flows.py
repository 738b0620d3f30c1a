"""Flow matching (``mnistdiff.flows``) against closed forms: the five parameterisations against their defining
equations, the straight path's velocity against a finite difference, Euler and Heun against the exact solution of
a Gaussian toy whose marginal velocity field is known (and their orders of convergence), flow Euler against DDIM's
update on the straight path, and a flow model through ``DiffusionModel`` (file round trip, samplers, refusals)."""

from __future__ import annotations

import math

import pytest
import torch

from mnistdiff.config import ConfigError, FlowRunConfig, UNetConfig
from mnistdiff.flows import (
    PARAMETERISATIONS,
    TIME_SCALE,
    PathPoint,
    convert,
    euler_step,
    flow_matching_loss,
    flow_nfe,
    flow_sample_loop,
    flow_timesteps,
    interpolate,
    sample_time,
    straight_path,
    velocity_target,
)
from mnistdiff.model import DiffusionModel
from mnistdiff.unet import UNet

torch.set_default_dtype(torch.float32)


def _targets(x0: torch.Tensor, eps: torch.Tensor, p: PathPoint) -> dict[str, torch.Tensor]:
    """Each target written out from its definition (not through :func:`convert`)."""
    return {"eps": eps, "x0": x0, "score": -eps / p.b, "v": p.a * eps - p.b * x0, "velocity": p.da * x0 + p.db * eps}


def _vp_point(t: float) -> PathPoint:
    """The variance-preserving path a = cos(πt/2), b = sin(πt/2) (the DDPM's cosine schedule without its offset)."""
    h = math.pi / 2
    return PathPoint(math.cos(h * t), math.sin(h * t), -h * math.sin(h * t), h * math.cos(h * t))


@pytest.mark.parametrize("point", [straight_path(0.3), straight_path(0.9), _vp_point(0.2), _vp_point(0.7)])
@pytest.mark.parametrize("source", PARAMETERISATIONS)
def test_convert_matches_every_definition(point, source):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 1, 8, 8, generator=g,
                                                                                    dtype=torch.float64)
    x = point.a * x0 + point.b * eps
    want = _targets(x0, eps, point)
    for target in PARAMETERISATIONS:
        torch.testing.assert_close(convert(x, want[source], source, target, point), want[target])


def test_convert_refuses_an_unknown_target():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="a prediction is one of"):
        convert(x, x, "noise", "eps", straight_path(0.5))
    with pytest.raises(ValueError, match="a prediction is one of"):
        convert(x, x, "eps", "noise", straight_path(0.5))


def test_velocity_is_the_time_derivative_of_the_path():
    """(x_{t+h} − x_{t−h}) / 2h of the interpolant equals ε − x_0; on the VP path, convert's velocity equals the
    finite difference of a_t·x_0 + b_t·ε."""
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=g,
                                                                                    dtype=torch.float64)
    t, h = torch.full((3,), 0.4, dtype=torch.float64), 1e-4
    fd = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity_target(x0, eps))
    p, pp, pm = _vp_point(0.4), _vp_point(0.4 + h), _vp_point(0.4 - h)
    fd_vp = ((pp.a - pm.a) * x0 + (pp.b - pm.b) * eps) / (2 * h)
    x = p.a * x0 + p.b * eps
    torch.testing.assert_close(convert(x, eps, "eps", "velocity", p), fd_vp)


# --------------------------------------------------------------------- a Gaussian toy with a known marginal field

MU, S = 0.7, 0.3  # data x_0 ~ N(MU, S²) per pixel


def toy_velocity(x: torch.Tensor, t_scaled: torch.Tensor) -> torch.Tensor:
    """The marginal field u_t(x) = E[ε − x_0 | x_t = x] of the toy, from the joint Gaussian of (x_0, ε, x_t); called
    like a network, with 1000·t."""
    t = (t_scaled / TIME_SCALE).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * S**2 + t**2
    centred = x - (1 - t) * MU
    return t / var * centred - (MU + S**2 * (1 - t) / var * centred)


def _errors(solver: str, steps: list[int]) -> list[float]:
    x1 = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * x1  # the exact flow of a Gaussian is affine: N(0, 1) at t = 1 → N(MU, S²) at t = 0
    return [float((flow_sample_loop(toy_velocity, x1.shape, steps=n, solver=solver, x_T=x1, clip_range=None).images
                   - exact).abs().max()) for n in steps]


def test_euler_converges_at_first_order_to_the_exact_solution():
    errors = _errors("euler", [8, 16, 32, 64])
    assert errors[-1] < 0.05
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.7 < coarse / fine < 2.3  # halving the step halves the error


def test_heun_converges_at_second_order_and_beats_euler():
    """Second order with its Euler last step too (that step's local error is O(h²), like Heun's global one)."""
    errors = _errors("heun", [16, 32, 64, 128])
    assert errors[-1] < 5e-4
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.3 < coarse / fine < 4.6  # halving the step quarters the error
    assert 1.3 * _errors("heun", [8])[0] < _errors("euler", [16])[0]  # at 15 and 16 network calls


def test_flow_euler_is_ddim_on_the_straight_path():
    """One Euler step from t to s with v̂ = ε̂ − x̂_0 lands on DDIM's x_s = a_s·x̂_0 + b_s·ε̂ (η = 0), where x̂_0 and
    ε̂ are read from the same prediction at t."""
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 1, 8, 8, generator=g,
                                                                                dtype=torch.float64)
    t, s = 0.8, 0.55
    x0_hat = convert(x, v, "velocity", "x0", straight_path(t))
    eps_hat = convert(x, v, "velocity", "eps", straight_path(t))
    torch.testing.assert_close(euler_step(x, v, t, s), (1 - s) * x0_hat + s * eps_hat)


def test_solvers_call_the_network_as_flow_nfe_says_and_label_frames_by_time():
    calls = []

    def net(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    for solver, steps in [("euler", 5), ("heun", 5), ("heun", 1)]:
        calls.clear()
        out = flow_sample_loop(net, (2, 1, 4, 4), steps=steps, solver=solver, return_intermediates=True)
        assert len(calls) == flow_nfe(solver, steps)
        assert calls[0] == pytest.approx(TIME_SCALE)  # the first call sees pure noise at t = 1
        assert [t for t, _ in out.frames] == [round(1000 * t) for t in flow_timesteps(steps)]
    assert flow_nfe("euler", 8) == 8 and flow_nfe("heun", 8) == 15 and flow_nfe("heun", 1) == 1
    assert 0.0 not in calls  # Heun's last step is Euler's: the network is never asked at t = 0
    with pytest.raises(ValueError, match="solver must be one of euler, heun"):
        flow_sample_loop(net, (1, 1, 4, 4), steps=2, solver="ddim")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        flow_timesteps(0)


def test_samples_are_clamped_and_seeded():
    def net(x, t):
        return -3 * torch.ones_like(x)  # drives x far above the data range

    a = flow_sample_loop(net, (2, 1, 4, 4), steps=3, generator=torch.Generator().manual_seed(0)).images
    b = flow_sample_loop(net, (2, 1, 4, 4), steps=3, generator=torch.Generator().manual_seed(0)).images
    assert a.max() <= 1 and a.min() >= -1 and torch.equal(a, b)


def test_flow_matching_loss_is_the_velocity_regression():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)
    t = torch.rand(4, generator=g)
    seen = {}

    def net(x, t_in):
        seen["x"], seen["t"] = x, t_in
        return torch.zeros_like(x)

    loss = flow_matching_loss(net, x0, t, eps)
    torch.testing.assert_close(loss, (eps - x0).pow(2).mean())
    torch.testing.assert_close(seen["x"], (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(seen["t"], TIME_SCALE * t)


def test_time_sampling():
    g = torch.Generator().manual_seed(4)
    u = sample_time(20_000, "uniform", g)
    ln = sample_time(20_000, "logit_normal", g)
    assert 0 <= u.min() and u.max() <= 1 and abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert 0 < ln.min() and ln.max() < 1 and abs(float(ln.mean()) - 0.5) < 0.01
    assert float(ln.var()) < float(u.var())  # concentrated on the middle of the path
    with pytest.raises(ValueError, match="time sampling is one of"):
        sample_time(3, "normal")


# --------------------------------------------------------------------------------- a flow model as a DiffusionModel

TINY_UNET = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=2)


@pytest.fixture
def flow_model(tmp_path):
    torch.manual_seed(0)
    cfg = FlowRunConfig(unet=TINY_UNET)
    unet = UNet(cfg.unet).eval()
    with torch.no_grad():
        for p in unet.parameters():  # the output layer starts at zero: a zero velocity would make Euler = Heun
            p.add_(0.05 * torch.randn_like(p))
    path = DiffusionModel(unet, None, cfg).save(tmp_path / "flow.safetensors", seconds=1.0)
    return DiffusionModel.load(path, kind="flow")


def test_flow_model_round_trips_and_samples_with_dpmpp_2m_sde_by_default(flow_model, tmp_path):
    assert flow_model.kind == "flow" and flow_model.schedule is None
    assert flow_model.samplers == ("dpmpp_2m_sde", "euler", "heun", "dpmpp_2m")
    default = flow_model.sample(3, steps=4, seed=5).images
    sde = flow_model.sample(3, sampler="dpmpp_2m_sde", steps=4, seed=5).images
    euler = flow_model.sample(3, sampler="euler", steps=4, seed=5).images
    assert default.shape == (3, 1, 32, 32) and torch.equal(default, sde) and not torch.equal(sde, euler)
    again = DiffusionModel.load(flow_model.save(tmp_path / "again.safetensors"))
    assert torch.equal(again.sample(3, steps=4, seed=5).images, sde)


@pytest.mark.parametrize("kwargs,message", [
    ({"sampler": "ddim"}, "sampler: this flow model is sampled with dpmpp_2m_sde, euler, heun or dpmpp_2m, got 'ddim'"),
    ({"sampler": "dpm"}, "sampler: this flow model is sampled with dpmpp_2m_sde, euler, heun or dpmpp_2m, got 'dpm'"),
    ({"steps": 0}, "steps must be a whole number from 1 or more, got 0"),
])
def test_flow_model_refuses_bad_requests(flow_model, kwargs, message):
    with pytest.raises(ConfigError) as err:
        flow_model.sample(2, **kwargs)
    assert message in str(err.value)


def test_time_sampling_setting_is_checked():
    with pytest.raises(ConfigError, match="time_sampling must be 'uniform' or 'logit_normal'"):
        FlowRunConfig(time_sampling="beta")
