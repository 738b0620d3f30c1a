"""``python -m mnistdiff distill``: progressive distillation of a class-conditional latent model into a few-step
student (:mod:`mnistdiff.training.distill`), one option per field of its ``DistillConfig``; every argument is checked
before any work starts (exit code 2 with a message)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistdiff.cli_checks import ArgError, as_arg_error, check_data_dir, device_option, writable_dir
from mnistdiff.cli_options import add_config_arguments, config_from_args, option_message
from mnistdiff.config import CLDMRunConfig, ConfigError

__all__ = ["add_distill_options", "run_distill"]


def add_distill_options(p: argparse.ArgumentParser) -> None:
    """``distill``: a class-conditional latent model into a few-step student (one option per DistillConfig field)."""
    from mnistdiff.training.distill import DistillConfig

    p.add_argument("vae_checkpoint", help="the VAE's model file the cldm was trained on")
    p.add_argument("checkpoint", help="the cldm model file to distil (the teacher)")
    p.add_argument("--out", required=True, help="the student's model file (NAME.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--data_dir", default=None, help="another MNIST copy (torchvision layout <dir>/MNIST/raw/)")
    add_config_arguments(p, DistillConfig(), default_label="default")


def run_distill(args: argparse.Namespace, load: Callable[..., Any]) -> int:
    """``distill``: every argument checked, then the rounds; prints the student's file. ``load``: the command line's
    model loader (a refusal is an argument error)."""
    from mnistdiff.data import load_mnist
    from mnistdiff.training.distill import DistillConfig, progressive_distillation
    from mnistdiff.training.kinds import KINDS

    try:
        cfg = config_from_args(args, DistillConfig())
    except ConfigError as err:
        raise ArgError(option_message(err)) from err
    out = Path(args.out)
    writable_dir(str(out.parent))
    teacher = load(KINDS[CLDMRunConfig.kind], args.checkpoint, args.vae_checkpoint, args.device)
    check_data_dir(args.data_dir, "pass the folder holding the four MNIST files")
    train = load_mnist("train", args.data_dir).subset(cfg.subset, cfg.seed)
    with as_arg_error():
        path = progressive_distillation(teacher, train.images, train.labels, cfg, out, device_option(args.device),
                                        progress=not args.quiet)
    print(f"student: {path} ({cfg.steps} steps, guidance {cfg.guidance:g} folded in)")
    return 0
