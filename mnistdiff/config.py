"""Configuration dataclasses: the one place every size and hyperparameter lives.

A run's config is saved with its checkpoint (as JSON) and rebuilt from it on load, so the
command line, the notebooks and the checkpoint files all describe a model the same way.
The seed's defaults (the ``full`` profile) are the dataclass defaults; :mod:`mnistdiff.course.profiles`
derives the small ``smoke`` settings from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "UNetConfig",
    "DiffusionConfig",
    "VAEConfig",
    "TrainConfig",
    "DDPMRunConfig",
    "VAERunConfig",
    "LDMRunConfig",
    "to_dict",
    "from_dict",
    "ConfigError",
    "DEFAULT_ETA",
]


PRECISIONS = ("fp32", "bf16", "bf16_cl", "auto")

#: DDIM's η where nobody chooses one (``sampling.generate``, ``python -m mnistdiff sample``): 1, the
#: stochastic sampler. On the book profile's briefly trained network, deterministic DDIM (η = 0)
#: leaves grainy backgrounds and skews the digit classes (chapter 3, "Why η = 0 is fragile"); η = 1
#: corrects each step's error with fresh noise. ``ddim.ddim_sample_loop`` keeps the paper's η = 0.
DEFAULT_ETA = 1.0


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and what it must be."""


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class UNetConfig:
    """The ε-prediction UNet: ``in_channels`` × ``image_size`` × ``image_size`` → same shape.

    ``channel_mults`` gives one resolution level each (the image is halved between levels);
    ``attention_resolutions`` lists the feature-map sizes (in pixels) that get self-attention.
    """

    in_channels: int = 1
    image_size: int = 32
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 8

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "num_heads", "norm_groups"):
            _positive(name, getattr(self, name))
        if not self.channel_mults or any(m <= 0 for m in self.channel_mults):
            raise ConfigError(f"channel_mults must be positive integers, got {self.channel_mults}")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by 2**(levels-1) = {2 ** (len(self.channel_mults) - 1)}"
            )
        for m in self.channel_mults:
            if (self.base_channels * m) % self.norm_groups:
                raise ConfigError(
                    f"base_channels×mult = {self.base_channels * m} must be divisible by norm_groups = {self.norm_groups}"
                )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule: ``timesteps`` T and its kind (``cosine`` or ``linear``), and the loss weighting.

    ``min_snr_gamma``: ``None`` trains on L_simple (Ho eq. 14); a number γ weights each timestep's
    ε-loss by min(SNR_t, γ) / SNR_t (min-SNR-γ, Hang et al. 2023; :func:`mnistdiff.ddpm.min_snr_weight`).
    """

    timesteps: int = 1000
    schedule: str = "cosine"
    min_snr_gamma: float | None = None

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ConfigError(f"timesteps must be at least 2, got {self.timesteps}")
        if self.min_snr_gamma is not None:
            _positive("min_snr_gamma", self.min_snr_gamma)
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")


@dataclass(frozen=True)
class VAEConfig:
    """The VAE: ``in_channels`` × 32 × 32 → ``latent_channels`` × 4 × 4 (three halvings)."""

    in_channels: int = 1
    image_size: int = 32
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    latent_channels: int = 2
    norm_groups: int = 8

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "base_channels", "latent_channels", "norm_groups"):
            _positive(name, getattr(self, name))
        for m in self.channel_mults:
            if (self.base_channels * m) % self.norm_groups:
                raise ConfigError(
                    f"base_channels×mult = {self.base_channels * m} must be divisible by norm_groups = {self.norm_groups}"
                )

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.channel_mults)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: optimiser, schedule of the learning rate, EMA, data, precision and logging.

    ``precision``: ``fp32``; ``bf16`` (autocast); ``bf16_cl`` (autocast and channels_last); ``auto``: on a
    CPU, the fastest of those three measured by a short probe on the run's own model and batch
    (:func:`mnistdiff.training.loop.choose_precision`; bf16 only where the CPU has native bf16), on CUDA ``bf16_cl``;
    ``None`` (the default): ``bf16_cl`` on CUDA, ``fp32`` on a CPU.
    """

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 512
    seed: int = 0
    subset: int | None = None
    sample_every: int = 10
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    num_samples: int = 64
    eval_size: int = 2000
    precision: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "lr", "batch_size", "sample_every", "num_samples", "eval_size"):
            _positive(name, getattr(self, name))
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.subset is not None:
            _positive("subset", self.subset)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class DDPMRunConfig:
    """Pixel-space DDPM: the UNet, the schedule and the training run."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = "ddpm"


@dataclass(frozen=True)
class VAERunConfig:
    """The VAE and its training run; loss = reconstruction + ``kl_weight``·KL."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-4, batch_size=128, sample_every=4))
    kl_weight: float = 1e-6
    kind: str = "vae"

    def __post_init__(self) -> None:
        if self.kl_weight < 0:
            raise ConfigError(f"kl_weight must be non-negative, got {self.kl_weight}")


@dataclass(frozen=True)
class LDMRunConfig:
    """Latent diffusion: a UNet on the VAE's ``latent_channels`` × 4 × 4 latents."""

    unet: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            in_channels=2, image_size=4, base_channels=64, channel_mults=(1, 2), attention_resolutions=(4, 2)
        )
    )
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = "ldm"


_T = TypeVar("_T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


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
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else fields[name].default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
