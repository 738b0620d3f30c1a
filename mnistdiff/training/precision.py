"""The precision a training run computes in: fp32 or bf16 autocast, each plain or with channels_last (``_cl``).

:func:`resolve_precision` decides it (the config's ``precision``; for ``auto`` on a CPU, probing with
:func:`choose_precision` once per machine and configuration, then remembering the choice: a near-tie probed again
could flip it, and the same seed would train other weights); :func:`started_precision` reads back what a
resumable checkpoint was trained in (and on which machine), so that a resumed run keeps it where it can resume
bit-exactly (:func:`resumed_precision`); :func:`autocast_for` turns the
name into the context manager every training and evaluation step runs under.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from mnistdiff.devices import clear_winner, remembered
from mnistdiff.training.batches import Data, num_rows, take, to_device
from mnistdiff.training.checkpoints import CheckpointError, previous_path, read_sidecar

if TYPE_CHECKING:
    from mnistdiff.training.loop import TrainTask

__all__ = ["choose_precision", "resolve_precision", "started_precision", "resumed_precision", "machine_name",
           "autocast_for", "cpu_has_bf16"]


def cpu_has_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 bf16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the context a step runs under: ``nullcontext`` for fp32, else bf16 autocast on ``device``."""
    if not precision.startswith("bf16"):
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def choose_precision(task: TrainTask, device: torch.device, steps: int = 4, warmup: int = 2) -> dict[str, float]:
    """Time a few training steps of ``task`` in each precision (fp32, fp32_cl, bf16, bf16_cl) on a copy of its model.

    Returns images/s per precision. bf16 is tried only where the CPU has native bf16 (else it is
    emulated and slower, pytorch #86550). Nothing of the run changes: the model is copied and the
    global RNG state is restored afterwards, so the training that follows is the same whatever the probe saw.
    """
    candidates = ["fp32", "fp32_cl"] + (["bf16", "bf16_cl"] if device.type != "cpu" or cpu_has_bf16() else [])
    bs = min(task.train_config.batch_size, num_rows(task.train_data))
    batch = to_device(take(task.train_data, slice(0, bs)), device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return {precision: _images_per_second(task, batch, precision, device, steps, warmup)
                for precision in candidates}


def _images_per_second(task: TrainTask, batch: Data, precision: str, device: torch.device, steps: int,
                       warmup: int) -> float:
    """Images/s of ``steps`` AdamW steps (after ``warmup`` untimed ones) on a copy of the task's model."""
    model = copy.deepcopy(task.model).to(device)
    x = batch
    if precision.endswith("_cl") and isinstance(batch, torch.Tensor) and batch.ndim == 4:
        model, x = model.to(memory_format=torch.channels_last), batch.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = autocast_for(precision, device)
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
    return round(steps * num_rows(batch) / (time.perf_counter() - t0), 1)


def resolve_precision(task: TrainTask, device: torch.device) -> tuple[str, dict[str, float]]:
    """The precision a run trains in, and the probe's speeds when ``auto`` measured them.

    The config's ``precision``; ``None`` means bf16_cl on CUDA and fp32 on a CPU; ``auto`` probes on a CPU.
    """
    precision = task.train_config.precision
    if precision is None:
        return ("bf16_cl" if device.type == "cuda" else "fp32"), {}
    if precision != "auto":
        return precision, {}
    if device.type == "cuda":
        return "bf16_cl", {}
    def measure() -> tuple[str, dict[str, float]]:
        """The probe's choice (a near-tie to the earlier precision) and its images/s."""
        speeds = choose_precision(task, device)
        return clear_winner(speeds), speeds

    choice, speeds, _ = remembered(f"training precision of {task.config}", device, measure)
    return choice, speeds


def started_precision(last: Any) -> str | None:
    """The precision recorded in a resumable checkpoint's sidecar (or its predecessor's), if any."""
    return _recorded(last, "precision")


def _recorded(last: Any, key: str) -> str | None:
    """``key`` of a resumable checkpoint's sidecar (or its predecessor's), if recorded."""
    for path in (last, previous_path(last)):
        try:
            found = read_sidecar(path).get(key)
        except CheckpointError:
            continue
        return str(found) if found else None
    return None


def machine_name(device: torch.device) -> str:
    """What a run computes on, as a resume compares it: the GPU's name, or the CPU's (without its thread count)."""
    from mnistdiff.devices import cpu_name

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def resumed_precision(task: TrainTask, device: torch.device, last: Any, log: Callable[[str], Any] = print
                      ) -> tuple[str, dict[str, float]]:
    """The precision a resumed run trains in, and the probe's speeds if it measured (saying why to ``log``).

    The run keeps the precision it started in — and so resumes bit for bit — on the machine that wrote its last
    checkpoint. With ``precision="auto"`` on another machine (or where the checkpoint did not record one) it
    measures again: bf16 that was fastest on one CPU can be the slowest on the next, and no run is bit-exact across
    machines anyway."""
    started, written_on, here = started_precision(last), _recorded(last, "machine"), machine_name(device)
    if started and (task.train_config.precision != "auto" or written_on == here):
        return started, {}
    if started:
        log(f"# resumed on {here}, the last checkpoint written on {written_on or 'an unrecorded machine'} in "
            f"{started}: measured again")
    return resolve_precision(task, device)
