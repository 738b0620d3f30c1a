"""Higher-order solvers of the probability-flow ODE, for every model in the package (chapter 9).

Every model on a Gaussian path x_t = a_t·x_0 + b_t·ε (:class:`~mnistdiff.flows.PathPoint`) gives, at a point of its
path, a guess of the clean sample x̂_0: an ε-network (the DDPM, the latent models) through
x̂_0 = (x − b·ε̂)/a, clipped as DDIM clips it; a flow through x̂_0 = x − t·v̂. A solver walks a decreasing list of
points p_0 (the noisiest) … p_N (the data: a = 1, b = 0), calling ``denoise(x, i)`` → x̂_0 at point i:

* :func:`dpm_solver_pp_2m` — DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): an exponential integrator in the
  half-log-SNR λ = log(a/b), with h = λ_{i+1} − λ_i,

      x_{i+1} = (b_{i+1}/b_i)·x_i − a_{i+1}·(e^{−h} − 1)·D_i,   D_i = (1 + 1/2r)·x̂_0,i − (1/2r)·x̂_0,i−1,  r = h_{i−1}/h,

  one network call per step; the first step (no previous x̂_0) and the last (to b = 0) are first order, which is
  DDIM's step exactly.
* :func:`dpm_solver_pp_2m_sde` — its stochastic twin (Lu et al. 2022, §5 and Appendix; diffusers'
  ``sde-dpmsolver++``): the same D_i on the reverse SDE, solved exactly in its linear part,

      x_{i+1} = (b_{i+1}/b_i)·e^{−h}·x_i + a_{i+1}·(1 − e^{−2h})·D_i + b_{i+1}·√(1 − e^{−2h})·z,   z ~ N(0, I),

  which forgets a share e^{−h} of the old noise and draws the rest afresh, as DDPM's posterior step (DDIM's η = 1)
  does; the noise corrects the network's errors as it goes, where the ODE carries them to the end.
* :func:`heun_edm` — Heun's method in EDM's variables x̄ = x/a and σ = b/a, where the ODE is dx̄/dσ = (x̄ − x̂_0)/σ
  (Karras et al. 2022, Algorithm 1): the trapezoid correction on every step but the last, which ends at σ = 0
  where that slope is undefined (2N − 1 calls).

Where the points go matters as much as the solver. On an ε-network every solver here runs by default on Karras et
al.'s σ spacing (eq. 5, :func:`karras_sigmas`: evenly spaced in σ^(1/ρ), ρ = 7) from σ_max = 20
(:data:`KARRAS_SIGMA_MAX`) down to σ_min = 0.2 (:data:`KARRAS_SIGMA_MIN`), whose x̂_0 is the sample, not on DDIM's
evenly spaced timesteps (``spacing="linspace"``). Measured on the book's pixel DDPM at 10 network calls, n = 2,000,
seed 0 (``benchmarks/karras_sigmas.py`` → ``results/book/karras_sigmas.json``): DPM-Solver++(2M) SDE scores 16× / 31×
the real floor (classifier / ResNet features) on DDIM's timesteps and 2.5× / 2.1× on Karras σ from 20 down to the
schedule's first σ (0.006), and σ_max = 20 beat EDM's 80, 40, 10 and 5: MNIST's small digits are drowned in noise
well below the σ_max that EDM chose for larger images. Ending at σ = 0.2 instead, where the digit is decided but a
trace of noise is left for the last x̂_0 to remove, gives the three calls spent below σ = 0.15 to the strokes; over
seeds 0-4 (``benchmarks/seed_spread.py``) the pixel DDPM's 10-call SDE solver went from 1.57× / 1.17× DDIM-50's
FID to 1.20× / 0.79×, and every solver gained (the ODE and EDM's Heun too, a one-seed check). A flow's DPM-Solver++
walks the same spacing on its straight path, where σ = b/a = t/(1 − t), from its kind's σ_max (80, measured) down to
σ_min, starting at t_max = σ_max/(1 + σ_max) from x = t_max·ε as EDM starts from σ_max·ε (no call at t = 1).

:func:`ddpm_path` and :func:`flow_path` build the points and the denoiser of a model; :func:`solver_sample_loop`
runs a solver and returns a :class:`~mnistdiff.ddpm.SampleOutput` like every other sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mnistdiff.ddim import ddim_timesteps
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, Denoiser, SampleOutput, clip_x0
from mnistdiff.flows import TIME_SCALE, PathPoint, flow_timesteps, straight_path
from mnistdiff.schedules import NoiseSchedule

__all__ = ["SOLVERS", "SPACINGS", "DEFAULT_SPACING", "KARRAS_SIGMA_MAX", "KARRAS_SIGMA_MIN", "karras_sigmas",
           "schedule_sigmas", "network_time", "ddpm_path", "flow_path", "dpm_solver_pp_2m", "dpm_solver_pp_2m_sde",
           "heun_edm", "solver_sample_loop", "solver_nfe"]

#: The solvers of this module, by the name ``sample(sampler=…)`` takes (``"heun"`` is EDM's for an ε-network; a
#: flow's Heun, in its own time t, is :func:`~mnistdiff.flows.flow_sample_loop`'s).
SOLVERS = ("dpmpp_2m", "dpmpp_2m_sde", "heun")

#: Where a solver puts its points (:func:`ddpm_path`, :func:`flow_path`): Karras et al.'s σ (the default) or evenly
#: spaced (DDIM's timesteps; a flow's t).
SPACINGS = ("karras", "linspace")
DEFAULT_SPACING = SPACINGS[0]

#: ``denoise(x, i)`` → x̂_0: a model's guess of the clean sample at point i of its path.
Denoise = Callable[[torch.Tensor, int], torch.Tensor]


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> list[float]:
    """``n`` σ from ``sigma_max`` down to ``sigma_min``, evenly spaced in σ^(1/ρ) (Karras et al. eq. 5)."""
    if n == 1:
        return [sigma_max]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]


def schedule_sigmas(sched: NoiseSchedule) -> torch.Tensor:
    """σ_k = √((1 − ᾱ_k)/ᾱ_k) of each timestep index k (T,), float64, on the CPU: the noise-to-signal ratio b/a at
    each of the schedule's timesteps, the σ of Karras et al.'s variables."""
    abar = sched.alphas_cumprod.double().cpu()
    return ((1 - abar) / abar).sqrt()


def _timestep_of_sigma(log_sigmas: torch.Tensor, sigma: float) -> float:
    """The fractional timestep index whose σ is ``sigma``, interpolating log σ linearly between neighbours."""
    log_s = math.log(sigma)
    k = int(torch.searchsorted(log_sigmas, torch.tensor(log_s, dtype=torch.float64)).clamp(1, len(log_sigmas) - 1))
    lo, hi = float(log_sigmas[k - 1]), float(log_sigmas[k])
    w = min(max((log_s - lo) / (hi - lo), 0.0), 1.0)
    return k - 1 + w


def network_time(sched: NoiseSchedule | None, sigma: float) -> float:
    """The time a model's network is called with at noise level σ = b/a: an ε-network's fractional timestep index
    (σ_t interpolated as :func:`ddpm_path` places Karras σ), a flow's (``sched`` ``None``) TIME_SCALE·σ/(1 + σ).
    σ = 0 and σ = ∞ give −∞ and ∞ (below and above every time), so an interval of σ maps to one of times."""
    if sigma <= 0 or math.isinf(sigma):
        return -math.inf if sigma <= 0 else math.inf
    if sched is None:
        return TIME_SCALE * sigma / (1 + sigma)
    sigmas = schedule_sigmas(sched)
    if sigma < float(sigmas[0]) or sigma > float(sigmas[-1]):
        return -math.inf if sigma < float(sigmas[0]) else math.inf
    return _timestep_of_sigma(sigmas.log(), sigma)


def _point_of_sigma(sigma: float) -> PathPoint:
    """The variance-preserving point with b/a = σ: a = 1/√(1 + σ²), b = σ·a (derivatives unused)."""
    a = 1 / math.sqrt(1 + sigma**2)
    return PathPoint(a, sigma * a, 0.0, 0.0)


#: The largest σ = b/a where Karras et al.'s spacing starts: a cosine schedule's last timestep has σ ≈ 10⁴, and
#: spacing from there would spend most steps where the sample is still pure noise. EDM's σ_max is 80; on the book's
#: MNIST models 20 is better (measured: see the module's docstring).
KARRAS_SIGMA_MAX = 20.0

#: The smallest σ of Karras et al.'s spacing, whose network call's x̂_0 is the sample. A cosine schedule's first
#: timestep has σ ≈ 0.006, and spacing down to it spends three of ten calls below σ = 0.15, polishing noise too faint
#: to change a stroke; on the book's MNIST models 0.2 is better for every solver (measured: see the docstring).
KARRAS_SIGMA_MIN = 0.2


def ddpm_path(model: Denoiser, sched: NoiseSchedule, steps: int, spacing: str = "linspace",
              clip_range: ClipRange = PIXEL_RANGE, sigma_max: float | None = KARRAS_SIGMA_MAX,
              sigma_min: float | None = KARRAS_SIGMA_MIN) -> tuple[list[PathPoint], Denoise, list[float]]:
    """The points, the denoiser and the timesteps of an ε-network ``model`` on ``sched``, ``steps`` network points
    and the clean endpoint. ``spacing``: ``"linspace"``, DDIM's integer timesteps (:func:`~mnistdiff.ddim.
    ddim_timesteps`); ``"karras"``, Karras et al.'s σ from ``sigma_max`` down to ``sigma_min`` (either ``None``: the
    schedule's last or first, as diffusers does; each kept within the schedule's), at fractional timesteps (the
    time embedding takes any real t)."""
    sigmas = schedule_sigmas(sched)
    if spacing == "karras":
        top = float(sigmas[-1]) if sigma_max is None else min(sigma_max, float(sigmas[-1]))
        bottom = float(sigmas[0]) if sigma_min is None else max(sigma_min, float(sigmas[0]))
        wanted = karras_sigmas(bottom, top, steps)
        times = [_timestep_of_sigma(sigmas.log(), s) for s in wanted]
    elif spacing == "linspace":
        times = [float(t) for t in ddim_timesteps(sched.num_timesteps, steps)]
        wanted = [float(sigmas[int(t)]) for t in times]
    else:
        raise ValueError(f"spacing must be 'linspace' or 'karras', got {spacing!r}")
    points = [_point_of_sigma(s) for s in wanted] + [PathPoint(1.0, 0.0, 0.0, 0.0)]

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), times[i], device=x.device)
        eps = model(x.float(), t).double()
        x0 = (x - points[i].b * eps) / points[i].a
        return clip_x0(x0, clip_range) if clip_range is not None else x0

    return points, denoise, times


def flow_path(model: Denoiser, steps: int, clip_range: ClipRange = PIXEL_RANGE, spacing: str = "linspace",
              sigma_max: float | None = KARRAS_SIGMA_MAX, sigma_min: float | None = KARRAS_SIGMA_MIN
              ) -> tuple[list[PathPoint], Denoise, list[float]]:
    """The points, the denoiser x̂_0 = x − t·v̂ and the times of a flow ``model``, ``steps`` network points and the
    clean endpoint. ``spacing``: ``"linspace"``, evenly spaced t from 1; ``"karras"``, Karras et al.'s σ from
    ``sigma_max`` to ``sigma_min`` (either ``None``: the package's), mapped to the straight path by t = σ/(1 + σ)
    (there σ = b/a = t/(1 − t)). The sampler starts at the first point with x = b·ε, the data's share a·x_0 left
    out, as EDM starts at σ_max with σ_max·ε: a call at t = 1 first would move x by a·x̂_0 (1 % at σ_max = 80)."""
    if spacing == "karras":
        top, bottom = sigma_max or KARRAS_SIGMA_MAX, sigma_min or KARRAS_SIGMA_MIN
        times = [s / (1 + s) for s in karras_sigmas(bottom, top, steps)] + [0.0]
    elif spacing == "linspace":
        times = flow_timesteps(steps)
    else:
        raise ValueError(f"spacing must be 'linspace' or 'karras', got {spacing!r}")
    points = [straight_path(t) for t in times]

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), TIME_SCALE * times[i], device=x.device)
        x0 = x - times[i] * model(x.float(), t).double()
        return clip_x0(x0, clip_range) if clip_range is not None else x0

    return points, denoise, times[:-1]


def _half_log_snr(p: PathPoint) -> float:
    """λ = log(a/b): −∞ at pure noise (a = 0), +∞ at the data (b = 0)."""
    if p.a == 0:
        return -math.inf
    return math.inf if p.b == 0 else math.log(float(p.a)) - math.log(float(p.b))


Callback = Callable[[int, torch.Tensor], None]


def _multistep_x0(x0: torch.Tensor, prev_x0: torch.Tensor | None, prev_h: float, h: float) -> torch.Tensor:
    """DPM-Solver++(2M)'s D = (1 + 1/2r)·x̂_0,i − (1/2r)·x̂_0,i−1 with r = h_{i−1}/h_i; x̂_0 itself on a first step."""
    if prev_x0 is None or not math.isfinite(prev_h):
        return x0
    r = prev_h / h
    return (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0


def dpm_solver_pp_2m(denoise: Denoise, points: list[PathPoint], x: torch.Tensor,
                     callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) from x at ``points[0]`` to ``points[-1]`` (the data), float64; ``callback(i, x)`` after the
    step that lands on point i."""
    x = x.double()
    prev_x0, prev_h = None, math.inf
    for i in range(len(points) - 1):
        here, there = points[i], points[i + 1]
        x0 = denoise(x, i)
        if there.b == 0:  # the last step, to the data: first order, which lands on x̂_0
            x = x0
        else:
            h = _half_log_snr(there) - _half_log_snr(here)
            d = _multistep_x0(x0, prev_x0, prev_h, h)
            ratio = float(there.b) / float(here.b)
            x = ratio * x - float(there.a) * math.expm1(-h) * d
            prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i + 1, x)
    return x


def dpm_solver_pp_2m_sde(denoise: Denoise, points: list[PathPoint], x: torch.Tensor,
                         generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE from x at ``points[0]`` to the data, float64, the noise z of each step drawn from
    ``generator`` (float32, then widened, as DDIM draws its η noise); ``callback(i, x)`` after each step."""
    x = x.double()
    prev_x0, prev_h = None, math.inf
    for i in range(len(points) - 1):
        here, there = points[i], points[i + 1]
        x0 = denoise(x, i)
        if there.b == 0:  # the last step, to the data: e^{−h} = 0 and b' = 0 leave x̂_0
            x = x0
        else:
            h = _half_log_snr(there) - _half_log_snr(here)
            d = _multistep_x0(x0, prev_x0, prev_h, h)
            kept = 0.0 if here.b == 0 else float(there.b) / float(here.b) * math.exp(-h)
            z = torch.randn(x.shape, generator=generator, device=x.device).double()
            x = kept * x - float(there.a) * math.expm1(-2 * h) * d + float(there.b) * math.sqrt(-math.expm1(-2 * h)) * z
            prev_x0, prev_h = x0, h
        if callback is not None:
            callback(i + 1, x)
    return x


def heun_edm(denoise: Denoise, points: list[PathPoint], x: torch.Tensor,
             callback: Callback | None = None) -> torch.Tensor:
    """Heun's method in x̄ = x/a, σ = b/a (Karras et al. Algorithm 1, deterministic) from x at ``points[0]`` (a > 0)
    to the data, float64; no correction on the last step, to σ = 0. ``callback(i, x)`` after each step."""
    sig = [float(p.b) / float(p.a) for p in points]
    xbar = x.double() / float(points[0].a)
    for i in range(len(points) - 1):
        d = (xbar - denoise(xbar * float(points[i].a), i)) / sig[i]
        x_euler = xbar + (sig[i + 1] - sig[i]) * d
        if sig[i + 1] == 0:
            xbar = x_euler
        else:
            d_next = (x_euler - denoise(x_euler * float(points[i + 1].a), i + 1)) / sig[i + 1]
            xbar = xbar + (sig[i + 1] - sig[i]) * 0.5 * (d + d_next)
        if callback is not None:
            callback(i + 1, xbar * float(points[i + 1].a))
    return xbar * float(points[-1].a)


def _distinct_labels(labels: list[int]) -> list[int]:
    """Frame labels (one per network point, then 0 for the data) made strictly decreasing: Karras σ at fractional
    timesteps can put two points within one timestep, and a sample folder names each frame by its label."""
    out = [0]
    for label in reversed(labels[1:]):
        out.append(max(label, out[-1] + 1))
    return [labels[0], *reversed(out)]


def solver_nfe(solver: str, steps: int) -> int:
    """Network calls per sample on an ε-network: ``steps`` for DPM-Solver++(2M) and its SDE twin, 2·steps − 1 for
    EDM's Heun."""
    return 2 * steps - 1 if solver == "heun" else steps


@torch.no_grad()
def solver_sample_loop(
    model: Denoiser,
    sched: NoiseSchedule | None,
    shape: tuple[int, ...],
    *,
    solver: str,
    steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    return_intermediates: bool = False,
    clip_range: ClipRange = PIXEL_RANGE,
    progress: bool = False,
    spacing: str = DEFAULT_SPACING,
    sigma_max: float | None = KARRAS_SIGMA_MAX,
    sigma_min: float | None = KARRAS_SIGMA_MIN,
) -> SampleOutput:
    """Sample with ``solver`` (:data:`SOLVERS`) in ``steps`` network points: an ε-network on ``sched``, its points
    at ``spacing`` (:data:`SPACINGS`: Karras et al.'s σ from ``sigma_max`` to ``sigma_min``, or DDIM's timesteps),
    or a flow's velocity network (``sched`` ``None``; the same spacings on the straight path, :func:`flow_path`;
    DPM-Solver++ only: EDM's variables need a > 0 at the start, and a flow starts at a = 0).
    Frames, with ``return_intermediates``, are labelled like DDIM's: the network timestep the step lands on + 1
    (rounded down and kept distinct; 0: the data), 1000·t for a flow."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    noise = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator, device=device)
    if sched is None:
        if solver == "heun":
            raise ValueError("a flow's Heun is flows.flow_sample_loop(solver='heun'): EDM's variables need a > 0")
        points, denoise, times = flow_path(model, steps, clip_range, spacing, sigma_max, sigma_min)
        labels = [round(TIME_SCALE * t) for t in times] + [0]
        start, x = labels[0], noise * float(points[0].b)  # x_t ≈ t·ε where the path starts (t = 1 when evenly spaced)
    else:
        points, denoise, times = ddpm_path(model, sched, steps, spacing, clip_range, sigma_max, sigma_min)
        labels = _distinct_labels([math.floor(t) + 1 for t in times])
        start, x = sched.num_timesteps, noise
    frames: list[tuple[int, torch.Tensor]] = [(start, x.cpu())] if return_intermediates else []

    def keep(i: int, xi: torch.Tensor) -> None:
        if return_intermediates:
            frames.append((labels[i], xi.float().cpu()))

    if solver == "dpmpp_2m_sde":
        out = dpm_solver_pp_2m_sde(denoise, points, x, generator, keep).float()
    else:
        out = (dpm_solver_pp_2m if solver == "dpmpp_2m" else heun_edm)(denoise, points, x, keep).float()
    return SampleOutput(out, frames)
