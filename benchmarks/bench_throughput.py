#!/usr/bin/env python
"""Throughput benchmark: training images/s and DDIM-50 sampling images/s, on one device, in one run.

    python benchmarks/bench_throughput.py                       # GPU, full sizes → results/full/benchmark.json
    python benchmarks/bench_throughput.py --device cpu          # CPU, book sizes → results/book/benchmark.json
    python benchmarks/bench_throughput.py --quick --device cpu  # tiny sizes, < 1 min → results/smoke/benchmark.json

Models: mnistdiff's ε-UNet (``mnistdiff.unet.UNet`` with the profile's config) and, when ``diffusers``
is installed (``pip install -e ".[bench]"``), its diffusers ``UNet2DModel`` twin at the same parameter
count (:data:`DIFFUSERS_TWINS`): on a GPU the ``full`` profile (1,707,009 parameters each, the Hugging
Face course's MNIST configuration), on a CPU the ``book`` profile (627,433 each, at the book's batch of
128), with ``--quick`` the ``smoke`` sizes (71,033 each) so that CI can run this on a CPU.
``--models ours_gn32`` adds our UNet with a GroupNorm that returns bf16 under autocast (a suggested
``unet.py`` change), in the autocast modes only.

What is timed is the code users run:

* training: the per-step work of :func:`mnistdiff.training.loop.fit` — a batch gathered from a seeded
  permutation of MNIST held on the device, the loss of :func:`mnistdiff.training.pipelines.make_diffusion_loss`,
  ``zero_grad``/``backward``, gradient clipping, the loss check every 50 steps, AdamW (fused on CUDA),
  the warm-up + cosine learning-rate schedule and the EMA of :func:`mnistdiff.training.ema.make_ema`
  (one fused ``torch._foreach_lerp_`` update, its decay computed on the host). The benchmark's
  :class:`Trainer` mirrors ``fit`` line by line; keep the two in step.
  Per-epoch work (evaluation loss, checkpoints, sample grids) is not in these figures; a real run's
  ``performance_metrics.txt`` has the whole-run figure.
* sampling: :func:`mnistdiff.sampling.generate` with DDIM-50 (``mnistdiff.ddim.ddim_sample_loop``),
  N images in batches, the images copied back to the CPU at the end. Faster modes wrap the network
  (bf16 autocast, channels_last, ``torch.compile``, CUDA graphs through ``mode="reduce-overhead"``);
  the sampler itself is the package's, and the wrapper is :class:`mnistdiff.sampling.FastDenoiser`
  (what ``python -m mnistdiff sample --precision bf16_cl --compile`` uses).

Modes: ``fp32_eager`` (batch 128, the reference's setting), ``fp32_cl_eager`` (float32 in channels_last at a
large batch: the fastest for our UNet on an Intel Xeon without AMX), ``bf16_eager`` (bf16 autocast, what the
book profile's CPU probe picks on AMX machines), ``bf16_cl_eager`` (bf16 autocast and channels_last at a
large batch), ``bf16_cl_compile`` (plus ``torch.compile``), and for sampling
``bf16_cl_cudagraphs`` (``torch.compile(mode="reduce-overhead")``). Warm-up iterations are excluded,
the device is synchronised around every timed region, and compilation time is reported separately
(``compile_seconds``: the first warm-up call minus a steady-state call). Every figure is printed
with the device's name and written to JSON after each measurement (so a run cut short keeps what
it measured). ``--course`` also times ``mnistdiff.course.runner.run_course(profile="full")``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mnistdiff.config import TrainConfig, UNetConfig, to_dict  # noqa: E402
from mnistdiff.course.profiles import FULL, PROFILES  # noqa: E402
from mnistdiff.data import load_mnist  # noqa: E402
from mnistdiff.devices import device_name, remembered_choices  # noqa: E402
from mnistdiff.files import atomic_write_text  # noqa: E402
from mnistdiff.sampling import FastDenoiser, generate  # noqa: E402
from mnistdiff.schedules import NoiseSchedule  # noqa: E402
from mnistdiff.training.checkpoints import git_commit  # noqa: E402
from mnistdiff.training.ema import make_ema  # noqa: E402
from mnistdiff.training.pipelines import make_diffusion_loss  # noqa: E402
from mnistdiff.training.state import lr_lambda  # noqa: E402
from mnistdiff.unet import UNet, count_parameters  # noqa: E402

SCHEMA_VERSION = 1

REFERENCE = {
    "device_name": "NVIDIA H200",
    "torch": "2.11",
    "model": (
        "diffusers UNet2DModel, Hugging Face course MNIST config (1.71 M parameters), cosine DDPM, data on the GPU"
    ),
    "train_fp32_eager_b128_images_per_second": 2016,
    "train_bf16_cl_compile_b512_images_per_second": 9890,
    "train_bf16_cl_compile_b512_compile_seconds": 85,
    "sample_ddim50_10k_images_per_second_low": 407,
    "sample_ddim50_10k_images_per_second_high": 505,
}
TARGETS = {
    "train_images_per_second": 30_000,
    "sample_ddim50_images_per_second": 5_000,
    "ddpm_vae_ldm_total_gpu_seconds": 300,
}

TRAIN_MODES = ("fp32_eager", "fp32_cl_eager", "bf16_eager", "bf16_cl_eager", "bf16_cl_compile")
SAMPLE_MODES = ("fp32_eager", "fp32_cl_eager", "bf16_cl_eager", "bf16_cl_compile", "bf16_cl_cudagraphs")
MODELS = ("ours", "ours_gn32", "diffusers")


# ------------------------------------------------------------------------------------------------
# Devices and models
# ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def diffusers_available() -> tuple[bool, str]:
    try:
        import diffusers  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return False, f"diffusers is not importable ({type(err).__name__}: {err}); pip install -e '.[bench]'"
    return True, ""


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 that returns its input's dtype (improved-diffusion's GroupNorm32).

    Under bf16 autocast ``nn.GroupNorm`` returns float32, so the SiLU after it, the activations
    saved for backward and the next convolution's input cast all move float32; this returns bf16.
    ``ours_gn32`` is our UNet with every GroupNorm swapped for this one (same weights and state dict),
    to measure the suggested ``unet.py`` change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def use_groupnorm32(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = GroupNorm32
    return model


class DiffusersEps(nn.Module):
    """diffusers' ``UNet2DModel`` as a ``model(x_t, t) → ε̂`` callable, the signature mnistdiff's code expects."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


#: diffusers ``UNet2DModel`` twins of each profile's UNet, at the same parameter count
DIFFUSERS_TWINS: dict[str, dict[str, Any]] = {
    # the smoke-sized twin of the course configuration (71,033 parameters, like SMOKE's UNet)
    "smoke": dict(sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16, 16),
                  down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8),
    # the book profile's UNet (627,433 parameters: widths 24/48/48, one block per level, attention at 8×8)
    "book": dict(sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(24, 48, 48),
                 down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8),
    # the Hugging Face course's MNIST configuration (1,707,009 parameters, like FULL's UNet)
    "full": dict(sample_size=32, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 64),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


def build_model(name: str, profile: str) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh model of ``profile``'s size and a flat description of it (class, config, parameters)."""
    if name in ("ours", "ours_gn32"):
        cfg: UNetConfig = PROFILES[profile].ddpm.unet
        model = UNet(cfg)
        if name == "ours_gn32":
            model = use_groupnorm32(model)
        return model, {"class": "mnistdiff.unet.UNet" + (" with GroupNorm32" if name == "ours_gn32" else ""),
                       "config": json.dumps(to_dict(cfg)), "profile": profile}
    if name == "diffusers":
        from diffusers import UNet2DModel

        kw = DIFFUSERS_TWINS[profile]
        model = DiffusersEps(UNet2DModel(**kw))
        return model, {"class": "diffusers.UNet2DModel", "config": json.dumps(kw), "profile": profile}
    raise ValueError(f"unknown model {name!r}")


def forward_gflops(model: nn.Module) -> float | None:
    """Forward FLOPs per 1×32×32 image (torch's FlopCounterMode: convolutions, matmuls, attention)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        m = copy.deepcopy(model).cpu().float().eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(torch.randn(1, 1, 32, 32), torch.tensor([500]))
        return round(counter.get_total_flops() / 1e9, 4)
    except Exception:  # noqa: BLE001 - a nicety, never a failure
        return None


# ------------------------------------------------------------------------------------------------
# The training step (mirrors mnistdiff.training.loop.fit)
# ------------------------------------------------------------------------------------------------


class Trainer:
    """One training step of :func:`mnistdiff.training.loop.fit`, step for step: the permutation copied to the
    device once per epoch, the package's EMA, the NaN check every 50 steps on CUDA.
    """

    CHECK_EVERY_CUDA = 50  # fit checks the loss for NaN every 50 steps on CUDA, every step on CPU

    def __init__(self, model: nn.Module, sched: NoiseSchedule, data: torch.Tensor, *, batch_size: int,
                 device: torch.device, amp: bool, channels_last: bool, compile_mode: str | None,
                 cfg: TrainConfig) -> None:
        self.device, self.cfg = device, cfg
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.train = data
        self.n = data.shape[0]
        self.bs = min(batch_size, self.n)
        self.steps_per_epoch = self.n // self.bs
        total = self.steps_per_epoch * FULL.ddpm.train.epochs  # a full run's length: the schedule stays realistic
        warmup = min(cfg.warmup_steps, max(total // 10, 1))
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     fused=device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_lambda(s, warmup, total))
        self.ema = make_ema(model, cfg.ema_decay)
        if compile_mode is None:
            self.step_model = model
        elif compile_mode == "default":
            self.step_model = torch.compile(model)  # exactly what fit(compile=True) does
        else:
            self.step_model = torch.compile(model, mode=compile_mode)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.loss_fn = make_diffusion_loss(sched)
        self.perm_gen = torch.Generator().manual_seed(cfg.seed)
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.pending: list[torch.Tensor] = []
        self.check_every = 1 if device.type == "cpu" else self.CHECK_EVERY_CUDA
        self.loss_sum = 0.0
        model.train()

    def step(self) -> None:
        if self.perm is None or self.pos >= self.steps_per_epoch:
            self.perm = torch.randperm(self.n, generator=self.perm_gen).to(self.device)  # once per epoch, as fit
            self.pos = 0
        s, bs = self.pos, self.bs
        batch = self.train[self.perm[s * bs:(s + 1) * bs]]
        with self.autocast():
            loss = self.loss_fn(self.step_model, batch, None)
        self.pending.append(loss.detach().float())
        if len(self.pending) >= self.check_every or s == self.steps_per_epoch - 1:
            values = torch.stack(self.pending).cpu()  # fit's flush(): one device sync per 50 steps
            self.pending.clear()
            if not bool(torch.isfinite(values).all()):
                raise FloatingPointError(f"loss became {values.tolist()} during the benchmark")
            self.loss_sum += float(values.sum())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(self.model)
        self.pos += 1


# ------------------------------------------------------------------------------------------------
# The sampler's network wrapper
# ------------------------------------------------------------------------------------------------


#: mode → (``precision``, ``compile``) of :class:`mnistdiff.sampling.FastDenoiser` (``sample --precision --compile``)
FAST_FOR_MODE = {"fp32_cl_eager": ("fp32_cl", False), "bf16_cl_eager": ("bf16_cl", False),
                 "bf16_cl_compile": ("bf16_cl", True), "bf16_cl_cudagraphs": ("bf16_cl", "reduce-overhead")}

MODE_SETTINGS = {  # mode → (bf16 autocast, channels_last, compile mode)
    "fp32_eager": (False, False, None),
    "fp32_cl_eager": (False, True, None),
    "bf16_eager": (True, False, None),
    "bf16_cl_eager": (True, True, None),
    "bf16_cl_compile": (True, True, "default"),
    "bf16_cl_cudagraphs": (True, True, "reduce-overhead"),
}


# ------------------------------------------------------------------------------------------------
# The benchmark run: a plan of measurements, each written to JSON as soon as it is done
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    quick: bool
    profile: str
    device: torch.device
    base_batch: int
    large_batch: int
    warmup_steps: int
    min_steps: int
    min_seconds: float
    max_steps: int
    sample_images: int
    sample_batch: int
    ddim_steps: int
    data_images: int | None
    train_compile_mode: str
    cpu_compile: bool
    time_budget: float | None


class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.s = args, settings
        self.device = settings.device
        self.device_name = device_name(self.device)
        self.t_start = time.perf_counter()
        self.out = Path(args.out)
        self.entries: list[dict[str, Any]] = []
        self.models_info: dict[str, dict[str, Any]] = {}
        self._data: torch.Tensor | None = None
        self.sched = NoiseSchedule.from_config(FULL.ddpm.diffusion)  # T = 1000, cosine (the reference's)
        self.doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "benchmark": "mnistdiff throughput (benchmarks/bench_throughput.py)",
            "profile": settings.profile,
            "quick": settings.quick,
            "device": str(self.device),
            "device_name": self.device_name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda if self.device.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
            "python": platform.python_version(),
            "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "settings": {
                k: (str(v) if isinstance(v, torch.device) else v) for k, v in dataclasses.asdict(settings).items()
            },
            "reference": REFERENCE,
            "targets": TARGETS,
            "models": self.models_info,
            "results": self.entries,
            "summary": {},
            "total_seconds": 0.0,
        }

    # -- bookkeeping ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def write(self) -> None:
        self.doc["total_seconds"] = round(self.elapsed(), 2)
        self.doc["attention_kernels"] = remembered_choices("bf16 attention", self.device)  # what bf16 steps ran
        self.doc["summary"] = self.summary()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out, json.dumps(self.doc, indent=2) + "\n")
        with contextlib.suppress(OSError):
            os.chmod(self.out, 0o644)  # atomic_write_text's temporary file is private

    def log(self, text: str) -> None:
        print(f"[{self.device_name}] {text}", flush=True)

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        base = {"name": entry["name"], "kind": entry["kind"], "model": entry.get("model"), "status": "pending",
                "device": str(self.device), "device_name": self.device_name}
        base.update(entry)
        self.entries.append(base)
        return base

    def data(self) -> torch.Tensor:
        """MNIST training images (N, 1, 32, 32) in [−1, 1], resident on the device (as fit keeps them)."""
        if self._data is None:
            split = load_mnist("train")
            if self.s.data_images is not None:
                split = split.subset(self.s.data_images, 0)
            self._data = split.images.to(self.device)
        return self._data

    def model(self, name: str) -> nn.Module:
        torch.manual_seed(0)
        model, info = build_model(name, self.s.profile)
        if name not in self.models_info:
            info["parameters"] = count_parameters(model)
            info["forward_gflops_per_image"] = forward_gflops(model)
            self.models_info[name] = info
        return model

    def cleanup(self) -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def runnable(self, mode: str) -> bool:
        """Whether this device runs ``mode`` (compiled modes: CUDA, or a CPU with --cpu-compile; CUDA graphs: CUDA)."""
        compile_mode = MODE_SETTINGS[mode][2]
        if compile_mode == "reduce-overhead":
            return self.device.type == "cuda"
        return compile_mode is None or self.device.type == "cuda" or self.s.cpu_compile

    def skip_reason(self, entry: dict[str, Any]) -> str | None:
        if entry["model"] == "diffusers":
            ok, why = diffusers_available()
            if not ok:
                return why
        compile_mode = MODE_SETTINGS.get(entry.get("mode", ""), (None, None, None))[2]
        if compile_mode is not None and self.device.type != "cuda" and not self.s.cpu_compile:
            return "torch.compile modes are measured on CUDA only (pass --cpu-compile to try them on a CPU)"
        if compile_mode == "reduce-overhead" and self.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if self.s.time_budget is not None and self.elapsed() > self.s.time_budget:
            return f"time budget of {self.s.time_budget:.0f} s used up"
        return None

    # -- measurements --------------------------------------------------------------------------

    def measure_train(self, e: dict[str, Any]) -> None:
        amp, channels_last, compile_mode = MODE_SETTINGS[e["mode"]]
        if compile_mode == "default" and self.s.train_compile_mode != "default":
            compile_mode = self.s.train_compile_mode
        e["compile"] = compile_mode
        model = self.model(e["model"])
        cfg = dataclasses.replace(FULL.ddpm.train, batch_size=e["batch_size"])
        tr = Trainer(model, self.sched.to(self.device), self.data(), batch_size=e["batch_size"], device=self.device,
                     amp=amp, channels_last=channels_last, compile_mode=compile_mode, cfg=cfg)
        e["batch_size"] = tr.bs
        # Warm-up (compilation happens in the first step); the first step is timed on its own.
        sync(self.device)
        t0 = time.perf_counter()
        tr.step()
        sync(self.device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(max(self.s.warmup_steps - 1, 0)):
            tr.step()
        sync(self.device)
        rest = time.perf_counter() - t0
        # Timed steps: at least min_steps, and at least min_seconds of them (at most max_steps).
        steps = 0
        t0 = time.perf_counter()
        while steps < self.s.min_steps or (time.perf_counter() - t0 < self.s.min_seconds and steps < self.s.max_steps):
            tr.step()
            steps += 1
        sync(self.device)
        seconds = time.perf_counter() - t0
        per_step = seconds / steps
        ips = steps * tr.bs / seconds
        gflops = self.models_info[e["model"]].get("forward_gflops_per_image")
        e.update(
            status="ok", images_per_second=round(ips, 1), ms_per_step=round(1000 * per_step, 3), timed_steps=steps,
            timed_seconds=round(seconds, 3), warmup_steps=self.s.warmup_steps, first_step_seconds=round(first, 3),
            compile_seconds=round(max(first - per_step, 0.0), 2) if compile_mode else 0.0,
            warmup_seconds=round(first + rest, 3),
            # training ≈ 3 forward passes (forward + backward's two products per layer)
            achieved_tflops=sig(3 * gflops * ips / 1e3) if gflops else None,
            peak_memory_mib=self.peak_memory(),
        )
        del tr, model

    def measure_sample(self, e: dict[str, Any]) -> None:
        compile_mode = e["compile"] = MODE_SETTINGS[e["mode"]][2]
        model = self.model(e["model"]).to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        net = model if e["mode"] == "fp32_eager" else FastDenoiser(model, self.device.type, *FAST_FOR_MODE[e["mode"]])
        n, bs, steps = e["num_images"], e["batch_size"], e["ddim_steps"]

        def run(num: int, ddim_steps: int, net: nn.Module = net) -> torch.Tensor:
            x, _ = generate(net, self.sched, num, shape=(1, 32, 32), sampler="ddim", steps=ddim_steps, seed=0,
                            device=self.device, batch_size=bs)
            return x

        # Warm-up at the timed batch size (no recompilation later): a few DDIM steps; compiled modes
        # twice (compilation, then CUDA-graph recording) so that the second call is a steady-state one.
        warm_steps = min(3, steps)
        warm_n = min(bs, n)
        sync(self.device)
        t0 = time.perf_counter()
        run(warm_n, warm_steps)
        sync(self.device)
        first = time.perf_counter() - t0
        second = 0.0
        if compile_mode is not None:
            t0 = time.perf_counter()
            run(warm_n, warm_steps)
            sync(self.device)
            second = time.perf_counter() - t0
        torch.manual_seed(0)
        t0 = time.perf_counter()
        x = run(n, steps)
        sync(self.device)
        seconds = time.perf_counter() - t0
        if x.shape != (n, 1, 32, 32) or not bool(torch.isfinite(x).all()):
            raise RuntimeError(f"sampler returned {tuple(x.shape)} / non-finite values")
        ips = n / seconds
        gflops = self.models_info[e["model"]].get("forward_gflops_per_image")
        e.update(
            status="ok", images_per_second=round(ips, 1), timed_seconds=round(seconds, 3),
            network_calls_per_second=round(ips * steps, 1),
            warmup_seconds=round(first + second, 3),
            compile_seconds=round(max(first - second, 0.0), 2) if compile_mode else 0.0,
            achieved_tflops=sig(gflops * ips * steps / 1e3) if gflops else None,
            peak_memory_mib=self.peak_memory(),
        )
        del net, model

    def measure_ema(self, e: dict[str, Any]) -> None:
        model = self.model("ours").to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        ema = make_ema(model, 0.999)
        for _ in range(3):
            ema.update_parameters(model)
        sync(self.device)
        n = 20 if self.s.quick else 200
        t0 = time.perf_counter()
        for _ in range(n):
            ema.update_parameters(model)
        sync(self.device)
        seconds = time.perf_counter() - t0
        tensors = sum(1 for _ in (*model.parameters(), *model.buffers()))
        e.update(status="ok", ms_per_update=round(1000 * seconds / n, 4), tensors=tensors, updates=n)
        del ema, model

    def measure_peak(self, e: dict[str, Any]) -> None:
        """The device's dense matmul rate in ``e["dtype"]``: the ceiling a convolution-bound step can approach
        (a training step's achieved TFLOP/s over it says how much is left to gain in the kernels)."""
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[e["dtype"]]
        n = 64 if self.s.quick else 2048
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=gen).to(self.device, dtype) for _ in range(2))
        for _ in range(2):
            a @ b
        sync(self.device)
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < self.s.min_seconds:
            a @ b
            reps += 1
        sync(self.device)
        seconds = time.perf_counter() - t0
        e.update(status="ok", tflops=sig(2 * n**3 * reps / seconds / 1e12), size=n, reps=reps,
                 timed_seconds=sig(seconds))

    def measure_course(self, e: dict[str, Any]) -> None:
        from mnistdiff.course.runner import run_course

        t0 = time.perf_counter()
        times = run_course(profile="full")
        e.update(status="ok", seconds=round(time.perf_counter() - t0, 1),
                 notebooks=json.dumps(times), notebooks_seconds=round(sum(times.values()), 1))

    def peak_memory(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    # -- the plan ---------------------------------------------------------------------------------

    def plan(self) -> list[dict[str, Any]]:
        """Every measurement, in the order they run (most important first, so a time budget cuts the extras)."""
        a, s = self.args, self.s
        models = [m for m in a.models.split(",") if m]
        train_modes = [m for m in a.train_modes.split(",") if m]
        sample_modes = [m for m in a.sample_modes.split(",") if m]
        for m in models:
            if m not in MODELS:
                raise SystemExit(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")
        for m in train_modes:
            if m not in TRAIN_MODES:
                raise SystemExit(f"--train-modes: unknown mode {m!r} (choose from {', '.join(TRAIN_MODES)})")
        for m in sample_modes:
            if m not in SAMPLE_MODES:
                raise SystemExit(f"--sample-modes: unknown mode {m!r} (choose from {', '.join(SAMPLE_MODES)})")

        def train(model: str, mode: str, step: str = "package") -> dict[str, Any]:
            bs = s.base_batch if mode == "fp32_eager" else s.large_batch
            return {"name": f"train/{model}/{mode}/b{bs}/{step}", "kind": "train", "model": model, "mode": mode,
                    "batch_size": bs, "step": step}

        def sample(model: str, mode: str, sampler: str = "generate") -> dict[str, Any]:
            return {"name": f"sample/{model}/{mode}/ddim{s.ddim_steps}/{sampler}", "kind": "sample", "model": model,
                    "mode": mode, "sampler": sampler, "ddim_steps": s.ddim_steps, "num_images": s.sample_images,
                    "batch_size": min(s.sample_batch, s.sample_images)}

        def fastest(modes: list[str], order: tuple[str, ...]) -> str | None:
            return next((m for m in order if m in modes), None)

        fast_train = fastest(train_modes, ("bf16_cl_compile", "bf16_cl_eager", "bf16_eager", "fp32_eager"))
        fast_sample = fastest(sample_modes, ("bf16_cl_cudagraphs", "bf16_cl_compile", "bf16_cl_eager", "fp32_eager"))
        # (priority, entry), run in priority order so that a time budget cuts the extras:
        # 0: our UNet in the reference's setting and in its fastest modes, and the EMA;
        # 1: diffusers' eager fp32 figures; 2: our remaining modes; 3: diffusers' remaining eager
        #    modes and extra batch sizes; 4: diffusers' compiled modes (the reference needed 85 s).
        ranked: list[tuple[int, dict[str, Any]]] = []
        for model in models:
            ours = model == "ours"
            if model == "ours_gn32":  # only where autocast is on (in float32 it is our UNet exactly)
                for mode in train_modes:
                    if mode != "fp32_eager":
                        ranked.append((3 if mode == fast_train else 4, train(model, mode)))
                for mode in sample_modes:
                    if mode != "fp32_eager":
                        ranked.append((3 if mode == fast_sample else 4, sample(model, mode)))
                continue
            for mode in train_modes:
                headline = mode in ("fp32_eager", "fp32_cl_eager", fast_train)  # fp32_cl: a CPU's candidate
                rank = ((0 if headline else 2) if ours
                        else (1 if mode == "fp32_eager" else 4 if "compile" in mode else 3))
                ranked.append((rank, train(model, mode)))
            for mode in sample_modes:
                headline = mode in ("fp32_eager", "fp32_cl_eager", fast_sample)
                rank = ((0 if headline else 2) if ours
                        else (1 if mode == "fp32_eager" else 3 if mode == "bf16_cl_eager" else 4))
                ranked.append((rank, sample(model, mode)))
            if ours and fast_train and fast_train != "fp32_eager":
                for bs in a.extra_train_batches:
                    e = train(model, fast_train)
                    e.update(name=f"train/{model}/{fast_train}/b{bs}/package", batch_size=bs)
                    ranked.append((3, e))
        for dtype in ("fp32", "bf16"):
            ranked.append((0, {"name": f"peak/matmul/{dtype}", "kind": "peak", "model": None, "dtype": dtype}))
        if not a.no_ema and "ours" in models:
            ranked.append((0, {"name": "ema/ours/package", "kind": "ema", "model": "ours", "step": "package"}))
        if a.course:
            ranked.append((5, {"name": "course/full", "kind": "course", "model": None, "profile": "full"}))
        return [e for _, e in sorted(ranked, key=lambda item: item[0])]  # stable: ties keep their order

    def run(self) -> dict[str, Any]:
        for spec in self.plan():
            self.add(spec)
        self.log(f"torch {torch.__version__}; {len(self.entries)} measurements planned → {self.out}")
        self.write()
        for e in self.entries:
            why = self.skip_reason(e)
            if why is not None:
                e.update(status="skipped", reason=why)
                self.log(f"{e['name']}: skipped ({why})")
                self.write()
                continue
            try:
                getattr(self, f"measure_{e['kind']}")(e)
            except Exception as err:  # noqa: BLE001 - record it and go on with the next measurement
                e.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
                traceback.print_exc()
            finally:
                self.cleanup()
            self.log(describe(e))
            self.write()
        self.log(f"done in {self.elapsed():.1f} s → {self.out}")
        self.print_table()
        return self.doc

    # -- summary ------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        ok = [e for e in self.entries if e["status"] == "ok"]

        def best(kind: str, model: str) -> dict[str, Any] | None:
            xs = [e for e in ok if e["kind"] == kind and e["model"] == model and "images_per_second" in e]
            return max(xs, key=lambda e: e["images_per_second"]) if xs else None

        out: dict[str, Any] = {"device_name": self.device_name,
                               "measured": len(ok), "planned": len(self.entries),
                               "failed": sum(e["status"] == "failed" for e in self.entries),
                               "skipped": sum(e["status"] == "skipped" for e in self.entries)}
        for model in MODELS:
            for kind in ("train", "sample"):
                b = best(kind, model)
                out[f"best_{kind}_{model}_images_per_second"] = b["images_per_second"] if b else None
                out[f"best_{kind}_{model}_name"] = b["name"] if b else None
        ours, twin = out["best_train_ours_images_per_second"], None
        twin_eager = [e for e in ok if e["kind"] == "train" and e["model"] == "diffusers" and e["mode"] == "fp32_eager"]
        if twin_eager:
            twin = twin_eager[0]["images_per_second"]
        out["train_ours_best_over_diffusers_fp32_eager"] = round(ours / twin, 2) if ours and twin else None
        twin_best = out["best_train_diffusers_images_per_second"]
        out["train_ours_best_over_diffusers_best"] = round(ours / twin_best, 2) if ours and twin_best else None
        peaks = {e["dtype"]: e["tflops"] for e in ok if e["kind"] == "peak"}
        for model in MODELS:  # the best step's achieved TFLOP/s over the matmul rate of its dtype
            b = best("train", model)
            peak = peaks.get("bf16" if b and b["mode"].startswith("bf16") else "fp32")
            out[f"best_train_{model}_share_of_peak"] = (
                round(b["achieved_tflops"] / peak, 3) if b and b.get("achieved_tflops") and peak else None)
        on_gpu = self.device.type == "cuda" and not self.s.quick
        bt, bs = out["best_train_ours_images_per_second"], out["best_sample_ours_images_per_second"]
        out["meets_train_target"] = (bt >= TARGETS["train_images_per_second"]) if (on_gpu and bt) else None
        out["meets_sample_target"] = (bs >= TARGETS["sample_ddim50_images_per_second"]) if (on_gpu and bs) else None
        return out

    def print_table(self) -> None:
        print(f"\n{'measurement':<52} {'status':<8} {'images/s':>10} {'compile s':>10}  device")
        for e in self.entries:
            ips = e.get("images_per_second")
            extra = f"{ips:>10.1f}" if isinstance(ips, (int, float)) else f"{'':>10}"
            if e["kind"] == "peak" and "tflops" in e:
                extra = f"{e['tflops']:>6.3f}TF/s"
            if e["kind"] == "ema" and "ms_per_update" in e:
                extra = f"{e['ms_per_update']:>8.3f}ms"
            comp = e.get("compile_seconds")
            comp_s = f"{comp:>10.1f}" if isinstance(comp, (int, float)) else f"{'':>10}"
            print(f"{e['name']:<52} {e['status']:<8} {extra} {comp_s}  {e['device_name']}")


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (TFLOP/s on a CPU are tiny, on a GPU large)."""
    return float(f"{x:.{digits}g}")


def describe(e: dict[str, Any]) -> str:
    if e["status"] != "ok":
        return f"{e['name']}: {e['status']} {e.get('error') or e.get('reason') or ''}"
    if e["kind"] == "train":
        peak = f", peak {e['peak_memory_mib']:.0f} MiB" if e.get("peak_memory_mib") is not None else ""
        return (f"{e['name']}: {e['images_per_second']:.1f} images/s ({e['ms_per_step']:.2f} ms/step, "
                f"compile {e['compile_seconds']:.1f} s{peak})")
    if e["kind"] == "sample":
        return (f"{e['name']}: {e['images_per_second']:.1f} images/s ({e['num_images']} images in "
                f"{e['timed_seconds']:.2f} s, compile {e['compile_seconds']:.1f} s)")
    if e["kind"] == "peak":
        return f"{e['name']}: {e['tflops']:.3f} TFLOP/s ({e['size']}² matmul, {e['reps']} times)"
    if e["kind"] == "ema":
        return f"{e['name']}: {e['ms_per_update']:.3f} ms per EMA update ({e['tensors']} tensors)"
    if e["kind"] == "course":
        return f"{e['name']}: {e['seconds']:.1f} s for the whole course"
    return e["name"]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=tuple(PROFILES), default=None,
                   help="model sizes: our UNet of that profile and its diffusers twin (default: full on CUDA, book on "
                        "a CPU; smoke with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (smoke-sized models, a few steps, 2 images): checks that the benchmark runs")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--out", default=None,
                   help="JSON file (default results/full/benchmark.json, or results/smoke/benchmark.json with --quick)")
    p.add_argument("--models", default="ours,diffusers",
                   help="comma list of: ours, ours_gn32 (our UNet with float32-computed, bf16-returning GroupNorm), "
                        "diffusers (skipped if not installed)")
    p.add_argument("--train-modes", default=",".join(TRAIN_MODES), help=f"comma list of: {', '.join(TRAIN_MODES)}")
    p.add_argument("--sample-modes", default=",".join(SAMPLE_MODES), help=f"comma list of: {', '.join(SAMPLE_MODES)}")
    p.add_argument("--base-batch", type=int, default=None, help="batch of fp32_eager training (default 128; quick 8)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="batch of the bf16 training modes (default 2048; quick 16)")
    p.add_argument("--extra-train-batches", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                   metavar="B1,B2", help="also time our UNet's fastest training mode at these batches (low priority)")
    p.add_argument("--train-compile-mode", default="default",
                   help="torch.compile mode of bf16_cl_compile training: default (what fit uses) or e.g. "
                        "max-autotune-no-cudagraphs")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed training steps (default 10; quick 1)")
    p.add_argument("--min-steps", type=int, default=None, help="timed training steps, at least (default 20; quick 2)")
    p.add_argument("--min-seconds", type=float, default=None,
                   help="timed training seconds, at least (default 3; quick 0)")
    p.add_argument("--max-steps", type=int, default=500, help="timed training steps, at most")
    p.add_argument("--sample-images", type=int, default=None,
                   help="images per sampling figure (default 10000; quick 2)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 5000; quick 2)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--data-images", type=int, default=None,
                   help="MNIST training images held on the device (default all 60000; quick 512)")
    p.add_argument("--cpu-compile", action="store_true", help="also run the torch.compile modes on a CPU (slow)")
    p.add_argument("--no-ema", action="store_true", help="skip the EMA update micro-benchmark")
    p.add_argument("--course", action="store_true",
                   help='also time the whole course: mnistdiff.course.runner.run_course(profile="full") '
                        '(long; off by default)')
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: measurements not started by then are recorded as skipped")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; quick on CPU: 1)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark = True")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    q = args.quick
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu")
    profile = args.profile or ("smoke" if q else "full" if device.type == "cuda" else "book")
    # defaults per size: (GPU-sized full, a CPU-sized book run at the book's batch, tiny quick)
    book = profile == "book"

    def pick(value: Any, full: Any, quick: Any, book_value: Any = None) -> Any:
        if value is not None:
            return value
        if q:
            return quick
        return book_value if book and book_value is not None else full

    bs = PROFILES["book"].ddpm.train.batch_size
    s = Settings(
        quick=q, profile=profile, device=device,
        base_batch=pick(args.base_batch, 128, 8, bs), large_batch=pick(args.train_batch, 2048, 16, bs),
        warmup_steps=pick(args.warmup_steps, 10, 1, 3), min_steps=pick(args.min_steps, 20, 2, 10),
        min_seconds=pick(args.min_seconds, 3.0, 0.0, 5.0), max_steps=args.max_steps,
        sample_images=pick(args.sample_images, 10_000, 2, 128), sample_batch=pick(args.sample_batch, 5000, 2, 128),
        ddim_steps=args.ddim_steps, data_images=pick(args.data_images, None, 512),
        train_compile_mode=args.train_compile_mode, cpu_compile=args.cpu_compile, time_budget=args.time_budget,
    )
    for name in ("base_batch", "large_batch", "warmup_steps", "min_steps", "max_steps", "sample_images", "sample_batch",
                 "ddim_steps"):
        if getattr(s, name) < (0 if name == "warmup_steps" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if not 1 <= s.ddim_steps <= FULL.ddpm.diffusion.timesteps:
        raise SystemExit(f"--ddim-steps must be in [1, {FULL.ddpm.diffusion.timesteps}]")
    return s


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = settings_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif s.quick and s.device.type == "cpu":
        torch.set_num_threads(1)  # shared CI machines: one thread is faster than two that contend
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.out is None:
        args.out = str(REPO_ROOT / "results" / s.profile / "benchmark.json")
    Bench(args, s).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
