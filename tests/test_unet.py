"""The ε-prediction UNet: shapes over configurations, gradient flow, time conditioning, determinism,
numerical stability and the sinusoidal embedding (golden values from the formula, with numpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_zero_params
from mnistdiff.config import ConfigError, UNetConfig
from mnistdiff.unet import (
    ATTENTION_CHOICES,
    ATTENTION_KERNELS,
    AttentionBlock,
    ResBlock,
    UNet,
    attention,
    count_parameters,
    timestep_embedding,
)

PIXEL = dict(in_channels=1, image_size=32)
LATENT = dict(in_channels=2, image_size=4)

CONFIGS = {
    # pixel 1×32×32
    "px-b8-m12-a16": UNetConfig(**PIXEL, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                attention_resolutions=(16,), num_heads=2),
    "px-b8-m122-a16_8": UNetConfig(**PIXEL, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                                   attention_resolutions=(16, 8), num_heads=2),
    "px-b16-m1-noattn": UNetConfig(**PIXEL, base_channels=16, channel_mults=(1,), num_res_blocks=1,
                                   attention_resolutions=(), num_heads=4),
    "px-b8-m1224-a4": UNetConfig(**PIXEL, base_channels=8, channel_mults=(1, 2, 2, 4), num_res_blocks=1,
                                 attention_resolutions=(4,), num_heads=1),
    "px-b8-2res-a32": UNetConfig(**PIXEL, base_channels=8, channel_mults=(1, 1), num_res_blocks=2,
                                 attention_resolutions=(32,), num_heads=2),
    # latent 2×4×4
    "lat-b16-m12-a2": UNetConfig(**LATENT, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                                 attention_resolutions=(2,), num_heads=2),
    "lat-b16-m12-a4_2": UNetConfig(**LATENT, base_channels=16, channel_mults=(1, 2), num_res_blocks=2,
                                   attention_resolutions=(4, 2), num_heads=4),
    "lat-b8-m124-noattn": UNetConfig(**LATENT, base_channels=8, channel_mults=(1, 2, 4), num_res_blocks=1,
                                     attention_resolutions=(), num_heads=1),
    "lat-4ch-b32-m1": UNetConfig(in_channels=4, image_size=4, base_channels=32, channel_mults=(1,), num_res_blocks=1,
                                 attention_resolutions=(4,), num_heads=8),
}


def _input(cfg: UNetConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, cfg.in_channels, cfg.image_size, cfg.image_size), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


def _model(cfg: UNetConfig, seed: int = 0, randomize: bool = True) -> UNet:
    torch.manual_seed(seed)
    m = UNet(cfg)
    return randomize_zero_params(m, seed) if randomize else m


@pytest.fixture(scope="module")
def models() -> dict[str, UNet]:
    """Each configuration built once (with its zero-initialised layers randomised)."""
    return {name: _model(cfg).eval() for name, cfg in CONFIGS.items()}


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shape_and_finite(models, name):
    cfg = CONFIGS[name]
    x, t = _input(cfg, 3)
    with torch.no_grad():
        out = models[name](x, t)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
@pytest.mark.parametrize("name", ["px-b8-m12-a16", "lat-b16-m12-a2"])
def test_batch_sizes(models, name, batch):
    cfg = CONFIGS[name]
    x, t = _input(cfg, batch, seed=batch)
    with torch.no_grad():
        assert models[name](x, t).shape == (batch, cfg.in_channels, cfg.image_size, cfg.image_size)


@pytest.mark.parametrize("name", ["px-b8-m12-a16", "lat-b16-m12-a2"])
def test_examples_are_independent_of_the_batch(models, name):
    """GroupNorm and attention act per example: one example's output does not depend on the others."""
    cfg = CONFIGS[name]
    x, t = _input(cfg, 4, seed=3)
    with torch.no_grad():
        full = models[name](x, t)
        single = torch.cat([models[name](x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t_value", [0, 1, 500, 999])
def test_scalar_and_extreme_timesteps(models, t_value):
    cfg = CONFIGS["lat-b16-m12-a2"]
    x, _ = _input(cfg, 2)
    with torch.no_grad():
        a = models["lat-b16-m12-a2"](x, torch.tensor(t_value))
        b = models["lat-b16-m12-a2"](x, torch.full((2,), t_value))
    torch.testing.assert_close(a, b)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("shape", [(2, 2, 32, 32), (2, 1, 16, 16), (1, 32, 32), (2, 1, 32, 32, 1)])
def test_wrong_input_shape_raises(models, shape):
    with pytest.raises(ValueError, match="UNet expects"):
        models["px-b8-m12-a16"](torch.zeros(shape), torch.zeros(2, dtype=torch.long))


def test_zero_initialised_output_layer():
    """Fresh model: the last conv starts at zero (improved-diffusion), so ε̂ = 0 before training."""
    cfg = CONFIGS["lat-b16-m12-a2"]
    x, t = _input(cfg, 2)
    with torch.no_grad():
        out = _model(cfg, randomize=False)(x, t)
    assert torch.count_nonzero(out) == 0


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["px-b8-m12-a16", "px-b8-m122-a16_8", "lat-b16-m12-a4_2", "lat-b8-m124-noattn"])
def test_gradients_reach_every_parameter(name):
    cfg = CONFIGS[name]
    model = _model(cfg, seed=1)
    x, t = _input(cfg, 2, seed=1)
    x.requires_grad_(True)
    loss = model(x, t).pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad is not None and torch.any(x.grad != 0)


def test_fresh_model_gradients_only_reach_output_layer_first():
    """With the zero-initialised output conv, only it gets a gradient on the first step; an optimiser step
    then opens the path (a check that the zero init is what blocks the rest, not a broken graph)."""
    cfg = CONFIGS["lat-b16-m12-a2"]
    model = _model(cfg, seed=2, randomize=False)
    x, t = _input(cfg, 2)
    target = torch.randn_like(x)
    (model(x, t) - target).pow(2).mean().backward()
    assert torch.any(model.conv_out.weight.grad != 0)
    assert not torch.any(model.conv_in.weight.grad != 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()
    (model(x, t) - target).pow(2).mean().backward()
    assert torch.any(model.conv_in.weight.grad != 0)


def test_a_few_steps_reduce_the_loss():
    cfg = CONFIGS["lat-b16-m12-a2"]
    model = _model(cfg, seed=3, randomize=False)
    x, t = _input(cfg, 8, seed=4)
    target = torch.tanh(x) * 0.5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = (model(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


# ----------------------------------------------------------------------------- conditioning, determinism, stability


def test_output_depends_on_t(models):
    cfg = CONFIGS["px-b8-m12-a16"]
    x, _ = _input(cfg, 2)
    with torch.no_grad():
        a = models["px-b8-m12-a16"](x, torch.tensor([10, 10]))
        b = models["px-b8-m12-a16"](x, torch.tensor([900, 900]))
    assert (a - b).abs().max() > 1e-4


def test_same_seed_same_weights_same_output():
    cfg = CONFIGS["lat-b16-m12-a4_2"]
    torch.manual_seed(5)
    a = UNet(cfg)
    torch.manual_seed(5)
    b = UNet(cfg)
    torch.manual_seed(6)
    c = UNet(cfg)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    randomize_zero_params(a, 1)
    randomize_zero_params(b, 1)
    x, t = _input(cfg, 2)
    with torch.no_grad():
        assert torch.equal(a.eval()(x, t), b.eval()(x, t))


def test_eval_forward_is_repeatable(models):
    cfg = CONFIGS["px-b8-m12-a16"]
    x, t = _input(cfg, 2)
    with torch.no_grad():
        assert torch.equal(models["px-b8-m12-a16"](x, t), models["px-b8-m12-a16"](x, t))


def test_dropout_only_in_train_mode():
    cfg = UNetConfig(**LATENT, base_channels=16, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                     num_heads=1, dropout=0.5)
    model = _model(cfg, seed=7)
    x, t = _input(cfg, 2)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x, t), model(x, t))
        model.eval()
        assert torch.equal(model(x, t), model(x, t))


@pytest.mark.parametrize("scale", [1e-6, 1e2, 1e4])
def test_numerically_stable_for_extreme_inputs(models, scale):
    """GroupNorm keeps activations O(1): tiny and huge inputs give finite outputs."""
    cfg = CONFIGS["px-b8-m12-a16"]
    x, t = _input(cfg, 2)
    with torch.no_grad():
        out = models["px-b8-m12-a16"](x * scale, t)
    assert torch.isfinite(out).all()


def test_constant_input_is_finite(models):
    """A constant image has zero variance per group: GroupNorm's eps must keep the output finite."""
    with torch.no_grad():
        out = models["lat-b16-m12-a2"](torch.full((2, 2, 4, 4), 0.3), torch.tensor([0, 999]))
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- structure


def _expected_attention_blocks(cfg: UNetConfig) -> int:
    """Attention after each ResBlock at a listed resolution (down: n, up: n + 1 per level) plus the middle one."""
    count, res = 1, cfg.image_size
    for i, _ in enumerate(cfg.channel_mults):
        if res in cfg.attention_resolutions:
            count += cfg.num_res_blocks + cfg.num_res_blocks + 1
        if i < len(cfg.channel_mults) - 1:
            res //= 2
    return count


@pytest.mark.parametrize("name", list(CONFIGS))
def test_attention_placement(models, name):
    cfg = CONFIGS[name]
    n_attn = sum(isinstance(m, AttentionBlock) for m in models[name].modules())
    assert n_attn == _expected_attention_blocks(cfg)


@pytest.mark.parametrize("name", ["px-b8-m122-a16_8", "lat-b16-m12-a4_2"])
def test_resblock_counts_and_widths(models, name):
    cfg = CONFIGS[name]
    m = models[name]
    n_res = sum(isinstance(mod, ResBlock) for mod in m.modules())
    levels = len(cfg.channel_mults)
    assert n_res == levels * cfg.num_res_blocks + levels * (cfg.num_res_blocks + 1) + 2
    widths = {mod.conv1.out_channels for mod in m.modules() if isinstance(mod, ResBlock)}
    assert widths == {cfg.base_channels * k for k in cfg.channel_mults}


def test_count_parameters_and_growth():
    small = UNet(UNetConfig(**LATENT, base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=()))
    big = UNet(UNetConfig(**LATENT, base_channels=16, channel_mults=(1,), num_res_blocks=1, attention_resolutions=()))
    assert count_parameters(small) == sum(p.numel() for p in small.parameters())
    assert count_parameters(big) > 3 * count_parameters(small)  # widths double → ~4× the conv weights
    small.conv_in.weight.requires_grad_(False)
    assert count_parameters(small) == sum(p.numel() for p in small.parameters()) - small.conv_in.weight.numel()


def test_default_configs_build():
    """The reference defaults (pixel) and the latent default both build with the expected shapes."""
    from mnistdiff.config import LDMRunConfig

    pix = UNet()
    assert pix.config.image_size == 32 and pix.config.in_channels == 1
    lat = UNet(LDMRunConfig().unet)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        assert lat(x, torch.tensor([3])).shape == x.shape


# ----------------------------------------------------------------------------- bad configurations


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(base_channels=0),
        dict(in_channels=-1),
        dict(channel_mults=()),
        dict(channel_mults=(1, 0)),
        dict(image_size=4, channel_mults=(1, 2, 2, 2)),  # 4 cannot be halved three times
        dict(image_size=30, channel_mults=(1, 2, 2)),
        dict(base_channels=12, norm_groups=8),  # 12 not divisible by 8 groups
        dict(base_channels=8, channel_mults=(1, 3), norm_groups=16),
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(num_heads=0),
        dict(num_res_blocks=0),
    ],
)
def test_bad_unet_config_raises(kwargs):
    with pytest.raises(ConfigError):
        UNetConfig(**kwargs)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        UNetConfig(base_channels=-8)


def test_attention_heads_must_divide_channels():
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(12, num_heads=5, groups=4)


# ----------------------------------------------------------------------------- blocks


def test_resblock_starts_as_identity_and_projects_skip():
    block = ResBlock(8, 8, emb_dim=16, groups=4)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    torch.testing.assert_close(block(x, emb), x)  # zero last conv and identity skip
    wider = ResBlock(8, 16, emb_dim=16, groups=4)
    assert isinstance(wider.skip, nn.Conv2d)
    assert wider(x, emb).shape == (2, 16, 4, 4)


def test_attention_block_matches_manual_softmax():
    """Self-attention against a hand-written softmax(QKᵀ/√d)V per head."""
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, groups=4)
    nn.init.normal_(blk.proj.weight, std=0.2)
    x = torch.randn(1, 8, 3, 3)
    with torch.no_grad():
        got = blk(x)
        qkv = blk.qkv(blk.norm(x)).reshape(1, 3, 2, 4, 9)
        q, k, v = qkv[0, 0], qkv[0, 1], qkv[0, 2]  # (heads, d, HW)
        w = torch.softmax(torch.einsum("hdi,hdj->hij", q, k) / math.sqrt(4), dim=-1)
        out = torch.einsum("hij,hdj->hdi", w, v).reshape(1, 8, 3, 3)
        expected = x + blk.proj(out)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS)
def test_attention_in_each_dtype_against_float64_with_its_gradients(kernel):
    """:func:`attention` by each kernel (the fused one, the product written out with its softmax in float32), in
    float32 and bfloat16, against softmax(QKᵀ/√d)V in float64, values and gradients; the fused kernel in float32 is
    SDPA bit for bit."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(3, 2, 16, 6, generator=gen, dtype=torch.float64) for _ in range(4))

    def reference(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(6), dim=-1) @ v

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    reference(*leaves).backward(g)
    expected, expected_grads = reference(q, k, v), [t.grad for t in leaves]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        out = attention(*leaves, kernel=kernel)
        out.backward(g.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
        for got, want in zip((t.grad for t in leaves), expected_grads, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=2 * tol)
    q32, k32, v32 = (t.float() for t in (q, k, v))
    assert torch.equal(attention(q32, k32, v32), F.scaled_dot_product_attention(q32, k32, v32))
    with pytest.raises(ValueError, match="use one of"):
        attention(q32, k32, v32, kernel="fused")


def test_attention_kernel_is_timed_once_per_machine_and_shape_then_remembered(tmp_path, monkeypatch):
    """In bfloat16 on a CPU :func:`attention` takes the kernel :func:`attention_kernel` timed, which is written to the
    remembered choices (both timings, keyed by pass and shape) and read back from there: a file
    that names the other kernel is obeyed (counted by SDPA's calls). float32 never times: it is SDPA."""
    from mnistdiff.devices import CACHE_ENV, choices_file

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    ATTENTION_CHOICES.clear()
    q = torch.randn(2, 2, 16, 4).bfloat16()
    with torch.no_grad():
        attention(q, q, q)
    (key, entry), = json.loads(choices_file().read_text()).items()
    assert key.startswith("bf16 attention, forward, (B, heads, N, d) (2, 2, 16, 4) | ")
    assert set(entry["timings"]) == set(ATTENTION_KERNELS) and entry["choice"] in ATTENTION_KERNELS
    leaf = q.clone().requires_grad_(True)
    attention(leaf, leaf, leaf)  # a q that needs its gradient is timed forward and backward, apart
    assert any(k.startswith("bf16 attention, forward and backward, (B, heads, N, d) (2, 2, 16, 4) | ")
               for k in json.loads(choices_file().read_text()))

    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a: calls.append(1) or real_sdpa(*a))
    for choice, sdpa_calls in (("written", 0), ("sdpa", 1)):
        choices_file().write_text(json.dumps({key: {**entry, "choice": choice}}))
        ATTENTION_CHOICES.clear()
        calls.clear()
        with torch.no_grad():
            attention(q, q, q)
        assert len(calls) == sdpa_calls, choice
    ATTENTION_CHOICES.clear()
    attention(q.float(), q.float(), q.float())
    assert len(calls) == 2 and len(json.loads(choices_file().read_text())) == 1
    ATTENTION_CHOICES.clear()


def test_attention_kernel_is_chosen_under_torch_compile_too(tmp_path, monkeypatch):
    """A compiled block in bfloat16 chooses its kernel as an eager one does (outside the graph: timed, remembered),
    where a traced forward that could not time would take SDPA unasked."""
    from mnistdiff.devices import CACHE_ENV, choices_file

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    ATTENTION_CHOICES.clear()
    torch.manual_seed(0)
    blk = AttentionBlock(16, num_heads=4, groups=4)
    nn.init.normal_(blk.proj.weight, std=0.2)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        compiled = torch.compile(blk)(x).float()
        (key, choice), = ATTENTION_CHOICES.items()
        assert key == ((2, 4, 16, 4), False) and choice in ATTENTION_KERNELS
        (entry,) = json.loads(choices_file().read_text()).values()
    assert entry["choice"] == choice and set(entry["timings"]) == set(ATTENTION_KERNELS)
    assert compiled.shape == x.shape
    ATTENTION_CHOICES.clear()


def test_attention_block_trains_alike_in_bfloat16_and_float32():
    """The same block under bf16 autocast (its attention written out) and in float32 (the fused kernel): outputs and
    gradients within bfloat16's precision."""
    torch.manual_seed(0)
    blk = AttentionBlock(16, num_heads=4, groups=4)
    nn.init.normal_(blk.proj.weight, std=0.2)
    x = torch.randn(4, 16, 8, 8)
    out32 = blk(x) - x  # the attention's part, without the residual that would hide it
    out32.square().mean().backward()
    grads32 = [p.grad.clone() for p in blk.parameters()]
    blk.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = blk(x).float() - x
    out16.square().mean().backward()
    torch.testing.assert_close(out16, out32, rtol=0, atol=1e-2)  # a scale of d^-0.4 instead of d^-0.5: 0.048 off
    for got, want in zip((p.grad for p in blk.parameters()), grads32, strict=True):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)


# ----------------------------------------------------------------------------- timestep embedding


@pytest.mark.parametrize("dim", [8, 32, 7])
def test_timestep_embedding_golden(dim):
    t = np.array([0, 1, 17, 999], dtype=np.float64)
    half = dim // 2
    freqs = np.array([10000.0 ** (-i / half) for i in range(half)])
    args = t[:, None] * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    if dim % 2:
        expected = np.concatenate([expected, np.zeros((4, 1))], axis=1)
    got = timestep_embedding(torch.tensor([0, 1, 17, 999]), dim)
    assert got.shape == (4, dim)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-4, atol=2e-4)


def test_timestep_embedding_distinguishes_steps():
    e = timestep_embedding(torch.arange(1000), 32)
    d = torch.cdist(e, e)
    d.fill_diagonal_(1.0)
    assert d.min() > 1e-3
