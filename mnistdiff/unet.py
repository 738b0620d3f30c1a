"""The ε-prediction UNet (Ho et al. 2020, appendix B; improved-diffusion's layout).

It maps a noisy input ``x_t`` (B, C, H, W) and integer timesteps ``t`` (B,) to a tensor of the
same shape as ``x_t``. It knows nothing of noise schedules: ``t`` only enters through the
sinusoidal embedding (Vaswani et al. 2017), added to every residual block.
One class serves 1×32×32 pixels and 2×4×4 VAE latents; :class:`~mnistdiff.config.UNetConfig`
sets widths, depth and where self-attention sits.

With ``num_classes`` set, the UNet is class-conditional: a learned embedding of the label y (the classes and
one more row for ∅, "no label") is added to the time embedding, as improved-diffusion's ``label_emb`` does,
so ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅) are one network (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from mnistdiff.config import UNetConfig

__all__ = ["timestep_embedding", "attention", "attention_kernel", "ATTENTION_KERNELS", "ATTENTION_CHOICES", "ResBlock",
           "AttentionBlock", "UNet", "count_parameters", "NULL_LABEL"]

#: The label ∅ ("no label"): a class-conditional UNet given it predicts the unconditional ε_θ(x_t, t, ∅).
NULL_LABEL = -1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps: (B,) → (B, dim).

    emb[:, i] = cos(t·ω_i) for i < dim/2 and sin(t·ω_i) after, with ω_i = max_period^(−i/(dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, add the projected time embedding, GroupNorm → SiLU → dropout → conv, plus skip.

    (B, in_ch, H, W), (B, emb_dim) → (B, out_ch, H, W). The last conv starts at zero, so each block
    starts as the identity (improved-diffusion).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


#: The two ways :func:`attention` computes, in the order a tie prefers: PyTorch's fused kernel, and the product
#: written out with its softmax in float32.
ATTENTION_KERNELS = ("sdpa", "written")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
    """softmax(QKᵀ/√d)V (Vaswani et al. 2017, eq. 1): q, k, v (B, heads, N, d) → (B, heads, N, d).

    ``kernel="sdpa"``: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU);
    ``"written"``: the product written out, the softmax in float32. ``None`` chooses: SDPA, except in bfloat16 on a
    CPU, where :func:`attention_kernel` times both once per machine and shape: on an AMD EPYC the fused kernel's
    forward and backward pass took three to six times as long at the book UNet's shapes (``benchmarks/README.md``,
    "The training step on an AMD EPYC").
    """
    if kernel is None:
        on_cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
        kernel = attention_kernel(tuple(q.shape), q.requires_grad) if on_cpu_bf16 else "sdpa"
    if kernel == "written":
        weights = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, heads, N, N)
        return weights.softmax(-1, dtype=torch.float32).to(v.dtype) @ v
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    raise ValueError(f"attention kernel {kernel!r}: use one of {ATTENTION_KERNELS}, or None to choose")


#: The kernels :func:`attention_kernel` chose in this process, by (shape, backward).
ATTENTION_CHOICES: dict[tuple[tuple[int, ...], bool], str] = {}


def attention_kernel(shape: tuple[int, ...], backward: bool) -> str:
    """The faster of :data:`ATTENTION_KERNELS` for bfloat16 q, k, v of ``shape`` (B, heads, N, d) on this CPU, timed
    with (``backward``: q needs a gradient) or without the backward pass, and remembered per machine and shape, so a
    bf16 run draws the same bits each time (:func:`mnistdiff.devices.remembered`: a near-tie keeps SDPA). Chosen once
    per process (:data:`ATTENTION_CHOICES`); ``torch.compile`` runs the choosing outside its graph, once."""
    key = (shape, backward)
    if key not in ATTENTION_CHOICES:
        ATTENTION_CHOICES[key] = _remembered_kernel(shape, backward)
    return ATTENTION_CHOICES[key]


@torch._disable_dynamo  # torch.compiler.disable, but importing torch._dynamo (1.3 s) only when first called
def _remembered_kernel(shape: tuple[int, ...], backward: bool) -> str:
    """:func:`attention_kernel`'s choice as this machine remembers it, timed (:func:`_time_kernels`) the first time."""
    from mnistdiff.devices import clear_winner, remembered

    def measure() -> tuple[str, dict[str, float]]:
        speeds = _time_kernels(shape, backward)
        return clear_winner(speeds), speeds

    what = f"bf16 attention, {'forward and backward' if backward else 'forward'}, (B, heads, N, d) {shape}"
    return remembered(what, "cpu", measure)[0]


def _time_kernels(shape: tuple[int, ...], backward: bool, repeats: int = 5) -> dict[str, float]:
    """Calls per second of each of :data:`ATTENTION_KERNELS` on random bfloat16 q, k, v of ``shape`` (the best of
    ``repeats`` after one untimed call; the global RNG untouched)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen).bfloat16().requires_grad_(backward) for _ in range(3))
    speeds = {}
    with torch.enable_grad() if backward else torch.no_grad():
        for kernel in ATTENTION_KERNELS:
            best = math.inf
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                out = attention(q, k, v, kernel=kernel)
                if backward:
                    out.float().sum().backward()
                best = min(best, time.perf_counter() - t0) if i else best
            speeds[kernel] = round(1 / best, 1)
    return speeds


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection.

    (B, C, H, W) → (B, C, H, W); softmax(QKᵀ/√d)V by :func:`attention`.
    """

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # (B, heads, HW, d), contiguous: SDPA's fast CPU kernels need it (non-contiguous falls back to a slow path)
        q, k, v = (qkv[:, i].transpose(-1, -2).contiguous() for i in range(3))
        out = attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3×3 convolution: (B, C, H, W) → (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution: (B, C, H, W) → (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """Residual blocks (each optionally followed by attention) of one resolution."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor], *, up: bool) -> torch.Tensor:
        """Down (``up=False``): push each block's output onto ``skips``. Up: concatenate a popped skip first."""
        for block, attn in zip(self.blocks, self.attns):
            if up:
                h = torch.cat([h, skips.pop()], dim=1)
            h = attn(block(h, emb))
            if not up:
                skips.append(h)
        return h


class UNet(nn.Module):
    """ε_θ(x_t, t): (B, C, S, S) and (B,) int64 → (B, C, S, S).

    Encoder: ``num_res_blocks`` residual blocks per level (width ``base_channels × mult``), attention
    where the feature map is in ``attention_resolutions``, a stride-2 conv between levels. Middle:
    ResBlock–attention–ResBlock. Decoder: mirror image with ``num_res_blocks + 1`` blocks per level,
    each fed the matching encoder activation by concatenation (the skip connections).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        ch0, g = cfg.base_channels, cfg.norm_groups
        emb_dim = 4 * ch0
        self.time_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # one row per class, the last for ∅ (NULL_LABEL); None for an unconditional UNet
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        def attn(ch: int, res: int) -> nn.Module:
            return AttentionBlock(ch, cfg.num_heads, g) if res in cfg.attention_resolutions else nn.Identity()

        skip_chs = [ch0]
        ch, res = ch0, cfg.image_size
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mults):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, ch0 * mult, emb_dim, g, cfg.dropout))
                ch = ch0 * mult
                attns.append(attn(ch, res))
                skip_chs.append(ch)
            self.down_levels.append(_Level(blocks, attns))
            last = i == len(cfg.channel_mults) - 1
            self.downsamples.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skip_chs.append(ch)
                res //= 2

        self.mid1 = ResBlock(ch, ch, emb_dim, g, cfg.dropout)
        self.mid_attn = AttentionBlock(ch, cfg.num_heads, g)
        self.mid2 = ResBlock(ch, ch, emb_dim, g, cfg.dropout)

        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mults))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skip_chs.pop(), ch0 * mult, emb_dim, g, cfg.dropout))
                ch = ch0 * mult
                attns.append(attn(ch, res))
            self.up_levels.append(_Level(blocks, attns))
            self.upsamples.append(Upsample(ch) if i > 0 else nn.Identity())
            if i > 0:
                res *= 2

        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = _zero(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ for ``x`` (B, C, S, S) at timesteps ``t`` (B,) or (); ``y`` (B,): class labels of a class-conditional
        UNet, :data:`NULL_LABEL` for ∅ (``None``: all ∅)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] != self.config.image_size:
            raise ValueError(
                f"UNet expects (B, {self.config.in_channels}, {self.config.image_size}, {self.config.image_size}), "
                f"got {tuple(x.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(self._label_rows(y, x.shape[0], x.device))
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes None): it takes no labels y")
        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down_levels, self.downsamples):
            h = level(h, emb, skips, up=False)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, upsample in zip(self.up_levels, self.upsamples):
            h = upsample(level(h, emb, skips, up=True))
        return self.conv_out(F.silu(self.norm_out(h)))


    def _label_rows(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Labels (B,) in 0…K−1 or :data:`NULL_LABEL` → rows of ``label_emb`` (∅ is row K)."""
        k = self.config.num_classes
        assert k is not None
        if y is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        if y.shape != (batch,):  # shapes are free to check; values would cost a device sync on every call
            raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
        # The values (0…K−1 or NULL_LABEL) are checked once by DiffusionModel.sample; here any other value becomes an
        # index outside the embedding (K + 1 rows), so it fails rather than reading ∅'s row.
        return torch.where(y == NULL_LABEL, k, torch.where(y >= k, k + 1, y)).long()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
