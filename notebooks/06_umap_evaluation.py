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
# # 6. Evaluation: how close to real digits, and at what cost?
#
# The course has built many ways of making a digit: the DDPM of chapter 2, DDIM with any number of
# steps and any $\eta$ (chapter 3), the VAE's prior (chapter 4) and latent diffusion (chapter 5).
# Looking at sample grids tells us a lot, but not which of two good generators is better, or by
# how much.
#
# Some of these models do give a number about likelihood. The DDPM's training objective comes from a
# variational bound on $-\ln p_\theta(x_0)$ (Ho et al., [arXiv:2006.11239](https://arxiv.org/abs/2006.11239),
# eq. 5) and the VAE's loss is an ELBO (chapter 4). Converted to **bits per dimension**, each is an
# *upper bound* on the negative log-likelihood: Ho et al. report $\le 3.70$ bits/dim on CIFAR-10 for
# their model trained on the true bound (Table 1). We still compare **samples**, for three reasons.
# A bound is not the likelihood, and how loose it is differs from model to model. The samplers of
# chapter 3 change the samples but not the bound of the network they run, and latent diffusion's
# bound is on codes, not pixels. And likelihood and sample quality can disagree widely (Theis, van den
# Oord & Bethge, [arXiv:1511.01844](https://arxiv.org/abs/1511.01844)): Ho et al.'s $L_\text{simple}$
# model has their best FID but a worse bound (3.75 bits/dim). So we compare **distributions of
# samples**: a few thousand generated digits against a few thousand real ones, through the eyes of a
# feature extractor, with every number shown next to the value that *real* digits reach at the same
# sample count — the **floor**. The symbols follow the course's [notation](../notation.md).
#
# **Learning goals.** After this chapter you can
#
# - compute the **Fréchet distance** (FID) and explain why it must always be read next to a real-vs-real floor;
# - say what **KID**, **precision and recall**, classifier confidence, class balance and the
#   nearest-training-image distance each detect;
# - fit a **UMAP** of real digits and place generated digits on it, without letting the samples shape the map;
# - measure the overlap of two sets with a **k-NN two-sample test** (0.5 = indistinguishable);
# - say how precision, classifier confidence and a UMAP picture can each be fooled, and what catches it;
# - rank the course's generators by quality and speed, and write the results file the book reads.

# %% tags=["remove-input"]
# what this chapter spends its time on with the book profile (the time itself is the book's, under the title)

from IPython.display import Markdown

from mnistdiff import get_profile

BOOK = get_profile("book")
Markdown(f"""**Run time.** the longest chapter of the course with the `book` profile: {BOOK.eval_samples:,} samples
per generator ({BOOK.ancestral_samples} for the {BOOK.ddpm.diffusion.timesteps}-step samplers), most of the time spent
sampling the pixel-space model. Other step counts, $\\eta$ and solvers are read from a benchmark run at the same
$n$ rather than sampled here. In the book, the time of the run it shows is under the title; every chapter's is in
the [introduction](../intro.md).""")

# %% [markdown]
# *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# Under the `smoke` profile (the one the tests run, 128 samples per generator) the models train for
# seconds and draw blobs, so the scores of the generators only show that the machinery works. The
# sentences that read the generators' scores are generated from the run, so under this profile they
# describe blobs; the ones the book shows read the `book` profile's models. The real-digit floors, the
# checks against the package and the measurements on blurred digits and noise mean the same in both.
# The smoke profile's blobs even show the first failure of *How these numbers mislead* in the
# extreme: their precision can come out near 1 while their recall is near 0.
# :::

# %%
import time

T_START = time.perf_counter()

import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from mnistdiff import DEFAULT_ETA, default_device, get_ddpm, get_ldm, get_profile, load_mnist, show_grid
from mnistdiff.evaluation.metrics import (
    classifier_features, frechet_distance, kernel_inception_distance, precision_recall, reference_features, space_key,
)
from mnistdiff.evaluation.umap_eval import embed, fit_umap, knn_two_sample_accuracy

# Ho et al., Table 1 (CIFAR-10), quoted above: the bound in bits/dim of their model trained on the true bound, and of
# their L_simple model, whose samples have their best FID
HO_BITS_PER_DIM = {"true bound": 3.70, "L_simple": 3.75}
assert HO_BITS_PER_DIM["L_simple"] > HO_BITS_PER_DIM["true bound"]  # the better sampler has the worse bound

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
N = PROFILE.eval_samples  # samples per generator, and real images in every floor
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}, {N} samples per generator")

# %% [markdown]
# ## Comparing features, not pixels
#
# Two sets of digits can differ in ways that pixel distances are blind to (a stroke shifted by one
# pixel is "far" in pixel space) and agree in ways that do not matter. Heusel et al. compare images
# through the features of a trained network instead. They used Inception-v3, trained on ImageNet
# photographs; for MNIST the usual, more meaningful choice is a **classifier trained on MNIST**, and
# the resulting number is called *classifier-FID*. Ours (`mnistdiff.evaluation.classifier`) is a small CNN
# whose 128-dimensional penultimate layer $\varphi(x)$ is the feature space of the metrics below; a
# second, independently trained network gives every metric a second opinion (*FID sees what its network
# sees*, below). Both are committed with the repository, so every reader gets the same numbers; numbers
# from other papers, with other feature extractors, are **not** comparable with these.

# %%
# NBVAL_CHECK_OUTPUT
feats, probs = classifier_features(load_mnist("test").images[:4], device="cpu")
print("features φ(x):", tuple(feats.shape), "  class probabilities:", tuple(probs.shape))
print("labels of those four:", load_mnist("test").labels[:4].tolist(), " predicted:", probs.argmax(1).tolist())
assert feats.shape[1] == 128  # the dimension of φ quoted below

# %% [markdown]
# ## The Fréchet distance
#
# Fit a Gaussian to each set of features — mean $\mu$ and covariance $\Sigma$ — and measure the
# Fréchet (2-Wasserstein) distance between the two Gaussians (Heusel et al., *GANs Trained by a Two
# Time-Scale Update Rule Converge to a Local Nash Equilibrium*,
# [arXiv:1706.08500](https://arxiv.org/abs/1706.08500), eq. 6):
#
# $$
# d^2\big((\mu_r, \Sigma_r), (\mu_g, \Sigma_g)\big)
# = \lVert \mu_r - \mu_g \rVert_2^2 + \operatorname{tr}\!\Big(\Sigma_r + \Sigma_g - 2\,\big(\Sigma_r \Sigma_g\big)^{1/2}\Big).
# $$
#
# The first term compares where the two clouds are, the second their shapes. Written out with
# SciPy's general matrix square root, and checked against `mnistdiff.evaluation.metrics.frechet_distance`
# (which computes the same trace from a symmetric eigendecomposition, more robustly) on real
# training digits against the real test set:


# %%
def frechet(f_r: np.ndarray, f_g: np.ndarray) -> float:
    """‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) between Gaussians fitted to two feature sets (N, D)."""
    mu_r, mu_g = f_r.mean(0), f_g.mean(0)
    cov_r, cov_g = np.cov(f_r, rowvar=False), np.cov(f_g, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_r @ cov_g).real  # round-off can leave a tiny imaginary part
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(cov_r + cov_g - 2 * covmean))


test_feats = reference_features(DEVICE)[0].double().numpy()  # all 10,000 test digits: the reference
real_train = load_mnist("train").subset(N, seed=SEED)
real_feats = classifier_features(real_train.images, device=DEVICE)[0].double().numpy()
ours = frechet(real_feats, test_feats)
torch.testing.assert_close(ours, frechet_distance(real_feats, test_feats), rtol=1e-3, atol=1e-3)
print(f"FID of {N} real training digits against the test set: {ours:.3f}   (matches mnistdiff.evaluation.metrics)")

# %% [markdown]
# :::{admonition} Exercise 6.1 (derivation): FID of a shifted copy
# :class: tip
# Move every feature vector of a set by the same vector, $\varphi_g = \varphi_r + \delta$. Show that the
# Fréchet distance between the two fitted Gaussians is exactly $\lVert \delta \rVert^2$, whatever
# $\Sigma_r$ is. What does that say about the units of FID: if a generator's features are all off by
# half as much, what happens to its FID? Check it on the real training features with a random
# direction $\delta$ of length 1 and 2.
# :::
#
# :::{admonition} Solution 6.1
# :class: dropdown
# A constant shift moves the mean, $\mu_g = \mu_r + \delta$, and leaves the covariance alone
# ($\Sigma_g = \Sigma_r$: the covariance is taken about the mean). The first term is $\lVert \delta \rVert^2$.
# In the second, $\Sigma_r \Sigma_g = \Sigma_r^2$, whose positive semi-definite square root is $\Sigma_r$,
# so $\operatorname{tr}(\Sigma_r + \Sigma_r - 2\Sigma_r) = 0$. FID is a *squared* distance in feature
# units: an offset half as large costs a quarter of the FID; an offset of length 1 costs 1, to be read
# against the floor printed above. The cell below prints FID 1.000 and 4.000 for
# $\lVert \delta \rVert = 1$ and 2, from our `frechet` and from the package.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 6.1: FID(φ, φ + δ) = ‖δ‖², with the inline frechet and with the package.
direction = np.random.default_rng(SEED).normal(size=real_feats.shape[1])
direction /= np.linalg.norm(direction)
for length in (1.0, 2.0):
    delta = length * direction
    fid_shift = frechet_distance(real_feats, real_feats + delta)
    torch.testing.assert_close(fid_shift, length**2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(frechet(real_feats, real_feats + delta), length**2, rtol=1e-4, atol=1e-4)
    print(f"‖δ‖ = {length:g}: FID = {fid_shift:.3f}, ‖δ‖² = {length**2:.3f}")

# %% [markdown]
# That number is the **floor**: not zero, although both sets are real digits. A mean and a
# covariance estimated from $n$ samples carry sampling noise, and the distance adds that noise up
# in every one of the 128 dimensions, so FID is **biased upwards, roughly like $1/n$**. Below, the
# FID of $n$ real training digits against the test set, for growing $n$: only numbers computed at
# the *same* $n$ can be compared, and a generator's FID means something only next to the floor at
# its $n$.

# %%
pool = load_mnist("train").subset(max(N, 1000), seed=SEED + 1)
pool_feats = classifier_features(pool.images, device=DEVICE)[0].double().numpy()
sizes = [n for n in (25, 50, 100, 200, 500, 1000, 2000, 5000, 10_000) if n <= len(pool)]
floor_curve = [frechet_distance(pool_feats[:n], test_feats) for n in sizes]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.loglog(sizes, floor_curve, "o-", label="real training digits vs test set")
ax.loglog(sizes, floor_curve[0] * sizes[0] / np.array(sizes), "k:", lw=1, label="∝ 1/n")
ax.axvline(N, color="C3", lw=1, label=f"n = {N}, this profile's sample count")
ax.set(xlabel="number of samples n", ylabel="FID", title="FID's floor falls with n")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
print("FID floor:", ", ".join(f"n = {n}: {f:.2f}" for n, f in zip(sizes, floor_curve)))

# %% [markdown]
# :::{admonition} Exercise 6.2 (derivation): where the floor comes from
# :class: tip
# Let $n_1$ and $n_2$ feature vectors be independent draws from one distribution with covariance
# $\Sigma$. Show that the first term of FID between them has expectation
# $$\mathbb E\,\lVert \hat\mu_1 - \hat\mu_2 \rVert^2 = \operatorname{tr}\Sigma \,\Big(\frac1{n_1} + \frac1{n_2}\Big),$$
# so that for the floor ($n$ digits against the $m = 10{,}000$ test digits) it falls like $1/n$ and is
# not 0 at any finite $n$. Check it: split random sets of $2n$ test digits into two halves, 50 times,
# and compare the average mean term with $2\operatorname{tr}\Sigma / n$ for $n = 25, 50, 100$.
# :::
#
# :::{admonition} Solution 6.2
# :class: dropdown
# Each sample mean is unbiased with covariance $\Sigma/n_1$ (and $\Sigma/n_2$), and the two are
# independent, so $v = \hat\mu_1 - \hat\mu_2$ has mean 0 and covariance $\Sigma(1/n_1 + 1/n_2)$. For
# any random vector with mean 0,
# $\mathbb E\lVert v \rVert^2 = \sum_i \mathbb E v_i^2 = \operatorname{tr}\operatorname{Cov}(v)$,
# which gives the formula. (Two disjoint halves of one finite set behave exactly like independent
# draws here: the covariance of the difference of their means is $2S^2/n$, with $S^2$ the set's own
# covariance.) The cell prints the measured mean term next to the prediction and checks that they
# agree to within two standard errors of the 50 repeats. The covariance term has a bias of the same order
# (estimated eigenvalues spread out, and the trace of the square root is concave), so the whole floor
# follows $1/n$, as the figure shows; the mean term is the part of it we can write down exactly.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 6.2: the mean term between two halves of random test sets against 2 tr Σ / n.
trace_cov = np.trace(np.cov(test_feats, rowvar=False))
split_rng = np.random.default_rng(SEED)
for n in (25, 50, 100):
    terms = []
    for _ in range(50):
        idx = split_rng.choice(len(test_feats), 2 * n, replace=False)
        terms.append(((test_feats[idx[:n]].mean(0) - test_feats[idx[n:]].mean(0)) ** 2).sum())
    predicted = trace_cov * (1 / n + 1 / n)
    print(f"n = {n:3d}: mean term {np.mean(terms):.3f} ± {np.std(terms) / np.sqrt(50):.3f}, "
          f"predicted tr Σ (1/n + 1/n) = {predicted:.3f}")
    assert 0.75 < np.mean(terms) / predicted < 1.33
    assert abs(np.mean(terms) - predicted) < 2 * np.std(terms) / np.sqrt(50)  # within two standard errors

# %% [markdown]
# ## More than one number
#
# FID mixes up two different failures: samples that look wrong, and samples that look right but
# cover only part of the data (say, only 1s and 7s). The other metrics of `mnistdiff.evaluation.metrics.evaluate`
# separate them:
#
# - **KID** (Bińkowski et al., *Demystifying MMD GANs*, [arXiv:1801.01401](https://arxiv.org/abs/1801.01401), §3):
#   the squared maximum mean discrepancy with the kernel $k(x, y) = \big(\tfrac1d x^\top y + 1\big)^3$,
#   estimated without bias and averaged over subsets,
#   $\widehat{\mathrm{MMD}}^2 = \tfrac{1}{m(m-1)}\sum_{i \ne j} k(x_i, x_j) + \tfrac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j) - \tfrac{2}{m^2}\sum_{i, j} k(x_i, y_j)$.
#   Unbiased, so its floor is about 0 at any $n$ (it can even be slightly negative).
# - **Precision and recall** (Kynkäänniemi et al., *Improved Precision and Recall Metric for Assessing
#   Generative Models*, [arXiv:1904.06991](https://arxiv.org/abs/1904.06991), eqs. 1–3): around every
#   real feature vector put a ball reaching its $k$-th nearest real neighbour ($k = 3$); the union of
#   the balls estimates the real manifold,
#   $f(\varphi, \Phi) = 1$ if $\lVert \varphi - \varphi' \rVert_2 \le \lVert \varphi' - \mathrm{NN}_k(\varphi', \Phi) \rVert_2$ for some $\varphi' \in \Phi$.
#   **Precision** $= \frac{1}{|\Phi_g|}\sum_{\varphi_g} f(\varphi_g, \Phi_r)$ is the fraction of samples that
#   land on the real manifold (quality); **recall** $= \frac{1}{|\Phi_r|}\sum_{\varphi_r} f(\varphi_r, \Phi_g)$
#   the fraction of real digits that land on the generated one (coverage).
# - **Confidence** (the classifier's mean top probability: does it look like *some* digit?), the
#   **class entropy** of the predicted labels ($\log_2 10 \approx 3.32$ bits when all ten digits are
#   equally common), and the **distance to the nearest training image** in pixels: close to the
#   floor means no copying; near 0 would mean the model memorised training digits.
#
# Precision and recall in code: the radius of every ball is the distance to the $(k+1)$-th closest
# point of the same set (the closest is the point itself), and a point is covered when it lies in at
# least one ball of the other set. The real set is a seeded subset of $n$ test digits, so that both
# sets have the same size, as in the paper; this is the floor's precision and recall, checked against
# `mnistdiff.evaluation.metrics.precision_recall`:


# %%
def precision_recall_knn(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al.'s k-NN-ball precision and recall of features fake (n_f, D) against real (n_r, D)."""
    real, fake = real.double(), fake.double()

    def radii(x: torch.Tensor) -> torch.Tensor:  # distance to the k-th nearest *other* point of the set
        return torch.cdist(x, x).topk(k + 1, largest=False).values[:, k]

    precision = (torch.cdist(fake, real) <= radii(real)[None, :]).any(1).double().mean()  # fake in a real ball
    recall = (torch.cdist(real, fake) <= radii(fake)[None, :]).any(1).double().mean()  # real in a fake ball
    return precision.item(), recall.item()


# the package's reference for precision/recall: a seeded subset of n test digits (seed + 1)
pr_idx = torch.randperm(len(test_feats), generator=torch.Generator().manual_seed(SEED + 1))[:N]
pr_real = torch.from_numpy(test_feats)[pr_idx]
ours = precision_recall_knn(pr_real, torch.from_numpy(real_feats))
torch.testing.assert_close(ours, precision_recall(pr_real, real_feats, k=3), rtol=0, atol=1e-12)
print(f"{N} real training digits against {N} test digits: precision {ours[0]:.3f}, recall {ours[1]:.3f}"
      "   (matches mnistdiff.evaluation.metrics)")
assert max(ours) < 1  # real digits against real digits do not reach 1 (below)
assert abs(np.log2(10) - 3.32) < 0.005  # the class entropy of ten equally common digits, in bits (above)

# %% [markdown]
# Even real digits against real digits do not reach 1: a ball built from $k = 3$ neighbours misses
# part of the manifold, so precision and recall, like FID, are read against this floor.
#
# :::{admonition} Exercise 6.3 (an experiment): KID's floor and FID's floor
# :class: tip
# KID is an *unbiased* estimate of the squared MMD; FID is a biased estimate of the Fréchet distance.
# *Predict* what happens to each floor when $n$ grows from 100 to 1000 real training digits (against
# the test set). Then measure both with the package's `frechet_distance` and `kernel_inception_distance`.
# :::
#
# :::{admonition} Solution 6.3
# :class: dropdown
# FID's floor falls roughly tenfold, like $1/n$ (exercise 6.2): at $n = 100$ it is dominated by
# estimation noise. KID's floor stays near 0 at both sample counts, within its spread over the
# subsets, because an unbiased estimate of a distance that is (nearly) 0 has mean (nearly) 0 at any
# $n$; what $n$ changes is only its spread. That is the argument for KID when sample counts differ
# between papers, and the reason its values can be slightly negative. The cell prints both floors
# and checks that FID falls at least threefold while KID stays within three subset standard
# deviations of 0.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 6.3: FID and KID of real training digits vs the test set at n = 100 and n = 1000.
floors_63 = {}
for n in (100, 1000):
    kid, kid_std = kernel_inception_distance(pool_feats[:n], test_feats, subset_size=1000, num_subsets=50,
                                             seed=SEED, return_std=True)
    floors_63[n] = (frechet_distance(pool_feats[:n], test_feats), kid, kid_std)
    print(f"n = {n:4d}: FID floor {floors_63[n][0]:.3f}   KID floor {kid:+.5f} (std over subsets {kid_std:.5f})")
assert floors_63[100][0] > 3 * floors_63[1000][0]
assert all(abs(kid) < 3 * std for _, kid, std in floors_63.values())

# %% [markdown]
# ## The contestants
#
# `get_ddpm` and `get_ldm` load the checkpoints that chapters 2 and 5 stored (or train them, if this
# notebook runs on its own); the latent model carries its VAE. `course_generators` lists
# every way the course has of making a digit, each model with its $T$-step ancestral sampler and the package's
# default sampler, each with a function that draws $n$ digits from one seed, and
# `mnistdiff.evaluation.report` draws, scores and stores them (other step counts and samplers: below):

# %%
from mnistdiff.course.generators import course_generators
from mnistdiff.evaluation import report

ddpm = get_ddpm(device=DEVICE, progress=False)
ldm = get_ldm(device=DEVICE, progress=False)
vae = ldm.codec.vae
generators = course_generators(ddpm=ddpm, ldm=ldm, vae=vae, profile=PROFILE, device=DEVICE)
for g in generators:
    print(f"  {g.name:<20} {g.label}")

# %% [markdown]
# Each is sampled with the same seed, and timed — the wall-clock time a user waits, decoding
# included. The VAE's reconstructions are of the very training digits of the floor, so they
# show the best that latent diffusion, whose samples all pass through the same decoder, could reach.

# %%
samples = report.draw_samples(generators, N, seed=SEED, device=DEVICE)

# %%
rows = len(samples)
fig, axes = plt.subplots(rows, 1, figsize=(7, 0.62 * rows + 0.4))
for ax, s in zip(axes, samples.values()):
    show_grid(s.images[:16], nrow=16, ax=ax)
    ax.set_title(s.spec.label, fontsize=8, loc="left")
fig.tight_layout(pad=0.3)
plt.show()

# %% [markdown]
# ## Scores, next to the floor
#
# Every generator's samples go through `mnistdiff.evaluation.metrics.evaluate`; the floor is the same
# evaluation of $n$ real training digits (`mnistdiff.evaluation.metrics.real_floor`). Where the profile draws
# fewer samples from the slow $T$-step ancestral samplers (`PROFILE.ancestral_samples`), their row carries its
# own $n$ and is read against the floor at that $n$: every metric here depends on the sample count.

# %%
floor = report.floor_row(N, seed=SEED, device=DEVICE)
scores = report.score_samples(samples, seed=SEED, device=DEVICE)
# a generator drawn on fewer samples (the T-step samplers) is compared with the floor at its own n
other_floors = report.floors_for(scores, N, seed=SEED, device=DEVICE)

# %% [markdown]
# ## UMAP: a map of real digits
#
# Numbers hide *where* a generator goes wrong. UMAP (McInnes, Healy & Melville, *UMAP: Uniform
# Manifold Approximation and Projection for Dimension Reduction*,
# [arXiv:1802.03426](https://arxiv.org/abs/1802.03426), §2–3) draws a 2-D map that keeps each
# point's nearest neighbours near. It connects every point $x_i$ to its $k$ nearest neighbours
# with weights that fall off beyond the nearest one, and symmetrises them into a fuzzy graph,
#
# $$
# v_{j \mid i} = \exp\!\Big(-\frac{d(x_i, x_j) - \rho_i}{\sigma_i}\Big), \qquad
# v_{ij} = v_{j \mid i} + v_{i \mid j} - v_{j \mid i}\, v_{i \mid j},
# $$
#
# ($\rho_i$ the distance to the nearest neighbour, $\sigma_i$ set so that $\sum_j v_{j \mid i} = \log_2 k$);
# then it places points $y_i$ in the plane, where the similarity is $w_{ij} = (1 + a\lVert y_i - y_j \rVert^{2b})^{-1}$,
# by minimising the cross-entropy between the two graphs,
#
# $$
# C = \sum_{i \ne j} v_{ij} \log\frac{v_{ij}}{w_{ij}} + (1 - v_{ij}) \log\frac{1 - v_{ij}}{1 - w_{ij}} .
# $$
#
# The protocol matters (`mnistdiff.evaluation.umap_eval`): the map is **fitted on real digits only** (a seeded
# subset of the test set), so that no generator can bend it; held-out real digits and every
# generator's samples are then *placed* on it with the same `transform`, so they are comparable.
#
# ## The k-NN two-sample test
#
# How much do two clouds overlap? Pool $m$ points from each, and classify every point by the
# majority of its $k$ nearest *other* points (Friedman 2003; Lopez-Paz & Oquab,
# [arXiv:1610.06545](https://arxiv.org/abs/1610.06545)). The leave-one-out accuracy
#
# $$
# \mathrm{acc} = \frac{1}{2m} \sum_{i=1}^{2m} \mathbb 1\Big[\,\mathrm{majority}\{\ell_j : j \in \mathrm{NN}_k(i)\} = \ell_i\Big]
# $$
#
# is 0.5 when the sets cannot be told apart (up to noise of about $\pm 0.5/\sqrt{m}$) and 1 when they
# are fully separable. Written with a distance matrix, and checked against
# `mnistdiff.evaluation.umap_eval.knn_two_sample_accuracy` on the classifier features of real digits against
# samples of the pixel model's default sampler (the row after its $T$-step one):


# %%
def knn_accuracy(a: torch.Tensor, b: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy of telling a (m, D) from b (m, D); 0.5 = indistinguishable."""
    pooled = torch.cat([a, b]).double()
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).double()
    dist = torch.cdist(pooled, pooled)
    dist.fill_diagonal_(float("inf"))  # a point is not its own neighbour
    vote = labels[dist.topk(k, largest=False).indices].mean(1)
    correct = torch.where(vote == 0.5, 0.5, ((vote > 0.5).double() == labels).double())
    return correct.mean().item()


default = samples[next(g.name for g in generators if g.space == "pixel" and g.sampler != "ddpm")]
m = min(N, 1000, len(default.images))  # equal sets; the distance matrix is (2m)²
real_t = torch.from_numpy(real_feats[:m]).float()
gen_feats = classifier_features(default.images[:m], device=DEVICE)[0]
ours = knn_accuracy(real_t, gen_feats)
torch.testing.assert_close(ours, knn_two_sample_accuracy(real_t, gen_feats, k=5, seed=SEED), rtol=0, atol=1e-12)
print(f"k-NN accuracy, {m} real digits vs {m} samples of {default.spec.label}, classifier features: {ours:.3f}"
      "   (matches mnistdiff.evaluation.umap_eval)")

# %% [markdown]
# Now the map. Each panel shows the real digits the UMAP was fitted on, coloured by class, and in
# black the points placed on it: held-out real digits (first panel: what "indistinguishable" looks
# like), then real training digits (the floor), then each generator. Each title gives the k-NN
# accuracy of that set against the held-out real digits, in the map, in pixel space and in the
# classifier's features.

# %%
real_images, real_labels, floor_images = report.umap_reference_sets(PROFILE.umap_real, N, seed=SEED)
fig, umap_scores = report.umap_compare(samples, real_images, real_labels, floor_images, seed=SEED, device=DEVICE)
plt.show()

# %% [markdown]
# ## The table, and the results file
#
# All the numbers, the floor first. Arrows say which direction is better; the k-NN accuracies are
# best at 0.5; the nearest-training-image distance should be close to the floor's.
# `report.save_results` stores them in `results/<profile>/evaluation.json` (written to a
# temporary file and renamed, so a reader never sees half a file); the book's results page is
# built from it.

# %%
results, path = report.save_results("evaluation", PROFILE, device=DEVICE, n_samples=N, floor=floor, generators=scores,
                                    seed=SEED, umap_scores=umap_scores, other_floors=other_floors,
                                    umap_real=PROFILE.umap_real)
print("wrote", path)
display(Markdown(report.results_table(results)))

# %% [markdown]
# ## Quality against cost
#
# The table's FIDs cannot be set side by side as they are: where the ancestral samplers are scored
# on fewer samples, their FIDs carry the larger bias of a smaller $n$. That bias roughly *adds* to the
# distance FID measures (exercise 6.2), so the figure below plots **FID minus the real floor at the
# generator's own $n$**: an estimate of the distance left once the sampling bias is taken out, 0 for
# samples as good as real digits, comparable across $n$ though noisier at small $n$ (it can even come
# out below 0). A ratio to the floor would not do: the floor falls like $1/n$ while the distance does
# not, so one generator would score a ratio closer to 1 the fewer samples it is scored on.
#
# Every generator's excess FID against its sampling time per digit, the trade-off the course has been about:

# %%
gens = results["generators"]
# each model's default sampler: its row that is not the T-step ancestral one
default_of = {space: next(k for k, g in gens.items() if g["space"] == space and g["sampler"] != "ddpm")
              for space in ("pixel", "latent")}


def floor_at(n: int) -> dict:
    """The real floor at n samples: the table's main floor row, or the one stored for another n."""
    return results["floor"] if n == results["n_samples"] else results["floors"][str(n)]


excess = {name: g["fid"] - floor_at(g["n"])["fid"] for name, g in gens.items()}  # FID − floor at the same n


def ms(g: dict) -> str:
    """A generator's milliseconds per sample, to three significant digits or to the millisecond."""
    t = g["seconds_per_sample"] * 1e3
    return f"{t:,.0f}" if t >= 100 else f"{t:.3g}"


n_note = {name: "" if g["n"] == N else f" (n = {g['n']})" for name, g in gens.items()}

fig, ax = plt.subplots(figsize=(7.5, 4))
markers = {"pixel": "o", "latent": "s", "vae": "^"}
for i, (name, g) in enumerate(gens.items()):
    ax.scatter(g["seconds_per_sample"], excess[name], marker=markers[g["space"]], color=plt.cm.tab10(i % 10), s=40,
               label=g["label"] + n_note[name])
ax.axhline(0, color="k", ls=":", lw=1, label="real floor (at each n)")
ax.set_yscale("symlog", linthresh=1)  # linear within ±1 of the floor, logarithmic beyond
ax.set(xscale="log", xlabel=f"seconds per sample ({results['device']})", ylabel="FID − real floor at the same n",
       title="quality vs cost (○ pixels, □ latents, △ VAE)")
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
fig.tight_layout()
plt.show()

# %% [markdown]
# How many steps, and how much noise? Every step count and $\eta$ of DDIM (chapter 3) would be one more
# generator here, each drawing $n$ samples; `benchmarks/nfe_sweep.py` draws them once, on the book's pixel model
# and its latent model, at the book's $n$ and in both feature spaces, and this chapter reads its file
# (`mnistdiff.course.measured.book_result`). Each FID is a multiple of the floor at the same $n$ (both are
# scored at one $n$), 1 the best $n$ samples can show, the dotted line twice the floor:

# %%
from mnistdiff.course.measured import book_result
from mnistdiff.evaluation.nfe_sweep import NOT_MEASURED, plot_sweep

sweep = book_result("nfe_sweep.json")
ddim_sweep = None if sweep is None else {
    **sweep, "rows": [r for r in sweep["rows"] if r["model"] in ("ddpm", "ldm") and r["sampler"] == "ddim"]}
if ddim_sweep and ddim_sweep["rows"]:
    plot_sweep(ddim_sweep)
    plt.show()
else:
    display(Markdown(NOT_MEASURED))

# ## Reading the results
#
# A generator is good when its FID and KID are close to the floor's, its precision and recall close
# to the floor's, and its k-NN accuracies close to 0.5, always against the floor at the generator's
# own $n$. The table of this run, read that way:


# %% tags=["remove-input"]
def side(value: float, ref: float, higher: str = "above", lower: str = "below") -> str:
    """'above' / 'below' / 'level with' a reference value, as the value compares with it."""
    return higher if value > ref else lower if value < ref else "level with"


def vs_floor(name: str) -> str:
    """One generator's row read against the floor at its own n: FID, precision, recall."""
    g, f = gens[name], floor_at(gens[name]["n"])
    return (f"**{g['label']}** (n = {g['n']:,}): FID {g['fid']:.2f}, {abs(excess[name]):.2f} {side(g['fid'], f['fid'])} "
            f"the floor's {f['fid']:.2f}; precision {g['precision']:.3f}, {side(g['precision'], f['precision'])} "
            f"the floor's {f['precision']:.3f}; recall {g['recall']:.3f}, {side(g['recall'], f['recall'])} "
            f"its {f['recall']:.3f}")


# DDIM's steps and η, read from the benchmark's sweep (the book's models, its n, both spaces), the two η compared at
# the book profile's steps; S: this profile's steps, which the table's DDIM rows use
S, S_BOOK, other_eta = PROFILE.ddim_steps, BOOK.ddim_steps, 1 - DEFAULT_ETA


def swept(model: str, eta: float) -> dict[int, dict]:
    """The sweep's DDIM rows of ``model`` at ``eta``, by steps."""
    rows = ddim_sweep["rows"] if ddim_sweep else []
    return {r["steps"]: r for r in rows if r["model"] == model and r["eta"] == eta}


def sweep_ratio(r: dict, space: str) -> str:
    """A sweep row's FID in ``space`` as a multiple of the sweep's floor there."""
    return f"{r[space_key('fid', space)] / ddim_sweep['floor'][space_key('fid', space)]:.1f}×"


pixel_default = swept("ddpm", DEFAULT_ETA)
eta_pairs = [(space, swept(m, DEFAULT_ETA).get(S_BOOK), swept(m, other_eta).get(S_BOOK))
             for space, m in (("the pixel model", "ddpm"), ("latent diffusion", "ldm"))]
if pixel_default and all(a and b for _, a, b in eta_pairs):
    steps = sorted(pixel_default)
    falls = all(pixel_default[b]["fid"] < pixel_default[a]["fid"] for a, b in zip(steps, steps[1:]))
    path = " → ".join(f"{sweep_ratio(pixel_default[k], 'classifier')}" for k in steps)
    eta_reading = "; ".join(
        f"for {space}, η = {DEFAULT_ETA:g} is {side(-a['fid'], -b['fid'], 'better', 'worse')} in the classifier's "
        f"space ({sweep_ratio(a, 'classifier')} the floor against {sweep_ratio(b, 'classifier')}) and "
        f"{side(-a['fid_resnet'], -b['fid_resnet'], 'better', 'worse')} in the ResNet's ({sweep_ratio(a, 'resnet')} "
        f"against {sweep_ratio(b, 'resnet')})" for space, a, b in eta_pairs)
    ddim_bullet = (
        f"With η = {DEFAULT_ETA:g} the pixel model's FID goes {path} the floor from {steps[0]} to {steps[-1]} steps "
        f"(the benchmark, n = {ddim_sweep['n']:,}, classifier features){', falling at each larger step count' if falls else ', not falling steadily'}. "
        "For a well-trained network deterministic DDIM ($\\eta = 0$) usually does better than stochastic "
        "($\\eta = 1$) at few steps, because the noise injected at each step must be removed again by the few "
        "steps that follow; for a briefly trained network $\\eta = 1$ can win instead, because the fresh noise also "
        f"corrects the network's errors (chapter 3, section 7). At {S_BOOK} steps, {eta_reading}.")
else:
    ddim_bullet = NOT_MEASURED
# latent diffusion against the pixel model at the same steps and η, and against its decoder's bound
pix, lat = gens[default_of["pixel"]], gens[default_of["latent"]]
per_call = (pix["seconds_per_sample"] / pix["steps"]) / (lat["seconds_per_sample"] / lat["steps"])
rec, prior, fl = gens["vae_reconstruction"], gens["vae_prior"], results["floor"]
bound = (f"its FID, {lat['fid']:.2f}, is {lat['fid'] - rec['fid']:.2f} above the reconstructions' {rec['fid']:.2f}, "
         "and that gap is what the latent diffusion model itself loses" if lat["fid"] >= rec["fid"] else
         f"here its FID, {lat['fid']:.2f}, is below the reconstructions' {rec['fid']:.2f}, so the bound says nothing "
         "while both are this far from the floor")
# precision and recall, each against the floor at the generator's own n
names = [k for k in gens if k != "vae_reconstruction"]
groups = {(p, r): [f"*{gens[k]['label']}*{n_note[k]}" for k in names
                   if (gens[k]["precision"] >= floor_at(gens[k]["n"])["precision"]) == p
                   and (gens[k]["recall"] >= floor_at(gens[k]["n"])["recall"]) == r]
          for p in (True, False) for r in (True, False)}
narrow = [k for k in names if gens[k]["precision"] >= floor_at(gens[k]["n"])["precision"]
          and gens[k]["recall"] < floor_at(gens[k]["n"])["recall"]]
entropy_gap = [floor_at(gens[k]["n"])["class_entropy"] - gens[k]["class_entropy"] for k in narrow]  # bits
classes = ("" if not narrow else
           f" Their class entropy is within {max(map(abs, entropy_gap)):.2f} bits of the floor's, so all ten digits "
           "are there and what they miss is variety within the classes." if max(map(abs, entropy_gap)) < 0.1 else
           f" Their class entropy falls up to {max(entropy_gap):.2f} bits below the floor's: they miss whole digits.")
meaning = {(True, False): "precision at or above the floor's, recall below it; by the balls, what they draw lies "
                          "among real digits but covers too little of them." + classes,
           (False, True): "recall at or above the floor's, precision below it; they cover the real digits, but part "
                          "of their samples lie off the real manifold.",
           (False, False): "both below the floor's.", (True, True): "both at or above the floor's."}
pr_reading = "".join(f"\n  - {'; '.join(groups[key])}: {meaning[key]}" for key in meaning if groups[key])
below = [f"*{gens[k]['label']}*{n_note[k]}" for k in gens if excess[k] < 0]
verb, its = ("scores", "its") if len(below) == 1 else ("score", "their")
below_note = ("" if not below else f"\n\n{'; '.join(below)} {verb} a FID below the floor at {its} $n$: not better "
              "than real digits, but closer to them than $n$ samples can resolve.")
# memorisation: the nearest-training-image distance of each generator against the floor's at its n
closest = min(names, key=lambda k: gens[k]["nn_train_distance"] / floor_at(gens[k]["n"])["nn_train_distance"])
nn_ratio = gens[closest]["nn_train_distance"] / floor_at(gens[closest]["n"])["nn_train_distance"]
Markdown(f"""
{chr(10).join("- " + vs_floor(k) for k in gens)}{below_note}

A few things to look for in it:

- **DDIM steps and $\\eta$.** {ddim_bullet}
- **Latent diffusion** takes {ms(lat)} ms per sample (*{lat['label']}*) against the pixel model's {ms(pix)}
  (*{pix['label']}*): per network call, {per_call:.1f} times cheaper. Its quality is bounded by the **VAE reconstructions** row: {bound}.
- **The VAE prior** shows, in numbers, what chapter 4 showed in pictures: FID {prior['fid']:.2f} against the floor's
  {fl['fid']:.2f}, precision {prior['precision']:.3f} and recall {prior['recall']:.3f}, class entropy
  {prior['class_entropy']:.2f} bits against the floor's {fl['class_entropy']:.2f}.
- **Precision vs recall.** A generator with good precision but low recall makes nice digits of too few kinds; the
  class entropy and histogram say which digits are missing. Here:{pr_reading}
- **Memorisation.** A nearest-training-image distance well below the floor's would mean copying. The closest to the
  training digits is *{gens[closest]['label']}*, at {nn_ratio:.0%} of the floor's distance at its $n$
  ({"not near copying" if nn_ratio > 0.8 else "worth a look at its nearest training images"}); the VAE
  reconstructions, *supposed* to be close since they are copies of training digits, are at
  {rec['nn_train_distance'] / fl['nn_train_distance']:.0%}.
""")

# %%
# the lowest FID among the generators scored on all N samples (a FID on fewer samples is not comparable with it)
best = min((g for g in gens.values() if g["n"] == N and (g["space"] != "vae" or g["sampler"] == "prior")),
           key=lambda g: g["fid"])
fastest = min(gens.values(), key=lambda g: g["seconds_per_sample"] if g["sampler"] != "reconstruction" else np.inf)
print(f"lowest FID among the generators scored on {N} samples: {best['label']} ({best['fid']:.2f}; "
      f"floor {results['floor']['fid']:.2f})")
print(f"fastest generator: {fastest['label']} ({fastest['seconds_per_sample'] * 1e3:.2f} ms per sample)")

# %% [markdown]
# ## How these numbers mislead
#
# Each number above answers one narrow question, and each can be fooled by images that are plainly
# not good digits. Three measurements, each with what catches it.
#
# ### Precision rewards blur
#
# Blur the floor's own real training digits with a Gaussian of $\sigma = 1$ pixel: soft, washed-out
# digits, the kind an undertrained model draws. Their precision against the real test digits:


# %%
def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) images convolved with a normalised Gaussian of standard deviation sigma pixels."""
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    return F.conv2d(F.pad(images, (radius,) * 4, mode="replicate"), kernel)  # the -1 background stays -1


blurred = gaussian_blur(real_train.images, sigma=1.0)
blur_feats = classifier_features(blurred, device=DEVICE)[0].double()
blur_precision, blur_recall = precision_recall_knn(pr_real, blur_feats)
blur_fid = frechet_distance(blur_feats, test_feats)
rows_blur = [("real training digits (the floor)", floor["precision"], floor["recall"], floor["fid"]),
             ("the same digits, blurred (σ = 1)", blur_precision, blur_recall, blur_fid),
             (default.spec.label, *(scores[default.spec.name][key] for key in ("precision", "recall", "fid")))]
for name, prec, rec, fid in rows_blur:
    print(f"{name:<34} precision {prec:.3f}   recall {rec:.3f}   FID {fid:6.2f}")
assert blur_recall < floor["recall"] / 2 and blur_fid > floor["fid"]  # blur: recall collapses, FID rises

# the balls: how much of that precision do the 10 % largest real balls (around outlying digits) give?
real_radii = torch.cdist(pr_real, pr_real).topk(4, largest=False).values[:, 3]  # k = 3
small = real_radii < real_radii.quantile(0.9)
ball_precision = {}  # (precision, precision with only the 90 % smaller real balls)
for name, f in (("real training digits", torch.from_numpy(real_feats)), ("blurred digits", blur_feats)):
    inside = torch.cdist(f, pr_real) <= real_radii[None, :]
    ball_precision[name] = (inside.any(1).double().mean().item(), inside[:, small].any(1).double().mean().item())
    print(f"{name:<21} precision {ball_precision[name][0]:.3f}, "
          f"counting only the 90 % smaller real balls {ball_precision[name][1]:.3f}")
share_lost = {name: 1 - small_only / all_balls for name, (all_balls, small_only) in ball_precision.items()}
assert share_lost["blurred digits"] > 2 * share_lost["real training digits"]  # the large balls carry the blur

fig, axes = plt.subplots(2, 1, figsize=(7, 1.3))
show_grid(real_train.images[:16], nrow=16, ax=axes[0])
show_grid(blurred[:16], nrow=16, ax=axes[1])
axes[0].set_title("real training digits, and the same digits blurred (σ = 1 pixel)", fontsize=8, loc="left")
fig.tight_layout(pad=0.3)
plt.show()

# %% tags=["remove-input"]
default_precision = scores[default.spec.name]["precision"]
like_default = ("about as much as" if abs(blur_precision - default_precision) <= 0.01 else
                "less than" if blur_precision < default_precision else "more than")
Markdown(f"""The blurred digits keep {blur_precision / floor['precision']:.0%} of the floor's precision ({blur_precision:.3f}
against {floor['precision']:.3f}; {like_default} the package's default sampler reaches in this run's table,
{default_precision:.3f}), while their recall falls to {blur_recall:.3f} against the floor's {floor['recall']:.3f}. Precision asks only
whether a sample lies inside *some* real ball, and the balls around outlying real digits, whose third neighbour is far
away, are large: together they cover much of the space between the classes, where blurred digits fall. Drop the
largest tenth of the balls and the blurred digits lose {share_lost['blurred digits']:.0%} of their precision
({ball_precision['blurred digits'][0]:.3f} → {ball_precision['blurred digits'][1]:.3f}), the real digits only
{share_lost['real training digits']:.0%} of theirs ({ball_precision['real training digits'][0]:.3f} →
{ball_precision['real training digits'][1]:.3f}). **The fix** is to never read precision alone. Recall collapses for
the blurred digits (their own balls are small and tight, so few real digits fall in them), FID rises to
{blur_fid:.2f} against the floor's {floor['fid']:.2f}, and the floor says what precision real digits reach.""")

# %% [markdown]
# Naeem et al.'s *density* and *coverage* ([arXiv:2002.09797](https://arxiv.org/abs/2002.09797))
# count how many real balls contain a sample instead of asking whether one does, which makes them
# robust to such outliers.
#
# :::{admonition} Exercise 6.4 (a change to the code): the $k$ of the balls
# :class: tip
# Call `precision_recall_knn` with $k = 1$ and $k = 10$ instead of the paper's $k = 3$, for the real
# floor and for the blurred digits. *Predict* first: which way do precision and recall move, is the
# direction guaranteed, and does the blurred digits' precision come closer to the floor's?
# :::
#
# :::{admonition} Solution 6.4
# :class: dropdown
# A larger $k$ makes every ball larger (the $k$-th neighbour is never closer than the $(k-1)$-th),
# and a union of larger balls covers everything the smaller one did: precision and recall can only
# grow with $k$, for every set, which the cell checks. The balls of the real set grow, so more of the
# blurred digits fall inside them; the cell prints by how much the blurred digits' precision
# approaches the floor's. A large $k$ makes precision more lenient, a small $k$ more noisy (with
# $k = 1$ the floor itself drops well below 1): $k$ must be fixed, reported, and compared only with
# the floor at the same $k$.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 6.4: precision and recall of the floor and of the blurred digits at k = 1, 3, 10.
by_k = {}
for k_balls in (1, 3, 10):
    by_k[k_balls] = (precision_recall_knn(pr_real, torch.from_numpy(real_feats), k=k_balls),
                     precision_recall_knn(pr_real, blur_feats, k=k_balls))
    (fp, fr), (bp, br) = by_k[k_balls]
    print(f"k = {k_balls:2d}: floor precision {fp:.3f} recall {fr:.3f}   blurred precision {bp:.3f} recall {br:.3f}"
          f"   (floor − blurred precision: {fp - bp:.3f})")
for a, b in ((1, 3), (3, 10)):
    assert all(x <= y for x, y in zip(sum(by_k[a], ()), sum(by_k[b], ()))), "coverage must grow with k"

# %% [markdown]
# ### FID sees what its network sees
#
# Every number so far was measured in one network's features. A Fréchet distance is a distance
# *in those features*: what the network has learnt to ignore, FID cannot see. A classifier trained
# to name digits has every reason to ignore how sharp a stroke is, and the balls of precision above
# already showed blur slipping through. So the package measures in a second space too
# (`mnistdiff.evaluation.classifier.FEATURE_SPACES`): a small **ResNet**, trained independently (another
# architecture, another seed) and read differently. Its features are the spatial means of its three
# stages' activations, concatenated: the first stage works at full resolution and responds to the
# strokes' edges, the last to the digit's shape. Each channel is standardised over the training digits,
# and each stage is scaled so that the three weigh the same in a distance. Written out, against the package:

# %%
from mnistdiff.evaluation.classifier import load_classifier
from mnistdiff.evaluation.metrics import evaluate

resnet = load_classifier(DEVICE, space="resnet")
x = real_train.images[:8, :, 2:30, 2:30].to(DEVICE)  # the 28×28 digits
with torch.no_grad():
    h, stage_means = resnet.stem(x), []
    for stage in resnet.stages:
        h = stage(h)
        stage_means.append(h.mean(dim=(2, 3)))  # (8, width of the stage)
    phi2 = (torch.cat(stage_means, dim=1) - resnet.feature_mean) / resnet.feature_std  # standardised, stage-balanced
torch.testing.assert_close(phi2.cpu(), classifier_features(real_train.images[:8], device=DEVICE, space="resnet")[0])
print(f"ResNet features: {tuple(phi2.shape)} from stages of widths {[m.shape[1] for m in stage_means]}"
      "   (matches classifier_features(..., space='resnet'))")

# %% [markdown]
# `evaluate` and `real_floor` report every metric in both spaces (the ResNet's carry the suffix
# `_resnet`: `fid_resnet`, `precision_resnet`, ...), and so does every table of this chapter. First,
# blur of three widths, in both spaces, each FID read as a multiple of its own space's floor at the
# same $n$:

# %%
SIGMAS = (0.5, 0.7, 1.0)
blur_scores = {s: evaluate(gaussian_blur(real_train.images, s), seed=SEED, device=DEVICE, include_memorisation=False)
               for s in SIGMAS}
SPACES = {"classifier": "the classifier's", "resnet": "the ResNet's"}


def times_floor(m: dict, space: str, ref: dict) -> float:
    """A FID as a multiple of the floor's FID in the same space."""
    return m[space_key("fid", space)] / ref[space_key("fid", space)]


print(f"{'n = ' + str(N):<22}" + "".join(f"{'FID × floor, ' + s:>26}{'precision':>11}{'recall':>8}" for s in SPACES))
for s, m in {"real (the floor)": floor, **{f"blurred, σ = {s}": blur_scores[s] for s in SIGMAS}}.items():
    print(f"{s:<22}" + "".join(f"{times_floor(m, sp, floor):>26.1f}{m[space_key('precision', sp)]:>11.3f}"
                               f"{m[space_key('recall', sp)]:>8.3f}" for sp in SPACES))
assert all(times_floor(blur_scores[s], "resnet", floor) > times_floor(blur_scores[s], "classifier", floor)
           for s in SIGMAS)  # the ResNet's features see blur more

# %% [markdown]
# Then the contestants: the pixel model and latent diffusion at the default sampler, and the VAE's
# reconstructions, each as a multiple of the floor in each space:

# %% tags=["remove-input"]
pair = {space: gens[default_of[space]] for space in ("pixel", "latent")}  # each at its default sampler
with_rec = {**pair, "rec": gens["vae_reconstruction"]}
ratio = {(k, sp): times_floor(g, sp, floor_at(g["n"])) for k, g in with_rec.items() for sp in SPACES}
leader = {sp: min(pair, key=lambda k: ratio[(k, sp)]) for sp in SPACES}
blur7 = {sp: times_floor(blur_scores[0.7], sp, floor) for sp in SPACES}


def ranking(sp: str) -> str:
    a, b = leader[sp], "latent" if leader[sp] == "pixel" else "pixel"
    return f"{SPACES[sp]} features put {pair[a]['label']} ahead ({times(ratio[(a, sp)])} the floor against {times(ratio[(b, sp)])})"


agree = leader["classifier"] == leader["resnet"]


def times(v: float) -> str:
    """A multiple of the floor: one decimal below 10, none above."""
    return f"{v:.1f} ×" if v < 10 else f"{v:.0f} ×"


Markdown(f"""At n = {N:,}, {ranking("classifier")}; {ranking("resnet")}. {"The two spaces agree on the order" if agree else
"**The two spaces disagree on the order**"}. A σ = 0.7 blur of real digits costs {times(blur7["classifier"])} the floor in the
classifier's space and {times(blur7["resnet"])} in the ResNet's; the VAE's reconstructions, soft copies of the floor's own
digits, {times(ratio[("rec", "classifier")])} and {times(ratio[("rec", "resnet")])}. {"A latent model that draws clean but soft digits gains in the space that forgives softness" if leader["classifier"] == "latent" and leader["resnet"] == "pixel" else
"Where a model stands depends on what the features look at"}: **a FID is a distance in one network's features**, and
it measures only what that network sees. So a verdict should hold in two independent spaces, each with its floor, and
the grids should be looked at too; a model that looks good in one space only is not good.""")

# %% [markdown]
# ### Confidence on noise
#
# The classifier's mean top probability is meant to say "this looks like some digit". Feed it
# images of uniform noise:

# %%
n_noise = 500  # the same noise in every profile
noise = torch.rand(n_noise, 1, 32, 32, generator=torch.Generator().manual_seed(SEED)) * 2 - 1
noise_feats, noise_probs = classifier_features(noise, device=DEVICE)
noise_feats = noise_feats.double()
noise_hist = torch.bincount(noise_probs.argmax(1), minlength=10).double() / n_noise
print(f"{n_noise} uniform-noise images: mean max-softmax {noise_probs.max(1).values.mean():.3f} "
      f"(real floor {floor['confidence']:.3f}); {noise_hist.max():.0%} of them called a {noise_hist.argmax().item()}")

# an out-of-distribution check: each image's feature distance to its nearest real (test) digit
nn_real = torch.cdist(torch.from_numpy(real_feats), pr_real).min(1).values
nn_noise = torch.cdist(noise_feats, pr_real).min(1).values
print(f"feature distance to the nearest real digit, median: real training digits {nn_real.median():.2f}, "
      f"noise {nn_noise.median():.2f};  median real ball radius (k = 3) {real_radii.median():.2f}")
assert nn_noise.median() > 2 * nn_real.median() and noise_hist.max() > 0.9  # what catches the noise (below)

# %% [markdown]
# A softmax compares the logits with each other, not with anything the classifier has seen: an input
# far from all training images can still have one logit much larger than the others (Nguyen, Yosinski
# & Clune, [arXiv:1412.1897](https://arxiv.org/abs/1412.1897); Hendrycks & Gimpel,
# [arXiv:1610.02136](https://arxiv.org/abs/1610.02136)). Calibration (temperature scaling, Guo et al.,
# [arXiv:1706.04599](https://arxiv.org/abs/1706.04599)) makes the confidence honest on inputs *like*
# the training digits; it does not make it low on noise. **The fix** is an out-of-distribution check
# next to the confidence: here, the distance of each image's features to the nearest real digit,
# more than twice as large for noise as for real digits (the cell prints both), and the class
# histogram, which puts nearly all the noise into one class.
#
# :::{admonition} Exercise 6.5 (an experiment): the precision of noise
# :class: tip
# From the distances just printed, *predict* the precision and recall of the uniform-noise images
# against as many real test digits, and their FID. Then measure them for 500 noise images against
# 500 test digits, and for 128 against 128 (the smoke profile's sample count). Does $n$ matter?
# :::
#
# :::{admonition} Solution 6.5
# :class: dropdown
# At $n = 500$ the noise features lie outside every real ball (their nearest real digit is much
# farther away than a typical ball's radius): precision 0. The noise features sit close to each
# other, so their own balls are small and reach no real digit: recall 0 too. FID is above 100,
# higher than any generator's in the table. But at $n = 128$ the same noise scores a precision
# **near 1**: with so few real digits, the balls around outlying digits are wide (the largest is
# wider than the noise's typical distance to its nearest real digit), the noise features lie much
# closer to each other than to any real digit, and a single real ball swallows nearly all of them
# (it is the only one that holds any). This is the blur lesson in its extreme form: precision is
# only as reliable as its real set is large, and it must be read with recall (still 0) and FID. The
# cell prints these numbers and checks each claim; they use the full test set and fixed seeds, so
# they are the same in every profile.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 6.5: precision, recall and FID of uniform noise, against 500 and against 128 real test digits.
noise_fid = frechet_distance(noise_feats, test_feats)
noise_floor = frechet_distance(pool_feats[:len(noise_feats)], test_feats)  # real training digits at the same n
assert get_profile("smoke").eval_samples == 128  # the smoke profile's sample count
noise_pr, geometry = {}, {}
for n in (500, 128):
    ref_idx = torch.randperm(len(test_feats), generator=torch.Generator().manual_seed(SEED + 1))[:n]
    ref = torch.from_numpy(test_feats)[ref_idx]
    noise_pr[n] = precision_recall_knn(ref, noise_feats[:n])
    radii = torch.cdist(ref, ref).topk(4, largest=False).values[:, 3]
    to_real = torch.cdist(noise_feats[:n], ref).min(1).values.median()
    to_noise = torch.cdist(noise_feats[:n], noise_feats[:n]).median()
    balls_hit = (torch.cdist(noise_feats[:n], ref) <= radii[None, :]).any(0).sum().item()  # real balls holding noise
    geometry[n] = (radii.max().item(), to_real.item(), to_noise.item(), balls_hit)
    print(f"n = {n}: uniform noise precision {noise_pr[n][0]:.3f}, recall {noise_pr[n][1]:.3f};  largest real ball "
          f"{radii.max():.2f}, noise to the nearest real digit {to_real:.2f}, noise to noise {to_noise:.2f} (medians); "
          f"real balls holding noise: {balls_hit}")
print(f"FID of the {len(noise_feats)} noise images {noise_fid:.1f} (floor at n = {len(noise_feats)}: {noise_floor:.2f})")
assert noise_pr[500] == (0.0, 0.0) and noise_pr[128][1] == 0.0 and noise_pr[128][0] > 0.9
largest_ball, to_real, to_noise, balls_hit = geometry[128]
assert largest_ball > to_real and to_noise < to_real / 2 and balls_hit == 1  # n = 128: one wide ball holds the noise
assert noise_fid > 100 and noise_fid > max(s["fid"] for s in scores.values()) and noise_fid > 10 * noise_floor

# %% [markdown]
# ### UMAP places noise on the map
#
# `transform` puts a new point where its nearest *fitted* images are, wherever it really is. Fit a map
# on 800 of the real test digits, and place on it 200 held-out real digits and 200 of the noise images:

# %%
n_fit, n_show = 800, min(200, n_noise)
reducer = fit_umap(real_images[:n_fit], seed=SEED)
held_images, noise_images = real_images[n_fit : n_fit + n_show], noise[:n_show]
emb_fit = torch.from_numpy(np.asarray(reducer.embedding_, dtype=np.float64))
emb_held = torch.from_numpy(embed(reducer, held_images)).double()
emb_noise = torch.from_numpy(embed(reducer, noise_images)).double()


def pixels01(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [-1, 1] → (B, H·W) in [0, 1], the space the UMAP is fitted in."""
    return (x.double().flatten(1) + 1) / 2


fit_pixels = pixels01(real_images[:n_fit])
umap_rows = {}
for name, emb, imgs in (("held-out real digits", emb_held, held_images), ("uniform noise", emb_noise, noise_images)):
    umap_rows[name] = (torch.cdist(emb, emb_fit).min(1).values.median().item(),
                       torch.cdist(pixels01(imgs), fit_pixels).min(1).values.median().item())
    print(f"{name:<21} median distance to the nearest fitted digit: in the map {umap_rows[name][0]:.2f}, "
          f"in pixel space {umap_rows[name][1]:.2f}")
acc_map = knn_two_sample_accuracy(emb_held, emb_noise, k=5, seed=SEED)
acc_pixels = knn_two_sample_accuracy(held_images, noise_images, k=5, seed=SEED)
print(f"k-NN accuracy, held-out real vs noise: in the map {acc_map:.3f}, in pixel space {acc_pixels:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), layout="constrained")
labels_fit = real_labels[:n_fit].numpy()
for ax, (name, emb), colour in zip(axes, (("held-out real digits", emb_held), ("uniform noise", emb_noise)),
                                   ("black", "red")):
    ax.scatter(emb_fit[:, 0], emb_fit[:, 1], c=labels_fit, cmap="tab10", vmin=-0.5, vmax=9.5, s=4, alpha=0.4,
               linewidths=0)
    ax.scatter(emb[:, 0], emb[:, 1], c=colour, s=6, linewidths=0)
    ax.set_title(f"{name}, placed by transform\nmedian distance to the nearest fitted digit:\n"
                 f"map {umap_rows[name][0]:.2f}, pixels {umap_rows[name][1]:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"UMAP fitted on {n_fit} real digits (colour: class)", fontsize=10)
plt.show()

# %% tags=["remove-input"]
# a cluster's size in the map: the median distance of a fitted digit to the median point of its class's cluster
clusters = [emb_fit[torch.from_numpy(labels_fit == c)] for c in np.unique(labels_fit)]
cluster_radius = np.median([torch.cdist(e, e.median(0).values[None]).median().item() for e in clusters])
(held_map, held_pix), (noise_map, noise_pix) = umap_rows["held-out real digits"], umap_rows["uniform noise"]
Markdown(f"""In the map the noise lands on and between a few of the digit clusters, not in a region of its own: its
median distance to the nearest fitted point in the map, {noise_map:.2f} (a held-out real digit's: {held_map:.2f}),
is {noise_map / cluster_radius:.0%} of a cluster's typical radius (a fitted digit lies a median {cluster_radius:.2f} from the middle of its class's cluster),
and the k-NN test in the map tells it from held-out real digits with an accuracy of
{acc_map:.3f}{", short of a clean separation" if acc_map < 0.99 else ""}. In pixel space it is
{noise_pix / held_pix:.1f} times as far from its nearest fitted digit as a held-out real digit is ({noise_pix:.2f}
against {held_pix:.2f}), and the k-NN accuracy there is {acc_pixels:.3f}.
{"Only the original space shows plainly" if acc_pixels > acc_map else "The original space shows at least as plainly"}
that it is nothing like a digit.""")

# %% [markdown]
# **The fix**: read a UMAP picture for *where* samples fall (missing or crowded regions), never as
# proof that they are real; check the distance of each placed point to its nearest fitted image in
# the original space, and the k-NN accuracies in pixels and features that the table carries next to
# the one in the map.
#
# | the number | fooled by | read it with |
# |---|---|---|
# | precision | blurry digits (the large balls of outlying real digits) | recall, FID, the floor; density, coverage |
# | FID in one space | what that network ignores (blur, for the classifier) | a second, independent feature space |
# | confidence | noise, called one digit with near certainty | the class histogram; feature distance to real digits |
# | UMAP position | noise, placed among the clusters | distance to the nearest fitted image; k-NN accuracy off the map |

# %% [markdown]
# ## What we learned
#
# - Generators are compared through **features** of a network trained on the data (here an MNIST
#   classifier), with the **Fréchet distance**, **KID** and **precision/recall**; each number needs
#   its **real-vs-real floor** at the same sample count, because all of them depend on $n$.
# - A FID sees only what its network sees: the classifier's features forgive blur that an
#   independent ResNet's do not. A verdict should hold in **two independent feature spaces**.
# - **UMAP** gives a picture of where samples fall, if it is fitted on real data only and every set
#   is placed on it the same way; the **k-NN two-sample accuracy** turns the picture into a number,
#   0.5 for indistinguishable.
# - Every number can be fooled alone: precision by blur, confidence by noise, a UMAP position by
#   anything `transform` is given. Read them together, and next to the floor.

# %% tags=["remove-input"]
# the trade-off, read from the table: each generator's FID minus the floor at its own n, and its time per sample
def cost(name: str) -> str:
    return f"*{gens[name]['label']}*{n_note[name]}: {ms(gens[name])} ms per sample, FID {excess[name]:+.2f}"


diffusion = [k for k, g in gens.items() if g["space"] != "vae"]
pixel = [k for k in diffusion if gens[k]["space"] == "pixel"]
latent = [k for k in diffusion if gens[k]["space"] == "latent"]
best_pixel = min(pixel, key=excess.get)
best_latent = min([k for k in latent if gens[k]["n"] == N] or latent, key=excess.get)  # prefer the full n
listed = list(dict.fromkeys(["ddpm", best_pixel, best_latent]))
closer = excess[best_latent] < excess[best_pixel]
faster = gens["ddpm"]["seconds_per_sample"] / gens[best_latent]["seconds_per_sample"]
if pixel_default:  # the benchmark's DDIM with the default η, fewest and most steps (time ∝ network calls)
    fewest, most = min(pixel_default), max(pixel_default)
    few, full = pixel_default[fewest], pixel_default[most]
    price = ("at a price in quality" if min(few[k] - full[k] for k in ("fid", "fid_resnet")) > 0 else
             "at no price in quality in at least one space")
    steps_text = (f"DDIM buys speed with fewer steps ({most // fewest if most % fewest == 0 else most / fewest:g} "
                  f"times fewer network calls at {fewest} steps than at {most}), {price}: the benchmark's "
                  f"{sweep_ratio(few, 'classifier')} and {sweep_ratio(few, 'resnet')} the floor against "
                  f"{sweep_ratio(full, 'classifier')} and {sweep_ratio(full, 'resnet')}.")
else:
    steps_text = "What fewer DDIM steps cost in quality is not measured yet (`benchmarks/nfe_sweep.py`)."
lat_recall, lat_floor_recall = gens[best_latent]["recall"], floor_at(gens[best_latent]["n"])["recall"]
pixel_recall_ok = all(gens[k]["recall"] >= floor_at(gens[k]["n"])["recall"] for k in pixel)
recall_note = (f", though its recall is below the floor's ({lat_recall:.3f} against {lat_floor_recall:.3f}) where "
               "every pixel-space sampler's reaches it" if lat_recall < lat_floor_recall and pixel_recall_ok else "")
bounded = (f"It is bounded by its decoder, whose reconstructions score {excess['vae_reconstruction']:+.2f}."
           if excess[best_latent] >= excess["vae_reconstruction"] else
           f"Its decoder's reconstructions score {excess['vae_reconstruction']:+.2f}, no better: with models this far "
           "from the floor, the decoder's bound does not bind.")
ddpm_note = (f" Full DDPM is scored on only {gens['ddpm']['n']} samples, so its numbers are the least certain of the "
             "table." if gens["ddpm"]["n"] < N else "")
Markdown(f"""- The course's generators span a trade-off between quality and cost. Read at each generator's own $n$, with FID
  as its excess over the floor: {"; ".join(cost(k) for k in listed)}. {steps_text} Latent diffusion
  ({gens[best_latent]["label"]}) is {faster:.0f} times faster than full DDPM {"and" if closer else "but"} ends
  {"closer to the floor than any pixel-space sampler" if closer else
   "further from the floor than the best pixel-space sampler, " + gens[best_pixel]["label"]}{recall_note}.
  {bounded}{ddpm_note}""")

# %% [markdown]
# That ends the unconditional models. [Chapter 7](07_guidance.ipynb) answers the question they leave
# open, "can I ask for a 7?": it adds class conditioning and classifier-free guidance (Ho & Salimans,
# [arXiv:2207.12598](https://arxiv.org/abs/2207.12598)) to the latent model and measures their price
# with this chapter's tools. To go further on your own: train the full profile on a GPU
# (`python -m mnistdiff course --profile full`), or try another schedule and watch what it does to
# the table.

# %%
print(f"chapter 6 ran in {time.perf_counter() - T_START:.0f} s ({PROFILE.name} profile, {DEVICE})")
