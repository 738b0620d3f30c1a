"""Generate samples from a trained model (pixel or latent) and write them to a folder.

``generate`` draws N samples in batches with one seeded generator, by ancestral DDPM sampling or DDIM (a flow
model: Euler or Heun on its ODE); for latent diffusion it decodes the latents (and the intermediate steps) through
the VAE.
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

import functools
import json
import math
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistdiff.config import DEFAULT_ETA, DEFAULT_GUIDANCE, DEFAULT_STEPS, PRECISIONS, ConfigError
from mnistdiff.data import to_uint8
from mnistdiff.ddim import ddim_sample_loop
from mnistdiff.ddpm import PIXEL_RANGE, ClipRange, Denoiser, SampleOutput, as_float, p_sample_loop
from mnistdiff.devices import clear_winner
from mnistdiff.files import atomic_write_bytes, atomic_write_text
from mnistdiff.flows import FLOW_SOLVERS, flow_sample_loop
from mnistdiff.guidance import AutoGuidedDenoiser, GuidedDenoiser
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.solvers import SOLVERS, network_time, solver_sample_loop
from mnistdiff.viz import progression_strip, save_grid, save_image

__all__ = ["generate", "write_sample_folder", "save_npz", "FastDenoiser", "ChunkedDenoiser", "CHUNKS",
           "MEASURED_PRECISIONS", "measure_precision", "measure_decoder",
           "SAMPLERS", "OLD_FAST", "old_spellings"]

Decoder = Callable[[torch.Tensor], torch.Tensor]

#: The samplers :func:`generate` runs: DDPM's ancestral sampler over all T steps, or DDIM over ``steps``; for a flow
#: model, Euler or Heun over ``steps`` steps of its ODE (:data:`~mnistdiff.flows.FLOW_SOLVERS`); for any model,
#: DPM-Solver++(2M) and its SDE twin, and for an ε-network EDM's Heun (:data:`~mnistdiff.solvers.SOLVERS`).
SAMPLERS = ("ddim", "ddpm", *dict.fromkeys([*FLOW_SOLVERS, *SOLVERS]))

#: The precisions a network or a decoder can run in here (``"auto"`` picks one of them by timing): float32 or bf16
#: autocast, each in the plain memory format or channels_last (``_cl``).
MEASURED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")

#: ``fast``, the old spelling of (``precision``, ``compile``) (``sample --fast``, ``sample(fast=)``).
OLD_FAST: dict[str, tuple[str, bool | str]] = {
    "off": ("fp32", False), "amp": ("bf16_cl", False), "compile": ("bf16_cl", True),
    "cudagraphs": ("bf16_cl", "reduce-overhead"),
}


class FastDenoiser(torch.nn.Module):
    """``model(x_t, t[, y]) → ε̂`` (float32) run in bf16 autocast (``precision="bf16"``), channels_last (``"fp32_cl"``)
    or both (``"bf16_cl"``); ``compile`` adds ``torch.compile`` (``True`` or a mode: ``"reduce-overhead"`` is CUDA
    graphs). The model is put in the memory format asked for (back to the plain one for ``"fp32"``/``"bf16"``).

    The samplers consume each ε̂ before the next call, as CUDA-graph replays require.
    """

    _fn: Callable[..., torch.Tensor]

    def __init__(self, model: torch.nn.Module, device_type: str, precision: str = "bf16_cl",
                 compile: bool | str = False) -> None:
        super().__init__()
        self.channels_last = precision.endswith("_cl")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.inner = model.to(memory_format=fmt)
        self.device_type, self.autocast = device_type, precision.startswith("bf16")
        self.cudagraphs = compile == "reduce-overhead"
        fn: Callable = self._forward
        if compile:
            fn = torch.compile(self._forward, mode=None if compile is True else str(compile), dynamic=False)
        object.__setattr__(self, "_fn", fn)  # not a submodule: the weights stay registered once

    def _forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            return as_float(self.inner(x, t, *y))

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """ε̂ for ``x``, ``t`` (and the labels ``y`` of a class-conditional model)."""
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._fn(x, t, *y)


def _seconds(fns: dict[Any, Callable[[], object]], rounds: int, device: torch.device | None = None
             ) -> dict[Any, float]:
    """The fastest of ``rounds`` timed calls of each of ``fns`` (warmed up by the caller), in wall seconds, the
    candidates taken in turn in every round and synchronised on a GPU ``device``: the one timing loop of
    :class:`ChunkedDenoiser`, :func:`measure_precision` and :func:`measure_decoder`. Taking turns and keeping each
    one's fastest call (as :mod:`timeit` advises) leaves a burst of other work on the cores, which slows every call it
    overlaps, out of the comparison; timed one after the other, a burst would sway it towards whoever ran first."""
    cuda = device is not None and device.type == "cuda"
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


#: The sub-batch sizes :class:`ChunkedDenoiser` tries on a CPU. A sampling batch (256 there) of the pixel UNet
#: overflows a two-core CPU's caches: sampled in pieces, the book's pixel DDPM and flow drew 1.1-1.7× the samples per
#: second (Intel Xeon, avx512_bf16, no AMX; ``benchmarks/chunk_speed.py`` → ``results/book/chunk_speed.json``).
CHUNKS = (64, 128)

#: A network whose whole-batch call takes less than this is run whole, unmeasured: measuring costs about eight calls,
#: and the book's latent UNets (0.05 s a call of 256) ran no faster in pieces.
CHUNK_MIN_SECONDS = 0.25


#: What :class:`ChunkedDenoiser` measured for each network :func:`generate` ran, by precision and batch shape.
_CHUNKS_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ChunkedDenoiser(torch.nn.Module):
    """``net(x, t[, y])`` (B, C, H, W) run on pieces of at most ``chunk`` samples of the batch and concatenated, with
    ``chunk`` measured on the first call of each batch shape: the fastest of :data:`CHUNKS` and the whole batch
    (``None``), timed in ``rounds`` rounds that take them in turn (:func:`_seconds`) after a warm-up, among those
    whose ε̂ equals the whole batch's **bit for bit**. So the choice, which timing noise can sway, changes how fast a
    draw is and never what it draws.

    A speed trick of the CPU, like cuDNN's autotuner on a GPU: small batches keep the activations in cache."""

    def __init__(self, net: Callable[..., torch.Tensor], rounds: int = 2,
                 chosen: dict[tuple[int, ...], int | None] | None = None) -> None:
        super().__init__()
        self.inner, self.rounds = net, rounds
        self.chosen = {} if chosen is None else chosen  # batch shape → chunk (None: the whole batch); may be shared

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) not in self.chosen:
            eps, self.chosen[tuple(x.shape)] = self._measure(x, t, *y)
            return eps
        return self._run(self.chosen[tuple(x.shape)], x, t, *y)

    def _run(self, chunk: int | None, *inputs: torch.Tensor) -> torch.Tensor:
        if chunk is None or inputs[0].shape[0] <= chunk:
            return self.inner(*inputs)
        return torch.cat([self.inner(*part) for part in zip(*(v.split(chunk) for v in inputs))])

    def _measure(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """(ε̂ of the whole batch, the chunk to use for this shape): the bit-for-bit check is made on this batch."""
        t0 = time.perf_counter()
        whole = self._run(None, *inputs)
        chunks = [c for c in CHUNKS if c < inputs[0].shape[0]]
        if not chunks or time.perf_counter() - t0 < CHUNK_MIN_SECONDS:
            return whole, None
        same = [None, *(c for c in chunks if torch.equal(self._run(c, *inputs), whole))]  # also the warm-up
        seconds = _seconds({c: functools.partial(self._run, c, *inputs) for c in same}, self.rounds)
        return whole, min(seconds, key=seconds.__getitem__)


@torch.no_grad()
def measure_precision(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device | str = "cpu",
                      batch_size: int = 128, rounds: int = 3) -> tuple[str, dict[str, float]]:
    """``"fp32"``, ``"fp32_cl"``, ``"bf16"`` or ``"bf16_cl"``: whichever runs ``model`` fastest here (a near-tie goes
    to the earlier one: :func:`~mnistdiff.devices.clear_winner`), each timed on a ``batch_size`` batch after a
    warm-up, in ``rounds`` rounds that take the four in turn (:func:`_seconds`). bf16 is fast on CPUs with AMX/AVX-512
    bf16 and slow on others, and channels_last helps on some and hurts on others (the training probe on an AMD EPYC:
    bf16 fastest, bf16_cl slower; the pixel UNet on an Intel Xeon without AMX: fp32_cl fastest), so this is measured,
    never assumed. Returns the choice and network calls per second."""
    import copy

    device = torch.device(device)
    x = torch.randn((batch_size, *shape), device=device)
    t = torch.zeros(batch_size, device=device, dtype=torch.long)  # any t costs the same; 0 is in every schedule
    nets = {p: FastDenoiser(copy.deepcopy(model).to(device).eval(), device.type, p) for p in MEASURED_PRECISIONS}
    for net in nets.values():
        net(x, t)
    seconds = _seconds({p: functools.partial(net, x, t) for p, net in nets.items()}, rounds, device)
    speeds = {p: round(batch_size / s, 1) for p, s in seconds.items()}
    return clear_winner(speeds), speeds


@torch.no_grad()
def measure_decoder(decode: Callable[..., torch.Tensor], shape: tuple[int, int, int],
                    device: torch.device | str = "cpu", batch_size: int = 256, rounds: int = 3
                    ) -> tuple[str, dict[str, float]]:
    """One of :data:`MEASURED_PRECISIONS`: whichever runs ``decode(z, precision)`` (a latent model's VAE decoder)
    fastest here, timed like :func:`measure_precision`. Returns the choice and images decoded per second of each."""
    device = torch.device(device)
    z = torch.randn((batch_size, *shape), device=device)
    for name in MEASURED_PRECISIONS:
        decode(z, name)
    seconds = _seconds({n: functools.partial(decode, z, n) for n in MEASURED_PRECISIONS}, rounds, device)
    speeds = {f"decode_{n}": round(batch_size / s, 1) for n, s in seconds.items()}
    return clear_winner({n: speeds[f"decode_{n}"] for n in MEASURED_PRECISIONS}), speeds


@torch.no_grad()
def generate(model: torch.nn.Module, sched: NoiseSchedule | None, num_samples: int, *,
             shape: tuple[int, int, int] = (1, 32, 32), sampler: str = "ddim", steps: int = DEFAULT_STEPS,
             eta: float = DEFAULT_ETA, seed: int = 0, device: torch.device | str = "cpu", batch_size: int | None = None,
             decode: Decoder | None = None, return_intermediates: bool = False, progress: bool = False,
             precision: str = "fp32", compile: bool | str = False, clip_range: ClipRange = PIXEL_RANGE,
             labels: torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE, timesteps: list[int] | None = None,
             spacing: str | None = None, karras: dict[str, float] | None = None, chunk: bool = True,
             guide: torch.nn.Module | None = None,
             guidance_interval: tuple[float, float] | None = None) -> SampleOutput:
    """Draw ``num_samples`` samples → :class:`~mnistdiff.ddpm.SampleOutput` ``(images (N, 1, 32, 32) in [−1, 1]
    on CPU, frames)`` (latents, unbounded, when the model works in a latent space and no ``decode`` is given).

    The loop under :meth:`mnistdiff.model.DiffusionModel.sample`, which checks the arguments (this does not);
    ``sampler``: as it says (:func:`_sample_loop`). ``shape`` is one sample's shape in the model's space (pixels or
    latents); ``clip_range`` bounds x̂_0 there (:data:`~mnistdiff.ddpm.PIXEL_RANGE`; ``(−c, c)`` for latents).
    ``frames`` (``return_intermediates``) are the first batch's ``[(t, x_t), …]``, decoded. ``precision``
    (:data:`MEASURED_PRECISIONS`; ``"fp32"``: as trained) and ``compile`` run the network through :class:`FastDenoiser`;
    ``chunk``, on a CPU, in pieces of each batch where faster (:class:`ChunkedDenoiser`: the same samples, bit for bit).
    ``labels`` (N,) ask a class-conditional model for those classes (:data:`~mnistdiff.unet.NULL_LABEL`: none), guided
    with weight ``guidance`` (:class:`~mnistdiff.guidance.GuidedDenoiser`); ``guide``, a worse ε-network of the same
    schedule, autoguides ``model`` with that weight instead (:class:`~mnistdiff.guidance.AutoGuidedDenoiser`); either
    only at noise levels σ in ``guidance_interval`` = (σ_lo, σ_hi] (σ = √((1 − ᾱ_t)/ᾱ_t), a flow's t/(1 − t)), if given.
    ``timesteps``: DDIM's own list instead of ``steps`` evenly spaced ones (a student's grid); ``spacing``, ``karras``
    (σ_max, σ_min): the solvers' own."""
    device = torch.device(device)
    batch_size = batch_size or (2048 if device.type == "cuda" else 256)
    gen = torch.Generator(device=device).manual_seed(seed)
    network = _fast_network(model, device, precision, compile, chunk)
    times = None if guidance_interval is None else (network_time(sched, guidance_interval[0]),
                                                    network_time(sched, guidance_interval[1]))
    guided = None if guide is None else AutoGuidedDenoiser(network, _fast_network(guide, device, precision, compile,
                                                                                  chunk), guidance, times)
    if precision != "fp32" or compile:  # batches as equal as possible, e.g. 10,000 → 5 × 2,000
        batch_size = math.ceil(num_samples / math.ceil(num_samples / batch_size))
    outs: list[torch.Tensor] = []
    frames: list[tuple[int, torch.Tensor]] = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        net = guided or (network if labels is None else GuidedDenoiser(network, labels[start:start + n].to(device),
                                                                          guidance, times))
        x, fr = _sample_loop(net, sched, (n, *shape), sampler, steps, eta, timesteps, spacing, karras, generator=gen,
                             device=device, return_intermediates=return_intermediates and start == 0,
                             clip_range=clip_range, progress=progress)
        if decode is not None:  # latents → pixels, the frames too
            x, fr = decode(x), [(t, decode(f.to(device)).cpu()) for t, f in fr]
        outs.append(x.float().cpu())  # pixels are already in [−1, 1] (x̂_0 clipped; the decoder clamps)
        frames += fr  # the first batch's (the others return none)
    return SampleOutput(torch.cat(outs), frames)


def _fast_network(model: torch.nn.Module, device: torch.device, precision: str, compile: bool | str,
                  chunk: bool) -> torch.nn.Module:
    """``model`` on ``device``, run in ``precision`` (and compiled) by :class:`FastDenoiser` where asked, and on a CPU
    in pieces of the batch where faster (:class:`ChunkedDenoiser`, measured once per network, precision and shape)."""
    network = net = model.to(device).to(memory_format=torch.contiguous_format).eval()  # plain, whatever ran before
    if precision != "fp32" or compile:
        net = FastDenoiser(net, device.type, precision, compile)
    if device.type == "cpu" and not compile and chunk:
        net = ChunkedDenoiser(net, chosen=_CHUNKS_CHOSEN.setdefault(network, {}).setdefault(precision, {}))
    return net


def _sample_loop(net: Denoiser, sched: NoiseSchedule | None, shape: tuple[int, ...], sampler: str, steps: int,
                 eta: float, timesteps: list[int] | None, spacing: str | None, karras: dict[str, float] | None,
                 **kw: Any) -> SampleOutput:
    """One batch of ``shape`` by ``sampler``'s loop; ``kw``: the loops' shared keyword arguments (generator, device,
    return_intermediates, clip_range, progress)."""
    if sampler in SOLVERS and (sched is not None or sampler not in FLOW_SOLVERS):
        where: dict[str, Any] = {**({"spacing": spacing} if spacing else {}), **(karras or {})}  # else the defaults
        return solver_sample_loop(net, sched, shape, solver=sampler, steps=steps, **where, **kw)
    if sampler in FLOW_SOLVERS or sched is None:  # a flow (a DDPM sampler without a schedule: the loop refuses it)
        return flow_sample_loop(net, shape, steps=steps, solver=sampler, **kw)
    if sampler == "ddpm":
        return p_sample_loop(net, sched, shape, **kw)
    return ddim_sample_loop(net, sched, shape, ddim_steps=steps, eta=eta, timesteps=timesteps, **kw)


def interval_record(interval: tuple[float, float]) -> list[float | None]:
    """A guidance interval (σ_lo, σ_hi) as a JSON record holds it, which has no inf: null is no upper end."""
    return [None if math.isinf(s) else s for s in interval]


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


def old_spellings(old: dict[str, Any], sampler: str | None, steps: int | None, precision: str | None,
                   compile: bool | str) -> tuple[str | None, int | None, str | None, bool | str]:
    """:meth:`~mnistdiff.model.DiffusionModel.sample`'s old keywords: ``mode`` → ``sampler``, ``ddim_steps`` →
    ``steps``, ``fast`` → ``precision`` and ``compile`` (with a warning)."""
    import warnings

    unknown = set(old) - {"mode", "ddim_steps", "fast"}
    if unknown:
        raise TypeError(f"sample() got unexpected keyword arguments {sorted(unknown)}")
    warnings.warn("sample(mode=, ddim_steps=, fast=) are now sampler=, steps=, precision= (and compile=)",
                  DeprecationWarning, stacklevel=3)
    if "fast" in old:
        if old["fast"] not in OLD_FAST:
            raise ConfigError(f"fast must be one of {', '.join(OLD_FAST)}, got {old['fast']!r}", "fast")
        precision, compile = OLD_FAST[old["fast"]]
    return old.get("mode", sampler), old.get("ddim_steps", steps), precision, compile
