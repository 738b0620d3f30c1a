"""The notebook widgets (mnistdiff.course.widgets): they build headless, their sliders change the image,
and every one produces (and displays) a static fallback. Fast: tiny untrained models on the CPU."""

from __future__ import annotations

import io

import ipywidgets
import numpy as np
import pytest
import torch
from IPython.display import HTML
from PIL import Image

from mnistdiff.config import DDPMRunConfig, DiffusionConfig, UNetConfig, VAEConfig
from mnistdiff.course import widgets as W
from mnistdiff.model import DiffusionModel
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet
from mnistdiff.vae import VAE
from mnistdiff.viz import grid_array

PNG = b"\x89PNG\r\n\x1a\n"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


@pytest.fixture
def shown(monkeypatch):
    """Record what the widgets display (instead of printing reprs)."""
    seen = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: seen.extend(objs))
    return seen


def _digit() -> torch.Tensor:
    x = -torch.ones(1, 32, 32)
    x[:, 8:24, 14:18] = 1.0  # a "1"
    return x


def test_render_png_is_the_grid_enlarged():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    png = W.render_png(x, nrow=3, zoom=2)
    assert png.startswith(PNG)
    pixels = _pixels(png)
    grid = grid_array(x, nrow=3)
    assert pixels.shape == (2 * grid.shape[0], 2 * grid.shape[1])
    np.testing.assert_array_equal(pixels[::2, ::2], grid)


def test_explorer_is_a_vbox_that_redraws_when_a_control_moves():
    slider = ipywidgets.IntSlider(min=0, max=2)
    frames = [torch.full((1, 1, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    ex = W.Explorer([slider], lambda i: (frames[i], f"frame {i}"), nrow=1, zoom=1)
    assert isinstance(ex, ipywidgets.VBox)
    assert ex.children[0] is slider and ex.image in ex.children and ex.caption in ex.children
    assert ex.renders == 1 and ex.caption.value == "frame 0"
    first = ex.image.value
    ex.move(0, 2)
    assert ex.renders == 2 and ex.caption.value == "frame 2" and ex.image.value != first
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_frame_strip_and_animation_fallbacks():
    frames = [torch.rand(2, 1, 32, 32) * 2 - 1 for _ in range(3)]
    png = W.frame_strip_png(frames, ["a", "b", "c"], title="strip")
    assert png.startswith(PNG) and _pixels(png).shape[1] > _pixels(png).shape[0]
    html = W.animation_html(frames, ["a", "b", "c"])
    assert "<script" in html and html.count("data:image/png;base64") >= 3
    with pytest.raises(ValueError):
        W.frame_strip_png(frames, ["a"])


def test_timestep_explorer_shows_q_sample_and_alpha_bar(shown):
    sched = NoiseSchedule.make("cosine", 20)
    ex = W.timestep_explorer(_digit(), sched, frames=5, seed=0, zoom=1)
    assert len(shown) == 1 and shown[0].data == ex.fallback and ex.fallback.startswith(PNG)
    slider = ex.controls[0]
    assert (slider.min, slider.max, slider.value) == (0, 19, 0)
    # the picture is x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with ε drawn from the seed
    eps = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    ab = sched.alphas_cumprod[0].double()
    want = (ab.sqrt() * _digit()[None].double() + (1 - ab).sqrt() * eps.double()).float()
    assert ex.image.value == W.render_png(want, nrow=1, zoom=1)
    before = ex.image.value
    ex.move(0, 19)
    assert ex.image.value != before
    assert "t = 19" in ex.caption.value and f"{sched.alphas_cumprod[19].item():.4f}" in ex.caption.value
    # same noise at every t: moving back restores the first picture exactly
    ex.move(0, 0)
    assert ex.image.value == before


def test_denoising_player_steps_through_frames(shown):
    frames = [(t, torch.full((3, 1, 32, 32), 1 - t / 5)) for t in (10, 8, 6, 4, 2, 0)]
    ex = W.denoising_player(frames, count=2, max_frames=4, zoom=1)
    assert isinstance(shown[0], HTML) and "<script" in ex.fallback
    slider = ex.controls[0]
    assert slider.max == 3  # 4 of the 6 frames kept
    assert _pixels(ex.image.value).shape[1] == grid_array(torch.zeros(2, 1, 32, 32), nrow=2).shape[1]
    first = ex.image.value
    ex.move(0, 3)
    assert ex.image.value != first and "x_0" in ex.caption.value
    strip = W.denoising_player(frames, fallback="strip", show=False)
    assert strip.fallback.startswith(PNG)
    with pytest.raises(ValueError):
        W.denoising_player([])


class _FakeModel:
    """Stands in for a DiffusionModel: records calls; images encode (steps, eta)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sample(self, n, *, sampler, steps, eta, seed, device):
        self.calls.append((n, sampler, steps, eta, seed))
        return torch.full((n, 1, 32, 32), steps / 100 - eta), None


def test_ddim_explorer_precomputes_the_grid_and_switches_instantly(shown):
    model = _FakeModel()
    ex = W.ddim_explorer(model, [5, 10], etas=(0.0, 1.0), seed=3, num_samples=2, zoom=1)
    assert sorted(model.calls) == sorted((2, "ddim", s, e, 3) for s in (5, 10) for e in (0.0, 1.0))
    assert shown[0].data == ex.fallback and ex.fallback.startswith(PNG)
    assert set(ex.samples) == {(5, 0.0), (5, 1.0), (10, 0.0), (10, 1.0)}
    assert ex.values == (10, 0.0) and "S = 10" in ex.caption.value
    before = ex.image.value
    ex.move(1, 1.0)
    assert "η = 1" in ex.caption.value and ex.image.value != before
    n_calls = len(model.calls)
    ex.move(0, 5)
    assert len(model.calls) == n_calls  # nothing recomputed on a slider move
    reuse = W.ddim_explorer(model, [5], etas=(0.0,), samples={(5, 0.0): torch.zeros(4, 1, 32, 32)},
                            num_samples=2, show=False)
    assert len(model.calls) == n_calls and reuse.samples[(5, 0.0)].shape == (2, 1, 32, 32)


def test_ddim_explorer_with_a_real_diffusion_model():
    cfg = DDPMRunConfig(
        unet=UNetConfig(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(), num_heads=1),
        diffusion=DiffusionConfig(timesteps=10),
    )
    torch.manual_seed(0)
    unet = UNet(cfg.unet).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # not the zero output of a fresh UNet
    model = DiffusionModel(unet, NoiseSchedule.from_config(cfg.diffusion), cfg, {})
    ex = W.ddim_explorer(model, [1, 3], etas=(0.0, 1.0), seed=0, device="cpu", num_samples=2, show=False)
    s = ex.samples
    assert s[(1, 0.0)].shape == (2, 1, 32, 32) and s[(1, 0.0)].abs().max() <= 1
    assert not torch.equal(s[(3, 0.0)], s[(3, 1.0)])
    again = W.ddim_explorer(model, [1], etas=(0.0,), seed=0, num_samples=2, show=False)
    torch.testing.assert_close(again.samples[(1, 0.0)], s[(1, 0.0)])  # same seed, same samples


class _FakeConditional:
    """Records each call; returns images whose value encodes the digit and the weight asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sample(self, n, sampler="ddim", steps=50, seed=0, device="cpu", labels=None, guidance=1.0, **kw):
        self.calls.append((n, sampler, steps, seed, tuple(labels.tolist()), guidance))
        return torch.full((n, 1, 32, 32), float(labels[0]) / 10 - guidance / 10), None


def test_guidance_explorer_precomputes_digits_by_weights(shown):
    model = _FakeConditional()
    ex = W.guidance_explorer(model, digits=(3, 7), scales=(0.0, 2.0, 4.0), seed=5, num_samples=2, ddim_steps=7,
                             zoom=1)
    assert sorted(model.calls) == sorted((2, "ddim", 7, 5, (d, d), w) for d in (3, 7) for w in (0.0, 2.0, 4.0))
    assert shown[0].data == ex.fallback and ex.fallback.startswith(PNG)
    assert set(ex.samples) == {(w, d) for w in (0.0, 2.0, 4.0) for d in (3, 7)}
    assert ex.values == (3, 2.0) and "asked for 3, w = 2 (guided)" in ex.caption.value
    before, n_calls = ex.image.value, len(model.calls)
    ex.move(0, 7)
    assert "asked for 7" in ex.caption.value and ex.image.value != before
    ex.move(1, 0.0)
    assert "no label" in ex.caption.value and len(model.calls) == n_calls  # nothing recomputed on a move
    reuse = W.guidance_explorer(model, digits=(1,), scales=(1.0,), samples={(1.0, 1): torch.zeros(5, 1, 32, 32)},
                                num_samples=2, show=False)
    assert len(model.calls) == n_calls and reuse.samples[(1.0, 1)].shape == (2, 1, 32, 32)
    assert "the conditional model" in reuse.caption.value
    with pytest.raises(ValueError):
        W.guidance_explorer(model, digits=(), show=False)


def test_latent_walk_decodes_the_endpoints_and_the_middle(shown):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(base_channels=8)).eval()
    z_a, z_b = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    ex = W.latent_walk(vae, z_a, z_b, frames=4, scale=2.0, zoom=1)
    assert shown[0].data == ex.fallback and ex.fallback.startswith(PNG)
    with torch.no_grad():
        decode = lambda z: vae.decode(z[None] / 2.0).clamp(-1, 1)  # noqa: E731
        want_a, want_b, want_mid = decode(z_a), decode(z_b), decode(0.5 * (z_a + z_b))
    assert ex.image.value == W.render_png(want_a, nrow=1, zoom=1)
    ex.move(0, 1.0)
    assert ex.image.value == W.render_png(want_b, nrow=1, zoom=1)
    ex.move(0, 0.5)
    assert ex.image.value == W.render_png(want_mid, nrow=1, zoom=1) and "0.50" in ex.caption.value
    with pytest.raises(ValueError):
        W.latent_walk(vae, z_a, torch.randn(2, 2, 2), show=False)


def test_interpolate_linear_and_slerp():
    a, b = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    for mode in ("linear", "slerp"):
        torch.testing.assert_close(W.interpolate(a, b, 0.0, mode), a)
        torch.testing.assert_close(W.interpolate(a, b, 1.0, mode), b)
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = W.interpolate(u, v, 0.5, "slerp")
    torch.testing.assert_close(mid, torch.tensor([2**-0.5, 2**-0.5]))  # stays on the unit circle
    with pytest.raises(ValueError):
        W.interpolate(a, b, 0.5, "cubic")
