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
# - choose the sampling timesteps, and say why the list must start at $t = T-1$;
# - explain why the first step is numerically delicate and how clipping $\hat x_0$ fixes it;
# - show that DDIM with every step and $\eta = 1$ *is* DDPM;
# - trade sampling time against sample quality with the number of steps and $\eta$.
#
# **Run time.** a few minutes on two CPU cores with the committed `book` checkpoint; measured
# times in the [introduction](../intro.md).
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.

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
    x, _ = preview.sample(16, mode="ddim", ddim_steps=PROFILE.ddim_steps, eta=eta, seed=SEED, device=DEVICE)
    show_grid(x, nrow=16, ax=ax, title=f"DDIM-{PROFILE.ddim_steps}, η = {eta:g}")
fig.tight_layout()
plt.show()

# %% [markdown]
# The trained DDPM of chapter 2 (loaded from `checkpoints/<profile>/ddpm.pt`, or trained now if
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
# \sigma_t(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\,\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t'}}} .
# $$
#
# $\eta = 0$ makes sampling **deterministic**: the noise $x_T$ alone decides the digit. After the
# last step, $t' = -1$ stands for the clean image, $\bar\alpha_{-1} = 1$.
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
    """Song et al. eq. 12 with σ from eq. 16, from timestep t to t_prev < t (−1: the clean image)."""
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
print("our DDIM step matches mnistdiff.ddim.ddim_step (η = 0, 0.5, 1, and the last step to t′ = −1)")

# %% [markdown]
# ## 2. Which timesteps? Start at $t = T-1$
#
# With $S$ sampling steps we visit a decreasing subsequence $\tau_S > \dots > \tau_1$ of the $T$
# training timesteps. The package spaces them evenly **from $T-1$ down to $0$**
# (`mnistdiff.ddim.ddim_timesteps`), and after $\tau_1 = 0$ takes the final step to the clean
# image. The original DDIM code used a different, "leading" spacing, $\tau = 0, c, 2c, \dots$ with
# $c = T/S$, which *never visits the last timesteps*: it starts at $T - c$. Lin et al.
# ([arXiv:2305.08891](https://arxiv.org/abs/2305.08891), §3.3 and Table 2) show that this is a flaw.
# Sampling starts from pure noise, $x_T \sim \mathcal N(0, I)$, but at $t = T - c$ the network was trained
# on inputs that still contain $\sqrt{\bar\alpha_{T-c}}\,x_0$ — a visible trace of a digit. Their fix
# is to let the list *trail* from the last timestep, $\tau_S = T-1$, where the training inputs are
# (almost) pure noise, like $x_T$. The package's evenly spaced list — Lin et al.'s "linspace"
# spacing, which they find as good as their "trailing" one — has that property. For the paper's
# $T = 1000$:

# %%
# NBVAL_CHECK_OUTPUT
cos1000 = NoiseSchedule.make("cosine", 1000)
for S in (5, 10, 20):
    print(f"S = {S:>2}: {ddim_timesteps(1000, S)}")
leading = list(range(0, 1000, 1000 // 10))[::-1]
print(f"leading spacing, S = 10: {leading}")
for name, t0 in (("this list", 999), ("leading", leading[0])):
    ab = cos1000.alphas_cumprod[t0].item()
    print(f"{name:>10} starts at t = {t0}: ᾱ = {ab:.3e}, the training inputs there hold {ab**0.5:.1%} of x_0")

# %% [markdown]
# With the leading list, the first step asks the network to find the 15 % of a digit that is in
# every training input at $t = 900$ — but $x_T$ contains none.
#
# ## 3. The delicate first step
#
# Starting at $t = T - 1$ has a price. The cosine schedule drives $\bar\alpha$ to (almost) zero there —
# that was the point — and the first update divides by $\sqrt{\bar\alpha_{T-1}}$:
#
# $$
# \hat x_0 = \frac{x_T - \sqrt{1-\bar\alpha_{T-1}}\,\hat\epsilon}{\sqrt{\bar\alpha_{T-1}}}
# \quad\text{multiplies the network's error } (x_T - \hat\epsilon)\text{ by } 1/\sqrt{\bar\alpha_{T-1}} .
# $$

# %%
# NBVAL_CHECK_OUTPUT
for T_show in (100, 1000):
    ab = NoiseSchedule.make("cosine", T_show).alphas_cumprod[-1].double().item()
    root = torch.tensor(1 - ab, dtype=torch.float32).sqrt().item()
    print(f"cosine schedule, T = {T_show:>4}: ᾱ_(T−1) = {ab:.3e},  1/√ᾱ = {ab ** -0.5:>6,.0f},  "
          f"√(1 − ᾱ) in float32 = {root:.9f}")

# %% [markdown]
# (The schedule clips the last $\beta$ at $0.999$, so $\bar\alpha_{T-1} = 0.001\,\bar\alpha_{T-2}$;
# the `smoke` profile uses $T = 100$; the paper, the `book` and the `full` profiles $T = 1000$.) With $T = 1000$,
# $\sqrt{1 - \bar\alpha_{T-1}}$ even rounds to exactly 1 in float32, so the numerator
# $x_T - \sqrt{1-\bar\alpha}\,\hat\epsilon$ is nothing but the network's error, and the tiny
# $\sqrt{\bar\alpha}$ term that float32 drops is why the package does this arithmetic in float64.
# Let us take one first step with this profile's trained model and measure:

# %%
steps = ddim_timesteps(T, PROFILE.ddim_steps)
t0, t1 = steps[0], steps[1]
x_T = torch.randn((N, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
with torch.no_grad():
    eps_hat = model.unet(x_T, torch.full((N,), t0, device=DEVICE)).float()
ab0 = schedule.alphas_cumprod[t0].to(DEVICE)
ab1 = float(schedule.alphas_cumprod[t1].double())

x0_naive = (x_T - (1 - ab0).sqrt() * eps_hat) / ab0.sqrt()  # float32, unclipped
x1_naive = ab1**0.5 * x0_naive + (1 - ab1) ** 0.5 * eps_hat  # eq. 12 with η = 0, as written
x1_safe, x0_safe = ddim_step(schedule.to(DEVICE), x_T, eps_hat, t0, t1)  # clipped, ε̂ recomputed, float64

print(f"network error |x_T − ε̂|: mean {(x_T - eps_hat).abs().mean().item():.3f}")
print(f"unclipped x̂_0: max |x̂_0| = {x0_naive.abs().max().item():,.0f}   (the data lie in [−1, 1])")
print(f"a noisy image at t = {t1} has a standard deviation of about 1; after the first step:")
print(f"   naive step (as written):         std(x_{t1}) = {x1_naive.std().item():8.2f}")
print(f"   package (clip x̂_0, recompute ε̂): std(x_{t1}) = {x1_safe.std().item():8.2f}")

# %% [markdown]
# The naive step multiplies the network's small error into a huge $\hat x_0$ and then re-noises
# *that* to level $t_1$: $x_{t_1}$ is far off the scale the network was trained on (a standard
# deviation near 1). Clipping alone is not enough either: with the clipped $\hat x_0$ but the raw
# $\hat\epsilon$, the two terms of eq. 12 no longer add up to something consistent with $x_t$.
# Recomputing $\hat\epsilon$ from the clipped $\hat x_0$ keeps the step on the line between
# $\hat x_0$ and $x_t$ (and at $t = T-1$ it gives $\hat\epsilon \approx x_T$, which is right: $x_T$
# *is* noise). Finishing both from their $x_{t_1}$ with the package's sampler:

# %%
with torch.no_grad():
    rest = dict(timesteps=steps[1:], device=DEVICE)
    from_naive = ddim_sample_loop(model.unet, schedule, x_T.shape, x_T=x1_naive, **rest).images.clamp(-1, 1).cpu()
    from_safe = ddim_sample_loop(model.unet, schedule, x_T.shape, x_T=x1_safe, **rest).images.clamp(-1, 1).cpu()
fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 1.2 * ((N + 7) // 8)))
show_grid(from_naive, nrow=8, title="naive first step, then the package's steps", ax=axes[0])
show_grid(from_safe, nrow=8, title="the package's steps throughout", ax=axes[1])
fig.tight_layout()
plt.show()
print(f"mean |difference| between the two final samples: {(from_naive - from_safe).abs().mean().item():.3f} per pixel")

# %% [markdown]
# The later steps clip, so they may pull a derailed trajectory partway back; how far depends on
# what the network does with inputs tens or hundreds of times larger than any it was trained on,
# which nothing controls. The package's first step never leaves the training range.
#
# ```{note}
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), the models are trained for seconds and every
# figure shows noise-like blobs instead of digits; the code paths are the same.
# ```
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


ddpm, ddpm_sec = timed_sample(N, mode="ddpm")
ddim, ddim_sec = timed_sample(N, mode="ddim", ddim_steps=PROFILE.ddim_steps, eta=0.0)
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
# \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\big(x_t - \sqrt{\bar\alpha_t}\,\hat x_0\big)
# = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
# = \tilde\mu_t(x_t, \hat x_0),
# $$
#
# DDPM's posterior mean (chapter 2). Both samplers draw $x_T$ and then one $z$ per step from the
# same generator, so with the same seed they should produce the same images, up to rounding
# (DDPM does its arithmetic in float32, DDIM in float64; over many steps the tiny differences can
# grow a little, hence a tolerance well below what an eye could see):

# %%
N_CHECK = min(N, 4)  # T network calls per image: a few images prove the point
# float32 network (fast="off"): under bf16 the two samplers' tiny rounding differences would grow over T steps
ddim_all, _ = timed_sample(N_CHECK, mode="ddim", ddim_steps=T, eta=1.0, fast="off")
ddpm_few, _ = timed_sample(N_CHECK, mode="ddpm", fast="off")
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
    x, sec = timed_sample(N_EVAL, mode="ddim", ddim_steps=S, eta=0.0)
    results.append({"sampler": f"DDIM {S}", "steps": S, "ms/sample": sec * 1e3, **quality(x)})
x, sec = (ddpm, ddpm_sec) if N_EVAL == N else timed_sample(N_EVAL, mode="ddpm")
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
    x, _ = timed_sample(N, mode="ddim", ddim_steps=PROFILE.ddim_steps, eta=eta)
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
#   $1/\sqrt{\bar\alpha_{T-1}} \approx 2\cdot 10^4$ magnifies every error): replacing that $\hat x_0$ by 0, or
#   starting at $t = 980$ where the division is harmless ("leading" spacing), lowers the grain only
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
# `python -m mnistdiff sample`); `ddim_sample_loop` keeps the paper's $\eta = 0$. The principled
# fix on the training side is a better-posed target, such as $v$-prediction with a zero-SNR terminal step
# (Lin et al., [arXiv:2305.08891](https://arxiv.org/abs/2305.08891)), or simply more training.

# %% [markdown]
# ## What we learned, and what comes next
#
# - **DDIM** reuses the DDPM network unchanged: predict $\hat x_0$, then re-noise it to an earlier
#   timestep with the predicted noise (eq. 12); $\eta$ sets how much fresh noise is mixed in (eq. 16).
# - The timestep list must **start at $T - 1$**, where training inputs are pure noise like $x_T$;
#   there $\bar\alpha \approx 2\cdot10^{-9}$ (cosine, $T = 1000$), so $\hat x_0$ must be **clipped** and
#   $\hat\epsilon$ **recomputed** from it, or the first step throws the sample off the data scale.
# - With every step and $\eta = 1$, DDIM **is** DDPM; with 20–50 steps it is nearly as good at a small
#   fraction of the cost.
# - $\eta = 0$ is deterministic and carries every error of the network to the end; on a briefly trained
#   network $\eta = 1$ corrects them and is the better default.
#
# Every network call still processes a full 32×32 image. [Chapter 4](04_vae.ipynb) trains a VAE
# that compresses digits to 2×4×4 latents, and [chapter 5](05_latent_diffusion.ipynb) runs this same
# diffusion machinery in that small latent space.
