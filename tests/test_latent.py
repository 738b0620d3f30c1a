"""Latent diffusion's codec: the latent scale s = 1/std(z), dataset encoding, and the encode/decode round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistdiff.config import VAEConfig
from mnistdiff.data import load_mnist
from mnistdiff.latent import LatentCodec, compute_latent_scale, encode_dataset
from mnistdiff.vae import VAE


@pytest.fixture(scope="module")
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(base_channels=8)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_mnist("test").images[:24].clone()


def test_scale_is_inverse_std_numpy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn((50, 2, 4, 4), generator=g) * 3.7 + 1.2
    s = compute_latent_scale(z)
    assert s == pytest.approx(1.0 / np.std(z.double().numpy(), ddof=1), rel=1e-5)
    assert s == pytest.approx(1 / 3.7, rel=0.05)
    assert float((z * s).std()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("value", [0.0, 0.3, -2.7])
def test_scale_rejects_zero_spread(value):
    """A collapsed encoder (constant latents) is an error, not a scale of ~1e8 from float32 rounding."""
    with pytest.raises(ValueError, match="zero spread"):
        compute_latent_scale(torch.full((4, 2, 4, 4), value))
    with pytest.raises(ValueError, match="zero spread"):
        compute_latent_scale(torch.full((3, 2, 4, 4), float("nan")))


def test_encode_dataset_matches_encoder_and_batching(vae, images):
    mean, std = encode_dataset(vae, images, batch_size=7)  # 7 does not divide 24: the last chunk is short
    assert mean.shape == (24, 2, 4, 4) and std.shape == (24, 2, 4, 4)
    assert mean.dtype == torch.float32
    with torch.no_grad():
        post = vae.encode(images)
    torch.testing.assert_close(mean, post.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std, post.std, rtol=1e-5, atol=1e-6)
    mean_big, _ = encode_dataset(vae, images, batch_size=1024)
    torch.testing.assert_close(mean, mean_big, rtol=1e-5, atol=1e-6)
    assert not vae.training
    assert torch.all(std > 0)


def test_codec_encode_is_scaled_mode(vae, images):
    codec = LatentCodec(vae, 2.5)
    z = codec.encode(images[:4])
    with torch.no_grad():
        expected = vae.encode(images[:4]).mean * 2.5
    torch.testing.assert_close(z, expected)
    assert z.shape == (4, 2, 4, 4)


def test_codec_encode_sample_is_stochastic(vae, images):
    codec = LatentCodec(vae, 1.0)
    torch.manual_seed(0)
    a = codec.encode(images[:2], sample=True)
    b = codec.encode(images[:2], sample=True)
    assert not torch.equal(a, b)
    assert not torch.equal(a, codec.encode(images[:2]))


def test_codec_decode_unscales_and_clamps(vae):
    codec = LatentCodec(vae, 4.0)
    z = torch.randn(3, 2, 4, 4) * 5
    out = codec.decode(z)
    with torch.no_grad():
        raw = vae.decode(z / 4.0)
    torch.testing.assert_close(out, raw.clamp(-1, 1))
    assert out.shape == (3, 1, 32, 32)
    assert out.min() >= -1 and out.max() <= 1


def test_codec_round_trip_independent_of_scale(vae, images):
    """decode(encode(x)) reconstructs through the posterior mean whatever the scale (it cancels)."""
    x = images[:4]
    with torch.no_grad():
        expected = vae.decode(vae.encode(x).mean).clamp(-1, 1)
    for s in (0.1, 1.0, 7.3):
        torch.testing.assert_close(LatentCodec(vae, s).decode(LatentCodec(vae, s).encode(x)), expected,
                                   rtol=1e-4, atol=1e-5)


def test_scaled_dataset_latents_have_unit_std(vae, images):
    """The LDM pipeline: s from the training latents' means, then s·μ has unit std (what the schedule assumes)."""
    mean, _ = encode_dataset(vae, images)
    s = compute_latent_scale(mean)
    codec = LatentCodec(vae, s)
    z = codec.encode(images)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(codec.decode(z), vae.decode(mean).clamp(-1, 1), rtol=1e-4, atol=1e-5)


def test_codec_with_latent_unet_shapes(vae, images):
    """A latent from the codec fits the LDM UNet and its output decodes back to images."""
    from mnistdiff.config import LDMRunConfig
    from mnistdiff.unet import UNet

    cfg = LDMRunConfig().unet
    codec = LatentCodec(vae, 1.0)
    z = codec.encode(images[:2])
    assert z.shape[1:] == (cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        eps = UNet(cfg)(z, torch.tensor([0, 5]))
    assert codec.decode(eps).shape == (2, 1, 32, 32)


def test_codec_decodes_in_bf16_when_asked_close_to_float32(vae):
    """bf16 autocast decodes to within bf16's precision of the float32 decode (and is not the same computation);
    channels_last to within float32's rounding, in the plain layout again."""
    z = torch.randn(8, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    codec = LatentCodec(vae, 1.5)
    full, half = codec.decode(z), codec.decode(z, "bf16")
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert 0 < float((half - full).abs().max()) < 0.05
    for precision, tol in (("fp32_cl", 1e-5), ("bf16_cl", 0.05)):
        out = codec.decode(z, precision)
        assert out.is_contiguous() and float((out - full).abs().max()) < tol
    assert torch.equal(codec.decode(z), full)  # the plain decode is untouched by a channels_last one


def test_measured_bf16_decoding_is_used_unless_float32_is_asked_for(vae, monkeypatch):
    from mnistdiff.config import LDMRunConfig, UNetConfig
    from mnistdiff.model import DiffusionModel
    from mnistdiff.schedules import NoiseSchedule
    from mnistdiff.unet import UNet

    cfg = LDMRunConfig(unet=UNetConfig(in_channels=vae.config.latent_channels, image_size=4, base_channels=8,
                                       channel_mults=(1,), num_res_blocks=1, attention_resolutions=(), num_heads=2))
    codec = LatentCodec(vae, 1.5)
    seen = []
    monkeypatch.setattr(codec, "decode", lambda z, precision="fp32": seen.append(precision)
                        or torch.zeros(z.shape[0], 1, 32, 32))
    model = DiffusionModel(UNet(cfg.unet).eval(), NoiseSchedule.make("cosine", 10), cfg, codec=codec,
                           clip_range=(-3.0, 3.0), decode_precision="bf16")
    model.sample(2, steps=2)
    model.sample(2, steps=2, precision="fp32")
    model.sample(2, steps=2, precision="fp32_cl")
    model.decode_precision = "fp32"
    model.sample(2, steps=2)
    assert seen == ["bf16", "fp32", "fp32_cl", "fp32"]


def test_the_vaes_loops_run_in_pieces_and_give_the_pieces_output(vae):
    """On a CPU the VAE's loops pass loop_batch("cpu") images at once (64; 1,024 on a GPU): LatentCodec.decode of more
    codes than that decodes them piece by piece, giving what the decoder gives each piece alone, bit for bit."""
    from mnistdiff.vae import loop_batch

    assert loop_batch("cpu") == 64 and loop_batch(torch.device("cuda")) == 1024
    codec = LatentCodec(vae, 0.8)
    z = torch.randn(150, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    seen: list[int] = []
    hook = vae.decoder.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    images = codec.decode(z)
    hook.remove()
    assert seen == [64, 64, 22]
    with torch.no_grad():
        pieces = torch.cat([vae.decode(c / 0.8) for c in z.split(64)]).clamp(-1, 1)
    assert torch.equal(images, pieces)
    seen.clear()
    hook = vae.decoder.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        assert vae.sample_prior(130).shape == (130, 1, 32, 32) and seen == [64, 64, 2]
    finally:
        hook.remove()
