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
# # 8. Flow matching: the same UNet on a straight path
#
# Since 2023 most image generators are trained by **flow matching** (Lipman et al. 2023,
# [arXiv:2210.02747](https://arxiv.org/abs/2210.02747)) or, what is the same thing on the straight path,
# **rectified flow** (Liu, Gong & Liu 2023, [arXiv:2209.03003](https://arxiv.org/abs/2209.03003)); Stable
# Diffusion 3 is one. The recipe fits in a line: draw a digit $x_0$, a noise $\epsilon$ and a time $t \in [0, 1]$,
# put the point $x_t = (1-t)\,x_0 + t\,\epsilon$ on the straight line between them, and train a network to
# predict the line's direction $\epsilon - x_0$. To sample, start from noise at $t = 1$ and follow the network's
# directions back to $t = 0$ with an ODE solver.
#
# Nothing in chapters 2 and 3 is thrown away. This chapter shows that a DDPM and a flow are two **Gaussian
# paths** from data to noise, that one network can be read as predicting any of five things (noise, clean image,
# score, $v$, velocity), that DDIM *is* Euler's method on the probability-flow ODE, and that flow-matching Euler
# *is* DDIM on the straight path. The stochastic samplers (DDPM's, DDIM with $\eta > 0$, a Langevin corrector)
# are the same ODE with noise added and removed at an equal rate.
#
# **Learning goals.** After this chapter you can
#
# - write the straight path, its velocity, and the conditional flow-matching loss (Lipman et al., eq. 9), and
#   derive why regressing on the *conditional* velocity learns the *marginal* one (their Theorem 2);
# - write Euler's and Heun's solvers for the flow ODE, and measure their orders of convergence;
# - convert a prediction between $\epsilon$, $x_0$, the score, $v$ and the velocity on any Gaussian path;
# - show that DDIM with $\eta = 0$ and flow-matching Euler are one update, and why;
# - write the reverse SDE of a flow, its noise scale, and a Langevin corrector, as one family with the ODE.
#
# **Run time.** a few minutes on two CPU cores with the committed `book` checkpoints. Symbols follow the
# course's [notation](../notation.md); this chapter's time is **continuous**, $t \in [0, 1]$ with $t = 0$ the data
# and $t = 1$ the noise (the DDPM's direction), and the network is shown $1000\,t$.
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), both networks are trained for seconds and every figure of
# MNIST samples shows noise-like blobs instead of digits; the code paths are the same. The sentences that quote
# a measured number are written by the cells from what they computed. The derivations, the toy problems and the
# checks against the package do not depend on the profile.
# :::

# %%
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

from mnistdiff import (
    PathPoint,
    convert,
    ddim_step,
    default_device,
    euler_step,
    flow_matching_loss,
    flow_sample_loop,
    get_ddpm,
    get_flow,
    get_profile,
    interpolate,
    load_mnist,
    predict_x0_from_eps,
    q_sample,
    sample_time,
    show_grid,
    straight_path,
    v_target,
    velocity,
    velocity_target,
)

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# **Where this chapter ends.** The flow-matching model of this chapter — the pixel DDPM's UNet, trained for the
# same epochs on the flow-matching loss — sampled with Heun's solver in 8 steps, beside the
# DDPM of chapter 2 with DDIM in `PROFILE.ddim_steps` steps:

# %%
flow = get_flow(device=DEVICE, progress=False)
ddpm = get_ddpm(device=DEVICE, progress=False)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
x_flow, _ = flow.sample(16, sampler="heun", steps=8, seed=SEED, device=DEVICE)
x_ddpm, _ = ddpm.sample(16, sampler="ddim", steps=PROFILE.ddim_steps, seed=SEED, device=DEVICE)
show_grid(x_flow, nrow=16, ax=axes[0], title=f"flow matching, Heun, 8 steps ({flow.nfe('heun', 8)} network calls)")
show_grid(x_ddpm, nrow=16, ax=axes[1], title=f"DDPM, DDIM-{PROFILE.ddim_steps}, η = 1")
fig.tight_layout()
plt.show()
budget = {name: (m.config.train.epochs, m.config.train.batch_size, m.meta.get("seconds", float("nan")) / 60,
                 m.meta.get("metrics", {}).get("cpu_name", "?")) for name, m in (("flow", flow), ("DDPM", ddpm))}
for name, (epochs, batch, minutes, cpu) in budget.items():
    print(f"the {name}: {epochs} epochs at batch {batch}, {minutes:.1f} min of training (last on {cpu})")
print(f"the flow's training times t: {flow.config.time_sampling.replace('_', '-')}")
print("(minutes are wall-clock, summed over the run's sessions on 2-core CPUs, some shared with other jobs: the "
      "budget the two share is epochs × batch, not minutes)")

# %% [markdown]
# ## 1. The straight path
#
# A DDPM's forward process puts noise on a digit along the curve
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ (chapter 2). Both are cases of a
# **Gaussian path**
#
# $$
# x_t = a_t\,x_0 + b_t\,\epsilon, \qquad \epsilon \sim \mathcal N(0, I), \qquad t \in [0, 1],
# $$
#
# with a signal coefficient $a_t$ falling from 1 to 0 and a noise coefficient $b_t$ rising from 0 to 1. (The
# course keeps $\alpha$ and $\sigma$ for the DDPM's schedule and sampler, so this chapter writes $a$ and $b$.)
# The DDPM's cosine path has $a_t = \sqrt{\bar\alpha_t}$, $b_t = \sqrt{1 - \bar\alpha_t}$, so $a_t^2 + b_t^2 = 1$:
# it preserves the variance. The **straight path** of flow matching has
#
# $$
# a_t = 1 - t, \quad b_t = t: \qquad x_t = (1 - t)\,x_0 + t\,\epsilon,
# $$
#
# a straight line from the digit to its noise, travelled at the constant **velocity**
#
# $$
# u_t(x_t \mid x_0, \epsilon) = \frac{\mathrm d x_t}{\mathrm d t} = \epsilon - x_0 .
# $$
#
# In code, with one time per image:


# %%
def interpolate_inline(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x_0 + t·ε for images (B, 1, 32, 32) and times t (B,)."""
    t = t.view(-1, 1, 1, 1)
    return (1 - t) * x0 + t * eps


digits = load_mnist("test").images[:8].to(DEVICE)
gen = torch.Generator(device=DEVICE).manual_seed(SEED)
eps = torch.randn(digits.shape, generator=gen, device=DEVICE)
t = torch.linspace(0, 1, 8, device=DEVICE)
torch.testing.assert_close(interpolate_inline(digits, eps, t), interpolate(digits, eps, t))
torch.testing.assert_close(velocity_target(digits, eps), eps - digits)
print("interpolate_inline equals mnistdiff.interpolate")

# %% [markdown]
# One digit along both paths at the same eight times (the DDPM's $t$ is its timestep divided by $T$), and the
# coefficients of each. The straight path keeps more of the digit early and less late; its variance is not
# preserved: for unit-variance data, $x_t$'s variance $(1-t)^2 + t^2$ dips to $\tfrac12$ at $t = \tfrac12$.

# %%
T = ddpm.schedule.num_timesteps
abar = ddpm.schedule.alphas_cumprod.double().cpu()
taus = torch.linspace(0, 1, 8)
index = (taus * T).round().long().clamp(1, T) - 1  # the 0-based index of timestep round(t·T)
one = digits[:1].expand(8, -1, -1, -1)
noise_one = eps[:1].expand(8, -1, -1, -1)
straight_row = interpolate(one, noise_one, taus.to(DEVICE))
ddpm_row = q_sample(ddpm.schedule.to(DEVICE), one, index.to(DEVICE), noise_one)
ddpm_row[0] = one[0]  # t = 0 is the data itself
fig, axes = plt.subplots(1, 3, figsize=(12, 2.6), gridspec_kw={"width_ratios": [2.2, 2.2, 1.2]})
show_grid(straight_row, nrow=8, ax=axes[0], title="straight path, t = 0 … 1")
show_grid(ddpm_row, nrow=8, ax=axes[1], title="DDPM's cosine path, t = 0 … 1")
grid = torch.linspace(0, 1, 201)
axes[2].plot(grid, 1 - grid, "C0", label="straight: $a_t = 1-t$")
axes[2].plot(grid, grid, "C0--", label="straight: $b_t = t$")
steps_t = torch.arange(1, T + 1) / T
axes[2].plot(steps_t, abar.sqrt(), "C1", label=r"cosine: $\sqrt{\bar\alpha_t}$")
axes[2].plot(steps_t, (1 - abar).sqrt(), "C1--", label=r"cosine: $\sqrt{1-\bar\alpha_t}$")
axes[2].set_xlabel("t")
axes[2].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The loss: regress on the line's direction, learn the field
#
# Sampling needs a **velocity field** $u_t(x)$ that carries the noise distribution at $t = 1$ to the data at
# $t = 0$: integrating $\mathrm dx/\mathrm dt = u_t(x)$ backwards from $x_1 \sim \mathcal N(0, I)$ should give a
# digit. The straight lines define one. Many lines pass through a point $x$ at time $t$ (from different digits,
# with different noises); the field there is their **average direction**,
#
# $$
# u_t(x) = \mathbb E\big[\epsilon - x_0 \,\big|\, x_t = x\big],
# $$
#
# and moving every point by it moves the whole distribution $p_t$ of $x_t$ exactly as the lines move their
# points (it satisfies the continuity equation; Lipman et al., Theorem 1). Nobody can compute the
# average — it needs every digit that could have led to $x$. Flow matching's observation is that it need not be
# computed. The **conditional flow-matching loss** regresses on each line's own direction,
#
# $$
# \mathcal L_{\text{CFM}}(\theta) = \mathbb E_{t, x_0, \epsilon}\,\big\lVert v_\theta(x_t, t) - (\epsilon - x_0)\big\rVert^2,
# $$
#
# and differs from the regression on the unknown average, $\mathcal L_{\text{FM}}(\theta) = \mathbb E_{t, x_t}
# \lVert v_\theta(x_t, t) - u_t(x_t)\rVert^2$, by a constant that does not depend on $\theta$: expand both squares;
# the $\lVert v_\theta\rVert^2$ terms agree, and the cross terms agree because
# $\mathbb E[\langle v_\theta(x_t, t), \epsilon - x_0\rangle] = \mathbb E[\langle v_\theta(x_t, t),
# \mathbb E[\epsilon - x_0 \mid x_t]\rangle] = \mathbb E[\langle v_\theta(x_t, t), u_t(x_t)\rangle]$. Same
# gradients, same minimiser: the network learns the average. (This is the argument of chapter 2's
# denoising score matching, for a different target.) Exercise 8.1 asks for the constant.
#
# **A toy where the average is known.** One pixel, data from two Gaussians at $\pm 1$ with spread $s_0 = 0.2$. Given
# which Gaussian $k$ a point came from, $(x_0, \epsilon, x_t)$ are jointly Gaussian, and the regression of
# $x_0$ and $\epsilon$ on $x_t$ is linear; weighting the two by how likely each Gaussian is at $x$ gives the exact
# field $u_t(x)$:

# %%
TOY_MEANS, TOY_SPREAD = torch.tensor([-1.0, 1.0], dtype=torch.float64), 0.2


def toy_data(n: int, gen: torch.Generator) -> torch.Tensor:
    """n points from ½·N(−1, s_0²) + ½·N(1, s_0²)."""
    k = torch.randint(0, 2, (n,), generator=gen)
    return TOY_MEANS[k] + TOY_SPREAD * torch.randn(n, generator=gen, dtype=torch.float64)


def toy_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity u_t(x) = E[ε − x_0 | x_t = x] of the two-Gaussian toy on the straight path."""
    x, t = x[..., None], t[..., None]
    var = (1 - t) ** 2 * TOY_SPREAD**2 + t**2  # Var(x_t | k)
    centred = x - (1 - t) * TOY_MEANS  # x_t − E[x_t | k]
    resp = torch.softmax(-0.5 * centred**2 / var, dim=-1)  # p(k | x_t = x): equal variances, equal weights
    e_x0 = TOY_MEANS + (1 - t) * TOY_SPREAD**2 / var * centred
    e_eps = t / var * centred
    return (resp * (e_eps - e_x0)).sum(-1)


gen = torch.Generator().manual_seed(SEED)
n_toy = 400_000
x0_toy, eps_toy = toy_data(n_toy, gen), torch.randn(n_toy, generator=gen, dtype=torch.float64)
t_toy = torch.rand(n_toy, generator=gen, dtype=torch.float64)
xt_toy = (1 - t_toy) * x0_toy + t_toy * eps_toy
features = torch.stack([torch.ones_like(xt_toy), xt_toy, t_toy, xt_toy * t_toy, xt_toy**3, xt_toy**3 * t_toy], 1)
theta_cfm = torch.linalg.lstsq(features, (eps_toy - x0_toy)[:, None]).solution.squeeze(1)
theta_fm = torch.linalg.lstsq(features, toy_field(xt_toy, t_toy)[:, None]).solution.squeeze(1)
print("least-squares fit of v_θ(x, t) = θ·[1, x, t, xt, x³, x³t]")
print("  on the lines' own directions (CFM):", [f"{v:+.3f}" for v in theta_cfm.tolist()])
print("  on the exact average field (FM):   ", [f"{v:+.3f}" for v in theta_fm.tolist()])
gap = float((theta_cfm - theta_fm).abs().max())
assert gap < 0.05, gap
print(f"largest difference {gap:.3f}: the same minimiser, up to the Monte-Carlo error of {n_toy:,} samples")

# %% [markdown]
# The lines cross; the field's trajectories cannot (an ODE's solutions never meet). Below, left: conditional
# lines from noise to data, which cross all over; right: the ODE $\mathrm dx/\mathrm dt = u_t(x)$ integrated
# backwards from noise with the exact field, which sorts the noise into the two modes without crossing —
# the curved paths a trained network has to follow. (Rectified flow's "reflow" retrains on these pairs to
# straighten them; chapter 9.)

# %%
gen = torch.Generator().manual_seed(SEED + 1)
starts = torch.randn(40, generator=gen, dtype=torch.float64)
ends = toy_data(40, gen)
steps_toy = 200
ts = torch.linspace(1, 0, steps_toy + 1, dtype=torch.float64)
paths = [starts]
for t_now, t_next in zip(ts, ts[1:]):
    paths.append(paths[-1] + (t_next - t_now) * toy_field(paths[-1], t_now.expand(40)))
paths = torch.stack(paths)
fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for i in range(40):
    axes[0].plot([1, 0], [starts[i], ends[i]], lw=0.7, color=f"C{int(ends[i] > 0)}")
    axes[1].plot(ts, paths[:, i], lw=0.7, color=f"C{int(paths[-1, i] > 0)}")
axes[0].set_title("conditional paths (they cross)")
axes[1].set_title("the marginal field's ODE (it never crosses)")
for ax in axes:
    ax.set_xlabel("t")
    ax.invert_xaxis()
axes[0].set_ylabel("x")
fig.tight_layout()
plt.show()

# %% [markdown]
# On MNIST the loss is three lines. The network is the chapter-1 UNet, shown $1000\,t$ where a DDPM is
# shown its integer timestep, so its sinusoidal time embedding sees the same range:


# %%
def flow_loss_inline(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching (Lipman et al. eq. 9): mean over pixels of (v_θ(x_t, t) − (ε − x_0))²."""
    x_t = interpolate_inline(x0, eps, t)
    return ((model(x_t, 1000 * t) - (eps - x0)) ** 2).mean()


batch = load_mnist("train").images[:64].to(DEVICE)
gen = torch.Generator(device=DEVICE).manual_seed(SEED)
t_batch = sample_time(64, "uniform", gen, DEVICE)
eps_batch = torch.randn(batch.shape, generator=gen, device=DEVICE)
with torch.no_grad():
    ours = flow_loss_inline(flow.unet, batch, t_batch, eps_batch)
    package = flow_matching_loss(flow.unet, batch, t_batch, eps_batch)
torch.testing.assert_close(ours, package)
print(f"flow-matching loss of the trained model on one batch: {float(ours):.4f} (inline = package)")

# %% [markdown]
# The book's model was trained on it with `python -m mnistdiff train flow --profile book`: the DDPM's UNet,
# epochs, batch size, learning-rate schedule and EMA, so the two differ in path and target, and in one choice the
# profile makes for the flow: its training times are not uniform but logit-normal, $t = \mathrm{sigmoid}(n)$ with
# $n \sim \mathcal N(0, 1)$ (Esser et al. 2024; exercise 8.4 writes that sampler), which spends more of the
# training where the velocity is hardest to guess. On the book's budget the twin trained that way drew digits
# nearer the real ones than a uniform-time twin, in both feature spaces (`benchmarks/README.md`, issue 23).
#
# ## 3. Sampling: Euler and Heun
#
# Sampling integrates $\mathrm dx/\mathrm dt = v_\theta(x, t)$ from $x_1 \sim \mathcal N(0, I)$ at $t = 1$ down to
# $t = 0$, at times $1 = t_0 > t_1 > \dots > t_N = 0$ (evenly spaced here). **Euler's method** holds the velocity
# fixed over a step, $x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\,v_\theta(x_{t_i}, t_i)$: one network call per step,
# with an error that halves when the steps do (first order). **Heun's method** (Karras et al. 2022, Algorithm 1)
# takes the Euler step as a prediction, evaluates the velocity where it lands, and steps with the average of the
# two — the trapezoid rule: two calls per step, an error that quarters when the steps halve (second order). Like
# EDM, the package takes a plain Euler step at the end, to $t = 0$, so $N$ steps cost $2N - 1$ calls; the end of
# this section measures why the velocity must not be asked for at $t = 0$.


# %%
@torch.no_grad()
def euler_inline(model, x1: torch.Tensor, steps: int) -> torch.Tensor:
    x = x1
    for i in range(steps):
        t_now, t_next = 1 - i / steps, 1 - (i + 1) / steps
        v = model(x, torch.full((x.shape[0],), 1000 * t_now, device=x.device))
        x = x + (t_next - t_now) * v
    return x


@torch.no_grad()
def heun_inline(model, x1: torch.Tensor, steps: int) -> torch.Tensor:
    x = x1
    for i in range(steps):
        t_now, t_next = 1 - i / steps, 1 - (i + 1) / steps
        v = model(x, torch.full((x.shape[0],), 1000 * t_now, device=x.device))
        x_euler = x + (t_next - t_now) * v
        if t_next == 0:  # the last step: Euler's (the field is singular at t = 0, as measured below)
            x = x_euler
        else:
            v_next = model(x_euler, torch.full((x.shape[0],), 1000 * t_next, device=x.device))
            x = x + (t_next - t_now) * (v + v_next) / 2
    return x


x1 = torch.randn((8, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
for name, inline in (("euler", euler_inline), ("heun", heun_inline)):
    package_x, _ = flow_sample_loop(flow.unet, x1.shape, steps=6, solver=name, x_T=x1, clip_range=None, device=DEVICE)
    torch.testing.assert_close(inline(flow.unet, x1, 6), package_x, rtol=1e-4, atol=1e-4)
print("euler_inline and heun_inline equal mnistdiff.flow_sample_loop")

# %% [markdown]
# On a problem with a known answer the orders show. One pixel with data $\mathcal N(\mu, s_0^2)$: every
# distribution on the way is Gaussian, the exact flow maps the noise $x_1$ to $\mu + s_0\,x_1$, and the field is
# the linear regression of $\epsilon - x_0$ on $x_t$. The error of each solver against the exact endpoint, by
# network calls:

# %%
MU, S0 = 0.7, 0.3


def gauss_field(x: torch.Tensor, t_scaled: torch.Tensor) -> torch.Tensor:
    """The exact u_t(x) for data N(MU, S0²), called like a network (with 1000·t)."""
    t = (t_scaled / 1000).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    var = (1 - t) ** 2 * S0**2 + t**2
    centred = x - (1 - t) * MU
    return t / var * centred - (MU + (1 - t) * S0**2 / var * centred)


x1_toy = torch.randn(4000, 1, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
exact = MU + S0 * x1_toy
rows = []
for steps in (2, 4, 8, 16, 32):
    e = float((euler_inline(gauss_field, x1_toy, steps) - exact).abs().max())
    h = float((heun_inline(gauss_field, x1_toy, steps) - exact).abs().max())
    rows.append((steps, e, 2 * steps - 1, h))
lines = ["| steps | Euler: calls | Euler: max error | Heun: calls | Heun: max error |", "|---|---|---|---|---|"]
lines += [f"| {s} | {s} | {e:.2e} | {c} | {h:.2e} |" for s, e, c, h in rows]
euler_ratio = rows[-2][1] / rows[-1][1]
heun_ratio = rows[-2][3] / rows[-1][3]
Markdown("\n".join(lines) + f"\n\nFrom 16 to 32 steps Euler's error falls {euler_ratio:.2f}× and Heun's "
         f"{heun_ratio:.2f}×: first and second order. At about equal network calls (Euler-{rows[3][0]}, {rows[3][0]} "
         f"calls, against Heun-{rows[2][0]}, {rows[2][2]}) Heun's error is {rows[3][1] / rows[2][3]:.1f}× smaller.")

# %% [markdown]
# The trained model, Euler and Heun at a few step counts from the same noise:

# %%
x1 = torch.randn((16, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
settings = [("euler", 4), ("euler", 16), ("heun", 4), ("heun", 8)]
fig, axes = plt.subplots(len(settings), 1, figsize=(8, 1.3 * len(settings)))
for ax, (solver, steps) in zip(axes, settings):
    images, _ = flow_sample_loop(flow.unet, x1.shape, steps=steps, solver=solver, x_T=x1, device=DEVICE)
    calls = steps if solver == "euler" else 2 * steps - 1
    show_grid(images, nrow=16, ax=ax, title=f"{solver}, {steps} steps ({calls} network calls)")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Why the last step is Euler's.** On the toy the field is smooth down to $t = 0$, and a correction there would
# help. On data it is not. At $t = 0$ the network sees a clean digit and no noise to find, so the best it can say
# is the mean of $\epsilon - x_0$ given $x_0$, which is $-x_0$, and its loss there stays at $\mathrm{Var}\,\epsilon = 1$;
# just above $t = 0$ the noise is small but visible, and a point off the digits must move at about $(x - x_0)/t$.
# The field jumps at $t = 0$, and a correction that asks for it there is pulled towards $-x$. The cell measures the
# loss at a few times, then samples Heun in 4 steps both ways from the same noise:

# %%
test_digits = load_mnist("test").images[:256].to(DEVICE)
noise_fm = torch.randn(test_digits.shape, generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
with torch.no_grad():
    losses = {t: float(flow_matching_loss(flow.unet, test_digits, torch.full((256,), t, device=DEVICE), noise_fm))
              for t in (0.0, 0.001, 0.01, 0.1)}


@torch.no_grad()
def heun_corrected_at_zero(model, x1: torch.Tensor, steps: int) -> torch.Tensor:
    """Heun with the trapezoid correction on the last step too (2·steps calls)."""
    x = x1
    for i in range(steps):
        t_now, t_next = 1 - i / steps, 1 - (i + 1) / steps
        v = model(x, torch.full((x.shape[0],), 1000 * t_now, device=x.device))
        x_euler = x + (t_next - t_now) * v
        x = x + (t_next - t_now) * (v + model(x_euler, torch.full((x.shape[0],), 1000 * t_next, device=x.device))) / 2
    return x


fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
for ax, (heun, title) in zip(axes, [(heun_inline, "Euler's last step (7 calls)"),
                                     (heun_corrected_at_zero, "corrected at t = 0 (8 calls)")]):
    show_grid(heun(flow.unet, x1, 4).clamp(-1, 1), nrow=16, ax=ax, title=f"Heun, 4 steps, {title}")
fig.tight_layout()
plt.show()
Markdown("The flow-matching loss of this chapter's model on 256 test digits: "
         + ", ".join(f"{loss:.3f} at t = {t:g}" for t, loss in losses.items())
         + ". The loss at t = 0 is the variance of ε that no network can remove; the drop just above it is the jump.")

# %% [markdown]
# ## 4. One path, five targets
#
# A network on a Gaussian path sees $x_t = a_t x_0 + b_t \epsilon$ and $t$; whatever it is trained to output,
# it is a guess of the pair $(x_0, \epsilon)$, which $x_t$ ties together. So any of five targets can be learnt,
# and converted into any other at the same $(x_t, t)$:
#
# | target | written with $x_0, \epsilon$ | $\hat x_0$ and $\hat\epsilon$ from a prediction $p$ | used by |
# |---|---|---|---|
# | noise $\epsilon$ | $\epsilon$ | $\hat x_0 = (x_t - b_t p)/a_t$ | Ho et al. (chapter 2) |
# | clean image $x_0$ | $x_0$ | $\hat\epsilon = (x_t - a_t p)/b_t$ | Ramesh et al.; the $\hat x_0$ of every sampler |
# | score $\nabla \ln p_t(x_t \mid x_0)$ | $-\epsilon / b_t$ | $\hat\epsilon = -b_t\,p$ | Song et al. 2021 (score SDEs) |
# | $v$ (Salimans & Ho) | $a_t \epsilon - b_t x_0$ | $\hat x_0 = (a_t x_t - b_t p)/(a_t^2 + b_t^2)$, $\hat\epsilon = (b_t x_t + a_t p)/(a_t^2 + b_t^2)$ | chapter 2's $v$-prediction |
# | velocity $\dot a_t x_0 + \dot b_t \epsilon$ | $\mathrm d x_t/\mathrm dt$ | $\hat x_0 = (\dot b_t x_t - b_t p)/\Delta$, $\hat\epsilon = (a_t p - \dot a_t x_t)/\Delta$, $\Delta = a_t \dot b_t - \dot a_t b_t$ | flow matching |
#
# The last two solve a 2×2 linear system (the target's equation and $x_t$'s). On the straight path, $\Delta = 1$
# and the velocity's row reads $\hat x_0 = x_t - t\,\hat u$, $\hat\epsilon = x_t + (1 - t)\,\hat u$; on a
# variance-preserving path $a_t^2 + b_t^2 = 1$ and $v$'s row is a rotation. `mnistdiff.convert(x, p, source,
# target, PathPoint(a, b, ȧ, ḃ))` implements the table. Checked on the trained networks, against the package's
# own DDPM formulas (chapter 2's `predict_x0_from_eps` and `v_target`) and the straight path's closed forms:

# %%
t_index = torch.full((8,), int(0.4 * T), device=DEVICE)
x0_true = digits
eps_true = torch.randn(x0_true.shape, generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
sched = ddpm.schedule.to(DEVICE)
x_t = q_sample(sched, x0_true, t_index, eps_true)
with torch.no_grad():
    eps_hat = ddpm.unet(x_t, t_index)
k = int(t_index[0])
a_k, b_k = float(abar[k].sqrt()), float((1 - abar[k]).sqrt())
# ȧ and ḃ in units of t = timestep/T, by central differences of the discrete schedule
da_k = float(abar[k + 1].sqrt() - abar[k - 1].sqrt()) * T / 2
db_k = float((1 - abar[k + 1]).sqrt() - (1 - abar[k - 1]).sqrt()) * T / 2
ddpm_point = PathPoint(a_k, b_k, da_k, db_k)
x0_hat = predict_x0_from_eps(sched, x_t, t_index, eps_hat)
torch.testing.assert_close(convert(x_t, eps_hat, "eps", "x0", ddpm_point), x0_hat, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(convert(x_t, eps_hat, "eps", "v", ddpm_point), v_target(sched, x0_hat, t_index, eps_hat),
                           rtol=1e-4, atol=1e-4)
for target in ("x0", "score", "v", "velocity"):  # every target, and back
    there = convert(x_t, eps_hat, "eps", target, ddpm_point)
    torch.testing.assert_close(convert(x_t, there, target, "eps", ddpm_point), eps_hat, rtol=1e-4, atol=1e-4)

t_flow = 0.4
x_lin = interpolate(x0_true, eps_true, torch.full((8,), t_flow, device=DEVICE))
with torch.no_grad():
    u_hat = velocity(flow.unet, x_lin, t_flow)
torch.testing.assert_close(convert(x_lin, u_hat, "velocity", "x0", straight_path(t_flow)), x_lin - t_flow * u_hat)
torch.testing.assert_close(convert(x_lin, u_hat, "velocity", "eps", straight_path(t_flow)),
                           x_lin + (1 - t_flow) * u_hat)
print("the table's conversions equal chapter 2's formulas on the DDPM and the closed forms on the flow")

# %% [markdown]
# **Any Gaussian path is a rescaled copy of any other.** Divide $x_t = a_t x_0 + b_t\epsilon$ by $a_t + b_t$: the
# result is $(1 - t')\,x_0 + t'\epsilon$ with $t' = b_t/(a_t + b_t)$, a point of the straight path (Kingma et al.
# 2021 make the general argument: only the signal-to-noise ratio $a_t^2/b_t^2$ matters). So the same noisy digit
# can be handed to both networks, each in its own coordinates — the DDPM at its timestep, the flow at $t'$ after
# rescaling — and each returns its guess of the clean digit:

# %%
t_prime = b_k / (a_k + b_k)
with torch.no_grad():
    u_prime = velocity(flow.unet, x_t / (a_k + b_k), t_prime)
x0_from_flow = convert(x_t / (a_k + b_k), u_prime, "velocity", "x0", straight_path(t_prime))
fig, axes = plt.subplots(4, 1, figsize=(6, 3.4))
for ax, imgs, title in zip(axes, (x0_true, x_t, x0_hat.clamp(-1, 1), x0_from_flow.clamp(-1, 1)),
                           ("the digits x_0", f"x_t at timestep {k + 1} of {T} (SNR = {a_k**2 / b_k**2:.2f})",
                            "the DDPM's x̂_0", f"the flow's x̂_0 (straight path, t' = {t_prime:.3f})")):
    show_grid(imgs, nrow=8, ax=ax, title=title)
fig.tight_layout()
plt.show()
err_ddpm = float((x0_hat - x0_true).abs().mean())
err_flow = float((x0_from_flow - x0_true).abs().mean())
between = float((x0_hat - x0_from_flow).abs().mean())
Markdown(f"Mean absolute error of $\\hat x_0$ per pixel: the DDPM's {err_ddpm:.3f}, the flow's {err_flow:.3f}; "
         f"the two guesses differ from each other by {between:.3f}. Two networks trained on different paths and "
         "targets answer the same question about the same noisy digit.")

# %% [markdown]
# ## 5. DDIM is Euler, and flow Euler is DDIM
#
# DDIM's deterministic step (chapter 3, $\eta = 0$) reads the network's guess $(\hat x_0, \hat\epsilon)$ at $t$ —
# whatever the network predicts, section 4 converts it — holds it fixed, and moves along the path to the next
# time $s < t$:
#
# $$
# x_s = a_s\,\hat x_0 + b_s\,\hat\epsilon .
# $$
#
# Written for any path, and checked against the package's `ddim_step` on the DDPM (without clipping, which
# chapter 3 adds for the first steps):


# %%
def ddim_path_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, there: PathPoint) -> torch.Tensor:
    """DDIM with η = 0 on the path x_t = a_t·x_0 + b_t·ε: the guess (x̂_0, ε̂) re-noised to the point ``there``."""
    return there.a * x0_hat + there.b * eps_hat


k_next = k - 20
next_point = PathPoint(float(abar[k_next].sqrt()), float((1 - abar[k_next]).sqrt()), 0.0, 0.0)
package_step, _ = ddim_step(ddpm.schedule, x_t.cpu(), eps_hat.cpu(), k, k_next, eta=0.0, clip_range=None)
torch.testing.assert_close(ddim_path_step(x0_hat, eps_hat, next_point).cpu(), package_step, rtol=1e-4, atol=1e-4)
print("ddim_path_step equals mnistdiff.ddim_step (η = 0, no clipping)")

# %% [markdown]
# Chapter 3 showed that this step is **Euler's method** for the probability-flow ODE written in the coordinates
# $\bar x = x/a_t$ and $\bar\sigma = b_t/a_t$, where it reads $\mathrm d\bar x/\mathrm d\bar\sigma = \hat\epsilon$ (Song
# et al. 2020, §4.3; Karras et al. 2022 build EDM on it). On the straight path something more happens: with
# $(\hat x_0, \hat\epsilon)$ held fixed, $x_s = (1 - s)\hat x_0 + s\hat\epsilon$ is a **straight line in $s$**, so
# following it is exactly a step along its direction $\hat\epsilon - \hat x_0$ — which is the velocity
# $\hat u$. Flow-matching Euler and DDIM on the straight path are one update, not two that agree in the limit.
# Run both on the flow network from the same noise, step by step:

# %%
steps_cmp = 8
x_euler = x_ddim = x1[:6].clone()
euler_path, ddim_path = [x_euler], [x_ddim]
times = [1 - i / steps_cmp for i in range(steps_cmp + 1)]
with torch.no_grad():
    for t_now, t_next in zip(times, times[1:]):
        x_euler = euler_step(x_euler, velocity(flow.unet, x_euler, t_now), t_now, t_next)
        u_now, here = velocity(flow.unet, x_ddim, t_now), straight_path(t_now)
        x0_now, eps_now = (convert(x_ddim, u_now, "velocity", target, here) for target in ("x0", "eps"))
        x_ddim = ddim_path_step(x0_now, eps_now, straight_path(t_next))
        euler_path.append(x_euler)
        ddim_path.append(x_ddim)
gap_paths = float((torch.stack(euler_path) - torch.stack(ddim_path)).abs().max())
assert math.isfinite(gap_paths)
pixels = [(16, 16), (12, 16), (20, 14), (8, 8), (16, 22), (24, 18)]  # a few pixels of the first sample
fig, ax = plt.subplots(figsize=(6, 3.2))
for i, (r, c) in enumerate(pixels):
    ax.plot(times, [float(p[0, 0, r, c]) for p in euler_path], "-", color=f"C{i}", lw=2, alpha=0.5)
    ax.plot(times, [float(p[0, 0, r, c]) for p in ddim_path], "x", color=f"C{i}")
ax.invert_xaxis()
ax.set_xlabel("t")
ax.set_ylabel("pixel value")
ax.set_title("six pixels of one sample: flow Euler (lines), DDIM on the straight path (×), 8 steps", fontsize=9)
plt.show()
assert gap_paths < 1e-4, gap_paths
print(f"largest difference between the two trajectories over {steps_cmp} steps: {gap_paths:.1e} (at most float32 "
      "rounding)")

# %% [markdown]
# The converse holds too: DDIM on the DDPM is flow Euler after the rescaling of section 4, with the time
# $t' = b_t/(a_t+b_t)$ — the same ODE, stepped at other times. Which path is better is then a question of where the
# steps fall and how straight the trajectories are, not of two kinds of model; chapter 9 measures it.
#
# ## 6. One family: the ODE, the reverse SDE, and a Langevin corrector
#
# The straight path is also the marginal of a **forward SDE**, as the DDPM's is (Song et al. 2021):
# $\mathrm dx = f_t\,x\,\mathrm dt + g_t\,\mathrm dW$ with $f_t = \dot a_t / a_t$ and
# $g_t^2 = 2 b_t \dot b_t - 2 f_t b_t^2$, here $f_t = -1/(1-t)$ and $g_t^2 = 2t/(1-t)$. Its probability-flow ODE,
# $\mathrm dx/\mathrm dt = f_t x - \tfrac12 g_t^2 \nabla \ln p_t(x)$, is our velocity field; checked on the
# Gaussian toy, where the score is known:

# %%
xs = torch.linspace(-3, 3, 61, dtype=torch.float64)
for t_val in (0.1, 0.5, 0.9):
    t_vec = torch.full_like(xs, t_val)
    var = (1 - t_val) ** 2 * S0**2 + t_val**2
    score = -(xs - (1 - t_val) * MU) / var  # ∇ ln p_t for p_t = N((1 − t)·μ, var)
    drift = -xs / (1 - t_val) - 0.5 * (2 * t_val / (1 - t_val)) * score
    torch.testing.assert_close(drift, gauss_field(xs[:, None], 1000 * t_vec).squeeze(1))
print("the probability-flow ODE of the forward SDE is the flow's velocity field (the Gaussian toy, three times)")

# %% [markdown]
# Run backwards in time, a family of SDEs keeps every marginal $p_t$ (Song et al. 2021, eq. 6 with their
# probability-flow argument): for any noise scale $g_t \ge 0$,
#
# $$
# \mathrm dx = \big[u_t(x) - \tfrac12 g_t^2\,\nabla \ln p_t(x)\big]\,\mathrm dt + g_t\,\mathrm d\bar W
# \qquad (\mathrm dt < 0),
# $$
#
# because the extra drift along the score undoes, in the Fokker–Planck equation, exactly what the extra noise
# does. $g_t = 0$ is the ODE; the DDPM's ancestral sampler and DDIM with $\eta > 0$ are members with noise. With
# the score read off the velocity, $\hat s = -\hat\epsilon/t$ and $\hat\epsilon = x + (1-t)\hat u$, and the
# choice $g_t^2 = 2\zeta t$, the extra drift is $\tfrac12 g_t^2 \hat s = -\zeta\hat\epsilon$, finite at every $t$.
# An Euler–Maruyama step of size $h$ is
#
# $$
# x_{t-h} = x_t - h\,(\hat u + \zeta\,\hat\epsilon) + \sqrt{2\zeta t h}\;z, \qquad z \sim \mathcal N(0, I).
# $$
#
# A **Langevin corrector** (Song et al. 2021's predictor–corrector) goes further: at a fixed $t$ it runs
# $x \leftarrow x + \delta\,\hat s + \sqrt{2\delta}\,z$, a Markov chain that leaves $p_t$ itself unchanged and pulls
# a sample that strayed back towards it. With $\delta = r\,t^2$ (proportional to the noise variance), it reads
# $x \leftarrow x - r\,t\,\hat\epsilon + \sqrt{2r}\,t\,z$.


# %%
@torch.no_grad()
def reverse_sde_inline(model, x1: torch.Tensor, steps: int, zeta: float, gen: torch.Generator,
                       langevin: float = 0.0) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE with g_t² = 2ζt (ζ = 0: flow Euler), and a Langevin corrector of
    size δ = r·t² after each step but the last (r = ``langevin``; 0: none)."""
    x = x1
    for i in range(steps):
        t_now, t_next = 1 - i / steps, 1 - (i + 1) / steps
        h = t_now - t_next
        u_hat = model(x, torch.full((x.shape[0],), 1000 * t_now, device=x.device)).to(x.dtype)
        eps_hat = x + (1 - t_now) * u_hat
        z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x = x - h * (u_hat + zeta * eps_hat) + math.sqrt(2 * zeta * t_now * h) * z
        if langevin and t_next > 0:
            u_next = model(x, torch.full((x.shape[0],), 1000 * t_next, device=x.device)).to(x.dtype)
            eps_next = x + (1 - t_next) * u_next
            z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            x = x - langevin * t_next * eps_next + math.sqrt(2 * langevin) * t_next * z
    return x


lines = ["| sampler | mean of x_0 | std of x_0 |", "|---|---|---|", f"| exact | {MU:.3f} | {S0:.3f} |"]
for zeta, r in ((0.0, 0.0), (0.5, 0.0), (2.0, 0.0), (0.0, 0.2)):
    out = reverse_sde_inline(gauss_field, x1_toy, 100, zeta, torch.Generator().manual_seed(SEED), langevin=r)
    name = f"reverse SDE, ζ = {zeta:g}" + (f", Langevin r = {r:g}" if r else "")
    lines.append(f"| {name} | {float(out.mean()):.3f} | {float(out.std()):.3f} |")
    assert abs(float(out.mean()) - MU) < 0.03 and abs(float(out.std()) - S0) < 0.03
Markdown("On the Gaussian toy (4,000 samples, 100 steps) every member lands on the data's mean and spread:\n\n"
         + "\n".join(lines))

# %% [markdown]
# On the trained model the members are different samplers of the same distribution: from the same noise, the ODE
# and the SDEs draw different digits (32 steps each; the corrector doubles the network calls):

# %%
fig, axes = plt.subplots(4, 1, figsize=(8, 5.2))
for ax, (zeta, r) in zip(axes, ((0.0, 0.0), (0.5, 0.0), (2.0, 0.0), (0.0, 0.2))):
    images = reverse_sde_inline(flow.unet, x1, 32, zeta, torch.Generator(device=DEVICE).manual_seed(SEED), r)
    show_grid(images.clamp(-1, 1), nrow=16, ax=ax,
              title=f"ζ = {zeta:g}" + (f", Langevin r = {r:g}" if r else (" (the ODE)" if zeta == 0 else "")))
fig.tight_layout()
plt.show()

# %% [markdown]
# **Summary.** A DDPM and a flow are two Gaussian paths, rescalings of each other; a network on either predicts
# a guess of $(x_0, \epsilon)$ that can be written as any of five targets. DDIM holds that guess fixed over a step
# and moves along the path; on the straight path that is Euler's method on the flow's ODE, exactly. Adding noise
# at rate $g_t$ and removing it along the score gives the reverse SDEs — DDPM's sampler and DDIM's $\eta$ among
# them — and a Langevin corrector; all share the ODE's marginals. What the straight path changes is where a
# solver's steps fall and how curved the trajectories are; chapter 9 takes the solvers further.
#
# ## 7. Measured: the DDPM against the flow, call for call
#
# The book's pixel DDPM and its flow twin (the same UNet, the same training run) were sampled with each of their
# samplers at 4 to 64 network calls per sample and scored in chapter 6's two feature spaces, n samples against the
# test digits (n is in the table's first line), by `benchmarks/nfe_sweep.py` (too long to run inside a chapter). Each FID is drawn as a multiple
# of its space's real-vs-real floor at the same n: 1 is as close as n samples can tell.

# %%
from mnistdiff.course.measured import book_result
from mnistdiff.evaluation.nfe_sweep import head_to_head, head_to_head_table, select, sweep_report

sweep = book_result("nfe_sweep.json")
fig, table = sweep_report(select(sweep, ("ddpm", "flow")) if sweep else None)
plt.show()
Markdown(table)

# %% [markdown]
# Call for call, which path draws better digits? Below, at each number of calls both models were measured at, the
# best of each model's deterministic solvers (the ODE: Euler, Heun and DPM-Solver++ for the flow; DDIM with
# $\eta = 0$, Heun and DPM-Solver++ for the DDPM), then the best of all their samplers, the stochastic ones included,
# each FID as a multiple of its space's floor:

# %%
ODE = ("Euler", "Heun", "DPM-Solver++(2M)", "DDIM η = 0")


def verdict(doc: dict, samplers) -> str:
    """Who is ahead in both spaces at which call counts, and where the two spaces disagree."""
    rows = head_to_head(doc, ("flow", samplers), ("ddpm", samplers))
    calls = {who: [str(h["nfe"]) for h in rows if h["ahead"] == who] for who in ("flow", "ddpm", "split")}
    said = [f"the {who} at {', '.join(c)} calls" for who, c in calls.items() if c and who != "split"]
    split = f"; the spaces disagree at {', '.join(calls['split'])}" if calls["split"] else ""
    return "ahead in both spaces: " + ("; ".join(said) if said else "neither model at any count") + split + "."


if sweep and any(r["model"] == "flow" for r in sweep["rows"]):
    text = (f"**ODE solvers only**\n\n{head_to_head_table(sweep, ('flow', ODE), ('ddpm', ODE))}\n\n"
            f"Deterministic, {verdict(sweep, ODE)}\n\n**Every sampler**\n\n"
            f"{head_to_head_table(sweep, ('flow', None), ('ddpm', None))}\n\nWith every sampler, "
            f"{verdict(sweep, None)}")
else:
    text = "*Not measured yet:* the sweep has no flow rows (`benchmarks/nfe_sweep.py`)."
Markdown(text)

# %% [markdown]
# One seed is one draw of $n$ samples, and its FID moves with the seed by more than some of the gaps above. The
# flow's default sampler (the one `flow.sample(n)` and `python -m mnistdiff sample flow` use) was therefore also
# drawn from several seeds, each scored beside the floor of as many real digits from the same seed
# (`benchmarks/seed_spread.py`):

# %% tags=["remove-input"]
from mnistdiff.course.measured import not_measured
from mnistdiff.evaluation.metrics import space_key
from mnistdiff.evaluation.nfe_sweep import sampler_label

d = flow.sampling_defaults()
spread = book_result(f"seed_spread_flow_{d['sampler']}_{d['steps']}.json")
if spread is None or spread["model"]["weights_sha256"] != flow.meta["weights_sha256"]:
    spread_text = not_measured("seed_spread")
else:
    seeds_drawn = [x["seed"] for x in spread["draws"]]
    cells = []
    for space, name in (("classifier", "the classifier's"), ("resnet", "the ResNet's")):
        key = space_key("fid", space)
        fid, floor = spread["spread"][key]["mean"], spread["floor_spread"][key]["mean"]
        mean = {m: spread["spread"][space_key(m, space)]["mean"] for m in ("precision", "recall")}
        low = min(spread["spread"][space_key(m, space)]["min"] for m in mean)
        cells.append(f"in {name} space FID {fid:.3f} ± {spread['spread'][key]['std']:.3f} against a floor of "
                     f"{floor:.3f}, **{fid / floor:.2f}×**, precision {mean['precision']:.3f} and recall "
                     f"{mean['recall']:.3f} on average (the lower of the two at least {low:.3f} at every seed)")
    where = (f", on Karras σ from {spread['sampling']['sigma_max']:g}" if spread["sampling"].get("spacing") == "karras"
             else "")
    spread_text = (f"{sampler_label(d['sampler'], d['steps'])} ({flow.nfe(d['sampler'], d['steps'])} network calls"
                   f"{where}), over seeds {seeds_drawn[0]}-{seeds_drawn[-1]} "
                   f"(n = {spread['n']:,} each): " + "; ".join(cells) + ".")
Markdown(spread_text)

# %% [markdown]
# ## Exercises
#
# :::{admonition} Exercise 8.1 (derivation): the constant between the two losses
# :class: tip
# Show that $\mathcal L_{\text{CFM}}(\theta) - \mathcal L_{\text{FM}}(\theta) = \mathbb E\,\lVert \epsilon - x_0\rVert^2 -
# \mathbb E\,\lVert u_t(x_t)\rVert^2$, the average conditional variance of the line directions through a point.
# Check it on the two-Gaussian toy for two different linear models $v_\theta$.
# :::
#
# :::{admonition} Solution 8.1
# :class: dropdown
# Expand $\lVert v - (\epsilon - x_0)\rVert^2 = \lVert v\rVert^2 - 2\langle v, \epsilon - x_0\rangle +
# \lVert\epsilon - x_0\rVert^2$ and $\lVert v - u\rVert^2 = \lVert v\rVert^2 - 2\langle v, u\rangle + \lVert u\rVert^2$.
# The first terms are equal; the cross terms have equal expectations by the tower rule, since $v$ depends on
# $(x_t, t)$ alone and $\mathbb E[\epsilon - x_0 \mid x_t] = u_t(x_t)$. What is left is
# $\mathbb E\lVert\epsilon - x_0\rVert^2 - \mathbb E\lVert u\rVert^2 = \mathbb E\,\mathrm{tr}\,\mathrm{Cov}[\epsilon - x_0 \mid x_t]
# \ge 0$: the CFM loss can never reach zero, and its floor is this constant. The cell evaluates both losses on the
# toy's samples for two models and their difference against the constant.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 8.1: L_CFM − L_FM is the same for every model, and equals E‖ε − x_0‖² − E‖u‖².
target_cfm, target_fm = eps_toy - x0_toy, toy_field(xt_toy, t_toy)
constant = float(target_cfm.pow(2).mean() - target_fm.pow(2).mean())
for theta in (theta_cfm, torch.tensor([0.5, -1.0, 0.3, 2.0, 0.0, 0.1], dtype=torch.float64)):
    v = features @ theta
    difference = float((v - target_cfm).pow(2).mean() - (v - target_fm).pow(2).mean())
    print(f"θ = {[round(x, 2) for x in theta.tolist()]}: L_CFM − L_FM = {difference:.4f} (constant {constant:.4f})")
    assert abs(difference - constant) < 0.02

# %% [markdown]
# :::{admonition} Exercise 8.2 (derivation): a DDPM as a flow
# :class: tip
# (a) Show that $\tilde x = x_t/(a_t + b_t)$ lies on the straight path at $t' = b_t/(a_t + b_t)$ for any Gaussian
# path. (b) Write the velocity a DDPM's $\epsilon_\theta$ implies for the straight path at $(\tilde x, t')$, so that
# the DDPM can be sampled with flow Euler. (c) Sample the chapter's DDPM that way in 20 steps and compare with
# DDIM-20.
# :::
#
# :::{admonition} Solution 8.2
# :class: dropdown
# (a) $x_t/(a_t+b_t) = \frac{a_t}{a_t+b_t}x_0 + \frac{b_t}{a_t+b_t}\epsilon = (1-t')x_0 + t'\epsilon$. (b) The guess
# $(\hat x_0, \hat\epsilon)$ does not change with the coordinates: $\hat\epsilon = \epsilon_\theta(x_t, t)$ and
# $\hat x_0 = (x_t - b_t\hat\epsilon)/a_t$, and the straight path's velocity is $\hat u = \hat\epsilon - \hat x_0$. To
# evaluate it at a given $(\tilde x, t')$, find the DDPM timestep whose ratio $b_t/a_t$ equals $t'/(1-t')$ and set
# $x_t = (a_t + b_t)\,\tilde x$. (c) The cell does this with the nearest integer timestep, from the same noise as
# DDIM-20. DDIM on the DDPM is itself flow Euler in these coordinates, at the times $t' = b_t/(a_t + b_t)$ of its
# timesteps (section 5), so the two samplers integrate one ODE and differ only in where their 20 steps fall.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 8.2: the DDPM sampled as a straight-path flow with Euler, against DDIM (η = 0) in 20 steps.
ratio = ((1 - abar) / abar).sqrt()  # b_t / a_t at every timestep (index 0 … T − 1)


@torch.no_grad()
def ddpm_as_velocity(x_tilde: torch.Tensor, t_scaled: torch.Tensor) -> torch.Tensor:
    t_p = float(t_scaled[0]) / 1000
    i = int(torch.argmin((ratio - t_p / max(1 - t_p, 1e-6)).abs()))
    a_i, b_i = float(abar[i].sqrt()), float((1 - abar[i]).sqrt())
    x = (a_i + b_i) * x_tilde
    e = ddpm.unet(x, torch.full((x.shape[0],), i, device=x.device))
    return convert(x_tilde, e, "eps", "velocity", straight_path(b_i / (a_i + b_i)))


noise = torch.randn((16, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
as_flow, _ = flow_sample_loop(ddpm_as_velocity, noise.shape, steps=20, x_T=noise, device=DEVICE)
as_ddim, _ = ddpm.sample(16, sampler="ddim", steps=20, eta=0.0, seed=SEED, device=DEVICE)
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
show_grid(as_flow, nrow=16, ax=axes[0], title="the DDPM as a flow: Euler, 20 steps")
show_grid(as_ddim, nrow=16, ax=axes[1], title="the DDPM: DDIM-20, η = 0, from the same noise")
fig.tight_layout()
plt.show()

# %% [markdown]
# :::{admonition} Exercise 8.3 (an experiment): a third solver
# :class: tip
# The **explicit midpoint** method evaluates the velocity half a step ahead,
# $x_{t-h} = x_t - h\,v\big(x_t - \tfrac h2 v(x_t, t),\, t - \tfrac h2\big)$. Write it, measure its order on the
# Gaussian toy as the chapter did for Euler and Heun, and compare its error with Heun's at equal network calls.
# :::
#
# :::{admonition} Solution 8.3
# :class: dropdown
# Midpoint is a second-order method, like Heun: two calls per step, and in general an error that falls about 4×
# when the steps halve. The cell measures it on the toy against Heun as the package runs it (EDM's plain Euler last
# step) and against Heun corrected on the last step too (section 3's `heun_corrected_at_zero`). The toy's field is
# smooth down to $t = 0$ and bends most near it (the data's spread is small), so there the methods that use the
# velocity near $t = 0$ — midpoint, which asks half a step before it, and the Heun that corrects at it — beat the
# package's Heun with its plain Euler last step; the printed errors say by how much. On the trained model the same
# correction ruins the digits (section 3), because a real data set's field jumps at $t = 0$. Midpoint never asks
# for the velocity at $t = 0$, so it is safe there too. Which solver wins depends on the field: measure on the
# model you sample.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 8.3: the explicit midpoint method on the Gaussian toy, against Heun.
@torch.no_grad()
def midpoint_inline(model, x1: torch.Tensor, steps: int) -> torch.Tensor:
    x = x1
    for i in range(steps):
        t_now, h = 1 - i / steps, 1 / steps
        v = model(x, torch.full((x.shape[0],), 1000 * t_now))
        x_half = x - h / 2 * v
        x = x - h * model(x_half, torch.full((x.shape[0],), 1000 * (t_now - h / 2)))
    return x


table = {"midpoint": midpoint_inline, "Heun corrected at t = 0 too": heun_corrected_at_zero}
errors = {name: [float((fn(gauss_field, x1_toy, s) - exact).abs().max()) for s in (8, 16, 32)]
          for name, fn in table.items()}
errors["Heun as the package runs it"] = [r[3] for r in rows[2:]]
for name, errs in errors.items():
    print(f"{name:28s} 8/16/32 steps: {', '.join(f'{e:.2e}' for e in errs)}  (16 → 32 steps: ÷{errs[1] / errs[2]:.1f})")
assert errors["midpoint"][1] / errors["midpoint"][2] > 3  # at least second order

# %% [markdown]
# :::{admonition} Exercise 8.4 (a change to the code): logit-normal times
# :class: tip
# Stable Diffusion 3 (Esser et al. 2024) draws the training times as $t = \mathrm{sigmoid}(n)$, $n \sim \mathcal N(0,
# 1)$, which spends more of the training on the middle of the path, where predicting the velocity is hardest.
# Write that sampler, check it against `mnistdiff.sample_time(n, "logit_normal", gen)` with the same generator, and
# plot the two densities. Which $t$ does the uniform choice over-train? (`train flow --time_sampling logit_normal`
# trains with it.)
# :::
#
# :::{admonition} Solution 8.4
# :class: dropdown
# $t = 1/(1 + e^{-n})$; the density is $p(t) = \varphi(\mathrm{logit}\,t)/(t(1-t))$, peaked at $t = \tfrac12$ and
# vanishing at both ends. Near $t = 0$ the velocity target $\epsilon - x_0$ is almost fixed by $x_t$ (little noise
# to guess), and near $t = 1$ the best guess is the mean digit; the uniform sampler spends a fifth of its
# training on each of those easy fifths. The book's flow twin is trained with these times (section 2).
# :::

# %% tags=["solution", "hide-cell"]
# Solution 8.4: logit-normal training times, inline and from the package.
gen_a, gen_b = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED)
ours = torch.sigmoid(torch.randn(50_000, generator=gen_a))
torch.testing.assert_close(ours, sample_time(50_000, "logit_normal", gen_b))
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.hist(ours.numpy(), bins=50, density=True, alpha=0.6, label="logit-normal")
ax.hist(sample_time(50_000, "uniform", gen_b).numpy(), bins=50, density=True, alpha=0.6, label="uniform")
ax.set_xlabel("training time t")
ax.legend()
plt.show()
