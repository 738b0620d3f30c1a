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
# 20 to 50 steps, with no retraining. The key observation: the DDPM loss only ever looks at the
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
# **Run time.** a few minutes on two CPU cores with the committed `book` checkpoint; measured
# times in the [introduction](../intro.md). Symbols follow the course's [notation](../notation.md):
# timesteps $t = 1, \dots, T$ in equations and printed results, the package's 0-based index $t - 1$ in code.
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), the model is trained for seconds, $T = 100$, and every
# figure shows noise-like blobs instead of digits; the code paths are the same. The numbers quoted in
# the text are the `book` profile's; the derivations and the checks against the package do not depend
# on the profile.
# :::

# %%
import time

import matplotlib.pyplot as plt
import torch

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
# 1000 (top: the package's default $\eta = 1$; bottom: the deterministic $\eta = 0$, from the same noise;
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
assert min(eta_max) >= 1

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
    ab = NoiseSchedule.make("cosine", T_show).alphas_cumprod[-1].double().item()
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

print(f"network error |x_T − ε̂|: mean {(x_T - eps_hat).abs().mean().item():.4f}; "
      f"a noisy image at t = {t1 + 1} has a standard deviation of about 1. After the first step:")
print(f"{'first step':<30}{'max |x̂_0|':>12}{'std(x_t1)':>12}{'mean |x_t1 − package x_t1|':>30}")
for name, (x0_v, x1_v) in first_steps.items():
    print(f"{name:<30}{x0_v.abs().max().item():>12,.0f}{x1_v.std().item():>12.4f}"
          f"{(x1_v - x1_safe).abs().mean().item():>30.4f}")

# %% [markdown]
# The naive step multiplies the network's small error into a huge $\hat x_0$ and then re-noises
# *that* to level $t_1$: $x_{t_1}$ is far off the scale the network was trained on (a standard
# deviation near 1; the book model's naive step gives about 9.5). **Clipping** is what removes the
# blow-up: with $\hat x_0$ in $[-1, 1]$, $x_{t_1}$ is back on the training scale. Keeping the raw
# $\hat\epsilon$ with the clipped $\hat x_0$ leaves the two terms of eq. 12 slightly inconsistent with
# $x_t$: they no longer add up to $x_t$ at the level $t$. Recomputing $\hat\epsilon$ from the clipped
# $\hat x_0$ keeps the step on the line between $\hat x_0$ and $x_t$ (and at $t = T$ it gives
# $\hat\epsilon \approx x_T$, which is right: $x_T$ *is* noise). The difference between the two is the
# network's error, $\lvert x_T - \hat\epsilon\rvert$, carried into $x_{t_1}$ with weight
# $\sqrt{1 - \bar\alpha_{t_1}} \approx 1$: the table's last column (about 0.013 per pixel for the book
# model) — small here, because this network's $\hat\epsilon$ at $t = T$ is close to $x_T$. Finishing
# all three from their $x_{t_1}$ with the package's sampler:

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
for name in ("naive (as written)", "clip only"):
    gap = (finished[name] - from_safe).abs().mean().item()
    print(f"mean |difference| from the package's final samples, {name} first step: {gap:.4f} per pixel")

# %% [markdown]
# The later steps clip, so they may pull a derailed trajectory partway back; how far depends on
# what the network does with inputs tens or hundreds of times larger than any it was trained on,
# which nothing controls (for the book model the naive first step changes the final samples by about
# 0.47 per pixel, on pixels in $[-1, 1]$). The "clip only" step ends within about 0.01 per pixel of the
# package's, invisible in a grid: clipping does almost all of the work, and recomputing $\hat\epsilon$
# is a consistency fix that costs nothing. The package's first step never leaves the training range.
#
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
# the chapter runs in seconds — with so few samples FID is strongly biased upwards, so read the
# *trend*, not the values. Chapter 6 scores every sampler on `PROFILE.eval_samples` samples.

# %%
N_EVAL = PROFILE.eval_samples if DEVICE.type == "cuda" else N
try:
    from mnistdiff.evaluation.classifier import load_classifier
    from mnistdiff.evaluation.metrics import evaluate

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


# %%
results = []
for S in PROFILE.ddim_step_sweep:
    x, sec = timed_sample(N_EVAL, sampler="ddim", steps=S, eta=0.0)
    results.append({"sampler": f"DDIM {S}", "steps": S, "ms/sample": sec * 1e3, **quality(x)})
x, sec = (ddpm, ddpm_sec) if N_EVAL == N else timed_sample(N_EVAL, sampler="ddpm")
results.append({"sampler": f"DDPM {T}", "steps": T, "ms/sample": sec * 1e3, **quality(x)})

keys = [k for k in results[0] if k not in ("sampler", "steps")]
print(f"{N_EVAL} samples per setting, on {DEVICE}")
print(f"{'sampler':<12}" + "".join(f"{k[:14]:>16}" for k in keys))
for r in results:
    print(f"{r['sampler']:<12}" + "".join(f"{r[k]:>16.3f}" for k in keys))

# %%
ddim_rows = results[:-1]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
axes[0].plot([r["steps"] for r in ddim_rows], [r["ms/sample"] for r in ddim_rows], "o-", label="DDIM, η = 0")
axes[0].plot([T], [results[-1]["ms/sample"]], "s", color="C3", label=f"DDPM ({T} steps)")
axes[0].set(xscale="log", yscale="log", xlabel="network calls (steps)", ylabel="ms per sample",
            title=f"sampling time ({DEVICE})")
axes[1].plot([r["steps"] for r in ddim_rows], [r[QUALITY] for r in ddim_rows], "o-", label="DDIM, η = 0")
axes[1].axhline(results[-1][QUALITY], color="C3", ls="--", label=f"DDPM ({T} steps)")
axes[1].set(xscale="log", xlabel="network calls (steps)", ylabel=QUALITY[:40] + " (lower is better)",
            title=f"quality ({N_EVAL} samples)")
for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# Time is proportional to the number of steps: one network call each. Quality improves quickly and
# then flattens: DDIM with 50 steps comes close to DDPM with 1000 (Song et al., Table 1), at a
# twentieth of the cost. (With so few samples the FID column is noisy; chapter 6 has the
# 2,000-sample numbers.)
#
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
# a standard deviation of $1/32$), so every sample is pulled towards the average brightness. The cell
# prints the standard deviation over images of the mean pixel value: for the book model it is indeed
# smaller with the leading list (about 0.07 against 0.10 with the package's list), as Lin et al. predict.
# But on MNIST that does not hurt: the test digits' own spread, also printed, is 0.063, below both,
# because every image is a bright stroke on black and brightness has little room to vary. The two lists
# give mostly the same digits (a mean difference of about 0.09 per pixel), and their FID, precision and
# recall on 64 samples differ by less than such small-sample metrics vary from seed to seed (the leading
# list's FID is even slightly lower). On this model and data the leading list is not measurably worse; on
# Lin et al.'s photographs, where brightness varies widely, the same restriction is a visible flaw.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.2: S = 10, η = 0, the same x_T, the package's list against the original code's leading list.
S_LEAD = 10
lists = {"package (from t = T)": ddim_timesteps(T, S_LEAD), "leading": list(range(0, T, T // S_LEAD))[::-1]}
x_T_lead = torch.randn((N, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
real_means = load_mnist("test").images[:1000].flatten(1).mean(1)
print(f"test digits: spread (std) of the per-image mean pixel value {real_means.std().item():.3f}")
by_list = {}
for name, idx in lists.items():
    with torch.no_grad():
        x = ddim_sample_loop(model.unet, schedule, x_T_lead.shape, x_T=x_T_lead, timesteps=idx, eta=0.0,
                             device=DEVICE)
    by_list[name] = x.images.clamp(-1, 1).cpu()
    q = ", ".join(f"{k} {v:.3f}" for k, v in quality(by_list[name]).items())
    spread = by_list[name].flatten(1).mean(1).std().item()
    print(f"{name:<21} starts at t = {idx[0] + 1:>4}: {q}; brightness spread {spread:.3f}")
gap = (by_list["leading"] - by_list["package (from t = T)"]).abs().mean().item()
print(f"mean |difference| between the two lists' samples: {gap:.3f} per pixel")
fig = show_grid(torch.cat([v[:16] for v in by_list.values()]), nrow=16,
                title=f"S = {S_LEAD}, η = 0, same x_T: top, the package's list; bottom, leading")
plt.show()

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
# With few steps, the stochastic samplers are worse: each step's fresh noise has to be removed
# again by the next, and with few steps there is no time to do so (Song et al., Table 1, where
# $\eta = 1$ with 10 steps is much worse than $\eta = 0$). How far each sample moves away from its
# $\eta = 0$ version, at `PROFILE.ddim_steps` steps:

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
# This book's DDPM was trained for half an hour on two CPU cores, and with it the deterministic
# sampler is visibly worse: many $\eta = 0$ samples keep a grainy background, and the classifier
# finds too many of one digit. Let us measure it on one batch, from the same $x_T$: the share of
# pixels brighter than $10/255$ ("grain": real digits are mostly black) and the largest share of one
# predicted class.

# %%
from mnistdiff.data import to_uint8
from mnistdiff.evaluation.metrics import class_statistics, classifier_features


def grain_and_balance(x: torch.Tensor) -> tuple[float, float, int]:
    """Share of pixels > 10/255, share of the most common predicted digit, and that digit."""
    hist = class_statistics(classifier_features(x, device=DEVICE)[1])["class_histogram"]
    top = max(range(10), key=lambda d: hist[d])
    return float((to_uint8(x) > 10).float().mean()), hist[top], top


real_grain = grain_and_balance(load_mnist("test").images[:N])[0]
print(f"real test digits:        grain {real_grain:.3f}")
for eta in (0.0, 1.0):
    x, _ = timed_sample(N, sampler="ddim", steps=PROFILE.ddim_steps, eta=eta)
    g, share, top = grain_and_balance(x)
    print(f"DDIM-{PROFILE.ddim_steps}, η = {eta:g}:  grain {g:.3f}, most common digit {top} ({share:.0%} of {N})")

# %% [markdown]
# Why? Where could the difference come from — a bug, or the sampler's nature? We checked the
# suspects one at a time (`scripts/eta_study.py`, 128 samples of the book model, numbers in
# `benchmarks/README.md`):
#
# - **The EMA weights** (could the average still hold early, worse weights?): the raw weights
#   of the last step give the same grain with $\eta = 0$ (0.194 against 0.204 for the EMA). Not the EMA.
# - **The ill-conditioned first step** (its $\hat x_0$ is a clipped $\pm 1$ pattern, since
#   $1/\sqrt{\bar\alpha_T} \approx 2\cdot 10^4$ magnifies every error): replacing that $\hat x_0$ by 0, or
#   starting at $t = 981$ where the division is harmless ("leading" spacing), lowers the grain only
#   a little (0.186 and 0.187). Dynamic thresholding (Saharia et al. 2022) instead of clipping makes
#   it much worse (0.445).
# - **Stochasticity**: $\eta = 1$ brings the grain to that of real digits (0.141 against 0.135), with the same
#   network and the same number of steps.
#
# So it is not a bug but the nature of the sampler. DDIM with $\eta = 0$ integrates an ODE: each
# step trusts the network's $\hat\epsilon$ completely and carries its error to the next step, and
# nothing ever removes it. A network that predicts the noise imperfectly — at mid and low noise
# levels, where a stroke and a speck of noise look alike — leaves some of that noise in the image,
# and the deterministic path keeps it to the end. With $\eta > 0$ every step replaces part of the
# predicted noise with fresh noise of exactly the right size, so the next network call sees an
# input like those it was trained on and can correct the error: Karras et al.
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
print(f"inverted x_T: mean {latents.mean().item():.3f}, std {latents.std().item():.3f} (noise: 0 and 1), "
      f"cosine with the centred digit {torch.nn.functional.cosine_similarity(latents.flatten(1), centred).mean():.3f}")
print(f"reconstruction error, DDIM-{len(inv_steps)} down again:  {pixel_error(recon, digits8):.4f} per pixel")
print(f"                      the same without clipping x̂_0: {pixel_error(recon_noclip, digits8):.4f} per pixel")
print(f"for scale: a test digit against the next one:       {pixel_error(digits8.roll(1, 0), digits8):.4f} per pixel")

# %% [markdown]
# For the book model the round trip works well: the reconstructions are the test digits, with an error
# of about 0.05 per pixel against 0.25 between two different digits. But the inverted $x_T$ is not quite
# noise: its standard deviation is below 1 (about 0.87) and the digit's outline shows through. A briefly
# trained network's slopes are not those of the exact ODE, so its "inverse" is partly an autoencoder that
# hides the digit in the noise. The clipping of section 3 is essential here too: the first sampling step,
# at $t = T$, divides the difference between the network's $\hat\epsilon$ and the one the inversion used by
# $\sqrt{\bar\alpha_T}$, and without the clip the reconstruction is lost (the second error above).
#
# :::{admonition} Exercise 3.4 (an experiment): inversion with more or fewer steps
# :class: tip
# Invert the same digits and sample them back with each step count in `PROFILE.ddim_step_sweep`. Euler's
# method is more accurate with smaller steps: *predict* how the reconstruction error changes with $S$.
# Measure it, together with the standard deviation of the inverted $x_T$ (1 for real noise).
# :::
#
# :::{admonition} Solution 3.4
# :class: dropdown
# The naive prediction is that the error falls with $S$. On the book model it does not: the cell prints
# errors of about 0.032, 0.035 and 0.048 per pixel for $S = 10$, 20 and 50. What changes with $S$ is the
# latent: its standard deviation grows from about 0.59 to 0.74 and 0.87, closer to that of real noise.
# With few, long steps the inversion is a crude encoder that leaves much of the digit in $x_T$, and the
# sampler finds it again; with more steps the inversion comes closer to the ODE, the latent looks more
# like noise, and more of the reconstruction rests on the ill-posed first steps near $t = T$, where the
# mismatch between the two directions is largest. A faithful inversion is one whose $x_T$ is both
# noise-like and decodes to the digit, and this network gets closer to the first with more steps at
# some cost in the second.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.4: invert with S steps and sample back with the same S, for every S of the profile's sweep.
for S in PROFILE.ddim_step_sweep:
    idx = ddim_timesteps(T, S)
    lat = latents if idx == inv_steps else ddim_invert(model.unet, schedule, digits8, idx)
    with torch.no_grad():
        rec = ddim_sample_loop(model.unet, schedule, digits8.shape, x_T=lat, timesteps=idx, eta=0.0, device=DEVICE)
    print(f"S = {S:>3}: reconstruction error {pixel_error(rec.images.clamp(-1, 1), digits8):.4f} per pixel, "
          f"std of the inverted x_T {lat.std().item():.3f}")

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


gen = torch.Generator().manual_seed(SEED)
z_a, z_b = torch.randn(2, 1, 32, 32, generator=gen)
norms = torch.randn(10_000, 32 * 32, generator=gen).norm(dim=1)
weights = torch.linspace(0, 1, 9)
path = torch.stack([slerp(z_a, z_b, float(w)) for w in weights]).to(DEVICE)
with torch.no_grad():
    strip = ddim_sample_loop(model.unet, schedule, path.shape, x_T=path, ddim_steps=PROFILE.ddim_steps, eta=0.0,
                             device=DEVICE)
show_grid(strip.images.clamp(-1, 1).cpu(), nrow=9,
          title=f"slerp between two x_T, decoded with DDIM-{PROFILE.ddim_steps}, η = 0")
plt.show()
cos = torch.nn.functional.cosine_similarity(z_a.flatten(), z_b.flatten(), dim=0).item()
print(f"norms of 10,000 noises in d = 1024: mean {norms.mean():.2f}, std {norms.std():.2f} (√d = 32, 1/√2 = 0.71)")
print(f"the two ends: norms {z_a.norm():.2f} and {z_b.norm():.2f}, cos θ = {cos:.3f}")
print("slerp path norms:", " ".join(f"{v:.1f}" for v in path.flatten(1).norm(dim=1).tolist()))

# %% [markdown]
# The path's noises all have norms within the spread of real noise, and the strip changes from one digit
# to the other through shapes that are (for the book model) digit-like all the way.
#
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
# The cell prints the norms and the contrast: for the book model the straight path's midpoint norm is
# about 22.8, and its decoded frames lose contrast towards the middle (a pixel standard deviation of about
# 0.33 at the midpoint, against 0.6–0.7 along the slerp strip); the middle digits are thin strokes or
# fragments. Slerp keeps every frame a typical noise, and every decoded frame a typical sample.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 3.5: the straight path between the same two noises, its norms, and the contrast of both strips.
line = torch.stack([(1 - w) * z_a + w * z_b for w in weights]).to(DEVICE)
with torch.no_grad():
    strip_line = ddim_sample_loop(model.unet, schedule, line.shape, x_T=line, ddim_steps=PROFILE.ddim_steps,
                                  eta=0.0, device=DEVICE)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
show_grid(strip.images.clamp(-1, 1).cpu(), nrow=9, title="slerp", ax=axes[0])
show_grid(strip_line.images.clamp(-1, 1).cpu(), nrow=9, title="straight line", ax=axes[1])
fig.tight_layout()
plt.show()
print("straight-line norms: ", " ".join(f"{v:.1f}" for v in line.flatten(1).norm(dim=1).tolist()))
for name, x in (("slerp", strip.images), ("straight line", strip_line.images)):
    contrast = x.clamp(-1, 1).flatten(1).std(1).tolist()
    print(f"pixel std per frame, {name:<13}", " ".join(f"{v:.2f}" for v in contrast))
mid_norm = line[len(weights) // 2].norm().item()
assert mid_norm < norms.mean().item() - 5 * norms.std().item()  # the midpoint is far below any real noise's norm

# %% [markdown]
# ## What we learned, and what comes next
#
# - **DDIM** reuses the DDPM network unchanged: predict $\hat x_0$, then re-noise it to an earlier
#   timestep with the predicted noise (eq. 12); $\eta$ sets how much fresh noise is mixed in (eq. 16).
# - The timestep list must **start at $T$**, where training inputs are pure noise like $x_T$;
#   there $\bar\alpha \approx 2\cdot10^{-9}$ (cosine, $T = 1000$), so $\hat x_0$ must be **clipped** and
#   $\hat\epsilon$ **recomputed** from it, or the first step throws the sample off the data scale.
# - With every step and $\eta = 1$, DDIM **is** DDPM; with 20–50 steps it is nearly as good at a small
#   fraction of the cost.
# - $\eta = 0$ is deterministic and carries every error of the network to the end; on a briefly trained
#   network $\eta = 1$ corrects them and is the better default.
# - DDIM with $\eta = 0$ is **Euler's method** for the ODE $d\bar x/d\sigma = \epsilon_\theta$ in
#   $\bar x = x/\sqrt{\bar\alpha}$, $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$: the probability-flow ODE
#   of the score. Run
#   upwards, it **inverts** a digit into (nearly) noise; between two noises, **slerp** keeps every point a
#   typical noise, where the straight line would not. $v$-prediction removes the ill-posed end at $t = T$.
#
# Every network call still processes a full 32×32 image. [Chapter 4](04_vae.ipynb) trains a VAE
# that compresses digits to 2×4×4 latents, and [chapter 5](05_latent_diffusion.ipynb) runs this same
# diffusion machinery in that small latent space.
