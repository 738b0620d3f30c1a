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
# # 1. The UNet: a network that sees noise and time
#
# A diffusion model turns noise into digits by calling **one network many times**. At every call
# the network receives a noisy image $x_t$ and the noise level $t$, and answers with its guess of
# the noise $\epsilon$ that was mixed in. So before any diffusion maths, we need a network with
# three properties:
#
# 1. **output shape = input shape** — it predicts a noise image, pixel for pixel;
# 2. **it knows $t$** — the same blurry blob means "almost done" at $t = 10$ and "just started" at $t = 900$;
# 3. **it sees both fine detail and the whole digit** — a stroke's edge is local, but whether it
#    belongs to a 3 or an 8 is global.
#
# The UNet of Ho et al. ([arXiv:2006.11239](https://arxiv.org/abs/2006.11239), appendix B), itself
# a descendant of Ronneberger et al.'s segmentation UNet
# ([arXiv:1505.04597](https://arxiv.org/abs/1505.04597)), does all three: an encoder that halves
# the resolution, a decoder that doubles it back, **skip connections** that hand the decoder the
# encoder's fine detail, and a **sinusoidal embedding** of $t$ added to every residual block.
#
# **Learning goals.** After this chapter you can
#
# - write the sinusoidal timestep embedding and explain why nearby timesteps get similar codes;
# - read a residual block with time conditioning and a self-attention block, equation by equation;
# - trace a tensor through the UNet, block by block, and count where its parameters live;
# - explain why the network's last layer starts at zero.
#
# **Run time.** a few seconds on any machine; every chapter's measured time is in the
# [introduction](../intro.md) and on the [results page](../results.md). Symbols follow the course's
# [notation](../notation.md). *Data:* MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0.
#
# :::{admonition} The smoke profile
# :class: note
# Most of this chapter builds the `full` profile's UNet and does not depend on the profile. Only the
# network of "The model of this profile" and the zero-initialisation check use the current profile's
# UNet, which under `MNISTDIFF_PROFILE=smoke` (the test suite's profile) is narrower, with one residual
# block per level. Times are those of the machine that ran the chapter.
# :::

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from mnistdiff import UNet, UNetConfig, count_parameters, timestep_embedding
from mnistdiff import default_device, get_profile, load_mnist, show_grid
from mnistdiff.unet import AttentionBlock, Downsample, ResBlock, Upsample

PROFILE = get_profile()
DEVICE = default_device()
SEED = 0
torch.manual_seed(SEED)
print(f"profile: {PROFILE.name}, device: {DEVICE}")

# %% [markdown]
# ## The data the network will see
#
# MNIST's 28×28 digits are padded to 32×32 (so the resolution can be halved several times) and
# scaled from $[0, 255]$ to $[-1, 1]$: $x = 2u/255 - 1$. The range matters: the noise we will add
# is $\mathcal N(0, I)$, and pure noise and a clean digit should have comparable scale.

# %%
# NBVAL_CHECK_OUTPUT
train = load_mnist("train")
pixels = train.images.double()
print("images:", tuple(train.images.shape), train.images.dtype)
print(f"range: [{pixels.min().item():.1f}, {pixels.max().item():.1f}]   mean: {pixels.mean().item():.4f}   "
      f"std: {pixels.std().item():.4f}")
print("images per digit:", torch.bincount(train.labels, minlength=10).tolist())
inner = train.images[:, :, 2:-2, 2:-2]  # MNIST's own 28×28 pixels; the 2-pixel border around them is padding
assert inner.shape[-2:] == (28, 28) and train.images.shape[-2:] == (32, 32)
assert (train.images == -1).sum() - (inner == -1).sum() == train.images.numel() - inner.numel()  # border: background

# %%
show_grid(train.images[:32], nrow=16, title="MNIST training images, padded to 32×32")
plt.show()

# %% [markdown]
# Most pixels are background ($-1$), hence the mean near $-0.8$. The network will have to learn
# that sparse, stroke-shaped structure.
#
# ## Telling the network the time: sinusoidal embeddings
#
# An integer $t$ fed in as one number would be a poor input: one scalar channel, hard for a network
# to resolve finely. Instead we borrow the Transformer's positional encoding (Vaswani et al.,
# [arXiv:1706.03762](https://arxiv.org/abs/1706.03762), §3.5): map $t$ to $d$ numbers, cosines and
# sines at geometrically spaced frequencies. (In this chapter $t$ is the integer the network is
# given, $0, \dots, T-1$: the 0-based index of the [notation](../notation.md), one less than the
# timestep of the equations in chapter 2 onwards.)
#
# $$
# \mathrm{emb}(t) = \big[\cos(t\,\omega_0), \dots, \cos(t\,\omega_{d/2-1}),\;
#                        \sin(t\,\omega_0), \dots, \sin(t\,\omega_{d/2-1})\big],
# \qquad \omega_i = P^{-i/(d/2)},\; P = 10\,000 .
# $$
#
# Low-index dimensions oscillate quickly (they tell $t = 41$ from $t = 42$), high-index ones slowly
# (they tell "early" from "late"). This layout — all cosines, then all sines — is the one of
# improved-diffusion (Nichol & Dhariwal, [arXiv:2102.09672](https://arxiv.org/abs/2102.09672));
# Vaswani et al. interleave them, which is the same embedding up to a permutation of dimensions.
# Here it is, written from the equation:


# %%
def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) integer timesteps → (B, dim): cosines then sines at frequencies ω_i = P^(−i/(dim/2))."""
    half = dim // 2
    omega = max_period ** (-torch.arange(half, dtype=torch.float64) / half)  # ω_0 = 1 … ω_{d/2−1} ≈ 1/P
    angles = t.double()[:, None] * omega[None, :]  # (B, d/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


t = torch.arange(0, 1000)
torch.testing.assert_close(sinusoidal_embedding(t, 32), timestep_embedding(t, 32), rtol=0, atol=1e-4)
print("our embedding matches mnistdiff.unet.timestep_embedding")

# %% [markdown]
# (The tolerance is absolute because the package computes in float32: at $t = 999$ the angle is
# about $10^3$ radians, and float32 rounds it by a few $10^{-5}$.) A few values, for the record:

# %%
# NBVAL_CHECK_OUTPUT
torch.set_printoptions(precision=4, sci_mode=False)
print(timestep_embedding(torch.tensor([0, 1, 50]), 8))

# %% [markdown]
# At $t = 0$ every cosine is 1 and every sine 0. Below, the embedding of every timestep of the
# full-profile model ($T = 1000$ steps, $d = 32$ dimensions, the UNet's `base_channels`): each
# row of the heatmap is one $t$. On the right, the cosine similarity between the codes of two
# timesteps: it is high near the diagonal, so **nearby timesteps look alike to the network** and
# it can share what it learns between them.

# %%
T_FULL, D_FULL = 1000, UNetConfig().base_channels
ts = torch.arange(T_FULL)
emb = timestep_embedding(ts, D_FULL)
unit = F.normalize(emb, dim=1)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
im = axes[0].imshow(emb.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
axes[0].set(xlabel="embedding dimension", ylabel="timestep t", title="emb(t): cosines | sines")
fig.colorbar(im, ax=axes[0])
for i in (4, 7, 10, 13):
    axes[1].plot(ts, emb[:, i], lw=1.2, label=f"dim {i}: ω = {10_000 ** (-i / (D_FULL // 2)):.2g}")
axes[1].set(xlabel="timestep t", title="a few cosine dimensions: fast to slow")
axes[1].legend(fontsize=7, loc="lower left")
every = unit[::5]  # every 5th timestep is enough to see the structure
im = axes[2].imshow((every @ every.T).numpy(), cmap="viridis", interpolation="nearest", extent=(0, T_FULL, T_FULL, 0))
axes[2].set(xlabel="t", ylabel="t′", title="cosine similarity of emb(t), emb(t′)")
fig.colorbar(im, ax=axes[2])
fig.tight_layout()
plt.show()

# %% [markdown]
# :::{admonition} Exercise 1.1 (derivation): shifting time is a rotation
# :class: tip
# Show that for every shift $k$ there is a matrix $R(k)$, the same for every $t$, with
# $\mathrm{emb}(t + k) = R(k)\,\mathrm{emb}(t)$. What does $R(k)$ look like, and why does it
# make a *linear* layer able to read "a little later than $t$"? Check your $R(k)$ numerically
# against `timestep_embedding` for all $t$ of the full profile.
# :::
#
# :::{admonition} Solution 1.1
# :class: dropdown
# Per frequency $\omega_i$, the angle-addition formulas give
# $\cos(\omega_i(t+k)) = \cos(\omega_i k)\cos(\omega_i t) - \sin(\omega_i k)\sin(\omega_i t)$ and
# $\sin(\omega_i(t+k)) = \sin(\omega_i k)\cos(\omega_i t) + \cos(\omega_i k)\sin(\omega_i t)$:
# the pair $(\cos, \sin)$ of dimension $i$ is rotated by the angle $\omega_i k$, whatever $t$ is.
# So $R(k)$ is block-diagonal with one 2×2 rotation per frequency (in our cosines-then-sines layout the
# two entries of a pair sit $d/2$ dimensions apart). A shift in time is a fixed linear map of the
# code, which a linear layer can represent exactly (Vaswani et al. give the same argument for
# positions). The code below builds $R(k)$ and checks it:
# :::

# %% tags=["solution", "hide-cell"]
# Solution 1.1: R(k) as a matrix, checked against the package's embedding for every t.
def shift_matrix(k: float, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(dim, dim) block rotation with emb(t + k) = R(k) emb(t) (cosines in [:dim/2], sines in [dim/2:])."""
    half = dim // 2
    angle = k * max_period ** (-torch.arange(half, dtype=torch.float64) / half)
    c, s = torch.diag(torch.cos(angle)), torch.diag(torch.sin(angle))
    return torch.cat([torch.cat([c, -s], 1), torch.cat([s, c], 1)], 0)


k, dim = 7, 32
ts = torch.arange(0, 1000 - k)
shifted = sinusoidal_embedding(ts, dim).double() @ shift_matrix(k, dim).T  # rows: R(k) emb(t)
torch.testing.assert_close(shifted.float(), timestep_embedding(ts + k, dim), rtol=0, atol=2e-4)
print(f"emb(t + {k}) = R({k}) emb(t) for all {len(ts)} timesteps t; R(k) is orthogonal:",
      torch.allclose(shift_matrix(k, dim) @ shift_matrix(k, dim).T, torch.eye(dim, dtype=torch.float64)))

# %% [markdown]
# Inside the UNet, a small MLP turns this fixed code into a learned one,
# $e_t = W_2\,\mathrm{SiLU}(W_1\,\mathrm{emb}(t))$ with $4d$ dimensions, and every residual block
# reads $e_t$.
#
# ## The residual block: where time enters
#
# Each residual block maps $(x, e_t)$ to a feature map of the same size (Ho et al., appendix B; the
# layout of improved-diffusion):
#
# $$
# h = \mathrm{Conv}_1\big(\mathrm{SiLU}(\mathrm{GN}_1(x))\big) + W_e\,\mathrm{SiLU}(e_t),
# \qquad
# \mathrm{out} = \mathrm{skip}(x) + \mathrm{Conv}_2\big(\mathrm{Dropout}(\mathrm{SiLU}(\mathrm{GN}_2(h)))\big).
# $$
#
# The time embedding is projected to one number per channel and **added to every pixel** of that
# channel — a per-channel bias that depends on $t$. GN is group normalisation (Wu & He,
# [arXiv:1803.08494](https://arxiv.org/abs/1803.08494)), which, unlike batch norm, does not mix the
# examples of a batch (their noise levels differ); $\mathrm{skip}$ is a 1×1 convolution when the
# channel count changes, else the identity. In code, using a block's own layers:


# %%
def resblock_forward(block: ResBlock, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The equations above, step by step: (B, C_in, H, W), (B, 4d) → (B, C_out, H, W)."""
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb(F.silu(e))[:, :, None, None]  # one bias per channel, broadcast over H, W
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    return block.skip(x) + h


block = ResBlock(in_ch=32, out_ch=64, emb_dim=128, groups=8)
torch.nn.init.normal_(block.conv2.weight, std=0.05)  # (it starts at zero: see below)
x, e = torch.randn(2, 32, 16, 16), torch.randn(2, 128)
torch.testing.assert_close(resblock_forward(block, x, e), block(x, e))
print("our residual block matches mnistdiff.unet.ResBlock:", tuple(block(x, e).shape))

# %% [markdown]
# :::{admonition} Exercise 1.2 (a change to the code): FiLM, scale *and* shift
# :class: tip
# improved-diffusion's `use_scale_shift_norm` lets time also *scale* the features:
# $h \leftarrow \mathrm{GN}_2(h)\,(1 + a(e_t)) + b(e_t)$ with $[a, b] = W_e\,\mathrm{SiLU}(e_t)$,
# instead of adding a bias before $\mathrm{GN}_2$ (FiLM: Perez et al.,
# [arXiv:1709.07871](https://arxiv.org/abs/1709.07871), who write $\gamma, \beta$ for $a, b$; this
# course keeps $\beta$ for the noise schedule). Write it as a subclass of `ResBlock`.
# *Predict* first: how many more parameters does one block get, and is the block still the identity at
# initialisation? Then check both.
# :::
#
# :::{admonition} Solution 1.2
# :class: dropdown
# Only the time projection changes: it outputs $2 C_\text{out}$ numbers instead of $C_\text{out}$, so
# the block gains $(d_e + 1)\,C_\text{out}$ parameters (a weight row and a bias per extra output).
# The last convolution still starts at zero, so the residual branch is still 0 and the block is still
# $\mathrm{skip}(x)$ at initialisation: FiLM changes what training can do, not where it starts.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 1.2: a FiLM residual block, its extra parameters, and the identity at initialisation.
class FiLMResBlock(ResBlock):
    """ResBlock whose time embedding scales and shifts the normalised features: GN(h)·(1 + a) + b."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__(in_ch, out_ch, emb_dim, groups, dropout)
        self.emb = torch.nn.Linear(emb_dim, 2 * out_ch)  # [a, b]: scale and shift

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


plain, film = ResBlock(32, 64, 128, 8), FiLMResBlock(32, 64, 128, 8)
extra = count_parameters(film) - count_parameters(plain)
assert extra == (128 + 1) * 64, extra
x, e = torch.randn(2, 32, 16, 16), torch.randn(2, 128)
torch.testing.assert_close(film(x, e), film.skip(x))  # conv2 starts at zero: the identity (up to the skip)
print(f"FiLM adds (d_e + 1)·C_out = {extra:,} parameters to a block and starts as its skip path")

# %% [markdown]
# ## Self-attention: letting distant pixels talk
#
# Convolutions only see a small neighbourhood. At the low resolutions (16×16 and 8×8 in the full
# model) the UNet adds multi-head self-attention over all $H W$ positions, so that the top of a
# digit can inform its bottom. Each position's feature vector is projected to a query, key and
# value ($q, k, v \in \mathbb R^{d_h}$ per head) and (Vaswani et al., eq. 1)
#
# $$
# \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{Q K^\top}{\sqrt{d_h}}\Big) V,
# \qquad \mathrm{out} = x + W_o\,\mathrm{Attention}(Q, K, V).
# $$
#
# The package calls PyTorch's fused `scaled_dot_product_attention` (in bfloat16 on a CPU it first
# times it against the product written out, once per machine and shape, and keeps the faster:
# `mnistdiff.unet.attention`); here it is with explicit matrices:


# %%
def attention_forward(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention over the H·W positions, with the residual: (B, C, H, W) → same."""
    b, c, hgt, wid = x.shape
    heads = block.num_heads
    qkv = block.qkv(block.norm(x)).reshape(b, 3, heads, c // heads, hgt * wid)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # each (B, heads, d_h, HW)
    weights = torch.softmax(q.transpose(-1, -2) @ k / (c // heads) ** 0.5, dim=-1)  # (B, heads, HW, HW)
    out = (v @ weights.transpose(-1, -2)).reshape(b, c, hgt, wid)  # each position: a weighted mean of values
    return x + block.proj(out)


attn = AttentionBlock(channels=64, num_heads=4, groups=8)
torch.nn.init.normal_(attn.proj.weight, std=0.05)
x = torch.randn(2, 64, 8, 8)
torch.testing.assert_close(attention_forward(attn, x), attn(x), rtol=1e-4, atol=1e-5)
print("our attention matches mnistdiff.unet.AttentionBlock:", tuple(attn(x).shape))

# %% [markdown]
# ## The whole UNet, block by block
#
# Now the package's `UNet`, which stacks these blocks. For the **full-profile configuration**
# (`UNetConfig()`: 32 base channels, multipliers 1-2-2, two residual blocks per level, attention at
# 16×16 and 8×8), we attach a forward hook to every block and record what comes out. The table is
# the same on every machine and in every profile: building this network and running one image
# through it takes a fraction of a second on a CPU.

# %%
def block_table(model: UNet, x: torch.Tensor, t: torch.Tensor) -> list[dict]:
    """Run ``model`` once, recording each block's input/output shape and parameter count via forward hooks."""
    kinds = (ResBlock, AttentionBlock, Downsample, Upsample)
    rows, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, kinds) or name in ("conv_in", "conv_out"):
            def hook(mod, inputs, output, name=name):
                rows.append({"block": name, "type": type(mod).__name__, "in": tuple(inputs[0].shape[1:]),
                             "out": tuple(output.shape[1:]), "params": count_parameters(mod)})
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return rows


full_unet = UNet(UNetConfig())
rows = block_table(full_unet, torch.randn(1, 1, 32, 32), torch.tensor([500]))

# %%
# NBVAL_CHECK_OUTPUT
def shape(s: tuple) -> str:
    return "×".join(map(str, s))


print(f"{'block':<24}{'type':<15}{'input C×H×W':>14}{'output C×H×W':>14}{'parameters':>12}")
for r in rows:
    print(f"{r['block']:<24}{r['type']:<15}{shape(r['in']):>14}{shape(r['out']):>14}{r['params']:>12,}")
rest = {"time_mlp": full_unet.time_mlp, "norm_out": full_unet.norm_out}
for name, module in rest.items():
    print(f"{name:<24}{type(module).__name__:<15}{'':>14}{'':>14}{count_parameters(module):>12,}")
total = sum(r["params"] for r in rows) + sum(count_parameters(m) for m in rest.values())
print(f"{'total':<24}{'':<15}{'':>14}{'':>14}{total:>12,}")
assert total == count_parameters(full_unet)

# %% [markdown]
# Read it top to bottom and you can see the "U":
#
# - **encoder** (`down_levels`): 32×32 → 16×16 → 8×8, with channels 32 → 64 → 64;
# - **middle**: residual block, attention, residual block at 8×8;
# - **decoder** (`up_levels`): back up to 32×32. Its residual blocks take *more* input channels than
#   the encoder's (e.g. 128 = 64 + 64): each one concatenates the matching encoder activation — a
#   **skip connection** — which is also why the decoder holds most of the parameters.
#
# The figure draws the same table: each dot is a block at its resolution (dot area ∝ parameters,
# colour = channels), and each grey arc is a skip connection from the encoder activation it carries
# to the decoder block that consumes it.

# %%
def skip_pairs(rows: list[dict]) -> list[tuple[int, int]]:
    """(encoder row, decoder row) pairs, replaying the order in which the UNet pushes and pops skips."""
    stack, pairs = [], []
    for i, r in enumerate(rows):
        name = r["block"]
        nxt = rows[i + 1]["block"] if i + 1 < len(rows) else ""
        if name == "conv_in" or name.startswith("downsamples"):
            stack.append(i)
        elif name.startswith("down_levels"):
            followed_by_attention = nxt == name.replace(".blocks.", ".attns.")
            if ".attns." in name or not followed_by_attention:  # pushed after the block's attention, if any
                stack.append(i)
        elif name.startswith("up_levels") and ".blocks." in name:
            pairs.append((stack.pop(), i))  # each decoder block pops the latest encoder activation
    assert not stack, "every skip activation is consumed"
    return pairs


pairs = skip_pairs(rows)
res = np.array([r["out"][1] for r in rows])
chans = np.array([r["out"][0] for r in rows])
params = np.array([r["params"] for r in rows])
fig, ax = plt.subplots(figsize=(11, 3.6))
for a, b in pairs:
    xs = np.linspace(a, b, 50)
    height = 0.08 + 0.4 * (b - a) / len(rows)  # longer skips arc higher
    ax.plot(xs, np.log2(res[a]) + height * np.sin(np.pi * (xs - a) / (b - a)), color="0.7", lw=0.8, zorder=0)
sc = ax.scatter(np.arange(len(rows)), np.log2(res), s=12 + params / 600, c=chans, cmap="viridis", zorder=1,
                edgecolor="k", linewidth=0.4)
ax.set_yticks(np.log2([8, 16, 32]), ["8×8", "16×16", "32×32"])
ax.set_xticks(np.arange(len(rows)), [r["type"].replace("Block", "").replace("Conv2d", "conv") for r in rows],
              rotation=90, fontsize=7)
ax.set(ylabel="resolution", ylim=(2.6, 5.6),
       title="The full-profile UNet in execution order (area ∝ parameters; arcs = skip connections)")
fig.colorbar(sc, ax=ax, label="channels", pad=0.01)
fig.tight_layout()
plt.show()
print(f"{len(pairs)} skip connections")

# %% [markdown]
# :::{admonition} Exercise 1.3 (a change to the code): the UNet without attention
# :class: tip
# Build the full-profile UNet with `UNetConfig(attention_resolutions=())`. *Predict* its parameter
# count from the table above before you build it, then check, and time one forward pass of a batch of
# 64 with and without attention on this machine.
# :::
#
# :::{admonition} Solution 1.3
# :class: dropdown
# Without attention the UNet loses exactly the `AttentionBlock` rows of the table, except the middle
# one (`mid_attn` is always there): the count drops by their sum. Attention over $H W$ positions costs
# $O((HW)^2)$, so at 16×16 it is a noticeable part of the forward time even in a small network.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 1.3: the prediction from the table, checked, and the time of a forward pass with and without attention.
attn_rows = sum(r["params"] for r in rows if r["type"] == "AttentionBlock" and not r["block"].startswith("mid"))
no_attn = UNet(UNetConfig(attention_resolutions=()))
assert count_parameters(no_attn) == count_parameters(full_unet) - attn_rows
x64, t64 = torch.randn(64, 1, 32, 32), torch.full((64,), 500)


def forward_ms(net: UNet, repeats: int = 3) -> float:
    with torch.no_grad():
        net(x64, t64)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(x64, t64)
    return (time.perf_counter() - start) / repeats * 1e3


print(f"without attention: {count_parameters(no_attn):,} parameters "
      f"({count_parameters(full_unet) - count_parameters(no_attn):,} fewer, as predicted)")
print(f"forward pass of 64 images on the CPU: {forward_ms(full_unet):.0f} ms with attention, "
      f"{forward_ms(no_attn):.0f} ms without")

# %% [markdown]
# ## The model of this profile
#
# The notebooks train the UNet of the current profile. The `smoke` profile (for CPUs and CI) keeps
# the architecture but shrinks it — fewer channels, one residual block per level (its configuration
# is printed below) — so that it trains in seconds; the `full` profile is the table above.

# %%
model = UNet(PROFILE.ddpm.unet).to(DEVICE)
print(PROFILE.ddpm.unet)
print(f"{PROFILE.name} UNet: {count_parameters(model):,} parameters")

# %% [markdown]
# ## Why the last layer starts at zero
#
# The final convolution, and the last convolution of every residual block and attention block,
# are **initialised to zero** (improved-diffusion's choice). So at initialisation each residual block
# is exactly the identity, $\mathrm{out} = \mathrm{skip}(x)$, and the whole network predicts
# $\hat\epsilon = 0$ for every input. That is a sensible start: the loss is then
# $\mathbb E\,\|\epsilon\|^2 = 1$ per pixel, and training only has to learn a *correction*; the
# signal flows through the skips instead of being scrambled by random deep layers.

# %%
# NBVAL_CHECK_OUTPUT
x_t = torch.randn(4, 1, 32, 32, device=DEVICE)
t = torch.tensor([0, 10, 50, 99], device=DEVICE)
with torch.no_grad():
    eps_hat = model(x_t, t)
print("input:", tuple(x_t.shape), " timesteps:", tuple(t.shape), " output:", tuple(eps_hat.shape))
print("max |ε̂| at initialisation:", eps_hat.abs().max().item())

# %% [markdown]
# The interface is all the next chapters need: **noisy images and their timesteps in, a noise
# prediction of the same shape out**. One call of the profile's network on a batch costs:

# %%
x_batch = torch.randn(PROFILE.num_samples, 1, 32, 32, device=DEVICE)
t_batch = torch.zeros(PROFILE.num_samples, dtype=torch.long, device=DEVICE)
with torch.no_grad():
    model(x_batch, t_batch)  # warm-up
    start = time.perf_counter()
    for _ in range(5):
        model(x_batch, t_batch)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
print(f"{(time.perf_counter() - start) / 5 * 1e3:.1f} ms per forward pass of {PROFILE.num_samples} images on {DEVICE}")

# %% [markdown]
# :::{admonition} Exercise 1.4 (an experiment): what the zero initialisation buys
# :class: tip
# Re-initialise the profile's `conv_out` with small random weights (`torch.nn.init.normal_(…, std=0.05)`)
# and *predict* the initial loss $\mathbb E\,\|\epsilon - \hat\epsilon\|^2$ per pixel: above or below 1?
# Measure it on a batch of noise, for the zero-initialised and the random last layer.
# :::
#
# :::{admonition} Solution 1.4
# :class: dropdown
# With $\epsilon$ independent of the untrained $\hat\epsilon$, $\mathbb E\,\|\epsilon - \hat\epsilon\|^2 =
# \mathbb E\,\|\epsilon\|^2 + \mathbb E\,\|\hat\epsilon\|^2 = 1 + \mathbb E\,\hat\epsilon^2$: any random
# output only adds to the loss of 1 that $\hat\epsilon = 0$ starts from. The zero initialisation
# starts training at the best loss an input-blind network can have.
# :::

# %% tags=["solution", "hide-cell"]
# Solution 1.4: the loss at initialisation, zero last layer against a random one.
torch.manual_seed(SEED)
noise = torch.randn(64, 1, 32, 32, device=DEVICE)
x_noisy, t_any = torch.randn(64, 1, 32, 32, device=DEVICE), torch.randint(0, 100, (64,), device=DEVICE)
random_last = UNet(PROFILE.ddpm.unet).to(DEVICE)
torch.nn.init.normal_(random_last.conv_out.weight, std=0.05)
with torch.no_grad():
    zero_loss = F.mse_loss(model(x_noisy, t_any), noise).item()
    random_loss = F.mse_loss(random_last(x_noisy, t_any), noise).item()
print(f"initial loss per pixel: zero last layer {zero_loss:.3f}, random last layer {random_loss:.3f}")
assert random_loss > zero_loss

# %% [markdown]
# ## What we learned, and what comes next
#
# - The **sinusoidal embedding** turns $t$ into a vector in which nearby timesteps are similar;
#   an MLP turns it into the per-channel biases that every residual block adds.
# - A **residual block** is norm → SiLU → conv, plus the time bias, twice, plus a skip; an
#   **attention block** lets all positions of a low-resolution feature map exchange information.
# - The **UNet** halves the resolution on the way down and doubles it on the way up; **skip
#   connections** carry fine detail across, and the decoder, which reads them, holds most of the
#   parameters.
# - **Zero-initialised** output layers make the untrained network predict $\hat\epsilon = 0$.
#
# The network is a function $\epsilon_\theta(x_t, t)$ that knows nothing about noise schedules. In
# [chapter 2](02_ddpm.ipynb) we define the process that creates $x_t$ from a digit, train this
# network to undo it, and sample new digits with it.
