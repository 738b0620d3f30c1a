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
# # 0. The whole idea in thirty lines
#
# A diffusion model learns to **undo noise**. Take a data set and blur it into pure Gaussian noise, a
# little at a time. Train a network that looks at a noisy point and says which noise was added.
# Then start from fresh noise and remove the predicted noise step by step: what is left looks like
# the data. That is all of it; the rest of the course makes each of these three moves precise
# (chapter 2), fast (chapter 3) and good on images (chapters 1, 4 to 7).
#
# Here the data are 2-D points in eight clusters on a circle instead of images, so that the code fits on one screen
# and runs in seconds on a CPU, with nothing but PyTorch. Symbols follow the course's
# [notation](../notation.md).

# %%
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown

torch.manual_seed(0)  # the same points, network and samples on every run

# %% [markdown]
# **The three moves.** (1) The data: points $x_0$ in eight clusters. (2) Noise them: at step $t$ of $T$,
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ with $\epsilon \sim \mathcal N(0, I)$, where
# $\bar\alpha_t$ falls from about 1 (clean) to about 0 (pure noise); a small network $\epsilon_\theta(x_t, t)$
# learns to predict $\epsilon$ by least squares. (3) Sample: start from $x_T \sim \mathcal N(0, I)$ and
# step back to $t = 0$, each step removing the predicted noise and adding back a little fresh noise
# (Ho et al.'s Algorithm 2, derived in chapter 2).

# %%
# 1. the data: 4,000 points in eight clusters on a circle of radius 2
n = 4_000
angle = 2 * math.pi * torch.randint(8, (n,)) / 8
data = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) + 0.1 * torch.randn(n, 2)

# 2. noise them, and train a network to predict the noise
T = 100
beta = torch.linspace(1e-3, 0.2, T)  # how much noise each step adds
alpha_bar = torch.cumprod(1 - beta, dim=0)  # how much of x_0 is left after t steps
net = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(),
                          torch.nn.Linear(128, 2))  # (x_t, noise level of step t) → predicted noise
opt = torch.optim.Adam(net.parameters(), lr=2e-3)
for step in range(3_000):
    x0, t = data[torch.randint(n, (1_024,))], torch.randint(T, (1_024,))
    eps = torch.randn_like(x0)
    x_t = alpha_bar[t, None].sqrt() * x0 + (1 - alpha_bar[t, None]).sqrt() * eps
    loss = (net(torch.cat([x_t, (1 - alpha_bar[t, None]).sqrt()], dim=1)) - eps).pow(2).mean()
    opt.param_groups[0]["lr"] = 2e-3 * (1 - step / 3_000)  # a learning rate that decays to 0
    opt.zero_grad()
    loss.backward()
    opt.step()

# 3. sample: start from noise, undo it one step at a time
x = torch.randn(1_000, 2)
with torch.no_grad():
    for t in reversed(range(T)):
        eps = net(torch.cat([x, (1 - alpha_bar[t]).sqrt().expand(len(x), 1)], dim=1))
        x = (x - beta[t] / (1 - alpha_bar[t]).sqrt() * eps) / (1 - beta[t]).sqrt()
        if t > 0:
            x = x + beta[t].sqrt() * torch.randn_like(x)

# %%
noise = torch.randn(1_000, 2)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, points, title in zip(axes, (data[:1_000], noise, x), ("the data", "pure noise (the start)", "samples")):
    ax.scatter(*points.T, s=2, alpha=0.6)
    ax.set(title=title, xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# The right panel was drawn from noise alone: every point started where the middle panel's points
# are, and a network that had only ever learnt to *name the noise* walked it towards the clusters.
# How close did it get? The distance from each point to the nearest point of the data tells:

# %%
def nearest(points: torch.Tensor) -> torch.Tensor:
    """Distance (N,) from each point (N, 2) to its nearest point of the data."""
    return torch.cdist(points, data).min(dim=1).values


d_samples, d_noise = nearest(x), nearest(noise)
near = 0.3  # three standard deviations of a cluster (the data's noise is 0.1)
assert d_samples.mean() < d_noise.mean() / 4, (d_samples.mean(), d_noise.mean())  # the samples moved to the data
assert alpha_bar[-1] < 1e-4 and alpha_bar[0] > 0.99  # x_T is pure noise, x_1 almost clean

# %% tags=["remove-input"]
Markdown(f"""Samples lie {d_samples.mean():.3f} from the data on average, against {d_noise.mean():.3f} for the
noise they started from; {(d_samples < near).float().mean():.0%} of them are within {near} of a data point (of
the noise: {(d_noise < near).float().mean():.0%}). The rest sit {"between the clusters" if (d_samples >= near).any()
else "nowhere else"}: a network this small, trained for seconds, blurs the gaps between them, and its final loss
(the squared error of the predicted noise) was {loss.item():.3f}. It cannot know the noise exactly, only its
best guess given $x_t$; a bigger network, trained longer, guesses better, which is what the chapters do for
images.""")

# %% [markdown]
# **What the course builds on this.** Chapter 1 replaces the little network by a UNet that sees
# images and the time. Chapter 2 derives why predicting the noise is the right objective and why
# the sampling step has exactly this form, and trains the model on MNIST. Chapter 3 samples in a few
# dozen steps instead of all of them. Chapters 4 and 5 move the diffusion into a small latent space,
# chapter 6 measures how good the samples are, and chapter 7 asks for a particular digit.
