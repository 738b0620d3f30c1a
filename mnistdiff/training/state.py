"""Everything a training run changes as it goes, in one object that saves and restores itself.

:class:`TrainState` holds the model, its EMA, the optimiser, the learning-rate schedule, the
generator of the data order, where the run stands (epoch, step, this epoch's permutation), the
running loss of the epoch, the per-epoch history and the seconds trained so far.
:meth:`TrainState.state_dict` is what ``checkpoints/last.pt`` holds (:data:`CHECKPOINT_KEYS`) plus the
two entries its JSON sidecar holds (:data:`SIDECAR_KEYS`: ``history`` and ``seconds``);
:meth:`TrainState.load_state_dict` restores all of it, the global RNG states included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mnistdiff.config import TrainConfig
from mnistdiff.training.ema import EMA, make_ema

__all__ = ["TrainState", "CHECKPOINT_KEYS", "SIDECAR_KEYS", "lr_lambda", "rng_state", "set_rng_state"]

# The entries of last.pt, in the order they are saved; history and seconds live in its sidecar.
CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "rng", "epoch", "step", "perm", "loss_sum", "loss_count")
SIDECAR_KEYS = ("history", "seconds")


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10 % of the peak at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """The global CPU (and CUDA) RNG states and the state of ``gen`` (the data-order generator)."""
    state = {"torch": torch.get_rng_state(), "perm_gen": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only where CUDA is available).

    The states are byte tensors that torch sets from the CPU only; a checkpoint loaded onto a GPU
    (a run started on a CPU and continued on a GPU) carries them there, so they come back first.
    """
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["perm_gen"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass(eq=False)
class TrainState:
    """A run's changing state. ``epoch`` epochs are done and ``step`` batches of the next one.

    ``perm`` is the current epoch's data order (``None`` between epochs: the next epoch draws one
    from ``generator``); ``loss_sum``/``loss_count`` add up the checked training losses of the
    epoch; ``elapsed`` is the seconds trained before :meth:`start_clock` was last called.
    """

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    perm: torch.Tensor | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    clock: float = field(default_factory=time.perf_counter)

    @classmethod
    def create(cls, model: nn.Module, cfg: TrainConfig, total_steps: int, fused: bool = False) -> TrainState:
        """A fresh state: AdamW, warm-up + cosine LR over ``total_steps``, EMA, generator seeded by ``cfg.seed``."""
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        warmup = min(cfg.warmup_steps, max(total_steps // 10, 1))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, warmup, total_steps))
        return cls(model, make_ema(model, cfg.ema_decay), optimizer, scheduler, generator)

    def start_clock(self) -> None:
        """Count the seconds of this session from now on (on top of ``elapsed``)."""
        self.clock = time.perf_counter()

    def seconds(self) -> float:
        """Seconds trained in all sessions so far."""
        return self.elapsed + time.perf_counter() - self.clock

    def next_epoch(self) -> None:
        """Mark the current epoch done: the next starts at batch 0 with a new order and a new loss sum."""
        self.epoch, self.step, self.perm = self.epoch + 1, 0, None
        self.loss_sum, self.loss_count = 0.0, 0

    def add_losses(self, values: torch.Tensor) -> None:
        """Add checked (finite) training losses to the epoch's sum."""
        self.loss_sum += float(values.sum())
        self.loss_count += len(values)

    def train_loss(self) -> float:
        """The mean training loss of the epoch so far."""
        return self.loss_sum / max(self.loss_count, 1)

    def state_dict(self) -> dict[str, Any]:
        """:data:`CHECKPOINT_KEYS` (live state dicts, as ``nn.Module.state_dict`` gives) and :data:`SIDECAR_KEYS`."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng_state(self.generator), "epoch": self.epoch,
            "step": self.step, "perm": self.perm if self.perm is not None else torch.empty(0, dtype=torch.long),
            "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "history": [dict(h) for h in self.history], "seconds": self.seconds(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the RNG states restored win over every seed set before.

        ``history`` and ``seconds`` may be missing (as in a checkpoint's tensors without its sidecar).
        """
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        # How the optimizer runs (fused on CUDA, not on a CPU) is this machine's, not the checkpoint's
        kernels = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, kernel in zip(self.optimizer.param_groups, kernels):
            group.update(kernel)
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.perm = state["perm"] if state["perm"].numel() else None
        self.loss_sum, self.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        self.history = list(state.get("history", []))
        self.elapsed = float(state.get("seconds", 0.0))
        self.start_clock()
