"""Experiment folders: one per training run, ``experiments/<timestamp>-<model>/``.

Layout::

    config.txt               the run's config (JSON) and how it was started
    training_log.txt         one line per epoch: train/eval loss, learning rate, seconds
    loss_curves.png          train and eval loss per epoch
    performance_metrics.txt  time, throughput, parameters, device (GPU name, peak memory, utilisation)
    epoch_samples/           samples every ``sample_every`` epochs
    final_samples/           samples from the final EMA weights
    checkpoints/             last.pt (resumable, with a JSON sidecar; last.prev.pt the one before it) and
                             model.safetensors (the EMA weights and everything needed to rebuild them)
    denoising_steps/         (DDPM, LDM) the reverse process of a few samples
    latent_space/            (VAE) 2-D scatter plots of the latents, coloured by digit
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mnistdiff.files import atomic_write_text
from mnistdiff.training.checkpoints import CheckpointError

__all__ = ["Experiment"]

SUBDIRS = ("epoch_samples", "final_samples", "checkpoints")  # the rest are made by whoever writes into them


class Experiment:
    """A run's folder. ``Experiment.create(root, model)`` makes a new one; ``Experiment(path)`` reopens one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, root: str | Path, model: str) -> Experiment:
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{stamp}-{model}"
        n = 1
        while path.exists():
            n += 1
            path = root / f"{stamp}-{model}-{n}"
        for sub in SUBDIRS:
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
        return self.path / "checkpoints" / "model.safetensors"

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
