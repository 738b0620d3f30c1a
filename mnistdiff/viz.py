"""Figures: sample grids, denoising progressions, loss curves, latent scatter plots.

Grids use ``torchvision.utils.make_grid``; images are (N, 1, H, W) in [−1, 1]. Functions that
return a matplotlib figure leave showing/saving to the caller; ``save_*`` functions write files
(PNG or PDF by suffix) and close their figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator
from PIL import Image

__all__ = [
    "grid_array",
    "show_grid",
    "save_grid",
    "save_image",
    "pick_frames",
    "frames_grid",
    "progression_strip",
    "plot_loss_curves",
    "latent_scatter",
    "pca_2d",
]


def grid_array(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """(N, 1, H, W) in [−1, 1] → a uint8 (H', W') grid image."""
    from torchvision.utils import make_grid  # imported here: torchvision takes seconds to import

    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, normalize=True,
                     value_range=(-1, 1), pad_value=1.0)
    return (grid[0].numpy() * 255).round().astype(np.uint8)


def show_grid(
    images: torch.Tensor, nrow: int = 8, title: str | None = None, ax: plt.Axes | None = None
) -> Figure | SubFigure:
    """Draw a grid of images on ``ax`` (or a new figure) and return the figure."""
    if ax is None:
        rows = max(1, (images.shape[0] + nrow - 1) // nrow)
        _, ax = plt.subplots(figsize=(min(nrow, images.shape[0]) * 0.6 + 0.4, rows * 0.6 + 0.5))
    ax.imshow(grid_array(images, nrow), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax.figure


def save_image(image: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """Save one image (H, W) uint8 array or (1, H, W) tensor in [−1, 1] as PNG or PDF (by suffix), with PIL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, torch.Tensor):
        image = grid_array(image[None] if image.ndim == 3 else image, nrow=1, padding=0)
    img = Image.fromarray(image, mode="L")
    if path.suffix.lower() == ".pdf":
        img.convert("RGB").save(path, "PDF", resolution=72)
    else:
        img.save(path)
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save a grid of (N, 1, H, W) images in [−1, 1] (PNG or PDF by suffix)."""
    return save_image(grid_array(images, nrow), path)


def pick_frames(frames: Sequence[tuple[int, torch.Tensor]], max_frames: int = 11) -> list[int]:
    """Indices of at most ``max_frames`` frames, evenly spaced from the first (x_T) to the last (x_0)."""
    return np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int).tolist()


def frames_grid(
    frames: Sequence[tuple[int, torch.Tensor]], samples: int | Sequence[int] = 8, max_frames: int = 11
) -> np.ndarray:
    """Rows = samples, columns = steps x_T → x_0 (:func:`pick_frames`): a uint8 array for a figure.

    ``frames``: ``[(t, x_t (N, 1, H, W)), …]``; ``samples``: the first that many, or the given indices.
    """
    picks = pick_frames(frames, max_frames)
    rows = range(min(samples, frames[0][1].shape[0])) if isinstance(samples, int) else samples
    return grid_array(torch.cat([torch.stack([frames[j][1][i] for j in picks]) for i in rows]), nrow=len(picks))


def progression_strip(frames: Sequence[tuple[int, torch.Tensor]], index: int = 0, max_frames: int = 11) -> np.ndarray:
    """A left-to-right strip x_T → x_0 of sample ``index``: one row of :func:`frames_grid`."""
    return frames_grid(frames, [index], max_frames)


def plot_loss_curves(history: list[dict[str, float]], path: str | Path | None = None) -> plt.Figure:
    """Train and eval loss per epoch (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if history:
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
        ax.plot(epochs, [h["eval_loss"] for h in history], "s--", label="eval (EMA)")
        if all(h["train_loss"] > 0 for h in history):
            ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Project (N, D) onto its first two principal components → (N, 2)."""
    x = x.float().flatten(1)
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


def latent_scatter(
    latents: torch.Tensor, labels: torch.Tensor, path: str | Path | None = None, title: str = "", project: bool = True
) -> plt.Figure:
    """Scatter latents (N, …) coloured by digit: their first two principal components, or
    (``project=False``) two given coordinates (N, 2)."""
    xy = (pca_2d(latents) if project else latents.float().flatten(1)[:, :2]).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "VAE latents (first two principal components)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
