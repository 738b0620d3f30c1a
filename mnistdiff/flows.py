"""Flow matching on the straight path (Lipman et al. 2023; Liu et al. 2023's rectified flow; chapter 8).

Time runs from the data at t = 0 to pure noise at t = 1 (the DDPM's direction). The path is a straight line,

    x_t = (1 − t)·x_0 + t·ε,   ε ~ N(0, I)                          (the interpolant, :func:`interpolate`)
    u_t(x_t | x_0, ε) = dx_t/dt = ε − x_0                           (its conditional velocity, :func:`velocity_target`)

and a network v_θ(x_t, t) regresses on the conditional velocity, ‖v_θ(x_t, t) − (ε − x_0)‖² (conditional flow
matching, Lipman et al. eq. 9). Its gradient equals that of regressing on the marginal field
u_t(x) = E[ε − x_0 | x_t = x] (their Theorem 2), which nobody can compute, so the network learns the marginal field.
Sampling integrates dx/dt = v_θ(x, t) from noise at t = 1 down to t = 0 (:func:`flow_sample_loop`): Euler, or Heun's
second-order step (Karras et al. 2022, Algorithm 1) with its correction on every step but the last, which is a plain
Euler step to t = 0, as EDM's is to σ = 0. On data the field is singular there: at t = 0 the network sees a clean
image and no noise to find, so it learns v = −x (the mean of ε − x_0 given x_0; the book's model's loss there is
1.03, the Var ε it cannot remove, against 0.11 at t = 0.01), while just above t = 0 a point off the digits moves at
about (x − x_0)/t. A correction evaluated at t = 0 pulls the last step towards −x: on the book's flow (n = 2,000,
seed 0), Heun in 4 steps scores 47× / 1,596× the real floor (classifier / ResNet features) corrected at t = 0, and
8.5× / 9.3× with the Euler last step, one call fewer (``benchmarks/README.md``; chapter 8). (On a smooth
Gaussian toy, whose field is finite at t = 0, the correction there would help.)

One Gaussian path, five targets. Any path x_t = a_t·x_0 + b_t·ε (the DDPM: a = √ᾱ_t, b = √(1 − ᾱ_t); the straight
path: a = 1 − t, b = t) can be learnt through any of ε, x_0, the score ∇log p_t(x_t | x_0) = −ε/b_t, Salimans & Ho's
v = a_t·ε − b_t·x_0, or the velocity ȧ_t·x_0 + ḃ_t·ε; :func:`convert` turns one into another at a point of the path
(:class:`PathPoint`). (The course keeps α and σ for the DDPM's schedule and sampler: book/notation.md.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mnistdiff.config import TIME_SAMPLINGS
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, Denoiser, SampleOutput

__all__ = [
    "TIME_SCALE", "TIME_SAMPLINGS", "FLOW_SOLVERS", "PARAMETERISATIONS", "PathPoint", "straight_path", "convert",
    "interpolate", "velocity_target", "sample_time", "flow_matching_loss", "flow_timesteps", "velocity",
    "euler_step", "heun_step", "flow_sample_loop", "flow_nfe",
]

#: The UNet is shown 1000·t, the range the DDPM's integer timesteps span, so its sinusoidal time embedding
#: (:func:`~mnistdiff.unet.timestep_embedding`) works in the range it was designed for.
TIME_SCALE = 1000.0
#: The ODE solvers of :func:`flow_sample_loop`.
FLOW_SOLVERS = ("euler", "heun")
#: The five things a network on a Gaussian path can predict (:func:`convert`).
PARAMETERISATIONS = ("eps", "x0", "score", "v", "velocity")


@dataclass(frozen=True)
class PathPoint:
    """A Gaussian path x_t = a_t·x_0 + b_t·ε at one time t: ``a`` the signal's coefficient, ``b`` the noise's, and
    their time derivatives ``da`` = ȧ_t, ``db`` = ḃ_t (floats, or tensors that broadcast against x)."""

    a: float | torch.Tensor
    b: float | torch.Tensor
    da: float | torch.Tensor
    db: float | torch.Tensor


def straight_path(t: float | torch.Tensor) -> PathPoint:
    """The straight path at ``t``: a = 1 − t, b = t, ȧ = −1, ḃ = 1."""
    return PathPoint(1 - t, t, -1.0, 1.0)


def _to_x0_eps(x: torch.Tensor, pred: torch.Tensor, kind: str, p: PathPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from a prediction ``pred`` of ``kind`` at x_t = ``x``: x = a·x_0 + b·ε solved with the target's
    own equation (a 2 × 2 linear system for v and the velocity)."""
    a, s, da, ds = p.a, p.b, p.da, p.db
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if kind == "v":  # [x; v] = [[a, b], [−b, a]]·[x_0; ε]
        det = a * a + s * s
        return (a * x - s * pred) / det, (s * x + a * pred) / det
    if kind == "velocity":  # [x; u] = [[a, b], [ȧ, ḃ]]·[x_0; ε]
        det = a * ds - da * s
        return (ds * x - s * pred) / det, (a * pred - da * x) / det
    raise ValueError(f"a prediction is one of {', '.join(PARAMETERISATIONS)}, got {kind!r}")


def _from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, kind: str, p: PathPoint) -> torch.Tensor:
    """The target ``kind`` of a sample with clean part ``x0`` and noise ``eps`` at ``p``."""
    targets = {
        "eps": lambda: eps,
        "x0": lambda: x0,
        "score": lambda: -eps / p.b,
        "v": lambda: p.a * eps - p.b * x0,
        "velocity": lambda: p.da * x0 + p.db * eps,
    }
    if kind not in targets:
        raise ValueError(f"a prediction is one of {', '.join(PARAMETERISATIONS)}, got {kind!r}")
    return targets[kind]()


def convert(x: torch.Tensor, pred: torch.Tensor, source: str, target: str, p: PathPoint) -> torch.Tensor:
    """A network's prediction ``pred`` of ``source`` at x_t = ``x`` (B, C, H, W), rewritten as a ``target`` (both
    in :data:`PARAMETERISATIONS`) at the point ``p`` of the path (b > 0; a > 0 where ``source`` is ε or the score).

    >>> x, eps = torch.ones(1), torch.zeros(1)          # at t = 0.5 of the straight path, ε̂ = 0 means x̂_0 = 2
    >>> convert(x, eps, "eps", "velocity", straight_path(0.5))
    tensor([-2.])
    """
    return _from_x0_eps(*_to_x0_eps(x, pred, source, p), target, p)


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B,) shaped to broadcast against x (B, C, H, W)."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x_0 + t·ε for x_0, ε (B, C, H, W) and t (B,) in [0, 1]."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The conditional velocity dx_t/dt = ε − x_0 of the straight path (the same at every t)."""
    return noise - x0


def sample_time(n: int, how: str = "uniform", generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` training times in [0, 1] drawn as ``how`` says (:data:`TIME_SAMPLINGS`): ``uniform`` (Lipman et al.),
    or ``logit_normal``, sigmoid(m) with m ~ N(0, 1), more of the training on the middle of the path (Esser et al.
    2024, Stable Diffusion 3)."""
    if how == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise ValueError(f"time sampling is one of {', '.join(TIME_SAMPLINGS)}, got {how!r}")


def velocity(model: Denoiser, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """v_θ(x, t) (float32) for x (B, C, H, W) at one time ``t`` or one per sample (B,): the network sees 1000·t."""
    t_batch = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return model(x, TIME_SCALE * t_batch).float()


def flow_matching_loss(model: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The conditional flow-matching loss E‖v_θ(x_t, t) − (ε − x_0)‖² (Lipman et al. eq. 9), a mean over every
    pixel. ``x0``, ``noise``: (B, C, H, W); ``t``: (B,) in [0, 1]."""
    return F.mse_loss(velocity(model, interpolate(x0, noise, t), t), velocity_target(x0, noise))


def flow_timesteps(steps: int) -> list[float]:
    """``steps`` + 1 evenly spaced times from 1 (noise) down to 0 (data).

    >>> flow_timesteps(4)
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [1 - i / steps for i in range(steps + 1)]


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """x_{t_next} = x_t + (t_next − t)·v: one Euler step of dx/dt = v (t_next < t: towards the data)."""
    return x + (t_next - t) * v


def heun_step(model: Denoiser, x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun's step (the trapezoid rule on an Euler predictor; Karras et al. Algorithm 1): the mean of the velocity
    at both ends. ``v`` = v_θ(x, t) is given; one more network call at the Euler step's end (t_next > 0: the sampler
    takes an Euler step to t = 0, where the field is singular; see the module's docstring)."""
    x_euler = euler_step(x, v, t, t_next)
    return x + (t_next - t) * 0.5 * (v + velocity(model, x_euler, t_next))


def flow_nfe(solver: str, steps: int) -> int:
    """Network calls of :func:`flow_sample_loop`: ``steps`` for Euler, 2·steps − 1 for Heun (no correction on the
    last step, to t = 0)."""
    return steps if solver == "euler" else 2 * steps - 1


@torch.no_grad()
def flow_sample_loop(
    model: Denoiser,
    shape: tuple[int, ...],
    *,
    steps: int,
    solver: str = "euler",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    return_intermediates: bool = False,
    clip_range: ClipRange = PIXEL_RANGE,
    progress: bool = False,
) -> SampleOutput:
    """Integrate dx/dt = v_θ(x, t) from x_1 ~ N(0, I) (or ``x_T``) at t = 1 to t = 0 in ``steps`` equal steps of
    ``solver`` (``"euler"``, or ``"heun"`` with an Euler last step; :func:`flow_nfe` network calls). The result is
    clamped to ``clip_range``.

    Returns a :class:`~mnistdiff.ddpm.SampleOutput`: x_0 (B, C, H, W) and, with ``return_intermediates``, the frames
    ``[(1000, x_1), …, (0, x_0)]`` after every step, labelled 1000·t as the DDPM's are labelled by timestep.
    """
    if solver not in FLOW_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(FLOW_SOLVERS)}, got {solver!r}")
    times = flow_timesteps(steps)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator, device=device)
    frames: list[tuple[int, torch.Tensor]] = [(int(TIME_SCALE), x.cpu())] if return_intermediates else []
    for t, t_next in tqdm(list(zip(times, times[1:])), desc=f"{solver}-{steps}", disable=not progress, leave=False):
        v = velocity(model, x, t)
        x = heun_step(model, x, v, t, t_next) if solver == "heun" and t_next > 0 else euler_step(x, v, t, t_next)
        if t_next == 0.0 and clip_range is not None:
            x = x.clamp(*clip_range)
        if return_intermediates:
            frames.append((round(TIME_SCALE * t_next), x.cpu()))
    return SampleOutput(x, frames)
