"""Configuration dataclasses: the one place every size and hyperparameter lives.

A run's config is saved in its model file and rebuilt from it on load, so the command line, the notebooks and the
model files all describe a model the same way. The reference defaults (the ``full`` profile) are the dataclass
defaults; :mod:`mnistdiff.course.profiles` derives the smaller profiles from them. Each setting's help text lives
in its field's ``metadata["help"]``: the command line makes one ``--<field>`` option per field from it
(:mod:`mnistdiff.cli_options`), and the values are checked by the dataclasses' ``__post_init__`` alone (a
:class:`ConfigError` names the setting). A diffusion kind's ``samplers`` lists what it is drawn with, the first
its default, at ``default_steps`` (its solvers' Karras σ from ``karras_sigma_max``), chosen by measurement
(benchmarks/README.md: DPM-Solver++(2M) SDE at 16 steps is at or below DDIM-50's FID in both feature spaces).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

__all__ = ["UNetConfig", "DiffusionConfig", "VAEConfig", "TrainConfig", "DDPMRunConfig", "FlowRunConfig", "to_dict",
           "VAERunConfig", "LDMRunConfig", "CLDMRunConfig", "from_dict", "normalized", "ConfigError", "DEFAULT_ETA",
           "DEFAULT_AUTOGUIDANCE", "DEFAULT_AUTOGUIDANCE_INTERVAL", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "PRECISIONS",
           "MNIST_CLASSES", "RUN_CONFIGS", "VAE_KIND", "DIFFUSION_KINDS", "LATENT_KINDS", "TIME_SAMPLINGS"]

#: How a network runs, in training and in sampling alike: float32; bf16 autocast; bf16 autocast and channels_last;
#: or ``auto``, the fastest of those, measured once on a machine and remembered (bf16: fast only where native).
PRECISIONS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "auto")

#: DDIM's η where nobody chooses one (``DiffusionModel.sample``, ``python -m mnistdiff sample``): 1, the stochastic
#: sampler. η = 0 leaves grainy backgrounds and skews the book network's classes (chapter 3, "Why η = 0 is fragile");
#: η = 1 corrects each step's error with fresh noise. The core loops take η explicitly: the reader sees which runs.
DEFAULT_ETA = 1.0

#: A sampler's steps where nobody chooses a number, but for a kind's own default sampler (its ``default_steps``).
DEFAULT_STEPS = 50

#: The classifier-free guidance weight w where nobody chooses one (``sample cldm``): ε̃ = ε(x, ∅) + w·(ε(x, y) − ε(x,
#: ∅)), 0 ignores the label, 1 is the conditional model. Chapter 7 measures it against w and recommends it.
DEFAULT_GUIDANCE = 2.0

#: Autoguidance's w where a guide is given and no w: ε̃ = ε_guide + w·(ε − ε_guide) (Karras et al. 2024; 1: the model
#: alone); of 1.25, 1.5 and 2 the best on the book DDPM and its guide (``benchmarks/README.md``, "Autoguidance").
DEFAULT_AUTOGUIDANCE = 1.25
#: …and its noise levels, guided at σ_lo < σ ≤ σ_hi only (Kynkäänniemi et al. 2024; the same section); None: every step.
DEFAULT_AUTOGUIDANCE_INTERVAL: tuple[float, float] | None = None

#: The digits 0–9: the classes of a class-conditional model (its label embedding has one more row, ∅).
MNIST_CLASSES = 10


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and what it must be. ``setting`` is the field at fault
    where one alone is (the message starts with its name; the command line reports it as ``--<setting> ...``)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        """``message`` says what is wrong; ``setting``: the one field at fault, if one is."""
        super().__init__(message)
        self.setting = setting


#: How training draws t (:func:`mnistdiff.ddpm.sample_timesteps`, :func:`mnistdiff.flows.sample_time`).
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}", name)


def _positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a positive number, got {value}", name)


def _non_negative(name: str, value: float) -> None:
    """``value`` must be a finite number ≥ 0."""
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be non-negative and finite, got {value}", name)


def _fraction(name: str, value: float) -> None:
    """``value`` must lie in [0, 1)."""
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value}", name)


def _check_levels(base_channels: int, channel_mults: tuple[int, ...], norm_groups: int) -> None:
    """Positive multipliers, and every level's channels, ``base_channels`` × mult, split into ``norm_groups`` groups."""
    if not channel_mults or any(m <= 0 for m in channel_mults):
        raise ConfigError(f"channel_mults must be positive integers, got {channel_mults}", "channel_mults")
    for ch in (base_channels * m for m in channel_mults):
        if ch % norm_groups:
            raise ConfigError(f"base_channels×mult = {ch} must be divisible by norm_groups = {norm_groups}")


def _setting(default: Any, help: str) -> Any:
    """A field with its help text: the command line's ``--<name>`` option shows it (:mod:`mnistdiff.cli_options`)."""
    return field(default=default, metadata={"help": help})


def _kind(name: str) -> Any:
    """The ``kind`` tag of a run config: fixed, so not a command-line option."""
    return field(default=name, metadata={"help": "the model kind a checkpoint records", "cli": False})


@dataclass(frozen=True)
class UNetConfig:
    """The ε-prediction UNet: ``in_channels`` × ``image_size`` × ``image_size`` → same shape. ``channel_mults`` gives
    one resolution level each (the image is halved between levels); ``attention_resolutions`` lists the feature-map
    sizes (in pixels) that get self-attention."""

    in_channels: int = _setting(1, "channels of the UNet's input (1: MNIST pixels; the LDM: the VAE's latent_channels)")
    image_size: int = _setting(32, "side of the square input, in pixels (the LDM: latent cells)")
    base_channels: int = _setting(32, "UNet channels at the first resolution level")
    channel_mults: tuple[int, ...] = _setting(
        (1, 2, 2), "UNet channel multiplier of each resolution level, comma-separated (the image halves between levels)"
    )
    num_res_blocks: int = _setting(2, "residual blocks per resolution level")
    attention_resolutions: tuple[int, ...] = _setting((16, 8), "feature-map sizes (pixels) that get self-attention, "
                                                               "comma-separated ('' for none)")
    num_heads: int = _setting(4, "self-attention heads (must divide the channels where attention is)")
    dropout: float = _setting(0.0, "dropout in the residual blocks, in [0, 1)")
    norm_groups: int = _setting(8, "GroupNorm groups (must divide every level's channels)")
    num_classes: int | None = _setting(
        None, "classes of a class-conditional UNet (a label embedding of num_classes + 1 rows, the last for "
              "'no label'); none: unconditional (only a cldm takes labels)")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "num_heads", "norm_groups"):
            _positive(name, getattr(self, name))
        if self.num_classes is not None:
            _positive("num_classes", self.num_classes)
        _check_levels(self.base_channels, self.channel_mults, self.norm_groups)
        step = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % step:
            raise ConfigError(f"image_size {self.image_size} must be divisible by 2**(levels-1) = {step}", "image_size")
        self._check_heads()
        _fraction("dropout", self.dropout)

    def _check_heads(self) -> None:
        """Every attention block (the listed resolutions and the middle one) splits its channels into heads."""
        levels = [(self.image_size // 2**i, self.base_channels * m) for i, m in enumerate(self.channel_mults)]
        attended = [ch for res, ch in levels if res in self.attention_resolutions] + [levels[-1][1]]
        for ch in attended:
            if ch % self.num_heads:
                raise ConfigError(f"num_heads {self.num_heads} must divide the {ch} channels of an attention block",
                                  "num_heads")


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule: ``timesteps`` T and its kind (``cosine`` or ``linear``), and the loss weighting.

    ``min_snr_gamma``: ``None`` trains on L_simple (Ho eq. 14); a number γ weights each timestep's
    ε-loss by min(SNR_t, γ) / SNR_t (min-SNR-γ, Hang et al. 2023; :func:`mnistdiff.ddpm.min_snr_weight`).
    ``prediction``: the network's target, ε or v (:class:`mnistdiff.ddpm.EpsFromV` shows it to samplers as ε).
    """

    timesteps: int = _setting(1000, "diffusion steps T")
    schedule: str = _setting("cosine", "noise schedule: cosine or linear")
    min_snr_gamma: float | None = _setting(None, "weight the loss by min(SNR, γ)/SNR with this γ (e.g. 5); "
                                                 "none: plain L_simple")
    prediction: str = _setting("eps", "what the network predicts: eps, the noise (Ho et al.), or v = √ᾱ·ε − √(1−ᾱ)·x_0 "
                                      "(Salimans & Ho 2022); samplers see an ε-network either way")
    time_sampling: str = _setting("uniform", "how training draws t: uniform (Ho et al.) or logit_normal (the flow's "
                                             "logit-normal noise levels, log-SNR ~ N(0, 4): more of the middle)")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        _positive("timesteps", self.timesteps)
        if self.timesteps < 2:
            raise ConfigError(f"timesteps must be at least 2, got {self.timesteps}", "timesteps")
        if self.min_snr_gamma is not None:
            _positive("min_snr_gamma", self.min_snr_gamma)
        _one_of("schedule", self.schedule, ("cosine", "linear"))
        _one_of("prediction", self.prediction, ("eps", "v"))
        _one_of("time_sampling", self.time_sampling, TIME_SAMPLINGS)


@dataclass(frozen=True)
class VAEConfig:
    """The VAE: ``in_channels`` × 32 × 32 → ``latent_channels`` × 4 × 4 (three halvings)."""

    in_channels: int = _setting(1, "image channels")
    image_size: int = _setting(32, "image side, in pixels")
    base_channels: int = _setting(64, "VAE channels at the first resolution level")
    channel_mults: tuple[int, ...] = _setting((1, 2, 2), "VAE channel multiplier of each level, comma-separated "
                                                         "(each level halves the image)")
    latent_channels: int = _setting(2, "channels of the latent (latent_channels × 4 × 4 for 32-pixel images)")
    norm_groups: int = _setting(8, "GroupNorm groups (must divide every level's channels)")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        for name in ("in_channels", "image_size", "base_channels", "latent_channels", "norm_groups"):
            _positive(name, getattr(self, name))
        _check_levels(self.base_channels, self.channel_mults, self.norm_groups)

    @property
    def latent_size(self) -> int:
        """Side of the latent: ``image_size`` halved once per level."""
        return self.image_size // 2 ** len(self.channel_mults)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: optimiser, schedule of the learning rate, EMA, data, precision and logging.

    ``precision``: ``fp32``; ``bf16`` (autocast); ``_cl`` adds channels_last (``fp32_cl``, ``bf16_cl``); ``auto``: on a
    CPU, the fastest of those four measured by a short probe on the run's own model and batch
    (:func:`mnistdiff.training.precision.choose_precision`; bf16 only where the CPU has native bf16), on CUDA
    ``bf16_cl``; ``None`` (the default): ``bf16_cl`` on CUDA, ``fp32`` on a CPU.
    """

    epochs: int = _setting(100, "training epochs")
    lr: float = _setting(1e-3, "peak learning rate (AdamW, warm-up then cosine decay)")
    batch_size: int = _setting(512, "images per step")
    seed: int = _setting(0, "random seed (data order, noise, initial weights)")
    subset: int | None = _setting(None, "train on the first N images of a seeded permutation (quick runs); none: all")
    sample_every: int = _setting(10, "write samples every N epochs")
    warmup_steps: int = _setting(200, "learning-rate warm-up steps (at most a tenth of the run's steps)")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    grad_clip: float = _setting(1.0, "clip the gradient norm to this (0: no clipping)")
    ema_decay: float = _setting(0.999, "decay of the weights' exponential moving average, in [0, 1)")
    num_samples: int = _setting(64, "images in each sample grid written during training")
    eval_size: int = _setting(2000, "test images the evaluation loss is measured on")
    precision: str | None = _setting(None, "fp32, fp32_cl, bf16, bf16_cl or auto; none: bf16_cl on CUDA, fp32 on a CPU")
    snapshot_every: int | None = _setting(None, "also keep the EMA model every N epochs as snapshots/"
                                                "epoch_NNN.safetensors (a model file with its training seconds: quality"
                                                " against time, or an epoch chosen afterwards); none: only the last")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        for name in ("epochs", "lr", "batch_size", "sample_every", "num_samples", "eval_size"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            _non_negative(name, getattr(self, name))
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}", "precision")
        for name in ("subset", "snapshot_every"):  # none: all the data; only the last model
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _fraction("ema_decay", self.ema_decay)


@dataclass(frozen=True)
class DDPMRunConfig:
    """Pixel-space DDPM: the UNet, the schedule and the training run."""

    latent: ClassVar[bool] = False
    samplers: ClassVar[tuple[str, ...]] = ("dpmpp_2m_sde", "ddim", "ddpm", "dpmpp_2m", "heun")  # first: the default
    default_steps: ClassVar[int] = 16  # the default sampler's (another sampler's: DEFAULT_STEPS)
    karras_sigma_max: ClassVar[float] = 20.0  # where the solvers' Karras σ start (solvers.KARRAS_SIGMA_MAX: measured)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = _kind("ddpm")

    def __post_init__(self) -> None:
        """An unconditional UNet: class labels are the ``cldm``'s (:class:`CLDMRunConfig`)."""
        _unconditional(self.unet, self.kind)


@dataclass(frozen=True)
class FlowRunConfig:
    """Pixel flow matching: the DDPM's UNet as a velocity network on x_t = (1 − t)·x_0 + t·ε (:mod:`mnistdiff.flows`),
    t drawn by ``time_sampling``; its default sampler is the best measured in issue 23's budget (benchmarks/README)"""

    latent: ClassVar[bool] = False
    samplers: ClassVar[tuple[str, ...]] = ("dpmpp_2m_sde", "euler", "heun", "dpmpp_2m")
    default_steps: ClassVar[int] = 32
    karras_sigma_max: ClassVar[float] = 80.0  # its DPM-Solver++'s Karras σ start at 80, t = 80/81 (measured)

    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    time_sampling: str = _setting("uniform", "how training draws t in [0, 1]: uniform (Lipman et al.) or "
                                             "logit_normal (Esser et al. 2024: more of the middle of the path)")
    kind: str = _kind("flow")

    def __post_init__(self) -> None:
        """An unconditional UNet; a known way of drawing t."""
        _unconditional(self.unet, self.kind)
        _one_of("time_sampling", self.time_sampling, TIME_SAMPLINGS)


@dataclass(frozen=True)
class VAERunConfig:
    """The VAE and its training run; loss = reconstruction + ``kl_weight``·KL (+ ``adv_weight``·(−D(x̂)))."""

    latent: ClassVar[bool] = False

    vae: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-4, batch_size=128, sample_every=4))
    kl_weight: float = _setting(1e-6, "weight of the KL term in the VAE loss (reconstruction + kl_weight·KL)")
    adv_weight: float = _setting(0.0, "weight λ of the adversarial term −λ·D(x̂) of a patch critic trained beside "
                                      "the VAE (latent diffusion's autoencoder; mnistdiff.training.adversarial); "
                                      "0: the plain ELBO")
    kind: str = _kind("vae")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        _non_negative("kl_weight", self.kl_weight)
        _non_negative("adv_weight", self.adv_weight)


@dataclass(frozen=True)
class LDMRunConfig:
    """Latent diffusion: a UNet on the VAE's ``latent_channels`` × 4 × 4 latents."""

    latent: ClassVar[bool] = True
    samplers: ClassVar[tuple[str, ...]] = ("dpmpp_2m_sde", "ddim", "ddpm", "dpmpp_2m", "heun")
    default_steps: ClassVar[int] = 16
    karras_sigma_max: ClassVar[float] = 5.0  # measured: its codes drown sooner than pixels (benchmarks/README.md)

    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        in_channels=2, image_size=4, base_channels=64, channel_mults=(1, 2), attention_resolutions=(4, 2)))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = _kind("ldm")

    def __post_init__(self) -> None:
        """An unconditional UNet: class labels are the ``cldm``'s (:class:`CLDMRunConfig`)."""
        _unconditional(self.unet, self.kind)


def _unconditional(unet: UNetConfig, kind: str) -> None:
    if unet.num_classes is not None:
        raise ConfigError(f"num_classes must be none for the {kind} (it is unconditional), got {unet.num_classes}; "
                          "a class-conditional model is a cldm (CLDMRunConfig, `train cldm`)", "num_classes")


@dataclass(frozen=True)
class CLDMRunConfig:
    """Class-conditional latent diffusion with classifier-free guidance (Ho & Salimans 2022).

    The latent UNet of :class:`LDMRunConfig` with a label embedding (``unet.num_classes`` digits and ∅); each
    training label is replaced by ∅ with probability ``p_uncond``, so one network learns ε(x, t, y) and ε(x, t, ∅).
    """

    latent: ClassVar[bool] = True
    samplers: ClassVar[tuple[str, ...]] = ("dpmpp_2m_sde", "ddim", "ddpm", "dpmpp_2m", "heun")
    default_steps: ClassVar[int] = 16
    karras_sigma_max: ClassVar[float] = 20.0  # as chapter 7's sweep measured it (benchmarks/guidance_samplers.py)

    unet: UNetConfig = field(
        default_factory=lambda: dataclasses.replace(LDMRunConfig().unet, num_classes=MNIST_CLASSES))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    p_uncond: float = _setting(0.1, "probability that a training label is replaced by ∅ (no label), in [0, 1)")
    kind: str = _kind("cldm")

    def __post_init__(self) -> None:
        """Check the values: a bad one raises :class:`ConfigError` naming it."""
        if self.unet.num_classes is None:
            raise ConfigError("num_classes must be set for a cldm (the number of digits it is conditioned on), "
                              "got none", "num_classes")
        _fraction("p_uncond", self.p_uncond)


#: The run config of each model kind, by its ``kind`` tag (written once, in the class's ``kind`` field; the class's
#: ``latent`` says whether it diffuses in a VAE's latents, its ``samplers`` what it is sampled with).
RUN_CONFIGS: dict[str, type[Any]] = {cls.kind: cls for cls in (DDPMRunConfig, VAERunConfig, LDMRunConfig,
                                                             CLDMRunConfig, FlowRunConfig)}
#: The VAE's kind; the kinds a DiffusionModel holds (diffusion and flows), and those that work in a VAE's latents.
VAE_KIND: str = VAERunConfig.kind
DIFFUSION_KINDS = tuple(k for k in RUN_CONFIGS if k != VAE_KIND)
LATENT_KINDS = tuple(k for k, cls in RUN_CONFIGS.items() if cls.latent)

_T = TypeVar("_T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def normalized(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a stored :func:`to_dict`) rebuilt as a ``cls`` and written out again: settings added since it
    was stored get their defaults (an old sidecar has no ``num_classes``: ``None``, what it was trained with)."""
    return to_dict(from_dict(cls, data))


def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
    """Rebuild a (nested) config dataclass from :func:`to_dict`'s output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a dict for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
