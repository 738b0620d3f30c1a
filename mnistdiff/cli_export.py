"""``python -m mnistdiff export``: a distilled student's network and its VAE's decoder as ONNX graphs for the
browser, with ``sampler.json`` (:mod:`mnistdiff.export`); checked with onnxruntime against PyTorch before it returns.
Every argument is checked before any work starts (exit code 2 with a message)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mnistdiff.cli_checks import ArgError, as_arg_error, writable_dir
from mnistdiff.config import CLDMRunConfig, DDPMRunConfig

__all__ = ["add_export_options", "run_export"]

#: The largest difference from PyTorch an exported graph may show on fixed inputs (issue 25).
TOLERANCE = 1e-4


def add_export_options(p: argparse.ArgumentParser) -> None:
    """``export VAE STUDENT [--teacher CLDM] [--pixel DDPM] --out DIR``."""
    p.add_argument("vae_checkpoint", help="the VAE's model file the student's teacher was trained on")
    p.add_argument("checkpoint", help="the distilled student (python -m mnistdiff distill)")
    p.add_argument("--teacher", default=None,
                   help="the student's teacher (the cldm it was distilled from), exported too: the page then also "
                        "samples it at any guidance weight and 4-64 steps")
    p.add_argument("--pixel", default=None,
                   help="a pixel DDPM (python -m mnistdiff train ddpm), exported too: the page then also draws "
                        "unconditional digits in pixels by DPM-Solver++(2M) SDE at 4-16 steps")
    p.add_argument("--out", required=True,
                   help="the folder to write student.onnx.gz, decoder.onnx.gz, [teacher.onnx.gz] (gzipped ONNX) "
                        "and sampler.json into")


def run_export(args: argparse.Namespace, load: Callable[..., Any]) -> int:
    """``export``: load and check the student, write the files, run them with onnxruntime; prints sizes and errors."""
    from mnistdiff.training.kinds import KINDS

    out, cldm = writable_dir(args.out), KINDS[CLDMRunConfig.kind]
    student = load(cldm, args.checkpoint, args.vae_checkpoint, "cpu")
    if student.distillation is None:
        raise ArgError(f"{args.checkpoint} is a cldm but not a distilled student: distil it first "
                       "(python -m mnistdiff distill VAE CLDM --out STUDENT)")
    from mnistdiff.export import check_export, export_student

    teacher = None if args.teacher is None else load(cldm, args.teacher, args.vae_checkpoint, "cpu")
    pixel = None if args.pixel is None else load(KINDS[DDPMRunConfig.kind], args.pixel, None, "cpu")
    with as_arg_error():  # export_student checks the teacher and the pixel model before it writes anything
        paths = export_student(student, out, teacher, pixel)
    errors = check_export(student, out, teacher, pixel)
    for path in paths.values():
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
    print("largest difference from PyTorch: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    if max(errors.values()) > TOLERANCE:
        print(f"error: an exported graph differs from PyTorch by more than {TOLERANCE:g}")
        return 1
    return 0
