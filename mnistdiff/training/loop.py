"""One training loop for every model (DDPM, VAE, latent diffusion).

What it does for each step: draw a batch from a seeded permutation of data that stays on the
device, compute the model's loss (bf16 autocast on CUDA), clip gradients, step AdamW (fused on
CUDA) and a warm-up + cosine learning-rate schedule, and update the EMA weights.

What it guarantees:

* every epoch ends with an atomic, resumable checkpoint ``checkpoints/last.pt`` (model, EMA,
  optimiser, scheduler, epoch, step, data order and RNG states; the pair it replaced is kept as
  ``last.prev.pt``); ``resume=True`` continues from it, and on CPU an interrupted-and-resumed run
  ends with the same weights as an uninterrupted one (the restored RNG states win over every seed
  set before; the epoch's sample images draw from a forked RNG, so they never shift the training
  noise);
* Ctrl-C or SIGTERM saves a resumable checkpoint at the current step (or keeps the epoch's, when
  the signal comes between epochs), then raises :class:`TrainingInterrupted`; a second Ctrl-C
  stops at once without saving (the last epoch's checkpoint is kept);
* a NaN or infinite loss raises :class:`TrainingDiverged` naming the step, and the last good
  checkpoint stays the latest.

Steps are counted from 1 over the whole run: step ``s`` is batch ``b`` of epoch ``e`` with
``s = (e - 1)·steps_per_epoch + b``.

The loop is :meth:`TrainLoop.run_loop`, a few lines over named steps, which change one
:class:`~mnistdiff.training.state.TrainState`; the precision choice and signals live in their own modules.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from mnistdiff.config import RUN_CONFIGS, TrainConfig, to_dict
from mnistdiff.devices import cpu_name, device_info, device_name
from mnistdiff.modelfile import save_model_file
from mnistdiff.training.batches import Data, chunks, num_rows, take, to_device
from mnistdiff.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mnistdiff.training.experiment import Experiment
from mnistdiff.training.precision import autocast_for, machine_name, resolve_precision, resumed_precision
from mnistdiff.training.signals import StopFlag, TrainingInterrupted, signal_name, stop_flag
from mnistdiff.training.state import SIDECAR_KEYS, TrainState
from mnistdiff.unet import count_parameters

__all__ = ["TrainTask", "TrainResult", "fit", "TrainingInterrupted", "TrainingDiverged", "TrainLoop"]

LossFn = Callable[[nn.Module, Data, "torch.Generator | None"], torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainTask:
    """What to train: a model, its loss, its data and how to show samples.

    ``loss_fn(model, batch, generator) → scalar``; ``train_data``/``eval_data``: (N, …) tensors, or tuples of
    tensors with N rows each (latents and their labels: :mod:`~mnistdiff.training.batches`);
    ``config``: the run config (a dataclass with a ``train`` field, e.g. :class:`~mnistdiff.config.DDPMRunConfig`),
    recorded with every checkpoint, or a bare :class:`~mnistdiff.config.TrainConfig` for a task of no model kind;
    ``sample_fn(ema_model, folder, tag)`` writes sample images for an epoch (optional);
    ``extra_meta``: what else the trained model's file records (a latent model's κ, clip range and VAE hash);
    ``saved_part(model)``: what model files hold and samplers get (a VAE trained beside its critic: the VAE).
    """

    kind: str
    model: nn.Module
    loss_fn: LossFn
    train_data: Data
    eval_data: Data
    config: Any
    sample_fn: Callable[[nn.Module, Any, str], None] | None = None
    final_fn: Callable[[nn.Module, Experiment], dict[str, Any]] | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)
    saved_part: Callable[[nn.Module], nn.Module] = lambda model: model  # noqa: E731

    @property
    def train_config(self) -> TrainConfig:
        """The training run's settings (``config.train``)."""
        return self.config if isinstance(self.config, TrainConfig) else self.config.train

    @property
    def run_config(self) -> dict[str, Any]:
        """``config`` as the dict every checkpoint records."""
        return to_dict(self.config)


@dataclass
class TrainResult:
    """The trained EMA model, the per-epoch history and where everything was written."""

    ema_model: nn.Module
    history: list[dict[str, float]]
    experiment: Experiment
    checkpoint: Any
    seconds: float


@torch.no_grad()
def _eval_loss(task: TrainTask, model: nn.Module, seed: int, batch_size: int, amp: Any) -> float:
    """Mean loss over ``eval_data`` with fixed noise (a generator seeded per call), so epochs are comparable."""
    model.eval()
    device = (task.eval_data[0] if isinstance(task.eval_data, tuple) else task.eval_data).device
    gen = torch.Generator(device=device).manual_seed(seed + 12345)
    total, count = 0.0, 0
    for chunk in chunks(task.eval_data, batch_size):
        with amp():
            loss = task.loss_fn(model, chunk, gen)
        total += float(loss) * num_rows(chunk)
        count += num_rows(chunk)
    model.train()
    return total / max(count, 1)


def fit(
    task: TrainTask,
    experiment: Experiment,
    *,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    compile: bool | str = False,
) -> TrainResult:
    """Train ``task`` in ``experiment``'s folder and return the EMA model.

    The precision is the config's (:func:`~mnistdiff.training.precision.resolve_precision`); ``compile`` wraps
    the model in ``torch.compile`` (``True``, or a mode such as
    ``"max-autotune-no-cudagraphs"``).
    Raises :class:`TrainingInterrupted` or :class:`TrainingDiverged`.
    SIGINT/SIGTERM are caught from the start of this call (before anything is written).
    """
    with stop_flag() as flag:
        loop = TrainLoop(task, experiment, flag, torch.device(device), resume=resume, progress=progress,
                         compile=compile)
        return loop.run_loop()


class TrainLoop:
    """One call of :func:`fit`: the run's fixed settings, its :class:`TrainState` and the named steps of the loop.

    Building one chooses the precision, seeds the RNGs, builds the state and either restores it from
    ``checkpoints/last.pt`` (``resume``) or writes the new run's config and log header;
    :meth:`run_loop` then trains.
    """

    def __init__(self, task: TrainTask, experiment: Experiment, flag: StopFlag, device: torch.device, *,
                 resume: bool = False, progress: bool = True, compile: bool | str = False) -> None:
        self.task, self.experiment, self.flag, self.device, self.progress = task, experiment, flag, device, progress
        self.cfg = cfg = task.train_config
        self.last = experiment.last_checkpoint
        self.precision, speeds = (resumed_precision(task, device, self.last, experiment.log) if resume
                                  else resolve_precision(task, device))
        self.autocast = autocast_for(self.precision, device)
        model = task.model.to(device)
        if self.precision.endswith("_cl"):
            model = model.to(memory_format=torch.channels_last)
        torch.manual_seed(cfg.seed)
        self.train_data = to_device(task.train_data, device)
        self.batch_size = min(cfg.batch_size, num_rows(self.train_data))
        self.steps_per_epoch = num_rows(self.train_data) // self.batch_size
        self.state = TrainState.create(model, cfg, self.steps_per_epoch * cfg.epochs, fused=device.type == "cuda")
        if speeds:
            probe = ", ".join(f"{k} {v} img/s" for k, v in speeds.items())
            experiment.log(f"# precision probe ({cpu_name()}): {probe}; training in {self.precision}")
        self.step_model = model
        if compile:
            self.step_model = torch.compile(model, mode=None if compile in (True, "default") else str(compile))
        self.saved_epoch: int | None = None  # epoch of the newest checkpoint in last.pt (for messages)
        self.pending: list[torch.Tensor] = []  # training losses not checked yet (one device sync per check)
        self.pending_start = 0  # global step (1-based) of pending[0]
        self.check_every = 1 if device.type == "cpu" else 50
        self.rng_devices = [device] if device.type == "cuda" else []
        if resume:
            self.restore()
        else:
            experiment.write_config(task.run_config, {"kind": task.kind, "parameters": count_parameters(model)})
            experiment.log("epoch\ttrain_loss\teval_loss\tlr\tseconds")

    def run_loop(self) -> TrainResult:
        """Train the remaining epochs, each followed by its evaluation, log line, checkpoint and samples."""
        state = self.state
        state.start_clock()
        state.model.train()
        while state.epoch < self.cfg.epochs:
            started = time.perf_counter()
            self.train_epoch()
            eval_loss = self.evaluate()
            self.log_epoch(eval_loss, time.perf_counter() - started)
            state.next_epoch()
            self.save()
            self.snapshot()
            self.stop_if_signalled(f"after epoch {state.epoch}")
            self.sample_epoch()
        self.stop_if_signalled(
            f"after the last epoch, before the final samples and {self.experiment.model_checkpoint.name}"
        )
        return self.finish()

    # -- the steps of the loop -------------------------------------------------------------

    def train_epoch(self) -> None:
        """The epoch's remaining batches; a signal saves the state at the step it arrived and raises."""
        state, spe = self.state, self.steps_per_epoch
        if state.perm is None:
            state.perm = torch.randperm(num_rows(self.train_data), generator=state.generator)
        # One copy per epoch: a CPU slice copied every step is a blocking copy that waits for the GPU.
        perm = state.perm.to(self.device)
        bar = tqdm(range(state.step, spe), desc=f"{self.task.kind} epoch {state.epoch + 1}/{self.cfg.epochs}",
                   disable=not self.progress, leave=False)
        for step in bar:
            if self.flag.signum:
                self.flush()  # never save weights that a NaN has already reached
                self.save()
                raise self.interrupted(
                    f"at step {self.global_step(step)} (epoch {state.epoch + 1}, batch {step + 1} of {spe})"
                )
            self.train_step(perm, step, bar)
            state.step = step + 1
        self.flush()

    def train_step(self, perm: torch.Tensor, step: int, bar: Any) -> None:
        """Batch ``step`` of the epoch: loss (checked every ``check_every`` steps), backward, clip, AdamW, LR, EMA."""
        state, bs = self.state, self.batch_size
        if not self.pending:
            self.pending_start = self.global_step(step)
        batch = take(self.train_data, perm[step * bs:(step + 1) * bs])
        with self.autocast():
            loss = self.task.loss_fn(self.step_model, batch, None)
        self.pending.append(loss.detach().float())
        if len(self.pending) >= self.check_every or step == self.steps_per_epoch - 1:
            shown = self.flush()
            if self.progress and shown is not None:
                bar.set_postfix(loss=f"{shown:.4f}")
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(state.model.parameters(), self.cfg.grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update_parameters(state.model)

    def flush(self) -> float | None:
        """Check the pending losses (one device sync) and add them up; raise on NaN/inf. Returns the last loss."""
        if not self.pending:
            return None
        values = torch.stack(self.pending).cpu()
        self.pending.clear()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise self.diverged(self.pending_start + i, values[i].item())
        self.state.add_losses(values)
        return float(values[-1])

    def evaluate(self) -> float:
        """The EMA model's loss on ``eval_data`` (fixed noise); raises :class:`TrainingDiverged` if not finite."""
        eval_loss = _eval_loss(self.task, self.state.ema.module, self.cfg.seed, self.batch_size, self.autocast)
        if not math.isfinite(eval_loss):
            epoch = self.state.epoch + 1
            raise TrainingDiverged(f"the EMA model's eval loss became {eval_loss} after epoch {epoch} (step "
                                   f"{epoch * self.steps_per_epoch}); training stopped and {self.kept()}. Lower --lr "
                                   f"(now {self.cfg.lr:g}) or check the data, and start a new run")
        return eval_loss

    def log_epoch(self, eval_loss: float, seconds: float) -> None:
        """Add the epoch to the history and to training_log.txt (on CUDA with a line on peak memory)."""
        state = self.state
        train_loss, lr = state.train_loss(), state.scheduler.get_last_lr()[0]
        state.history.append({"epoch": state.epoch + 1, "train_loss": train_loss, "eval_loss": eval_loss, "lr": lr,
                              "seconds": seconds, "machine": machine_name(self.device), "precision": self.precision})
        self.experiment.log(f"{state.epoch + 1}\t{train_loss:.6f}\t{eval_loss:.6f}\t{lr:.3e}\t{seconds:.2f}")
        if self.device.type == "cuda":  # the GPU figures of the original design (name, peak memory, utilisation)
            info = device_info(self.device)
            self.experiment.log(f"# {info['gpu_name']}: peak memory {info['peak_memory_mib']} MiB, "
                                f"utilisation {info['gpu_utilization_percent']} %")

    def save(self) -> None:
        """Write the state to the resumable checkpoint last.pt (the pair it replaces is kept as last.prev.pt)."""
        tensors = self.state.state_dict()
        sidecar = {key: tensors.pop(key) for key in SIDECAR_KEYS}  # history and seconds: in the JSON sidecar
        extra = {"epoch": self.state.epoch, "step": self.state.step, **sidecar, "precision": self.precision,
                 "machine": machine_name(self.device)}
        save_checkpoint(self.last, tensors, kind=f"{self.task.kind}-resume", config=self.task.run_config, extra=extra,
                        keep_previous=True)
        self.saved_epoch = self.state.epoch

    def snapshot(self) -> None:
        """Every ``snapshot_every`` epochs, the EMA model as ``snapshots/epoch_NNN.safetensors``: a model file with the
        seconds trained so far, for quality against training time or an epoch chosen afterwards."""
        state, every = self.state, self.cfg.snapshot_every
        if every and state.epoch % every == 0:
            save_model_file(self.experiment.sub("snapshots") / f"epoch_{state.epoch:03d}.safetensors",
                            self.task.saved_part(state.ema.module).state_dict(),
                            {"kind": self.task.kind, "config": self.task.run_config, "epoch": state.epoch,
                             "seconds": state.seconds(), "history": state.history, **self.task.extra_meta})

    def sample_epoch(self) -> None:
        """The epoch's sample images (every ``sample_every`` epochs and after the last), from a forked RNG."""
        epoch = self.state.epoch  # epochs done, this one included
        if self.task.sample_fn is not None and (epoch % self.cfg.sample_every == 0 or epoch == self.cfg.epochs):
            # A forked RNG: sampling must not shift the training noise (or a resumed run would differ).
            with torch.random.fork_rng(devices=self.rng_devices):
                shown = self.task.saved_part(self.state.ema.module)
                self.task.sample_fn(shown, self.experiment.sub("epoch_samples"), f"epoch_{epoch:03d}")

    def finish(self) -> TrainResult:
        """The final metrics and samples (``task.final_fn``), the loss curves and the model file (EMA weights)."""
        seconds = self.state.seconds()
        ema_model = self.task.saved_part(self.state.ema.module).eval()
        metrics = self.metrics(seconds)
        if self.task.final_fn is not None:
            with torch.random.fork_rng(devices=self.rng_devices):
                metrics.update(self.task.final_fn(ema_model, self.experiment))
        from mnistdiff.viz import plot_loss_curves  # local import: matplotlib only when training

        history = self.state.history
        plot_loss_curves(history, self.experiment.path / "loss_curves.png")
        self.experiment.write_metrics(metrics)
        ckpt = save_model_file(
            self.experiment.model_checkpoint, ema_model.state_dict(),
            {"kind": self.task.kind, "config": self.task.run_config, "seconds": round(seconds, 2), "metrics": metrics,
             "history": history, **self.task.extra_meta},
        )
        return TrainResult(ema_model, history, self.experiment, ckpt, seconds)

    # -- helpers ---------------------------------------------------------------------------

    def restore(self) -> None:
        """Restore the state from last.pt (or last.prev.pt when last.pt fails verification, with a warning)."""
        if not self.last.is_file():
            raise CheckpointError(
                f"nothing to resume: {self.last} does not exist (the run was stopped before its first checkpoint); "
                "start a new run instead"
            )
        tensors, meta = load_checkpoint(self.last, kind=f"{self.task.kind}-resume", expect_config=self.task.run_config,
                                        map_location=self.device, fallback=True)
        if "loaded_from" in meta:
            warnings.warn(f"{meta['fallback_reason']} Resuming from the previous checkpoint {meta['loaded_from']}.",
                          RuntimeWarning, stacklevel=3)  # fit's line, as before
            self.experiment.log(f"# {self.last} failed verification; resuming from {meta['loaded_from']}")
        # The restored RNG states win over every seed set before (model init, torch.manual_seed in __init__).
        self.state.load_state_dict({**tensors, **{key: meta[key] for key in SIDECAR_KEYS if key in meta}})
        self.saved_epoch = self.state.epoch
        self.experiment.log(f"# resumed at epoch {self.state.epoch + 1}, step {self.global_step(self.state.step)}"
                            f" on {device_name(self.device)}")

    def metrics(self, seconds: float) -> dict[str, Any]:
        """performance_metrics.txt: time, throughput, final losses, precision and the device."""
        history, cfg = self.state.history, self.cfg
        images_seen = self.steps_per_epoch * self.batch_size * cfg.epochs
        speed = round(images_seen / max(seconds, 1e-9), 1)
        return {"kind": self.task.kind, "parameters": count_parameters(self.state.model), "epochs": cfg.epochs,
                "training_seconds": round(seconds, 2), "train_images_per_second": speed,
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "final_eval_loss": history[-1]["eval_loss"] if history else None, "precision": self.precision,
                **device_info(self.device)}

    def global_step(self, step: int) -> int:
        """The 1-based step over the whole run of batch ``step`` (0-based) of the current epoch."""
        return self.state.epoch * self.steps_per_epoch + step + 1

    @property
    def resume_cmd(self) -> str:
        """The command that continues this run."""
        ldm = " <vae checkpoint>" if RUN_CONFIGS[self.task.kind].latent else ""
        return f"python -m mnistdiff train {self.task.kind}{ldm} --resume {self.experiment.path}"

    def kept(self) -> str:
        """What a divergence leaves behind (for its message)."""
        if self.saved_epoch is None:
            return "no checkpoint had been written yet (it diverged in its first epoch)"
        return f"the last good checkpoint {self.last} (after epoch {self.saved_epoch}) is kept as the latest"

    def diverged(self, step: int, value: float) -> TrainingDiverged:
        """The error for a NaN/inf training loss at global ``step``."""
        spe = self.steps_per_epoch
        epoch, batch = (step - 1) // spe + 1, (step - 1) % spe + 1
        return TrainingDiverged(
            f"loss became {value} at step {step} (epoch {epoch}, batch {batch} of {spe}); training stopped and "
            f"{self.kept()}. Lower the learning rate (--lr, now {self.cfg.lr:g}) or check the data, and start a new "
            f"run (resuming with the same settings would retry from that checkpoint: {self.resume_cmd})"
        )

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The error for a SIGINT/SIGTERM seen ``where`` (a resumable checkpoint has been written)."""
        return TrainingInterrupted(f"training stopped by {signal_name(self.flag.signum)} {where}; a resumable "
                                   f"checkpoint is in {self.last}. Continue with: {self.resume_cmd}", self.flag.signum)

    def stop_if_signalled(self, where: str) -> None:
        """Raise :class:`TrainingInterrupted` if a signal has arrived (the latest checkpoint is the state's)."""
        if self.flag.signum:
            raise self.interrupted(where)
