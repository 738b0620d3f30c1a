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
# # 4. The variational autoencoder: a small space to diffuse in
#
# The DDPM of chapters 2 and 3 runs its UNet on all $32 \times 32 = 1024$ pixels, at every one of
# its many steps — although most of those pixels are background, and neighbouring pixels of a
# stroke say almost the same thing. **Latent diffusion** (chapter 5) first compresses every digit
# into a short code and runs diffusion on the codes instead. This chapter builds the compressor: a
# **variational autoencoder** (VAE; Kingma & Welling, [arXiv:1312.6114](https://arxiv.org/abs/1312.6114)),
# in the form latent diffusion uses it (Rombach et al., [arXiv:2112.10752](https://arxiv.org/abs/2112.10752)):
# an encoder that turns a $1 \times 32 \times 32$ image into a $2 \times 4 \times 4$ latent — 32
# numbers, 32 times fewer than pixels — and a decoder that turns the latent back into an image.
#
# **Learning goals.** After this chapter you can
#
# - derive the evidence lower bound (ELBO) and say what its two terms do to the latent space;
# - write the **reparameterisation trick** and explain why sampling $z$ directly would block the gradient;
# - write the **KL divergence** between a diagonal Gaussian and $\mathcal N(0, I)$ in closed form;
# - read a VAE's reconstructions, its latent space and its prior samples — and explain why a VAE
#   tuned for sharp reconstructions makes poor samples on its own, which is why chapter 5 exists.
#
# **Run time.** under a minute on two CPU cores with the committed `book` checkpoint; measured
# times in the [introduction](../intro.md). *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.

# %%
import time

T_START = time.perf_counter()

import matplotlib.pyplot as plt
import torch
from torch.distributions import Normal, kl_divergence

from mnistdiff import VAE, DiagonalGaussian, VAEConfig, count_parameters, encode_dataset, vae_loss
from mnistdiff import default_device, get_profile, get_vae, latent_scatter, load_mnist, plot_loss_curves, show_grid
from mnistdiff.course.widgets import latent_walk

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# **Where this chapter ends.** Test digits (top) and what this profile's trained VAE makes of them
# after squeezing each into 32 numbers (bottom). Its *prior* samples, decoded from random codes,
# are another matter: "Samples from the prior" below shows why they do not look like digits, and
# chapter 5 fixes it.

# %%
preview_vae, _ = get_vae(device=DEVICE, progress=False)
shown = load_mnist("test").subset(16, seed=SEED).images.to(DEVICE)
with torch.no_grad():
    recon = preview_vae.decode(preview_vae.encode(shown).mode()).clamp(-1, 1)
show_grid(torch.cat([shown, recon]).cpu(), nrow=16, title=f"test digits and their reconstructions ({PROFILE.name} profile)")
plt.show()

# %% [markdown]
# ## From pixels to a code, and back
#
# An **autoencoder** is two networks trained together: an encoder $E$ that maps an image $x$ to a
# latent $z = E(x)$, and a decoder $D$ that maps it back, $\hat x = D(z)$, trained so that
# $\hat x \approx x$. Because $z$ is much smaller than $x$, the pair must find what matters in a
# digit — stroke positions and thickness, not 1024 independent grey levels.
#
# Our encoder is a stack of convolutional blocks, each followed by a stride-2 convolution that
# halves the resolution: $32 \to 16 \to 8 \to 4$. A final $1 \times 1$ convolution outputs
# $2 \times 2 = 4$ channels: for each of the 2 latent channels a **mean** and a **log-variance**
# (why two numbers per latent, we see next). The decoder mirrors it with nearest-neighbour
# upsampling. Here is the full profile's VAE, traced on four test digits:

# %%
# NBVAL_CHECK_OUTPUT
full_vae = VAE(VAEConfig())  # the full profile's VAE; the smoke profile only makes it narrower
x = load_mnist("test").images[:4]
with torch.no_grad():
    encoded = full_vae.encoder(x)
    posterior = full_vae.encode(x)
    decoded = full_vae.decode(posterior.mean)
print("image x:                     ", tuple(x.shape))
print("encoder output (μ, log σ²):  ", tuple(encoded.shape))
print("latent z:                    ", tuple(posterior.mean.shape),
      f"→ {posterior.mean[0].numel()} numbers per digit, {x[0].numel() // posterior.mean[0].numel()}× fewer than pixels")
print("reconstruction x̂:            ", tuple(decoded.shape))
print(f"parameters: {count_parameters(full_vae):,} = encoder {count_parameters(full_vae.encoder):,} "
      f"+ decoder {count_parameters(full_vae.decoder):,}")

# %% [markdown]
# ## Why *variational*: the evidence lower bound
#
# A plain autoencoder may scatter its codes anywhere: nothing makes the space *between* two codes
# decode to anything sensible, and nothing tells us where the codes of real digits lie. The VAE
# makes the code probabilistic. A generative model first draws $z$ from a **prior**
# $p(z) = \mathcal N(0, I)$, then an image from the decoder $p_\theta(x \mid z)$. The encoder is an
# approximate posterior $q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x)\big)$:
# the codes that could have produced $x$. Kingma & Welling (eq. 3) bound the log-likelihood of a digit:
#
# $$
# \log p_\theta(x) \;\ge\; \mathcal L(\theta, \phi; x) =
# \underbrace{\mathbb E_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]}_{\text{reconstruct } x \text{ from its code}}
# \;-\; \underbrace{D_{\mathrm{KL}}\big(q_\phi(z \mid x) \,\|\, p(z)\big)}_{\text{keep codes close to the prior}} .
# $$
#
# With a Gaussian decoder $p_\theta(x \mid z) = \mathcal N(x;\, D(z), \sigma_x^2 I)$ the first term
# is $-\lVert x - D(z) \rVert^2 / 2\sigma_x^2$ up to a constant, so maximising $\mathcal L$ is
# minimising
#
# $$
# \text{loss}(x) = \lVert x - D(z) \rVert^2 + \beta \, D_{\mathrm{KL}}\big(q_\phi(z \mid x) \,\|\, \mathcal N(0, I)\big),
# \qquad z \sim q_\phi(z \mid x),
# $$
#
# with $\beta = 2\sigma_x^2$. The weight $\beta$ (`kl_weight`) sets the trade-off: a large $\beta$
# pulls every code towards $\mathcal N(0, I)$ (easy to sample, blurry to decode); a tiny one leaves
# an almost ordinary autoencoder (sharp reconstructions, codes anywhere). Latent diffusion chooses
# the tiny one — Rombach et al. (§3) impose only a "slight KL-penalty", weighted $10^{-6}$ in their
# released autoencoders, and so do we — because the diffusion model, not the prior, will take care
# of sampling. Two pieces of the loss
# need care: drawing $z$ so that gradients flow, and computing the KL.
#
# ## The reparameterisation trick
#
# The loss contains an expectation over $z \sim q_\phi(z \mid x)$, estimated with one sample. But
# a sample *drawn* from $\mathcal N(\mu, \sigma^2)$ is not a differentiable function of $\mu$ and
# $\sigma$, so the encoder would get no gradient from the reconstruction term. Kingma & Welling
# (§2.4, and eq. 10 for this Gaussian case) move the randomness into an input:
#
# $$
# z = \mu + \sigma \odot \epsilon, \qquad \epsilon \sim \mathcal N(0, I), \qquad \sigma = \exp\!\big(\tfrac12 \log \sigma^2\big).
# $$
#
# Now $z$ is an ordinary function of $(\mu, \log\sigma^2)$ with a random but *fixed* input $\epsilon$.
# In code, one line:


# %%
def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = μ + σ ⊙ ε, with σ = exp(½ log σ²) (Kingma & Welling §2.4, eq. 10)."""
    return mean + torch.exp(0.5 * logvar) * eps


gen = torch.Generator().manual_seed(SEED)
params = torch.randn(8, 4, 4, 4, generator=gen)  # a batch of encoder outputs: μ and log σ² for 2 channels
eps = torch.randn(8, 2, 4, 4, generator=gen)
posterior = DiagonalGaussian(params)
torch.testing.assert_close(reparameterise(posterior.mean, posterior.logvar, eps), posterior.sample(eps))
print("our reparameterise matches mnistdiff.vae.DiagonalGaussian.sample")

# %% [markdown]
# The point of the trick is the gradient. Differentiating $z = \mu + \exp(\tfrac12 \log\sigma^2)\,\epsilon$
# by hand gives $\partial z / \partial \mu = 1$ and $\partial z / \partial \log\sigma^2 = \tfrac12 \sigma \epsilon$;
# autograd agrees. Drawing the same $z$ with `torch.normal(μ, σ)` instead gives **zero** gradients:
# PyTorch treats a direct draw as a constant with respect to its parameters.

# %%
# NBVAL_CHECK_OUTPUT
mean = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
logvar = torch.tensor([0.0, -2.0, 1.0], requires_grad=True)
eps3 = torch.tensor([1.0, -0.5, 0.25])
reparameterise(mean, logvar, eps3).sum().backward()
print("∂z/∂μ      =", mean.grad.tolist())
print("∂z/∂log σ² = ½σε:", torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps3))

mean.grad, logvar.grad = None, None
torch.normal(mean, torch.exp(0.5 * logvar)).sum().backward()
print("sampled directly, ∂z/∂μ =", mean.grad.tolist(), " ∂z/∂log σ² =", logvar.grad.tolist())

# %% [markdown]
# ## The KL term in closed form
#
# Both distributions in the KL term are Gaussian, so it needs no sampling at all. For a diagonal
# Gaussian against the standard normal, summed over the $J = 32$ latent coordinates (Kingma &
# Welling, appendix B):
#
# $$
# D_{\mathrm{KL}}\big(\mathcal N(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal N(0, I)\big)
# = \frac12 \sum_{j=1}^{J} \big(\mu_j^2 + \sigma_j^2 - 1 - \log \sigma_j^2\big).
# $$
#
# Each coordinate pays $\tfrac12\mu_j^2$ for sitting away from 0 and $\tfrac12(\sigma_j^2 - 1 - \log\sigma_j^2) \ge 0$
# for a variance other than 1. We check our version against the package and against PyTorch's own
# `torch.distributions`, which knows the KL between two `Normal`s:


# %%
def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, summed over all latent coordinates (Kingma & Welling app. B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


ours = gaussian_kl(posterior.mean, posterior.logvar)
torch.testing.assert_close(ours, posterior.kl())
reference = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0)).flatten(1).sum(1)
torch.testing.assert_close(ours, reference)
print("our gaussian_kl matches DiagonalGaussian.kl and torch.distributions")

# %% [markdown]
# :::{admonition} Exercise 4.1 (derivation): the KL between any two diagonal Gaussians
# :class: tip
# Derive $D_{\mathrm{KL}}\big(\mathcal N(\mu_1, \sigma_1^2) \,\|\, \mathcal N(\mu_2, \sigma_2^2)\big)$ for one
# coordinate from $\mathbb E_{q}[\log q - \log p]$, show that it gives the formula above when
# $\mu_2 = 0, \sigma_2 = 1$, and check it against `torch.distributions` for random parameters.
# :::
#
# :::{admonition} Solution 4.1
# :class: dropdown
# With $\log \mathcal N(z; \mu, \sigma^2) = -\log\sigma - \tfrac12\log 2\pi - (z - \mu)^2 / 2\sigma^2$ and
# $\mathbb E_q[(z - \mu_1)^2] = \sigma_1^2$, $\mathbb E_q[(z - \mu_2)^2] = \sigma_1^2 + (\mu_1 - \mu_2)^2$:
#
# $$
# D_{\mathrm{KL}} = \log\frac{\sigma_2}{\sigma_1} + \frac{\sigma_1^2 + (\mu_1 - \mu_2)^2}{2\sigma_2^2} - \frac12 .
# $$
#
# At $\mu_2 = 0, \sigma_2 = 1$ this is $-\tfrac12\log\sigma_1^2 + \tfrac12(\sigma_1^2 + \mu_1^2) - \tfrac12$,
# the per-coordinate term of the formula above; a diagonal Gaussian's KL is the sum over coordinates.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.1: the general formula against torch.distributions, and its special case against gaussian_kl.
def kl_normal(mu1: torch.Tensor, sd1: torch.Tensor, mu2: torch.Tensor, sd2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu1, sd1²) ‖ N(mu2, sd2²))."""
    return torch.log(sd2 / sd1) + (sd1**2 + (mu1 - mu2) ** 2) / (2 * sd2**2) - 0.5


g = torch.Generator().manual_seed(SEED)
mu1, mu2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
sd1, sd2 = torch.rand(1000, generator=g, dtype=torch.float64) + 0.1, torch.rand(1000, generator=g, dtype=torch.float64) + 0.1
torch.testing.assert_close(kl_normal(mu1, sd1, mu2, sd2), kl_divergence(Normal(mu1, sd1), Normal(mu2, sd2)))
torch.testing.assert_close(kl_normal(posterior.mean, posterior.std, torch.zeros(()), torch.ones(())).flatten(1).sum(1),
                           gaussian_kl(posterior.mean, posterior.logvar))
print("the general Gaussian KL matches torch.distributions, and at N(0, 1) it is gaussian_kl")

# %% [markdown]
# Two values worked by hand: the prior itself costs nothing, and moving all 32 means to 1 with unit
# variance costs $32 \cdot \tfrac12 = 16$ nats.

# %%
# NBVAL_CHECK_OUTPUT
zeros = torch.zeros(1, 2, 4, 4)
print("KL(N(0, I) ‖ N(0, I)) =", gaussian_kl(zeros, zeros).item())
print("KL(N(1, I) ‖ N(0, I)) =", gaussian_kl(torch.ones(1, 2, 4, 4), zeros).item())

# %% [markdown]
# ## The whole loss
#
# Putting the pieces together: encode, reparameterise, decode, and add the two terms. The squared
# error is summed over the pixels of each image and averaged over the batch, the KL is weighted by
# $\beta$. On a freshly initialised VAE of this profile, with the same $\epsilon$, it equals the
# package's `vae_loss`, which training uses:


# %%
def negative_elbo(model: VAE, x: torch.Tensor, kl_weight: float, eps: torch.Tensor) -> torch.Tensor:
    """Batch mean of ‖x − D(z)‖² + β·KL(q(z|x) ‖ N(0, I)), with z = μ + σ ⊙ ε."""
    q = model.encode(x)
    z = reparameterise(q.mean, q.logvar, eps)
    reconstruction = (model.decode(z) - x).pow(2).flatten(1).sum(1)
    return (reconstruction + kl_weight * gaussian_kl(q.mean, q.logvar)).mean()


torch.manual_seed(SEED)
fresh = VAE(PROFILE.vae.vae)
x = load_mnist("test").images[:8]
eps = torch.randn(8, fresh.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(SEED))
loss, parts = vae_loss(fresh, x, PROFILE.vae.kl_weight, eps)
torch.testing.assert_close(negative_elbo(fresh, x, PROFILE.vae.kl_weight, eps), loss)
print(f"our negative_elbo matches vae_loss: {loss.item():.1f} = reconstruction {parts['recon'].item():.1f} "
      f"+ {PROFILE.vae.kl_weight:g} × KL {parts['kl'].item():.2f}")

# %% [markdown]
# With $\beta = 10^{-6}$ the KL term is a whisper next to the reconstruction error: it keeps the
# encoder's variances from collapsing to zero and its means from drifting off to huge values, but
# it does not make the codes look like $\mathcal N(0, I)$. Keep that in mind for the prior samples
# below.
#
# ## Training (or loading) the profile's VAE
#
# `get_vae` loads `checkpoints/<profile>/vae.pt` if it exists and matches the profile's config, and
# trains it otherwise, with the same `mnistdiff.training.pipelines.train_vae` as the command line
# (`python -m mnistdiff train vae`): AdamW, a cosine learning-rate schedule and an exponential
# moving average of the weights, which is what we get back.

# %%
vae, meta = get_vae(device=DEVICE, progress=False)
cfg = PROFILE.vae
print(f"{cfg.train.epochs} epochs on {cfg.train.subset or 60_000:,} training images, batch {cfg.train.batch_size}, "
      f"lr {cfg.train.lr:g}, kl_weight {cfg.kl_weight:g}")
print(f"{count_parameters(vae):,} parameters; trained in {meta['seconds']:.0f} s on {meta['metrics']['device']}")
plot_loss_curves(meta["history"])
plt.show()

# %% [markdown]
# ## Reconstructions
#
# The first thing to ask of an autoencoder: does a digit survive the trip through 32 numbers? We
# decode the posterior **mean** $\mu$ (no sampling noise), which is also what latent diffusion will
# encode. To put the error in scale, we compare it with the error of the laziest "reconstruction",
# the average training image.

# %%
test = load_mnist("test").subset(PROFILE.eval_samples, seed=SEED)
with torch.no_grad():
    recon = torch.cat([vae.decode(vae.encode(c.to(DEVICE)).mode()).clamp(-1, 1).cpu() for c in test.images.split(500)])
mse = (recon - test.images).pow(2).mean().item()
baseline = (load_mnist("train").images.mean(0, keepdim=True) - test.images).pow(2).mean().item()
print(f"reconstruction MSE on {len(test)} test digits: {mse:.4f}   (average-image baseline: {baseline:.4f})")
show_grid(torch.cat([test.images[:16], recon[:16]]), nrow=16, title="test digits (top) and their reconstructions (bottom)")
plt.show()

# %% [markdown]
# :::{admonition} Exercise 4.2 (a change to the code): reconstruct through a sample
# :class: tip
# Latent diffusion encodes the posterior *mean*. Reconstruct the same test digits through a posterior
# *sample* $z = \mu + \sigma \odot \epsilon$ instead. *Predict* first: is the error larger or smaller,
# and by roughly how much, given the $\sigma$ the encoder outputs? Then measure it.
# :::
#
# :::{admonition} Solution 4.2
# :class: dropdown
# Larger: the decoder now also sees the noise $\sigma \odot \epsilon$. How much depends on $\sigma$:
# with a KL weight as small as this profile's, the encoder is free to make $\sigma$ small next to the
# spread of the means, so the sampled codes stay close to $\mu$ and the error grows only a little. The
# ratio of the typical $\sigma$ to the spread of $\mu$ (printed below) says how close.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.2: the mean against a posterior sample, on the same test digits.
with torch.no_grad():
    q = vae.encode(test.images[:500].to(DEVICE))
    eps = torch.randn(q.mean.shape, generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
    from_mean = vae.decode(q.mean).clamp(-1, 1).cpu()
    from_sample = vae.decode(q.sample(eps)).clamp(-1, 1).cpu()
mse_mean = (from_mean - test.images[:500]).pow(2).mean().item()
mse_sample = (from_sample - test.images[:500]).pow(2).mean().item()
print(f"MSE through the mean {mse_mean:.4f}, through a sample {mse_sample:.4f} ({mse_sample / mse_mean:.2f}×); "
      f"typical σ {q.std.mean().item():.3f} against a spread of the means of {q.mean.std(0).mean().item():.3f}")

# %% [markdown]
# ## The latent space
#
# Each digit is now a point in $\mathbb R^{32}$. To look at those points we project them onto their
# first two principal components, and colour them by digit (the labels were never used in training).
# Digits of a class gather in regions of their own, and similar digits (4 and 9, 3, 5 and 8) sit
# side by side: the code has captured what makes a digit a digit.

# %%
latents = load_mnist("test").subset(PROFILE.umap_real, seed=SEED)
means, stds = encode_dataset(vae, latents.images.to(DEVICE))
latent_scatter(means.cpu(), latents.labels, title=f"VAE latents of {len(latents)} test digits (PCA of 32 dimensions)")
plt.show()

# %% [markdown]
# How close are these codes to the prior $\mathcal N(0, I)$ that the KL term pulls towards? If
# the KL term had won, the means $\mu$ would have mean 0 and standard deviation 1 in every
# coordinate, and each digit's posterior would be about as wide as the whole cloud ($\sigma \approx 1$).
# With $\beta = 10^{-6}$ the reconstruction term wins instead: over training the posteriors shrink
# until each digit's code is nearly a point, and the cloud of means takes whatever scale and shape
# suits the decoder: the trained VAE's $\sigma$ above are far below 1. (The smoke profile's VAE trains
# for seconds, so its $\sigma$ stay close to their initial value 1.)

# %%
spread = means.flatten(1).std(0)
print(f"posterior means μ over {len(latents)} digits: overall mean {means.mean().item():+.3f}, "
      f"std {means.std().item():.3f}   (prior: 0 and 1)")
print(f"  std per coordinate ranges from {spread.min().item():.3f} to {spread.max().item():.3f}")
print(f"posterior widths σ: median {stds.median().item():.4f}, "
      f"{means.std().item() / stds.median().item():.1f}× narrower than the cloud of means")

# %% [markdown]
# :::{admonition} Exercise 4.3 (an experiment): posterior collapse at a large KL weight
# :class: tip
# Train three small VAEs (`VAEConfig(base_channels=8)`, 200 Adam steps on 4,096 digits, about 15 s each
# on a CPU) with KL weights $10^{-6}$, $1$ and $30$. Count the **active units**: the latent coordinates
# whose posterior mean varies across test digits ($\operatorname{Var}_x \mu_j(x) > 0.01$, Burda et al.,
# [arXiv:1509.00519](https://arxiv.org/abs/1509.00519)). *Predict* how the count and the reconstructions
# change with the weight.
# :::
#
# :::{admonition} Solution 4.3
# :class: dropdown
# The KL term pays for every coordinate that carries information ($\mu_j \neq 0$ or $\sigma_j < 1$). A
# small weight makes information cheap: all 32 coordinates are used. As the weight grows, the encoder
# gives up the coordinates that help the reconstruction least, their posterior equals the prior
# ($\mu_j = 0$, $\sigma_j = 1$ for every $x$), and they are *inactive*; at a weight of 30 every
# coordinate has collapsed, the code says nothing about the digit, and the decoder can only draw the
# average digit. This is posterior collapse.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.3: three KL weights, their active units, KL and reconstructions.
def train_small_vae(kl_weight: float, steps: int = 200, seed: int = SEED) -> VAE:
    torch.manual_seed(seed)
    model = VAE(VAEConfig(base_channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = load_mnist("train").subset(4096, seed=seed).images
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss, _ = vae_loss(model, data[torch.randint(0, len(data), (64,), generator=g)], kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


held_out = load_mnist("test").subset(1000, seed=SEED).images
fig, axes = plt.subplots(3, 1, figsize=(8, 3.6))
for ax, weight in zip(axes, (1e-6, 1.0, 30.0)):
    small = train_small_vae(weight)
    with torch.no_grad():
        q = small.encode(held_out)
        recon_small = small.decode(q.mean).clamp(-1, 1)
    active = int((q.mean.flatten(1).var(0) > 0.01).sum())
    print(f"KL weight {weight:g}: {active:2d} of 32 units active, KL {q.kl().mean().item():7.2f} nats, "
          f"reconstruction MSE {(recon_small - held_out).pow(2).mean().item():.4f}")
    show_grid(torch.cat([held_out[:12], recon_small[:12]]), nrow=24, ax=ax,
              title=f"KL weight {weight:g}: {active} active units")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Samples from the prior
#
# A VAE is a generative model: draw $z \sim \mathcal N(0, I)$ and decode it. On the left, exactly
# that; on the right, a fairer try, drawing each coordinate from a Gaussian with the mean and
# standard deviation the codes really have (above).

# %%
C, S = vae.config.latent_channels, vae.config.latent_size
gen = torch.Generator(device=DEVICE).manual_seed(SEED)
z_prior = torch.randn((PROFILE.num_samples, C, S, S), generator=gen, device=DEVICE)
mu_agg, sd_agg = means.mean(0).to(DEVICE), means.std(0).to(DEVICE)
with torch.no_grad():
    from_prior = vae.decode(z_prior).clamp(-1, 1).cpu()
    from_matched = vae.decode(mu_agg + sd_agg * z_prior).clamp(-1, 1).cpu()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
show_grid(from_prior, nrow=8, title="decoded z ~ N(0, I)", ax=axes[0])
show_grid(from_matched, nrow=8, title="decoded z ~ N(mean, std of the codes), per coordinate", ax=axes[1])
plt.show()

# %% [markdown]
# Neither looks like a page of handwritten digits: many are blends, fragments or blobs. The codes of
# real digits occupy a few curved, clustered regions of $\mathbb R^{32}$ (the scatter plot above);
# independent Gaussian draws land mostly *between* them, where the decoder has never been trained.
# A weakly regularised VAE is an excellent compressor but a poor sampler. What we need is a model
# that learns where in latent space the digits actually are — a diffusion model, in chapter 5.
#
# ## Walking through the latent space
#
# A smooth latent space should also decode the points *between* two codes to something digit-like.
# Below we take two test digits, a 2 and a 7, and compare two ways of blending them: fading the
# pixels, $(1-w)\,x_a + w\,x_b$, and decoding the blended code, $D\big((1-w)\,z_a + w\,z_b\big)$.

# %%
a, b = int((test.labels == 2).nonzero()[0]), int((test.labels == 7).nonzero()[0])
with torch.no_grad():
    z_ab = vae.encode(test.images[[a, b]].to(DEVICE)).mode()
    w = torch.linspace(0, 1, PROFILE.widget_frames, device=DEVICE).view(-1, 1, 1, 1)
    latent_blend = vae.decode((1 - w) * z_ab[:1] + w * z_ab[1:]).clamp(-1, 1).cpu()
pixel_blend = (1 - w.cpu()) * test.images[a] + w.cpu() * test.images[b]
show_grid(torch.cat([pixel_blend, latent_blend]), nrow=PROFILE.widget_frames,
          title="pixel cross-fade (top) vs decoded latent interpolation (bottom)")
plt.show()

# %% [markdown]
# The cross-fade shows two faint digits on top of each other; the latent path (with a well-trained
# VAE) bends one stroke into the other. Try it yourself: the slider decodes
# $(1-w)\,z_a + w\,z_b$ live, every time it moves (in the static book you see the strip of frames).

# %%
latent_walk(vae, z_ab[0], z_ab[1], frames=PROFILE.widget_frames)

# %% [markdown]
# ## What we learned, and what comes next
#
# - A **VAE** is an autoencoder whose encoder outputs a Gaussian $q_\phi(z \mid x)$; training
#   maximises the **ELBO**: reconstruction error plus $\beta$ times a KL divergence to $\mathcal N(0, I)$.
# - The **reparameterisation trick** $z = \mu + \sigma \odot \epsilon$ makes the sampled code a
#   differentiable function of the encoder's output; a direct draw would pass no gradient.
# - The **Gaussian KL** has a closed form, $\tfrac12\sum_j(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2)$.
# - With latent diffusion's tiny $\beta$, the VAE **reconstructs** well from 32 numbers and its
#   codes cluster by digit, but its codes are far from $\mathcal N(0, I)$, so **prior samples are poor**.
#
# In [chapter 5](05_latent_diffusion.ipynb) we freeze this VAE, rescale its codes to unit variance,
# and train a diffusion model to generate codes; the decoder turns them into digits. Its
# reconstructions are the ceiling of what that can reach — chapter 6 measures both.

# %%
print(f"chapter 4 ran in {time.perf_counter() - T_START:.0f} s ({PROFILE.name} profile, {DEVICE})")
