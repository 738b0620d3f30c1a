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
# # 9. A digit in four network calls: fast solvers and distillation
#
# Every sample so far has cost 50 network calls (DDIM-50), 100 with guidance, or all $T$ (DDPM). The field cut
# that twice over. Without training: **higher-order solvers** of the probability-flow ODE, which take fewer, better
# steps — Heun's method in the variables of Karras et al. 2022 (EDM, [arXiv:2206.00364](https://arxiv.org/abs/2206.00364))
# and DPM-Solver++ (Lu et al. 2022, [arXiv:2211.01095](https://arxiv.org/abs/2211.01095)), the default of most
# libraries today. With training: **distillation**, which teaches a student to do in one step what the teacher
# does in two (progressive distillation, Salimans & Ho 2022, [arXiv:2202.00512](https://arxiv.org/abs/2202.00512)),
# round after round, until four calls draw a digit.
#
# **Learning goals.** After this chapter you can
#
# - write the probability-flow ODE in EDM's variables $\bar x = x/a_t$, $\sigma = b_t/a_t$, and Heun's step on it;
# - derive DPM-Solver++ as an exponential integrator in the half-log-SNR $\lambda = \ln(a_t/b_t)$, show that its
#   first-order step is DDIM, add the multistep correction, and solve the reverse SDE the same way;
# - choose where the steps go (Karras et al.'s $\sigma$ spacing);
# - derive the target of progressive distillation and fold classifier-free guidance into a student.
#
# **Run time.** a few minutes on two CPU cores with the committed `book` checkpoints. Symbols follow the
# course's [notation](../notation.md) and chapter 8's paths: $x_t = a_t x_0 + b_t\epsilon$, with the DDPM's
# $a_t = \sqrt{\bar\alpha_t}$, $b_t = \sqrt{1-\bar\alpha_t}$. *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# The book shows this chapter executed with the `book` profile's committed checkpoints. Run under
# `MNISTDIFF_PROFILE=smoke` (the test suite does), every model is trained (and the student distilled) for seconds,
# and every figure of MNIST samples shows noise-like blobs; the code paths are the same. The sentences that quote a
# measured number are written by the cells from what they computed. The derivations, the toy problem and the
# checks against the package do not depend on the profile.
# :::

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

from mnistdiff import (
    PathPoint,
    default_device,
    get_cldm,
    get_cldm_distilled,
    get_ddpm,
    get_profile,
    show_grid,
)
from mnistdiff.evaluation.features import classifier_features
from mnistdiff.guidance import balanced_labels
from mnistdiff.solvers import ddpm_path, dpm_solver_pp_2m, dpm_solver_pp_2m_sde, heun_edm, karras_sigmas
from mnistdiff.training.distill import distillation_target

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# **Where this chapter ends.** Chapter 7's class-conditional model asked for the digits 0-9: top, as chapter 7
# samples it (DDIM-50 with guidance, two network evaluations per step); bottom, its distilled student (this
# chapter's section 5), four network calls in all:

# %%
teacher = get_cldm(device=DEVICE, progress=False)
student = get_cldm_distilled(device=DEVICE, progress=False)
labels = balanced_labels(20)
rows = []
for name, model, options in (("teacher", teacher, {"sampler": "ddim", "steps": PROFILE.ddim_steps}),
                             ("student", student, {})):
    model.sample(20, labels=labels, seed=SEED + 1, device=DEVICE, **options)  # warm-up
    start = time.perf_counter()
    images, _ = model.sample(20, labels=labels, seed=SEED, device=DEVICE, **options)
    rows.append((name, model, {**model.sampling_defaults(), **options}, images, time.perf_counter() - start))
fig, axes = plt.subplots(2, 1, figsize=(9, 2.4))
for ax, (name, model, d, images, seconds) in zip(axes, rows):
    calls = model.nfe(d["sampler"], d["steps"]) * (1 if model.distillation else 2)
    show_grid(images, nrow=20, ax=ax, title=f"{name}: {calls} network evaluations per digit, "
                                             f"{len(labels) / seconds:.0f} digits/s here")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 1. The ODE in EDM's variables
#
# Chapter 8 wrote every model on a Gaussian path $x_t = a_t x_0 + b_t\epsilon$ and read the network as a guess
# $\hat x_0$ of the clean sample. Divide by $a_t$: $\bar x = x/a_t = x_0 + \sigma\epsilon$ with $\sigma = b_t/a_t$, the
# data plus noise of standard deviation $\sigma$ — Karras et al.'s variables, where every path looks alike. The
# probability-flow ODE becomes
#
# $$
# \frac{\mathrm d\bar x}{\mathrm d\sigma} = \frac{\bar x - \hat x_0(\bar x, \sigma)}{\sigma} = \hat\epsilon,
# $$
#
# and an Euler step in these variables is DDIM (chapter 3). **Heun's method** evaluates the slope again where the
# Euler step lands and steps with the average of the two slopes — second order, two network calls per step. At
# $\sigma = 0$, the data, the slope $(\bar x - \hat x_0)/\sigma$ is undefined, so the last step stays an Euler step
# (Karras et al., Algorithm 1): $N$ steps cost $2N - 1$ calls. The package's `ddpm_path` gives the points of a
# DDPM's path and its denoiser $\hat x_0$ (clipped as DDIM clips it); written out:


# %%
def heun_inline(denoise, points: list[PathPoint], x: torch.Tensor) -> torch.Tensor:
    """Heun's method on dx̄/dσ = (x̄ − x̂_0)/σ from points[0] to the data (the last step: Euler)."""
    sigma = [p.b / p.a for p in points]
    xbar = x.double() / points[0].a
    for i in range(len(points) - 1):
        slope = (xbar - denoise(xbar * points[i].a, i)) / sigma[i]
        x_euler = xbar + (sigma[i + 1] - sigma[i]) * slope
        if sigma[i + 1] == 0:
            xbar = x_euler
        else:
            slope_next = (x_euler - denoise(x_euler * points[i + 1].a, i + 1)) / sigma[i + 1]
            xbar = xbar + (sigma[i + 1] - sigma[i]) * (slope + slope_next) / 2
    return xbar * points[-1].a


ddpm = get_ddpm(device=DEVICE, progress=False)
x_T = torch.randn((8, 1, 32, 32), generator=torch.Generator(device=DEVICE).manual_seed(SEED), device=DEVICE)
with torch.no_grad():
    points, denoise, times = ddpm_path(ddpm.unet, ddpm.schedule, 6, spacing="karras")
    torch.testing.assert_close(heun_inline(denoise, points, x_T), heun_edm(denoise, points, x_T))
print("heun_inline equals mnistdiff.solvers.heun_edm; its timesteps:", [round(t, 1) for t in times])

# %% [markdown]
# **Where the steps go.** Karras et al. space the $N$ noise levels evenly in $\sigma^{1/\rho}$ between
# $\sigma_{\max}$ and the smallest, $\rho = 7$ (their eq. 5): many small steps at low noise, where the ODE bends
# and the details of the digit are decided, few at high noise, where it is nearly straight. (The cosine schedule's
# last timestep has $\sigma \approx 10^4$; spacing from there, as diffusers does, spends most steps on pure noise.)
# EDM starts at $\sigma_{\max} = 80$, chosen for CIFAR-10 and ImageNet; the package starts at 20
# (`solvers.KARRAS_SIGMA_MAX`), for a reason section 4 measures: a 32 × 32 digit is drowned much sooner.
# The network is called at the fractional timesteps whose $\sigma$ these are (its sinusoidal time embedding takes
# any real $t$). Against
# DDIM's evenly spaced timesteps:

# %%
T = ddpm.schedule.num_timesteps
_, _, karras_t = ddpm_path(ddpm.unet, ddpm.schedule, 20, spacing="karras")
_, _, linear_t = ddpm_path(ddpm.unet, ddpm.schedule, 20, spacing="linspace")
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(20), [t + 1 for t in linear_t], "o-", label="DDIM: evenly spaced timesteps")
ax.plot(range(20), [t + 1 for t in karras_t], "s-", label="Karras et al.: evenly spaced in σ^(1/7)")
ax.set_xlabel("step")
ax.set_ylabel("timestep t")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 2. DPM-Solver++: solve the linear part exactly
#
# The ODE has a part we can integrate by hand. In the half-log-SNR $\lambda = \ln(a/b)$, which rises from
# $-\infty$ (noise) to $+\infty$ (data), and with $x/b$ as the unknown, the probability-flow ODE reads
# $\mathrm d(x/b)/\mathrm d\lambda = e^{\lambda}\hat x_0$. Integrating from $\lambda_t$ to $\lambda_s$ (variation of
# constants; Lu et al. 2022, eq. 8):
#
# $$
# x_s = \frac{b_s}{b_t}\,x_t + b_s\int_{\lambda_t}^{\lambda_s} e^{\lambda}\,\hat x_0(\lambda)\,\mathrm d\lambda .
# $$
#
# Only $\hat x_0$ along the way is unknown. Hold it at its value at $t$ and the integral is
# $\hat x_0\,b_s(e^{\lambda_s} - e^{\lambda_t}) = -a_s(e^{-h} - 1)\,\hat x_0$ with $h = \lambda_s - \lambda_t$:
#
# $$
# x_s = \frac{b_s}{b_t}\,x_t - a_s\,(e^{-h} - 1)\,\hat x_0 ,
# $$
#
# the **first-order** DPM-Solver++ step, which is exactly DDIM's $x_s = a_s\hat x_0 + b_s\hat\epsilon$ (exercise 9.1).
# **DPM-Solver++(2M)** lets $\hat x_0$ vary linearly in $\lambda$, using the previous step's guess (a multistep
# method: no extra network call), $D = (1 + \tfrac{1}{2r})\hat x_{0,i} - \tfrac{1}{2r}\hat x_{0,i-1}$ with
# $r = h_{i-1}/h_i$, and keeps the first step (no previous guess) and the last (to the data, $h = \infty$) first
# order:


# %%
def dpm_solver_pp_2m_inline(denoise, points: list[PathPoint], x: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) from points[0] to the data."""
    def lam(p: PathPoint) -> float:
        return math.log(p.a / p.b)

    x = x.double()
    previous = None  # (x̂_0, h) of the step before
    for i in range(len(points) - 1):
        here, there = points[i], points[i + 1]
        x0 = denoise(x, i)
        if there.b == 0:  # the last step lands on the guess itself
            x = x0
            break
        h = lam(there) - lam(here)
        d = x0
        if previous is not None:
            r = previous[1] / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous[0]
        x = (there.b / here.b) * x - there.a * math.expm1(-h) * d
        previous = (x0, h)
    return x


with torch.no_grad():
    points, denoise, _ = ddpm_path(ddpm.unet, ddpm.schedule, 10, spacing="linspace")
    torch.testing.assert_close(dpm_solver_pp_2m_inline(denoise, points, x_T), dpm_solver_pp_2m(denoise, points, x_T))
print("dpm_solver_pp_2m_inline equals mnistdiff.solvers.dpm_solver_pp_2m")

# %% [markdown]
# **The stochastic twin.** DDIM's default is $\eta = 1$ (chapter 3), because in chapter 6's
# two feature spaces that beats the deterministic $\eta = 0$ at the same steps: the noise injected at each step
# corrects the network's errors as it goes, where the ODE carries them to the end. DPM-Solver++ has the same choice
# (Lu et al. 2022, §5): solved on the reverse SDE instead of the ODE, its linear part still integrates exactly, and a step
# keeps only a share $e^{-h}$ of the old noise and draws the rest afresh,
#
# $$
# x_s = \frac{b_s}{b_t}\,e^{-h}\,x_t + a_s\,(1 - e^{-2h})\,D + b_s\sqrt{1 - e^{-2h}}\;z, \qquad z \sim \mathcal N(0, I),
# $$
#
# with the same $D$ as above (its first-order step is DDPM's posterior step, DDIM's $\eta = 1$). One network call per
# step, like its twin:


# %%
def dpm_solver_pp_2m_sde_inline(denoise, points: list[PathPoint], x: torch.Tensor,
                                generator: torch.Generator) -> torch.Tensor:
    """DPM-Solver++(2M) SDE from points[0] to the data; the noise of each step drawn from ``generator``."""
    def lam(p: PathPoint) -> float:
        return math.log(p.a / p.b)

    x = x.double()
    previous = None
    for i in range(len(points) - 1):
        here, there = points[i], points[i + 1]
        x0 = denoise(x, i)
        if there.b == 0:
            x = x0
            break
        h = lam(there) - lam(here)
        d = x0
        if previous is not None:
            r = previous[1] / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous[0]
        z = torch.randn(x.shape, generator=generator, device=x.device).double()
        x = (there.b / here.b) * math.exp(-h) * x + there.a * (1 - math.exp(-2 * h)) * d \
            + there.b * math.sqrt(1 - math.exp(-2 * h)) * z
        previous = (x0, h)
    return x


with torch.no_grad():
    ours = dpm_solver_pp_2m_sde_inline(denoise, points, x_T, torch.Generator(device=DEVICE).manual_seed(SEED))
    package = dpm_solver_pp_2m_sde(denoise, points, x_T, torch.Generator(device=DEVICE).manual_seed(SEED))
    torch.testing.assert_close(ours, package)
print("dpm_solver_pp_2m_sde_inline equals mnistdiff.solvers.dpm_solver_pp_2m_sde")

# %% [markdown]
# ## 3. Accuracy per network call, where the answer is known
#
# For Gaussian data $x_0 \sim \mathcal N(\mu, s_0^2)$ the denoiser is exact, $\hat x_0 = \mu + \frac{a s_0^2}{a^2 s_0^2 +
# b^2}(x - a\mu)$, and the ODE's map from noise to data is affine, so every solver's error can be measured. On
# Karras et al.'s points from $\sigma = 80$ to $0.002$:

# %%
MU, S0 = 0.5, 0.4


def gauss_denoise(points):
    def denoise(x, i):
        a, b = points[i].a, points[i].b
        return MU + a * S0**2 / (a**2 * S0**2 + b**2) * (x - a * MU)
    return denoise


def ddim_inline(denoise, points, x):
    for i in range(len(points) - 1):
        x0 = denoise(x, i)
        eps = (x - points[i].a * x0) / points[i].b
        x = points[i + 1].a * x0 + points[i + 1].b * eps
    return x


def vp_points(n: int) -> list[PathPoint]:
    pts = [PathPoint(1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s), 0.0, 0.0) for s in karras_sigmas(0.002, 80, n)]
    return [*pts, PathPoint(1.0, 0.0, 0.0, 0.0)]


def toy_error(solver, n: int) -> float:
    pts = vp_points(n)
    a0, b0 = pts[0].a, pts[0].b
    spread = math.sqrt(a0**2 * S0**2 + b0**2)
    x = a0 * MU + spread * torch.randn(4000, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    return float((solver(gauss_denoise(pts), pts, x) - (MU + S0 * (x - a0 * MU) / spread)).abs().max())


solvers = {"DDIM (Euler)": (ddim_inline, 1), "Heun (EDM)": (heun_inline, 2),
           "DPM-Solver++(2M)": (dpm_solver_pp_2m_inline, 1)}
fig, ax = plt.subplots(figsize=(5, 3.2))
table = {}
for name, (solver, calls_per_step) in solvers.items():
    steps = [4, 6, 8, 12, 16, 24, 32] if calls_per_step == 1 else [3, 4, 5, 7, 9, 13, 17]
    calls = [s * calls_per_step - (calls_per_step - 1) for s in steps]
    errors = [toy_error(solver, s) for s in steps]
    table[name] = dict(zip(calls, errors))
    ax.loglog(calls, errors, "o-", label=name)
ax.set_xlabel("network calls")
ax.set_ylabel("max error against the exact ODE")
ax.legend(fontsize=8)
plt.show()
def best_near(calls: int) -> str:
    errors = {n: v[min(v, key=lambda c: abs(c - calls))] for n, v in table.items()}
    best = min(errors, key=errors.get)
    return f"at about {calls} calls the smallest error is {best}'s ({errors[best]:.1e}; " + ", ".join(
        f"{n} {e:.1e}" for n, e in errors.items() if n != best) + ")"


Markdown(f"On this toy, {best_near(8)}; {best_near(16)}; {best_near(32)}.")

# %% [markdown]
# ## 4. On the trained DDPM
#
# The same solvers on chapter 2's network, from the same noise, at about ten network calls each, beside DDIM-50:
# first the deterministic samplers, then the stochastic ones (`model.sample(sampler=…, steps=…)`; `model.nfe` counts
# the calls; the solvers on Karras σ, the package's default spacing). Chapter 6's two feature spaces score them
# against network calls in `results/<profile>/nfe_sweep.json` (`benchmarks/nfe_sweep.py`).

# %%
settings = [("ddim", 50, {"eta": 0.0}), ("ddim", 10, {"eta": 0.0}), ("heun", 5, {}), ("dpmpp_2m", 10, {}),
            ("ddim", 50, {"eta": 1.0}), ("ddim", 10, {"eta": 1.0}), ("dpmpp_2m_sde", 10, {})]
fig, axes = plt.subplots(len(settings), 1, figsize=(9, 1.2 * len(settings)))
for ax, (sampler, steps, extra) in zip(axes, settings):
    images, _ = ddpm.sample(20, sampler=sampler, steps=steps, seed=SEED, device=DEVICE, **extra)
    eta = f", η = {extra['eta']:g}" if extra else ""
    show_grid(images, nrow=20, ax=ax, title=f"{sampler}{eta}, {steps} steps: {ddpm.nfe(sampler, steps)} network calls")
fig.tight_layout()
plt.show()

# %% [markdown]
# Measured on the book's models in both feature spaces (`benchmarks/nfe_sweep.py`, too long for a chapter; n is
# in the table's first line), each FID as a multiple of its space's floor. "At equal quality" reads each curve against two bars: the
# course's DDIM-50 with $\eta = 1$, the sampler every chapter before this one used, and Song et al.'s deterministic
# DDIM-50 ($\eta = 0$). They are not the same bar: fifty stochastic steps keep correcting the network's errors with
# fresh noise, which fifty deterministic steps (and any ODE solver) carry to the end.

# %%
from mnistdiff.course.measured import book_result
from mnistdiff.evaluation.nfe_sweep import sweep_report

fig, table = sweep_report(book_result("nfe_sweep.json"))
plt.show()
Markdown(table)

# %% tags=["remove-input"]
from mnistdiff.config import RUN_CONFIGS
from mnistdiff.course.measured import not_measured
from mnistdiff.evaluation.nfe_sweep import compare_over_seeds
from mnistdiff.solvers import KARRAS_SIGMA_MIN


def spread_ratio(kind: str, steps: int) -> str | None:
    """DPM-Solver++(2M) SDE at ``steps`` calls over several seeds, as a multiple of DDIM-50 η = 1's mean FID over the
    same seeds, classifier / ResNet (``benchmarks/seed_spread.py``); None where either is not measured, or not on the
    same seeds."""
    ours, ddim = book_result(f"seed_spread_{kind}_dpmpp_2m_sde_{steps}.json"), book_result(f"seed_spread_{kind}.json")
    try:
        r = [compare_over_seeds(ours, ddim, k)["ratio"] for k in ("fid", "fid_resnet")] if ours and ddim else None
    except ValueError:  # not the same seeds
        return None
    return f"{r[0]:.2f}× / {r[1]:.2f}×" if r else None


kinds = {"ddpm": "the pixel DDPM", "ldm": "the LDM"}
ratios = {(kind, steps): spread_ratio(kind, steps) for kind in kinds for steps in (10, 16)}
at_default = [book_result(f"seed_spread_{kind}_dpmpp_2m_sde_{RUN_CONFIGS[kind].default_steps}.json")
              for kind in kinds]
ddim = [book_result(f"seed_spread_{kind}.json") for kind in kinds]
if any(v is None for v in (*ratios.values(), *at_default, *ddim)):
    default_text = not_measured("seed_spread")
else:
    parts = "; ".join(f"{name}, {ratios[(kind, 10)]} at 10 calls and {ratios[(kind, 16)]} at 16 (σ from "
                      f"{RUN_CONFIGS[kind].karras_sigma_max:g})" for kind, name in kinds.items())
    steps = {RUN_CONFIGS[kind].default_steps for kind in (*kinds, "cldm")}
    n, drawn = ddim[0]["n"], [d["seed"] for d in ddim[0]["draws"]]
    said = {"ahead": "nearer the real digits than DDIM-50", "behind": "behind DDIM-50",
            "level": "level with DDIM-50 (above it by less than the seeds' standard error)"}
    verdicts = []
    for name, ours, ref in zip(kinds.values(), at_default, ddim):
        c, r = (compare_over_seeds(ours, ref, k)["verdict"] for k in ("fid", "fid_resnet"))
        verdicts.append(f"{name} {said[c]} in both spaces" if c == r else
                        f"{name} {said[c]} in the classifier's space and {said[r]} in the ResNet's")
    verdict = "; ".join(verdicts)
    default_text = f"""**The package's default.** One seed cannot resolve a 1.2× difference, so the defaults are judged
over {len(drawn)} seeds ({drawn[0]}-{drawn[-1]}, n = {n:,} each, `benchmarks/seed_spread.py`): DPM-Solver++(2M) SDE on Karras σ down to
$\\sigma_{{\\min}} = {KARRAS_SIGMA_MIN:g}$, as a multiple of DDIM-50 η = 1's mean FID over the same seeds (classifier /
ResNet features): {parts}. So where no sampler is named (`model.sample(n)`, `python -m mnistdiff sample ddpm`, `ldm`
or `cldm`), the package draws with DPM-Solver++(2M) SDE at {" or ".join(map(str, sorted(steps)))} steps, for
{max(steps)} or fewer network calls where DDIM pays {ddim[0]["sampling"]["steps"]}: at its default, {verdict}."""
Markdown(default_text)


# %% [markdown]
# **The spacing matters more than the solver.** The same DPM-Solver++(2M) SDE, the same ten calls, the same noise:
# on DDIM's evenly spaced timesteps (`spacing="linspace"`) and on Karras et al.'s $\sigma$ from the package's
# $\sigma_{\max}$ (the default):

# %%
fig, axes = plt.subplots(2, 1, figsize=(9, 2.4))
for ax, spacing in zip(axes, ("linspace", "karras")):
    images, _ = ddpm.sample(20, sampler="dpmpp_2m_sde", steps=10, spacing=spacing, seed=SEED, device=DEVICE)
    show_grid(images, nrow=20, ax=ax, title=f"DPM-Solver++(2M) SDE, 10 calls, spacing={spacing!r}")
fig.tight_layout()
plt.show()

# %% [markdown]
# And where the spacing should start and end, measured on the book's models (`benchmarks/karras_sigmas.py`, both
# feature spaces, n in the table's first line): EDM's $\sigma_{\max} = 80$ against smaller ones, and the schedule's
# own smallest $\sigma$ against larger ends. Too small a $\sigma_{\max}$ starts where the digit still shows through
# the noise, which pure Gaussian noise does not have; too large spends calls where nothing is decided yet. At the
# other end, the last call's $\hat x_0$ is the sample: ending at the schedule's own smallest $\sigma$ spends the
# last few of ten calls polishing noise no eye can see, where ending higher spends them on the strokes.

# %%
from mnistdiff.evaluation.nfe_sweep import karras_table

Markdown(karras_table(book_result("karras_sigmas.json")))

# %% [markdown]
# ## 5. Distillation: one step where the teacher takes two
#
# Solvers make each step more accurate; distillation makes the network itself take bigger steps. Progressive
# distillation (Salimans & Ho 2022, Algorithm 2) starts from a teacher sampled with DDIM ($\eta = 0$) on $2N$
# steps and trains a student, initialised from the teacher, to land in **one** DDIM step where the teacher lands
# in **two**. From $z_t$, the teacher's two steps reach $z_{t''}$; a DDIM step $z_{t''} = a_{t''}\hat x_0 +
# b_{t''}(z_t - a_t\hat x_0)/b_t$ reaches it if the student's guess is
#
# $$
# \tilde x = \frac{z_{t''} - (b_{t''}/b_t)\,z_t}{a_{t''} - (b_{t''}/b_t)\,a_t},
# $$
#
# which the student regresses on (weighted by $\max(a_t^2/b_t^2, 1)$). The student then becomes the teacher, and
# the grid halves again: $64 \to 32 \to 16 \to 8 \to 4$. Two choices make it work here: the student predicts $v$
# (chapter 2), because at the first point $a_t \approx 0$ and an $\epsilon$-network's $\hat x_0 = (z - b\hat\epsilon)/a$
# would multiply its error by $1/a$; and the first teacher is the **guided** model, so the guidance weight is folded
# into the student (Meng et al. 2023): one network call per step instead of two. The target, checked against the
# package's:

# %%
schedule = teacher.schedule
abar = schedule.alphas_cumprod.double()
t, t_end = int(0.75 * (T - 1)), int(0.25 * (T - 1))
a_t, a_end = abar[t].view(1, 1, 1, 1), abar[t_end].view(1, 1, 1, 1)
g = torch.Generator().manual_seed(SEED)
z_t, z_end = (torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
ratio = ((1 - a_end) / (1 - a_t)).sqrt()
ours = (z_end - ratio * z_t) / (a_end.sqrt() - ratio * a_t.sqrt())
torch.testing.assert_close(ours, distillation_target(z_t, z_end, a_t, a_end))
record = student.distillation
Markdown(f"The target equals `mnistdiff.training.distill.distillation_target`. This profile's student was distilled "
         f"in {len(record['rounds'])} rounds ({', '.join(str(r['steps']) for r in record['rounds'])} steps) in "
         f"{student.meta.get('seconds', float('nan')) / 60:.1f} minutes, and samples at the timesteps "
         f"{', '.join(str(s + 1) for s in record['timesteps'])} with the guidance weight w = {record['guidance']:g} "
         "folded in (`python -m mnistdiff distill`).")

# %% [markdown]
# ## 6. The student in your browser
#
# Four calls of a small latent network and one of the decoder take milliseconds, so in the rendered book this
# chapter's student runs on the page, in your browser, exported to ONNX (`python -m mnistdiff export`) and run by
# onnxruntime-web. Compare it with its teacher at 4 steps (8 calls) and at its most, and with chapter 2's pixel DDPM drawn
# by this chapter's DPM-Solver++(2M) SDE on Karras et al.'s σ in 4 to 16 calls, no decoder needed: its page loop is
# the package's `dpm_solver_pp_2m_sde`, checked against it from the same noise. (In Jupyter the box stays empty.)
#
# <div class="mnistdiff-generator"></div>

# %% [markdown]
# ## Exercises
#
# :::{admonition} Exercise 9.1 (derivation): the first-order step is DDIM
# :class: tip
# Show that $x_s = \frac{b_s}{b_t}x_t - a_s(e^{-h} - 1)\hat x_0$ with $h = \lambda_s - \lambda_t$ equals DDIM's
# $a_s\hat x_0 + b_s\hat\epsilon$, $\hat\epsilon = (x_t - a_t\hat x_0)/b_t$, and check it on the trained DDPM.
# :::
#
# :::{admonition} Solution 9.1
# :class: dropdown
# $e^{-h} = \frac{a_t b_s}{b_t a_s}$, so $-a_s(e^{-h} - 1)\hat x_0 = a_s\hat x_0 - \frac{a_t b_s}{b_t}\hat x_0$, and
# $x_s = a_s\hat x_0 + \frac{b_s}{b_t}(x_t - a_t\hat x_0) = a_s\hat x_0 + b_s\hat\epsilon$. The cell runs both on the
# DDPM's first step.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 9.1: one first-order DPM-Solver++ step against one DDIM step on the trained DDPM.
with torch.no_grad():
    pts, den, _ = ddpm_path(ddpm.unet, ddpm.schedule, 10, spacing="linspace")
    x0_hat = den(x_T.double(), 0)
    here, there = pts[0], pts[1]
    h = math.log(there.a / there.b) - math.log(here.a / here.b)
    dpm_first = (there.b / here.b) * x_T.double() - there.a * math.expm1(-h) * x0_hat
    ddim = there.a * x0_hat + there.b * (x_T.double() - here.a * x0_hat) / here.b
    torch.testing.assert_close(dpm_first, ddim)
print("first-order DPM-Solver++ = DDIM on the first step")

# %% [markdown]
# :::{admonition} Exercise 9.2 (an experiment): where the steps go
# :class: tip
# Karras et al. chose $\rho = 7$. Measure the Gaussian toy's error of DPM-Solver++(2M) at 10 points for
# $\rho = 1$ (evenly spaced $\sigma$), 3 and 7, and explain the ranking.
# :::
#
# :::{admonition} Solution 9.2
# :class: dropdown
# Evenly spaced $\sigma$ ($\rho = 1$) spends almost every step at high noise, where the ODE is nearly straight,
# and leaves one huge step for the low-noise end, where it bends: the worst. Larger $\rho$ moves the steps towards
# low noise; the cell prints the three errors.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 9.2: DPM-Solver++(2M) on the toy with three spacings.
for rho in (1.0, 3.0, 7.0):
    sig = karras_sigmas(0.002, 80, 10, rho=rho)
    pts = [PathPoint(1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s), 0.0, 0.0) for s in sig]
    pts = [*pts, PathPoint(1.0, 0.0, 0.0, 0.0)]
    a0, b0 = pts[0].a, pts[0].b
    spread = math.sqrt(a0**2 * S0**2 + b0**2)
    x = a0 * MU + spread * torch.randn(4000, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    err = float((dpm_solver_pp_2m_inline(gauss_denoise(pts), pts, x) - (MU + S0 * (x - a0 * MU) / spread)).abs().max())
    print(f"ρ = {rho:g}: max error {err:.2e}")

# %% [markdown]
# :::{admonition} Exercise 9.3 (a change to the code): the teacher at the student's budget
# :class: tip
# Without distillation, how good is the teacher at the student's number of network evaluations? Sample chapter 7's
# model with DDIM ($\eta = 0$) and with DPM-Solver++(2M) at half the student's steps (guidance doubles each call),
# ask a classifier which digits it drew, and compare with the student.
# :::
#
# :::{admonition} Solution 9.3
# :class: dropdown
# At so few steps the teacher's digits are malformed or the wrong class, while the student's are clean: the
# solvers cannot recover what a four-call budget loses, the student was trained for it. The cell prints the
# accuracy of each against the digits asked for (the project's classifier).
# :::

# %% tags=["solution", "hide-cell"]
# Solution 9.3: the teacher at the student's budget of network evaluations, against the student.
ask = balanced_labels(100)
half = max(1, student.sampling_defaults()["steps"] // 2)
candidates = {f"teacher, DDIM-{half}, η = 0": (teacher, {"sampler": "ddim", "steps": half, "eta": 0.0}),
              f"teacher, DPM-Solver++(2M), {half} steps": (teacher, {"sampler": "dpmpp_2m", "steps": half}),
              "student": (student, {})}
for name, (model, options) in candidates.items():
    images, _ = model.sample(100, labels=ask, seed=SEED, device=DEVICE, **options)
    _, probs = classifier_features(images, device=DEVICE)
    print(f"{name}: accuracy {float((probs.argmax(1).cpu() == ask).float().mean()):.2f}")
