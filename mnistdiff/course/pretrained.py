"""Load, else train: how a notebook gets a trained model by name and profile.

Trained models live in ``checkpoints/<profile>/<kind>.safetensors`` (one self-describing file each) at the
repository root, or under ``$MNISTDIFF_CHECKPOINT_DIR/<profile>/``. The book profile's are committed;
the smoke profile's are written by whichever notebook first needs them. ``get_ddpm`` & co. return
the verified checkpoint when it exists and matches the profile's config, and otherwise train it with
the same train functions the command line uses (:data:`~mnistdiff.training.kinds.KINDS`), then store it there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mnistdiff.config import (
    VAE_KIND,
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    FlowRunConfig,
    LDMRunConfig,
    normalized,
    to_dict,
)
from mnistdiff.course.profiles import Profile, get_profile
from mnistdiff.devices import resolve_device
from mnistdiff.files import atomic_copy, repo_root, shown_path
from mnistdiff.model import DiffusionModel
from mnistdiff.modelfile import SUFFIX, CheckpointError, read_model_meta
from mnistdiff.training.kinds import KINDS
from mnistdiff.vae import VAE

__all__ = ["checkpoint_dir", "checkpoint_path", "get_ddpm", "get_ddpm_guide", "get_vae", "get_ldm", "get_cldm",
           "get_flow", "get_cldm_distilled", "train_all", "REPO_ROOT", "STUDENT", "GUIDE"]

#: The file name (in ``checkpoints/<profile>/``) of the cldm's distilled student: a cldm file, not a kind of its own.
STUDENT = "cldm_distilled"

#: The file name, and the :class:`~mnistdiff.course.profiles.Profile` field, of the DDPM's autoguide: a ddpm file.
GUIDE = "ddpm_guide"

REPO_ROOT = repo_root()


def checkpoint_dir(profile: str | Profile | None = None) -> Path:
    """``$MNISTDIFF_CHECKPOINT_DIR/<profile>`` or ``<repo>/checkpoints/<profile>``."""
    name = profile.name if isinstance(profile, Profile) else get_profile(profile).name
    root = Path(os.environ.get("MNISTDIFF_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    return root / name


def checkpoint_path(kind: str, profile: str | Profile | None = None) -> Path:
    return checkpoint_dir(profile) / f"{kind}{SUFFIX}"


def _stored_config(path: Path, cfg: Any, *, resume: bool = False) -> dict | None:
    """The run config recorded in the model file at ``path`` (``resume``: in a resumable ``last.pt``'s sidecar), with
    settings added since it was written at their defaults, so that a new option never makes old models look
    foreign; ``None`` if it is not a config of ``cfg``'s kind. Raises on a damaged file."""
    from mnistdiff.training.checkpoints import read_sidecar

    meta = read_sidecar(path) if resume else read_model_meta(path)
    try:
        return normalized(type(cfg), dict(meta.get("config") or {}))
    except (ConfigError, TypeError):
        return None


def _same(found: dict | None, cfg: Any, *, with_train: bool) -> bool:
    """Whether a stored config (:func:`_stored_config`) equals ``cfg`` (the ``train`` section only ``with_train``)."""
    if found is None:
        return False
    wanted, found = to_dict(cfg), dict(found)
    if not with_train:
        found.pop("train", None)
        wanted.pop("train", None)
    return found == wanted


def _usable(path: Path, cfg: Any) -> bool:
    """True if ``path`` exists and its sidecar describes the same model as the run config ``cfg``.

    Everything but the ``train`` section must match (architecture, schedule, kind): how long or
    with which learning rate a checkpoint was trained is provenance, recorded in its sidecar and
    shown by the notebooks, not compatibility. Raises on a corrupt sidecar.
    """
    return path.exists() and _same(_stored_config(path, cfg), cfg, with_train=False)


def _store(model_file: Path, dest: Path) -> None:
    """Copy a run's model file to the profile's store (atomically: a half copy never exists)."""
    atomic_copy(model_file, dest)


def _load_else_train(kind: str, prof: Profile, device: torch.device, retrain: bool, progress: bool,
                     name: str | None = None) -> Any:
    """The profile's model of ``kind``: the stored file if it matches the profile's config and verifies, else
    trained (a latent kind after its VAE), stored and loaded. ``name``: another model of that kind, the profile's
    field and file of that name (:data:`GUIDE`)."""
    name = name or kind
    path, cfg, entry = checkpoint_path(name, prof), getattr(prof, name), KINDS[kind]
    vae = None
    if entry.latent:
        _load_else_train(VAE_KIND, prof, device, False, progress)
        vae = checkpoint_path(VAE_KIND, prof)
    if not retrain:
        try:
            if _usable(path, cfg):
                print(f"[mnistdiff] loading {shown_path(path)}")
                return entry.load(path, vae, device)
        except CheckpointError as err:  # corrupt, half-copied, trained on another VAE…
            print(f"[mnistdiff] not using {shown_path(path)}: {err}")
    print(f"[mnistdiff] no usable {prof.name} {name} checkpoint at {shown_path(path)}: training one now")
    result = entry.train(cfg, vae, out=checkpoint_dir(prof) / "runs", device=device, progress=progress)
    _store(result.checkpoint, path)
    return entry.load(path, vae, device)


def _get(kind: str, profile: str | Profile | None, device: str | torch.device | None, retrain: bool,
         progress: bool, name: str | None = None) -> Any:
    """Load-else-train the profile's ``kind`` (``name``: its model of that name); a diffusion model samples in the
    profile's precision."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    model = _load_else_train(kind, prof, resolve_device(device), retrain, progress, name)
    if isinstance(model, DiffusionModel):
        model.precision = prof.sample_precision
        if model.precision == "auto":
            speeds = model.measure_precision(resolve_device(device))
            where = model.meta["precision_remembered_in"]
            print(f"[mnistdiff] sampling network: {model.precision} ("
                  + (f"as measured on this machine before, remembered in {where}: " if where else "measured here: ")
                  + ", ".join(f"{k} {v:.0f} calls/s" for k, v in speeds.items()) + ")")
    return model


def get_ddpm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's pixel-space DDPM: load ``checkpoints/<profile>/ddpm.safetensors``, else train and store it."""
    return _get(DDPMRunConfig.kind, profile, device, retrain, progress)


def get_ddpm_guide(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
                   retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's autoguide of its DDPM (a narrower UNet trained far less, the profile's ``ddpm_guide``): load
    ``checkpoints/<profile>/ddpm_guide.safetensors``, else train and store it. ``ddpm.sample(n, guide=it)``."""
    return _get(DDPMRunConfig.kind, profile, device, retrain, progress, GUIDE)


def get_vae(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> VAE:
    """The profile's VAE (its run config and provenance in ``vae.meta``): load it, else train and store it."""
    return _get(VAE_KIND, profile, device, retrain, progress)


def get_ldm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's latent diffusion model (with its VAE), loading or training each as needed."""
    return _get(LDMRunConfig.kind, profile, device, retrain, progress)


def get_cldm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's class-conditional latent model (chapter 7) with its VAE, loading or training each as needed."""
    return _get(CLDMRunConfig.kind, profile, device, retrain, progress)


def get_flow(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's pixel-space flow-matching model (chapter 8): load ``checkpoints/<profile>/flow.safetensors``,
    else train and store it."""
    return _get(FlowRunConfig.kind, profile, device, retrain, progress)


def _student_matches(path: Path, prof: Profile, teacher: DiffusionModel) -> bool:
    """Whether the stored student was distilled with the profile's settings from this very teacher."""
    if not path.exists():
        return False
    record = read_model_meta(path).get("distillation") or {}
    return (record.get("config") == to_dict(prof.distill)
            and record.get("teacher_weights_sha256") == teacher.meta.get("weights_sha256"))


def _distil_else_load(prof: Profile, device: torch.device, progress: bool) -> Path:
    """``checkpoints/<profile>/cldm_distilled.safetensors``: kept if it matches (:func:`_student_matches`), else
    distilled now from the profile's cldm (loaded, else trained) and stored."""
    from mnistdiff.data import load_mnist
    from mnistdiff.training.distill import progressive_distillation

    teacher = _load_else_train(CLDMRunConfig.kind, prof, device, False, progress)
    path = checkpoint_dir(prof) / f"{STUDENT}{SUFFIX}"
    if _student_matches(path, prof, teacher):
        return path
    print(f"[mnistdiff] no {prof.name} student distilled from this cldm at {shown_path(path)}: distilling one now")
    train = load_mnist("train").subset(prof.distill.subset, prof.distill.seed)
    return progressive_distillation(teacher, train.images, train.labels, prof.distill, path, device, progress)


def get_cldm_distilled(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
                       progress: bool = True) -> DiffusionModel:
    """The profile's cldm distilled into a few-step student with its guidance folded in (chapter 9): load it, else
    distil it (:func:`~mnistdiff.training.distill.progressive_distillation`, the profile's ``distill`` settings)."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    path = _distil_else_load(prof, resolve_device(device), progress)
    print(f"[mnistdiff] loading {shown_path(path)}")
    student = DiffusionModel.load(path, vae=checkpoint_path(VAE_KIND, prof), device=resolve_device(device))
    student.precision = prof.sample_precision
    if student.precision == "auto":
        student.measure_precision(resolve_device(device))
    return student


def _unfinished_run(runs: Path, kind: str, cfg: Any) -> Path | None:
    """The newest run of ``kind`` under ``runs`` that stopped before its final checkpoint, with the config ``cfg``."""
    for run in sorted(runs.glob(f"*-{kind}"), reverse=True):
        last = run / "checkpoints" / "last.pt"
        if (run / "checkpoints" / f"model{SUFFIX}").exists() or not last.exists():  # finished, or never saved
            continue
        try:
            if _same(_stored_config(last, cfg, resume=True), cfg, with_train=True):
                return run
        except CheckpointError:
            continue
    return None


def _trained(name: str, kind: str, prof: Profile, device: torch.device, data_dir: str | Path | None,
             progress: bool) -> Path:
    """``checkpoints/<profile>/<name>.safetensors``, the profile's model ``name`` of ``kind``: kept if stored with
    exactly the profile's config, else trained (resumed from a stopped run of that config, else afresh) and stored."""
    runs = checkpoint_dir(prof) / "runs"
    cfg, dest, entry = getattr(prof, name), checkpoint_path(name, prof), KINDS[kind]
    if dest.exists() and _same(_stored_config(dest, cfg), cfg, with_train=True):
        print(f"[mnistdiff] {shown_path(dest)} is trained with the {prof.name} settings: skipping")
        return dest
    resume = _unfinished_run(runs, kind, cfg)
    if resume is not None:
        print(f"[mnistdiff] resuming {shown_path(resume)}")
    print(f"[mnistdiff] training the {prof.name} {name}")
    vae = checkpoint_path(VAE_KIND, prof) if entry.latent else None
    result = entry.train(cfg, vae, out=runs, device=device, data_dir=data_dir, resume=resume, progress=progress)
    _store(result.checkpoint, dest)
    print(f"[mnistdiff] stored {shown_path(dest)} ({result.seconds / 60:.1f} min of training)")
    return dest


def train_all(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
              data_dir: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """Train the profile's models in the order of :data:`~mnistdiff.training.kinds.KINDS` (the DDPM's autoguide,
    :data:`GUIDE`, after the DDPM) into ``checkpoints/<profile>/``, then distil the cldm's student; resumable.

    A model whose stored file already has exactly the profile's config (training settings included) is
    skipped; a run that was stopped (Ctrl-C, SIGTERM, a session's end) is resumed from its ``last.pt`` in
    ``checkpoints/<profile>/runs/``; anything else starts afresh. So running the same command again finishes
    the job. Returns training seconds per model (as recorded in the model files).
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    models = [(kind, kind) for kind in KINDS]
    models.insert(models.index((DDPMRunConfig.kind, DDPMRunConfig.kind)) + 1, (GUIDE, DDPMRunConfig.kind))
    seconds: dict[str, float] = {}
    for name, kind in models:
        dest = _trained(name, kind, prof, resolve_device(device), data_dir, progress)
        seconds[name] = float(read_model_meta(dest).get("seconds", 0.0))
    student = _distil_else_load(prof, resolve_device(device), progress)  # chapter 9's student, after its teacher
    seconds[STUDENT] = float(read_model_meta(student).get("seconds", 0.0))
    print("[mnistdiff] training minutes: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())
          + f"; total {sum(seconds.values()) / 60:.1f}")
    return seconds
