"""Train and load each model from its config: what the command line and the notebooks both call.

``train_ddpm``, ``train_vae``, ``train_ldm`` and ``train_cldm`` build a :class:`~mnistdiff.training.loop.TrainTask`
from a run config and hand it to :func:`~mnistdiff.training.loop.fit`; ``load_ddpm``, ``load_vae``, ``load_ldm``
and ``load_cldm`` rebuild the models from a checkpoint's sidecar config and verify it on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistdiff.config import (
    DEFAULT_GUIDANCE,
    MNIST_CLASSES,
    CLDMRunConfig,
    DDPMRunConfig,
    LDMRunConfig,
    VAERunConfig,
    from_dict,
    to_dict,
)
from mnistdiff.data import load_mnist
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, SampleOutput, diffusion_loss
from mnistdiff.guidance import balanced_labels, drop_labels
from mnistdiff.latent import LatentCodec, compute_latent_scale, encode_dataset
from mnistdiff.sampling import generate
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training.batches import Data
from mnistdiff.training.checkpoints import CheckpointError, load_checkpoint, sha256_file
from mnistdiff.training.experiment import Experiment
from mnistdiff.training.loop import TrainResult, TrainTask, fit
from mnistdiff.unet import UNet
from mnistdiff.vae import VAE, vae_loss
from mnistdiff.viz import frames_grid, latent_scatter, save_grid, save_image

__all__ = [
    "DiffusionModel",
    "train_ddpm",
    "train_vae",
    "train_ldm",
    "train_cldm",
    "load_ddpm",
    "load_vae",
    "load_ldm",
    "load_cldm",
    "make_diffusion_loss",
]


@dataclass
class DiffusionModel:
    """A trained ε-network with its schedule; ``codec`` is set for latent diffusion."""

    unet: UNet
    schedule: NoiseSchedule
    config: DDPMRunConfig | LDMRunConfig | CLDMRunConfig
    meta: dict[str, Any]
    codec: LatentCodec | None = None
    clip_range: ClipRange = PIXEL_RANGE  # what x̂_0 is clipped to while sampling (the latent range for an LDM)
    fast: str = "off"  # how ``sample`` runs the network by default (``generate``'s ``fast``)

    @property
    def num_classes(self) -> int | None:
        """The classes a class-conditional model can be asked for (``sample(labels=…)``); ``None``: unconditional."""
        return self.unet.config.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return (c.in_channels, c.image_size, c.image_size)

    def sample(self, num_samples: int, **kwargs: Any) -> SampleOutput:
        """:func:`~mnistdiff.sampling.generate` with this model's shape and decoder (``labels``, ``guidance``: a
        class-conditional model's digits and guidance weight)."""
        decode = self.codec.decode if self.codec is not None else None
        kwargs.setdefault("clip_range", self.clip_range)
        kwargs.setdefault("fast", self.fast)
        return generate(self.unet, self.schedule, num_samples, shape=self.sample_shape, decode=decode, **kwargs)


def make_diffusion_loss(sched: NoiseSchedule, scale: float | None = None, min_snr_gamma: float | None = None,
                        p_uncond: float = 0.0):
    """The ε-prediction loss for a batch; for latents (``scale`` = κ given) the batch holds [μ, σ] and z = κ·(μ + σε).

    ``min_snr_gamma``: weight it by min-SNR-γ (:func:`~mnistdiff.ddpm.min_snr_weight`); ``None``: L_simple.
    A batch ``(x, labels)`` trains a class-conditional model: each label is dropped to ∅ with probability
    ``p_uncond`` (:func:`~mnistdiff.guidance.drop_labels`, Ho & Salimans Algorithm 1).
    """

    def loss_fn(model: nn.Module, batch: Data, gen: torch.Generator | None) -> torch.Tensor:
        labels = None
        if isinstance(batch, tuple):
            batch, labels = batch
        if scale is not None:
            mean, std = batch.chunk(2, dim=1)
            eps_z = torch.randn(mean.shape, generator=gen, device=batch.device)
            batch = (mean + std * eps_z) * scale
        t = torch.randint(0, sched.num_timesteps, (batch.shape[0],), generator=gen, device=batch.device)
        noise = torch.randn(batch.shape, generator=gen, device=batch.device)
        if labels is not None:
            y = drop_labels(labels, p_uncond, gen)
            return diffusion_loss(lambda x, t: model(x, t, y), sched, batch, t, noise, min_snr_gamma)
        return diffusion_loss(model, sched, batch, t, noise, min_snr_gamma)

    return loss_fn


def _data(cfg_train, data_dir: str | Path | None, device: torch.device):
    train = load_mnist("train", data_dir).subset(cfg_train.subset, cfg_train.seed)
    test = load_mnist("test", data_dir).subset(cfg_train.eval_size, cfg_train.seed)
    return train.to(device), test.to(device)


def _diffusion_samplers(sched: NoiseSchedule, shape, seed: int, n: int, device, decode=None, ddim_steps: int = 50,
                        clip_range: ClipRange = PIXEL_RANGE, conditional: bool = False):
    """Epoch samples by DDIM (fast); final samples and denoising steps by full DDPM. A ``conditional`` model is
    asked for the digits 0, 1, …, 9, 0, … in turn, guided with :data:`~mnistdiff.config.DEFAULT_GUIDANCE`."""
    guide: dict[str, Any] = {}
    if conditional:
        guide = {"labels": balanced_labels(n, MNIST_CLASSES), "guidance": DEFAULT_GUIDANCE}

    def sample_fn(model: nn.Module, folder: Path, tag: str) -> None:
        x, _ = generate(model, sched, n, shape=shape, mode="ddim", ddim_steps=min(ddim_steps, sched.num_timesteps),
                        seed=seed, device=device, decode=decode, clip_range=clip_range, **guide)
        save_grid(x, Path(folder) / f"{tag}.png")

    def final_fn(model: nn.Module, exp: Experiment) -> dict[str, Any]:
        import time

        t0 = time.perf_counter()
        x, frames = generate(model, sched, n, shape=shape, mode="ddpm", seed=seed, device=device, decode=decode,
                             return_intermediates=True, clip_range=clip_range, **guide)
        seconds = time.perf_counter() - t0
        save_grid(x, exp.sub("final_samples") / "ddpm_grid.png")
        steps = exp.sub("denoising_steps")
        save_image(frames_grid(frames), steps / "progression.png")
        for t, xt in frames:
            save_grid(xt, steps / f"step_{t:04d}.png")
        return {"ddpm_sampling_seconds": round(seconds, 2), "ddpm_samples": n}

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
    sample_fn, final_fn = _diffusion_samplers(sched, (1, 32, 32), cfg.train.seed, cfg.train.num_samples, device)
    loss_fn = make_diffusion_loss(sched, None, cfg.diffusion.min_snr_gamma)
    task = TrainTask("ddpm", model, loss_fn, train.images, test.images, cfg.train, to_dict(cfg),
                     sample_fn=sample_fn, final_fn=final_fn)
    return _run(task, out, resume, device, progress, compile)


def train_vae(
    cfg: VAERunConfig, *, out: str | Path = "experiments", device: str | torch.device = "cpu",
    data_dir: str | Path | None = None, resume: str | Path | None = None,
    progress: bool = True, compile: bool | str = False,
) -> TrainResult:
    """Train the VAE (Kingma & Welling 2013) with loss = reconstruction + kl_weight·KL."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    model = VAE(cfg.vae)
    train, test = _data(cfg.train, data_dir, device)
    n = cfg.train.num_samples
    shown = test.images[:n]

    def loss_fn(m: nn.Module, batch: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        ls = cfg.vae.latent_size
        noise = torch.randn((batch.shape[0], cfg.vae.latent_channels, ls, ls), generator=gen, device=batch.device)
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

    task = TrainTask("vae", model, loss_fn, train.images, test.images, cfg.train, to_dict(cfg),
                     sample_fn=sample_fn, final_fn=final_fn)
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
    vae, _, _ = load_vae(vae_checkpoint, device)
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
                                              clip_range=(-clip, clip), conditional=conditional)
    model = UNet(cfg.unet)
    vae_sha = sha256_file(vae_checkpoint)
    p_uncond = cfg.p_uncond if conditional else 0.0
    loss_fn = make_diffusion_loss(sched, scale, cfg.diffusion.min_snr_gamma, p_uncond)
    train_data: Data = torch.cat([mean_tr, std_tr], 1)
    eval_data: Data = torch.cat([mean_te, std_te], 1)
    if conditional:
        train_data, eval_data = (train_data, train.labels.to(device)), (eval_data, test.labels.to(device))
    return TrainTask(
        cfg.kind, model, loss_fn, train_data, eval_data, cfg.train, to_dict(cfg), sample_fn=sample_fn,
        final_fn=final_fn, extra_state={"latent_scale": scale, "latent_clip": clip},
        extra_sidecar={"latent_scale": scale, "latent_clip": clip, "vae_sha256": vae_sha},
    )


def _load_state(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model its sidecar describes: {err}") from err


def load_ddpm(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a DDPM checkpoint (EMA weights) written by :func:`train_ddpm`; verified, weights only."""
    state, meta = load_checkpoint(path, kind="ddpm", map_location=device)
    cfg = from_dict(DDPMRunConfig, meta["config"])
    unet = UNet(cfg.unet)
    _load_state(unet, state, path)
    return DiffusionModel(unet.to(device).eval(), NoiseSchedule.from_config(cfg.diffusion), cfg, meta)


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, VAERunConfig, dict[str, Any]]:
    """Load a VAE checkpoint written by :func:`train_vae`."""
    state, meta = load_checkpoint(path, kind="vae", map_location=device)
    cfg = from_dict(VAERunConfig, meta["config"])
    vae = VAE(cfg.vae)
    _load_state(vae, state, path)
    return vae.to(device).eval(), cfg, meta


def load_ldm(vae_path: str | Path, unet_path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a latent-diffusion UNet and the VAE it was trained on; refuses a VAE other than that one."""
    return _load_latent(LDMRunConfig, vae_path, unet_path, device)


def load_cldm(vae_path: str | Path, unet_path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a class-conditional latent UNet (:func:`train_cldm`) and its VAE; sample with ``labels=y, guidance=w``."""
    return _load_latent(CLDMRunConfig, vae_path, unet_path, device)


def _load_latent(cls: type[LDMRunConfig] | type[CLDMRunConfig], vae_path: str | Path, unet_path: str | Path,
                 device: str | torch.device) -> DiffusionModel:
    kind = cls().kind
    state, meta = load_checkpoint(unet_path, kind=kind, map_location=device)
    vae, _, _ = load_vae(vae_path, device)
    if meta.get("vae_sha256") and sha256_file(vae_path) != meta["vae_sha256"]:
        raise CheckpointError(
            f"{unet_path} was trained on a different VAE than {vae_path} (SHA-256 differs): "
            "pass the VAE checkpoint it was trained with"
        )
    cfg = from_dict(cls, meta["config"])
    unet = UNet(cfg.unet)
    _load_state(unet, state, unet_path)
    return DiffusionModel(unet.to(device).eval(), NoiseSchedule.from_config(cfg.diffusion), cfg, meta,
                          codec=LatentCodec(vae, float(state["latent_scale"])),
                          clip_range=_latent_clip_range(state))


def _latent_clip_range(state: dict[str, Any]) -> ClipRange:
    """``(−c, c)`` for the range ``c`` stored with a latent checkpoint; [−1, 1] for one stored without it."""
    if "latent_clip" not in state:
        return PIXEL_RANGE
    c = float(state["latent_clip"])
    return (-c, c)
