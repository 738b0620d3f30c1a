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
# how much. None of these models gives us a likelihood we could compare, so we compare
# **distributions of samples** instead: a few thousand generated digits against a few thousand real
# ones, through the eyes of a feature extractor, with every number shown next to the value that
# *real* digits reach at the same sample count — the **floor**.
#
# **Learning goals.** After this chapter you can
#
# - compute the **Fréchet distance** (FID) and explain why it must always be read next to a real-vs-real floor;
# - say what **KID**, **precision and recall**, classifier confidence, class balance and the
#   nearest-training-image distance each detect;
# - fit a **UMAP** of real digits and place generated digits on it, without letting the samples shape the map;
# - measure the overlap of two sets with a **k-NN two-sample test** (0.5 = indistinguishable);
# - rank the course's generators by quality and speed, and write the results file the book reads.
#
# **Run time.** about 20 minutes on two CPU cores with the `book` profile (2,000 samples
# per generator, 100 for the 1000-step samplers), most of it sampling the pixel-space model;
# measured times in the [introduction](../intro.md). *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.

# %%
import time

T_START = time.perf_counter()

import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg
import torch
from IPython.display import Markdown, display

from mnistdiff import DEFAULT_ETA, default_device, get_ddpm, get_ldm, get_profile, load_mnist, show_grid
from mnistdiff.course.generators import course_generators
from mnistdiff.evaluation import report
from mnistdiff.evaluation.metrics import classifier_features, frechet_distance, reference_features
from mnistdiff.evaluation.umap_eval import knn_two_sample_accuracy
from mnistdiff.files import repo_root

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
# whose 128-dimensional penultimate layer $\varphi(x)$ is the feature space of every metric below.
# It is committed with the repository, so every reader gets the same numbers; numbers from other
# papers, with other feature extractors, are **not** comparable with these.

# %%
# NBVAL_CHECK_OUTPUT
feats, probs = classifier_features(load_mnist("test").images[:4], device="cpu")
print("features φ(x):", tuple(feats.shape), "  class probabilities:", tuple(probs.shape))
print("labels of those four:", load_mnist("test").labels[:4].tolist(), " predicted:", probs.argmax(1).tolist())

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
# That number is the **floor**: not zero, although both sets are real digits. A mean and a
# covariance estimated from $N$ samples carry sampling noise, and the distance adds that noise up
# in every one of the 128 dimensions, so FID is **biased upwards, roughly like $1/N$**. Below, the
# FID of $N$ real training digits against the test set, for growing $N$: only numbers computed at
# the *same* $N$ can be compared, and a generator's FID means something only next to the floor at
# its $N$.

# %%
pool = load_mnist("train").subset(max(N, 1000), seed=SEED + 1)
pool_feats = classifier_features(pool.images, device=DEVICE)[0].double().numpy()
sizes = [n for n in (25, 50, 100, 200, 500, 1000, 2000, 5000, 10_000) if n <= len(pool)]
floor_curve = [frechet_distance(pool_feats[:n], test_feats) for n in sizes]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.loglog(sizes, floor_curve, "o-", label="real training digits vs test set")
ax.loglog(sizes, floor_curve[0] * sizes[0] / np.array(sizes), "k:", lw=1, label="∝ 1/N")
ax.axvline(N, color="C3", lw=1, label=f"N = {N}, this profile's sample count")
ax.set(xlabel="number of samples N", ylabel="FID", title="FID's floor falls with N")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

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
#   Unbiased, so its floor is about 0 at any $N$ (it can even be slightly negative).
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
# ## The contestants
#
# `get_ddpm` and `get_ldm` load the checkpoints that chapters 2 and 5 stored (or train them, if this
# notebook runs on its own); the latent model carries its VAE. `course_generators` lists
# every generator of the course, each with a function that draws $N$ digits from one seed:

# %%
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
# evaluation of $N$ real training digits (`mnistdiff.evaluation.metrics.real_floor`). Where the profile draws
# fewer samples from the slow 1000-step samplers (`PROFILE.ancestral_samples`), their row carries its
# own $n$ and is read against the floor at that $n$: every metric here depends on the sample count.

# %%
floor = report.real_floor(N, seed=SEED, device=DEVICE)
scores = report.score_samples(samples, seed=SEED, device=DEVICE)
# a generator drawn on fewer samples (the 1000-step samplers) is compared with the floor at its own n
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
# samples of the package's default sampler (DDIM, `PROFILE.ddim_steps` steps, η = `DEFAULT_ETA`):


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


default = samples[f"ddim_{PROFILE.ddim_steps}_eta{DEFAULT_ETA:g}"]  # the package's default sampler
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
# accuracy of that set against the held-out real digits, in the map and in pixel space.

# %%
real_images, real_labels, floor_images = report.umap_reference_sets(PROFILE.umap_real, N, seed=SEED)
fig, umap_scores = report.umap_compare(samples, real_images, real_labels, floor_images, seed=SEED, device=DEVICE)
plt.show()

# %% [markdown]
# ## The table, and the results file
#
# All the numbers, the floor first. Arrows say which direction is better; the k-NN accuracies are
# best at 0.5; the nearest-training-image distance should be close to the floor's.
# `mnistdiff.evaluation.report.write_results` stores them in `results/<profile>/evaluation.json` (written to a
# temporary file and renamed, so a reader never sees half a file); the book's results page is
# built from it.

# %%
results = report.build_results(
    PROFILE.name, DEVICE, N, floor, scores, umap_scores=umap_scores, floor_umap_name=report.FLOOR_NAME,
    seed=SEED, extra={"umap_real": PROFILE.umap_real}, other_floors=other_floors,
)
path = report.write_results(results)
print("wrote", path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path)
display(Markdown(report.results_table(results)))

# %% [markdown]
# ## Quality against cost
#
# Left: FID against the number of DDIM steps for the package's default, stochastic DDIM
# ($\eta = 1$), with deterministic DDIM ($\eta = 0$) at `PROFILE.ddim_steps` steps (chapter 3 sweeps it
# over the steps), full DDPM and the floor for reference. Right: every generator's FID against its
# sampling time per digit — the trade-off the course has been about.

# %%
gens = results["generators"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.25]})
for eta, marker in ((0.0, "o-"), (1.0, "s--")):
    pts = sorted((g["steps"], g["fid"]) for g in gens.values()
                 if g["sampler"] == "ddim" and g["space"] == "pixel" and g["eta"] == eta)
    ax1.plot(*zip(*pts), marker, label=f"DDIM, η = {eta:g}")
ax1.axhline(gens["ddpm"]["fid"], color="C2", lw=1, label=f"DDPM, {gens['ddpm']['steps']} steps (n = {gens['ddpm']['n']})")
ax1.axhline(results["floor"]["fid"], color="k", ls=":", lw=1, label="real floor")
ax1.set(xscale="log", xlabel="sampling steps", ylabel="FID", title="DDIM: steps and η")
ax1.set_xticks(PROFILE.ddim_step_sweep, [str(s) for s in PROFILE.ddim_step_sweep])
ax1.minorticks_off()
ax1.legend(fontsize=8)
markers = {"pixel": "o", "latent": "s", "vae": "^"}
for i, g in enumerate(gens.values()):
    ax2.scatter(g["seconds_per_sample"], g["fid"], marker=markers[g["space"]], color=plt.cm.tab20(i % 20), s=40,
                label=g["label"])
ax2.axhline(results["floor"]["fid"], color="k", ls=":", lw=1, label="real floor")
ax2.set(xscale="log", xlabel=f"seconds per sample ({results['device']})", ylabel="FID",
        title="quality vs cost (○ pixels, □ latents, △ VAE)")
ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reading the results
#
# A few things to look for (under the smoke profile, whose models train for seconds, the numbers
# only show that the machinery works):
#
# - **Against the floor.** A generator is good when its FID and KID are close to the floor's, its
#   precision and recall close to the floor's, and its k-NN accuracies close to 0.5.
# - **DDIM steps and $\eta$.** FID falls as steps are added and levels off. For a well-trained
#   network deterministic DDIM ($\eta = 0$) usually does better than stochastic ($\eta = 1$) at few
#   steps, because the noise injected at each step must be removed again by the few steps that
#   follow; for this book's briefly trained network $\eta = 1$ can win instead, because the fresh noise
#   also corrects the network's errors (chapter 3, section 7). Compare the two rows at equal steps,
#   for the pixel model and for latent diffusion.
# - **Latent diffusion** is much cheaper per sample; its quality is bounded by the **VAE
#   reconstructions** row, and its gap to that row is what the latent diffusion model itself loses.
# - **The VAE prior** shows, in numbers, what chapter 4 showed in pictures.
# - **Precision vs recall.** A generator with good precision but low recall makes nice digits of too
#   few kinds; the class entropy and histogram say which digits are missing.
# - **Memorisation.** A nearest-training-image distance well below the floor's would mean copying.
#   The VAE reconstructions are *supposed* to be close: they are copies of training digits.

# %%
best = min((g for g in gens.values() if g["space"] != "vae" or g["sampler"] == "prior"), key=lambda g: g["fid"])
fastest = min(gens.values(), key=lambda g: g["seconds_per_sample"] if g["sampler"] != "reconstruction" else np.inf)
print(f"lowest FID among the generators: {best['label']} ({best['fid']:.2f}; floor {results['floor']['fid']:.2f})")
print(f"fastest generator: {fastest['label']} ({fastest['seconds_per_sample'] * 1e3:.2f} ms per sample)")

# %% [markdown]
# ## What we learned
#
# - Generators are compared through **features** of a network trained on the data (here an MNIST
#   classifier), with the **Fréchet distance**, **KID** and **precision/recall**; each number needs
#   its **real-vs-real floor** at the same sample count, because all of them depend on $N$.
# - **UMAP** gives a picture of where samples fall, if it is fitted on real data only and every set
#   is placed on it the same way; the **k-NN two-sample accuracy** turns the picture into a number,
#   0.5 for indistinguishable.
# - The course's generators span a trade-off: full DDPM is slow and good, DDIM buys speed with few
#   steps, latent diffusion buys much more speed and is bounded by its decoder.
#
# That ends the course. To go further: train the full profile on a GPU
# (`python -m mnistdiff course --profile full`), add class conditioning and classifier-free guidance
# (Ho & Salimans, [arXiv:2207.12598](https://arxiv.org/abs/2207.12598)), or try another schedule
# and watch what it does to the table.

# %%
print(f"chapter 6 ran in {time.perf_counter() - T_START:.0f} s ({PROFILE.name} profile, {DEVICE})")
