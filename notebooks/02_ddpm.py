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
# - write the training loss $L_\text{simple}$ and derive the reverse step from the Gaussian posterior;
# - sample digits with Algorithm 2 and watch them emerge from noise.
#
# **Run time.** a few minutes on two CPU cores with the committed `book` checkpoint (most of it
# the 1000-step sampler); measured times in the [introduction](../intro.md).
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator

from mnistdiff import NoiseSchedule, UNet, diffusion_loss, min_snr_weight, p_mean_variance, p_sample, q_posterior, q_sample
from mnistdiff import default_device, get_ddpm, get_profile, load_mnist
from mnistdiff import frames_grid, grid_array, pick_frames, plot_loss_curves, show_grid
from mnistdiff.course.widgets import denoising_player, timestep_explorer

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
# 1000-step sampler this chapter derives; chapter 6 measures how close they are to real digits.

# %%
preview = get_ddpm(device=DEVICE, progress=False)
show_grid(preview.sample(32, mode="ddim", ddim_steps=PROFILE.ddim_steps, seed=SEED, device=DEVICE)[0], nrow=16,
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
# $\bar\alpha_t = \prod_{s \le t} \alpha_s$,
#
# $$
# q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad\text{i.e.}\qquad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\quad \epsilon \sim \mathcal N(0, I).
# $$
#
# Everything about the forward process is in the single curve $\bar\alpha_t$: how much of the
# digit survives at step $t$. (The code counts timesteps from 0, as improved-diffusion does:
# `alphas_cumprod[t]` is $\bar\alpha$ after $t+1$ noising steps, so index $T-1$ is the last.)
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
    betas = torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)
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
for t in (0, 99, 249, 499, 749, 899, 999):
    print(f"{t:>5} {cos1000.alphas_cumprod[t].item():>12.6f} {lin1000.alphas_cumprod[t].item():>12.6f}")
print(f"last step of the cosine schedule: β_999 = {cos1000.betas[-1].item():.6f} (clipped), "
      f"ᾱ_999 = {cos1000.alphas_cumprod[-1].item():.3e}")

# %% [markdown]
# Halfway through, the linear schedule has kept $\bar\alpha = 0.08$ of the signal's variance and at
# three quarters only $0.003$; the cosine schedule still has $0.49$ and $0.14$, and only reaches
# (almost) zero at the very end. On the right, the same curves as a log signal-to-noise ratio,
# $\log(\bar\alpha_t/(1-\bar\alpha_t))$:
# the cosine schedule is nearly linear in it over most of the chain.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
u = torch.arange(1000) / 1000
for sched, name in ((cos1000, "cosine"), (lin1000, "linear")):
    ab = sched.alphas_cumprod.double()
    axes[0].plot(u, ab, label=name)
    axes[1].plot(u, torch.log(ab / (1 - ab)), label=name)
axes[0].set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$: how much of $x_0$ survives")
axes[1].set(xlabel="t / T", ylabel=r"$\log\,\bar\alpha_t / (1-\bar\alpha_t)$", title="log signal-to-noise ratio")
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
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  (Ho eq. 4); x0, eps: (B, C, H, W), t: (B,)."""
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


test = load_mnist("test")
digit = test.images[test.labels == 3][0]  # (1, 32, 32): the first 3 of the test set
schedule = NoiseSchedule.make(PROFILE.ddpm.diffusion.schedule, T)
ts = torch.linspace(0, T - 1, 8).round().long()
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
        ax.set_title(f"t={t}  ᾱ={sched.alphas_cumprod[t].item():.2f}", fontsize=7)
    axes[row, 0].set_ylabel(kind)
fig.tight_layout()
plt.show()

# %% [markdown]
# Drag the slider to move through every $t$ of this profile's schedule (the strip above the
# slider is the static version, for when the notebook is not running):

# %%
timestep_explorer(digit, schedule, frames=PROFILE.widget_frames, seed=SEED)

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
# \qquad t \sim \mathcal U\{0, \dots, T-1\}.
# $$
#
# That is Algorithm 1 of the paper: pick a digit, a random time, a random noise; noise the digit
# with eq. 4; regress the noise. In code, with the chapter-1 UNet:

# %%
def loss_inline(
    model: UNet, sched: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """L_simple for a batch: mean over pixels and examples of (ε − ε_θ(x_t, t))²."""
    return F.mse_loss(model(q_sample_inline(sched, x0, t, eps), t), eps)


untrained = UNet(PROFILE.ddpm.unet)
batch = test.images[:16]
gen = torch.Generator().manual_seed(SEED)
t = torch.randint(0, T, (16,), generator=gen)
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
#
# The weight $\mathrm{SNR}_t$ is about $4\times10^4$ at $t = 0$ and vanishes at $t = T-1$: the
# nearly clean steps, where the only task is to remove a faint grain, dominate the gradient, and
# the noisy steps that decide the digit's shape get little of it. Hang et al. (2023,
# [arXiv:2303.09556](https://arxiv.org/abs/2303.09556)) see the timesteps as tasks that compete and cap
# the weight at $\gamma$ (they recommend $\gamma = 5$): the $x_0$ error is weighted by
# $\min(\mathrm{SNR}_t, \gamma)$, that is, the $\epsilon$ error by
#
# $$
# w_t = \frac{\min(\mathrm{SNR}_t, \gamma)}{\mathrm{SNR}_t},
# \qquad L_\gamma(\theta) = \mathbb E_{t,\,x_0,\,\epsilon}\big[w_t\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2\big],
# $$
#
# which is 1 wherever $\mathrm{SNR}_t \le \gamma$ and $\gamma/\mathrm{SNR}_t$ near $t = 0$. Nothing
# else changes: the same network, target and sampler. They report convergence several times
# faster; a short training budget is where that matters, so the `book` profile trains its DDPM with
# $\gamma = 5$ (`PROFILE.ddpm.diffusion.min_snr_gamma`; `None` means $L_\text{simple}$). On this
# book's budget (4 epochs on two CPU cores, everything else equal) it lowered the classifier-FID of
# 256 DDIM-50 samples from 3.97 to 2.83 and raised their precision from 0.691 to 0.707
# (`benchmarks/README.md` has the table). $L_\gamma$ is not comparable with $L_\text{simple}$: the
# clean steps count less, so the `book` profile's loss curves below sit lower than an
# $L_\text{simple}$ run's would.

# %%
GAMMA = PROFILE.ddpm.diffusion.min_snr_gamma or 5.0  # the profile's γ (smoke and full train on L_simple)


def min_snr_inline(sched: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """w_t = min(SNR_t, γ) / SNR_t for timesteps t: (B,)."""
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

all_t = torch.arange(T)
ab = schedule.alphas_cumprod.double()
snr = (ab / (1 - ab)).numpy()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].plot(all_t, snr, label=r"$L_\mathrm{simple}$: SNR$_t$")
axes[0].plot(all_t, snr.clip(max=GAMMA), label=rf"min-SNR-$\gamma$: min(SNR$_t$, {GAMMA:g})")
axes[0].set(yscale="log", xlabel="t", title=r"weight of the $x_0$ error $\|x_0 - \hat x_0\|^2$")
axes[1].plot(all_t, torch.ones(T), label=r"$L_\mathrm{simple}$: 1")
axes[1].plot(all_t, min_snr_weight(schedule, all_t, GAMMA), label=r"min-SNR-$\gamma$: $w_t$")
axes[1].set(yscale="log", xlabel="t", title=r"weight of the $\epsilon$ error $\|\epsilon - \hat\epsilon\|^2$")
for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
profile_gamma = PROFILE.ddpm.diffusion.min_snr_gamma
print(f"w_t < 1 for t < {int((min_snr_weight(schedule, all_t, GAMMA) < 1).sum())} of {T} steps; "
      f"this profile trains with {f'min-SNR-γ, γ = {profile_gamma:g}' if profile_gamma else 'L_simple'}")
#
# `get_ddpm` loads this profile's trained model from `checkpoints/<profile>/ddpm.pt`, or trains it
# with the package's training loop (AdamW, warm-up and cosine learning-rate decay, gradient clipping,
# an exponential moving average of the weights) and stores it. The `book` profile's checkpoint is
# committed with the repository: a 0.63 M-parameter UNet trained with min-SNR-5 for 4 epochs on all 60,000 images
# on two CPU cores (`python -m mnistdiff train all --profile book`; its sidecar records the recipe,
# the CPU and the minutes, printed below). The `smoke` profile trains a tiny model for seconds on
# a subset, enough to see the machinery work but not to draw digits; `full` is the reference
# recipe for a GPU (1.7 M parameters, 100 epochs).

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
# ## 3. The reverse process
#
# ### The posterior of one step
#
# Going backwards, $q(x_{t-1} \mid x_t)$ is intractable (it depends on the whole data
# distribution), but **conditioned on $x_0$** it is a Gaussian with closed-form parameters
# (Ho et al., eq. 6–7):
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big),
# \qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
# \qquad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .
# $$
#
# The mean is a blend of where we are ($x_t$) and where we are going ($x_0$).

# %%
def posterior_inline(sched: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
    """Mean and variance of q(x_{t−1} | x_t, x_0) (Ho eq. 6–7) at one timestep t (with ᾱ_{−1} = 1)."""
    beta, alpha, ab = (float(v[t].double()) for v in (sched.betas, sched.alphas, sched.alphas_cumprod))
    ab_prev = float(sched.alphas_cumprod[t - 1].double()) if t > 0 else 1.0
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * xt
    return mean, (1 - ab_prev) / (1 - ab) * beta


x0, xt, t_mid = test.images[:4], torch.randn(4, 1, 32, 32), T // 2
mean, var = posterior_inline(schedule, x0, xt, t_mid)
pkg_mean, pkg_var, _ = q_posterior(schedule, x0, xt, torch.full((4,), t_mid))
torch.testing.assert_close(mean, pkg_mean)
torch.testing.assert_close(torch.tensor(var), pkg_var[0, 0, 0, 0])
print(f"our posterior matches mnistdiff.ddpm.q_posterior (at t = {t_mid}: β̃_t = {var:.6f})")

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
# no noise at the last step (Algorithm 2). For $\sigma_t^2$, Ho et al. found $\beta_t$ and
# $\tilde\beta_t$ equally good; the package uses $\tilde\beta_t$ (chapter 3 shows why that choice
# makes DDPM a special case of DDIM). Let us check that eq. 11 and "posterior at $\hat x_0$" agree:

# %%
def mu_theta(sched: NoiseSchedule, xt: torch.Tensor, eps_hat: torch.Tensor, t: int) -> torch.Tensor:
    """Ho eq. 11: (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √α_t."""
    return (xt - sched.betas[t] / (1 - sched.alphas_cumprod[t]).sqrt() * eps_hat) / sched.alphas[t].sqrt()


xt = q_sample(schedule, test.images[:4].to(DEVICE), torch.full((4,), t_mid, device=DEVICE),
              torch.randn(4, 1, 32, 32, device=DEVICE))
t_batch = torch.full((4,), t_mid, device=DEVICE)
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
    """x_{t−1} = μ̃_t(x_t, clip(x̂_0)) + σ_t z with σ_t² = β̃_t, and no noise at t = 0."""
    eps_hat = model(xt, torch.full((xt.shape[0],), t, device=xt.device))
    ab = sched.alphas_cumprod[t]
    x0_hat = ((xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
    mean, var = posterior_inline(sched, x0_hat, xt, t)
    return mean + (math.sqrt(var) * z if t > 0 else 0)


z = torch.randn(xt.shape, device=DEVICE)
ours = reverse_step(model.unet, schedule.to(DEVICE), xt, t_mid, z)
theirs, _ = p_sample(model.unet, schedule.to(DEVICE), xt, t_batch, z)
torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
print("our reverse step matches mnistdiff.ddpm.p_sample")

# %% [markdown]
# ## 4. Sampling
#
# Algorithm 2 is that step in a loop: $x_T \sim \mathcal N(0, I)$, then $t = T-1, \dots, 0$. The
# package's `DiffusionModel.sample(mode="ddpm")` runs it (`mnistdiff.ddpm.p_sample_loop`) with one
# seeded random generator, so the same seed always gives the same digits:

# %%
start = time.perf_counter()
samples, frames = model.sample(PROFILE.num_samples, mode="ddpm", seed=SEED, device=DEVICE, return_intermediates=True)
seconds = time.perf_counter() - start
print(f"{PROFILE.num_samples} samples × {T} network calls in {seconds:.1f} s "
      f"({seconds / PROFILE.num_samples * 1e3:.0f} ms per sample on {DEVICE})")
show_grid(samples, nrow=8, title=f"DDPM samples ({PROFILE.name} profile, T = {T})")
plt.show()

# %% [markdown]
# ```{note}
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), the models are trained for seconds and every
# figure shows noise-like blobs instead of digits; the code paths are the same.
# ```
#
# ### Watching a digit appear
#
# `frames` holds $x_t$ every $T/10$ steps. Each row below is one sample (the first four), from
# pure noise on the left to the final image on the right: the coarse shape is decided early, the
# strokes sharpen last.

# %%
picks = pick_frames(frames)  # 11 frames evenly spaced from x_T to x_0
strip = frames_grid(frames, samples=4)  # (rows·34, columns·34) pixels: a row per sample, a column per pick
fig, ax = plt.subplots(figsize=(strip.shape[1] * 1.5 / 100, strip.shape[0] * 1.5 / 100 + 0.5))
ax.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
ax.set_xticks([34 * k + 18 for k in range(len(picks))], [f"t={frames[j][0]}" for j in picks], fontsize=7)
ax.set_yticks([])
ax.set_title("denoising: x_T (left) → x_0 (right)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The same trajectory as a player (the animation plays without a running kernel; with one, the
# slider steps through the frames):

# %%
denoising_player(frames, count=min(4, PROFILE.num_samples))

# %% [markdown]
# ## What we learned, and what comes next
#
# - The **forward process** $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$ is
#   fixed and has a closed form; the **cosine schedule** keeps information alive longer than the
#   linear one.
# - **Training** is regression: noise a digit with eq. 4 at a random $t$, predict the noise,
#   minimise $L_\text{simple}$.
# - The **reverse step** is the Gaussian posterior $q(x_{t-1} \mid x_t, x_0)$ evaluated at the
#   network's guess $\hat x_0$ (clipped to $[-1, 1]$) — equivalently Ho et al.'s eq. 11.
# - **Sampling** takes $T$ network calls per image. That is the price we pay next:
#   [chapter 3](03_ddim.ipynb) samples with the *same* trained network in 20 or 50 steps instead of
#   1000, with DDIM.
