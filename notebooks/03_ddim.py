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
# # 3. DDIM: the same network, twenty times faster
#
# DDPM sampling (chapter 2) costs $T$ network calls per image — 1000 in the paper. Song, Meng &
# Ermon's **denoising diffusion implicit models** (DDIM,
# [arXiv:2010.02502](https://arxiv.org/abs/2010.02502)) sample with the **same trained network** in
# a few dozen steps, with no retraining. The key observation: the DDPM loss only ever looks at the
# marginals $q(x_t \mid x_0)$, never at how the chain gets from one step to the next. Any process
# with the same marginals is trained by the same loss — and some of those processes can skip steps,
# or have no randomness at all.
#
# **Learning goals.** After this chapter you can
#
# - write the DDIM update (Song et al., eq. 12) and its noise scale $\sigma_t(\eta)$ (eq. 16);
# - derive DDIM with $\eta = 0$ as Euler's method for an ODE in $\bar x = x/\sqrt{\bar\alpha}$ and
#   $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$ (Song et al., §4.3), and read it as a score-based ODE;
# - choose the sampling timesteps, and say why the list must start at $t = T$;
# - explain why the first step is numerically delicate and how clipping $\hat x_0$ fixes it, and
#   name the principled fix ($v$-prediction);
# - show that DDIM with every step and $\eta = 1$ *is* DDPM;
# - trade sampling time against sample quality with the number of steps and $\eta$;
# - run the ODE backwards to **invert** a digit into noise, and interpolate between noises with **slerp**.
#
# **Run time.** with the committed `book` checkpoint, most of it the $T$-step sampler's 64 digits ($64T$
# network calls); measured times in the [introduction](../intro.md). Symbols follow the course's [notation](../notation.md):
# timesteps $t = 1, \dots, T$ in equations and printed results, the package's 0-based index $t - 1$ in code.
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), the model is trained for seconds, $T = 100$, and every
# figure shows noise-like blobs instead of digits; the code paths are the same. The sentences that quote a
# measured number are written by the cells from what they computed, so under smoke they quote the smoke
# run; the descriptions of the figures are the `book` profile's. The derivations and the checks against
# the package do not depend on the profile.
# :::

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

from mnistdiff import NoiseSchedule, ddim_sample_loop, ddim_step, ddim_timesteps
from mnistdiff import default_device, get_ddpm, get_profile, load_mnist, show_grid
from mnistdiff.course.widgets import ddim_explorer

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# **Where this chapter ends.** Chapter 2's network, sampled in `PROFILE.ddim_steps` steps instead of
# all $T$ (top: the package's default $\eta = 1$; bottom: the deterministic $\eta = 0$, from the same noise;
# section 7 explains the difference):

# %%
preview = get_ddpm(device=DEVICE, progress=False)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
for ax, eta in zip(axes, (1.0, 0.0)):
    x, _ = preview.sample(16, sampler="ddim", steps=PROFILE.ddim_steps, eta=eta, seed=SEED, device=DEVICE)
    show_grid(x, nrow=16, ax=ax, title=f"DDIM-{PROFILE.ddim_steps}, η = {eta:g}")
fig.tight_layout()
plt.show()

# %% [markdown]
# The trained DDPM of chapter 2 (loaded from `checkpoints/<profile>/ddpm.safetensors`, or trained now if
# this notebook runs first):

# %%
model = get_ddpm(device=DEVICE, progress=False)
schedule = model.schedule
T = schedule.num_timesteps
N = PROFILE.num_samples
print(f"T = {T} timesteps ({model.config.diffusion.schedule} schedule), {N} samples per figure")

# %% [markdown]
# ## 1. The DDIM update
#
# Song et al. define a family of forward processes, indexed by a noise scale $\sigma_t$, that all
# have DDPM's marginals $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$. (The
# paper writes $\alpha_t$ for our $\bar\alpha_t$.) Their reverse step, from $x_t$ to an *earlier*
# timestep $t' < t$ — not necessarily $t - 1$ — is eq. 12:
#
# $$
# x_{t'} = \sqrt{\bar\alpha_{t'}}\;\underbrace{\hat x_0}_{\text{predicted } x_0}
#        \;+\; \underbrace{\sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\;\hat\epsilon}_{\text{direction pointing to } x_t}
#        \;+\; \underbrace{\sigma_t z}_{\text{random noise}},
# \qquad
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}},\quad
# \hat\epsilon = \epsilon_\theta(x_t, t),\quad z \sim \mathcal N(0, I).
# $$
#
# In words: guess the clean digit, then re-noise it to the level of $t'$ — using the *predicted*
# noise for most of it, and fresh noise for a fraction set by (eq. 16)
#
# $$
# \sigma_t(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}
#   \,\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t'}}} .
# $$
#
# $\eta = 0$ makes sampling **deterministic**: the noise $x_T$ alone decides the digit. The last step
# goes to $t' = 0$, the clean image, with $\bar\alpha_0 = 1$ (in code: from index $\tau_1 - 1 = 0$ to the
# index $-1$).
#
# As in chapter 2, the package clips $\hat x_0$ to the data range $[-1, 1]$; then it **recomputes
# $\hat\epsilon$ from the clipped $\hat x_0$**, $\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0)/\sqrt{1-\bar\alpha_t}$,
# so that the two terms of eq. 12 stay consistent with $x_t$ (section 3 shows why this matters), and
# it does this arithmetic in float64. Written out:


# %%
def ddim_step_inline(
    sched: NoiseSchedule, x_t: torch.Tensor, eps_hat: torch.Tensor, t: int, t_prev: int, eta: float,
    z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Song et al. eq. 12 with σ from eq. 16, from package index t to t_prev < t (−1: the clean image)."""
    a_t = float(sched.alphas_cumprod[t].double())
    a_prev = float(sched.alphas_cumprod[t_prev].double()) if t_prev >= 0 else 1.0
    x, eps = x_t.double(), eps_hat.double()
    x0_hat = ((x - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)  # predicted x_0, clipped
    eps = (x - a_t**0.5 * x0_hat) / (1 - a_t) ** 0.5  # the ε̂ that is consistent with the clipped x̂_0
    sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
    x_prev = a_prev**0.5 * x0_hat + (1 - a_prev - sigma**2) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * z.double()
    return x_prev.to(x_t.dtype), x0_hat.to(x_t.dtype)


gen = torch.Generator().manual_seed(SEED)
x_t, eps_hat, z = (torch.randn(4, 1, 32, 32, generator=gen) for _ in range(3))
for t, t_prev, eta in ((T - 1, T // 2, 0.0), (T // 2, T // 4, 0.5), (T // 4, 0, 1.0), (0, -1, 0.0)):
    ours = ddim_step_inline(schedule, x_t, eps_hat, t, t_prev, eta, z)
    theirs = ddim_step(schedule, x_t, eps_hat, t, t_prev, eta, z)
    torch.testing.assert_close(ours, theirs)
print("our DDIM step matches mnistdiff.ddim.ddim_step (η = 0, 0.5, 1, and the last step to t′ = 0, index −1)")

# %% [markdown]
# ### The ODE view: DDIM with $\eta = 0$ is Euler's method
#
# Song et al. (§4.3, eqs. 13–14) rewrite the deterministic step in two new variables: the *scaled* image
# and the *noise-to-signal ratio*,
#
# $$
# \bar x = \frac{x}{\sqrt{\bar\alpha}}, \qquad \sigma = \sqrt{\frac{1-\bar\alpha}{\bar\alpha}}
# \quad\Big(\text{so } \bar\alpha = \frac{1}{\sigma^2 + 1},\ \ \sigma_0 = 0,\ \ \sigma \text{ grows with } t\Big).
# $$
#
# (This $\sigma$ is the noise level of the scaled image, not the noise scale $\sigma_t(\eta)$ above.)
# Divide eq. 12 with $\sigma_t(\eta) = 0$ by $\sqrt{\bar\alpha_{t'}}$, and write
# $\hat x_0 = x_t/\sqrt{\bar\alpha_t} - \sigma_t\hat\epsilon = \bar x_t - \sigma_t\hat\epsilon$:
#
# $$
# \bar x_{t'} = \frac{x_{t'}}{\sqrt{\bar\alpha_{t'}}} = \hat x_0 + \sigma_{t'}\,\hat\epsilon
# = \bar x_t + (\sigma_{t'} - \sigma_t)\,\epsilon_\theta\!\Big(\frac{\bar x_t}{\sqrt{\sigma_t^2 + 1}},\, t\Big).
# $$
#
# That is exactly one step of **Euler's method**, with step $\sigma_{t'} - \sigma_t < 0$, for the ODE
#
# $$
# \frac{d\bar x}{d\sigma} = \epsilon_\theta\!\Big(\frac{\bar x}{\sqrt{\sigma^2 + 1}},\, t(\sigma)\Big),
# $$
#
# integrated from $\sigma_T$ down to $\sigma_0 = 0$, where $\bar x_0 = x_0$. No approximation is made: the
# DDIM step *is* the Euler step, and more steps mean a finer discretisation of the same curve. It is
# also the score-based view of the model. Since $\bar x_t = x_0 + \sigma_t\,\epsilon$, the scaled image is
# the data plus Gaussian noise of standard deviation $\sigma_t$, and the score of that noisy
# distribution is
# $\nabla_{\bar x} \ln p_\sigma(\bar x) = -\mathbb E[\epsilon \mid \bar x]/\sigma \approx -\epsilon_\theta/\sigma$
# (equivalently, $\sqrt{\bar\alpha}$ times the score $s_\theta(x_t, t) = -\epsilon_\theta/\sqrt{1-\bar\alpha_t}$
# in $x$).
# The ODE reads $d\bar x/d\sigma = -\sigma\,\nabla_{\bar x}\ln p_\sigma(\bar x)$: the probability-flow ODE of
# Song et al. 2021 ([arXiv:2011.13456](https://arxiv.org/abs/2011.13456)), in the form of Karras et al.
# ([arXiv:2206.00364](https://arxiv.org/abs/2206.00364), eq. 4 with $\sigma(t) = t$). With the exact score, the
# distribution of $\bar x$ at each $\sigma$ stays that of the noisy data all the way down.
#
# Check it: one Euler step in $(\bar x, \sigma)$, with the trained network's $\hat\epsilon$ on noisy test
# digits, against `ddim_step` with $\eta = 0$ and clipping off (clipping changes $\hat\epsilon$; it is
# Euler's method with a corrected slope). The steps are the chapter's first, a middle one and the last:


# %%
def sigma_at(sched: NoiseSchedule, i: int) -> float:
    """σ = √((1 − ᾱ)/ᾱ) at package index i (timestep t = i + 1); σ = 0 at index −1, the clean image."""
    if i < 0:
        return 0.0
    ab = float(sched.alphas_cumprod[i].double())
    return ((1 - ab) / ab) ** 0.5


def euler_step(sched: NoiseSchedule, x_t: torch.Tensor, eps_hat: torch.Tensor, i: int, i_next: int) -> torch.Tensor:
    """One Euler step of dx̄/dσ = ε_θ from σ at index i to σ at index i_next, in x̄ = x/√ᾱ = x·√(σ² + 1)."""
    s, s_next = sigma_at(sched, i), sigma_at(sched, i_next)
    x_bar = x_t.double() * (s**2 + 1) ** 0.5 + (s_next - s) * eps_hat.double()
    return (x_bar / (s_next**2 + 1) ** 0.5).to(x_t.dtype)


ode_steps = ddim_timesteps(T, PROFILE.ddim_steps)
digits4 = load_mnist("test").images[:4].to(DEVICE)
gen = torch.Generator().manual_seed(SEED)
mid = len(ode_steps) // 2
for i, i_next in ((ode_steps[0], ode_steps[1]), (ode_steps[mid], ode_steps[mid + 1]), (ode_steps[-1], -1)):
    ab = schedule.alphas_cumprod[i].double()
    noise = torch.randn(digits4.shape, generator=gen).to(DEVICE)
    x_t = (ab.sqrt() * digits4.double() + (1 - ab).sqrt() * noise.double()).float()
    with torch.no_grad():
        eps_hat = model.unet(x_t, torch.full((4,), i, device=DEVICE)).float()
    ddim_x, _ = ddim_step(schedule, x_t, eps_hat, i, i_next, eta=0.0, clip_range=None)
    torch.testing.assert_close(euler_step(schedule, x_t, eps_hat, i, i_next), ddim_x)
    print(f"t = {i + 1:>4} → {i_next + 1:>3}: σ = {sigma_at(schedule, i):>10.4f} → {sigma_at(schedule, i_next):>8.4f};"
          " the Euler step equals ddim_step (η = 0)")

# %% [markdown]
# Note the first step: $\sigma_T$ is in the tens of thousands at $T = 1000$ (section 3 returns to that),
# while the last steps are tiny. With $\sigma$ as the clock, the evenly spaced timesteps are very unevenly
# spaced; Karras et al. choose the steps in $\sigma$ directly.
#
# :::{admonition} Exercise 3.1 (derivation): the DDIM step keeps the marginals
# :class: tip
# Suppose the network were perfect: $\hat\epsilon$ is the true $\epsilon$ of
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$. (a) Show that eq. 12 then gives
# $x_{t'} \sim \mathcal N(\sqrt{\bar\alpha_{t'}}x_0, (1-\bar\alpha_{t'})I)$ for *every* $\sigma_t$ with
# $\sigma_t^2 \le 1 - \bar\alpha_{t'}$ — DDPM's marginal, which is why one trained network serves the whole
# family. (b) Show that eq. 16 with $\eta = 1$ satisfies that bound, so the square root in eq. 12 is
# real for $0 \le \eta \le 1$, and find the largest $\eta$ a step allows. Check (a) on real digits for
# $\eta = 0, 0.5, 1$, and print the smallest such largest $\eta$ over this chapter's steps.
# :::
#
# :::{admonition} Solution 3.1
# :class: dropdown
# (a) With $\hat\epsilon = \epsilon$, $\hat x_0 = x_0$ exactly, and eq. 12 is
# $x_{t'} = \sqrt{\bar\alpha_{t'}}x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma_t^2}\,\epsilon + \sigma_t z$: the sum of two
# independent standard Gaussians with variances $1-\bar\alpha_{t'}-\sigma_t^2$ and $\sigma_t^2$, a Gaussian with
# variance $1 - \bar\alpha_{t'}$ around $\sqrt{\bar\alpha_{t'}}x_0$. (This is Song et al.'s eq. 7 and their
# Lemma 1.) (b) With $\eta = 1$,
# $\sigma_t^2 = (1-\bar\alpha_{t'})\,\frac{1-\bar\alpha_t/\bar\alpha_{t'}}{1-\bar\alpha_t} \le 1-\bar\alpha_{t'}$
# because
# $1 - \bar\alpha_t/\bar\alpha_{t'} \le 1 - \bar\alpha_t$, i.e. $\bar\alpha_{t'} \le 1$. The bound
# $\eta^2\sigma_t(1)^2 \le 1-\bar\alpha_{t'}$ gives
# $\eta_{\max} = \sqrt{(1-\bar\alpha_t)/(1-\bar\alpha_t/\bar\alpha_{t'})} \ge 1$;
# it is close to 1 where $\bar\alpha_t \ll \bar\alpha_{t'}$ (the first steps, and every step when $S$ is small)
# and larger for short steps. (The last step, to $t' = 0$, has $\sigma_t = 0$ for every $\eta$.) The cell
# measures the variance of $x_{t'} - \sqrt{\bar\alpha_{t'}}x_0$ on real digits, which matches
# $1 - \bar\alpha_{t'}$ for each $\eta$ to sampling error, and prints the smallest $\eta_{\max}$ over this
# chapter's steps, just above 1, at the first step.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.1: with the true ε, one DDIM step gives DDPM's marginal for every η; the largest η per step.
x0_real = load_mnist("test").images[:512]
gen = torch.Generator().manual_seed(SEED)
eps_true, z = torch.randn(x0_real.shape, generator=gen), torch.randn(x0_real.shape, generator=gen)
i, i_next = ode_steps[mid], ode_steps[mid + 1]
a_t, a_next = (float(schedule.alphas_cumprod[k].double()) for k in (i, i_next))
x_t = (a_t**0.5 * x0_real.double() + (1 - a_t) ** 0.5 * eps_true.double()).float()
for eta in (0.0, 0.5, 1.0):
    x_next, x0_hat = ddim_step(schedule.to("cpu"), x_t, eps_true, i, i_next, eta, z)
    torch.testing.assert_close(x0_hat, x0_real, rtol=0, atol=1e-5)  # a perfect ε̂ recovers x_0
    var = (x_next.double() - a_next**0.5 * x0_real.double()).var().item()
    torch.testing.assert_close(var, 1 - a_next, rtol=0.01, atol=0)
    print(f"t = {i + 1} → {i_next + 1}, η = {eta}: var(x_t′ − √ᾱ_t′ x_0) = {var:.4f}, 1 − ᾱ_t′ = {1 - a_next:.4f}")
abar = [float(schedule.alphas_cumprod[k].double()) for k in ode_steps]
eta_max = [((1 - a) / (1 - a / a_next)) ** 0.5 for a, a_next in zip(abar, abar[1:])]
k = min(range(len(eta_max)), key=eta_max.__getitem__)
print(f"largest allowed η per step: smallest {min(eta_max):.6f} (the step from t = {ode_steps[k] + 1}), "
      f"largest {max(eta_max):.3f}")
assert min(eta_max) >= 1 and k == 0  # just above 1, at the first step

# %% [markdown]
# ## 2. Which timesteps? Start at $t = T$
#
# With $S$ sampling steps we visit a decreasing subsequence $\tau_S > \dots > \tau_1$ of the $T$
# training timesteps. The package spaces them evenly **from $T$ down to $1$**
# (`mnistdiff.ddim.ddim_timesteps`, which returns the indices $\tau - 1$, from $T - 1$ down to $0$), and
# after $\tau_1 = 1$ takes the final step to the clean image. The original DDIM code used a different,
# "leading" spacing, $\tau = 1, 1 + c, 1 + 2c, \dots$ with $c = T/S$ (the indices $0, c, 2c, \dots$), which
# *never visits the last timesteps*: it starts at $t = T - c + 1$. Lin et al.
# ([arXiv:2305.08891](https://arxiv.org/abs/2305.08891), §3.3 and Table 2) show that this is a flaw.
# Sampling starts from pure noise, $x_T \sim \mathcal N(0, I)$, but at $t = T - c + 1$ the network was trained
# on inputs that still contain $\sqrt{\bar\alpha_{t}}\,x_0$ — a visible trace of a digit. Their fix
# is to let the list *trail* from the last timestep, $\tau_S = T$, where the training inputs are
# (almost) pure noise, like $x_T$. The package's evenly spaced list — Lin et al.'s "linspace"
# spacing, which they find as good as their "trailing" one — has that property. For the paper's
# $T = 1000$, as timesteps $t$:

# %%
# NBVAL_CHECK_OUTPUT
cos1000 = NoiseSchedule.make("cosine", 1000)
for S in (5, 10, 20):
    print(f"S = {S:>2}: t = {[i + 1 for i in ddim_timesteps(1000, S)]}")
leading = list(range(0, 1000, 1000 // 10))[::-1]  # the original code's indices 0, c, 2c, …, reversed
print(f"leading spacing, S = 10: t = {[i + 1 for i in leading]}")
for name, i0 in (("this list", 999), ("leading", leading[0])):
    ab = cos1000.alphas_cumprod[i0].item()
    print(f"{name:>10} starts at t = {i0 + 1}: ᾱ_t = {ab:.3e}, the training inputs there hold {ab**0.5:.1%} of x_0")
assert round(cos1000.alphas_cumprod[leading[0]].item() ** 0.5, 2) == 0.15  # the leading list's first input: 15 % of x_0

# %% [markdown]
# With the leading list, the first step asks the network to find the 15 % of a digit that is in
# every training input at $t = 901$ — but $x_T$ contains none. (Exercise 3.2 measures what that does.)
#
# ## 3. The delicate first step
#
# Starting at $t = T$ has a price. The cosine schedule drives $\bar\alpha$ to (almost) zero there —
# that was the point — and the first update divides by $\sqrt{\bar\alpha_T}$:
#
# $$
# \hat x_0 = \frac{x_T - \sqrt{1-\bar\alpha_T}\,\hat\epsilon}{\sqrt{\bar\alpha_T}}
# \quad\text{multiplies the network's error } (x_T - \hat\epsilon)\text{ by }
# 1/\sqrt{\bar\alpha_T} = \sqrt{\sigma_T^2 + 1} .
# $$

# %%
# NBVAL_CHECK_OUTPUT
for T_show in (100, 1000):
    sched_show = NoiseSchedule.make("cosine", T_show)
    ab = sched_show.alphas_cumprod[-1].double().item()
    assert abs(sched_show.betas[-1].item() - 0.999) < 1e-6  # the last β, clipped
    assert abs(ab / sched_show.alphas_cumprod[-2].double().item() - 0.001) < 1e-6  # so ᾱ_T = 0.001 ᾱ_{T−1}
    root = torch.tensor(1 - ab, dtype=torch.float32).sqrt().item()
    print(f"cosine schedule, T = {T_show:>4}: ᾱ_T = {ab:.3e},  1/√ᾱ_T = {ab ** -0.5:>6,.0f},  "
          f"√(1 − ᾱ) in float32 = {root:.9f}")

# %% [markdown]
# (The schedule clips the last $\beta$ at $0.999$, so $\bar\alpha_T = 0.001\,\bar\alpha_{T-1}$;
# the `smoke` profile uses $T = 100$; the paper, the `book` and the `full` profiles $T = 1000$.) With $T = 1000$,
# $\sqrt{1 - \bar\alpha_T}$ even rounds to exactly 1 in float32, so the numerator
# $x_T - \sqrt{1-\bar\alpha_T}\,\hat\epsilon$ is nothing but the network's error, and the tiny
# $\sqrt{\bar\alpha_T}$ term that float32 drops is why the package does this arithmetic in float64.
# Let us take one first step with this profile's trained model, three ways: as written (naive), with
# $\hat x_0$ only clipped to $[-1, 1]$ and the network's raw $\hat\epsilon$ kept ("clip only"), and as the
# package does it (clip, then recompute $\hat\epsilon$):

# %%
steps = ddim_timesteps(T, PROFILE.ddim_steps)
t0, t1 = steps[0], steps[1]  # package indices: the first step goes from t = t0 + 1 = T to t = t1 + 1
x_T = torch.randn((N, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
with torch.no_grad():
    eps_hat = model.unet(x_T, torch.full((N,), t0, device=DEVICE)).float()
ab0 = schedule.alphas_cumprod[t0].to(DEVICE)
ab1 = float(schedule.alphas_cumprod[t1].double())

x0_naive = (x_T - (1 - ab0).sqrt() * eps_hat) / ab0.sqrt()  # float32, unclipped
x1_naive = ab1**0.5 * x0_naive + (1 - ab1) ** 0.5 * eps_hat  # eq. 12 with η = 0, as written
x1_clip = ab1**0.5 * x0_naive.clamp(-1, 1) + (1 - ab1) ** 0.5 * eps_hat  # x̂_0 clipped, the raw ε̂ kept
x1_safe, x0_safe = ddim_step(schedule.to(DEVICE), x_T, eps_hat, t0, t1, eta=0.0)  # clipped, ε̂ recomputed, float64
first_steps = {"naive (as written)": (x0_naive, x1_naive), "clip only": (x0_naive.clamp(-1, 1), x1_clip),
               "package (clip, recompute ε̂)": (x0_safe, x1_safe)}

net_err = (x_T - eps_hat).abs().mean().item()
first_stats = {name: (x0_v.abs().max().item(), x1_v.std().item(), (x1_v - x1_safe).abs().mean().item())
               for name, (x0_v, x1_v) in first_steps.items()}
print(f"network error |x_T − ε̂|: mean {net_err:.4f}; "
      f"a noisy image at t = {t1 + 1} has a standard deviation of about 1. After the first step:")
print(f"{'first step':<30}{'max |x̂_0|':>12}{'std(x_t1)':>12}{'mean |x_t1 − package x_t1|':>30}")
for name, (x0_max, x1_std, x1_gap) in first_stats.items():
    print(f"{name:<30}{x0_max:>12,.0f}{x1_std:>12.4f}{x1_gap:>30.4f}")

# %% tags=["remove-input"]
naive_max, naive_std, _ = first_stats["naive (as written)"]
clip_std, clip_gap = first_stats["clip only"][1:]
Markdown(rf"""The naive step multiplies the network's error, {net_err:.4f} per pixel on average, into a
$\hat x_0$ as large as {naive_max:,.0f}, and then re-noises *that* to level $t_1$: $x_{{t_1}}$ has a standard
deviation of {naive_std:.1f}, {naive_std / clip_std:.0f} times the scale the network was trained on (a
standard deviation near 1). **Clipping** is what removes the blow-up: with $\hat x_0$ in $[-1, 1]$, $x_{{t_1}}$
is back on the training scale (a standard deviation of {clip_std:.4f}).""")

# %% [markdown]
# Keeping the raw $\hat\epsilon$ with the clipped $\hat x_0$ leaves the two terms of eq. 12 slightly
# inconsistent with $x_t$: they no longer add up to $x_t$ at the level $t$. Recomputing $\hat\epsilon$ from
# the clipped $\hat x_0$ keeps the step on the line between $\hat x_0$ and $x_t$ (and at $t = T$ it gives
# $\hat\epsilon \approx x_T$, which is right: $x_T$ *is* noise). The difference between the two is the
# network's error, $\lvert x_T - \hat\epsilon\rvert$, carried into $x_{t_1}$ with weight
# $\sqrt{1 - \bar\alpha_{t_1}} \approx 1$: the table's last column for "clip only" matches the network's mean
# error printed above it, and is as small as that error. Finishing all three from their $x_{t_1}$ with the
# package's sampler:

# %%
with torch.no_grad():
    rest = dict(timesteps=steps[1:], eta=0.0, device=DEVICE)
    finished = {name: ddim_sample_loop(model.unet, schedule, x_T.shape, x_T=x1_v, **rest).images.clamp(-1, 1).cpu()
                for name, (_, x1_v) in first_steps.items()}
from_naive, from_safe = finished["naive (as written)"], finished["package (clip, recompute ε̂)"]
fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 1.2 * ((N + 7) // 8)))
show_grid(from_naive, nrow=8, title="naive first step, then the package's steps", ax=axes[0])
show_grid(from_safe, nrow=8, title="the package's steps throughout", ax=axes[1])
fig.tight_layout()
plt.show()
final_gap = {name: (finished[name] - from_safe).abs().mean().item() for name in ("naive (as written)", "clip only")}
for name, gap in final_gap.items():
    print(f"mean |difference| from the package's final samples, {name} first step: {gap:.4f} per pixel")

# %% tags=["remove-input"]
closer = final_gap["naive (as written)"] / final_gap["clip only"]
if closer >= 5:
    clip_words = (rf"{closer:.0f} times closer than the naive one: clipping does almost all of the work, and "
                  rf"recomputing $\hat\epsilon$ is a consistency fix that costs nothing")
else:
    clip_words = (rf"only {closer:.1f} times closer than the naive one: this network's error at $t = T$ is large, "
                  rf"so the consistency fix, recomputing $\hat\epsilon$, matters as much as the clip")
Markdown(rf"""The later steps clip, so they may pull a derailed trajectory partway back; how far depends on
what the network does with inputs {naive_std / clip_std:.0f} times larger than any it was trained on, which
nothing controls (here the naive first step changes the final samples by {final_gap["naive (as written)"]:.2f}
per pixel on average, on pixels in $[-1, 1]$). The "clip only" step ends within
{final_gap["clip only"]:.3f} per pixel of the package's, {clip_words}. The package's first step never leaves
the training range.""")

# %% [markdown]
# ## 4. DDIM and DDPM from the same noise
#
# The package's `DiffusionModel.sample` seeds one random generator, draws $x_T$ from it, and (when
# $\eta > 0$) the noise $z$ of each step. So the same seed gives the same $x_T$ to every sampler,
# and we can compare them image by image: DDPM with all $T$ steps against DDIM with
# $S = $ `PROFILE.ddim_steps` deterministic steps.

# %%
def timed_sample(n: int, **kwargs) -> tuple[torch.Tensor, float]:
    """Samples and seconds per sample."""
    start = time.perf_counter()
    x, _ = model.sample(n, seed=SEED, device=DEVICE, **kwargs)
    return x, (time.perf_counter() - start) / n


ddpm, ddpm_sec = timed_sample(N, sampler="ddpm")
ddim, ddim_sec = timed_sample(N, sampler="ddim", steps=PROFILE.ddim_steps, eta=0.0)
fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 1.2 * ((N + 7) // 8)))
show_grid(ddpm, nrow=8, title=f"DDPM, {T} steps: {ddpm_sec * 1e3:.0f} ms/sample", ax=axes[0])
show_grid(ddim, nrow=8, title=f"DDIM, {PROFILE.ddim_steps} steps, η = 0: {ddim_sec * 1e3:.0f} ms/sample", ax=axes[1])
fig.tight_layout()
plt.show()

# %% [markdown]
# The samples differ — DDPM adds fresh noise at every step, so $x_T$ does not decide its digit
# alone — but DDIM's cost is $S/T$ of DDPM's.
#
# ### DDPM is DDIM with every step and $\eta = 1$
#
# Take all $T$ timesteps ($t' = t - 1$) and $\eta = 1$. Then eq. 16 gives
# $\sigma_t^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\big(1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}}\big)
# = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t = \tilde\beta_t$, DDPM's posterior variance, and
# since $1 - \bar\alpha_{t-1} - \tilde\beta_t = \frac{\alpha_t (1-\bar\alpha_{t-1})^2}{1-\bar\alpha_t}$, the
# deterministic part of eq. 12, with $\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0)/\sqrt{1-\bar\alpha_t}$, becomes
#
# $$
# \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}
#   \big(x_t - \sqrt{\bar\alpha_t}\,\hat x_0\big)
# = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,\hat x_0
#   + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
# = \tilde\mu_t(x_t, \hat x_0),
# $$
#
# DDPM's posterior mean (chapter 2). Both samplers draw $x_T$ and then one $z$ per step from the
# same generator, so with the same seed they should produce the same images, up to rounding
# (DDPM does its arithmetic in float32, DDIM in float64; over many steps the tiny differences can
# grow a little, hence a tolerance well below what an eye could see):

# %%
N_CHECK = min(N, 4)  # T network calls per image: a few images prove the point
# float32 network (precision="fp32"): under bf16 the two samplers' tiny rounding differences would grow over T steps
ddim_all, _ = timed_sample(N_CHECK, sampler="ddim", steps=T, eta=1.0, precision="fp32")
ddpm_few, _ = timed_sample(N_CHECK, sampler="ddpm", precision="fp32")
gap = (ddim_all - ddpm_few).abs().max().item()
torch.testing.assert_close(ddim_all, ddpm_few, rtol=0, atol=5e-3)
print(f"DDIM (S = T = {T}, η = 1) vs DDPM, same seed: max |difference| = {gap:.1e} over {N_CHECK} images")

# %% [markdown]
# ## 5. Fewer steps: time against quality
#
# Now sweep the number of steps, `PROFILE.ddim_step_sweep`, with $\eta = 0$ and the same seed, and
# record the time per sample. For quality we use the project's metrics (`mnistdiff.evaluation.metrics`):
# the Fréchet distance on the features of an MNIST classifier (classifier-FID; Heusel et al.,
# [arXiv:1706.08500](https://arxiv.org/abs/1706.08500)) and the others `evaluate` returns. On a GPU
# each setting gets `PROFILE.eval_samples` samples; on a CPU we keep to `PROFILE.num_samples` so that
# the chapter runs in seconds. With so few samples FID is strongly biased upwards, and noisy: it varies
# from one set of samples to the next even when nothing else changes. So we score the **floor** beside
# the samplers: `N_EVAL` real training digits, measured the same way (`mnistdiff.evaluation.metrics.real_floor`,
# as in chapter 6), the best a generator can expect at that $n$; and five such sets of real digits, drawn
# with different seeds, show how far the score of $n$ images moves by chance alone. Chapter 6 scores every
# sampler on `PROFILE.eval_samples` samples.

# %%
N_EVAL = PROFILE.eval_samples if DEVICE.type == "cuda" else N
try:
    from mnistdiff.evaluation.classifier import load_classifier
    from mnistdiff.evaluation.metrics import evaluate, real_floor

    load_classifier(DEVICE)  # raises when the classifier's weights are missing
    QUALITY = "FID"
except (ImportError, RuntimeError) as err:
    QUALITY = "pixel W1"  # a simple statistic, used only when the metrics are not available
    print(f"mnistdiff.evaluation.metrics is not usable here ({type(err).__name__}); showing a simple statistic instead of FID:")
    print("pixel W1 = 1-D Wasserstein distance between the pixel-value distributions of the samples and of "
          "1,000 test images (lower is better; it ignores shape entirely)")


def quality(x: torch.Tensor) -> dict[str, float]:
    """Sample quality of (N, 1, 32, 32) images in [−1, 1]: the project's metrics, or the simple fallback."""
    if QUALITY == "FID":
        m = evaluate(x, seed=SEED, include_memorisation=False)
        return {"FID": m["fid"], "precision": m["precision"], "recall": m["recall"], "confidence": m["confidence"]}
    q = torch.linspace(0, 1, 1001)
    real = load_mnist("test").images[:1000].flatten()
    return {"pixel W1": (torch.quantile(x.flatten().float(), q) - torch.quantile(real, q)).abs().mean().item()}


def real_quality(n: int, seed: int) -> dict[str, float]:
    """The floor: the same measures for n real training digits, a seeded subset (`real_floor` for the metrics)."""
    if QUALITY == "FID":
        m = real_floor(n, seed=seed, device=DEVICE, include_memorisation=False)
        return {"FID": m["fid"], "precision": m["precision"], "recall": m["recall"], "confidence": m["confidence"]}
    return quality(load_mnist("train").subset(n, seed=seed).images)


# %%
results = []
for S in PROFILE.ddim_step_sweep:
    x, sec = timed_sample(N_EVAL, sampler="ddim", steps=S, eta=0.0)
    results.append({"sampler": f"DDIM {S}", "steps": S, "ms/sample": sec * 1e3, **quality(x)})
x, sec = (ddpm, ddpm_sec) if N_EVAL == N else timed_sample(N_EVAL, sampler="ddpm")
results.append({"sampler": f"DDPM {T}", "steps": T, "ms/sample": sec * 1e3, **quality(x)})

floor_sets = [real_quality(N_EVAL, seed=SEED + k) for k in range(5)]  # five sets of N_EVAL real digits
floor = floor_sets[0]
chance = [f[QUALITY] for f in floor_sets]

keys = [k for k in results[0] if k not in ("sampler", "steps")]
print(f"{N_EVAL} samples per setting, on {DEVICE}")
print(f"{'sampler':<12}" + "".join(f"{k[:14]:>16}" for k in keys))
for r in results + [{"sampler": "real (floor)", **floor}]:
    print(f"{r['sampler']:<12}" + "".join(f"{r[k]:>16.3f}" if k in r else f"{'—':>16}" for k in keys))
print(f"{QUALITY} of five sets of {N_EVAL} real digits: " + ", ".join(f"{v:.3f}" for v in chance))

# %%
ddim_rows = results[:-1]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
axes[0].plot([r["steps"] for r in ddim_rows], [r["ms/sample"] for r in ddim_rows], "o-", label="DDIM, η = 0")
axes[0].plot([T], [results[-1]["ms/sample"]], "s", color="C3", label=f"DDPM ({T} steps)")
axes[0].set(xscale="log", yscale="log", xlabel="network calls (steps)", ylabel="ms per sample",
            title=f"sampling time ({DEVICE})")
axes[1].plot([r["steps"] for r in ddim_rows], [r[QUALITY] for r in ddim_rows], "o-", label="DDIM, η = 0")
axes[1].axhline(results[-1][QUALITY], color="C3", ls="--", label=f"DDPM ({T} steps)")
axes[1].axhline(floor[QUALITY], color="k", ls=":", label=f"floor: {N_EVAL} real digits")
axes[1].axhspan(min(chance), max(chance), color="k", alpha=0.1, label=f"five sets of {N_EVAL} real digits")
axes[1].set(xscale="log", xlabel="network calls (steps)", ylabel=QUALITY[:40] + " (lower is better)",
            title=f"quality ({N_EVAL} samples)")
for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% tags=["remove-input"]
per_step = [r["ms/sample"] / r["steps"] for r in results]
first_row, last_row, ddpm_q = ddim_rows[0], ddim_rows[-1], results[-1][QUALITY]
chance_spread = max(chance) - min(chance)
ddim_gap = last_row[QUALITY] - ddpm_q
if abs(ddim_gap) <= chance_spread:
    verdict = (f"the difference between DDIM-{last_row['steps']} and DDPM, {abs(ddim_gap):.2f}, is within that spread: "
               f"at this $n$ the table cannot rank them")
else:
    verdict = (f"DDIM-{last_row['steps']} is {'better' if ddim_gap < 0 else 'worse'} than DDPM by {abs(ddim_gap):.2f}, "
               f"more than that spread")
above = sum(r[QUALITY] > max(chance) for r in results)
above = (f"all {above} samplers score" if above == len(results) else f"{above} of the {len(results)} samplers score")
if max(per_step) < 1.5 * min(per_step):
    timing = (f"Time is proportional to the number of steps, one network call each: {min(per_step):.1f} to "
              f"{max(per_step):.1f} ms per step for every sampler in the table, DDPM included")
else:
    timing = (f"Time should be proportional to the number of steps, one network call each; in this run the cost "
              f"of a step ranged from {min(per_step):.1f} to {max(per_step):.1f} ms, the noise of a busy machine")
Markdown(f"""{timing}, so DDIM with
{last_row['steps']} steps costs {last_row['ms/sample'] / results[-1]['ms/sample']:.1%} of DDPM's time. Quality
is harder to read at this $n$. DDIM's {QUALITY} goes from {first_row[QUALITY]:.2f} at {first_row['steps']} steps
to {last_row[QUALITY]:.2f} at {last_row['steps']}, against {ddpm_q:.2f} for DDPM with all {T} steps and
{floor[QUALITY]:.2f} for {N_EVAL} real digits; but five sets of {N_EVAL} real digits alone score from
{min(chance):.2f} to {max(chance):.2f}, a spread of {chance_spread:.2f} that is pure chance. {above[0].upper() + above[1:]}
above the worst of those real sets, and {verdict}. Song et al. (Table 1) find, on CIFAR-10 with enough samples to
tell, that DDIM needs a few dozen steps to come close to DDPM with 1000; chapter 6 scores these samplers on
`PROFILE.eval_samples` samples each.""")

# %% [markdown]
# :::{admonition} Exercise 3.2 (an experiment): leading against trailing timesteps
# :class: tip
# Section 2 argued that the original code's "leading" list, which starts at $t = T - c + 1$, asks the network
# for a trace of a digit that pure noise does not hold. Sample `N` images with $S = 10$ steps and
# $\eta = 0$ from the same $x_T$ with both lists (`ddim_sample_loop(..., timesteps=..., eta=0.0)`). *Predict*
# first: will the leading list be visibly worse on this model? Lin et al. (§3.3) find that it cannot
# produce images much brighter or darker than average: what does that predict for the spread of the
# samples' mean brightness? Measure with `quality` and that spread.
# :::
#
# :::{admonition} Solution 3.2
# :class: dropdown
# For $T = 1000$ and $S = 10$ the leading list starts at $t = 901$, where the training inputs hold 15 % of
# $x_0$. The network's first $\hat x_0$ explains $x_T$ as such an input, and a digit's overall brightness —
# its lowest frequency — is something pure noise holds almost none of (the mean of $x_T$'s 1024 pixels has
# a standard deviation of $1/32$), so every sample is pulled towards the average brightness: Lin et al.'s
# prediction is a *smaller* spread of brightness over the samples with the leading list. On MNIST that
# matters less than on photographs, because every image is a bright stroke on black and brightness has
# little room to vary; the cell prints the test digits' own spread for comparison. It also prints how far
# the two lists' samples differ (against two different samples of one list, for scale) and their metrics,
# whose differences should be set against section 5's spread between sets of real digits: a difference
# smaller than that is chance. The paragraph under the cell says what this run shows. On Lin et al.'s
# photographs, where brightness varies widely, the same restriction is a visible flaw.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.2: S = 10, η = 0, the same x_T, the package's list against the original code's leading list.
S_LEAD = 10
lists = {"package (from t = T)": ddim_timesteps(T, S_LEAD), "leading": list(range(0, T, T // S_LEAD))[::-1]}
x_T_lead = torch.randn((N, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
real_means = load_mnist("test").images[:1000].flatten(1).mean(1)
print(f"test digits: spread (std) of the per-image mean pixel value {real_means.std().item():.3f}")
by_list, q_list, bright = {}, {}, {}
for name, idx in lists.items():
    with torch.no_grad():
        x = ddim_sample_loop(model.unet, schedule, x_T_lead.shape, x_T=x_T_lead, timesteps=idx, eta=0.0,
                             device=DEVICE)
    by_list[name] = x.images.clamp(-1, 1).cpu()
    q_list[name] = quality(by_list[name])
    q = ", ".join(f"{k} {v:.3f}" for k, v in q_list[name].items())
    bright[name] = by_list[name].flatten(1).mean(1).std().item()
    print(f"{name.ljust(21)} starts at t = {idx[0] + 1:>4}: {q}; brightness spread {bright[name]:.3f}")
pkg = by_list["package (from t = T)"]
gap = (by_list["leading"] - pkg).abs().mean().item()
other = (pkg - pkg.roll(1, 0)).abs().mean().item()
print(f"mean |difference| between the two lists' samples: {gap:.3f} per pixel "
      f"(between two different samples of one list: {other:.3f})")
fig = show_grid(torch.cat([v[:16] for v in by_list.values()]), nrow=16,
                title=f"S = {S_LEAD}, η = 0, same x_T: top, the package's list; bottom, leading")
plt.show()
b_lead, b_pkg, b_real = bright["leading"], bright["package (from t = T)"], real_means.std().item()
q_lead, q_pkg = q_list["leading"][QUALITY], q_list["package (from t = T)"][QUALITY]
chance_n = chance if N_EVAL == N else [real_quality(N, seed=SEED + k)[QUALITY] for k in range(5)]  # sets of N real digits
chance_spread_n = max(chance_n) - min(chance_n)
real_where = "below both" if b_real < min(b_lead, b_pkg) else "above both" if b_real > max(b_lead, b_pkg) else "between the two"
Markdown(f"""In this run the leading list's brightness spread is {b_lead:.3f}, against {b_pkg:.3f} with the
package's list: {"smaller, as Lin et al. predict" if b_lead < b_pkg else "not smaller, so this run does not show the effect Lin et al. predict"}.
The test digits' own spread is {b_real:.3f}, {real_where}. The two lists give
{"mostly the same digits" if gap < other / 2 else "visibly different digits"} (a mean difference of {gap:.3f} per
pixel, against {other:.3f} between two different samples), and their {QUALITY}s, {q_pkg:.2f} with the package's
list and {q_lead:.2f} with the leading one, differ by {abs(q_lead - q_pkg):.2f},
{"less than" if abs(q_lead - q_pkg) <= chance_spread_n else "more than"} the {chance_spread_n:.2f} by which sets of
{N} real digits differ (section 5). {"On this model and data the leading list is not measurably worse." if abs(q_lead - q_pkg) <= chance_spread_n else ("The leading list is measurably worse here." if q_lead > q_pkg else "The leading list is even measurably better here.")}""")

# %% [markdown]
# ## 6. The effect of $\eta$
#
# $\eta$ interpolates between the deterministic DDIM sampler ($\eta = 0$) and a DDPM-like
# stochastic one ($\eta = 1$). Below, for each number of steps (columns) and each $\eta$ (rows), the
# first samples of one seed: the same $x_T$ everywhere. The explorer under the table lets you move
# both sliders (its samples are computed once, here, so it responds instantly).

# %%
explorer = ddim_explorer(model, PROFILE.ddim_step_sweep, etas=(0.0, 0.5, 1.0), seed=SEED, device=DEVICE,
                         num_samples=min(4, N))
explorer

# %% [markdown]
# On Song et al.'s well-trained CIFAR-10 model, with few steps the stochastic samplers are worse: each
# step's fresh noise has to be removed again by the later steps, and with few steps there is little time
# to do so (their Table 1, where $\eta = 1$ with 10 steps is much worse than $\eta = 0$). This book's
# network shows the opposite. In the explorer the $\eta = 0$ row carries the same blobs and grain at every
# $S$, while the $\eta = 1$ samples are clean even at the fewest steps: fresh noise here *corrects* the
# errors that the deterministic sampler accumulates. Section 7 measures that and explains it. First, how
# far each sample moves away from its $\eta = 0$ version, at `PROFILE.ddim_steps` steps:

# %%
S = PROFILE.ddim_steps if PROFILE.ddim_steps in PROFILE.ddim_step_sweep else PROFILE.ddim_step_sweep[-1]
base = explorer.samples[(S, 0.0)]
for eta in (0.5, 1.0):
    diff = (explorer.samples[(S, eta)] - base).abs().mean().item()
    print(f"S = {S}, η = {eta}: mean |x(η) − x(η=0)| = {diff:.3f} per pixel (pixels lie in [−1, 1])")

# %% [markdown]
# ## 7. Why $\eta = 0$ is fragile on a briefly trained network
#
# The DDIM paper's well-trained CIFAR-10 model samples *better* with $\eta = 0$ (Song et al., Table 1).
# This book's DDPM was trained for about half an hour on two CPU cores, and with it the deterministic
# sampler is visibly worse: many $\eta = 0$ samples keep a grainy background or a blob. Let us measure
# it for each number of steps of the sweep, on one batch from the same $x_T$: the share of pixels
# brighter than $10/255$ ("grain": real digits are mostly black), with its standard error over the batch,
# and, at `PROFILE.ddim_steps` steps, the largest share of one predicted digit.

# %%
from mnistdiff.data import to_uint8
from mnistdiff.evaluation.metrics import class_statistics, classifier_features


def grain(x: torch.Tensor) -> tuple[float, float]:
    """The share of pixels brighter than 10/255: its mean over the images and the standard error of that mean."""
    per_image = (to_uint8(x) > 10).float().flatten(1).mean(1)
    return per_image.mean().item(), per_image.std().item() / len(per_image) ** 0.5


def top_digit(x: torch.Tensor) -> tuple[int, float]:
    """The most common digit the classifier reads in x, and its share."""
    hist = class_statistics(classifier_features(x, device=DEVICE)[1])["class_histogram"]
    top = max(range(10), key=lambda d: hist[d])
    return top, hist[top]


real_digits = load_mnist("test").images[:N]
real_grain, real_top = grain(real_digits), top_digit(real_digits)
print(f"real test digits: grain {real_grain[0]:.3f} ± {real_grain[1]:.3f}; "
      f"most common digit {real_top[0]} ({real_top[1]:.0%} of {N})")
grain_at, at_steps = {}, {}
for S in PROFILE.ddim_step_sweep:
    for eta in (0.0, 1.0):
        x, _ = timed_sample(N, sampler="ddim", steps=S, eta=eta)
        grain_at[S, eta] = grain(x)
        if S == PROFILE.ddim_steps:
            at_steps[eta] = x
    print(f"DDIM-{S:<4} grain  η = 0: {grain_at[S, 0.0][0]:.3f} ± {grain_at[S, 0.0][1]:.3f}   "
          f"η = 1: {grain_at[S, 1.0][0]:.3f} ± {grain_at[S, 1.0][1]:.3f}")
balance = {}
for eta in (0.0, 1.0):
    x = at_steps[eta] if eta in at_steps else timed_sample(N, sampler="ddim", steps=PROFILE.ddim_steps, eta=eta)[0]
    balance[eta] = top_digit(x)
    print(f"DDIM-{PROFILE.ddim_steps}, η = {eta:g}: most common digit {balance[eta][0]} ({balance[eta][1]:.0%} of {N})")

# %% tags=["remove-input"]
S_few, S_most = PROFILE.ddim_step_sweep[0], PROFILE.ddim_step_sweep[-1]


def z_score(S: int) -> float:
    """The difference of the grain between η = 0 and η = 1 at S steps, in standard errors."""
    (g0, se0), (g1, se1) = grain_at[S, 0.0], grain_at[S, 1.0]
    return (g0 - g1) / (se0**2 + se1**2) ** 0.5


def chance_words(z: float) -> str:
    return ("far more than chance" if abs(z) > 3 else "more than chance, if not by much" if abs(z) > 2
            else "within chance")


binom_se = (0.1 * 0.9 / N) ** 0.5  # the standard error of one digit's share, for a balanced sampler
binom_se_eval = (0.1 * 0.9 / PROFILE.eval_samples) ** 0.5
(g0f, _), (g1f, _) = grain_at[S_few, 0.0], grain_at[S_few, 1.0]
(g0m, _), (g1m, _) = grain_at[S_most, 0.0], grain_at[S_most, 1.0]


def grainier(S: int) -> str:
    z = z_score(S)
    return rf"$\eta = {0 if z > 0 else 1}$ is the grainier by {abs(z):.1f} standard errors, {chance_words(z)}"


if g0f > g1f and g0m > g1m:
    widest = ("The gap is widest at the fewest steps, where each step is longest." if g0f - g1f > g0m - g1m
              else "The gap does not narrow with more steps.")
else:
    widest = r"In this run $\eta = 0$ is not the grainier sampler at every step count."
shares = (balance[0.0][1], balance[1.0][1])
if max(shares) <= 0.1 + 3 * binom_se:
    balance_words = (f"but that says little: with {N} samples one digit's share has a binomial standard error of "
                     f"{binom_se * 100:.2f} percentage points around the 10 % of a balanced sampler, and the largest "
                     f"of ten shares lies above 10 % even for real digits ({real_top[1]:.0%} of these {N} test "
                     f"digits). {N} samples cannot show an imbalance of a few points")
else:
    balance_words = (f"more than three binomial standard errors ({binom_se * 100:.2f} percentage points each, for {N} "
                     f"samples) above the 10 % of a balanced sampler: an imbalance this large is no accident of the "
                     f"sample")
Markdown(rf"""With {S_few} steps, $\eta = 0$ leaves a grain of {g0f:.3f} and $\eta = 1$ {g1f:.3f}, against
{real_grain[0]:.3f} for real digits: {grainier(S_few)}. With {S_most} steps it is {g0m:.3f} against {g1m:.3f}:
{grainier(S_most)}. {widest} The most common digit, at {PROFILE.ddim_steps} steps, takes {shares[0]:.0%} of the
$\eta = 0$ samples and {shares[1]:.0%} of the $\eta = 1$ ones, {balance_words}. (Chapter 6's class histograms
use {PROFILE.eval_samples:,} samples, where that standard error is {binom_se_eval * 100:.2f} points.)""")

# %% [markdown]
# Why? Where could the difference come from — a bug, or the sampler's nature? We checked the
# suspects one at a time on an earlier checkpoint of the book model, trained with the unweighted
# $L_\text{simple}$ before chapter 2's min-SNR weighting (`scripts/eta_study.py`, numbers in
# `benchmarks/README.md`):
#
# - **The EMA weights** (could the average still hold early, worse weights?): the raw weights
#   of the last step gave the same grain with $\eta = 0$ as the EMA weights. Not the EMA.
# - **The ill-conditioned first step** (its $\hat x_0$ is a clipped $\pm 1$ pattern, since
#   $1/\sqrt{\bar\alpha_T} \approx 2\cdot 10^4$ magnifies every error): replacing that $\hat x_0$ by 0, or
#   starting at $t = 981$ where the division is harmless ("leading" spacing), lowered the grain only
#   a little. Dynamic thresholding (Saharia et al. 2022) instead of clipping made it much worse.
# - **Stochasticity**: $\eta = 1$ brought the grain down to that of real digits, with the same network and
#   the same number of steps; the table above measures the same comparison on the current checkpoint.
#
# So it is not a bug but the nature of the sampler. DDIM with $\eta = 0$ integrates an ODE: each
# step trusts the network's $\hat\epsilon$ completely and carries its error to the next step, and
# nothing ever removes it. A network that predicts the noise imperfectly — at mid and low noise
# levels, where a stroke and a speck of noise look alike — leaves some of that noise in the image,
# and the deterministic path keeps it to the end. With few steps a second error adds to it: each Euler
# step is long, and misses the curve by more. With $\eta > 0$ every step replaces part of the
# predicted noise with fresh noise of exactly the right size, so the next network call sees an
# input like those it was trained on and can correct both errors: Karras et al.
# ([arXiv:2206.00364](https://arxiv.org/abs/2206.00364), §4, Fig. 5b) find the same, that
# stochastic sampling helps most when the network is weaker. For that reason the package's
# *default* is $\eta = 1$ (`mnistdiff.config.DEFAULT_ETA`, used by `DiffusionModel.sample` and
# `python -m mnistdiff sample`); the core loops, `ddim_step` and `ddim_sample_loop`, have no default and take
# $\eta$ from their caller (this chapter passes the paper's $\eta = 0$ wherever it means the deterministic
# sampler). More training is one remedy; a better-posed target is the other.
#
# **The principled fix for the ill-posed end: $v$-prediction.** An $\epsilon$-network is ill-posed where
# $\bar\alpha_t \to 0$. At $t = T$ the input $x_T$ is almost exactly $\epsilon$, so predicting $\hat\epsilon$ is easy,
# but $\hat x_0 = (x_T - \sqrt{1-\bar\alpha_T}\,\hat\epsilon)/\sqrt{\bar\alpha_T}$ divides the network's error by
# $\sqrt{\bar\alpha_T}$ (section 3); with a *zero* terminal SNR, $\bar\alpha_T = 0$ — which is what starting from
# $x_T \sim \mathcal N(0, I)$ actually assumes — it is $0/0$. Salimans & Ho
# ([arXiv:2202.00512](https://arxiv.org/abs/2202.00512), §4 and appendix D) train the network to predict
# the **velocity**
#
# $$
# v_t = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0
# \qquad\text{instead, and recover}\qquad
# \hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v, \quad
# \hat\epsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,\hat v
# $$
#
# without any division: $(x_t, v_t)$ is $(x_0, \epsilon)$ rotated by the angle $\phi_t$ with
# $\cos\phi_t = \sqrt{\bar\alpha_t}$. At $\bar\alpha_t \to 0$ the target becomes $v_T = -x_0$: the network must
# predict the data from pure noise, and the best it can do, $-\mathbb E[x_0]$ (minus the mean digit), is well
# defined; an error in $\hat v$ reaches $\hat x_0$ with weight $\sqrt{1-\bar\alpha_t} \le 1$ instead of
# $\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$. Lin et al. ([arXiv:2305.08891](https://arxiv.org/abs/2305.08891),
# §3.1–3.2) combine $v$-prediction with a schedule rescaled to zero terminal SNR and the trailing timesteps.
# This book keeps chapter 2's $\epsilon$-network and clips $\hat x_0$: enough at $\bar\alpha_T \approx 2\cdot10^{-9}$,
# but a patch where $v$-prediction is the cure.
#
# :::{admonition} Exercise 3.3 (derivation): recovering $x_0$ and $\epsilon$ from $v$
# :class: tip
# From $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ and
# $v_t = \sqrt{\bar\alpha_t}\epsilon - \sqrt{1-\bar\alpha_t}x_0$,
# derive the formulas for $\hat x_0$ and $\hat\epsilon$ above, and the weight with which an error $\delta$
# in the network's output reaches $\hat x_0$, for an $\epsilon$-network and for a $v$-network. Check the
# formulas numerically, and print both weights for this chapter's schedule at $t = T$, in the middle and
# at $t = 1$.
# :::
#
# :::{admonition} Solution 3.3
# :class: dropdown
# Write $a = \sqrt{\bar\alpha_t}$, $b = \sqrt{1-\bar\alpha_t}$, $a^2 + b^2 = 1$. Then
# $\begin{pmatrix} x_t \\ v_t\end{pmatrix}
# = \begin{pmatrix} a & b \\ -b & a\end{pmatrix}\begin{pmatrix} x_0 \\ \epsilon\end{pmatrix}$,
# a rotation, whose inverse is its transpose: $x_0 = a\,x_t - b\,v_t$ and $\epsilon = b\,x_t + a\,v_t$. An
# error $\delta$ in $\hat v$ moves $\hat x_0$ by $-b\,\delta$, at most $\lvert\delta\rvert$; an error $\delta$ in
# $\hat\epsilon$ moves $\hat x_0 = (x_t - b\hat\epsilon)/a$ by $-(b/a)\,\delta = -\sigma_t\delta$, which is unbounded as
# $a \to 0$. The cell checks the formulas on digits and prints the two weights: the $\epsilon$-weight is
# $\sigma_T$, about $2\cdot 10^4$ at $t = T$ for $T = 1000$, the $v$-weight just under 1; at $t = 1$ both are small.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.3: v = √ᾱ ε − √(1−ᾱ) x_0 inverted without division, and the error weights of ε̂ and v̂ in x̂_0.
x0_v = load_mnist("test").images[:64].double()
eps_v = torch.randn(x0_v.shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
for i in (T - 1, T // 2, 0):
    ab = schedule.alphas_cumprod[i].double().cpu()
    x_t, v = ab.sqrt() * x0_v + (1 - ab).sqrt() * eps_v, ab.sqrt() * eps_v - (1 - ab).sqrt() * x0_v
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0_v)
    torch.testing.assert_close((1 - ab).sqrt() * x_t + ab.sqrt() * v, eps_v)
    print(f"t = {i + 1:>4}: an error δ reaches x̂_0 as {((1 - ab) / ab).sqrt().item():>10.4g}·δ from ε̂, "
          f"{(1 - ab).sqrt().item():.4g}·δ from v̂")
print("x̂_0 = √ᾱ x_t − √(1−ᾱ) v and ε = √(1−ᾱ) x_t + √ᾱ v hold at every t checked")

# %% [markdown]
# ## 8. Running the ODE backwards: inversion and interpolation
#
# With $\eta = 0$ the sampler is a deterministic map from noise to digits, the solution of an ODE
# (section 1). An ODE can be run in both directions, so the map can be inverted: start at a real digit
# $x_0$ ($\sigma = 0$) and take the same Euler steps *upwards*, through the same timesteps in reverse,
#
# $$
# \bar x_{\tau_{i+1}} = \bar x_{\tau_i} + (\sigma_{\tau_{i+1}} - \sigma_{\tau_i})\,\epsilon_\theta(x_{\tau_i}, \tau_i),
# $$
#
# up to $t = T$ (Song et al., §5.4; the first step, from the clean digit, calls the network at $t = 1$).
# The result is a noise $x_T$ that the sampler should turn back into the digit. The two directions do
# not quite match: going up, each step uses the slope at its lower end; coming down, at its upper end.
# `euler_step` (checked against `ddim_step` in section 1) does both:


# %%
@torch.no_grad()
def ddim_invert(unet: torch.nn.Module, sched: NoiseSchedule, x0: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Run DDIM's ODE (η = 0) upwards, from x_0 through the package indices steps[::-1] to x_T."""
    x, i_prev = x0.clone(), -1
    for i in steps[::-1]:
        eps_hat = unet(x, torch.full((x.shape[0],), max(i_prev, 0), device=x.device)).double()
        x, i_prev = euler_step(sched, x, eps_hat, i_prev, i), i
    return x


inv_steps = ddim_timesteps(T, PROFILE.ddim_steps)
digits8 = load_mnist("test").images[:8].to(DEVICE)
latents = ddim_invert(model.unet, schedule, digits8, inv_steps)
with torch.no_grad():
    recon = ddim_sample_loop(model.unet, schedule, digits8.shape, x_T=latents, timesteps=inv_steps, eta=0.0,
                             device=DEVICE)
    recon_noclip = ddim_sample_loop(model.unet, schedule, digits8.shape, x_T=latents, timesteps=inv_steps, eta=0.0,
                                    device=DEVICE, clip_range=None)
recon, recon_noclip = recon.images.clamp(-1, 1), recon_noclip.images.clamp(-1, 1)


def pixel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean |x − ref| per pixel, on pixels in [−1, 1]."""
    return (x.cpu() - ref.cpu()).abs().mean().item()


show_grid(torch.cat([digits8, (latents / 3).clamp(-1, 1), recon]).cpu(), nrow=8,
          title=f"test digits → inverted x_T (÷3 to show) → DDIM-{len(inv_steps)} back")
plt.show()
centred = digits8.flatten(1) - digits8.flatten(1).mean(1, keepdim=True)
lat_std = latents.std().item()
lat_cos = torch.nn.functional.cosine_similarity(latents.flatten(1), centred).mean().item()
inv_err = {"clip": pixel_error(recon, digits8), "no clip": pixel_error(recon_noclip, digits8),
           "other digit": pixel_error(digits8.roll(1, 0), digits8)}
print(f"inverted x_T: mean {latents.mean().item():.3f}, std {lat_std:.3f} (noise: 0 and 1), "
      f"cosine with the centred digit {lat_cos:.3f}")
print(f"reconstruction error, DDIM-{len(inv_steps)} down again:  {inv_err['clip']:.4f} per pixel")
print(f"                      the same without clipping x̂_0: {inv_err['no clip']:.4f} per pixel")
print(f"for scale: a test digit against the next one:       {inv_err['other digit']:.4f} per pixel")

# %% tags=["remove-input"]
round_trip = ("works well: the reconstructions are the test digits" if inv_err["clip"] < inv_err["other digit"] / 3
              else "works only in part: the reconstructions are closer to the test digits than another digit is"
              if inv_err["clip"] < inv_err["other digit"] else "fails: the reconstructions are no closer to the test "
              "digits than another digit is")
outline = ", so the digit's outline shows through" if lat_cos > 0.1 else ""
noclip = ("more than between two different digits: the reconstruction is lost"
          if inv_err["no clip"] > inv_err["other digit"] else "a large part of the way to another digit's")
Markdown(rf"""Here the round trip {round_trip}, with an error of {inv_err["clip"]:.3f} per pixel against
{inv_err["other digit"]:.3f} between two different test digits. {"But" if inv_err["clip"] < inv_err["other digit"] else "And"}
the inverted $x_T$ is not quite noise: its standard deviation is {lat_std:.2f} rather than 1, and its cosine with
the centred digit is {lat_cos:.2f} rather than about 0{outline}. A briefly trained network's slopes are not those of the
exact ODE, so its "inverse" is partly an autoencoder that hides the digit in the noise. The clipping of
section 3 is essential here too: the first sampling step, at $t = T$, divides the difference between the
network's $\hat\epsilon$ and the one the inversion used by $\sqrt{{\bar\alpha_T}}$, and without the clip the
reconstruction error is {inv_err["no clip"]:.3f} per pixel, {noclip}.""")

# %% [markdown]
# :::{admonition} Exercise 3.4 (an experiment): inversion with more or fewer steps
# :class: tip
# Invert the same digits and sample them back with each step count in `PROFILE.ddim_step_sweep`. Euler's
# method is more accurate with smaller steps: *predict* how the reconstruction error changes with $S$.
# Measure it, together with the standard deviation of the inverted $x_T$ (1 for real noise).
# :::
#
# :::{admonition} Solution 3.4
# :class: dropdown
# The naive prediction is that the error falls with $S$, since each Euler step is more accurate. But the
# step count changes the latent too, and the cell prints both. With few, long steps the inversion is a crude
# encoder that leaves much of the digit in $x_T$ (a standard deviation well below 1), and the sampler finds
# it again; with more steps the inversion comes closer to the ODE, the latent looks more like noise, and
# more of the reconstruction rests on the ill-posed first steps near $t = T$, where the mismatch between
# the two directions is largest. So the error need not fall with $S$. A faithful inversion is one whose
# $x_T$ is both noise-like and decodes to the digit; the paragraph under the cell says how this network
# trades one against the other.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.4: invert with S steps and sample back with the same S, for every S of the profile's sweep.
inv_sweep = {}
for S in PROFILE.ddim_step_sweep:
    idx = ddim_timesteps(T, S)
    lat = latents if idx == inv_steps else ddim_invert(model.unet, schedule, digits8, idx)
    with torch.no_grad():
        rec = ddim_sample_loop(model.unet, schedule, digits8.shape, x_T=lat, timesteps=idx, eta=0.0, device=DEVICE)
    inv_sweep[S] = (pixel_error(rec.images.clamp(-1, 1), digits8), lat.std().item())
    print(f"S = {S:>3}: reconstruction error {inv_sweep[S][0]:.4f} per pixel, std of the inverted x_T {inv_sweep[S][1]:.3f}")


def trend(values: list[float]) -> str:
    pairs = list(zip(values, values[1:]))
    return "grows" if all(b > a for a, b in pairs) else "falls" if all(b < a for a, b in pairs) else "does not move one way"


errs, stds = [e for e, _ in inv_sweep.values()], [v for _, v in inv_sweep.values()]
steps_words = ", ".join(f"{S}" for S in inv_sweep)
Markdown(f"""Here, for $S$ = {steps_words}, the reconstruction error {trend(errs)} with $S$
({", ".join(f"{e:.3f}" for e in errs)} per pixel) and the inverted $x_T$'s standard deviation {trend(stds)}
({", ".join(f"{v:.2f}" for v in stds)}; 1 for real noise). {"More steps give a more noise-like latent at some cost in the reconstruction." if trend(errs) == "grows" and trend(stds) == "grows" else "More steps give a more noise-like latent and a better reconstruction: the naive prediction holds." if trend(errs) == "falls" and trend(stds) == "grows" else "The two do not trade against each other simply here."}""")

# %% [markdown]
# **Interpolation.** The inversion's $x_T$ is only nearly noise, but any two real noises $x_T^{(0)}$, $x_T^{(1)}$
# decode to two digits, and the noises between them to a path between the digits. Not the straight line,
# though. A standard Gaussian in $d = 1024$ dimensions lies, with overwhelming probability, near the sphere
# of radius $\sqrt d = 32$: $\lVert\epsilon\rVert^2$ is a sum of $d$ squares, with mean $d$ and variance $2d$, so
# $\lVert\epsilon\rVert \approx \sqrt d \pm 1/\sqrt 2$. Two independent draws are nearly orthogonal, and the
# midpoint of the straight line between them has norm about $\sqrt{d/2} \approx 22.6$, a noise the sampler
# never starts from. **Spherical linear interpolation** (slerp; Shoemake 1985, used for GAN and diffusion
# latents since White, [arXiv:1609.04468](https://arxiv.org/abs/1609.04468)) walks the great circle instead:
#
# $$
# \mathrm{slerp}(x^{(0)}, x^{(1)}; w) = \frac{\sin((1-w)\theta)}{\sin\theta}\,x^{(0)}
#   + \frac{\sin(w\theta)}{\sin\theta}\,x^{(1)},
# \qquad \cos\theta = \frac{\langle x^{(0)}, x^{(1)}\rangle}{\lVert x^{(0)}\rVert\,\lVert x^{(1)}\rVert},
# $$
#
# which keeps the norm (exactly, when the two norms are equal). Each noise on the path is decoded with
# DDIM, $\eta = 0$, so that the path is a function of $x_T$ alone:


# %%
def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical linear interpolation between a and b (any shape), w ∈ [0, 1]."""
    theta = torch.arccos((a * b).sum() / (a.norm() * b.norm()))
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


def decode(x_T: torch.Tensor) -> torch.Tensor:
    """DDIM with `PROFILE.ddim_steps` steps and η = 0, a function of x_T alone: images in [−1, 1], on the CPU."""
    with torch.no_grad():
        out = ddim_sample_loop(model.unet, schedule, x_T.shape, x_T=x_T.to(DEVICE), ddim_steps=PROFILE.ddim_steps,
                               eta=0.0, device=DEVICE)
    return out.images.clamp(-1, 1).cpu()


def read(x: torch.Tensor) -> tuple[list[int], list[float]]:
    """The digit the classifier reads in each image, and its confidence."""
    conf, digit = classifier_features(x, device=DEVICE)[1].max(1)
    return digit.tolist(), conf.tolist()


# the two ends: of 16 seeded noises, the two whose samples the classifier reads most confidently, as two
# different digits, so that the path joins two good samples (the seed's first two noises decode to blobs)
gen = torch.Generator().manual_seed(SEED)
candidates = torch.randn(16, 1, 32, 32, generator=gen)
norms = torch.randn(10_000, 32 * 32, generator=gen).norm(dim=1)
d = candidates[0].numel()
assert d == 1024 and abs(math.sqrt(d / 2) - 22.6) < 0.05  # the straight line's midpoint norm, for orthogonal ends
cand_digit, cand_conf = read(decode(candidates))
order = sorted(range(len(candidates)), key=lambda i: -cand_conf[i])
i_a = order[0]
i_b = next((i for i in order if cand_digit[i] != cand_digit[i_a]), order[1])
z_a, z_b = candidates[i_a], candidates[i_b]
weights = torch.linspace(0, 1, 9)
path = torch.stack([slerp(z_a, z_b, float(w)) for w in weights])
strip = decode(path)
strip_digit, strip_conf = read(strip)
show_grid(strip, nrow=9, title=f"slerp between two x_T, decoded with DDIM-{PROFILE.ddim_steps}, η = 0")
plt.show()
cos = torch.nn.functional.cosine_similarity(z_a.flatten(), z_b.flatten(), dim=0).item()
path_norms = path.flatten(1).norm(dim=1)
print(f"norms of 10,000 noises in d = {d}: mean {norms.mean():.2f}, std {norms.std():.2f} (√d = 32, 1/√2 = 0.71)")
print(f"the two ends (noises {i_a} and {i_b} of {len(candidates)}): norms {z_a.norm():.2f} and {z_b.norm():.2f}, "
      f"cos θ = {cos:.3f}")
print("slerp path norms:", " ".join(f"{v:.1f}" for v in path_norms.tolist()))
print("the classifier reads:", " ".join(f"{k} ({c:.2f})" for k, c in zip(strip_digit, strip_conf)))

# %% tags=["remove-input"]
lo, hi = (norms.mean() - 3 * norms.std()).item(), (norms.mean() + 3 * norms.std()).item()
inside = bool(((path_norms > lo) & (path_norms < hi)).all())
k_min = min(range(len(strip_conf)), key=strip_conf.__getitem__)
if strip_conf[k_min] > 0.9:
    reading = "every frame is read confidently as a digit"
elif strip_conf[k_min] > 0.5:
    reading = (f"the frames in between are read less surely (the least, {strip_conf[k_min]:.2f}, is frame {k_min + 1}): "
               "shapes between two digits")
else:
    reading = (f"some frames in between are not read as any one digit (the least confidence, {strip_conf[k_min]:.2f}, "
               f"is frame {k_min + 1}): the path passes through shapes that are not digits")
ends = ("the two candidates the classifier reads most confidently as different digits"
        if cand_digit[i_a] != cand_digit[i_b] else "the two candidates the classifier reads most confidently")
Markdown(f"""The ends are {ends}: {"an" if cand_digit[i_a] == 8 else "a"} {cand_digit[i_a]} ({cand_conf[i_a]:.2f})
and {"an" if cand_digit[i_b] == 8 else "a"} {cand_digit[i_b]} ({cand_conf[i_b]:.2f}). The path's noises have
norms from {path_norms.min():.1f} to {path_norms.max():.1f}, {"all" if inside else "not all"} within three standard
deviations of real noise's ({lo:.1f} to {hi:.1f}). Along the strip the classifier reads
{", ".join(str(k) for k in strip_digit)}, with confidence from {min(strip_conf):.2f} to {max(strip_conf):.2f}:
{reading}. (A confident reading is necessary for a digit-like frame, not sufficient: the classifier is
confident on some shapes that are no digit, so look at the strip too.)""")

# %% [markdown]
# :::{admonition} Exercise 3.5 (a change to the code): the straight line instead
# :class: tip
# Replace `slerp` by linear interpolation, $(1 - w)\,x^{(0)} + w\,x^{(1)}$. *Predict* the norm of the
# midpoint for the two ends above, and what the decoded midpoint will look like given that
# $\hat\epsilon \approx x_T$ at the first step (section 3). Then decode the straight path and compare its
# frames' contrast (the standard deviation of their pixels) with the slerp strip's.
# :::
#
# :::{admonition} Solution 3.5
# :class: dropdown
# The midpoint's norm is
#
# $$
# \tfrac12\lVert x^{(0)} + x^{(1)}\rVert
# = \tfrac12\sqrt{\lVert x^{(0)}\rVert^2 + \lVert x^{(1)}\rVert^2 + 2\langle x^{(0)}, x^{(1)}\rangle},
# $$
#
# about $\sqrt{d/2} \approx 22.6$ for nearly orthogonal ends: some thirteen standard deviations below any
# real noise. The sampler removes "noise" of the size it expects at each level, so from a too-small $x_T$
# it has less left to build the digit from: expect fainter, thinner strokes in the middle of the path.
# The cell prints the norms and the contrast of both strips, and, for scale, the range of contrast of
# real test digits; the paragraph under it says what this run shows. Slerp keeps every frame a typical
# noise. That makes every decoded frame a sample like any other of this sampler, not necessarily a
# better digit: where the sampler's own samples are too thick, a fainter frame can even look cleaner.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.5: the straight path between the same two noises, its norms, and the contrast of both strips.
line = torch.stack([(1 - w) * z_a + w * z_b for w in weights])
strip_line = decode(line)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
show_grid(strip, nrow=9, title="slerp", ax=axes[0])
show_grid(strip_line, nrow=9, title="straight line", ax=axes[1])
fig.tight_layout()
plt.show()
print("straight-line norms: ", " ".join(f"{v:.1f}" for v in line.flatten(1).norm(dim=1).tolist()))
contrast = {name: x.flatten(1).std(1).tolist() for name, x in (("slerp", strip), ("straight line", strip_line))}
for name, c in contrast.items():
    print(f"pixel std per frame, {name.ljust(13)}", " ".join(f"{v:.2f}" for v in c))
real_c = load_mnist("test").images[:1000].flatten(1).std(1)
real_c05, real_med, real_c95 = real_c.quantile(torch.tensor([0.05, 0.5, 0.95])).tolist()
print(f"pixel std of real test digits: 5th percentile {real_c05:.2f}, median {real_med:.2f}, "
      f"95th percentile {real_c95:.2f}")
mid = len(weights) // 2
mid_norm = line[mid].norm().item()
assert mid_norm < norms.mean().item() - 5 * norms.std().item()  # the midpoint is far below any real noise's norm
line_mid, slerp_c = contrast["straight line"][mid], contrast["slerp"]
faint = {name: sum(v < real_c05 for v in c) for name, c in contrast.items()}
faint_words = " and ".join(f"{'none' if k == 0 else k} of the {name} frames" for name, k in faint.items())
if line_mid < min(slerp_c):
    verdict = "the prediction holds: the straight line thins the strokes in the middle of the path"
    if abs(line_mid - real_med) < min(abs(v - real_med) for v in slerp_c):
        verdict += (". Yet its midpoint is closer to the median real digit than any slerp frame: fainter than this "
                    "sampler's own samples, not fainter than real digits")
else:
    verdict = "the prediction does not hold in this run"
Markdown(f"""Here the straight path's midpoint has norm {mid_norm:.1f},
{(norms.mean().item() - mid_norm) / norms.std().item():.0f} standard deviations below real noise's mean, and the
contrast of its decoded frames goes from {contrast["straight line"][0]:.2f} at one end to {line_mid:.2f} at the
midpoint, against {min(slerp_c):.2f} to {max(slerp_c):.2f} along the slerp strip; real test digits have a median of
{real_med:.2f} and a 5th percentile of {real_c05:.2f}, and {faint_words} fall below that. So {verdict}.""")

# %% [markdown]
# ## What we learned, and what comes next
#
# - **DDIM** reuses the DDPM network unchanged: predict $\hat x_0$, then re-noise it to an earlier
#   timestep with the predicted noise (eq. 12); $\eta$ sets how much fresh noise is mixed in (eq. 16).
# - The timestep list must **start at $T$**, where training inputs are pure noise like $x_T$;
#   there $\bar\alpha \approx 2\cdot10^{-9}$ (cosine, $T = 1000$), so $\hat x_0$ must be **clipped** and
#   $\hat\epsilon$ **recomputed** from it, or the first step throws the sample off the data scale.
# - With every step and $\eta = 1$, DDIM **is** DDPM; with a few dozen steps it costs a few percent of
#   DDPM's time, and Song et al. find it nearly as good. Judging that on a few dozen samples needs the
#   floor and its chance spread beside the scores (section 5).
# - $\eta = 0$ is deterministic and carries every error of the network, and of each long step, to the end;
#   on a briefly trained network $\eta = 1$ corrects them, most visibly with few steps, and is the better
#   default.
# - DDIM with $\eta = 0$ is **Euler's method** for the ODE $d\bar x/d\sigma = \epsilon_\theta$ in
#   $\bar x = x/\sqrt{\bar\alpha}$, $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$: the probability-flow ODE
#   of the score. Run
#   upwards, it **inverts** a digit into (nearly) noise; between two noises, **slerp** keeps every point a
#   typical noise, where the straight line would not. $v$-prediction removes the ill-posed end at $t = T$.
#
# Every network call still processes a full 32×32 image. [Chapter 4](04_vae.ipynb) trains a VAE
# that compresses digits to 2×4×4 latents, and [chapter 5](05_latent_diffusion.ipynb) runs this same
# diffusion machinery in that small latent space.
