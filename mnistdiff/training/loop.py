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
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from mnistdiff.config import TrainConfig
from mnistdiff.devices import cpu_name, device_info
from mnistdiff.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    previous_path,
    read_sidecar,
    save_checkpoint,
)
from mnistdiff.training.ema import make_ema
from mnistdiff.training.experiment import Experiment
from mnistdiff.unet import count_parameters

__all__ = [
    "TrainTask", "TrainResult", "fit", "TrainingInterrupted", "TrainingDiverged", "lr_lambda", "choose_precision",
    "resolve_precision",
]

LossFn = Callable[[nn.Module, torch.Tensor, "torch.Generator | None"], torch.Tensor]


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C / SIGTERM after saving a resumable checkpoint; ``signum`` is the signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainTask:
    """What to train: a model, its loss, its data and how to show samples.

    ``loss_fn(model, batch, generator) → scalar``; ``train_data``/``eval_data``: (N, …) tensors;
    ``sample_fn(ema_model, folder, tag)`` writes sample images for an epoch (optional);
    ``extra_state``: tensors and numbers saved in the final checkpoint (e.g. the latent scale).
    """

    kind: str
    model: nn.Module
    loss_fn: LossFn
    train_data: torch.Tensor
    eval_data: torch.Tensor
    train_config: TrainConfig
    run_config: dict[str, Any]
    sample_fn: Callable[[nn.Module, Any, str], None] | None = None
    final_fn: Callable[[nn.Module, Experiment], dict[str, Any]] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    extra_sidecar: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """The trained EMA model, the per-epoch history and where everything was written."""

    ema_model: nn.Module
    history: list[dict[str, float]]
    experiment: Experiment
    checkpoint: Any
    seconds: float


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10 % of the peak at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _cpu_has_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 bf16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(precision: str, device: torch.device) -> Callable[[], Any]:
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def choose_precision(task: TrainTask, device: torch.device, steps: int = 4, warmup: int = 2) -> dict[str, float]:
    """Time a few training steps of ``task`` in each precision (fp32, bf16, bf16_cl) on a copy of its model.

    Returns images/s per precision. bf16 is tried only where the CPU has native bf16 (else it is
    emulated and slower, pytorch #86550). Nothing of the run changes: the model is copied and the
    global RNG state is restored afterwards, so the training that follows is the same whatever the probe saw.
    """
    candidates = ["fp32"] + (["bf16", "bf16_cl"] if device.type != "cpu" or _cpu_has_bf16() else [])
    bs = min(task.train_config.batch_size, task.train_data.shape[0])
    batch = task.train_data[:bs].to(device)
    speeds: dict[str, float] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for precision in candidates:
            model = copy.deepcopy(task.model).to(device)
            x = batch
            if precision == "bf16_cl" and batch.ndim == 4:
                model, x = model.to(memory_format=torch.channels_last), batch.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            autocast = _autocast(precision, device)
            t0 = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                with autocast():
                    loss = task.loss_fn(model, x, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            speeds[precision] = round(steps * bs / (time.perf_counter() - t0), 1)
    return speeds


def resolve_precision(task: TrainTask, device: torch.device, amp: bool | None) -> tuple[str, dict[str, float]]:
    """The precision a run trains in, and the probe's speeds when ``auto`` measured them.

    ``amp`` given (True/False) wins: bf16 autocast (channels_last on CUDA) or fp32. Else the config's
    ``precision``; ``None`` means bf16_cl on CUDA and fp32 on a CPU; ``auto`` probes on a CPU.
    """
    if amp is not None:
        return ("bf16_cl" if device.type == "cuda" else "bf16") if amp else "fp32", {}
    precision = task.train_config.precision
    if precision is None:
        return ("bf16_cl" if device.type == "cuda" else "fp32"), {}
    if precision != "auto":
        return precision, {}
    if device.type == "cuda":
        return "bf16_cl", {}
    speeds = choose_precision(task, device)
    return max(speeds, key=speeds.__getitem__), speeds


def _started_precision(last: Any) -> str | None:
    """The precision recorded in a resumable checkpoint's sidecar (or its predecessor's), if any."""
    for path in (last, previous_path(last)):
        try:
            found = read_sidecar(path).get("precision")
        except CheckpointError:
            continue
        return str(found) if found else None
    return None


@contextmanager
def _stop_flag() -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps (main thread only).

    A second SIGINT (Ctrl-C pressed twice) raises ``KeyboardInterrupt`` at once, without saving.
    """
    flag = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt(
                "second Ctrl-C: stopped without saving; the last epoch's checkpoint (checkpoints/last.pt) is kept"
            )
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "perm_gen": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["perm_gen"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def _eval_loss(task: TrainTask, model: nn.Module, seed: int, batch_size: int, amp: Any) -> float:
    """Mean loss over ``eval_data`` with fixed noise (a generator seeded per call), so epochs are comparable."""
    model.eval()
    gen = torch.Generator(device=task.eval_data.device).manual_seed(seed + 12345)
    total, count = 0.0, 0
    for chunk in task.eval_data.split(batch_size):
        with amp():
            loss = task.loss_fn(model, chunk, gen)
        total += float(loss) * chunk.shape[0]
        count += chunk.shape[0]
    model.train()
    return total / max(count, 1)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def fit(
    task: TrainTask,
    experiment: Experiment,
    *,
    device: torch.device | str = "cpu",
    resume: bool = False,
    progress: bool = True,
    compile: bool | str = False,
    amp: bool | None = None,
) -> TrainResult:
    """Train ``task`` in ``experiment``'s folder and return the EMA model.

    ``amp`` (default: the config's ``precision``, see :func:`resolve_precision`) forces bf16 autocast
    (True) or float32 (False); ``compile`` wraps the model in ``torch.compile`` (``True``, or a mode such as ``"max-autotune-no-cudagraphs"``).
    Raises :class:`TrainingInterrupted` or :class:`TrainingDiverged`.
    SIGINT/SIGTERM are caught from the start of this call (before anything is written).
    """
    with _stop_flag() as flag:
        return _fit(task, experiment, flag, torch.device(device), resume, progress, compile, amp)


def _fit(
    task: TrainTask, experiment: Experiment, flag: dict[str, int], device: torch.device, resume: bool,
    progress: bool, compile: bool | str, amp: bool | None,
) -> TrainResult:
    cfg = task.train_config
    last = experiment.last_checkpoint
    started = _started_precision(last) if resume else None
    # A resumed run keeps the precision it started in (and so resumes bit-exactly); a new one resolves it.
    precision, speeds = (started, {}) if started else resolve_precision(task, device, amp)
    autocast = _autocast(precision, device)
    model = task.model.to(device)
    if precision == "bf16_cl":
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed)
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    train = task.train_data.to(device)
    n = train.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    warmup = min(cfg.warmup_steps, max(total_steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, total_steps))
    ema = make_ema(model, cfg.ema_decay)
    if speeds:
        experiment.log(f"# precision probe ({cpu_name()}): " + ", ".join(f"{k} {v} img/s" for k, v in speeds.items())
                       + f"; training in {precision}")
    if compile:
        step_model = torch.compile(model, mode=None if compile in (True, "default") else str(compile))
    else:
        step_model = model
    resume_cmd = (f"python -m mnistdiff train {task.kind}{' <vae checkpoint>' if task.kind == 'ldm' else ''} "
                  f"--resume {experiment.path}")

    history: list[dict[str, float]] = []
    start_epoch, start_step, perm = 0, 0, None
    loss_sum, loss_count, elapsed = 0.0, 0, 0.0
    saved_epoch: int | None = None  # epoch of the newest checkpoint in last.pt (for messages)
    if resume:
        if not last.is_file():
            raise CheckpointError(
                f"nothing to resume: {last} does not exist (the run was stopped before its first checkpoint); "
                "start a new run instead"
            )
        state, meta = load_checkpoint(
            last, kind=f"{task.kind}-resume", expect_config=task.run_config, map_location=device, fallback=True,
        )
        if "loaded_from" in meta:
            warnings.warn(f"{meta['fallback_reason']} Resuming from the previous checkpoint {meta['loaded_from']}.",
                          RuntimeWarning, stacklevel=2)
            experiment.log(f"# {last} failed verification; resuming from {meta['loaded_from']}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        # The restored RNG states win over every seed set before (model init, torch.manual_seed above).
        _set_rng_state(state["rng"], perm_gen)
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        perm = state["perm"] if state["perm"].numel() else None
        loss_sum, loss_count = float(state["loss_sum"]), int(state["loss_count"])
        history = list(meta.get("history", []))
        elapsed = float(meta.get("seconds", 0.0))
        saved_epoch = start_epoch
        experiment.log(f"# resumed at epoch {start_epoch + 1}, step {start_epoch * steps_per_epoch + start_step + 1}")
    else:
        experiment.write_config(task.run_config, {"kind": task.kind, "parameters": count_parameters(model)})
        experiment.log("epoch\ttrain_loss\teval_loss\tlr\tseconds")

    t0 = time.perf_counter()

    def save_resumable(epoch: int, step: int, perm_now: torch.Tensor | None) -> None:
        nonlocal saved_epoch
        save_checkpoint(
            last,
            {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(perm_gen), "epoch": epoch, "step": step,
                "perm": perm_now if perm_now is not None else torch.empty(0, dtype=torch.long),
                "loss_sum": loss_sum, "loss_count": loss_count,
            },
            kind=f"{task.kind}-resume", config=task.run_config,
            extra={"epoch": epoch, "step": step, "history": history, "seconds": elapsed + time.perf_counter() - t0,
                   "precision": precision},
            keep_previous=True,
        )
        saved_epoch = epoch

    def kept() -> str:
        if saved_epoch is None:
            return "no checkpoint had been written yet (it diverged in its first epoch)"
        return (f"the last good checkpoint {last} (after epoch {saved_epoch}) is kept as the latest and still "
                "verifies")

    pending: list[torch.Tensor] = []
    pending_start = 0  # global step (1-based) of pending[0]

    def flush() -> float | None:
        """Check the pending losses (one GPU sync) and add them up; raise on NaN/inf. Returns the last loss."""
        nonlocal loss_sum, loss_count
        if not pending:
            return None
        values = torch.stack(pending).cpu()
        pending.clear()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            g = pending_start + i
            e, b = (g - 1) // steps_per_epoch + 1, (g - 1) % steps_per_epoch + 1
            raise TrainingDiverged(
                f"loss became {values[i].item()} at step {g} (epoch {e}, batch {b} of {steps_per_epoch}); training "
                f"stopped and {kept()}. Lower the learning rate (--lr, now {cfg.lr:g}) or check the data, and "
                f"start a new run (resuming with the same settings would retry from that checkpoint: {resume_cmd})"
            )
        loss_sum += float(values.sum())
        loss_count += len(values)
        return float(values[-1])

    def interrupted(where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"training stopped by {_signal_name(flag['signal'])} {where}; a resumable checkpoint is in {last}. "
            f"Continue with: {resume_cmd}",
            flag["signal"],
        )

    check_every = 1 if device.type == "cpu" else 50
    rng_devices = [device] if device.type == "cuda" else []
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        if perm is None:
            perm = torch.randperm(n, generator=perm_gen)
        # One copy per epoch: a CPU slice copied every step is a blocking copy that waits for the GPU.
        perm_dev = perm.to(device)
        bar = tqdm(range(start_step, steps_per_epoch), desc=f"{task.kind} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for step in bar:
            g = epoch * steps_per_epoch + step + 1
            if flag["signal"]:
                flush()  # never save weights that a NaN has already reached
                save_resumable(epoch, step, perm)
                raise interrupted(f"at step {g} (epoch {epoch + 1}, batch {step + 1} of {steps_per_epoch})")
            if not pending:
                pending_start = g
            batch = train[perm_dev[step * bs:(step + 1) * bs]]
            with autocast():
                loss = task.loss_fn(step_model, batch, None)
            pending.append(loss.detach().float())
            if len(pending) >= check_every or step == steps_per_epoch - 1:
                shown = flush()
                if progress and shown is not None:
                    bar.set_postfix(loss=f"{shown:.4f}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(model)
        flush()
        train_loss = loss_sum / max(loss_count, 1)
        eval_loss = _eval_loss(task, ema.module, cfg.seed, bs, autocast)
        if not math.isfinite(eval_loss):
            raise TrainingDiverged(
                f"the EMA model's eval loss became {eval_loss} after epoch {epoch + 1} (step "
                f"{(epoch + 1) * steps_per_epoch}); training stopped and {kept()}. Lower --lr (now {cfg.lr:g}) "
                "or check the data, and start a new run"
            )
        seconds = time.perf_counter() - t_epoch
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "eval_loss": eval_loss,
                        "lr": sched.get_last_lr()[0], "seconds": seconds})
        experiment.log(f"{epoch + 1}\t{train_loss:.6f}\t{eval_loss:.6f}\t{sched.get_last_lr()[0]:.3e}\t{seconds:.2f}")
        if device.type == "cuda":  # what the seed watched from a second screen session
            info = device_info(device)
            experiment.log(f"# {info['gpu_name']}: peak memory {info['peak_memory_mib']} MiB, "
                           f"utilisation {info['gpu_utilization_percent']} %")
        loss_sum, loss_count, perm, start_step = 0.0, 0, None, 0
        save_resumable(epoch + 1, 0, None)
        if flag["signal"]:
            raise interrupted(f"after epoch {epoch + 1}")
        if task.sample_fn is not None and ((epoch + 1) % cfg.sample_every == 0 or epoch + 1 == cfg.epochs):
            # A forked RNG: sampling must not shift the training noise (or a resumed run would differ).
            with torch.random.fork_rng(devices=rng_devices):
                task.sample_fn(ema.module, experiment.sub("epoch_samples"), f"epoch_{epoch + 1:03d}")
    if flag["signal"]:
        raise interrupted(f"after the last epoch, before the final samples and {experiment.model_checkpoint.name}")
    seconds = elapsed + time.perf_counter() - t0
    ema_model = ema.module.eval()
    images_seen = steps_per_epoch * bs * cfg.epochs
    metrics: dict[str, Any] = {
        "kind": task.kind, "parameters": count_parameters(model), "epochs": cfg.epochs,
        "training_seconds": round(seconds, 2), "train_images_per_second": round(images_seen / max(seconds, 1e-9), 1),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_eval_loss": history[-1]["eval_loss"] if history else None, "precision": precision,
        **device_info(device),
    }
    if task.final_fn is not None:
        with torch.random.fork_rng(devices=rng_devices):
            metrics.update(task.final_fn(ema_model, experiment))
    from mnistdiff.viz import plot_loss_curves  # local import: matplotlib only when training

    plot_loss_curves(history, experiment.path / "loss_curves.png")
    experiment.write_metrics(metrics)
    ckpt = save_checkpoint(
        experiment.model_checkpoint,
        {"model": ema_model.state_dict(), **task.extra_state},
        kind=task.kind, config=task.run_config,
        extra={"seconds": round(seconds, 2), "metrics": metrics, "history": history, **task.extra_sidecar},
    )
    return TrainResult(ema_model, history, experiment, ckpt, seconds)
