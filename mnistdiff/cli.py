"""Command line: ``python -m mnistdiff train|sample|distill|export|umap|evaluate|convert|course``.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from mnistdiff.cli_checks import (
    ArgError,
    as_arg_error,
    check_data_dir,
    check_digits,
    check_resume_unchanged,
    device_option,
    positive,
    readable_file,
    resume_base,
    writable_dir,
)
from mnistdiff.cli_distill import add_distill_options, run_distill
from mnistdiff.cli_export import add_export_options, run_export
from mnistdiff.cli_options import (
    add_config_arguments,
    add_guidance_options,
    add_sampling_options,
    config_from_args,
    option_message,
)
from mnistdiff.config import MNIST_CLASSES, ConfigError
from mnistdiff.course.profiles import PROFILES
from mnistdiff.model import DiffusionModel
from mnistdiff.modelfile import CheckpointError
from mnistdiff.sampling import OLD_FAST
from mnistdiff.training.kinds import KINDS, Kind

__all__ = ["main", "build_parser", "COMMANDS"]


class Command(NamedTuple):
    """One command of :data:`COMMANDS`."""

    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

def _add_common(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--data_dir``."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--data_dir", default=None, help="another MNIST copy (torchvision layout <dir>/MNIST/raw/)")


def _train_options(train: argparse.ArgumentParser) -> None:
    """``train all`` and ``train ddpm|vae|ldm|cldm``: one option per field of the model's run config."""
    tsub = train.add_subparsers(dest="model", required=True)
    p = tsub.add_parser("all", help=f"train a profile's {', '.join(KINDS)} in order into checkpoints/<profile>/ "
                                    "(resumable: run it again to continue)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="book", help="which profile (default book)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    for name, kind in KINDS.items():
        p = tsub.add_parser(name, help=f"train {kind.help}")
        if kind.latent:
            p.add_argument("vae_checkpoint", help="the VAE's model file whose latents to diffuse in")
        p.add_argument("--profile", choices=tuple(PROFILES), default="full",
                       help="settings to start from (default full); the options below override them")
        p.add_argument("--out", default="experiments", help="experiments root (a new <timestamp>-<model>/ inside)")
        p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR", help="continue an interrupted run from "
                       "its checkpoints/last.pt (its settings are read from the run)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
        p.add_argument("--compile_mode", default=None, metavar="MODE",
                       help="with --compile: a torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_common(p)
        add_config_arguments(p, kind.config(), default_label="full profile")


def _sample_options(sample: argparse.ArgumentParser) -> None:
    """``sample <kind>`` for every kind that samples."""
    ssub = sample.add_subparsers(dest="model", required=True)
    for name, kind in KINDS.items():
        if not kind.samples:
            continue
        p = ssub.add_parser(name, help=f"sample {kind.help}")
        if kind.latent:
            p.add_argument("vae_checkpoint", help="the VAE's model file it was trained on")
        p.add_argument("checkpoint", help=f"the {name} model file (NAME.safetensors) `train {name}` wrote")
        add_sampling_options(p)
        add_guidance_options(p, kind.conditional)
        p.add_argument("--nrow", type=int, default=None, help="grid columns (default 8; with --digit: one row each)")
        p.add_argument("--individual", type=int, default=8, help="samples that get their own folder of steps")
        p.add_argument("--out", default="generated_samples")
        _add_common(p)


def _umap_options(um: argparse.ArgumentParser) -> None:
    """``umap CKPT [--vae VAE]``: a UMAP of samples against real digits."""
    um.add_argument("checkpoint", help="a DDPM model file (or a latent one with --vae)")
    um.add_argument("--vae", default=None, help="the VAE's model file, for a latent-diffusion model")
    add_sampling_options(um, num_samples=2000)
    um.add_argument("--real", type=int, default=5000, help="real test images to fit the UMAP on")
    um.add_argument("--out", default="umap", help="folder for umap.png and umap.json")
    _add_common(um)


def _evaluate_options(ev: argparse.ArgumentParser) -> None:
    """``evaluate SAMPLES``."""
    ev.add_argument("samples", help="samples.npz written by the sample command (key 'samples', uint8 N×1×32×32)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="also write the JSON to this file")
    ev.add_argument("--device", default=None)


def _convert_options(conv: argparse.ArgumentParser) -> None:
    """``convert OLD [--vae VAE] [--out NEW]``."""
    conv.add_argument("old", help="the old model.pt (its .json sidecar beside it)")
    conv.add_argument("--vae", default=None, help="for a latent model: the VAE it was trained on (old or converted)")
    conv.add_argument("--out", default=None, help="the new file (default: OLD with the suffix .safetensors)")


def _course_options(course: argparse.ArgumentParser) -> None:
    """``course [--profile P] [--notebooks N …]``."""
    course.add_argument("--profile", choices=tuple(PROFILES), default=None)
    course.add_argument("--notebooks", nargs="*", default=None, help="names or numbers (default: every chapter)")
    course.add_argument("--output-dir", default=None, help="where executed notebooks go (default book/chapters)")
    course.add_argument("--inplace", action="store_true", help="store outputs back into notebooks/ (nbval references)")
    course.add_argument("--timeout", type=int, default=3600, help="seconds per cell")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command (``command`` given: of that one in full, the others by name and help only); the
    ``train`` options come from the config dataclasses."""
    parser = argparse.ArgumentParser(prog="python -m mnistdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help)
        if command in (None, name):
            cmd.add_options(p)
    return parser


def _train_config(args: argparse.Namespace, base: Any = None) -> Any:
    """The run config: ``base`` (a resumed run's own config) or the profile's, with the options given applied.

    The config dataclasses check the values; a bad one is an :class:`ArgError` naming its option.
    """
    cfg = base if base is not None else getattr(PROFILES[args.profile], args.model)
    try:
        return config_from_args(args, cfg)
    except ConfigError as err:
        raise ArgError(option_message(err)) from err


def _cmd_train_all(args: argparse.Namespace) -> int:
    """``train all``: a profile's models in order (resumable)."""
    from mnistdiff.course.pretrained import train_all

    check_data_dir(args.data_dir, "pass the folder holding the four MNIST files")
    train_all(args.profile, device=device_option(args.device), data_dir=args.data_dir, progress=not args.quiet)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """``train <kind>`` (and ``train all``): every argument checked, then the run."""
    if args.model == "all":
        return _cmd_train_all(args)
    kind = KINDS[args.model]
    base = resume_base(args, kind.config) if args.resume else None
    cfg = _train_config(args, base)
    if base is not None:
        check_resume_unchanged(base, cfg)
    device = device_option(args.device)
    if args.resume:
        writable_dir(args.resume, "--resume folder")
    else:
        writable_dir(args.out)
    check_data_dir(args.data_dir, "pass the folder holding the four MNIST files (or <dir>/MNIST/raw/), or leave it "
                   "out to use the shipped copy")
    vae = None
    if kind.latent:
        vae = readable_file(args.vae_checkpoint, "VAE checkpoint")
        from mnistdiff.modelfile import load_vae

        with as_arg_error():
            load_vae(vae)  # refused here, before any work, if it is no VAE or is damaged
    result = kind.train(cfg, vae, out=args.out, device=device, data_dir=args.data_dir, resume=args.resume,
                        progress=not args.quiet, compile=(args.compile_mode or True) if args.compile else False)
    print(f"experiment: {result.experiment.path}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"final eval loss: {result.history[-1]['eval_loss']:.5f}  ({result.seconds:.1f} s)")
    return 0


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler's keyword arguments of :meth:`~mnistdiff.model.DiffusionModel.sample` from the options."""
    precision, compile = (args.precision, args.compile) if args.fast is None else OLD_FAST[args.fast]
    return dict(sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
                precision=precision, compile=compile, spacing=args.spacing)


def _load(kind: Kind | None, checkpoint: str, vae: str | None, device: str | None,
          what: str = "checkpoint") -> DiffusionModel:
    """The model file ``checkpoint`` (of ``kind``, else any diffusion kind; with its ``vae``), verified; a refusal
    is an :class:`ArgError` that calls the file ``what``."""
    ckpt = readable_file(checkpoint, what)
    vae_path = readable_file(vae, "VAE checkpoint") if vae is not None else None
    with as_arg_error():
        return DiffusionModel.load(ckpt, vae=vae_path, device=device_option(device),
                                   kind=kind.name if kind is not None else None)


def _labels(args: argparse.Namespace) -> tuple[list[int], Any]:
    """``--digit``: the digits asked for and the labels (N,) of the samples (``None`` without ``--digit``)."""
    import torch

    digits = check_digits(getattr(args, "digit", None), MNIST_CLASSES)
    return digits, (torch.tensor(digits).repeat_interleave(args.num_samples) if digits else None)


def _cmd_sample(args: argparse.Namespace) -> int:
    """``sample <kind>``: a folder of samples (grid, npz, per-sample steps); a cldm's npz holds ``labels``."""
    import torch

    from mnistdiff.sampling import interval_record, write_sample_folder
    from mnistdiff.unet import NULL_LABEL

    kind = KINDS[args.model]
    positive("nrow", args.nrow)
    out = writable_dir(args.out)
    digits, labels = _labels(args)
    options = _sampling(args)
    if args.guidance is not None and args.guide is None and not kind.conditional:
        raise ArgError(f"--guidance weighs autoguidance on a {kind.name} model: pass the guide's model file too "
                       "(--guide GUIDE)")
    vae = args.vae_checkpoint if kind.latent else None
    model = _load(kind, args.checkpoint, vae, args.device)
    guide = _load(kind, args.guide, vae, args.device, "guide") if args.guide is not None else None
    defaults = model.sampling_defaults(options["sampler"], guide is not None)
    options.update({k: defaults[k] for k in ("sampler", "steps", "eta") if options[k] is None})
    n = len(labels) if labels is not None else args.num_samples
    guidance = defaults["guidance"] if args.guidance is None else args.guidance
    interval = tuple(args.guidance_interval) if args.guidance_interval else defaults.get("guidance_interval")
    with as_arg_error():
        images, frames = model.sample(n, labels=labels, guidance=guidance, guide=guide, guidance_interval=interval,
                                      return_intermediates=args.individual > 0, progress=True, **options)
    info = {"checkpoint": str(args.checkpoint), "vae_checkpoint": getattr(args, "vae_checkpoint", None),
            "kind": kind.name, **{k: v for k, v in options.items() if k not in ("batch_size", "spacing")},
            "spacing": options["spacing"] or model.spacing(options["sampler"])}
    if guide is not None:
        info.update(guide=str(args.guide), guidance=guidance)
    if interval is not None:
        info.update(guidance_interval=interval_record(interval))
    if kind.conditional:
        info.update(digits=digits, guidance=guidance)
        labels = labels if labels is not None else torch.full((n,), NULL_LABEL)
    paths = write_sample_folder(out, images, frames, nrow=args.nrow or (args.num_samples if digits else 8),
                                individual=args.individual, info=info, labels=labels)
    print(f"samples: {paths['grid_png']}  ({n} images, {paths['npz']})")
    return 0


def _cmd_umap(args: argparse.Namespace) -> int:
    """``umap``: generated and real images in one UMAP embedding, plot and scores."""
    positive("real", args.real)
    out = writable_dir(args.out)
    options = _sampling(args)
    model = _load(None, args.checkpoint, args.vae, args.device)
    defaults = model.sampling_defaults(options["sampler"])
    options.update({k: defaults[k] for k in ("sampler", "steps", "eta") if options[k] is None})
    sampler = options["sampler"]
    with as_arg_error():
        images, _ = model.sample(args.num_samples, progress=True, **options)
    from mnistdiff.data import load_mnist
    from mnistdiff.evaluation.umap_eval import umap_evaluation
    from mnistdiff.files import atomic_write_text

    real = load_mnist("test", args.data_dir).subset(args.real, args.seed)
    steps = f"-{options['steps']}" if sampler != "ddpm" else ""
    fig, scores = umap_evaluation(real.images, real.labels, {f"{model.kind.upper()} ({sampler}{steps})": images},
                                  seed=args.seed)
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
    device = device_option(args.device)
    from mnistdiff.evaluation.metrics import evaluate_npz
    from mnistdiff.files import atomic_write_text

    with as_arg_error():
        result = evaluate_npz(args.samples, seed=args.seed, device=device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """``convert``: an old ``.pt`` + ``.json`` model to one ``.safetensors`` file (the old pair is kept)."""
    from mnistdiff.training.convert import convert_checkpoint

    readable_file(args.old, "checkpoint")
    if args.vae is not None:
        readable_file(args.vae, "VAE checkpoint")
    if args.out is not None:
        writable_dir(str(Path(args.out).parent))
    with as_arg_error():
        path = convert_checkpoint(args.old, args.out, vae=args.vae)
    print(f"model file: {path}")
    return 0


def _cmd_course(args: argparse.Namespace) -> int:
    """``course``: execute the notebooks in order."""
    from mnistdiff.course.chapters import chapter_name
    from mnistdiff.course.runner import run_course

    with as_arg_error():
        for name in args.notebooks or []:
            chapter_name(name)  # an unknown chapter is refused before anything runs
    run_course(profile=args.profile, notebooks=args.notebooks, output_dir=args.output_dir, inplace=args.inplace,
               timeout=args.timeout)
    return 0


#: Every command: its line of help, what adds its options, and what runs it. Only the command that runs is built in
#: full (the others get their line of help), so that ``sample`` does not build the options of ``train``, ``distill``
#: and ``export`` (one per field of their config dataclasses).
COMMANDS: dict[str, Command] = {
    "train": Command(f"train a model ({', '.join(KINDS)}), or all of a profile's", _train_options, _cmd_train),
    "sample": Command("sample from a trained model", _sample_options, _cmd_sample),
    "distill": Command("progressive distillation of a cldm into a few-step student, guidance folded in",
                       add_distill_options, lambda a: run_distill(a, _load)),
    "export": Command("write a distilled cldm student and its VAE decoder as ONNX for the browser", add_export_options,
                      lambda a: run_export(a, _load)),
    "umap": Command("UMAP of generated vs real MNIST (pixel space)", _umap_options, _cmd_umap),
    "evaluate": Command("sample-quality metrics of a samples.npz, as JSON", _evaluate_options, _cmd_evaluate),
    "convert": Command("convert a model from the old .pt + .json pair to one .safetensors file", _convert_options,
                       _cmd_convert),
    "course": Command("execute the chapters' notebooks in order and store their outputs", _course_options, _cmd_course),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0, 2 for a bad argument, 1 for a failure, 128 + N for signal N."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the first word; the parser has no option
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    from mnistdiff.data import MNISTDataError
    from mnistdiff.training.loop import TrainingDiverged, TrainingInterrupted

    try:
        return COMMANDS[args.command].run(args)
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
        again = ("the last checkpoint is intact (written atomically): fix the cause and continue with --resume"
                 if args.command == "train" else "files are written atomically, so none is half-written: fix the "
                 "cause and run the command again")
        print(f"{parser.prog}: error: {err.strerror or err}{where}; {again}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
