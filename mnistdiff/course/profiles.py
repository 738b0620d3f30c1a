"""The one profile switch: ``MNISTDIFF_PROFILE=smoke|book|full``.

* ``book``: what the published book is executed with. On two CPU cores (AMD EPYC, alone) its DDPM trains in about
  160 minutes, the VAE in 113 (recorded, part on an Intel Xeon; its book file is the run's epoch-28 snapshot, reached
  at 99), the DDPM's autoguide in 7.5, the LDM in 11, the cldm in 8, the cldm's 4-step student distils in 32 and the
  flow twin of the DDPM trains in about 200 (logit-normal t; 237 recorded on an Intel Xeon, some of it sharing the
  cores)
  (``python -m mnistdiff train all --profile book``, resumable);
  the checkpoints are committed, so every chapter loads them in seconds on any machine. The default.
* ``full``: the reference settings (the dataclass defaults), meant for a GPU.
* ``smoke``: every code path, tiny models and sample counts; every notebook runs in a few
  minutes on two CPU cores. The test suite (nbval) uses it; its models draw blobs, not digits.

This module is the only place that reads the variable.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from mnistdiff.config import (
    MNIST_CLASSES,
    CLDMRunConfig,
    DDPMRunConfig,
    DiffusionConfig,
    FlowRunConfig,
    LDMRunConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
    VAERunConfig,
)
from mnistdiff.training.distill import DistillConfig

__all__ = ["Profile", "PROFILES", "DEFAULT_PROFILE", "get_profile", "profile_name", "flow_twin", "guide_of"]

ENV_VAR = "MNISTDIFF_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Every size that matters for one profile: the run config of each kind and the evaluation sizes."""

    name: str
    ddpm: DDPMRunConfig
    vae: VAERunConfig
    ldm: LDMRunConfig
    cldm: CLDMRunConfig
    flow: FlowRunConfig
    ddpm_guide: DDPMRunConfig  # the DDPM's autoguide: a worse version of it (:func:`guide_of`)
    distill: DistillConfig = DistillConfig()  # chapter 9's few-step student of the cldm (python -m mnistdiff distill)
    num_samples: int = 64  # samples shown in grids
    ddim_steps: int = 50
    eval_samples: int = 10_000  # samples per generator for metrics
    umap_real: int = 10_000  # real images the UMAP is fitted on
    ddim_step_sweep: tuple[int, ...] = (10, 20, 50, 100)
    widget_frames: int = 8
    ancestral_samples: int | None = None  # the T-step ancestral samplers draw at most this many (None: eval_samples)
    sample_precision: str = "fp32"  # how notebooks run the sampling network: fp32, bf16_cl, or auto (measured)
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)  # chapter 7's w, in its grid and its table
    guidance_samples: int = 10_000  # samples per w that chapter 7 scores (the same n for every w)
    inline_steps: int = 160  # chapter 2: steps of its inline Algorithm 1 (batch 64, the smoke UNet), per run
    loss_by_t_images: int = 1000  # chapter 2: test images its loss-against-t curve is measured on
    vae_sweep_steps: int = 200  # chapter 4: Adam steps of each small VAE in its KL-weight sweep
    scale_run_steps: int = 600  # chapter 5: Adam steps (of 128 codes) of each run on scaled and unscaled codes


def flow_twin(ddpm: DDPMRunConfig) -> FlowRunConfig:
    """The flow-matching model of a profile: its pixel DDPM's UNet and training run (chapter 8 compares the two at
    an equal training budget), with logit-normal training times (Esser et al. 2024; on the book's budget they beat
    uniform t in both feature spaces, benchmarks/README.md "Issue 23")."""
    return FlowRunConfig(unet=ddpm.unet, train=ddpm.train, time_sampling="logit_normal")


def guide_of(ddpm: DDPMRunConfig, base_channels: int, epochs: int, ema_decay: float | None = None) -> DDPMRunConfig:
    """The autoguide of a profile's pixel DDPM (Karras et al. 2024): the same schedule and loss, a narrower UNet
    (``base_channels``) trained for fewer ``epochs`` (with its own EMA, ``ema_decay``), so that it errs where the
    DDPM errs, only more; :meth:`~mnistdiff.model.DiffusionModel.sample` guides the DDPM away from it."""
    train = dataclasses.replace(ddpm.train, epochs=epochs, snapshot_every=None,
                                ema_decay=ddpm.train.ema_decay if ema_decay is None else ema_decay)
    return dataclasses.replace(ddpm, unet=dataclasses.replace(ddpm.unet, base_channels=base_channels), train=train)


FULL = Profile(name="full", ddpm=DDPMRunConfig(), vae=VAERunConfig(), ldm=LDMRunConfig(), cldm=CLDMRunConfig(),
               flow=flow_twin(DDPMRunConfig()),
               ddpm_guide=guide_of(DDPMRunConfig(), base_channels=24, epochs=DDPMRunConfig().train.epochs // 16))


_SMOKE_TRAIN = TrainConfig(
    epochs=2, lr=2e-3, batch_size=64, subset=1024, sample_every=2, warmup_steps=4, num_samples=8, eval_size=128
)
_SMOKE_DIFFUSION = DiffusionConfig(timesteps=100)
_SMOKE_DDPM = DDPMRunConfig(
    unet=UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                    num_heads=2),
    diffusion=_SMOKE_DIFFUSION,
    train=dataclasses.replace(_SMOKE_TRAIN, epochs=6, sample_every=3),
)

SMOKE = Profile(
    name="smoke",
    ddpm=_SMOKE_DDPM,
    vae=VAERunConfig(
        vae=VAEConfig(base_channels=8),
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=3, lr=3e-3),
    ),
    ldm=LDMRunConfig(
        unet=UNetConfig(
            in_channels=2, image_size=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_heads=2,
        ),
        diffusion=_SMOKE_DIFFUSION,
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=3),
    ),
    cldm=CLDMRunConfig(
        unet=UNetConfig(
            in_channels=2, image_size=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_heads=2, num_classes=MNIST_CLASSES,
        ),
        diffusion=_SMOKE_DIFFUSION,
        train=dataclasses.replace(_SMOKE_TRAIN, epochs=3),
    ),
    flow=flow_twin(_SMOKE_DDPM),
    ddpm_guide=guide_of(_SMOKE_DDPM, base_channels=8, epochs=2),
    distill=DistillConfig(steps=2, start_steps=8, iterations=20, batch_size=32, subset=512),
    num_samples=16,
    ddim_steps=20,
    eval_samples=128,
    umap_real=1000,
    ddim_step_sweep=(5, 10, 20),
    widget_frames=6,
    guidance_samples=100,
    inline_steps=40,
    loss_by_t_images=400,
    vae_sweep_steps=60,
    scale_run_steps=60,
)

# The book profile: found by measurement on a 2-core CPU (benchmarks/README.md, "The book profile").
_BOOK_DDPM = DDPMRunConfig(
    unet=UNetConfig(base_channels=24, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,)),
    diffusion=DiffusionConfig(min_snr_gamma=5.0),
    # 30 epochs with a longer EMA: about 160 minutes alone on two AMD EPYC cores, the first run within issue 22's
    # 2× floor in the classifier's space (checkpoints/book/candidates/ddpm_30ep/README.md)
    train=TrainConfig(epochs=30, lr=2e-3, batch_size=128, warmup_steps=200, sample_every=1, num_samples=16,
                      eval_size=1000, precision="auto", ema_decay=0.9995, snapshot_every=2),
)
BOOK = Profile(
    name="book",
    ddpm=_BOOK_DDPM,
    # the plain ELBO blurs; a patch critic (adv_weight, chapter 4) sharpens the decoder; its cosine decay over 32
    # epochs (6,763 s recorded on two cores) puts more in the same 32 latent numbers than over 16 or 8. The book's
    # file is this run's epoch-28 snapshot, chosen on held-out seeds (checkpoints/book/candidates/vae_32ep/README.md);
    # a fresh run stores its epoch-32 model (ten seeds: 1.09× / 1.50× the floor, against the snapshot's 1.11× / 1.45×)
    vae=VAERunConfig(
        vae=VAEConfig(base_channels=32),
        train=TrainConfig(epochs=32, lr=1e-3, batch_size=128, warmup_steps=100, sample_every=1, num_samples=16,
                          eval_size=2000, precision="auto", snapshot_every=4),
        adv_weight=0.5,
    ),
    ldm=LDMRunConfig(
        unet=UNetConfig(in_channels=2, image_size=4, base_channels=32, channel_mults=(1, 2),
                        attention_resolutions=(4, 2)),
        train=TrainConfig(epochs=20, lr=2e-3, batch_size=256, warmup_steps=200, sample_every=2, num_samples=16,
                          eval_size=2000, precision="auto"),
    ),
    # chapter 7's model: the LDM's UNet with a label embedding; 15 epochs fit issue 13's budget of 15 minutes on
    # two CPU cores (13.3 min measured, checkpoints/book/logs/cldm.*; 20 epochs would take about 17.5)
    cldm=CLDMRunConfig(
        unet=UNetConfig(in_channels=2, image_size=4, base_channels=32, channel_mults=(1, 2),
                        attention_resolutions=(4, 2), num_classes=MNIST_CLASSES),
        train=TrainConfig(epochs=15, lr=2e-3, batch_size=256, warmup_steps=200, sample_every=3, num_samples=20,
                          eval_size=2000, precision="auto"),
        p_uncond=0.1,
    ),
    flow=flow_twin(_BOOK_DDPM),
    # the DDPM's autoguide (Karras et al. 2024): two-thirds the width, 2 epochs of the 30, its own shorter EMA; 447 s
    # on two AMD EPYC cores (checkpoints/book/logs/ddpm_guide.*, candidates/ddpm_autoguidance/README.md)
    ddpm_guide=guide_of(_BOOK_DDPM, base_channels=16, epochs=2, ema_decay=0.999),
    # four rounds of 2,000 steps (DDIM-64 → 4) distil the book cldm in 32 minutes on two CPU cores; 1,000 a round
    # left the student 1.53× its teacher's FID in the ResNet's space (checkpoints/book/candidates/cldm_on_vae32/)
    distill=DistillConfig(steps=4, start_steps=64, iterations=2000, batch_size=256),
    num_samples=64,
    ddim_steps=50,
    eval_samples=2000,
    umap_real=6_000,
    ddim_step_sweep=(10, 20, 50),
    widget_frames=8,
    ancestral_samples=50,  # 1000 steps cost 1.7-2.4 s a pixel sample on two CPU cores (chapter 6): scored on 50
    sample_precision="auto",
    guidance_samples=2000,
    inline_steps=160,
    loss_by_t_images=1000,
    vae_sweep_steps=200,
    scale_run_steps=600,
)

PROFILES = {"smoke": SMOKE, "book": BOOK, "full": FULL}
DEFAULT_PROFILE = "book"



def profile_name(name: str | None = None) -> str:
    """The profile's name: ``name`` if given, else ``$MNISTDIFF_PROFILE``, else ``book`` (committed checkpoints)."""
    chosen = name or os.environ.get(ENV_VAR) or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise ValueError(f"{ENV_VAR} must be one of {sorted(PROFILES)}, got {chosen!r}")
    return chosen


def get_profile(name: str | None = None) -> Profile:
    """The :class:`Profile` chosen by :func:`profile_name`."""
    return PROFILES[profile_name(name)]
