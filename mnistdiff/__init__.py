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
``guidance``    label dropout, classifier-free guidance (Ho & Salimans 2022) and autoguidance (chapter 7)
``flows``       flow matching on the straight path: loss, Euler and Heun, the five parameterisations (chapter 8)
``sampling``    ``generate``: any sampler, batched, seeded, optionally sped up
``model``       ``DiffusionModel``: one trained model, loaded from one file, sampled with typed arguments
``modelfile``   the one-file format of a trained model (safetensors; verified on load)
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

``import mnistdiff`` itself imports nothing heavy: each name below is imported from its module when it is
first used (PEP 562), so ``import mnistdiff.ddpm`` loads the core alone, and the training, evaluation and
course machinery only when a name of theirs is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Where each name of the package's front door lives (imported on first use).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "DEFAULT_AUTOGUIDANCE", "DEFAULT_AUTOGUIDANCE_INTERVAL", "DEFAULT_ETA", "DEFAULT_GUIDANCE", "DEFAULT_STEPS",
        "CLDMRunConfig", "ConfigError", "DDPMRunConfig", "DiffusionConfig", "FlowRunConfig", "LDMRunConfig",
        "TrainConfig", "UNetConfig", "VAEConfig", "VAERunConfig"
    ], "mnistdiff.config"),
    **dict.fromkeys([
        "checkpoint_path", "get_cldm", "get_cldm_distilled", "get_ddpm", "get_ddpm_guide", "get_flow", "get_ldm",
        "get_vae"
    ], "mnistdiff.course.pretrained"),
    **dict.fromkeys(["get_profile"], "mnistdiff.course.profiles"),
    **dict.fromkeys(["load_mnist", "to_uint8", "to_unit_range"], "mnistdiff.data"),
    **dict.fromkeys(["ddim_sample_loop", "ddim_sigma", "ddim_step", "ddim_timesteps"], "mnistdiff.ddim"),
    **dict.fromkeys([
        "PIXEL_RANGE", "EpsFromV", "SampleOutput", "clip_x0", "diffusion_loss", "min_snr_weight", "p_mean_variance",
        "p_sample", "p_sample_loop", "predict_eps_from_v", "predict_eps_from_x0", "predict_x0_from_eps", "q_posterior",
        "q_sample", "v_target"
    ], "mnistdiff.ddpm"),
    **dict.fromkeys(["default_device", "device_name"], "mnistdiff.devices"),
    **dict.fromkeys([
        "PathPoint", "convert", "euler_step", "flow_matching_loss", "flow_nfe", "flow_sample_loop", "flow_timesteps",
        "heun_step", "interpolate", "sample_time", "straight_path", "velocity", "velocity_target"
    ], "mnistdiff.flows"),
    **dict.fromkeys(["AutoGuidedDenoiser", "GuidedDenoiser", "autoguided_eps", "drop_labels", "guided_eps"],
                    "mnistdiff.guidance"),
    **dict.fromkeys(["LatentCodec", "compute_latent_scale", "encode_dataset"], "mnistdiff.latent"),
    **dict.fromkeys(["DiffusionModel"], "mnistdiff.model"),
    **dict.fromkeys(["load_vae"], "mnistdiff.modelfile"),
    **dict.fromkeys(["generate"], "mnistdiff.sampling"),
    **dict.fromkeys(["NoiseSchedule"], "mnistdiff.schedules"),
    **dict.fromkeys(["make_diffusion_loss", "make_flow_loss"], "mnistdiff.training.pipelines"),
    **dict.fromkeys(["NULL_LABEL", "UNet", "count_parameters", "timestep_embedding"], "mnistdiff.unet"),
    **dict.fromkeys(["VAE", "DiagonalGaussian", "vae_loss"], "mnistdiff.vae"),
    **dict.fromkeys([
        "frames_grid", "grid_array", "latent_scatter", "pick_frames", "plot_loss_curves", "show_grid"
    ], "mnistdiff.viz"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``mnistdiff.<name>``: imported from its module the first time it is asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mnistdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

