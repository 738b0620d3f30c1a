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
# # 2. DDPM: destroy a digit with noise, learn to undo it
#
# The idea of a denoising diffusion probabilistic model (DDPM; Sohl-Dickstein et al.
# [arXiv:1503.03585](https://arxiv.org/abs/1503.03585), Ho, Jain & Abbeel
# [arXiv:2006.11239](https://arxiv.org/abs/2006.11239)) fits in two sentences:
#
# - **Forward:** take a digit and add a little Gaussian noise, $T$ times, until nothing but noise
#   is left. This needs no learning.
# - **Reverse:** train a network to take one small step back — to remove a little noise. Then start
#   from fresh noise and take $T$ steps back: out comes a new digit.
#
# The trick that makes it work is that both directions are Gaussian, with closed-form
# coefficients, so training reduces to a regression: *predict the noise that was added*.
#
# **Learning goals.** After this chapter you can
#
# - write the forward process $q(x_t \mid x_0)$ and compute it in one shot for any $t$;
# - compare the linear and cosine noise schedules and say why the cosine one suits small images;
# - write the training loss $L_\text{simple}$, train with it (Algorithm 1, with an EMA of the weights),
#   and read the trained model's loss at each $t$;
# - derive the Gaussian posterior $q(x_{t-1} \mid x_t, x_0)$ by completing the square, split the
#   variational bound into $L_T + \sum_t L_{t-1} + L_0$, and name the per-step weight $L_\text{simple}$ drops;
# - read $\epsilon_\theta$ as a score, $s_\theta = -\epsilon_\theta/\sqrt{1-\bar\alpha_t}$, and $\hat x_0$ as
#   Tweedie's formula;
# - sample digits with Algorithm 2 and watch them, and the model's guess $\hat x_0$, emerge from noise.
#
# The symbols follow the book's [notation](../notation.md) page: timesteps count $t = 1, \dots, T$ in
# equations, figures and printed results, while the package's arrays (and the tensors passed to
# it) hold the 0-based index $t - 1$.
#
# **Run time.** A few minutes on two CPU cores with the committed `book` checkpoint (most of it
# the $T$-step sampler of section 4); measured times in the [introduction](../intro.md).
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), the DDPM is a tiny model trained for seconds on a
# subset with $T = 100$: enough to run every code path, not to draw digits, so every sample figure
# shows noise-like blobs, the loss curves are short, and the numbers the cells print (and the
# sentences generated from them) differ from the `book` profile's. The code paths are the same.
# :::

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Image, Markdown, display
from matplotlib.ticker import MaxNLocator

from mnistdiff import NoiseSchedule, UNet, diffusion_loss, make_diffusion_loss, min_snr_weight, p_mean_variance
from mnistdiff import p_sample, predict_x0_from_eps, q_posterior, q_sample
from mnistdiff import default_device, get_ddpm, get_profile, load_mnist
from mnistdiff import grid_array, pick_frames, plot_loss_curves, show_grid
from mnistdiff.course.widgets import denoising_player, frame_strip_png, image_slider

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
T = PROFILE.ddpm.diffusion.timesteps
print(f"profile: {PROFILE.name}, device: {DEVICE}, T = {T} timesteps, {PROFILE.ddpm.diffusion.schedule} schedule")

# %% [markdown]
# **Where this chapter ends.** Digits drawn by the model it trains: this profile's trained DDPM
# (loaded, or trained if it is missing), sampled with chapter 3's fast sampler, DDIM with
# `PROFILE.ddim_steps` steps and the package's default $\eta$. Section 4 draws them with the
# $T$-step sampler this chapter derives; chapter 6 measures how close they are to real digits.

# %%
preview = get_ddpm(device=DEVICE, progress=False)
show_grid(preview.sample(32, sampler="ddim", steps=PROFILE.ddim_steps, seed=SEED, device=DEVICE)[0], nrow=16,
          title=f"the trained DDPM ({PROFILE.name} profile), DDIM-{PROFILE.ddim_steps}")
plt.show()

# %% [markdown]
# ## 1. The forward process
#
# At step $t$ we shrink the image a little and add a little noise, with a variance $\beta_t$ from a
# fixed *schedule* $\beta_1, \dots, \beta_T$ (Ho et al., eq. 2):
#
# $$
# q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big).
# $$
#
# The shrinking by $\sqrt{1-\beta_t}$ keeps the total variance near 1. Because a sum of Gaussians
# is Gaussian, $T$ steps compose into one (eq. 4): with $\alpha_t = 1-\beta_t$ and
# $\bar\alpha_t = \prod_{i=1}^{t} \alpha_i$ (and $\bar\alpha_0 = 1$),
#
# $$
# q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad\text{i.e.}\qquad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\quad \epsilon \sim \mathcal N(0, I).
# $$
#
# Everything about the forward process is in the single curve $\bar\alpha_t$: how much of the
# digit survives at step $t$. (The code's arrays count from 0, as improved-diffusion's do:
# `alphas_cumprod[t - 1]` is $\bar\alpha_t$, so index $T-1$ holds $\bar\alpha_T$.)
#
# ### Two schedules
#
# Ho et al. use a **linear** schedule, $\beta_t$ rising from $10^{-4}$ to $0.02$ over $T = 1000$
# steps. Nichol & Dhariwal ([arXiv:2102.09672](https://arxiv.org/abs/2102.09672), eq. 17) noticed
# that it destroys small images too early — the last part of the chain is almost pure noise and
# wasted — and proposed the **cosine** schedule, defined through $\bar\alpha$ directly:
#
# $$
# \bar\alpha_t = \frac{f(t)}{f(0)}, \qquad f(t) = \cos^2\!\Big(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\Big),
# \qquad s = 0.008,
# $$
#
# with $\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}$ clipped at $0.999$ so that the last step
# stays finite. Both, written from the equations:


# %%
def cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal eq. 17), via clipped β_t, float64 of shape (T,)."""
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(t) / f(t - 1), max_beta) for t in range(1, T + 1)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def linear_alpha_bar(T: int) -> torch.Tensor:
    """ᾱ_t of Ho et al.'s linear schedule, β from 1e-4 to 0.02, rescaled by 1000/T for other T."""
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


for T_check in (T, 1000):
    torch.testing.assert_close(cosine_alpha_bar(T_check).float(), NoiseSchedule.make("cosine", T_check).alphas_cumprod)
    torch.testing.assert_close(linear_alpha_bar(T_check).float(), NoiseSchedule.make("linear", T_check).alphas_cumprod)
print("our ᾱ_t match mnistdiff.schedules.NoiseSchedule for both schedules")

# %% [markdown]
# The values for the paper's $T = 1000$:

# %%
# NBVAL_CHECK_OUTPUT
cos1000, lin1000 = NoiseSchedule.make("cosine", 1000), NoiseSchedule.make("linear", 1000)
print(f"{'t':>5} {'ᾱ_t cosine':>12} {'ᾱ_t linear':>12}")
for t in (1, 100, 250, 500, 750, 900, 1000):  # ᾱ_t is alphas_cumprod[t - 1]
    print(f"{t:>5} {cos1000.alphas_cumprod[t - 1].item():>12.6f} {lin1000.alphas_cumprod[t - 1].item():>12.6f}")
print(f"last step of the cosine schedule: β_1000 = {cos1000.betas[-1].item():.6f} (clipped), "
      f"ᾱ_1000 = {cos1000.alphas_cumprod[-1].item():.3e}")

# %% tags=["remove-input"]
half, three_quarters = 1000 // 2, 3 * 1000 // 4  # t = T/2 and 3T/4 of the table's T = 1000 (index t − 1)
lin_ab, cos_ab = lin1000.alphas_cumprod, cos1000.alphas_cumprod
Markdown(rf"""Halfway through, the linear schedule has kept $\bar\alpha = {lin_ab[half - 1]:.2f}$ of the signal's
variance and at three quarters only ${lin_ab[three_quarters - 1]:.3f}$; the cosine schedule still has
${cos_ab[half - 1]:.2f}$ and ${cos_ab[three_quarters - 1]:.2f}$, and only reaches (almost) zero at the very end.""")

# %% [markdown]
# Below, $\bar\alpha_t$ of both schedules (left) and the same curves as the natural log of the
# signal-to-noise ratio (right), $\ln \mathrm{SNR}_t = \ln(\bar\alpha_t/(1-\bar\alpha_t))$:
# the cosine schedule is nearly linear in it over most of the chain.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
u = torch.arange(1, 1001) / 1000  # t / T for t = 1, …, T
for sched, name in ((cos1000, "cosine"), (lin1000, "linear")):
    ab = sched.alphas_cumprod.double()
    axes[0].plot(u, ab, label=name)
    axes[1].plot(u, torch.log(ab / (1 - ab)), label=name)
axes[0].set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$: how much of $x_0$ survives")
axes[1].set(xlabel="t / T", ylabel=r"$\ln \mathrm{SNR}_t = \ln\,\bar\alpha_t / (1-\bar\alpha_t)$",
            title="ln signal-to-noise ratio")
for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Noising a digit in one shot
#
# Equation 4 means we never have to run the chain step by step: any $x_t$ is one line of code.

# %%
def q_sample_inline(sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  (Ho eq. 4); x0, eps: (B, C, H, W), t: (B,) the indices t − 1."""
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


test = load_mnist("test")
digit = test.images[test.labels == 3][0]  # (1, 32, 32): the first 3 of the test set
schedule = NoiseSchedule.make(PROFILE.ddpm.diffusion.schedule, T)
ts = torch.linspace(0, T - 1, 8).round().long()  # indices t − 1: from t = 1 to t = T
eps = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(SEED)).expand(len(ts), -1, -1, -1)
x0 = digit.expand(len(ts), -1, -1, -1)
torch.testing.assert_close(q_sample_inline(schedule, x0, ts, eps), q_sample(schedule, x0, ts, eps))
print("our q_sample matches mnistdiff.ddpm.q_sample")

# %% [markdown]
# The same digit and the same noise $\epsilon$ at eight timesteps, under both schedules. Under the
# linear schedule the digit is unreadable long before the end:

# %%
fig, axes = plt.subplots(2, len(ts), figsize=(1.2 * len(ts), 3.0))
for row, kind in enumerate(("cosine", "linear")):
    sched = NoiseSchedule.make(kind, T)
    xt = q_sample(sched, x0, ts, eps)
    for col, t in enumerate(ts.tolist()):
        ax = axes[row, col]
        ax.imshow(grid_array(xt[col : col + 1], nrow=1, padding=0), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t={t + 1}  ᾱ={sched.alphas_cumprod[t].item():.2f}", fontsize=7)
    axes[row, 0].set_ylabel(kind)
fig.tight_layout()
plt.show()

# %% [markdown]
# Drag the slider to move through every $t = 1, \dots, T$ of this profile's schedule: each frame is
# `q_sample` of the same digit with the same $\epsilon$, at the array index $t - 1$. The strip above
# the slider is the static version, for when the notebook is not running:

# %%
every_t = torch.arange(1, T + 1)  # t = 1, …, T
x_every_t = q_sample(schedule, digit.expand(T, -1, -1, -1), every_t - 1, eps[:1].expand(T, -1, -1, -1))
ab_every_t = schedule.alphas_cumprod.double()
strip_t = torch.linspace(1, T, PROFILE.widget_frames).round().long().tolist()  # from t = 1 to t = T
display(Image(frame_strip_png([x_every_t[t - 1] for t in strip_t],
                              [f"t={t}\nᾱ={ab_every_t[t - 1].item():.3f}" for t in strip_t],
                              title=r"$q(x_t \mid x_0)$: the same digit and the same noise as $t$ grows"), format="png"))
image_slider(list(x_every_t.unbind()),
             [f"t = {t}<br>ᾱ<sub>t</sub> = {a:.4f} &nbsp; √ᾱ<sub>t</sub> = {a ** 0.5:.3f} &nbsp; "
              f"√(1−ᾱ<sub>t</sub>) = {(1 - a) ** 0.5:.3f}" for t, a in zip(every_t.tolist(), ab_every_t.tolist())],
             description="t", nrow=1, zoom=4, fallback="none")

# %% [markdown]
# :::{admonition} Exercise 2.1 (derivation): $T$ steps are one step
# :class: tip
# Prove eq. 4 by induction on $t$: if $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}}\,\epsilon'$
# and $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon''$ with independent standard normal
# $\epsilon', \epsilon''$, then $x_t$ has the form of eq. 4. Which property of Gaussians does the step
# use? Then check it by running the chain one step at a time: once on the coefficients, once on
# 20,000 samples of one pixel.
# :::
#
# :::{admonition} Solution 2.1
# :class: dropdown
# For $t = 1$, eq. 4 is the definition of one step ($\bar\alpha_1 = \alpha_1$). For the step from
# $t - 1$ to $t$, substitute:
# $x_t = \sqrt{\alpha_t\bar\alpha_{t-1}}\,x_0 + \sqrt{\alpha_t(1-\bar\alpha_{t-1})}\,\epsilon' + \sqrt{\beta_t}\,\epsilon''$.
# The mean coefficient is $\sqrt{\bar\alpha_t}$. The two noise terms are independent zero-mean
# Gaussians, and a sum of independent Gaussians is Gaussian with the variances added:
# $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = \alpha_t - \bar\alpha_t + 1 - \alpha_t = 1 - \bar\alpha_t$.
# So $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ with one standard normal $\epsilon$.
# The cell below runs the recursion $m_t = \sqrt{\alpha_t}\,m_{t-1}$, $v_t = \alpha_t v_{t-1} + \beta_t$
# from $m_0 = 1$, $v_0 = 0$ and checks it against $\sqrt{\bar\alpha_t}$ and $1 - \bar\alpha_t$ at every
# $t$; then it runs the chain itself on a pixel of value $x_0 = 0.7$ and prints the sample mean and
# standard deviation beside eq. 4's at three timesteps (they agree to Monte Carlo error: the standard
# error of a mean of 20,000 samples is $1/\sqrt{20\,000} \approx 0.007$ times their standard deviation).
# :::

# %% tags=["solution", "hide-cell"]
# Solution 2.1: the chain run step by step, on its coefficients and on 20,000 samples of one pixel.
alphas, betas = schedule.alphas.double(), schedule.betas.double()
m, v, ms, vs = 1.0, 0.0, [], []  # x_t = m x_0 + noise of variance v; x_0 itself at t = 0
for t in range(1, T + 1):
    m, v = math.sqrt(alphas[t - 1]) * m, alphas[t - 1] * v + betas[t - 1]
    ms.append(m)
    vs.append(float(v))
ab = schedule.alphas_cumprod.double()
torch.testing.assert_close(torch.tensor(ms, dtype=torch.float64), ab.sqrt(), rtol=1e-4, atol=1e-6)  # float32 arrays
torch.testing.assert_close(torch.tensor(vs, dtype=torch.float64), 1 - ab, rtol=1e-4, atol=1e-6)
gen = torch.Generator().manual_seed(SEED)
x, x0_pixel, shown = torch.full((20_000,), 0.7, dtype=torch.float64), 0.7, (T // 4, T // 2, T)
print(f"{'t':>5} {'mean':>8} {'√ᾱ_t·x_0':>9} {'std':>7} {'√(1−ᾱ_t)':>9}")
for t in range(1, T + 1):
    x = alphas[t - 1].sqrt() * x + betas[t - 1].sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    if t in shown:
        mean, std = ab[t - 1].sqrt() * x0_pixel, (1 - ab[t - 1]).sqrt()
        torch.testing.assert_close(x.mean(), mean, rtol=0, atol=0.03)
        torch.testing.assert_close(x.std(), std, rtol=0, atol=0.03)
        print(f"{t:>5} {x.mean().item():>8.4f} {mean.item():>9.4f} {x.std().item():>7.4f} {std.item():>9.4f}")
assert round(1 / math.sqrt(x.numel()), 3) == 0.007  # the standard error of a mean of 20,000 samples, per unit std
print(f"the recursion equals eq. 4 at all {T} timesteps; the sampled chain agrees to Monte Carlo error")

# %% [markdown]
# ## 2. Training: predict the noise
#
# The reverse process is a chain of Gaussians $p_\theta(x_{t-1} \mid x_t)$ whose mean a network
# supplies. Ho et al. show that maximising a variational bound on the likelihood, with a clever
# parametrisation of that mean (next section), reduces to a weighted noise-prediction loss; dropping
# the weights gives the **simple loss** that works best in practice (eq. 14):
#
# $$
# L_\text{simple}(\theta) = \mathbb E_{t,\,x_0,\,\epsilon}\Big[\big\|\epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\big)\big\|^2\Big],
# \qquad t \sim \mathcal U\{1, \dots, T\}.
# $$
#
# That is Algorithm 1 of the paper: pick a digit, a random time, a random noise; noise the digit
# with eq. 4; regress the noise. In code, with the chapter-1 UNet (the tensor `t` holds the
# indices $t - 1$, drawn uniformly from $0, \dots, T-1$):

# %%
def loss_inline(
    model: UNet, sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """L_simple for a batch: mean over pixels and examples of (ε − ε_θ(x_t, t))²; t: (B,) the indices t − 1."""
    return F.mse_loss(model(q_sample_inline(sched, x0, t, eps), t), eps)


untrained = UNet(PROFILE.ddpm.unet)
batch = test.images[:16]
gen = torch.Generator().manual_seed(SEED)
t = torch.randint(0, T, (16,), generator=gen)  # indices t − 1
eps = torch.randn(batch.shape, generator=gen)
with torch.no_grad():
    ours, theirs = loss_inline(untrained, schedule, batch, t, eps), diffusion_loss(untrained, schedule, batch, t, eps)
torch.testing.assert_close(ours, theirs)
print(f"L_simple of the untrained network: {ours.item():.4f} (= mean ε², since it predicts ε̂ = 0)")

# %% [markdown]
# The untrained network predicts $\hat\epsilon = 0$ (its output layer starts at zero, chapter 1),
# so its loss is the variance of the noise, about 1. Training brings it down.
#
# ### Weighting the timesteps: min-SNR-$\gamma$
#
# $L_\text{simple}$ treats every $t$ alike *in $\epsilon$*. Seen in $x_0$ it does not: from eq. 4,
# $x_0 - \hat x_0 = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\hat\epsilon - \epsilon)$, so
#
# $$
# \|\epsilon - \hat\epsilon\|^2 = \mathrm{SNR}_t\,\|x_0 - \hat x_0\|^2,
# \qquad \mathrm{SNR}_t = \frac{\bar\alpha_t}{1-\bar\alpha_t}.
# $$

# %% tags=["remove-input"]
def times_ten(value: float) -> str:
    """``value`` in LaTeX as m × 10^e with one decimal (24208.5 → $2.4\times 10^{4}$)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return rf"${mantissa}\times 10^{{{int(exponent)}}}$"


snr_sched = schedule.alphas_cumprod.double() / (1 - schedule.alphas_cumprod.double())  # SNR_t at index t − 1
Markdown(rf"""The weight $\mathrm{{SNR}}_t$ is about {times_ten(snr_sched[0].item())} at $t = 1$
(from $\bar\alpha_1 = {schedule.alphas_cumprod[0].item():.6f}$) and vanishes at $t = T$
({times_ten(snr_sched[-1].item())}): the nearly clean steps, where the only task is to remove a faint grain, dominate
the gradient, and the noisy steps that decide the digit's shape get little of it.""")

# %% [markdown]
# Hang et al. (2023,
# [arXiv:2303.09556](https://arxiv.org/abs/2303.09556)) see the timesteps as tasks that compete and cap
# the weight at $\gamma$ (they recommend $\gamma = 5$): the $x_0$ error is weighted by
# $\min(\mathrm{SNR}_t, \gamma)$, that is, the $\epsilon$ error by
#
# $$
# w_t = \frac{\min(\mathrm{SNR}_t, \gamma)}{\mathrm{SNR}_t},
# \qquad L_\gamma(\theta) = \mathbb E_{t,\,x_0,\,\epsilon}\big[w_t\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2\big],
# $$
#
# which is 1 wherever $\mathrm{SNR}_t \le \gamma$ and $\gamma/\mathrm{SNR}_t$ near $t = 1$. Nothing
# else changes: the same network, target and sampler. They report convergence several times
# faster; a short training budget is where that matters, so the `book` profile trains its DDPM with
# $\gamma = 5$ (`PROFILE.ddpm.diffusion.min_snr_gamma`; `None` means $L_\text{simple}$). On the
# `book` profile's budget, in two training runs that differed only in the loss, the min-SNR-5 model
# drew the better samples by chapter 6's measures (a lower classifier-FID, a higher precision);
# `benchmarks/README.md` (*min-SNR-γ against L_simple*) records both runs' scores. $L_\gamma$ is not
# comparable with $L_\text{simple}$: the clean steps count less, so the `book` profile's loss curves
# below sit lower than an $L_\text{simple}$ run's would.

# %%
GAMMA = PROFILE.ddpm.diffusion.min_snr_gamma or 5.0  # the profile's γ (smoke and full train on L_simple)
assert get_profile("book").ddpm.diffusion.min_snr_gamma == 5  # the book profile trains with min-SNR-5


def min_snr_inline(sched: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """w_t = min(SNR_t, γ) / SNR_t for the indices t − 1 in t: (B,)."""
    ab = sched.alphas_cumprod.double()[t]
    snr = ab / (1 - ab)
    return (torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr).float()


def loss_min_snr_inline(model: UNet, sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        gamma: float) -> torch.Tensor:
    """L_γ for a batch: the per-image mean of (ε − ε_θ)², weighted by w_t, averaged over the batch."""
    per_image = (model(q_sample_inline(sched, x0, t, eps), t) - eps).pow(2).mean(dim=(1, 2, 3))
    return (min_snr_inline(sched, t, gamma) * per_image).mean()


torch.testing.assert_close(min_snr_inline(schedule, t, GAMMA), min_snr_weight(schedule, t, GAMMA), rtol=1e-4, atol=0)
with torch.no_grad():
    ours = loss_min_snr_inline(untrained, schedule, batch, t, eps, GAMMA)
    theirs = diffusion_loss(untrained, schedule, batch, t, eps, min_snr_gamma=GAMMA)
torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
print(f"L_γ (γ = {GAMMA:g}) of the untrained network: {ours.item():.4f}; matches diffusion_loss(min_snr_gamma={GAMMA:g})")

all_t = torch.arange(T)  # the indices t − 1; the plots' axes show t = 1, …, T
ab = schedule.alphas_cumprod.double()
snr = (ab / (1 - ab)).numpy()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].plot(all_t + 1, snr, label=r"$L_\mathrm{simple}$: SNR$_t$")
axes[0].plot(all_t + 1, snr.clip(max=GAMMA), label=rf"min-SNR-$\gamma$: min(SNR$_t$, {GAMMA:g})")
axes[0].set(yscale="log", xlabel="t", title=r"weight of the $x_0$ error $\|x_0 - \hat x_0\|^2$")
axes[1].plot(all_t + 1, torch.ones(T), label=r"$L_\mathrm{simple}$: 1")
axes[1].plot(all_t + 1, min_snr_weight(schedule, all_t, GAMMA), label=r"min-SNR-$\gamma$: $w_t$")
axes[1].set(yscale="log", xlabel="t", title=r"weight of the $\epsilon$ error $\|\epsilon - \hat\epsilon\|^2$")
for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
profile_gamma = PROFILE.ddpm.diffusion.min_snr_gamma
print(f"w_t < 1 for t ≤ {int((min_snr_weight(schedule, all_t, GAMMA) < 1).sum())} of {T} steps; "
      f"this profile trains with {f'min-SNR-γ, γ = {profile_gamma:g}' if profile_gamma else 'L_simple'}")

# %% [markdown]
# ### Algorithm 1, inline
#
# Before handing training to the package, here is Algorithm 1 as a loop of our own, with the three
# things every practical run adds to it: AdamW with a short linear warm-up and a cosine decay of the
# learning rate, clipping of the gradient norm at 1, and an **exponential moving average** (EMA) of
# the weights, which is what Ho et al. sample with (appendix B):
#
# $$
# \theta_\text{EMA} \leftarrow d_n\,\theta_\text{EMA} + (1 - d_n)\,\theta,
# \qquad d_n = \min\Big(d,\ \frac{1 + n}{10 + n}\Big),
# $$
#
# with $d = 0.999$ and $n$ the number of updates so far (the first update copies $\theta$; the warm-up
# of $d_n$ lets the random initial weights be forgotten within a few hundred steps). The network is
# the `smoke` profile's tiny UNet, the schedule this profile's, and the run `PROFILE.inline_steps` steps
# long. First, the loss of our loop's first batch against the package's loss `make_diffusion_loss`,
# with the same draws of $t$ and $\epsilon$. (The package trains with this same loop, written once as
# `TrainState` and `TrainLoop.train_step`; `tests/test_training_loop.py` checks that two of its steps give
# the same weights and EMA weights as two steps of this one.)

# %%
SMALL = get_profile("smoke").ddpm.unet  # 71 k parameters: a few hundred steps take well under a minute
INLINE_STEPS = PROFILE.inline_steps  # 160 in the `book` profile
INLINE_BATCH, INLINE_LR, INLINE_DECAY = 64, 2e-3, 0.999
train = load_mnist("train")


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over a tenth of the run, then cosine decay to 10 % of the peak."""
    warmup = max(total // 10, 1)
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def draw_batch(data_gen: torch.Generator, sched: NoiseSchedule, step: int, seed: int = SEED):
    """Step ``step``'s batch: x_0 from the data (``data_gen``), then t and ε from a generator seeded per step."""
    x0 = train.images[torch.randint(0, len(train.images), (INLINE_BATCH,), generator=data_gen)]  # x_0 ~ q(x_0)
    noise_gen = torch.Generator().manual_seed(seed + 1 + step)
    t = torch.randint(0, sched.num_timesteps, (INLINE_BATCH,), generator=noise_gen)  # indices t − 1, t ~ U{1..T}
    eps = torch.randn(x0.shape, generator=noise_gen)  # ε ~ N(0, I)
    return x0, t, eps


def algorithm1(sched: NoiseSchedule, steps: int, seed: int = SEED):
    """Train a fresh SMALL UNet with L_simple for ``steps`` steps → (network, EMA weights, losses)."""
    torch.manual_seed(seed)
    net = UNet(SMALL)
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=INLINE_LR, weight_decay=0.0)
    data_gen, losses = torch.Generator().manual_seed(seed), []
    for step in range(steps):
        x0, t, eps = draw_batch(data_gen, sched, step, seed)
        for group in opt.param_groups:
            group["lr"] = INLINE_LR * lr_factor(step, steps)
        loss = loss_inline(net, sched, x0, t, eps)  # ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # the EMA: copy at the first update, then θ_EMA ← d_n θ_EMA + (1 − d_n) θ
            d = 0.0 if step == 0 else min(INLINE_DECAY, (1 + step) / (10 + step))
            for e, p in zip(ema, net.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        losses.append(loss.item())
    return net, ema, losses


torch.manual_seed(SEED)
first_net = UNet(SMALL)  # algorithm1's network before its first step
x0_first, t_first, eps_first = draw_batch(torch.Generator().manual_seed(SEED), schedule, 0)
with torch.no_grad():
    ours = loss_inline(first_net, schedule, x0_first, t_first, eps_first)
    theirs = make_diffusion_loss(schedule)(first_net, x0_first, torch.Generator().manual_seed(SEED + 1))
torch.testing.assert_close(ours, theirs)
print(f"the first batch's loss: ours {ours.item():.4f}, make_diffusion_loss's {theirs.item():.4f} (the same t and ε)")

# %% tags=["remove-input"]
Markdown(rf"""Now the whole run, {INLINE_STEPS} steps of batch {INLINE_BATCH} (`PROFILE.inline_steps` of the
`{PROFILE.name}` profile), and its loss curve. The loss of each step is noisy, because every batch draws its own
timesteps and some $t$ are much harder than others (next section); a running mean shows the trend. At the end, the
raw and the EMA weights are scored on the same 512 test images with the same $t$ and $\epsilon$.""")

# %%
start = time.perf_counter()
net, ema, losses = algorithm1(schedule, INLINE_STEPS)
inline_seconds = time.perf_counter() - start
ema_net = UNet(SMALL)
with torch.no_grad():
    for p, e in zip(ema_net.parameters(), ema):
        p.copy_(e)
eval_gen = torch.Generator().manual_seed(SEED + 99)
eval_x0 = test.images[:512]
eval_t, eval_eps = torch.randint(0, T, (512,), generator=eval_gen), torch.randn(eval_x0.shape, generator=eval_gen)
with torch.no_grad():
    raw_eval, ema_eval = (diffusion_loss(m, schedule, eval_x0, eval_t, eval_eps).item() for m in (net, ema_net))
window = max(INLINE_STEPS // 10, 1)
running = torch.tensor(losses).unfold(0, window, 1).mean(1)
print(f"{INLINE_STEPS} steps in {inline_seconds:.1f} s; training loss: first {window} steps {running[0]:.4f}, "
      f"last {window} {running[-1]:.4f}")
print(f"test loss (512 images): raw weights {raw_eval:.4f}, EMA weights {ema_eval:.4f}")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(range(1, INLINE_STEPS + 1), losses, alpha=0.4, label="loss of each step")
ax.plot(range(window, INLINE_STEPS + 1), running, label=f"running mean over {window} steps")
ax.set(xlabel="training step", ylabel=r"$L_\mathrm{simple}$", yscale="log", title="Algorithm 1, inline (tiny UNet)")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% tags=["remove-input"]
def ema_memory(updates: int, decay: float) -> float:
    """1 / (1 − d_n) at the last of ``updates`` updates (n = updates − 1): roughly how many recent steps the EMA
    averages."""
    return 1 / (1 - min(decay, updates / (9 + updates)))


book_train = get_profile("book").ddpm.train
book_updates = (book_train.subset or len(train.images)) // book_train.batch_size * book_train.epochs
full_decay_from = round((10 * INLINE_DECAY - 1) / (1 - INLINE_DECAY))  # the n at which (1 + n)/(10 + n) = d
ema_verdict = "worse" if ema_eval > raw_eval else ("better" if ema_eval < raw_eval else "the same")
Markdown(rf"""The EMA's memory, about $1/(1-d_n)$ updates, is not yet the {1 / (1 - INLINE_DECAY):.0f} steps of
$1/(1-d)$: the warm-up makes it $(10 + n)/9$, one step longer every nine updates, and $d_n$ reaches $d$ only after
{full_decay_from:,} updates. At the end of this {INLINE_STEPS}-step run the EMA averages roughly the last
{ema_memory(INLINE_STEPS, INLINE_DECAY):.0f} steps' weights: close to the raw ones but a little older, so it need not
score better, and here it scores {ema_verdict} ({ema_eval:.4f} against {raw_eval:.4f}, printed above). The average is
meant for longer runs, where it smooths the noise of the last updates once the loss has flattened; even the `book`
profile's DDPM ({book_updates:,} updates) ends inside the warm-up, averaging roughly its last
{ema_memory(book_updates, book_train.ema_decay):.0f} steps. The package evaluates (the eval loss below) and samples
with the EMA weights.""")

# %% [markdown]
# ### The package's training
#
# `get_ddpm` loads this profile's trained model from `checkpoints/<profile>/ddpm.safetensors`, or trains it
# with the package's training loop (AdamW, warm-up and cosine learning-rate decay, gradient clipping,
# an exponential moving average of the weights) and stores it. The `book` profile's checkpoint is
# committed with the repository (`python -m mnistdiff train all --profile book`); the file's header
# records the recipe, the CPU and the minutes, printed below.

# %% tags=["remove-input"]
def unet_parameters(profile_name: str) -> int:
    """The number of parameters of a profile's DDPM UNet (built, not trained)."""
    return sum(p.numel() for p in UNet(get_profile(profile_name).ddpm.unet).parameters())


book_gamma = get_profile("book").ddpm.diffusion.min_snr_gamma  # 5: asserted in section 2
smoke_train, full_train = get_profile("smoke").ddpm.train, get_profile("full").ddpm.train
Markdown(rf"""The `book` profile's DDPM is a {unet_parameters("book") / 1e6:.2f} M-parameter UNet trained with
min-SNR-{book_gamma:g} for {book_train.epochs} epochs on all
{book_train.subset or len(train.images):,} training images on two CPU cores. The `smoke` profile trains a
{unet_parameters("smoke") / 1e3:.0f} k-parameter model for seconds on a subset of {smoke_train.subset:,} images, enough to
see the machinery work but not to draw digits; `full` is the reference recipe for a GPU
({unet_parameters("full") / 1e6:.1f} M parameters, {full_train.epochs} epochs).""")

# %%
start = time.perf_counter()
model = get_ddpm(device=DEVICE, progress=False)
train_cfg = model.config.train
trained = model.meta.get("metrics", {})
print(f"ready in {time.perf_counter() - start:.1f} s; trained for {model.meta.get('seconds', float('nan')) / 60:.1f} min: "
      f"{train_cfg.epochs} epochs on {train_cfg.subset or 60_000:,} images, batch size {train_cfg.batch_size}, "
      f"lr {train_cfg.lr:g}, EMA decay {train_cfg.ema_decay}")
print(f"on {trained.get('gpu_name') or trained.get('cpu_name', 'an unrecorded device')}, "
      f"in {trained.get('precision', 'fp32')}, {trained.get('train_images_per_second', float('nan')):.0f} images/s")

# %%
history = model.meta["history"]
for h in history:
    print(f"epoch {h['epoch']:>3}: train loss {h['train_loss']:.4f}, eval loss (EMA weights) {h['eval_loss']:.4f}")
fig = plot_loss_curves(history)
fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
plt.show()

# %% [markdown]
# ### The loss against $t$
#
# A single number hides how unequal the timesteps are. Below, the trained model's
# $\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ (the mean over pixels, unweighted, whatever loss the
# profile trained with) on test images, each noised at its own $t$, the $t$ spread evenly over
# $1, \dots, T$ and grouped into 20 bins:

# %%
@torch.no_grad()
def loss_by_t(net: torch.nn.Module, sched: NoiseSchedule, images: torch.Tensor, bins: int = 20, seed: int = SEED):
    """Mean ‖ε − ε_θ(x_t, t)‖² per pixel, t spread evenly over 1…T → (mean t, mean loss) of each bin."""
    n, steps = images.shape[0], sched.num_timesteps
    t = torch.linspace(0, steps - 1, n).round().long()  # indices t − 1
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    device = next(net.parameters()).device
    per_image = torch.cat([
        (net(q_sample(sched.to(device), x.to(device), tt.to(device), e.to(device)), tt.to(device)).float().cpu() - e)
        .pow(2).mean(dim=(1, 2, 3))
        for x, tt, e in zip(images.split(250), t.split(250), eps.split(250))
    ])
    which = t * bins // steps
    count = torch.bincount(which, minlength=bins)
    centre = torch.bincount(which, weights=(t + 1).double(), minlength=bins) / count
    return centre, torch.bincount(which, weights=per_image.double(), minlength=bins) / count


LOSS_IMAGES = test.images[: PROFILE.loss_by_t_images]
centre, by_t = loss_by_t(model.unet, schedule, LOSS_IMAGES)
print(f"{'t (bin mean)':>13} {'‖ε − ε_θ‖²':>11}")
for k in range(0, len(centre), 4):
    print(f"{centre[k].item():>13.0f} {by_t[k].item():>11.4f}")
print(f"mean over the bins {by_t.mean().item():.4f}; the first bin's loss is {by_t[0] / by_t[-1]:.0f}× the last's")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(centre, by_t, "o-", label=f"trained DDPM ({PROFILE.name} profile)")
ax.set(xlabel="t", ylabel=r"$\|\epsilon - \epsilon_\theta(x_t, t)\|^2$ per pixel", yscale="log",
       title=f"loss against t, {len(LOSS_IMAGES)} test images")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# Read with the min-SNR section above: the error in $\epsilon$ is largest where the image is nearly
# clean, because there the noise is a faint grain that must be told apart from the digit's own
# detail; at large $t$ the input is almost all noise, $x_t \approx \epsilon$, and predicting $\epsilon$ is
# nearly copying the input. (Measured in $x_0$, $\|x_0 - \hat x_0\|^2 = \|\epsilon - \hat\epsilon\|^2 / \mathrm{SNR}_t$,
# the order reverses: the digit is hardest to guess from the noisiest inputs.)
#
# :::{admonition} Exercise 2.2 (an experiment): train with the linear schedule
# :class: tip
# Run `algorithm1` twice with the same budget (`INLINE_STEPS` steps, the same seed), once with
# the cosine schedule (done above) and once with Ho et al.'s linear one, and compare the two tiny
# models' loss against $t$, each on its own schedule. *Predict* first from the $\ln \mathrm{SNR}$ plot
# of section 1: over how much of the chain is the task nearly trivial under each schedule, and why
# is that a waste of training? A yardstick: the loss of simply copying the input, $\hat\epsilon = x_t$,
# which is $\bar\alpha_t\,\overline{x_0^2} + (1 - \sqrt{1-\bar\alpha_t})^2$ per pixel.
# :::
#
# :::{admonition} Solution 2.2
# :class: dropdown
# Under the linear schedule $\bar\alpha_t$ is down to $0.08$ by $t = T/2$ and $0.003$ by $3T/4$
# (section 1's table, $T = 1000$): for the last part of the chain $x_t$ is practically pure noise,
# copying the input is already almost exact, and the network has next to nothing to learn there.
# Since $t$ is drawn uniformly, that share of every batch is wasted; under the cosine schedule the copy's loss stays high until close
# to the end. The cell prints, for each schedule, the share of timesteps at which copying the input
# already scores below 0.01 (about a third of the chain under the linear schedule against 7 % under
# the cosine one, for $T = 100$ and $T = 1000$ alike), and
# the two tiny models' loss in four stretches of the chain; the plot shows both models' curves
# beside their copy yardsticks. (The two runs' losses are not a comparison of sample quality, each
# being measured on its own schedule; Nichol & Dhariwal compare the schedules by likelihood and
# FID.)
# :::

# %% tags=["solution", "hide-cell"]
# Solution 2.2: the same inline run under the linear schedule; loss against t of both tiny models.
linear_schedule = NoiseSchedule.make("linear", T)
start = time.perf_counter()
net_linear, _, losses_linear = algorithm1(linear_schedule, INLINE_STEPS)
print(f"linear-schedule run: {INLINE_STEPS} steps in {time.perf_counter() - start:.1f} s")
runs = {"cosine": loss_by_t(net, schedule, LOSS_IMAGES), "linear": loss_by_t(net_linear, linear_schedule, LOSS_IMAGES)}
x0_power = LOSS_IMAGES.pow(2).mean().double()  # the mean of x_0² per pixel


def copy_loss(sched: NoiseSchedule) -> torch.Tensor:
    """Per-pixel loss of ε̂ = x_t at every t: ᾱ_t · mean(x_0²) + (1 − √(1 − ᾱ_t))², index t − 1."""
    ab = sched.alphas_cumprod.double()
    return ab * x0_power + (1 - (1 - ab).sqrt()) ** 2


quarters = [(q * T // 4 + 1, (q + 1) * T // 4) for q in range(4)]
print(f"{'schedule':>9} " + " ".join(f"{f't {a}–{b}':>11}" for a, b in quarters) + "   copying x_t < 0.01 at")
share = {}
for (name, (c, l)), sched in zip(runs.items(), (schedule, linear_schedule)):
    in_quarter = [l[(c >= a) & (c <= b)].mean().item() for a, b in quarters]
    share[name] = (copy_loss(sched) < 0.01).double().mean().item()
    print(f"{name:>9} " + " ".join(f"{v:>11.4f}" for v in in_quarter) + f"   {share[name]:>5.0%} of the t")
assert share["linear"] > share["cosine"], share
assert round(lin1000.alphas_cumprod[499].item(), 2) == 0.08 and round(lin1000.alphas_cumprod[749].item(), 3) == 0.003
for T_check in (100, 1000):  # the smoke profile's T and the book's: the same shares
    cos_share, lin_share = ((copy_loss(NoiseSchedule.make(kind, T_check)) < 0.01).double().mean().item()
                            for kind in ("cosine", "linear"))
    assert round(cos_share, 2) == 0.07 and abs(lin_share - 1 / 3) < 0.03, (T_check, cos_share, lin_share)
fig, ax = plt.subplots(figsize=(6, 3.2))
for (name, (c, l)), sched in zip(runs.items(), (schedule, linear_schedule)):
    line, = ax.plot(c, l, "o-", label=f"tiny UNet, {name} schedule, {INLINE_STEPS} steps")
    ax.plot(torch.arange(1, T + 1), copy_loss(sched), "--", color=line.get_color(), label=f"copy x_t, {name}")
ax.set(xlabel="t", ylabel=r"$\|\epsilon - \epsilon_\theta\|^2$ per pixel", yscale="log", title="loss against t")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The reverse process
#
# ### The posterior of one step
#
# Going backwards, $q(x_{t-1} \mid x_t)$ is intractable (it depends on the whole data
# distribution), but **conditioned on $x_0$** it is a Gaussian with closed-form parameters
# (Ho et al., eq. 6–7). By Bayes' rule and the Markov property,
# $q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\,q(x_{t-1} \mid x_0)$, a product of two Gaussians in
# $x_{t-1}$ (one step, and eq. 4 at $t - 1$). Per pixel, its exponent is
#
# $$
# -\frac12\Big[\frac{(x_t - \sqrt{\alpha_t}\,x_{t-1})^2}{\beta_t} + \frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{1-\bar\alpha_{t-1}}\Big]
# = -\frac12\Big[\underbrace{\Big(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\Big)}_{1/\tilde\beta_t} x_{t-1}^2
# - 2\Big(\frac{\sqrt{\alpha_t}}{\beta_t}\,x_t + \frac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}\,x_0\Big)x_{t-1}\Big] + C,
# $$
#
# with $C$ free of $x_{t-1}$. Completing the square, $-\frac{1}{2\tilde\beta_t}(x_{t-1} - \tilde\mu_t)^2 + C'$,
# reads off the variance as the inverse of the quadratic coefficient and the mean as the variance
# times the linear one. Since $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$,
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big),
# \qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
# \qquad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .
# $$
#
# The mean is a blend of where we are ($x_t$) and where we are going ($x_0$). In code, with the
# timestep $t = 1, \dots, T$ as the argument and the arrays read at $t - 1$; then, for one pixel, the
# product of the two Gaussians normalised on a grid against the closed form:


# %%
def posterior_inline(sched: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
    """Mean and variance of q(x_{t−1} | x_t, x_0) (Ho eq. 6–7) at one timestep t ∈ {1, …, T} (ᾱ_0 = 1)."""
    beta, alpha, ab = (float(v[t - 1].double()) for v in (sched.betas, sched.alphas, sched.alphas_cumprod))
    ab_prev = float(sched.alphas_cumprod[t - 2].double()) if t > 1 else 1.0
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * xt
    return mean, (1 - ab_prev) / (1 - ab) * beta


x0, xt, t_mid = test.images[:4], torch.randn(4, 1, 32, 32), T // 2
mean, var = posterior_inline(schedule, x0, xt, t_mid)
pkg_mean, pkg_var, _ = q_posterior(schedule, x0, xt, torch.full((4,), t_mid - 1))  # the package takes the index
torch.testing.assert_close(mean, pkg_mean)
torch.testing.assert_close(torch.tensor(var), pkg_var[0, 0, 0, 0])
print(f"our posterior matches mnistdiff.ddpm.q_posterior (at t = {t_mid}: β̃_t = {var:.6f})")

grid = torch.linspace(-4, 4, 20_001, dtype=torch.float64)
a_t, b_t = float(schedule.alphas[t_mid - 1]), float(schedule.betas[t_mid - 1])
ab_prev = float(schedule.alphas_cumprod[t_mid - 2])
x0_pix, xt_pix = 0.5, -0.3
log_density = -(xt_pix - math.sqrt(a_t) * grid) ** 2 / (2 * b_t) - (grid - math.sqrt(ab_prev) * x0_pix) ** 2 / (
    2 * (1 - ab_prev))
density = torch.softmax(log_density, 0)  # the product, normalised on the grid
grid_mean = (density * grid).sum()
grid_var = (density * (grid - grid_mean) ** 2).sum()
m_closed, v_closed = posterior_inline(schedule, torch.tensor(x0_pix), torch.tensor(xt_pix), t_mid)
torch.testing.assert_close(grid_mean.float(), m_closed.float(), rtol=1e-5, atol=1e-6)
torch.testing.assert_close(grid_var.item(), v_closed, rtol=1e-4, atol=0)
print(f"one pixel, x_0 = {x0_pix}, x_t = {xt_pix}, t = {t_mid}: the normalised product has mean {grid_mean:.5f} "
      f"and variance {grid_var:.6f}; μ̃_t = {m_closed.item():.5f}, β̃_t = {v_closed:.6f}")

# %% [markdown]
# :::{admonition} Exercise 2.3 (derivation): the posterior is narrower than the step
# :class: tip
# Show that $0 \le \tilde\beta_t \le \beta_t$ for every $t$, that $\tilde\beta_1 = 0$, and that the
# ratio $\tilde\beta_t/\beta_t$ tends to 1 as the chain goes on. Explain in a sentence why knowing $x_0$
# makes the step back *more* certain than the step forward. Then find, for this profile's schedule,
# the first $t$ at which $\tilde\beta_t / \beta_t > 0.99$.
# :::
#
# :::{admonition} Solution 2.3
# :class: dropdown
# $\tilde\beta_t/\beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$. Every $\alpha_i \in (0, 1]$, so
# $\bar\alpha_t = \alpha_t\bar\alpha_{t-1} \le \bar\alpha_{t-1}$ and the ratio lies in $[0, 1]$; at $t = 1$
# the numerator is $1 - \bar\alpha_0 = 0$: given $x_0$ and $x_1$, $x_0$ *is* the step back. As
# $\bar\alpha_t \to 0$ both terms tend to 1, so the ratio does too. Forward, $x_t$ spreads around
# $\sqrt{\alpha_t}\,x_{t-1}$ with variance $\beta_t$; backwards we condition on *two* things, $x_t$ and
# $x_0$, and each pins $x_{t-1}$ down (the posterior precision is the sum of the two precisions,
# $\alpha_t/\beta_t + 1/(1-\bar\alpha_{t-1})$). Ho et al. note that $\beta_t$ and $\tilde\beta_t$ are
# the two extremes for the reverse variance: optimal when $x_0$ is a single point (then
# $\sigma_t^2 = \tilde\beta_t$) and when $x_0 \sim \mathcal N(0, I)$ ($\sigma_t^2 = \beta_t$). The cell
# checks the inequalities at every $t$ and prints the ratio at a few timesteps and the first $t$
# past 0.99.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 2.3: β̃_t / β_t over the whole chain: in [0, 1], 0 at t = 1, past 0.99 from which t.
ratio = schedule.posterior_variance.double() / schedule.betas.double()  # index t − 1
assert ratio[0] == 0 and bool(((ratio >= 0) & (ratio <= 1 + 1e-12)).all())
first = int((ratio > 0.99).nonzero()[0]) + 1
print("β̃_t / β_t at t = " + ", ".join(f"{t}: {ratio[t - 1].item():.4f}" for t in (1, 2, 5, T // 10, T // 2, T)))
print(f"β̃_t ≤ β_t at all {T} timesteps; β̃_t / β_t > 0.99 from t = {first} on")

# %% [markdown]
# ### Plugging in the network
#
# At sampling time we do not know $x_0$ — but eq. 4 can be inverted: given $x_t$ and a guess
# $\hat\epsilon = \epsilon_\theta(x_t, t)$ of its noise, the digit it came from is
#
# $$
# \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}} .
# $$
#
# Put $\hat x_0$ into $\tilde\mu_t$ and simplify: this is Ho et al.'s parametrisation (eq. 11),
#
# $$
# \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\Big),
# $$
#
# and the reverse step is $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$, $z \sim \mathcal N(0, I)$, with
# no noise at the last step, $t = 1$ (Algorithm 2). For $\sigma_t^2$, Ho et al. found $\beta_t$ and
# $\tilde\beta_t$ equally good; the package uses $\tilde\beta_t$ (chapter 3 shows why that choice
# makes DDPM a special case of DDIM). Let us check that eq. 11 and "posterior at $\hat x_0$" agree:

# %%
def mu_theta(sched: NoiseSchedule, xt: torch.Tensor, eps_hat: torch.Tensor, t: int) -> torch.Tensor:
    """Ho eq. 11 at t ∈ {1, …, T}: (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √α_t."""
    i = t - 1  # the arrays' index
    return (xt - sched.betas[i] / (1 - sched.alphas_cumprod[i]).sqrt() * eps_hat) / sched.alphas[i].sqrt()


xt = q_sample(schedule, test.images[:4].to(DEVICE), torch.full((4,), t_mid - 1, device=DEVICE),
              torch.randn(4, 1, 32, 32, device=DEVICE))
t_batch = torch.full((4,), t_mid - 1, device=DEVICE)  # the index of t_mid
with torch.no_grad():
    out = p_mean_variance(model.unet, schedule.to(DEVICE), xt, t_batch, clip_range=None)
torch.testing.assert_close(mu_theta(schedule.to(DEVICE), xt, out["eps"], t_mid), out["mean"], rtol=1e-4, atol=1e-4)
print("eq. 11 equals the posterior mean at x̂_0 (mnistdiff.ddpm.p_mean_variance, unclipped)")

# %% [markdown]
# The package's sampler takes one more precaution, as Ho et al.'s code does: it **clips $\hat x_0$ to
# the data range $[-1, 1]$** before putting it into the posterior. When $t$ is large, $\bar\alpha_t$
# is small and dividing by $\sqrt{\bar\alpha_t}$ magnifies the network's errors; clipping keeps the
# step on sensible images. So one step of Algorithm 2, as the package does it:


# %%
@torch.no_grad()
def reverse_step(model: UNet, sched: NoiseSchedule, xt: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
    """x_{t−1} = μ̃_t(x_t, clip(x̂_0)) + σ_t z, σ_t² = β̃_t, at t ∈ {1, …, T}; no noise at t = 1."""
    eps_hat = model(xt, torch.full((xt.shape[0],), t - 1, device=xt.device))  # the network takes the index
    ab = sched.alphas_cumprod[t - 1]
    x0_hat = ((xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
    mean, var = posterior_inline(sched, x0_hat, xt, t)
    return mean + (math.sqrt(var) * z if t > 1 else 0)


z = torch.randn(xt.shape, device=DEVICE)
ours = reverse_step(model.unet, schedule.to(DEVICE), xt, t_mid, z)
theirs, _ = p_sample(model.unet, schedule.to(DEVICE), xt, t_batch, z)
torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
print("our reverse step matches mnistdiff.ddpm.p_sample")

# %% [markdown]
# ### Why predict the noise: the variational bound
#
# Ho et al. train the reverse chain $p_\theta(x_{0:T}) = p(x_T)\prod_{t=1}^T p_\theta(x_{t-1} \mid x_t)$, with
# $p(x_T) = \mathcal N(0, I)$, by the variational bound on $-\ln p_\theta(x_0)$ that every latent-variable
# model uses, with the forward chain as the approximate posterior (Sohl-Dickstein et al.; Ho et al.,
# eq. 3 and 5):
#
# $$
# -\ln p_\theta(x_0) \le \mathbb E_q\Big[-\ln \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big]
# = \mathbb E_q\Big[-\ln p(x_T) - \sum_{t=1}^{T} \ln \frac{p_\theta(x_{t-1} \mid x_t)}{q(x_t \mid x_{t-1})}\Big].
# $$
#
# For $t \ge 2$ rewrite each forward step with Bayes' rule, conditioned on $x_0$ (the Markov property
# makes $q(x_t \mid x_{t-1}) = q(x_t \mid x_{t-1}, x_0)$):
# $q(x_t \mid x_{t-1}) = q(x_{t-1} \mid x_t, x_0)\,q(x_t \mid x_0)/q(x_{t-1} \mid x_0)$. The ratios
# $q(x_t \mid x_0)/q(x_{t-1} \mid x_0)$ telescope to $q(x_T \mid x_0)/q(x_1 \mid x_0)$, and the $q(x_1 \mid x_0)$
# cancels the $t = 1$ term's denominator. What is left groups into KL divergences:
#
# $$
# L = \underbrace{D_\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t=2}^{T} \underbrace{\mathbb E_q\,D_\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# \ \underbrace{-\ \mathbb E_q \ln p_\theta(x_0 \mid x_1)}_{L_0} .
# $$
#
# $L_T$ has no parameters (and is tiny when $\bar\alpha_T \approx 0$); $L_0$ is the decoder of the
# last step (Ho et al. use a discretised Gaussian). Each $L_{t-1}$ compares two Gaussians with the
# same covariance $\sigma_t^2 I$, for which the KL is half a squared distance between the means:
#
# $$
# L_{t-1} = \mathbb E_q\Big[\frac{\|\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\|^2}{2\sigma_t^2}\Big] + C
# = \mathbb E_{x_0, \epsilon}\Big[\underbrace{\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}}_{w_t}\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2\Big] + C .
# $$
#
# The second form follows from writing $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ in
# $\tilde\mu_t$, which turns it into eq. 11 with the true $\epsilon$:
# $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon\big)$, so
# $\tilde\mu_t - \mu_\theta = \frac{\beta_t}{\sqrt{\alpha_t(1-\bar\alpha_t)}}(\epsilon_\theta - \epsilon)$.
# $L_\text{simple}$ is this bound with every $w_t$ set to 1 (and $t$ sampled uniformly): Ho et al.
# found the unweighted loss gives better samples. Checked on random tensors, then $w_t$ over $t$ for
# this profile's schedule, with both choices of $\sigma_t^2$:

# %%
def kl_same_variance(mu_q: torch.Tensor, mu_p: torch.Tensor, var: float) -> torch.Tensor:
    """KL(N(μ_q, var I) ‖ N(μ_p, var I)) per image: ‖μ_q − μ_p‖² / (2 var)."""
    return (mu_q - mu_p).pow(2).flatten(1).sum(1) / (2 * var)


def vlb_weight(sched: NoiseSchedule, t: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """w_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)) at the indices t − 1 in t."""
    beta, alpha, ab = (v.double()[t] for v in (sched.betas, sched.alphas, sched.alphas_cumprod))
    return beta**2 / (2 * sigma2.double()[t] * alpha * (1 - ab))


gen = torch.Generator().manual_seed(SEED)
x0, eps, eps_hat = test.images[:4].double(), *torch.randn((2, 4, 1, 32, 32), generator=gen, dtype=torch.float64)
ab_t = schedule.alphas_cumprod.double()[t_mid - 1]
xt = ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps
mu_q, var_q = posterior_inline(schedule, x0, xt, t_mid)
mu_p = mu_theta(schedule, xt.float(), eps_hat.float(), t_mid).double()
w_mid = vlb_weight(schedule, torch.tensor([t_mid - 1]), schedule.posterior_variance)
torch.testing.assert_close(kl_same_variance(mu_q, mu_p, var_q), w_mid * (eps - eps_hat).pow(2).flatten(1).sum(1),
                           rtol=1e-4, atol=0)
dist_q = torch.distributions.Normal(mu_q.flatten(1), math.sqrt(var_q))
dist_p = torch.distributions.Normal(mu_p.flatten(1), math.sqrt(var_q))
torch.testing.assert_close(torch.distributions.kl_divergence(dist_q, dist_p).sum(1),
                           kl_same_variance(mu_q, mu_p, var_q))
ab_T = schedule.alphas_cumprod.double()[-1]
# L_T = KL(N(√ᾱ_T x_0, (1 − ᾱ_T) I) ‖ N(0, I)) for one test digit, summed over its pixels
L_T = 0.5 * (ab_T * x0[0].pow(2) + (1 - ab_T) - 1 - torch.log(1 - ab_T)).sum()
print(f"at t = {t_mid}: KL between the posterior and p_θ = w_t ‖ε − ε_θ‖², w_t = {w_mid.item():.4f} "
      f"(also torch.distributions.kl_divergence); L_T of a test digit: {L_T.item():.2e} nats")

all_t = torch.arange(1, T)  # the indices t − 1 for t = 2, …, T
w_small = vlb_weight(schedule, all_t, schedule.posterior_variance)  # σ_t² = β̃_t
w_large = vlb_weight(schedule, all_t, schedule.betas)  # σ_t² = β_t
for name, w in (("σ_t² = β̃_t", w_small), ("σ_t² = β_t", w_large)):
    print(f"{name:>11}: w_t at t = 2: {w[0].item():.3g}, t = {T // 2}: {w[T // 2 - 2].item():.3g}, "
          f"t = {T}: {w[-1].item():.3g}; largest / smallest {(w.max() / w.min()).item():.3g}")
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(all_t + 1, w_small, label=r"$w_t$, $\sigma_t^2 = \tilde\beta_t$ (the package's)")
ax.plot(all_t + 1, w_large, label=r"$w_t$, $\sigma_t^2 = \beta_t$")
ax.plot(all_t + 1, torch.ones(T - 1), "--", label=r"$L_\mathrm{simple}$: 1")
ax.set(xlabel="t", yscale="log", title=r"the weight of $\|\epsilon - \epsilon_\theta\|^2$ in the bound's $L_{t-1}$")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% tags=["remove-input"]
beta_2, ab_1 = schedule.betas.double()[1].item(), schedule.alphas_cumprod.double()[0].item()
Markdown(rf"""The bound weights the steps very unequally. For $\sigma_t^2 = \tilde\beta_t$ the weight simplifies to
$w_t = \beta_t / (2\alpha_t(1-\bar\alpha_{{t-1}}))$: {w_small[0].item():.2f} at $t = 2$ (there $\alpha_t \approx 1$ and
$\beta_t/(1-\bar\alpha_{{t-1}}) = {beta_2 / (1 - ab_1):.2f}$), then falling with $\beta_t/(1-\bar\alpha_{{t-1}})$ through the
middle of the chain ({w_small[T // 2 - 2].item():.2g} at $t = {T // 2}$), and rising again at the very end of the cosine
schedule, to {w_small[-1].item():.0f} at $t = T$, where $\beta_t$ is clipped near 1 and $\alpha_t$ is tiny: the largest
weight is {times_ten((w_small.max() / w_small.min()).item())} times the smallest. $L_\text{{simple}}$ flattens all of this
to 1: relative to the bound it moves weight from the nearly clean steps to the middle of the chain, gives up some
likelihood and gains samples that look better (Ho et al., section 3.4); min-SNR-$\gamma$ reweights once more, by a
different rule.""")

# %% [markdown]
# ### The score view
#
# There is a second reading of what the network learns. The **score** of a distribution is the
# gradient of its log density, $\nabla_x \ln q(x)$: it points towards where the data is denser.
# **Tweedie's formula** (Efron 2011, *Tweedie's formula and selection bias*) gives the best guess of
# $x_0$ from a Gaussian-noised $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ through the
# score of the noisy marginal $q(x_t)$:
#
# $$
# \mathbb E[x_0 \mid x_t] = \frac{x_t + (1-\bar\alpha_t)\,\nabla_{x_t}\ln q(x_t)}{\sqrt{\bar\alpha_t}} .
# $$
#
# (Differentiate $q(x_t) = \int q(x_t \mid x_0)\,q(x_0)\,dx_0$ under the integral:
# $\nabla q(x_t) = \int \frac{\sqrt{\bar\alpha_t}x_0 - x_t}{1-\bar\alpha_t}\,q(x_t \mid x_0)\,q(x_0)\,dx_0$, and
# divide by $q(x_t)$.) The network trained with $L_\text{simple}$ estimates the minimiser of a squared
# error, the conditional mean $\mathbb E[\epsilon \mid x_t]$, and $\hat x_0$ of the previous section is
# eq. 4 solved with it. Comparing the two expressions for $\mathbb E[x_0 \mid x_t]$:
#
# $$
# \epsilon_\theta(x_t, t) \approx \mathbb E[\epsilon \mid x_t] = -\sqrt{1-\bar\alpha_t}\;\nabla_{x_t}\ln q(x_t),
# \qquad\text{so}\qquad
# s_\theta(x_t, t) = -\frac{\epsilon_\theta(x_t, t)}{\sqrt{1-\bar\alpha_t}}
# $$
#
# is an estimate of the score, and $\hat x_0$ *is* Tweedie's formula with that score. This is the
# bridge to score-based models (Song & Ermon, [arXiv:1907.05600](https://arxiv.org/abs/1907.05600);
# Song et al., [arXiv:2011.13456](https://arxiv.org/abs/2011.13456)), which learn $s_\theta$ directly and
# sample with Langevin dynamics or an SDE; chapter 3's deterministic DDIM sampler is a discretisation of
# that view's probability-flow ODE. A check where the
# score is known in closed form: one-pixel data from a mixture of two Gaussians, whose noisy
# marginal is again a mixture of Gaussians. The score comes from autograd on $\ln q(x_t)$; the
# conditional means come in closed form and, as a network would learn them, as the average of
# $\epsilon$ over 2,000,000 noised samples in narrow bins of $x_t$:

# %%
t_score = int((schedule.alphas_cumprod < 0.5).nonzero()[0]) + 1  # the first t with ᾱ_t < 1/2
ab_s = schedule.alphas_cumprod.double()[t_score - 1]
weights, means, stds = (torch.tensor(v, dtype=torch.float64) for v in ((0.4, 0.6), (-0.6, 0.5), (0.15, 0.25)))
var_k = ab_s * stds**2 + 1 - ab_s  # component k of q(x_t): N(√ᾱ_t m_k, ᾱ_t s_k² + 1 − ᾱ_t)


def log_q_t(x: torch.Tensor) -> torch.Tensor:
    """ln q(x_t) of the noised mixture, elementwise, and the log of each component's weighted density."""
    comp = (torch.log(weights) - 0.5 * (x[:, None] - ab_s.sqrt() * means) ** 2 / var_k
            - 0.5 * torch.log(2 * math.pi * var_k))
    return torch.logsumexp(comp, 1), comp


x_grid = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64, requires_grad=True)
log_q, comp = log_q_t(x_grid)
score = torch.autograd.grad(log_q.sum(), x_grid)[0]
x_grid = x_grid.detach()
resp = torch.softmax(comp.detach(), 1)  # p(component k | x_t)
x0_mean = (resp * (means + ab_s.sqrt() * stds**2 / var_k * (x_grid[:, None] - ab_s.sqrt() * means))).sum(1)
torch.testing.assert_close(x0_mean, (x_grid + (1 - ab_s) * score) / ab_s.sqrt())  # Tweedie's formula
eps_mean = (x_grid - ab_s.sqrt() * x0_mean) / (1 - ab_s).sqrt()  # E[ε | x_t] from E[x_0 | x_t], by eq. 4
torch.testing.assert_close(eps_mean, -(1 - ab_s).sqrt() * score)

gen = torch.Generator().manual_seed(SEED)
k = torch.multinomial(weights, 2_000_000, replacement=True, generator=gen)
x0_s = means[k] + stds[k] * torch.randn(k.shape, generator=gen, dtype=torch.float64)
eps_s = torch.randn(k.shape, generator=gen, dtype=torch.float64)
xt_s = ab_s.sqrt() * x0_s + (1 - ab_s).sqrt() * eps_s
width = float(x_grid[1] - x_grid[0])
which = ((xt_s - x_grid[0]) / width).round().long()
keep = (which >= 0) & (which < len(x_grid))
count = torch.bincount(which[keep], minlength=len(x_grid))
eps_binned = torch.bincount(which[keep], weights=eps_s[keep], minlength=len(x_grid)) / count.clamp(min=1)
full = count >= 2000
torch.testing.assert_close(eps_binned[full], eps_mean[full], rtol=0, atol=0.05)
print(f"at t = {t_score} (ᾱ_t = {ab_s.item():.3f}): Tweedie's formula equals the exact E[x_0 | x_t] on "
      f"{len(x_grid)} points of x_t; the binned mean of ε is within "
      f"{(eps_binned[full] - eps_mean[full]).abs().max().item():.3f} of −√(1 − ᾱ_t) · score "
      f"in the {int(full.sum())} bins with at least 2,000 samples")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
axes[0].plot(x_grid, score, label=r"score $\nabla \ln q(x_t)$ (autograd)")
axes[0].plot(x_grid[full], -eps_binned[full] / (1 - ab_s).sqrt(), ".",
             label=r"$-\bar\epsilon / \sqrt{1-\bar\alpha_t}$ (binned samples)")
axes[0].set(xlabel=r"$x_t$", title=f"the score at t = {t_score}")
axes[1].plot(x_grid, x0_mean, label=r"$\mathbb{E}[x_0 \mid x_t]$ (exact)")
axes[1].plot(x_grid, x_grid / ab_s.sqrt(), ":", label=r"$x_t / \sqrt{\bar\alpha_t}$ (no score term)")
axes[1].axhline(means[0], color="gray", lw=0.5)
axes[1].axhline(means[1], color="gray", lw=0.5)
axes[1].set(xlabel=r"$x_t$", title="Tweedie's formula: the score pulls x̂_0 to the data")
for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Sampling
#
# Algorithm 2 is that step in a loop: $x_T \sim \mathcal N(0, I)$, then $t = T, T-1, \dots, 1$ (the
# network sees the indices $T - 1, \dots, 0$). The package's `DiffusionModel.sample(sampler="ddpm")`
# runs it (`mnistdiff.ddpm.p_sample_loop`) with one seeded random generator, so the same seed always
# gives the same digits:

# %%
start = time.perf_counter()
samples, frames = model.sample(PROFILE.num_samples, sampler="ddpm", seed=SEED, device=DEVICE,
                               return_intermediates=True)
seconds = time.perf_counter() - start
print(f"{PROFILE.num_samples} samples × {T} network calls in {seconds:.1f} s "
      f"({seconds / PROFILE.num_samples * 1e3:.0f} ms per sample on {DEVICE})")
show_grid(samples, nrow=8, title=f"DDPM samples ({PROFILE.name} profile, T = {T})")
plt.show()

# %% [markdown]
# ### Watching a digit appear
#
# `frames` holds $x_t$ every $T/10$ steps, labelled with $t$ (the label $t$ is the state after the step
# at $t + 1$; $x_T$ is the first, the result $x_0$ the last). Below, for the first four samples, each
# pair of rows is one sample: on top $x_t$, from pure noise on the left to the final image on the
# right; underneath, the model's guess $\hat x_0$ at that $x_t$ (clipped to $[-1, 1]$, as the sampler
# uses it), computed from the frame with one more network call. As in Ho et al.'s figure 6, the
# guess settles the coarse shape long before $x_t$ shows it, and the strokes sharpen last; the
# printed distances of each $\hat x_0$ from the final image measure how fast it settles.

# %%
picks = pick_frames(frames)  # 11 frames evenly spaced from x_T to x_0
shown_t = [frames[j][0] for j in picks]
rows = []
with torch.no_grad():
    for j in picks:
        t_label, x_frame = frames[j][0], frames[j][1][:4].to(DEVICE)
        if t_label == 0:  # the result x_0 itself
            rows.append((x_frame.cpu(), x_frame.cpu()))
            continue
        index = torch.full((x_frame.shape[0],), t_label - 1, device=DEVICE)
        x0_hat = predict_x0_from_eps(schedule.to(DEVICE), x_frame, index, model.unet(x_frame, index).float())
        rows.append((x_frame.cpu(), x0_hat.clamp(-1, 1).cpu()))
tiles = torch.cat([torch.stack([rows[c][r][i] for c in range(len(picks))]) for i in range(4) for r in (0, 1)])
strip = grid_array(tiles, nrow=len(picks))
fig, ax = plt.subplots(figsize=(strip.shape[1] * 1.5 / 100, strip.shape[0] * 1.5 / 100 + 0.5))
ax.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
ax.set_xticks([34 * k + 18 for k in range(len(picks))], [f"t={t}" for t in shown_t], fontsize=7)
ax.set_yticks([34 * r + 18 for r in range(8)], ["$x_t$", r"$\hat x_0$"] * 4, fontsize=7)
ax.set_title(r"denoising: $x_T$ (left) → $x_0$ (right); under each sample, the model's $\hat x_0$", fontsize=10)
fig.tight_layout()
plt.show()
change = [(rows[c][1] - rows[-1][1]).abs().mean().item() for c in range(len(picks))]
print("mean |x̂_0 − x_0| per pixel, by frame: " + ", ".join(f"t={t}: {v:.3f}" for t, v in zip(shown_t, change)))

# %% tags=["remove-input"]
t_first, x_first = frames[picks[0]][0], frames[picks[0]][1][:4].to(DEVICE)  # t = T and x_T
with torch.no_grad():
    index_T = torch.full((x_first.shape[0],), t_first - 1, device=DEVICE)
    eps_first = model.unet(x_first, index_T).float()
x0_first = predict_x0_from_eps(schedule.to(DEVICE), x_first, index_T, eps_first).cpu()  # unclipped
ab_T, ab_T1 = (schedule.alphas_cumprod.double()[i].item() for i in (-1, -2))
at_bounds = (rows[0][1].abs() == 1).float().mean().item()  # rows[0]: the frame at t = T, x̂_0 clipped
Markdown(rf"""The first column's $\hat x_0$, at $t = T$, is {"black-and-white speckle" if at_bounds > 0.5 else "no digit"}:
{at_bounds:.1%} of its pixels sit exactly at the clipping bounds $\pm 1$. That is no bug. $x_T$ holds almost nothing
of a digit ($\sqrt{{\bar\alpha_T}} =$ {times_ten(ab_T ** 0.5)}), so
$\hat x_0 = (x_T - \sqrt{{1-\bar\alpha_T}}\,\hat\epsilon)/\sqrt{{\bar\alpha_T}}$ multiplies any error of the
network's $\hat\epsilon$ by $1/\sqrt{{\bar\alpha_T}} \approx$ {times_ten(ab_T ** -0.5)}: to put $\hat x_0$ anywhere
near a digit, $\hat\epsilon$ would have to match $x_T$ to within about $\sqrt{{\bar\alpha_T}}$ per pixel. Here the two differ by {(x_first - eps_first).abs().mean().item():.3f} per
pixel on average, the unclipped $\hat x_0$ has a median magnitude of {x0_first.abs().median().item():,.0f}, and
clipping turns it into $\pm 1$. The sampler does not suffer from it: at $t = T$ the posterior mean gives $\hat x_0$ a
weight of only $\sqrt{{\bar\alpha_{{T-1}}}}\,\beta_T/(1-\bar\alpha_T) =$
{times_ten(ab_T1 ** 0.5 * schedule.betas.double()[-1].item() / (1 - ab_T))}, so $x_{{T-1}}$ is still almost pure noise.
Chapter 3 (section 3, *The delicate first step*) treats this step in full.""")

# %% [markdown]
# The same trajectory as a player (the animation plays without a running kernel; with one, the
# slider steps through the frames):

# %%
denoising_player(frames, count=min(4, PROFILE.num_samples))

# %% [markdown]
# :::{admonition} Exercise 2.4 (a change to the code): sampling without the noise
# :class: tip
# Set $\sigma_t = 0$ in the reverse step, $x_{t-1} = \mu_\theta(x_t, t)$, and sample from the same
# $x_T$ as a normal run. *Predict* first: what happens to the samples, and why is this **not** the
# deterministic DDIM sampler of chapter 3? Then run eight samples both ways, side by side, and
# compare how much the pixels vary within an image and how many pixels end near black or white.
# :::
#
# :::{admonition} Solution 2.4
# :class: dropdown
# Each step removes the noise the posterior expects to be there but adds none back, so $x_{t-1}$
# carries less noise than eq. 4 says it should at $t - 1$: even with the exact $\epsilon$, its noise has
# $\sqrt{\alpha_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)}$ times the standard deviation $\sqrt{1-\bar\alpha_{t-1}}$
# it should have, a factor below 1 at every step, compounded over all $T$ steps. The network, told
# the noise level by $t$, keeps removing noise that is no longer there, and the chain stops
# *sampling*: from each $x_T$ it follows one path of posterior means, and what it ends at is not an
# image with the statistics of the data (the top row) but an over-processed one. DDIM with
# $\eta = 0$ is deterministic too, but it is a different update: it keeps the noise level eq. 4
# requires at every step, $\sqrt{1-\bar\alpha_{t-1}}\,\hat\epsilon$, instead of dropping it. The cell
# prints, for both chains from the same $x_T$, the mean standard deviation of the pixels within an
# image and the share of pixels beyond $\pm 0.9$, and shows the two sets of images one above the
# other; under them it says, for this profile's model, how far the $\sigma_t = 0$ chains went. With
# the `book` profile's trained model the over-processing goes all the way, to blank black images: a
# network that keeps removing noise that is not there shrinks every image towards what is most
# common in the data, which on MNIST is the black background.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 2.4: eight samples from the same x_T, with σ_t z (top) and with σ_t = 0 (bottom), one batch.
n_quiet = 8
gen = torch.Generator(device=DEVICE).manual_seed(SEED)
x = torch.randn((n_quiet, 1, 32, 32), generator=gen, device=DEVICE).repeat(2, 1, 1, 1)  # x_T, twice
sched_dev = schedule.to(DEVICE)
start = time.perf_counter()
for t in range(T, 0, -1):
    z = torch.randn((n_quiet, 1, 32, 32), generator=gen, device=DEVICE)
    z = torch.cat([z, torch.zeros_like(z)])  # the second half: σ_t = 0
    x, _ = p_sample(model.unet, sched_dev, x, torch.full((2 * n_quiet,), t - 1, device=DEVICE), z)
noisy, quiet = x.cpu().chunk(2)
std_noisy, std_quiet = noisy.flatten(1).std(1).mean().item(), quiet.flatten(1).std(1).mean().item()
sat_noisy, sat_quiet = (noisy.abs() > 0.9).float().mean().item(), (quiet.abs() > 0.9).float().mean().item()
print(f"{2 * n_quiet} chains × {T} steps in {time.perf_counter() - start:.1f} s")
print(f"with σ_t z: pixel std within an image {std_noisy:.3f}, pixels beyond ±0.9 {sat_noisy:.1%}")
print(f"σ_t = 0:    pixel std within an image {std_quiet:.3f}, pixels beyond ±0.9 {sat_quiet:.1%}")
show_grid(torch.cat([noisy, quiet]), nrow=n_quiet, title="same x_T: with σ_t z (top), σ_t = 0 (bottom)")
plt.show()
blank = (quiet.flatten(1).std(1) < 0.05) & (quiet.flatten(1).mean(1) < -0.9)  # a near-constant black image
blank_words = f"all {n_quiet}" if bool(blank.all()) else f"{int(blank.sum())} of the {n_quiet}"
Markdown(rf"""With this profile's (`{PROFILE.name}`) model the chains with $\sigma_t z$ have a pixel spread of
{std_noisy:.2f} within an image and {sat_noisy:.1%} of their pixels beyond $\pm 0.9$; the $\sigma_t = 0$ chains
have {std_quiet:.3f} and {sat_quiet:.1%}, and {blank_words} end on a blank black image.""")

# %% [markdown]
# ## What we learned, and what comes next
#
# - The **forward process** $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$ is
#   fixed and has a closed form; the **cosine schedule** keeps information alive longer than the
#   linear one.
# - **Training** is regression: noise a digit with eq. 4 at a random $t$, predict the noise,
#   minimise $L_\text{simple}$ (Algorithm 1), and sample with an EMA of the weights. The error is
#   far from equal across $t$.
# - The **posterior** $q(x_{t-1} \mid x_t, x_0)$ is Gaussian (complete the square); the variational
#   bound is a sum of KL divergences to it, each a weighted noise-prediction error, and
#   $L_\text{simple}$ drops the weights.
# - The **reverse step** is that posterior evaluated at the network's guess $\hat x_0$ (clipped to
#   $[-1, 1]$) — equivalently Ho et al.'s eq. 11; $\hat x_0$ is Tweedie's formula, and
#   $-\epsilon_\theta/\sqrt{1-\bar\alpha_t}$ is an estimate of the score.
# - **Sampling** takes $T$ network calls per image. That is the price we pay next:
#   [chapter 3](03_ddim.ipynb) samples with the *same* trained network in tens of steps instead of
#   $T$, with DDIM.
