"""Progressive distillation of a guided latent model into a few-step student (Salimans & Ho 2022, Algorithm 2), with
classifier-free guidance folded in (Meng et al. 2023), so each student step is one network call.

Round by round the teacher's deterministic DDIM grid is halved: a student, started from the teacher's weights, learns
to land in **one** step where the teacher lands in **two**. From z_t at a grid point t, the teacher's two DDIM steps
(η = 0) reach z_{t''}; the student's single DDIM step reaches it exactly if its x̂_0 is

    x̃ = (z_{t''} − (σ_{t''}/σ_t)·z_t) / (α_{t''} − (σ_{t''}/σ_t)·α_t)   (α = √ᾱ, σ = √(1 − ᾱ); x̃ = z_{t''} at the data)

which the student regresses on with the truncated-SNR weight max(α_t²/σ_t², 1). The student predicts
v = α·ε − σ·x_0 (``prediction="v"``): at the noisiest point, where α ≈ 0, an ε-network's x̂_0 = (z − σ·ε̂)/α
multiplies its error by 1/α, and a few-step sampler starts there. The first round's teacher is the guided model
(ε̃ at weight w, two calls per step); each later round's teacher is the previous student (one call).

The result is an ordinary ``cldm`` model file whose header's ``distillation`` records the student's timesteps, the
guidance weight folded in and the teacher; :meth:`mnistdiff.model.DiffusionModel.sample` samples it on those
timesteps with DDIM at η = 0, one call per step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistdiff.config import DEFAULT_GUIDANCE, ConfigError, _positive, to_dict
from mnistdiff.ddim import ddim_timesteps
from mnistdiff.ddpm import EpsFromV
from mnistdiff.guidance import guided_eps
from mnistdiff.latent import encode_dataset, scaled_sample
from mnistdiff.model import DiffusionModel

__all__ = ["DistillConfig", "distillation_target", "progressive_distillation"]

#: ``teacher(z_t, t, y)`` → x̂_0 (float64): the teacher's guess of the clean code.
X0Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DistillConfig:
    """One progressive distillation: from ``start_steps`` teacher steps, halved until ``steps`` remain."""

    steps: int = _opt(4, "the student's DDIM steps (network calls per sample)")
    start_steps: int = _opt(64, "the teacher's DDIM steps in the first round (steps × a power of two)")
    guidance: float = _opt(DEFAULT_GUIDANCE, "the guidance weight w folded into the student")
    iterations: int = _opt(600, "Adam steps per round (the learning rate decays linearly to 0 in each)")
    lr: float = _opt(1e-4, "peak learning rate of each round")
    batch_size: int = _opt(256, "latents per step")
    seed: int = _opt(0, "random seed (data order, noise, timesteps)")
    subset: int | None = _opt(None, "distil on the first N training images of a seeded permutation (quick runs)")

    def __post_init__(self) -> None:
        for name in ("steps", "start_steps", "iterations", "lr", "batch_size"):
            _positive(name, getattr(self, name))
        if self.subset is not None:
            _positive("subset", self.subset)
        ratio = self.start_steps / self.steps
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ConfigError(f"start_steps must be steps × 2, 4, 8, …, got {self.start_steps} for {self.steps} steps",
                              "start_steps")
        if not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance}", "guidance")


def _abar(abar: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ᾱ at timestep indices ``t`` (B,), with ᾱ_{−1} = 1 (the data), shaped (B, 1, 1, 1), float64."""
    padded = torch.cat([abar.new_ones(1), abar])
    return padded[t + 1].view(-1, 1, 1, 1)


def _ddim_to(z: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor, clip: float) -> torch.Tensor:
    """DDIM (η = 0) from z at ᾱ = ``a_t`` to ᾱ = ``a_s`` with the guess ``x0``, per sample; x̂_0 clipped to ±``clip``
    and ε̂ recomputed from it, as the package's sampler does."""
    x0 = x0.clamp(-clip, clip)
    eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def distillation_target(z_t: torch.Tensor, z_end: torch.Tensor, a_t: torch.Tensor, a_end: torch.Tensor) -> torch.Tensor:
    """x̃: the x̂_0 with which one DDIM step (η = 0) from z_t at ᾱ = ``a_t`` lands on ``z_end`` at ᾱ = ``a_end``
    (Salimans & Ho, Algorithm 2); ``z_end`` itself where ``a_end`` = 1 (the data)."""
    ratio = ((1 - a_end) / (1 - a_t)).sqrt()
    return (z_end - ratio * z_t) / (a_end.sqrt() - ratio * a_t.sqrt())


def _guided_x0(net: torch.nn.Module, abar: torch.Tensor, w: float) -> X0Fn:
    """The guided ε-teacher's x̂_0 = (z − σ·ε̃)/α, ε̃ at weight ``w`` (two network calls as one batch)."""
    def x0(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = _abar(abar, t)
        return (z - (1 - a).sqrt() * guided_eps(net, z.float(), t, y, w).double()) / a.sqrt()
    return x0


def _v_x0(net: torch.nn.Module, abar: torch.Tensor) -> X0Fn:
    """A v-network's x̂_0 = α·z − σ·v̂: well conditioned everywhere (one network call)."""
    def x0(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = _abar(abar, t)
        return a.sqrt() * z - (1 - a).sqrt() * net(z.float(), t, y).double()
    return x0


def _round_loss(student: torch.nn.Module, teacher: X0Fn, abar: torch.Tensor, grid: list[int], clip: float,
                z0: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The weighted x-loss of one batch of codes ``z0`` (B, c, h, w) with labels ``y``, at random student steps of
    ``grid`` (the teacher's points, the data last as −1)."""
    n = z0.shape[0]
    i = torch.randint(0, (len(grid) - 1) // 2, (n,), generator=gen, device=z0.device)
    g = torch.tensor(grid, device=z0.device)
    t, t_mid, t_end = g[2 * i], g[2 * i + 1], g[2 * i + 2]
    a_t, a_mid, a_end = _abar(abar, t), _abar(abar, t_mid), _abar(abar, t_end)
    z_t = a_t.sqrt() * z0 + (1 - a_t).sqrt() * torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
    with torch.no_grad():
        z_mid = _ddim_to(z_t, teacher(z_t, t, y), a_t, a_mid, clip)
        z_end = _ddim_to(z_mid, teacher(z_mid, t_mid, y), a_mid, a_end, clip)
        target = distillation_target(z_t, z_end, a_t, a_end)
    x0 = _v_x0(student, abar)(z_t, t, y)
    weight = torch.maximum(a_t / (1 - a_t), torch.ones_like(a_t))
    return (weight * (x0 - target).pow(2)).mean()


def _train_round(student: torch.nn.Module, teacher: X0Fn, abar: torch.Tensor, grid: list[int], clip: float,
                 codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cfg: DistillConfig, scale: float,
                 gen: torch.Generator, progress: bool) -> float:
    """``cfg.iterations`` Adam steps on one halving; returns the mean loss of the last tenth."""
    from tqdm.auto import tqdm

    mean, std, labels = codes
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / cfg.iterations)
    losses = []
    student.train()
    for _ in tqdm(range(cfg.iterations), desc=f"distil {len(grid) - 1} → {(len(grid) - 1) // 2}",
                  disable=not progress, leave=False):
        idx = torch.randint(0, mean.shape[0], (cfg.batch_size,), generator=gen, device=mean.device)
        noise = torch.randn(mean[idx].shape, generator=gen, device=mean.device)
        z0 = scaled_sample(mean[idx], std[idx], scale, noise).double()
        loss = _round_loss(student, teacher, abar, grid, clip, z0, labels[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    student.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def progressive_distillation(teacher: DiffusionModel, images: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig,
                             out: str | Path, device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Distil the class-conditional latent ``teacher`` (with its VAE) into a ``cfg.steps``-step student on the
    training ``images`` (N, 1, 32, 32) and their ``labels`` (N,); write it to ``out`` (one model file) and return it."""
    if teacher.codec is None or teacher.num_classes is None or teacher.schedule is None:
        raise ConfigError("progressive distillation takes a class-conditional latent model (a cldm) with its VAE")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    mean, std = encode_dataset(teacher.codec.vae.to(device), images.to(device))
    codes = (mean, std, labels.to(device))
    abar = teacher.schedule.alphas_cumprod.to(device).double()
    clip, scale = teacher.clip_range[1], teacher.codec.scale
    full_grid = [*ddim_timesteps(teacher.schedule.num_timesteps, cfg.start_steps), -1]
    teach = _guided_x0(teacher.unet.to(device).eval(), abar, cfg.guidance)
    student = copy.deepcopy(teacher.network).to(device)
    rounds, t0, steps = [], time.perf_counter(), cfg.start_steps
    while steps > cfg.steps:
        grid = full_grid[:: cfg.start_steps // steps]
        loss = _train_round(student, teach, abar, grid, clip, codes, cfg, scale, gen, progress)
        steps //= 2
        rounds.append({"steps": steps, "loss": round(loss, 6), "seconds": round(time.perf_counter() - t0, 1)})
        previous = copy.deepcopy(student).eval().requires_grad_(False)
        teach = _v_x0(previous, abar)
    timesteps = [t for t in full_grid[:: cfg.start_steps // cfg.steps] if t >= 0]
    return _save_student(teacher, student, cfg, timesteps, rounds, time.perf_counter() - t0, out)


def _save_student(teacher: DiffusionModel, student: torch.nn.Module, cfg: DistillConfig, timesteps: list[int],
                  rounds: list[dict], seconds: float, out: str | Path) -> Path:
    """The student as a ``cldm`` model file: the teacher's config with v-prediction, and a ``distillation`` header."""
    config = dataclasses.replace(teacher.config, diffusion=dataclasses.replace(teacher.config.diffusion,
                                                                               prediction="v"))
    keep = ("latent_scale", "latent_clip", "vae_weights_sha256")
    meta = {k: teacher.meta[k] for k in keep if k in teacher.meta}
    meta["distillation"] = {"method": "progressive distillation (Salimans & Ho 2022), guidance folded in",
                            "timesteps": timesteps, "guidance": cfg.guidance, "config": to_dict(cfg),
                            "teacher_weights_sha256": teacher.meta.get("weights_sha256"), "rounds": rounds}
    model = DiffusionModel(EpsFromV(student.cpu().eval(), teacher.schedule.to("cpu")), teacher.schedule, config)
    return model.save(out, **meta, seconds=round(seconds, 1))
