"""The course's generators, in the order chapter 6 and the results page show them.

Chapter 6 asks one question of each way the course has of making a digit: how close are its
samples to real MNIST? The generators are

* the pixel-space DDPM with ancestral sampling over all ``T`` steps (Ho et al. 2020);
* the same network drawn by the package's default sampler: its kind's first, a solver of chapter 9 at the kind's
  default steps, or DDIM at ``profile.ddim_steps`` steps with the package's default η (Song et al. 2020); other
  step counts, η and solvers are measured by ``benchmarks/nfe_sweep.py``, which chapters 6, 8 and 9 read;
* latent diffusion, sampled with DDPM and with its own default sampler (Rombach et al. 2022);
* the VAE on its own: decoded draws from its prior ``N(0, I)`` (Kingma & Welling 2013), and its
  reconstructions of real training images — the best that latent diffusion, which can only emit
  what the decoder can draw, could reach.

Each is a :class:`~mnistdiff.evaluation.report.GeneratorSpec`; :mod:`mnistdiff.evaluation.report`
draws, scores and tabulates them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mnistdiff.config import DEFAULT_ETA
from mnistdiff.course.profiles import Profile
from mnistdiff.devices import resolve_device
from mnistdiff.evaluation.metrics import floor_images
from mnistdiff.evaluation.nfe_sweep import sampler_label
from mnistdiff.evaluation.report import GeneratorSpec, Sampler
from mnistdiff.vae import VAE

__all__ = ["course_generators"]


def _diffusion_sampler(model: Any, device: torch.device, **kwargs: Any) -> Sampler:
    def draw(n: int, seed: int) -> torch.Tensor:
        return model.sample(n, seed=seed, device=device, **kwargs).images

    return draw


def _vae_prior_sampler(vae: VAE, device: torch.device) -> Sampler:
    def draw(n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return vae.sample_prior(n, generator=gen, device=device).cpu()

    return draw


def _vae_reconstruction_sampler(vae: VAE, device: torch.device) -> Sampler:
    def draw(n: int, seed: int) -> torch.Tensor:
        return vae.reconstruct(floor_images(n, seed).to(device)).cpu()  # the floor, passed through the VAE

    return draw


def _default_solver(model: Any, prefix: str, label: str, space: str, device: torch.device) -> GeneratorSpec | None:
    """The model as the package draws it where no sampler is named — its kind's first sampler at its default steps
    (:meth:`~mnistdiff.model.DiffusionModel.sampling_defaults`) — if that is a solver; ``None`` if it is DDIM,
    which the DDIM rows draw at the profile's steps."""
    d = model.sampling_defaults()
    if d["sampler"] == "ddim":
        return None
    return GeneratorSpec(f"{prefix}{d['sampler']}_{d['steps']}", label + sampler_label(d["sampler"], d["steps"]), space,
                         d["sampler"], model.nfe(d["sampler"], d["steps"]), None, _diffusion_sampler(model, device))


def _pixel_specs(ddpm: Any, profile: Profile, device: torch.device, ddim_steps: Sequence[int] | None,
                 etas: Sequence[float] | None) -> list[GeneratorSpec]:
    T = ddpm.schedule.num_timesteps
    specs = [GeneratorSpec("ddpm", f"DDPM, {T} steps", "pixel", "ddpm", T, None,
                           _diffusion_sampler(ddpm, device, sampler="ddpm"), profile.ancestral_samples)]
    if default := ddim_steps is None and etas is None and _default_solver(ddpm, "", "", "pixel", device):
        return [*specs, default]
    sweep = [s for s in (ddim_steps if ddim_steps is not None else (profile.ddim_steps,)) if s <= T]
    for i, eta in enumerate(etas or (DEFAULT_ETA,)):
        for steps in (sweep if i == 0 else [min(profile.ddim_steps, T)]):
            specs.append(GeneratorSpec(
                f"ddim_{steps}_eta{eta:g}", sampler_label("ddim", steps, eta), "pixel", "ddim", steps, float(eta),
                _diffusion_sampler(ddpm, device, sampler="ddim", steps=steps, eta=float(eta)),
            ))
    return specs


def _latent_specs(ldm: Any, profile: Profile, device: torch.device, ldm_ddim_steps: int | None,
                  etas: Sequence[float] | None) -> list[GeneratorSpec]:
    T = ldm.schedule.num_timesteps
    steps = min(ldm_ddim_steps or profile.ddim_steps, T)
    specs = [GeneratorSpec("ldm_ddpm", f"LDM, DDPM, {T} steps", "latent", "ddpm", T, None,
                           _diffusion_sampler(ldm, device, sampler="ddpm"), profile.ancestral_samples)]
    if default := ldm_ddim_steps is None and etas is None and _default_solver(ldm, "ldm_", "LDM, ", "latent", device):
        return [*specs, default]
    for eta in etas or (DEFAULT_ETA,):
        specs.append(GeneratorSpec(
            f"ldm_ddim_{steps}_eta{eta:g}", "LDM, " + sampler_label("ddim", steps, eta), "latent", "ddim", steps,
            float(eta), _diffusion_sampler(ldm, device, sampler="ddim", steps=steps, eta=float(eta)),
        ))
    return specs


def course_generators(
    *,
    ddpm: Any | None,
    ldm: Any | None,
    vae: VAE | None,
    profile: Profile,
    device: torch.device | str | None = None,
    ddim_steps: Sequence[int] | None = None,
    etas: Sequence[float] | None = None,
    ldm_ddim_steps: int | None = None,
) -> list[GeneratorSpec]:
    """Every generator of the course, in the order the tables show them.

    ``ddpm``: the pixel-space :class:`~mnistdiff.model.DiffusionModel`; ``ldm``: the latent one
    (with its ``codec``); ``vae``: the VAE. Any of them may be None to leave its generators out.
    Each diffusion model is drawn by its T-step ancestral sampler (at most ``profile.ancestral_samples``) and by
    the package's default sampler: a solver at its kind's default steps where that is the kind's first sampler
    (:meth:`~mnistdiff.model.DiffusionModel.sampling_defaults`), else DDIM. Asked for DDIM (``ddim_steps``, ``etas``,
    ``ldm_ddim_steps``), or where DDIM is the default: the pixel model's DDIM runs every step count of
    ``ddim_steps`` (default: ``profile.ddim_steps`` alone, capped at the model's T) with the first η of ``etas``
    (default: the package's, ``DEFAULT_ETA``), and each further η at ``profile.ddim_steps`` only; latent
    diffusion's DDIM runs each η of ``etas`` at ``ldm_ddim_steps`` (default ``profile.ddim_steps``). Names:
    ``ddpm``, ``ddim_<S>_eta<η>`` or ``<solver>_<S>``, ``ldm_ddpm``, ``ldm_ddim_<S>_eta<η>`` or
    ``ldm_<solver>_<S>``, ``vae_prior``, ``vae_reconstruction``.
    """
    device = resolve_device(device)
    specs: list[GeneratorSpec] = []
    if ddpm is not None:
        specs += _pixel_specs(ddpm, profile, device, ddim_steps, etas)
    if ldm is not None:
        specs += _latent_specs(ldm, profile, device, ldm_ddim_steps, etas)
    if vae is not None:
        specs.append(GeneratorSpec("vae_prior", "VAE prior samples", "vae", "prior", 1, None,
                                   _vae_prior_sampler(vae, device)))
        specs.append(GeneratorSpec("vae_reconstruction", "VAE reconstructions", "vae",
                                   "reconstruction", 1, None, _vae_reconstruction_sampler(vae, device)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"generator names must be unique, got {names}")
    return specs
