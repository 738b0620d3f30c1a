"""Command line: ``python -m mnistdiff train|sample|umap|evaluate|course``.

Every argument is checked before any work starts or any file is written; a bad one exits with
code 2 and a message saying what is expected. Training defaults are the ``full`` profile's
(the seed's); ``--profile smoke`` starts from the small settings instead, and any option given
overrides either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

from mnistdiff.config import DEFAULT_ETA  # noqa: E402 - config imports no torch

PROFILE_NAMES = ("smoke", "book", "full")  # mnistdiff.course.profiles.PROFILES (not imported here: it imports torch)

TRAIN_OPTIONS = {  # option → (type, help); defaults come from the profile's config
    "epochs": (int, "training epochs"),
    "lr": (float, "peak learning rate (AdamW, warm-up then cosine decay)"),
    "batch_size": (int, "images per step"),
    "sample_every": (int, "write samples every N epochs"),
    "subset": (int, "train on the first N images of a seeded permutation (quick runs)"),
    "seed": (int, "random seed (data order, noise, initial weights)"),
}
MODEL_OPTIONS = {
    "ddpm": {"timesteps": ("diffusion", int), "min_snr_gamma": ("diffusion", float), "base_channels": ("unet", int)},
    "ldm": {"timesteps": ("diffusion", int), "min_snr_gamma": ("diffusion", float), "base_channels": ("unet", int)},
    "vae": {"kl_weight": (None, float), "base_channels": ("vae", int), "latent_channels": ("vae", int)},
}


class ArgError(Exception):
    """A bad argument: reported with exit code 2."""


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ArgError(f"--{name} must be a positive number, got {value}")


def _readable_file(path: str, what: str) -> Path:
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


def _writable_dir(path: str, option: str = "--out") -> Path:
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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--data_dir", default=None, help="another MNIST copy (torchvision layout <dir>/MNIST/raw/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mnistdiff", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (ddpm, vae, ldm), or all three of a profile")
    tsub = train.add_subparsers(dest="model", required=True)
    p = tsub.add_parser("all", help="train a profile's DDPM, VAE and LDM in order into checkpoints/<profile>/ "
                                    "(resumable: run it again to continue)")
    p.add_argument("--profile", choices=tuple(PROFILE_NAMES), default="book", help="which profile (default book)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    for model in ("ddpm", "vae", "ldm"):
        p = tsub.add_parser(model, help=f"train the {model.upper()}")
        if model == "ldm":
            p.add_argument("vae_checkpoint", help="the VAE checkpoint (model.pt) whose latents to diffuse in")
        p.add_argument("--profile", choices=tuple(PROFILE_NAMES), default="full",
                       help="settings to start from (default full)")
        for name, (typ, help_) in TRAIN_OPTIONS.items():
            p.add_argument(f"--{name}", type=typ, default=None, help=help_)
        for name, (_, typ) in MODEL_OPTIONS[model].items():
            p.add_argument(f"--{name}", type=typ, default=None)
        p.add_argument("--out", default="experiments", help="experiments root (a new <timestamp>-<model>/ inside)")
        p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR", help="continue an interrupted run from its checkpoints/last.pt (its settings are read from the run)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
        p.add_argument("--compile_mode", default=None, metavar="MODE",
                       help="with --compile: a torch.compile mode, e.g. max-autotune-no-cudagraphs or reduce-overhead")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_common(p)

    sample = sub.add_parser("sample", help="sample from a trained model")
    ssub = sample.add_subparsers(dest="model", required=True)
    for model in ("ddpm", "ldm"):
        p = ssub.add_parser(model)
        if model == "ldm":
            p.add_argument("vae_checkpoint")
            p.add_argument("checkpoint", help="the latent UNet's model.pt")
        else:
            p.add_argument("checkpoint", help="a DDPM model.pt")
        _add_sampling(p)
        p.add_argument("--nrow", type=int, default=8)
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

    ev = sub.add_parser("evaluate", help="sample-quality metrics of a samples.npz, as JSON")
    ev.add_argument("samples", help="samples.npz written by the sample command (key 'samples', uint8 N×1×32×32)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="also write the JSON to this file")
    ev.add_argument("--device", default=None)

    course = sub.add_parser("course", help="execute the six notebooks in order and store their outputs")
    course.add_argument("--profile", choices=tuple(PROFILE_NAMES), default=None)
    course.add_argument("--notebooks", nargs="*", default=None, help="names or numbers (default: all six)")
    course.add_argument("--output-dir", default=None, help="where executed notebooks go (default book/chapters)")
    course.add_argument("--inplace", action="store_true", help="store outputs back into notebooks/ (nbval references)")
    course.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    return parser


def _add_sampling(p: argparse.ArgumentParser, num_samples: int = 64) -> None:
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


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ArgError(f"--device {name!r} is not a device ({err})") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgError(f"--device {name} asked for CUDA, but no GPU is available; use --device cpu")
    return name


def _train_config(args: argparse.Namespace, base: Any = None):
    """The run config: ``base`` (a resumed run's own config) or the profile's, with the options given applied."""
    from mnistdiff.config import ConfigError
    from mnistdiff.course.profiles import PROFILES

    cfg = base if base is not None else getattr(PROFILES[args.profile], args.model)
    train_kw = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    for name in ("epochs", "lr", "batch_size", "sample_every", "subset"):
        _positive(name, train_kw.get(name))
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for name, (section, _) in MODEL_OPTIONS[args.model].items():
        value = getattr(args, name)
        if value is None:
            continue
        if name in ("timesteps", "base_channels", "latent_channels"):
            _positive(name, value)
        if section is None:
            top[name] = value
        else:
            nested.setdefault(section, {})[name] = value
    try:
        changes = {"train": dataclasses.replace(cfg.train, **train_kw), **top}
        for section, kw in nested.items():
            changes[section] = dataclasses.replace(getattr(cfg, section), **kw)
        return dataclasses.replace(cfg, **changes)
    except ConfigError as err:
        raise ArgError(str(err)) from err


def _check_sampling(args: argparse.Namespace, timesteps: int) -> None:
    _positive("num_samples", args.num_samples)
    _positive("ddim_steps", args.ddim_steps)
    if args.batch_size is not None:
        _positive("batch_size", args.batch_size)
    if not 0.0 <= args.eta <= 1.0:
        raise ArgError(f"--eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise), got {args.eta}")
    if args.mode == "ddim" and args.ddim_steps > timesteps:
        raise ArgError(
            f"--ddim_steps {args.ddim_steps} is larger than the model's {timesteps} timesteps: "
            f"use at most {timesteps}"
        )


def _sidecar_timesteps(path: Path, kinds: tuple[str, ...]) -> int:
    from mnistdiff.training.checkpoints import CheckpointError, read_sidecar

    try:
        meta = read_sidecar(path)
    except CheckpointError as err:
        raise ArgError(str(err)) from err
    if meta.get("kind") not in kinds:
        raise ArgError(
            f"{path} holds a {meta.get('kind')!r} model, expected a {' or '.join(map(repr, kinds))} checkpoint: "
            f"pass the model.pt that `train {kinds[0]}` wrote"
        )
    try:
        return int(meta["config"]["diffusion"]["timesteps"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArgError(f"the sidecar of {path} has no diffusion.timesteps: it is damaged; retrain the model") from err


def _resume_base(args: argparse.Namespace):
    """The config a run to be resumed was started with, read from its last.pt sidecar (checked, nothing loaded)."""
    from mnistdiff.config import ConfigError, DDPMRunConfig, LDMRunConfig, VAERunConfig, from_dict
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
    want = f"{args.model}-resume"
    if meta.get("kind") != want:
        raise ArgError(
            f"--resume {args.resume} holds a {str(meta.get('kind')).removesuffix('-resume')!r} training run, "
            f"expected a {args.model!r} one: resume it with `train {str(meta.get('kind')).removesuffix('-resume')}`"
        )
    cls = {"ddpm": DDPMRunConfig, "vae": VAERunConfig, "ldm": LDMRunConfig}[args.model]
    try:
        return from_dict(cls, meta.get("config") or {})
    except (ConfigError, TypeError) as err:
        raise ArgError(f"the config stored in {last}'s sidecar is not valid ({err}): start a new run") from err


def _cmd_train_all(args: argparse.Namespace) -> int:
    from mnistdiff.course.pretrained import train_all

    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ArgError(f"--data_dir {args.data_dir} is not a folder: pass the folder holding the four MNIST files")
    train_all(args.profile, device=_device(args.device), data_dir=args.data_dir, progress=not args.quiet)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mnistdiff.training import pipelines

    if args.model == "all":
        return _cmd_train_all(args)

    base = _resume_base(args) if args.resume else None
    cfg = _train_config(args, base)
    if base is not None:
        from mnistdiff.config import to_dict
        from mnistdiff.training.checkpoints import config_diffs

        diffs = [f"{k}: the run has {x!r}, the options give {y!r}" for k, x, y in config_diffs(to_dict(base), to_dict(cfg))]
        if diffs:
            raise ArgError(
                "--resume continues a run with the settings it was started with, but " + "; ".join(diffs)
                + ". Drop those options (they are read from the run), or start a new run."
            )
    device = _device(args.device)
    if args.resume:
        _writable_dir(args.resume, "--resume folder")
    else:
        _writable_dir(args.out)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ArgError(f"--data_dir {args.data_dir} is not a folder: pass the folder holding the four MNIST "
                       "files (or <dir>/MNIST/raw/), or leave it out to use the shipped copy")
    kw = dict(out=args.out, device=device, data_dir=args.data_dir, resume=args.resume, progress=not args.quiet,
              compile=(args.compile_mode or True) if args.compile else False)
    if args.model == "ldm":
        _readable_file(args.vae_checkpoint, "VAE checkpoint")
        _sidecar_kind(Path(args.vae_checkpoint), "vae")
        result = pipelines.train_ldm(cfg, args.vae_checkpoint, **kw)
    else:
        result = getattr(pipelines, f"train_{args.model}")(cfg, **kw)
    print(f"experiment: {result.experiment.path}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"final eval loss: {result.history[-1]['eval_loss']:.5f}  ({result.seconds:.1f} s)")
    return 0


def _sidecar_kind(path: Path, kind: str) -> None:
    from mnistdiff.training.checkpoints import CheckpointError, read_sidecar

    try:
        found = read_sidecar(path).get("kind")
    except CheckpointError as err:
        raise ArgError(str(err)) from err
    if found != kind:
        raise ArgError(f"{path} holds a {found!r} model, expected a {kind!r} checkpoint: pass the model.pt that "
                       f"`train {kind}` wrote")


def _load_for_sampling(args: argparse.Namespace, ckpt: Path, vae: str | None, device: str):
    from mnistdiff.training.pipelines import load_ddpm, load_ldm

    if vae is not None:
        return load_ldm(vae, ckpt, device)
    return load_ddpm(ckpt, device)


def _cmd_sample(args: argparse.Namespace) -> int:
    from mnistdiff.sampling import write_sample_folder

    ckpt = _readable_file(args.checkpoint, "checkpoint")
    vae = None
    if args.model == "ldm":
        vae = str(_readable_file(args.vae_checkpoint, "VAE checkpoint"))
        _sidecar_kind(Path(vae), "vae")
    timesteps = _sidecar_timesteps(ckpt, (args.model,))
    _check_sampling(args, timesteps)
    _positive("nrow", args.nrow)
    out = _writable_dir(args.out)
    device = _device(args.device)
    model = _load_for_sampling(args, ckpt, vae, device)
    images, frames = model.sample(args.num_samples, mode=args.mode, ddim_steps=args.ddim_steps, eta=args.eta,
                                  seed=args.seed, device=device, batch_size=args.batch_size,
                                  return_intermediates=args.individual > 0, progress=True, fast=args.fast)
    info = {"checkpoint": str(ckpt), "vae_checkpoint": vae, "mode": args.mode, "ddim_steps": args.ddim_steps,
            "eta": args.eta, "seed": args.seed, "fast": args.fast}
    paths = write_sample_folder(out, images, frames, nrow=args.nrow, individual=args.individual, info=info)
    print(f"samples: {paths['grid_png']}  ({args.num_samples} images, {paths['npz']})")
    return 0


def _cmd_umap(args: argparse.Namespace) -> int:
    ckpt = _readable_file(args.checkpoint, "checkpoint")
    if args.vae:
        _readable_file(args.vae, "VAE checkpoint")
        _sidecar_kind(Path(args.vae), "vae")
    timesteps = _sidecar_timesteps(ckpt, ("ldm",) if args.vae else ("ddpm",))
    _check_sampling(args, timesteps)
    _positive("real", args.real)
    out = _writable_dir(args.out)
    device = _device(args.device)
    from mnistdiff.data import load_mnist
    from mnistdiff.evaluation.umap_eval import umap_evaluation
    from mnistdiff.files import atomic_write_text

    model = _load_for_sampling(args, ckpt, args.vae, device)
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
    _readable_file(args.samples, "samples file")
    if args.out:
        _writable_dir(str(Path(args.out).parent))
    from mnistdiff.evaluation.metrics import evaluate_npz
    from mnistdiff.files import atomic_write_text

    try:
        result = evaluate_npz(args.samples, seed=args.seed, device=_device(args.device))
    except ValueError as err:
        raise ArgError(str(err)) from err
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


def _cmd_course(args: argparse.Namespace) -> int:
    from mnistdiff.course.runner import run_course

    run_course(profile=args.profile, notebooks=args.notebooks, output_dir=args.output_dir, inplace=args.inplace,
               timeout=args.timeout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": _cmd_train, "sample": _cmd_sample, "umap": _cmd_umap, "evaluate": _cmd_evaluate,
                "course": _cmd_course}
    from mnistdiff.config import ConfigError
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
