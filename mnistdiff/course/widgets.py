"""Interactive explorers for the notebooks (ipywidgets), each with a static fallback.

Every public function here does two things, in this order:

1. it **displays a static fallback** — a small PNG frame strip drawn with matplotlib, or an HTML
   animation (``matplotlib.animation`` → ``to_jshtml()``) — so that the cell shows something in a
   non-interactive view: the rendered book, GitHub's notebook preview, ``nbconvert`` to HTML;
2. it **returns an ipywidgets object** (an :class:`Explorer`): a slider (or two) above an image.
   As the last expression of a cell, Jupyter displays it below the fallback. The book strips the
   widget view and keeps the fallback (``book/_ext/mnistdiff_book/widgets_strip.py``).

Nothing needs a browser to be built: the image is an ``ipywidgets.Image`` holding PNG bytes that
are recomputed in Python when a slider moves, so the widgets build and update headless (under
``nbclient``/``nbval`` and in the tests). Expensive content (DDIM samples) is precomputed once;
cheap content (one ``q_sample``, one VAE decode) is computed on every slider move.

Public API (images are ``(N, 1, H, W)`` or ``(1, H, W)`` tensors in [−1, 1]):

* :func:`timestep_explorer` ``(image, schedule, frames=8)`` — slide t and watch q(x_t | x_0) (chapter 2);
* :func:`denoising_player` ``(frames)`` — step through a sampling trajectory ``[(t, x_t), …]`` (chapter 2);
* :func:`ddim_explorer` ``(model, steps_options, etas, seed, device)`` — DDIM steps × η (chapter 3);
* :func:`latent_walk` ``(vae, z_a, z_b, frames=8, scale=1.0)`` — interpolate two latents (chapter 4);
* :func:`guidance_explorer` ``(model, digits, scales, seed, device)`` — digit × guidance weight w (chapter 7);
* :func:`image_slider` ``(images, captions)`` — the generic building block: a slider over any frames;
* :func:`frame_strip_png` / :func:`animation_html` — the two kinds of static fallback
  (:mod:`mnistdiff.course.fallbacks`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mnistdiff.course.fallbacks import animation_html, frame_strip_png, image_batch, new_figure, render_png
from mnistdiff.extras import require
from mnistdiff.viz import grid_array

ipywidgets = require("ipywidgets", "mnistdiff.course.widgets (the chapters' interactive explorers)")

__all__ = [
    "Explorer",
    "render_png",
    "frame_strip_png",
    "animation_html",
    "image_slider",
    "timestep_explorer",
    "denoising_player",
    "ddim_explorer",
    "latent_walk",
    "interpolate",
    "guidance_explorer",
]

Render = Callable[..., tuple[torch.Tensor, str]]


def _show(fallback: bytes | str) -> None:
    """Display a static fallback: PNG bytes as an image, a string as HTML."""
    from IPython.display import HTML, Image, display

    display(Image(data=fallback, format="png") if isinstance(fallback, bytes) else HTML(fallback))


# ----------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------


class Explorer(ipywidgets.VBox):
    """An ``ipywidgets.VBox``: controls (sliders) above an image and a caption, recomputed by
    ``render`` whenever a control moves.

    ``render(*values) → (images (N, 1, H, W) in [−1, 1], caption HTML)`` is called with the controls'
    values in order. Attributes: ``controls`` (the sliders), ``image`` (an ``ipywidgets.Image`` with
    PNG bytes), ``caption`` (``ipywidgets.HTML``), ``fallback`` (the static fallback that was
    displayed before it: PNG bytes or HTML), ``renders`` (how many times it was drawn).
    ``move(i, value)`` moves control ``i`` as a user would.
    """

    def __init__(
        self, controls: Sequence[ipywidgets.ValueWidget], render: Render, *, nrow: int = 8, zoom: int = 3,
        fallback: bytes | str | None = None,
    ) -> None:
        image = ipywidgets.Image(format="png")
        caption = ipywidgets.HTML()
        super().__init__(children=[*controls, image, caption])
        self.controls = list(controls)
        self.render = render
        self.image, self.caption = image, caption
        self.nrow, self.zoom = nrow, zoom
        self.fallback = fallback
        self.renders = 0
        for c in self.controls:
            c.observe(self._refresh, names="value")
        self._refresh()

    @property
    def values(self) -> tuple[Any, ...]:
        """The controls' current values, in order."""
        return tuple(c.value for c in self.controls)

    def _refresh(self, _change: Any = None) -> None:
        images, caption = self.render(*self.values)
        self.image.value = render_png(images, self.nrow, self.zoom)
        self.caption.value = caption
        self.renders += 1

    def move(self, index: int, value: Any) -> None:
        """Move control ``index`` to ``value``; the image and caption update, as in the browser."""
        self.controls[index].value = value


def _slider(n: int, description: str, value: int = 0) -> ipywidgets.IntSlider:
    return ipywidgets.IntSlider(value=value, min=0, max=max(n - 1, 0), step=1, description=description,
                                continuous_update=True, readout=False, layout=ipywidgets.Layout(width="420px"))


def image_slider(
    images: Sequence[torch.Tensor], captions: Sequence[str], *, description: str = "frame", value: int = 0,
    nrow: int = 8, zoom: int = 3, fallback: str = "strip", title: str | None = None, show: bool = True,
) -> Explorer:
    """A slider over precomputed frames (each an image or a batch shown as a grid), captioned.

    ``fallback``: ``"strip"`` (PNG frame strip), ``"animation"`` (HTML animation) or ``"none"``;
    it is displayed first when ``show`` (and kept in ``Explorer.fallback``).
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"need as many captions as frames (≥ 1), got {len(images)} frames, {len(captions)} captions")
    frames = [image_batch(x) for x in images]
    fb = _make_fallback(fallback, frames, list(captions), nrow, title)
    if show and fb is not None:
        _show(fb)
    return Explorer([_slider(len(frames), description, value)],
                    lambda i: (frames[i], captions[i]), nrow=nrow, zoom=zoom, fallback=fb)


def _make_fallback(kind: str, frames: list[torch.Tensor], captions: list[str], nrow: int,
                   title: str | None) -> bytes | str | None:
    if kind == "strip":
        return frame_strip_png(frames, [c.replace("<br>", "\n") for c in captions], title=title, nrow=nrow)
    if kind == "animation":
        return animation_html(frames, [c.replace("<br>", "  ") for c in captions], nrow=nrow)
    if kind == "none":
        return None
    raise ValueError(f"fallback must be 'strip', 'animation' or 'none', got {kind!r}")


# ----------------------------------------------------------------------------------------------
# chapter 2: the forward process and the reverse trajectory
# ----------------------------------------------------------------------------------------------


def timestep_explorer(
    image: torch.Tensor, schedule, frames: int = 8, *, seed: int = 0, zoom: int = 4, show: bool = True,
) -> Explorer:
    """Slide t from 0 to T−1 and watch x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for one digit (Ho et al. eq. 4).

    ``image``: (1, 32, 32) in [−1, 1]; ``schedule``: a :class:`~mnistdiff.schedules.NoiseSchedule`.
    The noise ε is drawn once (``seed``), so the slider shows the same noise taking over. The caption
    gives ᾱ_t and the signal and noise coefficients. The fallback is a strip of ``frames`` evenly
    spaced timesteps.
    """
    x0 = image_batch(image)[:1]
    T = schedule.num_timesteps
    ab = schedule.alphas_cumprod.double().cpu()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))

    def x_t(t: int) -> torch.Tensor:
        a = ab[t]
        return (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()

    def caption(t: int) -> str:
        a = float(ab[t])
        return (f"t = {t}<br>ᾱ<sub>t</sub> = {a:.4f} &nbsp; √ᾱ<sub>t</sub> = {a ** 0.5:.3f} &nbsp; "
                f"√(1−ᾱ<sub>t</sub>) = {(1 - a) ** 0.5:.3f}")

    ts = np.linspace(0, T - 1, max(frames, 2)).round().astype(int).tolist()
    fb = frame_strip_png([x_t(t) for t in ts], [f"t={t}\nᾱ={float(ab[t]):.3f}" for t in ts],
                         title=r"$q(x_t \mid x_0)$: the same digit and the same noise as $t$ grows")
    if show:
        _show(fb)
    slider = ipywidgets.IntSlider(value=0, min=0, max=T - 1, step=1, description="t", continuous_update=True,
                                  layout=ipywidgets.Layout(width="420px"))
    return Explorer([slider], lambda t: (x_t(t), caption(t)), nrow=1, zoom=zoom, fallback=fb)


def denoising_player(
    frames: Sequence[tuple[int, torch.Tensor]], *, count: int = 8, max_frames: int = 12, zoom: int = 3,
    fallback: str = "animation", show: bool = True,
) -> Explorer:
    """Step through a sampling trajectory ``[(t, x_t (N, 1, H, W)), …]`` (as returned with
    ``return_intermediates=True``) for its first ``count`` samples.

    At most ``max_frames`` evenly spaced frames are kept (always the first and the last). The
    fallback is an HTML animation that plays x_T → x_0 (or a strip with ``fallback="strip"``).
    """
    if not frames:
        raise ValueError("no frames: sample with return_intermediates=True")
    picks = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    kept = [(int(frames[i][0]), image_batch(frames[i][1])[:count]) for i in picks]
    T = kept[0][0]
    captions = [("x_T (pure noise)" if k == 0 else ("x_0 (the sample)" if k == len(kept) - 1 else f"x_t, t = {t}"))
                .replace("x_T", f"x_{T}") for k, (t, _) in enumerate(kept)]
    return image_slider([x for _, x in kept], captions, description="step", nrow=count, zoom=zoom,
                        fallback=fallback, show=show)


# ----------------------------------------------------------------------------------------------
# chapter 3: DDIM steps and η
# ----------------------------------------------------------------------------------------------


def ddim_explorer(
    model, steps_options: Sequence[int], etas: Sequence[float] = (0.0, 0.5, 1.0), seed: int = 0,
    device: str | torch.device = "cpu", *,
    num_samples: int = 4, samples: dict[tuple[int, float], torch.Tensor] | None = None,
    zoom: int = 3, show: bool = True,
) -> Explorer:
    """Two sliders, DDIM steps S and η, over samples precomputed from one seed (the same x_T for all).

    ``model``: a :class:`~mnistdiff.model.DiffusionModel` (pixel or latent: it decodes). All
    ``len(steps_options) × len(etas)`` settings are sampled once with ``num_samples`` samples each,
    so the sliders respond instantly and nothing runs in the browser; pass ``samples`` (a dict
    ``(steps, eta) → (N, 1, 32, 32)``) to reuse results you already have. The fallback is a PNG
    table: one row per η, one column per number of steps. The returned explorer's ``samples``
    attribute holds every precomputed batch, keyed by ``(steps, eta)``.
    """
    steps_options = [int(s) for s in steps_options]
    etas = [float(e) for e in etas]
    if not steps_options or not etas:
        raise ValueError("need at least one steps option and one eta")
    cache: dict[tuple[int, float], torch.Tensor] = {}
    for s in steps_options:
        for e in etas:
            if samples is not None and (s, e) in samples:
                cache[(s, e)] = image_batch(samples[(s, e)])[:num_samples]
            else:
                x, _ = model.sample(num_samples, sampler="ddim", steps=s, eta=e, seed=seed, device=device)
                cache[(s, e)] = x
    fb = _table_png(cache, etas, steps_options, lambda e: f"η = {e:g}", lambda s: f"S = {s}")
    if show:
        _show(fb)
    steps_slider = ipywidgets.SelectionSlider(options=steps_options, value=steps_options[-1], description="steps S",
                                              continuous_update=True, layout=ipywidgets.Layout(width="420px"))
    eta_slider = ipywidgets.SelectionSlider(options=etas, value=etas[0], description="η", continuous_update=True,
                                            layout=ipywidgets.Layout(width="420px"))

    def render(s: int, e: float) -> tuple[torch.Tensor, str]:
        what = "deterministic" if e == 0 else "stochastic"
        return cache[(s, e)], f"DDIM, S = {s} steps, η = {e:g} ({what}); seed {seed}"

    explorer = Explorer([steps_slider, eta_slider], render, nrow=num_samples, zoom=zoom, fallback=fb)
    explorer.samples = cache  # (steps, eta) → (num_samples, 1, 32, 32), for numbers next to the figure
    return explorer


def _table_png(cache: dict[tuple[Any, Any], torch.Tensor], rows: Sequence[Any], cols: Sequence[Any],
               row_label: Callable[[Any], str], col_label: Callable[[Any], str]) -> bytes:
    """A table of sample grids (each one row): ``cache[(col, row)]`` in row ``row``, column ``col``; a whole zoom."""
    arrays = {k: grid_array(v, nrow=len(v)) for k, v in cache.items()}
    h, w = next(iter(arrays.values())).shape
    zoom = max(1, round(150 / w))
    left_px, top_px, gap = 46, 22, 8
    cell_w, cell_h = w * zoom + gap, h * zoom + gap
    width, height = left_px + len(cols) * cell_w, top_px + len(rows) * cell_h
    fig = new_figure(width / 100, height / 100)
    for i, e in enumerate(rows):
        for j, s in enumerate(cols):
            x0, y0 = left_px + j * cell_w, top_px + i * cell_h
            ax = fig.add_axes((x0 / width, 1 - (y0 + h * zoom) / height, w * zoom / width, h * zoom / height))
            ax.imshow(arrays[(s, e)], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_label(s), fontsize=8, pad=3)
            if j == 0:
                ax.set_ylabel(row_label(e), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# chapter 4: walking between two latents
# ----------------------------------------------------------------------------------------------


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, w: float, mode: str = "linear") -> torch.Tensor:
    """(1 − w)·z_a + w·z_b, or spherical interpolation (``mode="slerp"``, Shoemake 1985) on the flattened tensors."""
    if mode == "linear":
        return (1 - w) * z_a + w * z_b
    if mode != "slerp":
        raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
    a, b = z_a.flatten().double(), z_b.flatten().double()
    cos = torch.clamp((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12), -1.0, 1.0)
    theta = torch.arccos(cos)
    if float(theta) < 1e-6:
        return (1 - w) * z_a + w * z_b
    out = (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)
    return out.reshape(z_a.shape).to(z_a.dtype)


def latent_walk(
    vae, z_a: torch.Tensor, z_b: torch.Tensor, frames: int = 8, scale: float = 1.0, *, mode: str = "linear",
    zoom: int = 4, show: bool = True,
) -> Explorer:
    """Slide the weight w from 0 to 1 and decode z(w) = (1 − w) z_a + w z_b live through the VAE.

    ``vae``: a :class:`~mnistdiff.vae.VAE` (anything with ``decode``); ``z_a``, ``z_b``: latents of
    shape (C, h, w) or (1, C, h, w). ``scale`` is the latent scale factor s of latent diffusion: the
    latents are given *scaled* (z·s, what the diffusion model sees) and decoded as ``decode(z / s)``;
    leave it at 1.0 for raw VAE latents (e.g. posterior means). ``mode="slerp"`` interpolates on
    the sphere instead. The fallback is a strip of ``frames`` evenly spaced weights.
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    za = z_a if z_a.ndim == 4 else z_a[None]
    zb = z_b if z_b.ndim == 4 else z_b[None]
    try:
        device = next(vae.parameters()).device
    except (AttributeError, StopIteration):
        device = za.device
    za, zb = za.detach().float().to(device), zb.detach().float().to(device)

    @torch.no_grad()
    def decode(w: float) -> torch.Tensor:
        z = interpolate(za, zb, float(w), mode)
        return vae.decode(z / scale).float().clamp(-1, 1).cpu()

    ws = np.linspace(0, 1, max(frames, 2)).tolist()
    fb = frame_strip_png([decode(w) for w in ws], [f"w={w:.2f}" for w in ws],
                         title=(f"decoding (1−w)·z_a + w·z_b ({mode})" if mode == "linear"
                                else "decoding slerp(z_a, z_b; w)"))
    if show:
        _show(fb)
    slider = ipywidgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="w", continuous_update=True,
                                    readout_format=".2f", layout=ipywidgets.Layout(width="420px"))

    def render(w: float) -> tuple[torch.Tensor, str]:
        what = f"z = {1 - w:.2f}·z_a + {w:.2f}·z_b" if mode == "linear" else "spherical interpolation"
        return decode(w), f"w = {w:.2f}: {what}"

    return Explorer([slider], render, nrow=1, zoom=zoom, fallback=fb)


# ----------------------------------------------------------------------------------------------
# chapter 7: ask for a digit, with guidance weight w
# ----------------------------------------------------------------------------------------------


def guidance_explorer(
    model, digits: Sequence[int] = tuple(range(10)), scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
    seed: int = 0, device: str | torch.device = "cpu", *, num_samples: int = 6, ddim_steps: int = 50,
    samples: dict[tuple[float, int], torch.Tensor] | None = None, zoom: int = 3, show: bool = True,
) -> Explorer:
    """Two sliders, the digit asked for and the guidance weight w, over samples precomputed from one seed.

    ``model``: a class-conditional :class:`~mnistdiff.model.DiffusionModel`. Every (w, digit) gets
    ``num_samples`` DDIM samples from the same x_T, so moving w shows what guidance does to the same noise;
    pass ``samples`` (``(w, digit) → (N, 1, 32, 32)``) to reuse batches you already have. The fallback is a PNG
    table: one row per digit, one column per w. ``explorer.samples`` holds the batches.
    """
    digits, scales = [int(d) for d in digits], [float(w) for w in scales]
    if not digits or not scales:
        raise ValueError("need at least one digit and one guidance weight")
    cache: dict[tuple[float, int], torch.Tensor] = {}
    for w in scales:
        for d in digits:
            if samples is not None and (w, d) in samples:
                cache[(w, d)] = image_batch(samples[(w, d)])[:num_samples]
            else:
                labels = torch.full((num_samples,), d, dtype=torch.long)
                cache[(w, d)] = model.sample(num_samples, sampler="ddim", steps=ddim_steps, seed=seed,
                                             device=device, labels=labels, guidance=w)[0]
    fb = _table_png(cache, digits, scales, lambda d: f"digit {d}", lambda w: f"w = {w:g}")
    if show:
        _show(fb)
    digit_slider = ipywidgets.SelectionSlider(options=digits, value=digits[0], description="digit",
                                              layout=ipywidgets.Layout(width="420px"))
    w_slider = ipywidgets.SelectionSlider(options=scales, value=scales[len(scales) // 2], description="w",
                                          layout=ipywidgets.Layout(width="420px"))

    def render(d: int, w: float) -> tuple[torch.Tensor, str]:
        what = "no label" if w == 0 else ("the conditional model" if w == 1 else "guided")
        return cache[(w, d)], f"asked for {d}, w = {w:g} ({what}); seed {seed}"

    explorer = Explorer([digit_slider, w_slider], render, nrow=num_samples, zoom=zoom, fallback=fb)
    explorer.samples = cache
    return explorer
