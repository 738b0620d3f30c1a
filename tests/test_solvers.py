"""The higher-order solvers (``mnistdiff.solvers``) against independent references: diffusers' schedulers run on the
same ε-network (``DPMSolverMultistepScheduler`` for DPM-Solver++(2M), ``HeunDiscreteScheduler`` with Karras σ for
EDM's Heun), the exact probability-flow ODE of Gaussian data (orders of convergence, DDIM as the first-order
baseline), and the samplers through ``DiffusionModel`` (network calls, frames, seeds) for a DDPM and a flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnistdiff.config import DDPMRunConfig, DiffusionConfig, FlowRunConfig, UNetConfig
from mnistdiff.ddim import ddim_timesteps
from mnistdiff.flows import PathPoint, straight_path
from mnistdiff.model import DiffusionModel
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.solvers import (
    KARRAS_SIGMA_MAX,
    KARRAS_SIGMA_MIN,
    SOLVERS,
    ddpm_path,
    dpm_solver_pp_2m,
    dpm_solver_pp_2m_sde,
    heun_edm,
    karras_sigmas,
    schedule_sigmas,
    solver_nfe,
    solver_sample_loop,
)
from mnistdiff.unet import UNet

T = 100


def _toy_eps_network():
    """A smooth stand-in ε-network (a fixed convolution, modulated by t)."""
    weight = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.3

    def net(x, t):
        wave = torch.cos(t.float() / T)[:, None, None, None]
        return torch.nn.functional.conv2d(x, weight, padding=1) * wave + 0.1 * x

    return net


def _close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal to ``rel`` of the largest value (the stand-in network's samples are not bounded)."""
    assert float((ours - theirs).abs().max()) <= rel * float(ours.abs().max()), float((ours - theirs).abs().max())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpm_solver_pp_2m_equals_diffusers(schedule):
    from diffusers import DPMSolverMultistepScheduler

    sched, net, steps = NoiseSchedule.make(schedule, T), _toy_eps_network(), 10
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = solver_sample_loop(net, sched, x_T.shape, solver="dpmpp_2m", steps=steps, x_T=x_T, clip_range=None,
                              spacing="linspace").images
    theirs = DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=sched.betas.double().numpy(),
                                         algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
                                         final_sigmas_type="zero")
    theirs.set_timesteps(timesteps=ddim_timesteps(T, steps))
    x = x_T.clone()
    for t in theirs.timesteps:
        x = theirs.step(net(x, torch.full((2,), int(t))), t, x).prev_sample
    _close(ours, x)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpm_solver_pp_2m_sde_equals_diffusers_given_the_same_noise(schedule):
    from diffusers import DPMSolverMultistepScheduler

    sched, net, steps = NoiseSchedule.make(schedule, T), _toy_eps_network(), 10
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = solver_sample_loop(net, sched, x_T.shape, solver="dpmpp_2m_sde", steps=steps, x_T=x_T, clip_range=None,
                              generator=torch.Generator().manual_seed(5), spacing="linspace").images
    theirs = DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=sched.betas.double().numpy(),
                                         algorithm_type="sde-dpmsolver++", solver_order=2, prediction_type="epsilon",
                                         final_sigmas_type="zero")
    theirs.set_timesteps(timesteps=ddim_timesteps(T, steps))
    noise, x = torch.Generator().manual_seed(5), x_T.clone()
    for k, t in enumerate(theirs.timesteps):  # our noise, step by step; none on the last step (to σ = 0)
        z = torch.randn(x.shape, generator=noise) if k < steps - 1 else torch.zeros_like(x)
        x = theirs.step(net(x, torch.full((2,), int(t))), t, x, variance_noise=z).prev_sample
    _close(ours, x)
    ode = solver_sample_loop(net, sched, x_T.shape, solver="dpmpp_2m", steps=steps, x_T=x_T, clip_range=None,
                             spacing="linspace").images
    assert float((ours - ode).abs().max()) > 0.1  # the noise is really there


def test_dpm_solver_pp_2m_sde_samples_gaussian_data_exactly_in_the_limit():
    # with the exact denoiser of x_0 ~ N(MU, S²), the reverse SDE's samples have that mean and spread, from any start
    points = vp_points(64)
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = dpm_solver_pp_2m_sde(gauss_denoise(points), points, x * math.hypot(points[0].a * S, points[0].b),
                              generator=torch.Generator().manual_seed(1))
    assert abs(float(x0.mean()) - MU) < 0.01 and abs(float(x0.std()) - S) < 0.01
    # and the stochastic steps correct a start that is off the path, which the ODE carries to the end
    shifted = x * math.hypot(points[0].a * S, points[0].b) + 3 * points[0].b
    sde = dpm_solver_pp_2m_sde(gauss_denoise(points), points, shifted, generator=torch.Generator().manual_seed(1))
    ode = dpm_solver_pp_2m(gauss_denoise(points), points, shifted)
    assert abs(float(sde.mean()) - MU) < 0.5 * abs(float(ode.mean()) - MU)


def test_edm_heun_equals_diffusers_heun_with_karras_sigmas():
    from diffusers import HeunDiscreteScheduler

    sched, net, steps = NoiseSchedule.make("linear", T), _toy_eps_network(), 10
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    points, denoise, times = ddpm_path(net, sched, steps, "karras", None, None, None)  # σ range: the schedule's
    ours = heun_edm(denoise, points, x_T).float()
    theirs = HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=sched.betas.double().numpy(),
                                   prediction_type="epsilon", use_karras_sigmas=True)
    theirs.set_timesteps(steps)
    np.testing.assert_allclose(theirs.timesteps[::2].numpy(), times, rtol=1e-5, atol=1e-6)  # the same timesteps
    x = x_T.clone() * theirs.init_noise_sigma  # their sample is x/a; ours starts at x_T·√(1 + σ²): 1e-5 apart
    for t in theirs.timesteps:
        x = theirs.step(net(theirs.scale_model_input(x, t), torch.full((2,), float(t))), t, x).prev_sample
    _close(ours, x)


# ---------------------------------------------------------------- Gaussian data: the exact probability-flow ODE

MU, S = 0.5, 0.4  # data x_0 ~ N(MU, S²) per pixel


def gauss_denoise(points):
    """The exact E[x_0 | x_t] of Gaussian data at each point."""
    def denoise(x, i):
        a, b = points[i].a, points[i].b
        return MU + a * S**2 / (a**2 * S**2 + b**2) * (x - a * MU)
    return denoise


def ddim_first_order(denoise, points, x):
    """DDIM (η = 0) on the same points: x' = a'·x̂_0 + b'·ε̂."""
    for i in range(len(points) - 1):
        x0 = denoise(x, i)
        eps = (x - points[i].a * x0) / points[i].b
        x = points[i + 1].a * x0 + points[i + 1].b * eps
    return x


def vp_points(n: int) -> list[PathPoint]:
    points = []
    for s in karras_sigmas(0.002, 80.0, n):
        a = 1 / math.sqrt(1 + s * s)
        points.append(PathPoint(a, s * a, 0.0, 0.0))
    return [*points, PathPoint(1.0, 0.0, 0.0, 0.0)]


def _error(run, n: int) -> float:
    points = vp_points(n)
    a0, b0 = points[0].a, points[0].b
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(
        a0**2 * S**2 + b0**2) + a0 * MU
    exact = MU + S * (x - a0 * MU) / math.sqrt(a0**2 * S**2 + b0**2)  # the ODE's map is affine for Gaussian data
    return float((run(gauss_denoise(points), points, x) - exact).abs().max())


@pytest.mark.parametrize("run", [dpm_solver_pp_2m, heun_edm], ids=["dpmpp_2m", "heun"])
def test_second_order_solvers_converge_fast_and_beat_ddim(run):
    errors = [_error(run, n) for n in (32, 64, 128)]
    assert all(a / b > 3.5 for a, b in zip(errors, errors[1:]))  # second order in the step
    assert errors[-1] < 2e-3
    assert 4 * errors[0] < _error(ddim_first_order, 32)


def test_ddim_is_first_order_here():
    errors = [_error(ddim_first_order, n) for n in (16, 32, 64)]
    assert all(1.6 < a / b < 2.6 for a, b in zip(errors, errors[1:]))


def test_dpm_solver_on_a_flow_lands_on_the_exact_flow():
    """On the straight path (starting at a = 0) DPM-Solver++ runs too, and converges to the exact map μ + s·x_1."""
    def run(n):
        points = [straight_path(1 - i / n) for i in range(n + 1)]
        x1 = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return float((dpm_solver_pp_2m(gauss_denoise(points), points, x1) - (MU + S * x1)).abs().max())

    errors = [run(n) for n in (64, 128, 256)]
    assert all(a / b > 2.8 for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-3


def test_karras_sigmas_follow_eq_5():
    sig = karras_sigmas(0.002, 80.0, 5)
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002)
    roots = [s ** (1 / 7) for s in sig]
    assert np.allclose(np.diff(roots), roots[1] - roots[0])  # evenly spaced in σ^(1/ρ)


def test_unknown_solver_and_a_flow_with_edm_heun_are_refused():
    with pytest.raises(ValueError, match="solver must be one of dpmpp_2m, dpmpp_2m_sde, heun"):
        solver_sample_loop(_toy_eps_network(), NoiseSchedule.make("linear", T), (1, 1, 4, 4), solver="unipc", steps=2)
    with pytest.raises(ValueError, match="EDM's variables need a > 0"):
        solver_sample_loop(_toy_eps_network(), None, (1, 1, 4, 4), solver="heun", steps=2)


# ------------------------------------------------------------------------------- through DiffusionModel

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=2)


def _model(kind: str) -> DiffusionModel:
    torch.manual_seed(0)
    unet = UNet(TINY).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if kind == "flow":
        return DiffusionModel(unet, None, FlowRunConfig(unet=TINY))
    cfg = DDPMRunConfig(unet=TINY, diffusion=DiffusionConfig(timesteps=T))
    return DiffusionModel(unet, NoiseSchedule.from_config(cfg.diffusion), cfg)


@pytest.mark.parametrize("kind,sampler", [("ddpm", "dpmpp_2m"), ("ddpm", "dpmpp_2m_sde"), ("ddpm", "heun"),
                                         ("flow", "dpmpp_2m"), ("flow", "dpmpp_2m_sde")])
def test_models_sample_with_the_solvers_in_the_calls_they_promise(kind, sampler):
    model = _model(kind)
    calls = []
    hook = model.network.register_forward_hook(lambda *_: calls.append(1))
    out = model.sample(3, sampler=sampler, steps=5, seed=2, return_intermediates=True)
    hook.remove()
    assert len(calls) == model.nfe(sampler, 5) == (9 if sampler == "heun" else 5)
    assert out.images.shape == (3, 1, 32, 32) and out.images.abs().max() <= 1
    top = FlowRunConfig.karras_sigma_max
    start = T if kind == "ddpm" else round(1000 * top / (1 + top))  # a flow starts at its first Karras point
    assert len(out.frames) == 6 and out.frames[-1][0] == 0 and out.frames[0][0] == start
    assert torch.equal(model.sample(3, sampler=sampler, steps=5, seed=2).images, out.images)


def test_schedule_sigmas_are_the_noise_to_signal_ratio_of_each_timestep():
    """σ_k = b/a at timestep k: the variance-preserving point with that σ has a² = 1/(1 + σ²) = ᾱ_k."""
    sched = NoiseSchedule.from_config(DiffusionConfig(timesteps=T))
    sigmas = schedule_sigmas(sched)
    assert sigmas.shape == (T,) and sigmas.dtype == torch.float64 and bool((sigmas[1:] > sigmas[:-1]).all())
    torch.testing.assert_close(1 / (1 + sigmas**2), sched.alphas_cumprod.double(), rtol=1e-6, atol=0)


def test_a_models_karras_range_is_its_kinds_sigma_max_and_the_packages_sigma_min():
    ddpm, flow = _model("ddpm"), _model("flow")
    assert ddpm.karras_range == {"sigma_max": DDPMRunConfig.karras_sigma_max, "sigma_min": KARRAS_SIGMA_MIN}
    assert flow.karras_range == {"sigma_max": FlowRunConfig.karras_sigma_max, "sigma_min": KARRAS_SIGMA_MIN}


def test_a_spacing_is_asked_of_the_solvers_only():
    from mnistdiff.config import ConfigError

    ddpm, flow = _model("ddpm"), _model("flow")
    assert ddpm.spacing("dpmpp_2m") == "karras" and ddpm.spacing("ddim") is None
    assert flow.spacing("dpmpp_2m_sde") == "karras" and flow.spacing("euler") is None and flow.spacing("heun") is None
    for model in (ddpm, flow):
        default = model.sample(2, sampler="dpmpp_2m_sde", steps=4, seed=1).images
        assert torch.equal(model.sample(2, sampler="dpmpp_2m_sde", steps=4, seed=1, spacing="karras").images, default)
        assert not torch.equal(model.sample(2, sampler="dpmpp_2m_sde", steps=4, seed=1, spacing="linspace").images,
                               default)
    for model, sampler, spacing, message in [(ddpm, "ddim", "karras", "only dpmpp_2m"),
                                             (flow, "heun", "linspace", "only dpmpp_2m"),
                                             (flow, "euler", "karras", "only dpmpp_2m"),
                                             (ddpm, "dpmpp_2m", "uniform", "spacing must be one of karras, linspace")]:
        with pytest.raises(ConfigError, match=message):
            model.sample(2, sampler=sampler, steps=4, spacing=spacing)


@pytest.mark.parametrize("steps", [1, 2, 6])
def test_a_flows_karras_points_walk_karras_sigma_on_the_straight_path(steps):
    """Karras et al.'s eq. 5 written out here (ρ = 7): on the straight path σ = b/a = t/(1 − t), so the points' b/a
    are σ_max … σ_min, one per network call, and the last point is the data (a = 1, b = 0)."""
    from mnistdiff.solvers import flow_path

    points, _, times = flow_path(torch.nn.Identity(), steps, spacing="karras", sigma_max=80.0, sigma_min=0.2)
    want = [80.0] if steps == 1 else [(80 ** (1 / 7) + i / (steps - 1) * (0.2 ** (1 / 7) - 80 ** (1 / 7))) ** 7
                                      for i in range(steps)]
    assert len(times) == steps and times[0] == pytest.approx(80 / 81, rel=1e-12)
    assert [float(p.b / p.a) for p in points[:-1]] == pytest.approx(want, rel=1e-12)
    assert [float(p.a + p.b) for p in points] == pytest.approx([1.0] * (steps + 1))  # on the straight path
    assert (points[-1].a, points[-1].b) == (1, 0)
    evenly, _, even_times = flow_path(torch.nn.Identity(), steps)
    assert even_times == [1 - i / steps for i in range(steps)]


def test_a_flows_karras_sampling_starts_at_t_max_with_t_max_times_the_noise():
    """A one-call run from x = b·ε at t_max (EDM's start): DPM-Solver++'s last step lands on x̂_0 = x − t·v̂, so with
    a velocity network that returns x itself the sample is (1 − t_max)·t_max·ε, computed here by hand."""
    from mnistdiff.solvers import solver_sample_loop

    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = solver_sample_loop(lambda x, t: x, None, noise.shape, solver="dpmpp_2m", steps=1, x_T=noise, clip_range=None,
                             spacing="karras", sigma_max=80.0, return_intermediates=True)
    t_max = 80 / 81
    torch.testing.assert_close(out.images, ((1 - t_max) * t_max * noise.double()).float())
    assert [label for label, _ in out.frames] == [round(1000 * t_max), 0]


def test_the_solvers_are_the_package_samplers():
    assert set(SOLVERS) <= set(DDPMRunConfig.samplers) and "dpmpp_2m" in FlowRunConfig.samplers
    assert solver_nfe("dpmpp_2m", 7) == 7 and solver_nfe("heun", 7) == 13


def test_karras_spacing_runs_from_its_sigma_max_to_its_sigma_min_not_a_cosine_schedules_ends():
    sched = NoiseSchedule.make("cosine", 1000)
    points, _, times = ddpm_path(_toy_eps_network(), sched, 10, "karras")
    assert points[0].b / points[0].a == pytest.approx(KARRAS_SIGMA_MAX, rel=1e-6)
    assert points[-2].b / points[-2].a == pytest.approx(KARRAS_SIGMA_MIN, rel=1e-6)  # the last network point
    assert (points[-1].a, points[-1].b) == (1.0, 0.0)  # then the data
    edm, _, _ = ddpm_path(_toy_eps_network(), sched, 10, "karras", sigma_max=80.0, sigma_min=0.002)
    assert edm[0].b / edm[0].a == pytest.approx(80.0, rel=1e-6)
    assert times[0] < 999 and times[-1] > 1
    widest, _, wide_times = ddpm_path(_toy_eps_network(), sched, 10, "karras", sigma_max=None, sigma_min=None)
    assert widest[0].b / widest[0].a > 1000  # the schedule's own last σ …
    assert wide_times[-1] == pytest.approx(0.0, abs=1e-6)  # … and its first, which EDM's σ_min = 0.002 is below
    assert edm[-2].b / edm[-2].a == pytest.approx(widest[-2].b / widest[-2].a, rel=1e-6)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde", "heun"])
def test_an_eps_networks_solvers_walk_karras_sigmas_unless_told_linspace(solver):
    # the loop's points are ddpm_path's at the spacing asked for (Karras σ from KARRAS_SIGMA_MAX by default)
    sched, net, steps = NoiseSchedule.make("cosine", T), _toy_eps_network(), 6
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = {"dpmpp_2m": dpm_solver_pp_2m, "heun": heun_edm,
           "dpmpp_2m_sde": lambda d, p, x: dpm_solver_pp_2m_sde(d, p, x, torch.Generator().manual_seed(3))}[solver]
    outs = {}
    for spacing in ("karras", "linspace"):
        points, denoise, _ = ddpm_path(net, sched, steps, spacing, None)
        want = run(denoise, points, x_T).float()
        kw = {} if spacing == "karras" else {"spacing": "linspace"}
        got = solver_sample_loop(net, sched, x_T.shape, solver=solver, steps=steps, x_T=x_T, clip_range=None,
                                 generator=torch.Generator().manual_seed(3), **kw).images
        torch.testing.assert_close(got, want)
        outs[spacing] = got
    assert float((outs["karras"] - outs["linspace"]).abs().max()) > 1e-3  # the spacing really changes the path
    with pytest.raises(ValueError, match="spacing"):
        solver_sample_loop(net, sched, x_T.shape, solver=solver, steps=steps, spacing="uniform")
