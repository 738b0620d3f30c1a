"""Experiment folders: one per training run, ``experiments/<timestamp>-<model>/``.

Layout::

    config.txt               the run's config (JSON) and how it was started
    training_log.txt         one line per epoch: train/eval loss, learning rate, seconds
    loss_curves.png          train and eval loss per epoch
    performance_metrics.txt  time, throughput, parameters, device (GPU name, peak memory, utilisation)
    epoch_samples/           samples every ``sample_every`` epochs
    final_samples/           samples from the final EMA weights
    checkpoints/             last.pt (resumable; last.prev.pt the one before it) and model.pt (EMA
                             weights), each with a JSON sidecar
    denoising_steps/         (DDPM, LDM) the reverse process of a few samples
    latent_space/            (VAE) 2-D scatter plots of the latents, coloured by digit
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, atomic_write_text

__all__ = ["Experiment", "device_info", "cpu_name", "device_name"]

SUBDIRS = ("epoch_samples", "final_samples", "checkpoints")
EXTRA_SUBDIRS = {"ddpm": ("denoising_steps",), "ldm": ("denoising_steps",), "vae": ("latent_space",)}


def cpu_name() -> str:
    """The CPU as ``lscpu`` names it, with family/model and its bf16 features, e.g.
    ``Intel(R) Xeon(R) Processor (family 6 model 207; avx512_bf16 amx_bf16)``."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    bf16 = " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no native bf16"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']} model {fields['model']}; {bf16})"
    return name


def device_name(device: torch.device | str) -> str:
    """``torch.cuda.get_device_name`` on CUDA; on a CPU :func:`cpu_name` and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Name, peak memory and utilisation of ``device`` (CUDA), or the CPU's thread count."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu_name"] = torch.cuda.get_device_name(idx)
        info["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(idx) / 2**20, 1)
        try:
            info["gpu_utilization_percent"] = torch.cuda.utilization(idx)
        except Exception:  # noqa: BLE001 - needs pynvml; optional
            info["gpu_utilization_percent"] = None
    else:
        info["cpu_name"] = cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
    return info


class Experiment:
    """A run's folder. ``Experiment.create(root, model)`` makes a new one; ``Experiment(path)`` reopens one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, root: str | Path, model: str) -> "Experiment":
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{stamp}-{model}"
        n = 1
        while path.exists():
            n += 1
            path = root / f"{stamp}-{model}-{n}"
        for sub in SUBDIRS + EXTRA_SUBDIRS.get(model, ()):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path)

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def model_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "model.pt"

    def write_config(self, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        body = {"config": config, "argv": sys.argv, "cwd": os.getcwd(), **(extra or {})}
        atomic_write_text(self.path / "config.txt", json.dumps(body, indent=2, default=str) + "\n")

    def log(self, line: str) -> None:
        path = self.path / "training_log.txt"
        try:
            with open(path, "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError as err:
            raise CheckpointError(
                f"could not append to {path} ({err.strerror or err}); the checkpoints are unaffected. "
                "Free some space (or fix the folder's permissions) and continue with --resume."
            ) from err

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        lines = [f"{k}: {v}" for k, v in metrics.items()]
        atomic_write_text(self.path / "performance_metrics.txt", "\n".join(lines) + "\n")
