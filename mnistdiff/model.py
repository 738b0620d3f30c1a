"""One trained model: load it from its file, sample from it, save it.

A trained diffusion model is one safetensors file (:mod:`mnistdiff.modelfile`): the ε-network's weights,
and in its header the kind, the run config (architecture, schedule, training), for a latent model the latent
scale κ, the clip range of x̂_0 and the hash of the VAE's weights, and provenance (commit, device, minutes,
metrics). :class:`DiffusionModel` is what the command line, every chapter and the evaluation hold::

    model = DiffusionModel.load("checkpoints/book/ddpm.safetensors")
    images, frames = model.sample(64, sampler="ddim", steps=50, seed=0)

    cldm = DiffusionModel.load("checkpoints/book/cldm.safetensors", vae="checkpoints/book/vae.safetensors")
    sevens, _ = cldm.sample(8, labels=7, guidance=2.0)

    guide = DiffusionModel.load("checkpoints/book/ddpm_guide.safetensors")  # the same model, trained far less
    sharper, _ = model.sample(64, guide=guide, guidance=DEFAULT_AUTOGUIDANCE)  # autoguidance

:meth:`DiffusionModel.sample` checks its arguments once (a :class:`~mnistdiff.config.ConfigError`, a
``ValueError`` that names the argument) and hands them to the loop, :func:`~mnistdiff.sampling.generate`,
which checks nothing per step. The VAE is loaded by :func:`load_vae` (its run config and provenance in ``vae.meta``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from mnistdiff.config import (
    DEFAULT_AUTOGUIDANCE,
    DEFAULT_AUTOGUIDANCE_INTERVAL,
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DIFFUSION_KINDS,
    LATENT_KINDS,
    PRECISIONS,
    RUN_CONFIGS,
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    FlowRunConfig,
    LDMRunConfig,
    _positive,
    from_dict,
    to_dict,
)
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, EpsFromV, SampleOutput, eps_network
from mnistdiff.devices import choices_file, remembered
from mnistdiff.flows import FLOW_SOLVERS, flow_nfe
from mnistdiff.latent import LatentCodec
from mnistdiff.modelfile import load_model_file, load_weights, matching_vae, save_model_file
from mnistdiff.sampling import SAMPLERS, generate, measure_decoder, measure_precision, old_spellings
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.solvers import DEFAULT_SPACING, KARRAS_SIGMA_MIN, SOLVERS, SPACINGS, solver_nfe
from mnistdiff.unet import NULL_LABEL, UNet
from mnistdiff.vae import VAE

__all__ = ["DiffusionModel"]

RunConfig = DDPMRunConfig | LDMRunConfig | CLDMRunConfig | FlowRunConfig
Labels = torch.Tensor | Sequence[int] | int | None


@dataclass
class DiffusionModel:
    """A trained ε-network with its schedule, or a flow's velocity network (``schedule`` ``None``); ``codec`` (the
    VAE and κ) is set for a latent model.

    ``unet`` is what the samplers call, ``(x_t, t[, y]) → ε̂``: the UNet itself, or for a v-prediction model the
    UNet seen as an ε-network (:class:`~mnistdiff.ddpm.EpsFromV`); a flow's UNet gives the velocity
    v̂ (:mod:`mnistdiff.flows`). :attr:`network` is the UNet in every case.

    ``clip_range`` is what x̂_0 is clipped to while sampling (the training codes' range for a latent model);
    ``precision`` how :meth:`sample` runs the network unless told otherwise (``"fp32"``: as trained), and
    ``decode_precision`` how a latent model's VAE decodes (``"fp32"``, or what :meth:`measure_precision` found
    fastest); an explicit ``sample(precision=…)`` runs both so (``"fp32"``: both in float32, as trained).
    """

    unet: UNet | EpsFromV
    schedule: NoiseSchedule | None
    config: RunConfig
    meta: dict[str, Any] = field(default_factory=dict)
    codec: LatentCodec | None = None
    clip_range: ClipRange = PIXEL_RANGE
    precision: str = "fp32"
    decode_precision: str = "fp32"

    @property
    def network(self) -> UNet:
        """The trained UNet itself, whose weights the file holds (:attr:`unet` is it seen as an ε-network)."""
        return cast(UNet, self.unet.net) if isinstance(self.unet, EpsFromV) else self.unet

    @property
    def kind(self) -> str:
        """``ddpm``, ``ldm``, ``cldm`` or ``flow``."""
        return self.config.kind

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers it is drawn with (:meth:`sample`'s ``sampler``): ddim, ddpm and the solvers, or a flow's
        dpmpp_2m_sde, euler, heun and dpmpp_2m; the first where none is asked for."""
        return tuple(self.config.samplers)

    def nfe(self, sampler: str, steps: int, guide: bool = False) -> int:
        """Network calls per sample of ``sample(sampler=sampler, steps=steps)``: T for DDPM's sampler, 2·steps − 1
        for Heun (a flow's and EDM's), else ``steps`` (classifier-free guidance doubles the batch, not the calls);
        twice that with a ``guide`` (autoguidance: two networks, a call of each; with a ``guidance_interval``, the
        guide's calls only at the steps inside it)."""
        if sampler == "ddpm" and self.schedule is not None:
            calls = self.schedule.num_timesteps
        elif sampler == "heun":
            calls = flow_nfe("heun", steps) if self.schedule is None else solver_nfe("heun", steps)
        else:
            calls = steps
        return 2 * calls if guide else calls

    @property
    def distillation(self) -> dict[str, Any] | None:
        """A distilled student's record (:mod:`mnistdiff.training.distill`): its ``timesteps`` and the ``guidance``
        weight folded in; ``None`` for any other model."""
        return self.meta.get("distillation")

    def sampling_defaults(self, sampler: str | None = None, guide: bool = False) -> dict[str, Any]:
        """What :meth:`sample` uses where nothing is said: the kind's first sampler at its config's ``default_steps``
        (another ``sampler``: ``DEFAULT_STEPS``; either at most a diffusion model's T), ``DEFAULT_ETA``,
        ``DEFAULT_GUIDANCE`` (with a ``guide``: ``DEFAULT_AUTOGUIDANCE`` and ``guidance_interval``
        ``DEFAULT_AUTOGUIDANCE_INTERVAL``); a distilled student's own steps, η = 0 (it was distilled deterministic)
        and its w."""
        d = self.distillation
        if d:
            return {"sampler": "ddim", "steps": len(d["timesteps"]), "eta": 0.0, "guidance": float(d["guidance"])}
        default = self.samplers[0]
        steps = self.config.default_steps if sampler in (None, default) else DEFAULT_STEPS
        steps = min(steps, self.schedule.num_timesteps) if self.schedule is not None else steps
        chosen = {"sampler": sampler or default, "steps": steps, "eta": DEFAULT_ETA,
                  "guidance": DEFAULT_AUTOGUIDANCE if guide else DEFAULT_GUIDANCE}
        return chosen | ({"guidance_interval": DEFAULT_AUTOGUIDANCE_INTERVAL} if guide else {})

    @property
    def karras_sigma_max(self) -> float | None:
        """Where its solvers' Karras σ start (its kind's ``karras_sigma_max``, measured)."""
        return getattr(self.config, "karras_sigma_max", None)

    @property
    def karras_range(self) -> dict[str, float]:
        """``{"sigma_max": …, "sigma_min": …}``, where its solvers' Karras σ start and end (the kind's
        :attr:`karras_sigma_max`, the package's ``KARRAS_SIGMA_MIN``), as a results file records them."""
        top = self.karras_sigma_max
        return {} if top is None else {"sigma_max": top, "sigma_min": KARRAS_SIGMA_MIN}

    def spacing(self, sampler: str) -> str | None:
        """Where ``sampler`` puts its points by default on this model: ``"karras"`` for a DPM-Solver++ or EDM Heun
        solver (:data:`~mnistdiff.solvers.SPACINGS`; a flow's DPM-Solver++ too), ``None`` where it has no choice
        (DDIM, DDPM, a flow's Euler and Heun, a distilled student's grid)."""
        solver = sampler in SOLVERS and (self.schedule is not None or sampler not in FLOW_SOLVERS)
        return DEFAULT_SPACING if solver and not self.distillation else None

    @property
    def num_classes(self) -> int | None:
        """The classes a class-conditional model can be asked for (``sample(labels=…)``); ``None``: unconditional."""
        return self.unet.config.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One sample's shape in the model's space: (1, 32, 32) pixels, or (c, 4, 4) latents."""
        c = self.unet.config
        return (c.in_channels, c.image_size, c.image_size)

    @classmethod
    def load(cls, path: str | Path, *, vae: str | Path | VAE | None = None, device: str | torch.device = "cpu",
             kind: str | None = None) -> DiffusionModel:
        """The model saved at ``path``, verified, on ``device`` (``kind``: refuse any other kind). A latent model
        needs ``vae``: the VAE it was trained on (a path or a loaded :class:`~mnistdiff.vae.VAE`), checked against
        the hash its file records."""
        tensors, meta = load_model_file(path, kind=kind or DIFFUSION_KINDS, device=device)
        cfg: RunConfig = from_dict(RUN_CONFIGS[meta["kind"]], meta["config"])
        unet = UNet(cfg.unet)
        load_weights(unet, tensors, path)
        net: UNet | EpsFromV = unet
        schedule: NoiseSchedule | None = None  # a flow has a path, not a schedule
        if not isinstance(cfg, FlowRunConfig):
            schedule = NoiseSchedule.from_config(cfg.diffusion)
            net = cast(UNet | EpsFromV, eps_network(unet, schedule, cfg.diffusion.prediction))
        model = cls(net.to(device).eval(), schedule, cfg, meta)
        if meta["kind"] in LATENT_KINDS:
            model.codec = LatentCodec(matching_vae(path, meta, vae, device), float(meta["latent_scale"]))
            model.clip_range = (-float(meta["latent_clip"]), float(meta["latent_clip"]))
        return model

    def save(self, path: str | Path, **provenance: Any) -> Path:
        """Write the weights and everything needed to rebuild them (one file); ``provenance`` adds header fields."""
        meta = {**self.meta, **provenance, "kind": self.kind, "config": to_dict(self.config)}
        for key in ("format_version", "weights_sha256", "torch_version"):
            meta.pop(key, None)  # the file's own, rewritten by save_model_file
        return save_model_file(path, self.network.state_dict(), meta)

    def sample(
        self,
        num_samples: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        labels: Labels = None,
        guidance: float | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        precision: str | None = None,
        compile: bool | str = False,
        batch_size: int | None = None,
        return_intermediates: bool = False,
        progress: bool = False,
        spacing: str | None = None,
        guide: DiffusionModel | None = None,
        guidance_interval: tuple[float, float] | None = None,
        **old: Any,
    ) -> SampleOutput:
        """Draw ``num_samples`` images → ``SampleOutput(images (N, 1, 32, 32) in [−1, 1] on the CPU, frames)``.

        ``sampler``: ``"ddim"`` (Song et al. eq. 12, ``steps`` steps, noise ``eta``: 0 deterministic, 1 DDPM-like),
        ``"ddpm"`` (Ho et al. Algorithm 2, all T steps); a flow's ``"euler"`` or ``"heun"``; ``"dpmpp_2m"``,
        ``"dpmpp_2m_sde"`` or an ε-network's ``"heun"`` (EDM's) from :mod:`mnistdiff.solvers`, whose points ``spacing``
        places (``"karras"``, the default, or ``"linspace"``); ``None``: the first of :attr:`samplers`. ``labels``: a
        digit, or one per sample (N,), for a class-conditional model, guided with weight ``guidance`` w (ε̃ = ε(∅) +
        w·(ε(y) − ε(∅)); 0 ignores the label, 1 is the conditional model). ``guide``: a worse version of this model
        (:meth:`check_guide`), which autoguides it with weight ``guidance`` (Karras et al. 2024: ε̃ = ε_guide + w·(ε −
        ε_guide); default ``DEFAULT_AUTOGUIDANCE``). ``guidance_interval`` = (σ_lo, σ_hi]: either guidance only at noise
        levels σ_lo < σ ≤ σ_hi (σ = √((1 − ᾱ_t)/ᾱ_t); ``math.inf`` for no upper end), the model alone elsewhere
        (Kynkäänniemi et al. 2024); ``None``: with a guide ``DEFAULT_AUTOGUIDANCE_INTERVAL``, else every step;
        ``(0, math.inf)``: every step, always. ``seed`` makes the draw reproducible (bit for bit on a CPU).
        ``precision``: ``fp32``, ``fp32_cl``, ``bf16``, ``bf16_cl`` or ``auto`` (measured); default :attr:`precision`;
        ``compile``: ``torch.compile`` the network. ``frames`` (``return_intermediates``) are the first batch's ``[(t,
        x_t), …]``, decoded. Old spellings (``mode``, ``ddim_steps``, ``fast``) warn."""
        if old:
            sampler, steps, precision, compile = old_spellings(old, sampler, steps, precision, compile)
        device = torch.device(device) if device is not None else next(self.unet.parameters()).device
        given = {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance,
                 "guidance_interval": guidance_interval}
        chosen = {**self.sampling_defaults(sampler, guide is not None), **{k: v for k, v in given.items()
                                                                          if v is not None}}
        sampler, steps, eta, guidance = (chosen[k] for k in ("sampler", "steps", "eta", "guidance"))
        guidance_interval = chosen.get("guidance_interval")  # only a guide has a default one
        y = self.check_request(num_samples, sampler, steps, eta, labels, guidance, batch_size, precision or "fp32",
                               spacing, guide, guidance_interval)
        student = self.distillation  # the guided model itself: one conditional call per step, on its own grid
        timesteps, guidance = (list(student["timesteps"]), 1.0) if student else (None, guidance)
        asked, precision = precision, precision or self.precision
        if precision == "auto":
            self.measure_precision(device)
            precision = self.precision
        return generate(self.unet, self.schedule, num_samples, shape=self.sample_shape, sampler=sampler, steps=steps,
                        eta=eta, seed=seed, device=device, batch_size=batch_size, decode=self._decoder(asked, device),
                        return_intermediates=return_intermediates, progress=progress, precision=precision,
                        compile=compile, clip_range=self.clip_range, labels=y, guidance=guidance, timesteps=timesteps,
                        spacing=spacing, karras=self.karras_range, guide=None if guide is None else guide.unet,
                        guidance_interval=guidance_interval)

    def _decoder(self, asked: str | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A latent model's VAE decoder on ``device``, in the precision ``asked`` (none or ``auto``: its measured
        :attr:`decode_precision`); ``None`` for a pixel model."""
        if self.codec is None:
            return None
        self.codec.vae.to(device)
        decoding = self.decode_precision if asked in (None, "auto") else asked
        return functools.partial(self.codec.decode, precision=decoding)

    def check_guide(self, guide: DiffusionModel, labels: torch.Tensor | None = None) -> None:
        """A guide for autoguidance sees what this model sees (kind, sample shape, noise schedule, latent space), and
        guides unconditional samples of a model not distilled; else a :class:`~mnistdiff.config.ConfigError`."""
        if not isinstance(guide, DiffusionModel):
            raise ConfigError(f"guide must be a DiffusionModel (DiffusionModel.load(path)), got {type(guide).__name__}",
                              "guide")
        if labels is not None or self.distillation or guide.distillation:
            raise ConfigError("guide: autoguidance guides unconditional samples of a trained (not distilled) model; "
                              "a class-conditional model asked for digits is guided by its own ε(∅) (guidance=w, "
                              "no guide)", "guide")
        def sees(m: DiffusionModel) -> tuple:  # a flow has no schedule: None
            abar = None if m.schedule is None else m.schedule.alphas_cumprod.cpu().tolist()
            return m.kind, m.sample_shape, m.meta.get("vae_weights_sha256"), m.meta.get("latent_scale"), abar
        if sees(guide) != sees(self):
            raise ConfigError(f"guide: a {guide.kind} model of shape {guide.sample_shape} cannot guide this "
                              f"{self.kind} model of shape {self.sample_shape}: a guide is the same model trained "
                              "less (the same kind, schedule, latent space and sample shape)", "guide")

    def check_request(self, num_samples: int, sampler: str, steps: int, eta: float, labels: Labels, guidance: float,
                      batch_size: int | None = None, precision: str = "fp32", spacing: str | None = None,
                      guide: DiffusionModel | None = None,
                      guidance_interval: tuple[float, float] | None = None) -> torch.Tensor | None:
        """:meth:`sample`'s arguments, checked once: a :class:`~mnistdiff.config.ConfigError` names the one at fault.
        Returns the labels as a (N,) tensor (``None``: unconditional)."""
        _positive("num_samples", num_samples)
        if batch_size is not None:
            _positive("batch_size", batch_size)
        if sampler not in self.samplers:
            also = "" if sampler not in SAMPLERS else f" ({sampler} samples other kinds)"
            names = f"{', '.join(self.samplers[:-1])} or {self.samplers[-1]}"
            raise ConfigError(f"sampler: this {self.kind} model is sampled with {names}, "
                              f"got {sampler!r}{also}", "sampler")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), got {eta}", "eta")
        T = self.schedule.num_timesteps if self.schedule is not None else None
        if sampler != "ddpm" and not (isinstance(steps, int) and 1 <= steps <= (T or steps)):
            most = f" to the model's {T} timesteps" if T else " or more"
            raise ConfigError(f"steps must be a whole number from 1{most}, got {steps}", "steps")
        if not (guidance >= 0 and math.isfinite(guidance)):
            raise ConfigError(f"guidance must be a finite number >= 0 (0: no label, 1: the conditional model, "
                              f"> 1: guided), got {guidance}", "guidance")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", "precision")
        if spacing is not None:
            self._check_spacing(sampler, spacing)
        if self.distillation:
            self._check_student(sampler, steps, eta, guidance)
        y = self._labels(labels, num_samples)
        if guide is not None:
            self.check_guide(guide, y)
        if guidance_interval is not None:
            self._check_interval(guidance_interval, guided=guide is not None or y is not None)
        return y

    def _check_interval(self, interval: tuple[float, float], guided: bool) -> None:
        """A guidance interval is two noise levels 0 ≤ σ_lo < σ_hi (σ_hi may be ``math.inf``) and limits a guidance
        that is there: a guide's, or a class-conditional model's asked for digits."""
        if not guided or self.distillation:
            raise ConfigError("guidance_interval limits guidance: give a guide (autoguidance) or, for a "
                              "class-conditional model that is not distilled, labels", "guidance_interval")
        try:
            lo, hi = (float(s) for s in interval)
        except (TypeError, ValueError):
            raise ConfigError(f"guidance_interval must be two noise levels (sigma_lo, sigma_hi), got {interval!r}",
                              "guidance_interval") from None
        if not (0 <= lo < hi and not math.isnan(hi)):
            raise ConfigError(f"guidance_interval (sigma_lo, sigma_hi) needs 0 <= sigma_lo < sigma_hi (sigma_hi may "
                              f"be inf: no upper end), got {interval!r}", "guidance_interval")

    def _check_spacing(self, sampler: str, spacing: str) -> None:
        """A spacing is a choice of the solvers (:meth:`spacing`): DDIM keeps its timesteps, a flow's Euler and Heun
        their evenly spaced t, a student its grid."""
        if spacing not in SPACINGS:
            raise ConfigError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}", "spacing")
        if self.spacing(sampler) is None:
            raise ConfigError(f"spacing: only {', '.join(SOLVERS)} choose where their points go (on a flow, the two "
                              f"DPM-Solver++); this {self.kind} model's {sampler} does not (leave --spacing out)",
                              "spacing")

    def _check_student(self, sampler: str, steps: int, eta: float, guidance: float) -> None:
        """A distilled student runs only as it was distilled: DDIM, η = 0, its steps, its guidance weight."""
        want = self.sampling_defaults()
        for name, value in (("sampler", sampler), ("steps", steps), ("eta", eta), ("guidance", guidance)):
            if value != want[name]:
                raise ConfigError(f"{name}: this student was distilled to sample with sampler=ddim, steps="
                                  f"{want['steps']}, eta=0 and guidance={want['guidance']:g} folded in; got "
                                  f"{name}={value!r}", name)

    def _labels(self, labels: Labels, n: int) -> torch.Tensor | None:
        """``labels`` as an (n,) int64 tensor of digits (or ∅, :data:`~mnistdiff.unet.NULL_LABEL`)."""
        if labels is None:
            return None
        if self.num_classes is None:
            raise ConfigError(f"labels: this {self.kind} model is unconditional and cannot be asked for a digit; "
                              "a class-conditional model (cldm) can", "labels")
        y = torch.full((n,), int(labels)) if isinstance(labels, int) else torch.as_tensor(labels).long().flatten()
        if tuple(y.shape) != (n,):
            raise ConfigError(f"labels must be one digit or one per sample ({n}), got {tuple(y.shape)}", "labels")
        if ((y < 0) & (y != NULL_LABEL)).any() or (y >= self.num_classes).any():
            raise ConfigError(f"labels must be digits 0-{self.num_classes - 1} (or {NULL_LABEL}: none), "
                              f"got {sorted(set(y.tolist()))}", "labels")
        return y

    def measure_precision(self, device: str | torch.device | None = None) -> dict[str, float]:
        """Time fp32 and bf16, each plain and channels_last, on ``device`` and keep the fastest as :attr:`precision`
        (bf16 is fast only where the hardware has it, channels_last only on some: measured, never assumed); a latent
        model's decoder likewise, as :attr:`decode_precision`. Each choice is measured once per machine and
        remembered (:func:`~mnistdiff.devices.remembered`: the precisions draw other bits, and a rerun must draw the
        same samples). Returns network calls (and images decoded) per second of each, as measured then."""
        device = device if device is not None else next(self.unet.parameters()).device
        self.precision, speeds, known = remembered(
            f"sampling precision of {self.unet.config}", device,
            lambda: measure_precision(self.unet, self.sample_shape, device))
        if (codec := self.codec) is not None:
            codec.vae.to(device)
            self.decode_precision, decode_speeds, decoder_known = remembered(
                f"decoding precision of {codec.vae.config}", device,
                lambda: measure_decoder(codec.decode, self.sample_shape, device))
            speeds, known = {**speeds, **decode_speeds}, known or decoder_known
        self.meta["precision_remembered_in"] = str(choices_file()) if known else None
        self.meta["sampling_speeds"] = speeds
        return speeds
