"""Generate samples from a trained model (pixel or latent) and write them to a folder.

``generate`` draws N samples in batches with one seeded generator, by ancestral DDPM sampling or
DDIM; for latent diffusion it decodes the latents (and the intermediate steps) through the VAE.
``write_sample_folder`` lays out what the ``sample`` command promises::

    generated_samples/
      grid.png, grid.pdf       all samples (up to 256) in a grid
      samples.npz              key "samples": uint8 (N, 1, 32, 32), for ``mnistdiff evaluate``
      info.json                how they were made
      sample_000/              for the first few samples:
        final.pdf              the sample
        progression.pdf        x_T → x_0 strip
        steps/step_0999.pdf …  individual denoising steps
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistdiff.config import DEFAULT_ETA
from mnistdiff.data import to_uint8
from mnistdiff.ddim import ddim_sample_loop
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, SampleOutput, p_sample_loop
from mnistdiff.files import atomic_write_bytes, atomic_write_text
from mnistdiff.guidance import GuidedDenoiser, check_guidance
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.viz import progression_strip, save_grid, save_image

__all__ = [
    "choose_fast", "generate", "write_sample_folder", "save_npz", "FastDenoiser", "FAST_MODES"]

Decoder = Callable[[torch.Tensor], torch.Tensor]

FAST_MODES = ("off", "amp", "compile", "cudagraphs")


class _Autocast(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x, t, *y).float()


class FastDenoiser(torch.nn.Module):
    """``model(x_t, t) → ε̂`` (float32) in bf16 autocast and channels_last; ``fast="compile"`` adds
    ``torch.compile``, ``fast="cudagraphs"`` compiles with ``mode="reduce-overhead"`` (CUDA graphs).

    The samplers consume each ε̂ before the next call, as CUDA-graph replays require.
    """

    _fn: Callable[..., torch.Tensor]

    def __init__(self, model: torch.nn.Module, device_type: str, fast: str = "amp") -> None:
        super().__init__()
        if fast not in FAST_MODES[1:]:
            raise ValueError(f"fast must be one of {FAST_MODES[1:]}, got {fast!r}")
        self.inner = _Autocast(model.to(memory_format=torch.channels_last), device_type)
        self.cudagraphs = fast == "cudagraphs"
        fn: Callable = self.inner
        if fast != "amp":
            fn = torch.compile(self.inner, mode="reduce-overhead" if self.cudagraphs else None, dynamic=False)
        object.__setattr__(self, "_fn", fn)  # not a submodule: the weights stay registered once

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """ε̂ for ``x``, ``t`` (and the labels ``y`` of a class-conditional model)."""
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._fn(x.contiguous(memory_format=torch.channels_last), t, *y)


@torch.no_grad()
def choose_fast(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device | str = "cpu",
                batch_size: int = 128, calls: int = 2) -> tuple[str, dict[str, float]]:
    """``"amp"`` or ``"off"``: whichever runs ``model`` faster here, timed on ``calls`` forward passes of a
    ``batch_size`` batch after one warm-up each. bf16 is fast on CPUs with AMX/AVX-512 bf16 and slow
    on others, so this is measured, never assumed. Returns the choice and network calls per second."""
    import copy
    import time

    device = torch.device(device)
    x = torch.randn((batch_size, *shape), device=device)
    t = torch.full((batch_size,), 500, device=device, dtype=torch.long)
    speeds: dict[str, float] = {}
    for mode in ("off", "amp"):
        net = copy.deepcopy(model).to(device).eval()
        net = FastDenoiser(net, device.type, "amp") if mode == "amp" else net
        net(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            net(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        speeds[mode] = round(calls * batch_size / (time.perf_counter() - t0), 1)
    return max(speeds, key=speeds.__getitem__), speeds


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    sched: NoiseSchedule,
    num_samples: int,
    *,
    shape: tuple[int, int, int] = (1, 32, 32),
    mode: str = "ddim",
    ddim_steps: int = 50,
    eta: float = DEFAULT_ETA,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    decode: Decoder | None = None,
    return_intermediates: bool = False,
    progress: bool = False,
    fast: str = "off",
    clip_range: ClipRange = PIXEL_RANGE,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> SampleOutput:
    """Draw ``num_samples`` samples → :class:`~mnistdiff.ddpm.SampleOutput` ``(images (N, 1, 32, 32) in [−1, 1]
    on CPU, frames)``
    (latents, unbounded, when the model works in a latent space and no ``decode`` is given).

    ``shape`` is one sample's shape in the model's space (pixels, or latents with ``decode`` given);
    ``clip_range`` bounds x̂_0 in that space (:data:`~mnistdiff.ddpm.PIXEL_RANGE` for pixels; ``(−c, c)`` for
    latents). ``frames`` (with ``return_intermediates``; else empty) are the first batch's ``[(t, x_t), …]``, decoded.
    ``fast`` (``"amp"``, ``"compile"``, ``"cudagraphs"``; default ``"off"``: float32 as trained) runs the
    network through :class:`FastDenoiser`, in batches as equal as possible (few shapes to compile).
    ``labels`` (N,) ask a class-conditional model for those classes (:data:`~mnistdiff.unet.NULL_LABEL`: none),
    guided with weight ``guidance`` (:class:`~mnistdiff.guidance.GuidedDenoiser`; 1: the conditional model).
    """
    _check_request(num_samples, mode, labels, guidance)
    device = torch.device(device)
    batch_size = batch_size or (2048 if device.type == "cuda" else 256)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = model.to(device).eval()
    if fast != "off":
        model = FastDenoiser(model, device.type, fast)
        batch_size = math.ceil(num_samples / math.ceil(num_samples / batch_size))  # e.g. 10,000 → 5 × 2,000
    sched = sched.to(device)
    outs: list[torch.Tensor] = []
    frames: list[tuple[int, torch.Tensor]] = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        want = return_intermediates and start == 0
        net = model if labels is None else GuidedDenoiser(model, labels[start:start + n].to(device), guidance)
        if mode == "ddpm":
            x, fr = p_sample_loop(net, sched, (n, *shape), generator=gen, device=device,
                                  return_intermediates=want, clip_range=clip_range, progress=progress)
        else:
            x, fr = ddim_sample_loop(net, sched, (n, *shape), ddim_steps=ddim_steps, eta=eta, generator=gen,
                                     device=device, return_intermediates=want, clip_range=clip_range,
                                     progress=progress)
        if decode is not None:
            x = decode(x)
            fr = [(t, decode(f.to(device)).cpu()) for t, f in fr]
        outs.append(x.float().cpu())  # pixels are already in [−1, 1] (x̂_0 clipped; the decoder clamps)
        frames = fr if want else frames
    return SampleOutput(torch.cat(outs), frames)


def _check_request(num_samples: int, mode: str, labels: torch.Tensor | None, guidance: float) -> None:
    """:func:`generate`'s arguments: a positive count, a known sampler, one label per sample, a valid weight."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if mode not in ("ddpm", "ddim"):
        raise ValueError(f"mode must be 'ddpm' or 'ddim', got {mode!r}")
    if labels is not None and tuple(labels.shape) != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},), one per sample, got {tuple(labels.shape)}")
    check_guidance(guidance)


def save_npz(path: str | Path, images: torch.Tensor, **meta: Any) -> Path:
    """Write images (N, 1, 32, 32) as uint8 under key ``samples`` (atomically), plus metadata arrays."""
    import io

    buf = io.BytesIO()
    arrays: dict[str, Any] = {"samples": to_uint8(images).numpy(), **{k: np.asarray(v) for k, v in meta.items()}}
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_sample_folder(
    out_dir: str | Path,
    images: torch.Tensor,
    frames: list[tuple[int, torch.Tensor]] | None = None,
    *,
    nrow: int = 8,
    individual: int = 8,
    info: dict[str, Any] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Path]:
    """Write the grid, the npz, and per-sample folders (final, progression, steps) for the first ``individual``.

    ``labels`` (N,), the classes a class-conditional model was asked for, go into the npz as ``labels``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {} if labels is None else {"labels": labels.cpu().numpy().astype(np.int64)}
    paths = {
        "grid_png": save_grid(images[:256], out / "grid.png", nrow),
        "grid_pdf": save_grid(images[:256], out / "grid.pdf", nrow),
        "npz": save_npz(out / "samples.npz", images, **extra),
    }
    for i in range(min(individual, images.shape[0])):
        d = out / f"sample_{i:03d}"
        save_image(images[i], d / "final.pdf")
        if frames:
            save_image(progression_strip(frames, i), d / "progression.pdf")
            for t, x in frames:
                save_image(x[i], d / "steps" / f"step_{t:04d}.pdf")
    atomic_write_text(out / "info.json", json.dumps({**(info or {}), "num_samples": int(images.shape[0]),
                                                     "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    paths["info"] = out / "info.json"
    return paths
