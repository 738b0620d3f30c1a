# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Latent diffusion: diffusing codes instead of pixels
#
# Chapter 4 ended with a VAE that compresses a digit into 32 numbers and decodes them back well —
# but whose prior $\mathcal N(0, I)$ is a poor guide to where the codes of real digits lie. Chapters 2
# and 3 built a model that is very good at exactly that: learning a distribution and sampling from
# it. **Latent diffusion** (Rombach et al., *High-Resolution Image Synthesis with Latent Diffusion
# Models*, [arXiv:2112.10752](https://arxiv.org/abs/2112.10752)) combines the two: freeze the
# autoencoder, train a diffusion model on its codes, and decode only once, at the very end.
#
# $$
# \underbrace{x \xrightarrow{\;E\;} z_0}_{\text{training data}} \qquad
# \underbrace{z_T \sim \mathcal N(0, I) \xrightarrow{\;\epsilon_\theta,\ T \text{ steps}\;} z_0 \xrightarrow{\;D\;} \tilde x}_{\text{sampling}}
# $$
#
# Every denoising step now works on a $2 \times 4 \times 4$ tensor instead of a $1 \times 32 \times 32$
# image; the perceptual detail is the decoder's job, and the diffusion model only has to learn
# which codes are digits.
#
# **Learning goals.** After this chapter you can
#
# - explain why the codes must be **rescaled** before diffusion, and compute the latent scale $\kappa$, and show by a
#   short training run what goes wrong without it;
# - write the encoding and decoding that wrap a diffusion model in latent space, and its training loss;
# - sample with DDPM and DDIM in latent space and follow a trajectory through the decoder;
# - say what latent diffusion gains (cost per step) and what bounds it (the decoder's quality).
#
# **Run time.** about five minutes on two CPU cores with the committed `book` checkpoints (two of
# them the short training runs on scaled and unscaled codes); measured times in the
# [introduction](../intro.md). Symbols follow the course's [notation](../notation.md).
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# Under `MNISTDIFF_PROFILE=smoke` (the test suite's profile) the VAE and the latent model train for
# seconds on 1,024 digits with $T = 100$: the decoded samples are blobs, the code statistics and FIDs
# are far from the `book` profile's, and the short runs on scaled and unscaled codes are too short to
# tell apart. The numbers quoted in the text are the `book` profile's; the checks against the
# package hold in every profile.
# :::

# %%
import time

T_START = time.perf_counter()

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnistdiff import VAE, LatentCodec, NoiseSchedule, UNet, compute_latent_scale, encode_dataset, generate, make_diffusion_loss
from mnistdiff import DDPMRunConfig, LDMRunConfig, VAEConfig, count_parameters
from mnistdiff import DEFAULT_ETA, default_device, get_ldm, get_profile, get_vae, load_mnist
from mnistdiff import frames_grid, plot_loss_curves, show_grid

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# **Where this chapter ends.** Digits from diffusion in the VAE's 2×4×4 latent space: this profile's
# trained latent model (loaded, or trained if missing), DDIM with `PROFILE.ddim_steps` steps and the
# package's default $\eta$, each latent decoded by chapter 4's VAE.

# %%
preview = get_ldm(device=DEVICE, progress=False)
show_grid(preview.sample(32, sampler="ddim", steps=PROFILE.ddim_steps, seed=SEED, device=DEVICE)[0], nrow=16,
          title=f"latent diffusion ({PROFILE.name} profile), DDIM-{PROFILE.ddim_steps}, decoded")
plt.show()

# %% [markdown]
# ## The same diffusion model, on a different space
#
# Nothing about DDPM cares what its data are. Rombach et al. (eq. 2) simply replace the image $x$
# in Ho et al.'s loss by its code $z = E(x)$:
#
# $$
# L_{\mathrm{LDM}} = \mathbb E_{E(x),\, \epsilon \sim \mathcal N(0, I),\, t}
# \Big[\big\lVert \epsilon - \epsilon_\theta(z_t, t) \big\rVert_2^2\Big],
# \qquad z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon .
# $$
#
# The network $\epsilon_\theta$ is the UNet of chapter 1, configured for $2 \times 4 \times 4$
# inputs: two resolution levels ($4 \to 2$) instead of three, and more channels, because each of
# its 16 positions carries more information than a pixel does. The full profile's two networks:

# %%
# NBVAL_CHECK_OUTPUT
vae_cfg, ldm_unet_cfg, pixel_unet_cfg = VAEConfig(), LDMRunConfig().unet, DDPMRunConfig().unet
latent_shape = (vae_cfg.latent_channels, vae_cfg.latent_size, vae_cfg.latent_size)
print("VAE latent:          ", latent_shape)
print("latent UNet input:   ", (ldm_unet_cfg.in_channels, ldm_unet_cfg.image_size, ldm_unet_cfg.image_size))
print("pixel UNet input:    ", (pixel_unet_cfg.in_channels, pixel_unet_cfg.image_size, pixel_unet_cfg.image_size))
print(f"latent UNet: {count_parameters(UNet(ldm_unet_cfg)):,} parameters; "
      f"pixel UNet: {count_parameters(UNet(pixel_unet_cfg)):,} parameters")

# %% [markdown]
# The latent UNet has *more* parameters — but a convolution's cost is its parameters times the
# number of positions it slides over, 16 instead of 1024. Counting the floating-point operations of
# one denoising step (one network call, per sample) makes the point:


# %%
def mflops_per_sample(model: torch.nn.Module, shape: tuple[int, ...], *extra: torch.Tensor) -> float:
    """Floating-point operations of one forward pass on one sample, in millions (torch's FLOP counter)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape), *extra)
    return counter.get_total_flops() / 1e6


t0 = torch.zeros(1, dtype=torch.long)
pixel_step = mflops_per_sample(UNet(pixel_unet_cfg), (1, 32, 32), t0)
latent_step = mflops_per_sample(UNet(ldm_unet_cfg), latent_shape, t0)
decoder = mflops_per_sample(VAE(vae_cfg).decoder, latent_shape)
print(f"one step, pixel UNet:  {pixel_step:7.1f} MFLOP per sample")
print(f"one step, latent UNet: {latent_step:7.1f} MFLOP per sample  ({pixel_step / latent_step:.0f}× cheaper)")
print(f"decoding once:         {decoder:7.1f} MFLOP per sample  (paid once, not at every step)")

# %% [markdown]
# ## The frozen first stage
#
# The VAE is trained first and then frozen: the diffusion model never changes it. `get_vae` loads
# the one chapter 4 trained (or trains it now, if this notebook runs on its own).

# %%
vae = get_vae(device=DEVICE, progress=False)
vae.requires_grad_(False)
print(f"VAE: {sum(p.numel() for p in vae.parameters()):,} parameters, {count_parameters(vae)} of them trainable; "
      f"latent {vae.config.latent_channels}×{vae.config.latent_size}×{vae.config.latent_size}")

# %% [markdown]
# ## What the codes look like
#
# The diffusion model is trained on the codes of the training images, exactly the images its
# training run uses. Let us encode them and look at their distribution, channel by channel. Recall
# from chapter 4 that with its tiny KL weight the VAE is under almost no pressure to produce codes
# of unit scale.

# %%
train = load_mnist("train").subset(PROFILE.ldm.train.subset, PROFILE.ldm.train.seed)
means, stds = encode_dataset(vae, train.images.to(DEVICE))
means, stds = means.cpu(), stds.cpu()
print(f"{len(train):,} training codes of shape {tuple(means.shape[1:])}")
for c in range(means.shape[1]):
    print(f"  channel {c}: mean {means[:, c].mean().item():+.3f}, std {means[:, c].std().item():.3f}; "
          f"posterior σ median {stds[:, c].median().item():.4f}")
print(f"  all entries: std {means.std().item():.3f}")

# %% [markdown]
# ## The latent scale factor
#
# Why should the scale of the codes matter? Look at the forward process,
# $z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$. Its **signal-to-noise ratio**
#
# $$
# \mathrm{SNR}(t) = \frac{\bar\alpha_t \operatorname{Var}(z_0)}{1 - \bar\alpha_t}
# $$
#
# depends on the data's variance. The noise schedule was designed for data of about unit scale
# (images in $[-1, 1]$): it destroys information at a chosen pace, and at $t = T$ nothing of
# $z_0$ is left, so sampling can start from $\mathcal N(0, I)$. Codes with standard deviation
# $\sigma_z$ shift the whole $\ln \mathrm{SNR}$ curve by $2 \ln \sigma_z$: with $\sigma_z = 5$,
# the steps that should remove the last detail would still see 25 times too much signal, and $z_T$
# would still remember $z_0$. Rombach et al. (§4.3.2 and appendix G) therefore **rescale the
# codes** by one factor computed from the data before training,
#
# $$
# \kappa = \frac{1}{\hat\sigma_z}, \qquad
# \hat\sigma_z^2 = \frac{1}{NJ - 1} \sum_{i=1}^{N} \sum_{j=1}^{J} \big(z_{ij} - \bar z\big)^2 ,
# $$
#
# over all $J = 32$ entries of all $N$ training codes (Stable Diffusion's well-known `scale_factor`
# 0.18215 is this number for its autoencoder; Rombach et al. call it $s$, a letter this course keeps
# for the cosine schedule's offset). The diffusion model sees $\kappa z$, which has unit variance.
# From the definition:


# %%
def latent_scale(codes: torch.Tensor) -> float:
    """κ = 1 / σ̂_z, σ̂_z the sample standard deviation of all entries of the codes (N, C, h, w)."""
    z = codes.double().flatten()
    return 1.0 / torch.sqrt(((z - z.mean()) ** 2).sum() / (z.numel() - 1)).item()


scale = latent_scale(means)
torch.testing.assert_close(scale, compute_latent_scale(means), rtol=1e-5, atol=0)
print(f"κ = {scale:.4f}   (matches mnistdiff.latent.compute_latent_scale)")

# %% [markdown]
# The histograms below show every entry of the codes, channel by channel, before (top) and after
# (bottom) scaling, next to the standard normal that the diffusion model's noise comes from. The
# scale fixes the spread, not the shape: the codes are neither centred exactly nor Gaussian — they
# do not have to be; the diffusion model learns their real distribution. Right: $\ln \mathrm{SNR}$ of
# the forward process for unscaled and scaled codes, and for the pixel images of chapter 2.

# %%
grid = np.linspace(-4, 4, 200)
normal_pdf = np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi)
C = means.shape[1]
fig = plt.figure(figsize=(3.2 * C + 4.2, 5.2))
gs = fig.add_gridspec(2, C + 1, width_ratios=[1] * C + [1.3])
for row, (codes, name) in enumerate(((means, "z"), (means * scale, "κz"))):
    for c in range(C):
        v = codes[:, c].flatten().numpy()
        ax = fig.add_subplot(gs[row, c])
        ax.hist(v, bins=60, range=(-4, 4), density=True, alpha=0.7, color=f"C{c}")
        ax.plot(grid, normal_pdf, "k--", lw=1, label="N(0, 1)")
        ax.set_title(f"{name}, channel {c}: mean {v.mean():+.2f}, std {v.std():.2f}", fontsize=9)
        ax.set_yticks([])
        if c == 0:
            ax.legend(fontsize=8, loc="upper left")
sched = NoiseSchedule.from_config(PROFILE.ldm.diffusion)
abar = sched.alphas_cumprod.double()
ax = fig.add_subplot(gs[:, C])
for var, label, style in ((train.images.var().item(), "pixels (chapter 2)", ":"),
                          (means.var().item(), f"codes z (std {means.std().item():.2f})", "--"),
                          (1.0, "scaled codes κz", "-")):
    ax.plot(torch.arange(1, len(abar) + 1).numpy(), torch.log(abar * var / (1 - abar)).numpy(), style, label=label)
ax.axhline(0, color="0.6", lw=0.8)
ax.set(xlabel="timestep t", ylabel="ln SNR(t)", title="signal-to-noise ratio of z_t", ylim=(-14, 12))
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# :::{admonition} Exercise 5.1 (derivation): where the unscaled codes' signal runs out
# :class: tip
# For codes of standard deviation $\sigma_z$, write $\ln \mathrm{SNR}(t)$ of the forward process in
# terms of the unit-variance one. At which timestep are signal and noise equal ($\mathrm{SNR} = 1$)
# for scaled codes, for this VAE's unscaled codes, and for codes five times as spread out? And how
# much signal is left at $t = T$ in each case?
# :::
#
# :::{admonition} Solution 5.1
# :class: dropdown
# $\mathrm{SNR}_{\sigma_z}(t) = \sigma_z^2\, \bar\alpha_t / (1 - \bar\alpha_t)$, so
# $\ln \mathrm{SNR}_{\sigma_z}(t) = \ln \mathrm{SNR}_1(t) + 2 \ln \sigma_z$: the curve moves up by
# $2\ln\sigma_z$ and keeps its shape. The crossing $\mathrm{SNR} = 1$ moves later, so more of the
# steps are spent on codes that are still mostly signal, and the coarse structure is decided in fewer
# of them. At the very end the cosine schedule is so steep (the last column: an SNR far below
# $10^{-4}$) that even $\sigma_z = 5$ leaves almost nothing of $z_0$: the harm of unscaled codes is the
# misplaced middle of the trajectory, not the starting point.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 5.1: the SNR = 1 crossing and the signal left at t = T, for three spreads of the codes.
log_snr = torch.log(abar / (1 - abar))  # ln SNR of unit-variance codes; entry i is t = i + 1
for name, sigma_z in (("scaled codes", 1.0), ("this VAE's codes", means.std().item()),
                      ("five times as spread", 5 * means.std().item())):
    shifted = log_snr + 2 * math.log(sigma_z)
    crossing = int((shifted >= 0).nonzero().max()) + 1  # the last t with SNR ≥ 1 (index + 1)
    print(f"{name:<22} σ_z = {sigma_z:5.2f}: SNR = 1 at t = {crossing:4d} of T = {len(abar)}; "
          f"SNR at t = T: {shifted[-1].exp().item():.1e}")

# %% [markdown]
# ## Encoding and decoding around the diffusion model
#
# With $\kappa$ fixed, the two maps between images and the diffusion model's space are one line each.
# Encoding takes the posterior **mean** (for a deterministic code of a given image); decoding
# undoes the scale and calls the decoder:
#
# $$
# \mathcal E(x) = \kappa\, \mu_\phi(x), \qquad \mathcal D(z) = \operatorname{clip}_{[-1, 1]}\!\big(D(z / \kappa)\big).
# $$


# %%
@torch.no_grad()
def encode(x: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, 32, 32) → scaled codes κ·μ(x), (B, C, 4, 4)."""
    return vae.encode(x).mean * scale


@torch.no_grad()
def decode(z: torch.Tensor) -> torch.Tensor:
    """Scaled codes (B, C, 4, 4) → images D(z / κ) clipped to [−1, 1]."""
    return vae.decode(z / scale).clamp(-1.0, 1.0)


codec = LatentCodec(vae, scale)
x = load_mnist("test").images[: PROFILE.num_samples].to(DEVICE)
torch.testing.assert_close(encode(x), codec.encode(x))
torch.testing.assert_close(decode(encode(x)), codec.decode(codec.encode(x)))
print("our encode/decode match mnistdiff.latent.LatentCodec")

# %% [markdown]
# ## Training the latent diffusion model
#
# Training is chapter 2's loop with one change at the start of each batch: the code is drawn from
# the posterior, $z_0 = \kappa\,(\mu + \sigma \odot \epsilon_z)$ — the reparameterisation of chapter 4 —
# rather than taken at its mean, so that the model also learns the small neighbourhood of each code
# the decoder accepts. `get_ldm` loads `checkpoints/<profile>/ldm.safetensors` if it was trained on *this*
# VAE (its header stores the SHA-256 of the VAE's weights and the scale) and trains it otherwise, with
# `mnistdiff.training.pipelines.train_ldm`.

# %%
ldm = get_ldm(device=DEVICE, progress=False)
cfg = PROFILE.ldm
print(f"{cfg.train.epochs} epochs on {cfg.train.subset or 60_000:,} codes, batch {cfg.train.batch_size}, "
      f"T = {ldm.schedule.num_timesteps} ({cfg.diffusion.schedule} schedule)")
print(f"{count_parameters(ldm.unet):,} parameters; trained in {ldm.meta['seconds']:.0f} s on {ldm.meta['metrics']['device']}")
torch.testing.assert_close(ldm.codec.scale, scale, rtol=1e-4, atol=0)
print(f"the checkpoint's scale factor {ldm.codec.scale:.4f} is the one we computed")
plot_loss_curves(ldm.meta["history"])
plt.show()

# %% [markdown]
# The training objective, written out: draw the code, a timestep and the noise from one seeded
# generator, noise the code, and score the network's noise prediction. With the same generator it
# gives exactly the loss of `mnistdiff.training.pipelines.make_diffusion_loss`, on which the model above
# was trained:


# %%
def ldm_loss(unet: torch.nn.Module, sched, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """L_LDM on a batch of posteriors (μ, σ): z_0 = κ(μ + σ ε_z), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, ‖ε − ε_θ(z_t, t)‖²."""
    z0 = scale * (mean + std * torch.randn(mean.shape, generator=gen, device=mean.device))
    t = torch.randint(0, sched.num_timesteps, (mean.shape[0],), generator=gen, device=mean.device)
    eps = torch.randn(z0.shape, generator=gen, device=mean.device)
    abar = sched.alphas_cumprod.to(mean.device)[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    return (unet(z_t, t) - eps).pow(2).mean()


batch_mean, batch_std = means[:256].to(DEVICE), stds[:256].to(DEVICE)
with torch.no_grad():
    ours = ldm_loss(ldm.unet, ldm.schedule, batch_mean, batch_std, torch.Generator(device=DEVICE).manual_seed(SEED))
    package = make_diffusion_loss(ldm.schedule.to(DEVICE), scale)(
        ldm.unet, torch.cat([batch_mean, batch_std], 1), torch.Generator(device=DEVICE).manual_seed(SEED))
torch.testing.assert_close(ours, package, rtol=1e-4, atol=1e-6)
print(f"our L_LDM matches make_diffusion_loss: {ours.item():.4f} on {len(batch_mean)} training codes "
      "(an untrained network scores ≈ 1)")

# %% [markdown]
# ## Sampling: denoise in latent space, decode once
#
# Sampling is chapter 2's ancestral sampler (or chapter 3's DDIM) on $2 \times 4 \times 4$ tensors,
# followed by one call of the decoder:
#
# $$
# z_T \sim \mathcal N(0, I), \qquad z_{t-1} \sim p_\theta(z_{t-1} \mid z_t) \ \ (t = T, \dots, 1),
# \qquad \tilde x = D(z_0 / \kappa).
# $$
#
# The package's sampler `mnistdiff.sampling.generate` takes the decoder as an argument and calls it
# on the final code (and on the intermediate codes it saves). We hand it *our* `decode`, wrapped so
# that it also keeps every code it is given — that way we can look at the codes themselves. With
# the same seed, the digits equal those of `ldm.sample`, which decodes with the checkpoint's codec.
# One more argument matters: `clip_range`. A pixel sampler clips its running estimate $\hat x_0$
# to $[-1, 1]$; scaled codes have unit spread and tails well beyond $\pm 1$, so the latent sampler
# clips $\hat x_0$ to $[-c, c]$, where $c = \max |\kappa z|$ over the training codes, stored with the
# checkpoint (`ldm.clip_range`). Some clipping is still needed: at $t = T$ the estimate
# $\hat x_0$ is divided by $\sqrt{\bar\alpha_T}$ (chapter 3), and unclipped codes blow up.
# And `precision=ldm.precision` runs the network in the precision measured fastest on this machine when the
# model was loaded (float32 or bf16 autocast), as `ldm.sample` does, so the two give the same digits.


# %%
def sample_with_codes(n: int, **kwargs) -> tuple[torch.Tensor, list, list[torch.Tensor]]:
    """Sample n digits with our decode; returns (images, decoded frames, codes).

    codes[0] is the final z_0; codes[1:] are the saved intermediate codes, in the order of the frames.
    """
    codes: list[torch.Tensor] = []

    def decode_keeping_codes(z: torch.Tensor) -> torch.Tensor:
        codes.append(z.detach().cpu())
        return decode(z)

    images, frames = generate(ldm.unet, ldm.schedule, n, shape=ldm.sample_shape, seed=SEED, device=DEVICE,
                              clip_range=ldm.clip_range, precision=ldm.precision,
                              batch_size=n, decode=decode_keeping_codes, **kwargs)
    return images, frames, codes


start = time.perf_counter()
ddpm_images, frames, codes = sample_with_codes(PROFILE.num_samples, sampler="ddpm", return_intermediates=True)
ddpm_seconds = time.perf_counter() - start
package_images, _ = ldm.sample(PROFILE.num_samples, sampler="ddpm", seed=SEED, device=DEVICE)
torch.testing.assert_close(ddpm_images, package_images)
print(f"our decode around the sampler equals ldm.sample: {PROFILE.num_samples} samples in {ddpm_seconds:.2f} s "
      f"({ldm.schedule.num_timesteps} DDPM steps)")

start = time.perf_counter()
ddim_images, _ = ldm.sample(PROFILE.num_samples, sampler="ddim", steps=PROFILE.ddim_steps, seed=SEED, device=DEVICE)
print(f"DDIM: {PROFILE.num_samples} samples in {time.perf_counter() - start:.2f} s ({PROFILE.ddim_steps} steps, "
      f"η = {DEFAULT_ETA:g})")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
show_grid(ddpm_images, nrow=8, title=f"latent diffusion, DDPM ({ldm.schedule.num_timesteps} steps)", ax=axes[0])
show_grid(ddim_images, nrow=8, title=f"latent diffusion, DDIM ({PROFILE.ddim_steps} steps)", ax=axes[1])
plt.show()

# %% [markdown]
# ## A trajectory, through the decoder
#
# What does the diffusion model see while it samples? Below, one trajectory from $t = T$ (left) to
# $t = 0$ (right): the two latent channels as $4 \times 4$ images (colour: the value of each entry),
# and what the decoder makes of the current code. Early codes are noise, which the decoder renders
# as a vague average digit; as the noise is removed, the code moves to where the digits are.

# %%
picks = np.linspace(0, len(frames) - 1, min(11, len(frames))).round().astype(int)
trajectory = codes[1:]  # the codes behind the decoded frames
lim = float(max(trajectory[i][0].abs().max() for i in picks))
fig, axes = plt.subplots(C + 1, len(picks), figsize=(1.05 * len(picks), 1.15 * (C + 1)))
for col, i in enumerate(picks):
    t, decoded = frames[i]
    for c in range(C):
        axes[c, col].imshow(trajectory[i][0, c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[C, col].imshow(decoded[0, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0, col].set_title(f"t = {t}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
for c in range(C):
    axes[c, 0].set_ylabel(f"z, ch. {c}", fontsize=8)
axes[C, 0].set_ylabel("D(z / κ)", fontsize=8)
fig.tight_layout(pad=0.2)
plt.show()

# %% [markdown]
# The same decoded progression for several samples (rows), $t = T \to 0$ from left to right:

# %%
plt.figure(figsize=(8, 6))
plt.imshow(frames_grid(frames), cmap="gray", vmin=0, vmax=255)
plt.axis("off")
plt.title("latent DDPM trajectories, decoded through the VAE")
plt.show()

# %% [markdown]
# ## Do the generated codes look like real codes?
#
# A check of the diffusion model on its own terms, before any decoding: the statistics of
# generated codes against those of the scaled training codes it learned from. One detail deserves
# a look. An image sampler clips its running estimate $\hat x_0$ to the pixel range $[-1, 1]$ at
# every step (chapter 2); codes have no such range — a good fraction of the scaled codes' entries
# lie outside $[-1, 1]$ — which is why the latent sampler clips at the stored $\pm c$ instead, so
# that the generated codes can reach as far as the real ones do.
# Chapter 6 then compares the decoded digits with real ones.

# %%
n_check = PROFILE.eval_samples
_, _, generated = sample_with_codes(n_check, sampler="ddim", steps=PROFILE.ddim_steps)
z_gen, z_real = generated[0], means * scale
print(f"{'':10}{'real scaled codes':>40}{f'{n_check} generated codes (DDIM)':>44}")
for c in range(C):
    r, g = z_real[:, c], z_gen[:, c]
    print(f"channel {c}:  mean {r.mean().item():+.3f}  std {r.std().item():.3f}  max |z| {r.abs().max().item():5.2f}"
          f"      mean {g.mean().item():+.3f}  std {g.std().item():.3f}  max |z| {g.abs().max().item():5.2f}")
print(f"entries outside [-1, 1]: real {(z_real.abs() > 1).float().mean().item():.1%}, "
      f"generated {(z_gen.abs() > 1).float().mean().item():.1%}")

# %% [markdown]
# **How to read the table** (the numbers are the `book` profile's). Per channel, the generated codes'
# means and spreads agree with the real ones to about 0.02 (channel 0: mean +0.09 against +0.10,
# std 0.95 against 0.97; channel 1: −0.34 against −0.33, 0.98 against 0.99): the model puts its codes
# where the real ones are, and spreads them as widely. About a third of the entries lie outside
# $[-1, 1]$ in both (33.3 % real; 32.6 % or 32.7 % generated, as the run picked bf16 or float32 for
# speed), the share a pixel-range clip would have cut off. The
# largest entries, $\max|z|$, fall a little short (3.2 and 4.0 against 3.5 and 4.4), but they are the
# maxima of 2,000 generated codes against 60,000 real ones, and the maximum of more draws is larger:
# on its own that is no sign of missing tails. What the table cannot say is whether the 32 entries of
# a generated code *belong together*, whether the code is a digit's: matching marginals are
# necessary, not sufficient. Chapter 6 answers that on the decoded images.
#
# :::{admonition} Exercise 5.2 (a change to the code): the clip range of the latent sampler
# :class: tip
# Sample 64 codes with DDIM three times from the same noise: with the stored range `ldm.clip_range`,
# with the pixel range $[-1, 1]$, and with no clipping (`clip_range=None`). *Predict* what happens to the
# spread of the generated codes and to the decoded digits in each case, then look.
# :::
#
# :::{admonition} Solution 5.2
# :class: dropdown
# $[-1, 1]$ is too narrow for codes of unit spread: every step pulls $\hat z_0$ inside it, the generated
# codes come out with a smaller spread than real ones, and the decoded digits are fainter and more
# alike. Without clipping, the first step's $\hat z_0 = (z_T - \sqrt{1-\bar\alpha}\,\hat\epsilon) / \sqrt{\bar\alpha}$
# amplifies the network's error by $1/\sqrt{\bar\alpha_T}$ (chapter 3), and nothing pulls it back:
# compare the spreads below with the real codes' spread of 1.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 5.2: three clip ranges, the same noise; the spread of the codes and the decoded digits.
clip_ranges = {f"stored (±{ldm.clip_range[1]:.2f})": ldm.clip_range, "pixel range (±1)": (-1.0, 1.0), "none": None}
fig, axes = plt.subplots(1, 3, figsize=(12, 2.6))
for ax, (name, clip) in zip(axes, clip_ranges.items()):
    codes_c, _ = generate(ldm.unet, ldm.schedule, 64, shape=ldm.sample_shape, sampler="ddim", steps=PROFILE.ddim_steps,
                          seed=SEED, device=DEVICE, clip_range=clip, precision=ldm.precision)
    print(f"clip {name:<18} generated codes: std {codes_c.std().item():.3f}, max |z| {codes_c.abs().max().item():.2f}"
          f"   (real scaled codes: std {(means * scale).std().item():.3f})")
    show_grid(decode(codes_c.to(DEVICE)).cpu(), nrow=16, ax=ax, title=f"clip: {name}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Does the scale matter? A short run on scaled and unscaled codes
#
# The SNR curves above are an argument; here is the experiment. We train three copies of a small
# latent UNet (the smoke profile's) for the same few hundred steps on the same codes, differing only
# in the factor the codes are multiplied by: $\kappa$ (unit variance, what the package does), $1$
# (this VAE's raw codes) and $5$ (codes five times as spread, about as spread as Stable Diffusion's
# before its 0.18215). Each samples 400 codes with DDIM from the same noise, clipping at its own
# $\pm c$; the codes are decoded with the factor undone and scored by chapter 6's classifier-FID
# against real test digits. A short run flatters no model, so read the FIDs against each other and
# against the real floor at the same $n$, not as what latent diffusion can reach.

# %%
from mnistdiff.evaluation.metrics import evaluate, real_floor

SCALE_RUN_STEPS = PROFILE.scale_run_steps  # Adam steps of 128 codes per run (600 in the `book` profile)


def train_on_codes(factor: float, steps: int = SCALE_RUN_STEPS, seed: int = SEED) -> torch.nn.Module:
    """A small latent UNet trained on the codes factor·(μ + σ ε_z): the package's loss with its scale replaced."""
    torch.manual_seed(seed)
    unet = UNet(get_profile("smoke").ldm.unet).to(DEVICE)  # the small latent UNet, as chapter 2 takes its small one
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    loss_fn = make_diffusion_loss(sched.to(DEVICE), factor)
    data = torch.cat([means, stds], 1).to(DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    for _ in range(steps):
        loss = loss_fn(unet, data[torch.randint(0, len(data), (128,), generator=gen, device=DEVICE)], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return unet.eval()


n_scale = 400
floor_scale = real_floor(n_scale, seed=SEED, device=DEVICE, include_memorisation=False)["fid"]
scale_runs = {}
for name, factor in ((f"scaled (κ = {scale:.2f})", scale), ("raw codes (× 1)", 1.0), ("five times as spread (× 5)", 5.0)):
    start = time.perf_counter()
    unet_f = train_on_codes(factor)
    c_f = float((means * factor).abs().max())
    z_f, _ = generate(unet_f, sched, n_scale, shape=ldm.sample_shape, sampler="ddim", steps=PROFILE.ddim_steps,
                      seed=SEED, device=DEVICE, clip_range=(-c_f, c_f))
    with torch.no_grad():
        images_f = vae.decode(z_f.to(DEVICE) / factor).clamp(-1, 1).cpu()
    fid_f = evaluate(images_f, seed=SEED, device=DEVICE, include_memorisation=False)["fid"]
    scale_runs[name] = images_f
    print(f"{name:<28} codes' std {(means * factor).std().item():4.2f}: FID {fid_f:6.2f} "
          f"({time.perf_counter() - start:.0f} s)")
print(f"{'real floor':<28} at n = {n_scale}:    FID {floor_scale:6.2f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 2.6))
for ax, (name, images_f) in zip(axes, scale_runs.items()):
    show_grid(images_f[:32], nrow=16, ax=ax, title=name)
fig.tight_layout()
plt.show()

# %% [markdown]
# In the `book` profile the three runs (about 30 s each) score FID 7.4 on scaled codes, 8.0 on the
# raw codes and 16.9 on codes five times as spread, against a real floor of 1.2 at the same $n$. For
# *this* VAE the factor matters little: its codes already have a spread of 1.38, and $\kappa = 0.72$
# only moves their $\ln \mathrm{SNR}$ curve by $2 \ln 1.38 = 0.64$. For codes as spread as Stable
# Diffusion's it matters a lot: the same network, steps and noise give more than twice the FID. The
# curves above say why: at $\sigma_z = 6.9$ the SNR stays above 1 until $t = 907$ of 1000 (exercise
# 5.1), so nine-tenths of the steps see codes that are still mostly signal, and the coarse shape of
# the digit, which forms around $\mathrm{SNR} = 1$, must be decided in the last hundred.
#
# :::{admonition} Exercise 5.3 (an experiment): how few DDIM steps does the latent model need?
# :class: tip
# Chapter 3 found that the pixel model loses quality below about 20 DDIM steps. *Predict* whether the
# latent model, whose network sees only 32 numbers, degrades faster or slower, then measure the
# classifier-FID of 400 decoded samples at 5, 10 and 20 steps against 400 real training digits
# (`mnistdiff.evaluation.metrics.evaluate` and `real_floor`; chapter 6 scores 50 steps on 2,000).
# :::
#
# :::{admonition} Solution 5.3
# :class: dropdown
# Read the table below against the real floor at the same $n$: the step count at which the FID stops
# improving is what the latent model needs. Each step is cheap (a small network on 2×4×4 codes), so
# what matters is quality per step, not time; the decoder runs once, whatever the step count.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 5.3: classifier-FID against the step count, with the real floor at the same n.
n_fid = 400
floor_fid = real_floor(n_fid, seed=SEED, device=DEVICE, include_memorisation=False)["fid"]
print(f"real floor at n = {n_fid}: FID {floor_fid:.2f}")
for steps in [s for s in (5, 10, 20) if s <= ldm.schedule.num_timesteps]:
    start = time.perf_counter()
    images, _ = ldm.sample(n_fid, sampler="ddim", steps=steps, seed=SEED, device=DEVICE)
    seconds = time.perf_counter() - start
    fid = evaluate(images, seed=SEED, device=DEVICE, include_memorisation=False)["fid"]
    print(f"DDIM-{steps:<3} FID {fid:6.2f}   ({seconds:.1f} s for {n_fid} samples)")

# %% [markdown]
# ## What we learned, and what comes next
#
# - **Latent diffusion** is DDPM/DDIM unchanged, run on the codes of a frozen autoencoder; the
#   decoder is called once per sample, at the end.
# - A step in latent space is **far cheaper** than a step in pixel space (here, by the FLOP count
#   above), because the network slides over 16 positions instead of 1024.
# - The codes must be **rescaled** to unit variance, $\kappa = 1/\hat\sigma_z$, so that the noise
#   schedule's signal-to-noise ratios mean what they were designed to mean; the factor is stored
#   with the model, and encoding and decoding are $\kappa\,\mu_\phi(x)$ and $D(z/\kappa)$; a short run
#   on codes five times too spread out shows what is lost without it.
# - Latent diffusion can only produce what the **decoder can draw**: its samples are at best as good
#   as the VAE's reconstructions.
#
# [Chapter 6](06_umap_evaluation.ipynb) puts numbers on all of this: it evaluates every generator
# of the course — DDPM, DDIM at several step counts, latent diffusion, the VAE's prior and its
# reconstructions — against real digits, next to the real-vs-real floor.

# %%
print(f"chapter 5 ran in {time.perf_counter() - T_START:.0f} s ({PROFILE.name} profile, {DEVICE})")
