"""Command line: ``python -m mnistdiff train|sample|umap|evaluate|course``.

``sample cldm`` asks the class-conditional model for digits (``--digit 3``, repeated, or ``all``) with
classifier-free guidance ``--guidance w`` (ε̃ = ε(∅) + w·(ε(y) − ε(∅))).

Every argument is checked before any work starts or any file is written; a bad one exits with
code 2 and a message saying what is expected. Training defaults are the ``full`` profile's
(the reference defaults); ``--profile smoke`` starts from the small settings instead, and any option given
overrides either. The ``train`` options are made from the config dataclasses, one ``--<field>`` per
field (:mod:`mnistdiff.cli_options`), and their values are checked by the configs; the checks they
cannot make (paths, devices, checkpoints, the sampler's options) are in :mod:`mnistdiff.cli_checks`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from mnistdiff.cli_checks import (
    ArgError,
    check_data_dir,
    check_digits,
    check_guidance,
    check_sampling,
    positive,
    readable_file,
    resolve_device,
    resume_base,
    sidecar_conditional,
    sidecar_kind,
    sidecar_timesteps,
    writable_dir,
)
from mnistdiff.cli_options import add_config_arguments, config_from_args, option_message
from mnistdiff.config import (  # no torch
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    MNIST_CLASSES,
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    LDMRunConfig,
    VAERunConfig,
)

__all__ = ["main", "build_parser"]

PROFILE_NAMES = ("smoke", "book", "full")  # mnistdiff.course.profiles.PROFILES (not imported here: it imports torch)

#: The run config of each ``train`` model; its defaults are the ``full`` profile's (tests/test_config.py).
RUN_CONFIGS: dict[str, type] = {"ddpm": DDPMRunConfig, "vae": VAERunConfig, "ldm": LDMRunConfig,
                                 "cldm": CLDMRunConfig}
#: The models that diffuse in a VAE's latents: their commands take the VAE checkpoint first.
LATENT_MODELS = ("ldm", "cldm")
_TRAIN_HELP = {"ddpm": "the pixel-space DDPM", "vae": "the VAE", "ldm": "the latent diffusion model",
               "cldm": "the class-conditional latent diffusion model (classifier-free guidance)"}


def _add_common(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--data_dir``."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--data_dir", default=None, help="another MNIST copy (torchvision layout <dir>/MNIST/raw/)")


def _add_train(sub: Any) -> None:
    """``train all`` and ``train ddpm|vae|ldm|cldm``: one option per field of the model's run config."""
    train = sub.add_parser("train", help="train a model (ddpm, vae, ldm, cldm), or all four of a profile")
    tsub = train.add_subparsers(dest="model", required=True)
    p = tsub.add_parser("all", help="train a profile's DDPM, VAE, LDM and CLDM in order into checkpoints/<profile>/ "
                                    "(resumable: run it again to continue)")
    p.add_argument("--profile", choices=tuple(PROFILE_NAMES), default="book", help="which profile (default book)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    for model, cls in RUN_CONFIGS.items():
        p = tsub.add_parser(model, help=f"train {_TRAIN_HELP[model]}")
        if model in LATENT_MODELS:
            p.add_argument("vae_checkpoint", help="the VAE checkpoint (model.pt) whose latents to diffuse in")
        p.add_argument("--profile", choices=tuple(PROFILE_NAMES), default="full",
                       help="settings to start from (default full); the options below override them")
        p.add_argument("--out", default="experiments", help="experiments root (a new <timestamp>-<model>/ inside)")
        p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR", help="continue an interrupted run from "
                       "its checkpoints/last.pt (its settings are read from the run)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
        p.add_argument("--compile_mode", default=None, metavar="MODE",
                       help="with --compile: a torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_common(p)
        add_config_arguments(p, cls(), default_label="full profile")


def _add_sample(sub: Any) -> None:
    """``sample ddpm|ldm|cldm`` and ``umap``."""
    sample = sub.add_parser("sample", help="sample from a trained model")
    ssub = sample.add_subparsers(dest="model", required=True)
    for model in ("ddpm", "ldm", "cldm"):
        p = ssub.add_parser(model)
        if model in LATENT_MODELS:
            p.add_argument("vae_checkpoint")
            p.add_argument("checkpoint", help=f"the {'class-conditional ' if model == 'cldm' else ''}latent UNet's "
                                              "model.pt")
        else:
            p.add_argument("checkpoint", help="a DDPM model.pt")
        _add_sampling(p)
        if model == "cldm":
            _add_guidance(p)
        p.add_argument("--nrow", type=int, default=None, help="grid columns (default 8; cldm: one row per digit)")
        p.add_argument("--individual", type=int, default=8, help="samples that get their own folder of steps")
        p.add_argument("--out", default="generated_samples")
        _add_common(p)

    um = sub.add_parser("umap", help="UMAP of generated vs real MNIST (pixel space)")
    um.add_argument("checkpoint", help="a DDPM model.pt (or a latent UNet with --vae)")
    um.add_argument("--vae", default=None, help="the VAE checkpoint, for a latent-diffusion checkpoint")
    _add_sampling(um, num_samples=2000)
    um.add_argument("--real", type=int, default=5000, help="real test images to fit the UMAP on")
    um.add_argument("--out", default="umap", help="folder for umap.png and umap.json")
    _add_common(um)


def _add_sampling(p: argparse.ArgumentParser, num_samples: int = 64) -> None:
    """The sampler's options (``sample``, ``umap``): no config holds them, so :func:`check_sampling` checks them."""
    p.add_argument("--mode", choices=("ddpm", "ddim"), default="ddim")
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=DEFAULT_ETA,
                   help=f"DDIM noise: 0 deterministic, 1 DDPM-like (default {DEFAULT_ETA:g}; see chapter 3)")
    p.add_argument("--num_samples", type=int, default=num_samples)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", choices=("off", "amp", "compile", "cudagraphs"), default="off",
                   help="run the network in bf16 autocast + channels_last (amp), also torch.compile'd (compile) "
                        "or compiled with CUDA graphs (cudagraphs); off: float32, as trained (default)")


def _add_guidance(p: argparse.ArgumentParser) -> None:
    """``--digit`` and ``--guidance`` of ``sample cldm`` (checked by :func:`~mnistdiff.cli_checks.check_digits` and
    :func:`~mnistdiff.cli_checks.check_guidance`)."""
    p.add_argument("--digit", action="append", default=None, metavar="D",
                   help="the digit to ask for, 0-9; repeat it for several, or 'all' for 0-9 (one grid row each). "
                        "--num_samples is then per digit. Left out: unconditional samples (no label)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, metavar="W",
                   help="classifier-free guidance weight w >= 0 in eps = eps(no label) + w*(eps(digit) - "
                        "eps(no label)): 0 ignores the digit, 1 is the conditional model "
                        f"(default {DEFAULT_GUIDANCE:g})")


def _add_evaluate_and_course(sub: Any) -> None:
    """``evaluate`` and ``course``."""
    ev = sub.add_parser("evaluate", help="sample-quality metrics of a samples.npz, as JSON")
    ev.add_argument("samples", help="samples.npz written by the sample command (key 'samples', uint8 N×1×32×32)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="also write the JSON to this file")
    ev.add_argument("--device", default=None)

    course = sub.add_parser("course", help="execute the chapters' notebooks in order and store their outputs")
    course.add_argument("--profile", choices=tuple(PROFILE_NAMES), default=None)
    course.add_argument("--notebooks", nargs="*", default=None, help="names or numbers (default: every chapter)")
    course.add_argument("--output-dir", default=None, help="where executed notebooks go (default book/chapters)")
    course.add_argument("--inplace", action="store_true", help="store outputs back into notebooks/ (nbval references)")
    course.add_argument("--timeout", type=int, default=3600, help="seconds per cell")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; the ``train`` options come from the config dataclasses."""
    parser = argparse.ArgumentParser(prog="python -m mnistdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_evaluate_and_course(sub)
    return parser


def _train_config(args: argparse.Namespace, base: Any = None) -> Any:
    """The run config: ``base`` (a resumed run's own config) or the profile's, with the options given applied.

    The config dataclasses check the values; a bad one is an :class:`ArgError` naming its option.
    """
    from mnistdiff.course.profiles import PROFILES

    cfg = base if base is not None else getattr(PROFILES[args.profile], args.model)
    try:
        return config_from_args(args, cfg)
    except ConfigError as err:
        raise ArgError(option_message(err)) from err


def _cmd_train_all(args: argparse.Namespace) -> int:
    """``train all``: a profile's four models in order (resumable)."""
    from mnistdiff.course.pretrained import train_all

    check_data_dir(args.data_dir, "pass the folder holding the four MNIST files")
    train_all(args.profile, device=resolve_device(args.device), data_dir=args.data_dir, progress=not args.quiet)
    return 0


def _check_resume_unchanged(base: Any, cfg: Any) -> None:
    """A resumed run keeps the settings it was started with: options that change them are an error."""
    from mnistdiff.config import to_dict
    from mnistdiff.training.checkpoints import config_diffs

    diffs = [f"{k}: the run has {x!r}, the options give {y!r}" for k, x, y in config_diffs(to_dict(base), to_dict(cfg))]
    if diffs:
        raise ArgError(
            "--resume continues a run with the settings it was started with, but " + "; ".join(diffs)
            + ". Drop those options (they are read from the run), or start a new run."
        )


def _cmd_train(args: argparse.Namespace) -> int:
    """``train ddpm|vae|ldm`` (and ``train all``): every argument checked, then the run."""
    from mnistdiff.training import pipelines

    if args.model == "all":
        return _cmd_train_all(args)

    base = resume_base(args, RUN_CONFIGS[args.model]) if args.resume else None
    cfg = _train_config(args, base)
    if base is not None:
        _check_resume_unchanged(base, cfg)
    device = resolve_device(args.device)
    if args.resume:
        writable_dir(args.resume, "--resume folder")
    else:
        writable_dir(args.out)
    check_data_dir(args.data_dir, "pass the folder holding the four MNIST files (or <dir>/MNIST/raw/), or leave it "
                   "out to use the shipped copy")
    kw = dict(out=args.out, device=device, data_dir=args.data_dir, resume=args.resume, progress=not args.quiet,
              compile=(args.compile_mode or True) if args.compile else False)
    if args.model in LATENT_MODELS:
        readable_file(args.vae_checkpoint, "VAE checkpoint")
        sidecar_kind(Path(args.vae_checkpoint), "vae")
        result = getattr(pipelines, f"train_{args.model}")(cfg, args.vae_checkpoint, **kw)
    else:
        result = getattr(pipelines, f"train_{args.model}")(cfg, **kw)
    print(f"experiment: {result.experiment.path}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"final eval loss: {result.history[-1]['eval_loss']:.5f}  ({result.seconds:.1f} s)")
    return 0


def _load_for_sampling(ckpt: Path, vae: str | None, device: str, kind: str = "ldm") -> Any:
    """The DDPM at ``ckpt``, or with ``vae`` the latent model of ``kind`` (its ``sample`` method draws images)."""
    from mnistdiff.training.pipelines import load_cldm, load_ddpm, load_ldm

    if vae is not None:
        return (load_cldm if kind == "cldm" else load_ldm)(vae, ckpt, device)
    return load_ddpm(ckpt, device)


def _sample_labels(args: argparse.Namespace) -> tuple[list[int], Any]:
    """``sample cldm``: the digits asked for and the labels (N,) of the samples (∅ without ``--digit``)."""
    import torch

    from mnistdiff.unet import NULL_LABEL

    digits = check_digits(args.digit, MNIST_CLASSES)
    check_guidance(args.guidance)
    if not digits:
        return [], torch.full((args.num_samples,), NULL_LABEL, dtype=torch.long)
    return digits, torch.tensor(digits).repeat_interleave(args.num_samples)


def _cmd_sample(args: argparse.Namespace) -> int:
    """``sample ddpm|ldm|cldm``: a folder of samples (grid, npz, per-sample steps); a cldm's npz holds ``labels``."""
    from mnistdiff.sampling import write_sample_folder

    ckpt = readable_file(args.checkpoint, "checkpoint")
    vae = None
    if args.model in LATENT_MODELS:
        vae = str(readable_file(args.vae_checkpoint, "VAE checkpoint"))
        sidecar_kind(Path(vae), "vae")
    if args.model == "cldm":
        sidecar_conditional(ckpt)
    timesteps = sidecar_timesteps(ckpt, (args.model,))
    check_sampling(args, timesteps)
    guide: dict[str, Any] = {}
    digits: list[int] = []
    if args.model == "cldm":
        digits, labels = _sample_labels(args)
        guide = {"labels": labels, "guidance": args.guidance}
    positive("nrow", args.nrow)
    out = writable_dir(args.out)
    device = resolve_device(args.device)
    model = _load_for_sampling(ckpt, vae, device, args.model)
    n = len(guide["labels"]) if guide else args.num_samples
    images, frames = model.sample(n, mode=args.mode, ddim_steps=args.ddim_steps, eta=args.eta,
                                  seed=args.seed, device=device, batch_size=args.batch_size,
                                  return_intermediates=args.individual > 0, progress=True, fast=args.fast, **guide)
    info = {"checkpoint": str(ckpt), "vae_checkpoint": vae, "mode": args.mode, "ddim_steps": args.ddim_steps,
            "eta": args.eta, "seed": args.seed, "fast": args.fast}
    if args.model == "cldm":
        info.update(digits=digits, guidance=args.guidance)
    nrow = args.nrow or (args.num_samples if digits else 8)
    paths = write_sample_folder(out, images, frames, nrow=nrow, individual=args.individual, info=info,
                                labels=guide.get("labels"))
    print(f"samples: {paths['grid_png']}  ({n} images, {paths['npz']})")
    return 0


def _cmd_umap(args: argparse.Namespace) -> int:
    """``umap``: generated and real images in one UMAP embedding, plot and scores."""
    ckpt = readable_file(args.checkpoint, "checkpoint")
    if args.vae:
        readable_file(args.vae, "VAE checkpoint")
        sidecar_kind(Path(args.vae), "vae")
    timesteps = sidecar_timesteps(ckpt, ("ldm",) if args.vae else ("ddpm",))
    check_sampling(args, timesteps)
    positive("real", args.real)
    out = writable_dir(args.out)
    device = resolve_device(args.device)
    from mnistdiff.data import load_mnist
    from mnistdiff.evaluation.umap_eval import umap_evaluation
    from mnistdiff.files import atomic_write_text

    model = _load_for_sampling(ckpt, args.vae, device)
    images, _ = model.sample(args.num_samples, mode=args.mode, ddim_steps=args.ddim_steps, eta=args.eta,
                             seed=args.seed, device=device, batch_size=args.batch_size, progress=True)
    real = load_mnist("test", args.data_dir).subset(args.real, args.seed)
    name = f"{'LDM' if args.vae else 'DDPM'} ({args.mode}{'-' + str(args.ddim_steps) if args.mode == 'ddim' else ''})"
    fig, scores = umap_evaluation(real.images, real.labels, {name: images}, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "umap.png", dpi=130)
    atomic_write_text(out / "umap.json", json.dumps(scores, indent=2) + "\n")
    print(f"UMAP plot: {out / 'umap.png'}")
    print(json.dumps(scores, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: the sample-quality metrics of a samples.npz, as JSON."""
    readable_file(args.samples, "samples file")
    if args.out:
        writable_dir(str(Path(args.out).parent))
    from mnistdiff.evaluation.metrics import evaluate_npz
    from mnistdiff.files import atomic_write_text

    try:
        result = evaluate_npz(args.samples, seed=args.seed, device=resolve_device(args.device))
    except ValueError as err:
        raise ArgError(str(err)) from err
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


def _cmd_course(args: argparse.Namespace) -> int:
    """``course``: execute the notebooks in order."""
    from mnistdiff.course.runner import run_course

    run_course(profile=args.profile, notebooks=args.notebooks, output_dir=args.output_dir, inplace=args.inplace,
               timeout=args.timeout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0, 2 for a bad argument, 1 for a failure, 128 + N for signal N."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": _cmd_train, "sample": _cmd_sample, "umap": _cmd_umap, "evaluate": _cmd_evaluate,
                "course": _cmd_course}
    from mnistdiff.data import MNISTDataError
    from mnistdiff.training.checkpoints import CheckpointError
    from mnistdiff.training.loop import TrainingDiverged, TrainingInterrupted

    try:
        return handlers[args.command](args)
    except ArgError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except (CheckpointError, MNISTDataError, TrainingDiverged, ConfigError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:
        print(f"{parser.prog}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. a full disk while writing sample images
        where = f" ({err.filename})" if err.filename else ""
        print(f"{parser.prog}: error: {err.strerror or err}{where}. Checkpoints are written atomically, so the "
              "last one is intact: fix the cause and run again (training runs continue with --resume)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
