"""mnistdiff: diffusion models from scratch on MNIST — UNet, DDPM, DDIM, VAE, latent diffusion, evaluation.

The diffusion core sits at the top of the package, one module per idea, in the order the course
teaches them:

==============  ===============================================================================
``unet``        the ε-network: time embedding, residual blocks, attention (chapter 1)
``schedules``   β_t and everything derived from it, float64 (chapter 2)
``ddpm``        q_sample, the posterior, p_sample, the loss (Ho et al. 2020; chapter 2)
``ddim``        the DDIM step and sampler (Song et al. 2020; chapter 3)
``vae``         the 1×32×32 → 2×4×4 VAE and its loss (Kingma & Welling 2013; chapter 4)
``latent``      scaled latent codes for latent diffusion (Rombach et al. 2022; chapter 5)
``guidance``    label dropout and classifier-free guidance (Ho & Salimans 2022; chapter 7)
``sampling``    ``generate``: any sampler, batched, seeded, optionally sped up
``config``      the dataclasses every model and run is built from
``data``, ``viz``, ``devices``, ``files``  MNIST, figures, device names, atomic writes
==============  ===============================================================================

The machinery lives in three subpackages: :mod:`mnistdiff.training` (the fit loop, EMA,
checkpoints, experiment folders, train/load pipelines), :mod:`mnistdiff.evaluation` (the
classifier, metrics, UMAP evaluation, results files) and :mod:`mnistdiff.course` (profiles,
load-else-train, the chapter-6 generators, widgets, the course runner). ``python -m mnistdiff
--help`` is the command line.

What a notebook needs comes in one import::

    from mnistdiff import UNet, NoiseSchedule, q_sample, ddim_sample_loop, get_ddpm, show_grid
"""

from mnistdiff.config import (
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    DiffusionConfig,
    LDMRunConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
    VAERunConfig,
)
from mnistdiff.course.pretrained import checkpoint_path, get_cldm, get_ddpm, get_ldm, get_vae
from mnistdiff.course.profiles import get_profile
from mnistdiff.data import load_mnist, to_uint8, to_unit_range
from mnistdiff.ddim import ddim_sample_loop, ddim_sigma, ddim_step, ddim_timesteps
from mnistdiff.ddpm import (
    PIXEL_RANGE,
    SampleOutput,
    clip_x0,
    diffusion_loss,
    min_snr_weight,
    p_mean_variance,
    p_sample,
    p_sample_loop,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior,
    q_sample,
)
from mnistdiff.devices import default_device, device_name
from mnistdiff.guidance import GuidedDenoiser, drop_labels, guided_eps
from mnistdiff.latent import LatentCodec, compute_latent_scale, encode_dataset
from mnistdiff.sampling import generate
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training.pipelines import DiffusionModel, make_diffusion_loss
from mnistdiff.unet import NULL_LABEL, UNet, count_parameters, timestep_embedding
from mnistdiff.vae import VAE, DiagonalGaussian, vae_loss
from mnistdiff.viz import frames_grid, grid_array, latent_scatter, pick_frames, plot_loss_curves, show_grid

__version__ = "0.1.0"

__all__ = [
    # the diffusion core
    "UNet", "count_parameters", "timestep_embedding", "NULL_LABEL",
    "NoiseSchedule",
    "q_sample", "q_posterior", "predict_x0_from_eps", "predict_eps_from_x0", "p_mean_variance", "p_sample",
    "p_sample_loop", "diffusion_loss", "min_snr_weight", "clip_x0", "PIXEL_RANGE", "SampleOutput",
    "ddim_timesteps", "ddim_sigma", "ddim_step", "ddim_sample_loop",
    "VAE", "DiagonalGaussian", "vae_loss",
    "LatentCodec", "compute_latent_scale", "encode_dataset",
    "drop_labels", "guided_eps", "GuidedDenoiser",
    "generate",
    # configs
    "UNetConfig", "DiffusionConfig", "VAEConfig", "TrainConfig", "DDPMRunConfig", "VAERunConfig", "LDMRunConfig",
    "CLDMRunConfig", "ConfigError", "DEFAULT_ETA", "DEFAULT_GUIDANCE",
    # data, figures, devices
    "load_mnist", "to_uint8", "to_unit_range",
    "show_grid", "grid_array", "frames_grid", "pick_frames", "plot_loss_curves", "latent_scatter",
    "default_device", "device_name",
    # trained models (load, else train) and the course's profiles
    "DiffusionModel", "make_diffusion_loss", "get_profile", "get_ddpm", "get_vae", "get_ldm", "get_cldm",
    "checkpoint_path",
]
