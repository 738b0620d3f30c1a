"""Training the feature networks of :mod:`mnistdiff.evaluation.classifier`, reproducibly (the machinery behind
``scripts/train_classifier.py``; readers only load the committed weights)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnistdiff.evaluation import classifier as _classifier
from mnistdiff.evaluation.classifier import (
    ARCHITECTURES,
    CLASSIFIER_PATH,
    FEATURE_DIM,
    MNISTResNet,
    evaluate_accuracy,
)
from mnistdiff.files import atomic_write_bytes, atomic_write_text
from mnistdiff.training.checkpoints import sha256_file

__all__ = ["train_classifier"]


def train_classifier(
    *,
    epochs: int = 4,
    batch_size: int = 128,
    max_lr: float = 4e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    out_path: str | Path | None = CLASSIFIER_PATH,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    log: Callable[[str], None] | None = print,
    architecture: str = "vgg",
    arch: dict | None = None,
) -> tuple[nn.Module, dict]:
    """Train the classifier from scratch, reproducibly, and (optionally) write weights + sidecar.

    Adam with a one-cycle learning-rate schedule (Smith & Topin 2019), cross-entropy loss, no augmentation,
    the 28×28 digits. Seeded (weights and shuffling), with deterministic algorithms requested: on CPU with
    the same thread count and torch version two runs give bit-identical weights.

    With ``out_path``, the state dict is written atomically and a JSON sidecar beside it records its
    SHA-256, the test accuracy, the seed, the hyper-parameters, the torch version and the seconds.
    ``architecture``: a key of :data:`ARCHITECTURES` (``"vgg"``, the project's classifier; ``"resnet"``,
    the second feature space), built with ``arch`` as keyword arguments. ``subset`` / ``test_subset``:
    seeded subsets, for quick tests only. Per-epoch test accuracy is logged when ``log`` is given.

    Returns ``(model in eval mode, metadata dict)``.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    device = torch.device(device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with _deterministic():
        x_train, y_train = _digits("train", data_dir, subset, seed)
        x_test, y_test = _digits("test", data_dir, test_subset, seed)
        model = _build(architecture, arch).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=max_lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(x_train) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            loss = _train_epoch(model, opt, sched, x_train, y_train, batch_size, gen, device)
            if log is not None:
                acc = evaluate_accuracy(model, x_test, y_test)
                log(f"epoch {epoch + 1}/{epochs}: train loss {loss:.4f}, test accuracy {acc:.4%} "
                    f"({time.perf_counter() - t0:.0f} s)")
    if isinstance(model, MNISTResNet):
        model.fit_normalisation(x_train)
    seconds = time.perf_counter() - t0
    model.eval().cpu()
    meta = {"test_accuracy": evaluate_accuracy(model, x_test, y_test), "seed": seed, "epochs": epochs,
            "batch_size": batch_size, "max_lr": max_lr, "weight_decay": weight_decay, "subset": subset,
            "test_subset": test_subset, **_provenance(model, architecture, arch, device, seconds)}
    if out_path is not None:
        _save(model, meta, Path(out_path))
    return model, meta


def _build(architecture: str, arch: dict | None) -> nn.Module:
    """A new network of ``architecture`` (a key of :data:`ARCHITECTURES`) with keyword arguments ``arch``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**(arch or {}))


def _provenance(model: nn.Module, architecture: str, arch: dict | None, device: torch.device,
                seconds: float) -> dict:
    """How the weights were made: optimiser, architecture, parameters, torch, threads, device, time."""
    defaults = {"vgg": {"width": 32, "feature_dim": FEATURE_DIM, "dropout": 0.3}, "resnet": {"widths": [16, 32, 64]}}
    return {"optimizer": "Adam + OneCycleLR, no augmentation", "architecture": architecture,
            "arch": {**defaults.get(architecture, {}), **(arch or {})},
            "num_parameters": sum(p.numel() for p in model.parameters()), "torch_version": torch.__version__,
            "num_threads": torch.get_num_threads(), "device": str(device), "seconds": round(seconds, 1)}


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Request deterministic algorithms for the block (warn where none exists), then restore the setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _digits(split: str, data_dir: str | Path | None, subset: int | None,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 28×28 digits of ``split`` (the 2-pixel padding cropped) and their labels; optionally a seeded subset."""
    from mnistdiff.data import load_mnist

    data = load_mnist(split, data_dir=data_dir)
    if subset is not None:
        data = data.subset(subset, seed=seed)
    return data.images[:, :, 2:30, 2:30].contiguous(), data.labels


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator,
                 device: torch.device) -> float:
    """One shuffled pass of cross-entropy training; returns the mean training loss."""
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    total, n = 0.0, 0
    for i in range(math.ceil(len(x) / batch_size)):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
    return total / n


def _save(model: nn.Module, meta: dict, out_path: Path) -> None:
    """Write the weights and then their sidecar (SHA-256, size and ``meta``), each atomically."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out_path, buf.getvalue())
    meta["sha256"] = sha256_file(out_path)
    meta["size_bytes"] = out_path.stat().st_size
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    _classifier._LOADED.clear()  # a file rewritten in place must be read again
