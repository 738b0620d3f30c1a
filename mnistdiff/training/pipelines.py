"""Train each model from its run config: what the command line and the notebooks both call.

``train_ddpm``, ``train_vae``, ``train_ldm``, ``train_cldm`` and ``train_flow`` build a
:class:`~mnistdiff.training.loop.TrainTask` from a run config and hand it to :func:`~mnistdiff.training.loop.fit`,
which writes the trained model as one file (``checkpoints/model.safetensors``);
:meth:`mnistdiff.model.DiffusionModel.load` and :func:`mnistdiff.modelfile.load_vae` read it back.
:mod:`mnistdiff.training.kinds` lists them, one entry per model kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistdiff.config import (
    DEFAULT_GUIDANCE,
    MNIST_CLASSES,
    CLDMRunConfig,
    DDPMRunConfig,
    FlowRunConfig,
    LDMRunConfig,
    VAERunConfig,
)
from mnistdiff.data import load_mnist
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, diffusion_loss, eps_network, sample_timesteps
from mnistdiff.flows import flow_matching_loss, sample_time
from mnistdiff.guidance import balanced_labels, drop_labels
from mnistdiff.latent import LatentCodec, compute_latent_scale, encode_dataset, scaled_sample
from mnistdiff.modelfile import CheckpointError, load_vae
from mnistdiff.sampling import generate
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training.adversarial import PatchCritic, VAEWithCritic, adversarial_vae_loss
from mnistdiff.training.batches import Data
from mnistdiff.training.experiment import Experiment
from mnistdiff.training.loop import TrainResult, TrainTask, fit
from mnistdiff.unet import UNet
from mnistdiff.vae import VAE, vae_loss
from mnistdiff.viz import frames_grid, latent_scatter, save_grid, save_image

__all__ = ["train_ddpm", "train_vae", "train_ldm", "train_cldm", "train_flow", "make_diffusion_loss", "make_flow_loss"]


def make_diffusion_loss(sched: NoiseSchedule, scale: float | None = None, min_snr_gamma: float | None = None,
                        p_uncond: float = 0.0, prediction: str = "eps", time_sampling: str = "uniform"):
    """The ε-prediction loss for a batch; for latents (``scale`` = κ given) the batch holds [μ, σ] and z = κ·(μ + σε).

    ``min_snr_gamma``: weight it by min-SNR-γ (:func:`~mnistdiff.ddpm.min_snr_weight`); ``None``: L_simple.
    ``prediction``: the network's target, ``"eps"`` or ``"v"`` (:func:`~mnistdiff.ddpm.v_target`); t is drawn as
    ``time_sampling`` says (:func:`~mnistdiff.ddpm.sample_timesteps`). A batch ``(x, labels)`` trains a
    class-conditional model: each label is dropped to ∅ with probability ``p_uncond``
    (:func:`~mnistdiff.guidance.drop_labels`, Ho & Salimans Algorithm 1).
    """

    def loss_fn(model: nn.Module, batch: Data, gen: torch.Generator | None) -> torch.Tensor:
        labels = None
        if isinstance(batch, tuple):
            batch, labels = batch
        if scale is not None:
            mean, std = batch.chunk(2, dim=1)
            batch = scaled_sample(mean, std, scale, torch.randn(mean.shape, generator=gen, device=batch.device))
        t = sample_timesteps(sched, batch.shape[0], time_sampling, gen, batch.device)
        noise = torch.randn(batch.shape, generator=gen, device=batch.device)
        if labels is not None:
            y = drop_labels(labels, p_uncond, gen)
            return diffusion_loss(lambda x, t: model(x, t, y), sched, batch, t, noise, min_snr_gamma, prediction)
        return diffusion_loss(model, sched, batch, t, noise, min_snr_gamma, prediction)

    return loss_fn


def make_flow_loss(time_sampling: str = "uniform"):
    """The conditional flow-matching loss for a batch of images (:func:`~mnistdiff.flows.flow_matching_loss`), with
    t drawn as ``time_sampling`` says (:func:`~mnistdiff.flows.sample_time`)."""

    def loss_fn(model: nn.Module, batch: Data, gen: torch.Generator | None) -> torch.Tensor:
        assert isinstance(batch, torch.Tensor), "a flow model trains on images alone"
        t = sample_time(batch.shape[0], time_sampling, gen, batch.device)
        noise = torch.randn(batch.shape, generator=gen, device=batch.device)
        return flow_matching_loss(model, batch, t, noise)

    return loss_fn


def _data(cfg_train, data_dir: str | Path | None, device: torch.device):
    train = load_mnist("train", data_dir).subset(cfg_train.subset, cfg_train.seed)
    test = load_mnist("test", data_dir).subset(cfg_train.eval_size, cfg_train.seed)
    return train.to(device), test.to(device)


def _diffusion_samplers(sched: NoiseSchedule, shape, seed: int, n: int, device, decode=None, ddim_steps: int = 50,
                        clip_range: ClipRange = PIXEL_RANGE, conditional: bool = False, prediction: str = "eps"):
    """Epoch samples by DDIM (fast); final samples and denoising steps by full DDPM. A ``conditional`` model is
    asked for the digits 0, 1, …, 9, 0, … in turn, guided with :data:`~mnistdiff.config.DEFAULT_GUIDANCE`; a
    v-prediction model (``prediction="v"``) is sampled as the ε-network :class:`~mnistdiff.ddpm.EpsFromV`."""
    guide: dict[str, Any] = {}
    if conditional:
        guide = {"labels": balanced_labels(n, MNIST_CLASSES), "guidance": DEFAULT_GUIDANCE}

    def sample_fn(model: nn.Module, folder: Path, tag: str) -> None:
        model = eps_network(model, sched, prediction)
        x, _ = generate(model, sched, n, shape=shape, sampler="ddim", steps=min(ddim_steps, sched.num_timesteps),
                        seed=seed, device=device, decode=decode, clip_range=clip_range, **guide)
        save_grid(x, Path(folder) / f"{tag}.png")

    def final_fn(model: nn.Module, exp: Experiment) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        model = eps_network(model, sched, prediction)
        x, frames = generate(model, sched, n, shape=shape, sampler="ddpm", seed=seed, device=device, decode=decode,
                             return_intermediates=True, clip_range=clip_range, **guide)
        seconds = time.perf_counter() - t0
        save_grid(x, exp.sub("final_samples") / "ddpm_grid.png")
        steps = exp.sub("denoising_steps")
        save_image(frames_grid(frames), steps / "progression.png")
        for t, xt in frames:
            save_grid(xt, steps / f"step_{t:04d}.png")
        return {"ddpm_sampling_seconds": round(seconds, 2), "ddpm_samples": n}

    return sample_fn, final_fn


def _flow_samplers(seed: int, n: int, device: torch.device, steps: int = 32):
    """Epoch samples by Euler; final samples, with their frames, by Heun (``steps`` steps each)."""

    def sample_fn(model: nn.Module, folder: Path, tag: str) -> None:
        x, _ = generate(model, None, n, sampler="euler", steps=steps, seed=seed, device=device)
        save_grid(x, Path(folder) / f"{tag}.png")

    def final_fn(model: nn.Module, exp: Experiment) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        x, frames = generate(model, None, n, sampler="heun", steps=steps, seed=seed, device=device,
                             return_intermediates=True)
        seconds = time.perf_counter() - t0
        save_grid(x, exp.sub("final_samples") / "heun_grid.png")
        save_image(frames_grid(frames), exp.sub("denoising_steps") / "progression.png")
        return {"heun_sampling_seconds": round(seconds, 2), "heun_steps": steps, "heun_samples": n}

    return sample_fn, final_fn


def _run(task: TrainTask, out: str | Path, resume: str | Path | None, device: torch.device, progress: bool,
         compile: bool | str) -> TrainResult:
    """Fit ``task`` in a new experiment folder under ``out``, or continue the run in ``resume``."""
    exp = Experiment(resume) if resume else Experiment.create(out, task.kind)
    return fit(task, exp, device=device, resume=resume is not None, progress=progress, compile=compile)


def train_ddpm(
    cfg: DDPMRunConfig, *, out: str | Path = "experiments", device: str | torch.device = "cpu",
    data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train a pixel-space DDPM (Ho et al. 2020) and return the EMA model and its experiment folder."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = UNet(cfg.unet)
    sched = NoiseSchedule.from_config(cfg.diffusion).to(device)
    train, test = _data(cfg.train, data_dir, device)
    prediction = cfg.diffusion.prediction
    sample_fn, final_fn = _diffusion_samplers(sched, (1, 32, 32), cfg.train.seed, cfg.train.num_samples, device,
                                              prediction=prediction)
    loss_fn = make_diffusion_loss(sched, None, cfg.diffusion.min_snr_gamma, prediction=prediction,
                                  time_sampling=cfg.diffusion.time_sampling)
    task = TrainTask(cfg.kind, model, loss_fn, train.images, test.images, cfg,
                     sample_fn=sample_fn, final_fn=final_fn)
    return _run(task, out, resume, device, progress, compile)


def train_flow(
    cfg: FlowRunConfig, *, out: str | Path = "experiments", device: str | torch.device = "cpu",
    data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train a pixel-space flow-matching model (Lipman et al. 2023) on the straight path, the DDPM's UNet as its
    velocity network, and return the EMA model and its experiment folder."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = UNet(cfg.unet)
    train, test = _data(cfg.train, data_dir, device)
    sample_fn, final_fn = _flow_samplers(cfg.train.seed, cfg.train.num_samples, device)
    task = TrainTask(cfg.kind, model, make_flow_loss(cfg.time_sampling), train.images, test.images, cfg,
                     sample_fn=sample_fn, final_fn=final_fn)
    return _run(task, out, resume, device, progress, compile)


def train_vae(
    cfg: VAERunConfig, *, out: str | Path = "experiments", device: str | torch.device = "cpu",
    data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train the VAE (Kingma & Welling 2013) with loss = reconstruction + kl_weight·KL; with ``cfg.adv_weight`` > 0,
    beside a patch critic whose adversarial term sharpens the decoder (:mod:`mnistdiff.training.adversarial`)."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = VAE(cfg.vae)
    trained = VAEWithCritic(model, PatchCritic(cfg.vae.in_channels)) if cfg.adv_weight else model
    train, test = _data(cfg.train, data_dir, device)
    n = cfg.train.num_samples
    shown = test.images[:n]

    def loss_fn(m: nn.Module, batch: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        ls = cfg.vae.latent_size
        noise = torch.randn((batch.shape[0], cfg.vae.latent_channels, ls, ls), generator=gen, device=batch.device)
        if cfg.adv_weight:
            return adversarial_vae_loss(m, batch, cfg.kl_weight, cfg.adv_weight, noise)
        return vae_loss(m, batch, cfg.kl_weight, noise)[0]

    def sample_fn(m: VAE, folder: Path, tag: str) -> None:
        recon = m.reconstruct(shown)
        save_grid(torch.cat([shown, recon]), Path(folder) / f"{tag}_reconstructions.png", nrow=min(n, 16))

    def final_fn(m: VAE, exp: Experiment) -> dict[str, Any]:
        recon = m.reconstruct(shown)
        prior = m.sample_prior(n, generator=torch.Generator(device=device).manual_seed(cfg.train.seed), device=device)
        mse = float((m.reconstruct(test.images) - test.images).pow(2).mean())
        save_grid(torch.cat([shown, recon]), exp.sub("final_samples") / "reconstructions.png", nrow=min(n, 16))
        save_grid(prior, exp.sub("final_samples") / "prior_samples.png")
        means, _ = encode_dataset(m, test.images)
        latent_scatter(means, test.labels, exp.sub("latent_space") / "latent_pca.png")
        latent_scatter(means.flatten(1)[:, :2], test.labels, exp.sub("latent_space") / "latent_dims_0_1.png",
                       title="VAE latents: coordinates 0 and 1", project=False)
        return {"test_reconstruction_mse": round(mse, 6)}

    task = TrainTask(cfg.kind, trained, loss_fn, train.images, test.images, cfg, sample_fn=sample_fn,
                     final_fn=final_fn, saved_part=lambda m: m.vae if cfg.adv_weight else m)
    return _run(task, out, resume, device, progress, compile)


def train_ldm(
    cfg: LDMRunConfig, vae_checkpoint: str | Path, *, out: str | Path = "experiments",
    device: str | torch.device = "cpu", data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train a DDPM on the frozen VAE's scaled latents (Rombach et al. 2022)."""
    device = torch.device(device)
    return _run(_latent_task(cfg, vae_checkpoint, device, data_dir), out, resume, device, progress, compile)


def train_cldm(
    cfg: CLDMRunConfig, vae_checkpoint: str | Path, *, out: str | Path = "experiments",
    device: str | torch.device = "cpu", data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train a class-conditional DDPM on the VAE's latents, dropping labels with ``cfg.p_uncond`` (Ho & Salimans)."""
    device = torch.device(device)
    return _run(_latent_task(cfg, vae_checkpoint, device, data_dir), out, resume, device, progress, compile)


def _latent_task(cfg: LDMRunConfig | CLDMRunConfig, vae_checkpoint: str | Path, device: torch.device,
                 data_dir: str | Path | None) -> TrainTask:
    """The latent-diffusion task (``cfg.kind`` ldm or cldm): [μ, σ] of the encoded training set, with the labels
    for a cldm; κ = 1/std(μ) and the clip range of x̂_0 stored with the checkpoint."""
    vae = load_vae(vae_checkpoint, device)
    if cfg.unet.in_channels != vae.config.latent_channels or cfg.unet.image_size != vae.config.latent_size:
        raise CheckpointError(
            f"the latent UNet expects {cfg.unet.in_channels}×{cfg.unet.image_size}² inputs but the VAE makes "
            f"{vae.config.latent_channels}×{vae.config.latent_size}² latents"
        )
    torch.manual_seed(cfg.train.seed)
    train, test = _data(cfg.train, data_dir, device)
    mean_tr, std_tr = encode_dataset(vae, train.images)
    mean_te, std_te = encode_dataset(vae, test.images)
    scale = compute_latent_scale(mean_tr)
    # Scaled latents are not confined to [−1, 1] (unit std, tails to ±4.5): x̂_0 is clipped to the
    # range the training codes actually span instead, which keeps the first, ill-conditioned steps finite.
    clip = float((mean_tr * scale).abs().max())
    codec = LatentCodec(vae, scale)
    sched = NoiseSchedule.from_config(cfg.diffusion).to(device)
    shape = (cfg.unet.in_channels, cfg.unet.image_size, cfg.unet.image_size)
    conditional = isinstance(cfg, CLDMRunConfig)
    sample_fn, final_fn = _diffusion_samplers(sched, shape, cfg.train.seed, cfg.train.num_samples, device, codec.decode,
                                              clip_range=(-clip, clip), conditional=conditional,
                                              prediction=cfg.diffusion.prediction)
    model = UNet(cfg.unet)
    p_uncond = cfg.p_uncond if conditional else 0.0
    loss_fn = make_diffusion_loss(sched, scale, cfg.diffusion.min_snr_gamma, p_uncond, cfg.diffusion.prediction,
                                  cfg.diffusion.time_sampling)
    train_data: Data = torch.cat([mean_tr, std_tr], 1)
    eval_data: Data = torch.cat([mean_te, std_te], 1)
    if conditional:
        train_data, eval_data = (train_data, train.labels.to(device)), (eval_data, test.labels.to(device))
    return TrainTask(
        cfg.kind, model, loss_fn, train_data, eval_data, cfg, sample_fn=sample_fn, final_fn=final_fn,
        extra_meta={"latent_scale": scale, "latent_clip": clip, "vae_weights_sha256": vae.meta["weights_sha256"]},
    )
