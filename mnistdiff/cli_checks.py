"""The command line's checks that the configs and the model cannot make: paths, devices, digits, resume.

Each raises :class:`ArgError`, which :func:`mnistdiff.cli.main` reports with exit code 2 before any work
starts or any file is written. The model and training settings are checked by the configs themselves
(:mod:`mnistdiff.config`), the sampling options by :meth:`mnistdiff.model.DiffusionModel.sample`, model files
when they are loaded: :func:`as_arg_error` turns their refusals into an :class:`ArgError`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mnistdiff.cli_options import option_message
from mnistdiff.config import ConfigError
from mnistdiff.files import accepts_new_files
from mnistdiff.modelfile import CheckpointError

__all__ = [
    "ArgError",
    "as_arg_error",
    "positive",
    "readable_file",
    "writable_dir",
    "device_option",
    "check_data_dir",
    "check_digits",
    "resume_base",
    "check_resume_unchanged",
]


class ArgError(Exception):
    """A bad argument: reported with exit code 2."""


@contextlib.contextmanager
def as_arg_error() -> Iterator[None]:
    """Report a refusal of the code inside (a bad setting, a bad or mismatched model file) as an :class:`ArgError`;
    a setting's message is worded as its option (``--steps must be …``)."""
    try:
        yield
    except ConfigError as err:
        raise ArgError(option_message(err)) from err
    except (CheckpointError, ValueError) as err:
        raise ArgError(str(err)) from err


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
    """The folder itself if it exists, else its nearest existing parent, must accept new files (tried, not
    guessed from permissions: :func:`mnistdiff.files.accepts_new_files`)."""
    ok, probe = accepts_new_files(path)
    if not ok:
        raise ArgError(
            f"output folder {path} is not writable ({probe} does not accept new files): choose another {option} "
            "or fix its permissions"
        )
    return Path(path).resolve()


def device_option(name: str | None) -> torch.device:
    """``--device``: ``name`` once checked, or the default device (:func:`mnistdiff.devices.resolve_device`)."""
    from mnistdiff.devices import resolve_device

    try:
        dev = resolve_device(name)
    except RuntimeError as err:
        raise ArgError(f"--device {name!r} is not a device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgError(f"--device {name} asked for CUDA, but no GPU is available; use --device cpu")
    return dev


def check_data_dir(data_dir: str | None, hint: str) -> None:
    """``--data_dir``, where given, must be a folder; ``hint`` says what to pass instead."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ArgError(f"--data_dir {data_dir} is not a folder: {hint}")


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


def resume_base(args: argparse.Namespace, cls: type) -> Any:
    """The config (a ``cls``) a run to be resumed was started with, read from its last.pt sidecar (nothing loaded)."""
    from mnistdiff.config import from_dict
    from mnistdiff.training.checkpoints import previous_path, read_sidecar

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


def check_resume_unchanged(base: Any, cfg: Any) -> None:
    """A resumed run keeps the settings it was started with: options that change them are an error."""
    from mnistdiff.config import to_dict
    from mnistdiff.training.checkpoints import config_diffs

    diffs = [f"{k}: the run has {x!r}, the options give {y!r}" for k, x, y in config_diffs(to_dict(base), to_dict(cfg))]
    if diffs:
        raise ArgError(
            "--resume continues a run with the settings it was started with, but " + "; ".join(diffs)
            + ". Drop those options (they are read from the run), or start a new run."
        )
