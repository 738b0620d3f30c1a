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
# - derive the evidence lower bound (ELBO), its exact gap (the ELBO identity), and say what its two
#   terms do to the latent space;
# - write the **reparameterisation trick** and explain why sampling $z$ directly would block the gradient;
# - write the **KL divergence** between a diagonal Gaussian and $\mathcal N(0, I)$ in closed form;
# - read a VAE's reconstructions, its latent space and its prior samples — and explain why a VAE
#   tuned for sharp reconstructions makes poor samples on its own, which is why chapter 5 exists.
# - read the KL weight's effect off active units, reconstructions and prior samples (posterior
#   collapse), and see DDPM as a hierarchical VAE whose encoder is fixed.
#
# **Run time.** about two minutes on two CPU cores with the committed `book` checkpoint
# (most of it the KL-weight sweep's small VAEs); measured times in the
# [introduction](../intro.md). Symbols follow the course's [notation](../notation.md).
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# Under `MNISTDIFF_PROFILE=smoke` (the test suite's profile) the chapter's own VAE is narrow and trains
# for seconds: its reconstructions are blurry, its posteriors stay about as wide as the prior
# ($\sigma \approx 1$ instead of far below), and its latent scatter does not cluster by digit. The
# numbers quoted in the text are the `book` profile's. The derivations and the checks against the
# package do not depend on the profile; the KL-weight sweep trains its own small VAEs for 60 steps
# instead of 200, enough to show collapse but not the `book` numbers.
# :::

# %%
import math
import time

T_START = time.perf_counter()

import matplotlib.pyplot as plt
import torch
from torch.distributions import Normal, kl_divergence

from mnistdiff import VAE, DiagonalGaussian, NoiseSchedule, VAEConfig, count_parameters, encode_dataset, vae_loss
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
preview_vae = get_vae(device=DEVICE, progress=False)
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
# ### How tight is the bound? The ELBO identity
#
# The bound has an exact gap. Since $\log p_\theta(x)$ does not depend on $z$, it equals its own
# expectation under $q_\phi(z \mid x)$; inside it, write Bayes' rule
# $p_\theta(x) = p_\theta(x, z) / p_\theta(z \mid x)$ and multiply and divide by $q_\phi(z \mid x)$:
#
# $$
# \log p_\theta(x)
# = \mathbb E_{q_\phi}\Big[\log \frac{p_\theta(x, z)}{q_\phi(z \mid x)}\Big]
# + \mathbb E_{q_\phi}\Big[\log \frac{q_\phi(z \mid x)}{p_\theta(z \mid x)}\Big]
# = \mathcal L(\theta, \phi; x) + D_{\mathrm{KL}}\big(q_\phi(z \mid x) \,\|\, p_\theta(z \mid x)\big).
# $$
#
# The first term is the ELBO (split $p_\theta(x, z) = p_\theta(x \mid z)\,p(z)$ to get its two terms
# above). The second is the KL from the encoder to the *true* posterior: it is never negative, which
# proves the bound, and it is zero exactly when the encoder *is* the posterior. So raising
# $\mathcal L$ through $\phi$ is variational inference (it pulls $q_\phi$ towards $p_\theta(z \mid x)$),
# and raising it through $\theta$ raises the likelihood the bound sits under.
#
# A VAE's $p_\theta(x)$ is an integral over all codes through a neural decoder, which nobody can
# compute. To *see* the identity we take a model small enough to integrate by hand: one latent, one
# pixel, a linear decoder, $z \sim \mathcal N(0, 1)$ and $x \mid z \sim \mathcal N(a z, \sigma_x^2)$.
# Then $p(x) = \mathcal N(0, a^2 + \sigma_x^2)$, the posterior is
# $p(z \mid x) = \mathcal N\big(a x / (a^2 + \sigma_x^2),\ \sigma_x^2 / (a^2 + \sigma_x^2)\big)$, and for an
# encoder's guess $q = \mathcal N(m, v)$, using $\mathbb E_q[(x - a z)^2] = (x - a m)^2 + a^2 v$,
#
# $$
# \mathcal L = -\tfrac12 \log(2\pi\sigma_x^2) - \frac{(x - a m)^2 + a^2 v}{2\sigma_x^2}
# - D_{\mathrm{KL}}\big(\mathcal N(m, v) \,\|\, \mathcal N(0, 1)\big).
# $$
#
# Below, three guesses — the prior, an arbitrary one, the exact posterior — each with its ELBO, its
# gap, and their sum against the exact $\log p(x)$; and the closed form against a Monte Carlo
# estimate with reparameterised samples, the way a VAE estimates it.


# %%
def elbo_linear_gaussian(x: torch.Tensor, a: float, sigma_x: float, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ELBO of z ~ N(0, 1), x | z ~ N(a z, σ_x²) for the encoder q(z | x) = N(m, v), in closed form."""
    expected_loglik = -0.5 * math.log(2 * math.pi * sigma_x**2) - ((x - a * m) ** 2 + a**2 * v) / (2 * sigma_x**2)
    return expected_loglik - kl_divergence(Normal(m, v.sqrt()), Normal(0.0, 1.0))


A, SIGMA_X = 2.0, 0.5
x_obs = torch.tensor(1.3, dtype=torch.float64)
log_px = Normal(0.0, math.sqrt(A**2 + SIGMA_X**2)).log_prob(x_obs)
posterior_var = torch.tensor(SIGMA_X**2 / (A**2 + SIGMA_X**2), dtype=torch.float64)
exact = Normal(A * x_obs / (A**2 + SIGMA_X**2), posterior_var.sqrt())
guesses = {"the prior N(0, 1)": (0.0, 1.0), "a guess N(0.3, 0.2)": (0.3, 0.2),
           "the exact posterior": (exact.mean.item(), exact.variance.item())}
print(f"log p(x) = {log_px.item():.4f}")
for name, (m, v) in guesses.items():
    m, v = torch.tensor(m, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)
    elbo, gap = elbo_linear_gaussian(x_obs, A, SIGMA_X, m, v), kl_divergence(Normal(m, v.sqrt()), exact)
    torch.testing.assert_close(elbo + gap, log_px)
    z = m + v.sqrt() * torch.randn(200_000, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    mc = (Normal(A * z, SIGMA_X).log_prob(x_obs) + Normal(0.0, 1.0).log_prob(z) - Normal(m, v.sqrt()).log_prob(z)).mean()
    torch.testing.assert_close(mc, elbo, atol=0.02, rtol=0)
    print(f"  q = {name:<20}: ELBO {elbo.item():8.4f} (Monte Carlo {mc.item():8.4f}) + gap {gap.item():.4f} = log p(x)")

# %% [markdown]
# :::{admonition} Exercise 4.1 (derivation): the best encoder is the posterior
# :class: tip
# For the linear Gaussian model above, maximise $\mathcal L$ over $(m, v)$ by setting its two partial
# derivatives to zero. Show that the maximiser is the exact posterior and that the maximum is $\log p(x)$.
# Then let gradient ascent find it from the prior, as a VAE's training would.
# :::
#
# :::{admonition} Solution 4.1
# :class: dropdown
# With $D_{\mathrm{KL}}(\mathcal N(m, v) \,\|\, \mathcal N(0, 1)) = \tfrac12(m^2 + v - 1 - \log v)$:
# $\partial\mathcal L/\partial m = a(x - am)/\sigma_x^2 - m = 0$ gives $m = a x / (a^2 + \sigma_x^2)$, and
# $\partial\mathcal L/\partial v = -a^2/2\sigma_x^2 - \tfrac12 + 1/2v = 0$ gives $v = \sigma_x^2/(a^2 + \sigma_x^2)$:
# the posterior's mean and variance. $\mathcal L$ is concave in $m$ and in $\log v$, so this is the maximum,
# and there the gap $D_{\mathrm{KL}}(q \,\|\, p(z \mid x))$ is zero, so $\mathcal L = \log p(x)$ by the
# identity. A VAE's encoder cannot do this for every $x$ exactly (it is one network for all digits,
# and its $q$ is Gaussian while the true posterior need not be): the gap that remains is the
# *amortisation* and *approximation* gap of Cremer et al. ([arXiv:1801.03558](https://arxiv.org/abs/1801.03558)).
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.1: gradient ascent on the ELBO from the prior reaches the exact posterior and log p(x).
m_fit = torch.zeros((), dtype=torch.float64, requires_grad=True)
logv_fit = torch.zeros((), dtype=torch.float64, requires_grad=True)
ascent = torch.optim.Adam([m_fit, logv_fit], lr=0.05)
for _ in range(2000):
    ascent.zero_grad()
    (-elbo_linear_gaussian(x_obs, A, SIGMA_X, m_fit, logv_fit.exp())).backward()
    ascent.step()
torch.testing.assert_close(m_fit.detach(), exact.mean, atol=1e-5, rtol=0)
torch.testing.assert_close(logv_fit.detach().exp(), exact.variance, atol=1e-5, rtol=0)
best = elbo_linear_gaussian(x_obs, A, SIGMA_X, m_fit.detach(), logv_fit.detach().exp())
print(f"found q = N({m_fit.item():.5f}, {logv_fit.exp().item():.5f}); exact posterior "
      f"N({exact.mean.item():.5f}, {exact.variance.item():.5f}); ELBO {best.item():.6f}, log p(x) {log_px.item():.6f}")

# %% [markdown]
# ### The loss we train
#
# With a Gaussian decoder $p_\theta(x \mid z) = \mathcal N(x;\, D(z), \sigma_x^2 I)$ the first term
# is $-\lVert x - D(z) \rVert^2 / 2\sigma_x^2$ up to a constant, so maximising $\mathcal L$ is
# minimising
#
# $$
# \text{loss}(x) = \lVert x - D(z) \rVert^2 + \lambda \, D_{\mathrm{KL}}\big(q_\phi(z \mid x) \,\|\, \mathcal N(0, I)\big),
# \qquad z \sim q_\phi(z \mid x),
# $$
#
# with $\lambda = 2\sigma_x^2$. The weight $\lambda$ (`kl_weight`; the $\beta$-VAE literature calls it
# $\beta$, which in this course is the noise schedule) sets the trade-off: a large $\lambda$
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
# :::{admonition} Exercise 4.2 (derivation): the KL between any two diagonal Gaussians
# :class: tip
# Derive $D_{\mathrm{KL}}\big(\mathcal N(\mu_1, \sigma_1^2) \,\|\, \mathcal N(\mu_2, \sigma_2^2)\big)$ for one
# coordinate from $\mathbb E_{q}[\log q - \log p]$, show that it gives the formula above when
# $\mu_2 = 0, \sigma_2 = 1$, and check it against `torch.distributions` for random parameters.
# :::
#
# :::{admonition} Solution 4.2
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
# Solution 4.2: the general formula against torch.distributions, and its special case against gaussian_kl.
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
# $\lambda$. On a freshly initialised VAE of this profile, with the same $\epsilon$, it equals the
# package's `vae_loss`, which training uses:


# %%
def negative_elbo(model: VAE, x: torch.Tensor, kl_weight: float, eps: torch.Tensor) -> torch.Tensor:
    """Batch mean of ‖x − D(z)‖² + λ·KL(q(z|x) ‖ N(0, I)), with z = μ + σ ⊙ ε."""
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
# With $\lambda = 10^{-6}$ the KL term is a whisper next to the reconstruction error: it keeps the
# encoder's variances from collapsing to zero and its means from drifting off to huge values, but
# it does not make the codes look like $\mathcal N(0, I)$. Keep that in mind for the prior samples
# below.
#
# ## Training (or loading) the profile's VAE
#
# `get_vae` loads `checkpoints/<profile>/vae.safetensors` if it exists and matches the profile's config, and
# trains it otherwise, with the same `mnistdiff.training.pipelines.train_vae` as the command line
# (`python -m mnistdiff train vae`): AdamW, a cosine learning-rate schedule and an exponential
# moving average of the weights, which is what we get back. The file's header (`vae.meta`) records
# how it was trained.

# %%
vae = get_vae(device=DEVICE, progress=False)
meta = vae.meta
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
# :::{admonition} Exercise 4.3 (a change to the code): reconstruct through a sample
# :class: tip
# Latent diffusion encodes the posterior *mean*. Reconstruct the same test digits through a posterior
# *sample* $z = \mu + \sigma \odot \epsilon$ instead. *Predict* first: is the error larger or smaller,
# and by roughly how much, given the $\sigma$ the encoder outputs? Then measure it.
# :::
#
# :::{admonition} Solution 4.3
# :class: dropdown
# Larger: the decoder now also sees the noise $\sigma \odot \epsilon$. How much depends on $\sigma$:
# with a KL weight as small as this profile's, the encoder is free to make $\sigma$ small next to the
# spread of the means, so the sampled codes stay close to $\mu$ and the error grows only a little. The
# ratio of the typical $\sigma$ to the spread of $\mu$ (printed below) says how close.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.3: the mean against a posterior sample, on the same test digits.
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
# With $\lambda = 10^{-6}$ the reconstruction term wins instead: over training the posteriors shrink
# until each digit's code is nearly a point, and the cloud of means takes whatever scale and shape
# suits the decoder: the trained VAE's $\sigma$ above are far below 1.

# %%
spread = means.flatten(1).std(0)
print(f"posterior means μ over {len(latents)} digits: overall mean {means.mean().item():+.3f}, "
      f"std {means.std().item():.3f}   (prior: 0 and 1)")
print(f"  std per coordinate ranges from {spread.min().item():.3f} to {spread.max().item():.3f}")
print(f"posterior widths σ: median {stds.median().item():.4f}, "
      f"{means.std().item() / stds.median().item():.1f}× narrower than the cloud of means")

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
# ## The KL weight: a sweep
#
# How does $\lambda$ shape all this? We train three small VAEs (`VAEConfig(base_channels=8)`, 200
# Adam steps of 64 digits from 4,096 — `PROFILE.vae_sweep_steps`, 60 in the smoke profile — about 15 s each
# on a CPU), identical but for $\lambda \in \{10^{-6}, 1, 30\}$, and record the two terms of the loss
# separately at every step. For
# each we count the **active units**: the latent coordinates whose posterior mean varies across test
# digits, $\operatorname{Var}_x \mu_j(x) > 0.01$ (Burda et al., [arXiv:1509.00519](https://arxiv.org/abs/1509.00519)).
# A coordinate the KL term has won is *inactive*: its posterior is the prior, $\mu_j = 0$ and
# $\sigma_j = 1$, whatever the digit, and it tells the decoder nothing. These small models are the
# same in every profile; only their number of steps is smaller in the smoke profile.


# %%
SWEEP_STEPS = PROFILE.vae_sweep_steps  # 200 in the `book` profile


def train_small_vae(kl_weight: float, steps: int = SWEEP_STEPS, seed: int = SEED,
                    warmup_steps: int = 0) -> tuple[VAE, dict[str, list[float]]]:
    """A small VAE trained for `steps` Adam steps; the KL weight ramps up linearly over `warmup_steps`.

    Returns the model and its per-step curves: reconstruction error ‖x − D(z)‖² and KL, batch means.
    """
    torch.manual_seed(seed)
    model = VAE(VAEConfig(base_channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = load_mnist("train").subset(4096, seed=seed).images
    g = torch.Generator().manual_seed(seed)
    curves: dict[str, list[float]] = {"recon": [], "kl": []}
    for step in range(steps):
        weight = kl_weight * min(1.0, step / warmup_steps) if warmup_steps else kl_weight
        loss, parts = vae_loss(model, data[torch.randint(0, len(data), (64,), generator=g)], weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curves["recon"].append(parts["recon"].item())
        curves["kl"].append(parts["kl"].item())
    return model.eval(), curves


def active_units(model: VAE, images: torch.Tensor, threshold: float = 0.01) -> int:
    """The number of latent coordinates j with Var_x μ_j(x) > threshold (Burda et al. 2015, §5.2)."""
    with torch.no_grad():
        return int((model.encode(images).mean.flatten(1).var(0) > threshold).sum())


held_out = load_mnist("test").subset(1000, seed=SEED).images
z_small = torch.randn(24, 2, 4, 4, generator=torch.Generator().manual_seed(SEED))
sweep = {}
for weight in (1e-6, 1.0, 30.0):
    small, curves = train_small_vae(weight)
    with torch.no_grad():
        q = small.encode(held_out)
        sweep[weight] = dict(curves=curves, active=active_units(small, held_out), kl=q.kl().mean().item(),
                             recon=small.decode(q.mean).clamp(-1, 1), prior=small.decode(z_small).clamp(-1, 1))
    r = sweep[weight]
    print(f"λ = {weight:<5g}: {r['active']:2d} of 32 units active, KL {r['kl']:7.2f} nats, "
          f"reconstruction MSE {(r['recon'] - held_out).pow(2).mean().item():.4f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for weight, r in sweep.items():
    for ax, key in zip(axes, ("recon", "kl")):
        ax.plot(r["curves"][key], label=f"λ = {weight:g}")
axes[0].set(xlabel="step", ylabel="‖x − D(z)‖² per digit", yscale="log", title="reconstruction term")
axes[1].set(xlabel="step", ylabel="nats per digit", yscale="symlog", title="KL term (unweighted)")
for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

fig, axes = plt.subplots(3, 2, figsize=(12, 4.6), gridspec_kw=dict(width_ratios=[1, 1]))
for row, (weight, r) in zip(axes, sweep.items()):
    show_grid(torch.cat([held_out[:12], r["recon"][:12]]), nrow=12, ax=row[0],
              title=f"λ = {weight:g}: test digits and reconstructions ({r['active']} active units)")
    show_grid(r["prior"], nrow=12, ax=row[1], title=f"λ = {weight:g}: decoded z ~ N(0, I)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the three rows from the top (the cell prints 32, 27 and 0 active units; KL 153, 16 and 0 nats;
# reconstruction MSE 0.088, 0.101 and 0.208). At $\lambda = 10^{-6}$ (latent diffusion's choice) all 32 units
# carry information and the KL, barely weighted, climbs while the reconstruction error falls: the
# best reconstructions and the worst prior samples — the same trade as the profile's VAE above. At
# $\lambda = 1$ the KL is paid for in earnest: a few coordinates give up, the reconstructions blur,
# and the prior samples, decoded from codes drawn where the encoder now puts its codes, start to
# look like digits. At $\lambda = 30$ every coordinate collapses to the prior, the KL falls to
# zero, and the decoder, told nothing, draws the same average digit for every input and every
# prior sample. This is **posterior collapse**. No single $\lambda$ gives a VAE both sharp
# reconstructions and good prior samples; latent diffusion takes the first and lets a diffusion
# model supply the second.
#
# :::{admonition} Exercise 4.4 (an experiment): warming up the KL weight
# :class: tip
# Bowman et al. ([arXiv:1511.06349](https://arxiv.org/abs/1511.06349), §3.1) fight collapse by
# *annealing* the KL weight from 0 to its final value during the first steps. `train_small_vae` takes
# `warmup_steps`. *Predict*: with $\lambda = 30$ and a warm-up over the first 100 of the 200 steps, how
# many units are active at the end? And with $\lambda = 1$? Then run it.
# :::
#
# :::{admonition} Solution 4.4
# :class: dropdown
# Warm-up changes the path, not the objective. During the ramp the encoder learns to use its
# coordinates while information is cheap; once $\lambda$ reaches its final value, the last 100 steps
# optimise the same loss as before. At $\lambda = 30$ that loss makes every coordinate cost more than
# it saves, and the units collapse again once the ramp ends (0 active units, with warm-up or without);
# at $\lambda = 1$ the warm-up keeps more of them (31 instead of 27) within these 200 steps. Warm-up helps when the weight is
# fine at the optimum but the early steps would collapse the code (as with the strong decoders of
# Bowman et al.'s text models); it cannot rescue a weight that is simply too large.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 4.4: KL warm-up over the first half of the steps (100 of 200 in the book profile), against the runs above.
for weight in (1.0, 30.0):
    warmed, _ = train_small_vae(weight, warmup_steps=SWEEP_STEPS // 2)
    print(f"λ = {weight:g}: {active_units(warmed, held_out):2d} active units with warm-up, "
          f"{sweep[weight]['active']:2d} without")

# %% [markdown]
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
# ## DDPM is a VAE too: a hierarchical one with a fixed encoder
#
# The diffusion model of chapter 2 fits the frame of this chapter exactly. Take as latents the
# whole noisy trajectory $z = x_{1:T}$, $T$ layers each the size of the image. Its "encoder" is the
# forward process $q(x_{1:T} \mid x_0) = \prod_{t=1}^{T} q(x_t \mid x_{t-1})$, which has **no
# parameters**; its prior is $p(x_T) = \mathcal N(0, I)$ and its decoder the learned chain
# $p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^{T} p_\theta(x_{t-1} \mid x_t)$. This chapter's bound, with
# this $z$, is Ho et al.'s eq. 3,
#
# $$
# \log p_\theta(x_0) \;\ge\; \mathbb E_{q}\Big[\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big]
# = -\underbrace{D_{\mathrm{KL}}\big(q(x_T \mid x_0) \,\|\, p(x_T)\big)}_{L_T:\ \text{the prior term}}
# - \sum_{t=2}^{T} \underbrace{\mathbb E_q\, D_{\mathrm{KL}}\big(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# + \underbrace{\mathbb E_q \log p_\theta(x_0 \mid x_1)}_{-L_0:\ \text{reconstruction}},
# $$
#
# the split that chapter 2 derives. Term by term it is a VAE's ELBO: a reconstruction term and a KL
# to the prior, plus the KLs between the layers. The fixed encoder changes three things.
#
# - **The prior term costs nothing and has nothing to trade.** The schedule alone makes
#   $q(x_T \mid x_0) \approx \mathcal N(0, I)$, so $L_T$ is a constant near zero (the cell below prints
#   $1.2 \cdot 10^{-6}$ nats per digit for $T = 1000$, against 162 nats for the VAE's KL term); there is no
#   $\lambda$ to tune and no posterior collapse: the encoder cannot give up a coordinate.
# - **The latents compress nothing.** Each layer has the data's 1024 dimensions, which is why a
#   DDPM works so hard per sample and why chapter 5 puts this VAE's 32-number codes underneath it.
# - **Only the decoder can close the gap.** The gap is $D_{\mathrm{KL}}\big(q(x_{1:T} \mid x_0) \,\|\, p_\theta(x_{1:T} \mid x_0)\big)$:
#   with the encoder fixed, training moves the decoder's posterior towards the forward process.
#
# Both prior terms, per digit, for the profile's VAE and for the cosine schedule of the profile's
# DDPM ($L_T$ is a Gaussian KL with mean $\sqrt{\bar\alpha_T}\,x_0$ and variance $1 - \bar\alpha_T$
# in each of the 1024 pixels):

# %%
sched = NoiseSchedule.from_config(PROFILE.ddpm.diffusion)
abar_T = sched.alphas_cumprod[-1].double()  # ᾱ_T, the last entry (index T − 1)
x0 = load_mnist("test").subset(1000, seed=SEED).images.double()
L_T = 0.5 * (abar_T * x0.pow(2) + (1 - abar_T) - 1 - torch.log1p(-abar_T)).flatten(1).sum(1)
reference = kl_divergence(Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)
torch.testing.assert_close(L_T, reference)
with torch.no_grad():
    vae_kl = vae.encode(x0.float().to(DEVICE)).kl().cpu()
print(f"T = {sched.num_timesteps}, ᾱ_T = {abar_T.item():.2e}: DDPM's prior term L_T = {L_T.mean().item():.2e} nats per digit")
print(f"the VAE's prior term KL(q(z|x) ‖ N(0, I)) = {vae_kl.mean().item():.1f} nats per digit (λ = {PROFILE.vae.kl_weight:g})")

# %% [markdown]
# ## What we learned, and what comes next
#
# - A **VAE** is an autoencoder whose encoder outputs a Gaussian $q_\phi(z \mid x)$; training
#   maximises the **ELBO**: reconstruction error plus $\lambda$ times a KL divergence to $\mathcal N(0, I)$.
# - The **reparameterisation trick** $z = \mu + \sigma \odot \epsilon$ makes the sampled code a
#   differentiable function of the encoder's output; a direct draw would pass no gradient.
# - The **Gaussian KL** has a closed form, $\tfrac12\sum_j(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2)$.
# - The bound's gap is $D_{\mathrm{KL}}(q_\phi(z \mid x) \,\|\, p_\theta(z \mid x))$: the ELBO is tight where
#   the encoder is the true posterior.
# - The **KL weight** trades reconstructions for prior samples; too large a weight collapses the
#   posterior (no active units), and no single weight gives both.
# - A **DDPM is a hierarchical VAE** whose encoder, the forward process, is fixed: its prior term
#   is free, its latents are as large as the data.
# - With latent diffusion's tiny $\lambda$, the VAE **reconstructs** well from 32 numbers and its
#   codes cluster by digit, but its codes are far from $\mathcal N(0, I)$, so **prior samples are poor**.
#
# In [chapter 5](05_latent_diffusion.ipynb) we freeze this VAE, rescale its codes to unit variance,
# and train a diffusion model to generate codes; the decoder turns them into digits. Its
# reconstructions are the ceiling of what that can reach — chapter 6 measures both.

# %%
print(f"chapter 4 ran in {time.perf_counter() - T_START:.0f} s ({PROFILE.name} profile, {DEVICE})")
