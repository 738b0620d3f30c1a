"""The command line's checks that the config dataclasses cannot make: paths, devices, checkpoints.

Each raises :class:`ArgError`, which :func:`mnistdiff.cli.main` reports with exit code 2 before any work
starts or any file is written. The model and training settings are checked by the configs themselves
(:mod:`mnistdiff.config`); the sampling options, which no config holds, here.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ArgError",
    "positive",
    "readable_file",
    "writable_dir",
    "resolve_device",
    "check_data_dir",
    "check_sampling",
    "check_digits",
    "check_guidance",
    "sidecar_conditional",
    "sidecar_kind",
    "sidecar_timesteps",
    "resume_base",
]


class ArgError(Exception):
    """A bad argument: reported with exit code 2."""


def positive(name: str, value: float | None) -> None:
    """``--name`` must be a finite number > 0 (``None``: not given, fine)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ArgError(f"--{name} must be a positive number, got {value}")


def readable_file(path: str, what: str) -> Path:
    """``path`` as a :class:`Path`, after checking that it is a file this process can read."""
    p = Path(path)
    if not p.is_file():
        raise ArgError(f"{what} {path} does not exist or is not a file: check the path")
    if not os.access(p, os.R_OK):
        raise ArgError(f"{what} {path} is not readable: check its permissions (chmod u+r)")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ArgError(f"{what} {path} cannot be read ({err.strerror or err}): check its permissions") from err
    return p


def writable_dir(path: str, option: str = "--out") -> Path:
    """The folder itself if it exists, else its nearest existing parent, must be writable."""
    p = Path(path).resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ArgError(
            f"output folder {path} is not writable ({probe} does not accept new files): choose another {option} "
            "or fix its permissions"
        )
    return p


def resolve_device(name: str | None) -> str:
    """The device to run on: ``name`` once checked, or ``cuda`` when available, else ``cpu``."""
    import torch

    from mnistdiff.devices import default_device

    if name is None:
        return str(default_device())
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ArgError(f"--device {name!r} is not a device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgError(f"--device {name} asked for CUDA, but no GPU is available; use --device cpu")
    return name


def check_data_dir(data_dir: str | None, hint: str) -> None:
    """``--data_dir``, where given, must be a folder; ``hint`` says what to pass instead."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ArgError(f"--data_dir {data_dir} is not a folder: {hint}")


def check_sampling(args: argparse.Namespace, timesteps: int) -> None:
    """The sampling options (``sample``, ``umap``) against each other and the model's ``timesteps``."""
    positive("num_samples", args.num_samples)
    positive("ddim_steps", args.ddim_steps)
    positive("batch_size", args.batch_size)
    if not 0.0 <= args.eta <= 1.0:
        raise ArgError(f"--eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), got {args.eta}")
    if args.mode == "ddim" and args.ddim_steps > timesteps:
        raise ArgError(
            f"--ddim_steps {args.ddim_steps} is larger than the model's {timesteps} timesteps: "
            f"use at most {timesteps}"
        )


def check_digits(values: list[str] | None, num_classes: int) -> list[int]:
    """The digits ``--digit`` asked for, in order (``all``: every class); another value is an :class:`ArgError`."""
    digits: list[int] = []
    for value in values or []:
        if value.strip().lower() == "all":
            digits += range(num_classes)
        elif value.strip().isdigit() and int(value) < num_classes:
            digits.append(int(value))
        else:
            raise ArgError(f"--digit must be a digit 0-{num_classes - 1} or 'all', got {value!r}")
    return digits


def check_guidance(w: float) -> None:
    """``--guidance``: what :func:`mnistdiff.guidance.check_guidance` accepts (a finite number >= 0)."""
    from mnistdiff.guidance import check_guidance as check

    try:
        check(w)
    except ValueError as err:
        raise ArgError(f"--guidance: {err}") from err


def _read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of the checkpoint at ``path``; a missing or damaged one is an :class:`ArgError`."""
    from mnistdiff.training.checkpoints import CheckpointError, read_sidecar

    try:
        return read_sidecar(path)
    except CheckpointError as err:
        raise ArgError(str(err)) from err


def sidecar_kind(path: Path, kind: str) -> None:
    """The checkpoint at ``path`` must hold a ``kind`` model (read from its JSON sidecar, nothing loaded)."""
    found = _read_sidecar(path).get("kind")
    if found != kind:
        raise ArgError(f"{path} holds a {found!r} model, expected a {kind!r} checkpoint: pass the model.pt that "
                       f"`train {kind}` wrote")


def sidecar_conditional(path: Path) -> None:
    """``sample cldm`` needs a class-conditional checkpoint: an unconditional one cannot be asked for a digit."""
    kind = _read_sidecar(path).get("kind")
    if kind in ("ddpm", "ldm"):
        how = "sample ldm VAE_CKPT" if kind == "ldm" else "sample ddpm"
        raise ArgError(f"{path} holds an unconditional {kind!r} model: it cannot be asked for a digit (--digit, "
                       f"--guidance). Sample it with `{how} {path}`, or pass a checkpoint that `train cldm` wrote")


def sidecar_timesteps(path: Path, kinds: tuple[str, ...]) -> int:
    """The diffusion timesteps of the checkpoint at ``path``, which must hold one of ``kinds``."""
    meta = _read_sidecar(path)
    if meta.get("kind") not in kinds:
        raise ArgError(
            f"{path} holds a {meta.get('kind')!r} model, expected a {' or '.join(map(repr, kinds))} checkpoint: "
            f"pass the model.pt that `train {kinds[0]}` wrote"
        )
    try:
        return int(meta["config"]["diffusion"]["timesteps"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArgError(f"the sidecar of {path} has no diffusion.timesteps: it is damaged; retrain the model") from err


def resume_base(args: argparse.Namespace, cls: type) -> Any:
    """The config (a ``cls``) a run to be resumed was started with, read from its last.pt sidecar (nothing loaded)."""
    from mnistdiff.config import ConfigError, from_dict
    from mnistdiff.training.checkpoints import CheckpointError, previous_path, read_sidecar

    last = Path(args.resume, "checkpoints", "last.pt")
    if not last.is_file():
        raise ArgError(
            f"--resume {args.resume}: no checkpoints/last.pt there to resume from (pass the experiment folder a "
            "training run printed, e.g. experiments/<timestamp>-<model>)"
        )
    try:
        meta = read_sidecar(last)
    except CheckpointError as err:
        try:  # a crash between writing last.pt and its sidecar: training falls back to last.prev.pt
            meta = read_sidecar(previous_path(last))
        except CheckpointError:
            raise ArgError(str(err)) from err
    found = str(meta.get("kind")).removesuffix("-resume")
    if meta.get("kind") != f"{args.model}-resume":
        raise ArgError(
            f"--resume {args.resume} holds a {found!r} training run, expected a {args.model!r} one: resume it with "
            f"`train {found}`"
        )
    try:
        return from_dict(cls, meta.get("config") or {})
    except (ConfigError, TypeError) as err:
        raise ArgError(f"the config stored in {last}'s sidecar is not valid ({err}): start a new run") from err
