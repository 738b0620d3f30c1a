"""Static pictures of the course's explorers: what the book shows where a notebook has a widget.

A PNG frame strip drawn with matplotlib (:func:`frame_strip_png`), an HTML animation that plays
with no kernel (:func:`animation_html`), and the PNG bytes of one grid (:func:`render_png`).
None of it needs ipywidgets; :mod:`mnistdiff.course.widgets` shows these before each widget.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image as PILImage

from mnistdiff.viz import grid_array

__all__ = ["image_batch", "new_figure", "render_png", "frame_strip_png", "animation_html"]


def image_batch(images: torch.Tensor) -> torch.Tensor:
    """(H, W), (1, H, W) or (N, 1, H, W) → (N, 1, H, W) float on the CPU."""
    x = images.detach().float().cpu()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image (1, H, W) or a batch (N, 1, H, W), got shape {tuple(images.shape)}")
    return x


def render_png(images: torch.Tensor, nrow: int = 8, zoom: int = 3) -> bytes:
    """PNG bytes of a grid of images in [−1, 1], enlarged ``zoom`` times with nearest-neighbour (crisp pixels)."""
    arr = grid_array(image_batch(images), nrow=nrow)
    img = PILImage.fromarray(arr, mode="L")
    if zoom != 1:
        img = img.resize((img.width * zoom, img.height * zoom), PILImage.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def new_figure(width: float, height: float):
    """A matplotlib Figure *not* registered with pyplot (so the inline backend never shows it twice)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _frame_arrays(frames: Sequence[torch.Tensor], captions: Sequence[str], nrow: int) -> list[np.ndarray]:
    """One uint8 grid per frame, after checking there are frames and one caption each."""
    if len(frames) != len(captions):
        raise ValueError(f"{len(frames)} frames but {len(captions)} captions")
    if not frames:
        raise ValueError("no frames to draw")
    return [grid_array(image_batch(f), nrow=nrow) for f in frames]


def frame_strip_png(
    frames: Sequence[torch.Tensor], captions: Sequence[str], title: str | None = None,
    nrow: int = 8, panel_px: int = 84, max_width_px: int = 1000,
) -> bytes:
    """A left-to-right strip of ``frames`` (each an image or a small batch shown as a grid), captioned.

    Each frame is enlarged by a whole factor (pixels stay square and crisp) to about ``panel_px``
    pixels wide; frames wrap onto more rows when the strip would be wider than ``max_width_px``.
    Returns PNG bytes.
    """
    arrays = _frame_arrays(frames, captions, nrow)
    h, w = arrays[0].shape
    zoom = max(1, round(panel_px / w))
    ncols = max(1, min(len(arrays), max_width_px // (w * zoom + 8)))
    nrows = -(-len(arrays) // ncols)
    dpi, cap_px, title_px = 100, 26, (22 if title else 0)
    cell_w, cell_h = w * zoom + 8, h * zoom + cap_px
    fig = new_figure(ncols * cell_w / dpi, (nrows * cell_h + title_px) / dpi)
    for k, (arr, cap) in enumerate(zip(arrays, captions)):
        r, c = divmod(k, ncols)
        left = (c * cell_w + 4) / (ncols * cell_w)
        bottom = 1 - (title_px + r * cell_h + cap_px + h * zoom) / (nrows * cell_h + title_px)
        ax = fig.add_axes((left, bottom, w * zoom / (ncols * cell_w), h * zoom / (nrows * cell_h + title_px)))
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(cap, fontsize=7, pad=2)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 4 / (nrows * cell_h + title_px), va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def animation_html(
    frames: Sequence[torch.Tensor], captions: Sequence[str], nrow: int = 8, interval: int = 300, zoom: int = 2,
) -> str:
    """An HTML/JavaScript animation of ``frames`` (``FuncAnimation.to_jshtml()``): plays with no kernel.

    Frames are drawn ``zoom`` times their size in pixels, each stored as a PNG inside the HTML: keep
    them few and small.
    """
    from matplotlib.animation import FuncAnimation

    arrays = _frame_arrays(frames, captions, nrow)
    h, w = arrays[0].shape
    dpi, cap_px = 100, 20
    fig = new_figure(w * zoom / dpi, (h * zoom + cap_px) / dpi)
    ax = fig.add_axes((0, 0, 1, h * zoom / (h * zoom + cap_px)))
    ax.axis("off")
    im = ax.imshow(arrays[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    text = fig.text(0.5, 1 - 3 / (h * zoom + cap_px), captions[0], ha="center", va="top", fontsize=8)

    def update(i: int):
        im.set_data(arrays[i])
        text.set_text(captions[i])
        return im, text

    anim = FuncAnimation(fig, update, frames=len(arrays), interval=interval, blit=False)
    return anim.to_jshtml(fps=max(1, round(1000 / interval)), default_mode="once")
