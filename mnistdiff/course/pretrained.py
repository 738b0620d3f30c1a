"""Load, else train: how a notebook gets a trained model by name and profile.

Trained checkpoints live in ``checkpoints/<profile>/{ddpm,vae,ldm,cldm}.pt`` (with JSON sidecars) at the
repository root, or under ``$MNISTDIFF_CHECKPOINT_DIR/<profile>/``. The full profile's are committed;
the smoke profile's are written by whichever notebook first needs them. ``get_ddpm`` & co. return
the verified checkpoint when it exists and matches the profile's config, and otherwise train it with
the same :mod:`~mnistdiff.training.pipelines` functions the command line uses, then store it there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mnistdiff.config import ConfigError, normalized, to_dict
from mnistdiff.course.profiles import Profile, get_profile
from mnistdiff.devices import default_device
from mnistdiff.files import atomic_copy, repo_root
from mnistdiff.training.checkpoints import CheckpointError, read_sidecar
from mnistdiff.training.pipelines import (
    DiffusionModel,
    load_cldm,
    load_ddpm,
    load_ldm,
    load_vae,
    train_cldm,
    train_ddpm,
    train_ldm,
    train_vae,
)
from mnistdiff.vae import VAE

__all__ = ["checkpoint_dir", "checkpoint_path", "get_ddpm", "get_vae", "get_ldm", "get_cldm", "train_all", "REPO_ROOT"]

#: What ``train all`` trains, in order (the latent models after the VAE they encode with).
KINDS = ("ddpm", "vae", "ldm", "cldm")
#: The train and load functions of the two latent models (both take the VAE checkpoint first).
_LATENT = {"ldm": (train_ldm, load_ldm), "cldm": (train_cldm, load_cldm)}

REPO_ROOT = repo_root()


def checkpoint_dir(profile: str | Profile | None = None) -> Path:
    """``$MNISTDIFF_CHECKPOINT_DIR/<profile>`` or ``<repo>/checkpoints/<profile>``."""
    name = profile.name if isinstance(profile, Profile) else get_profile(profile).name
    root = Path(os.environ.get("MNISTDIFF_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    return root / name


def checkpoint_path(kind: str, profile: str | Profile | None = None) -> Path:
    return checkpoint_dir(profile) / f"{kind}.pt"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (what notebooks print, and the book shows)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _stored_config(path: Path, cfg: Any) -> dict | None:
    """The config in the sidecar of ``path``, with the settings added since it was written at their defaults
    (:func:`~mnistdiff.config.normalized`), so that a new option never makes old checkpoints look foreign;
    ``None`` if it is not a config of ``cfg``'s kind. Raises on a corrupt sidecar."""
    try:
        return normalized(type(cfg), dict(read_sidecar(path).get("config") or {}))
    except (ConfigError, TypeError):
        return None


def _same(found: dict | None, cfg: Any, *, with_train: bool) -> bool:
    """Whether a stored config (:func:`_stored_config`) equals ``cfg`` (the ``train`` section only ``with_train``)."""
    if found is None:
        return False
    wanted, found = to_dict(cfg), dict(found)  # both written by to_dict: tuples on both sides
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


def _store(result_ckpt: Path, dest: Path) -> None:
    """Copy a run's final checkpoint and sidecar to the profile's store (sidecar last: a half copy never verifies)."""
    atomic_copy(result_ckpt, dest)
    atomic_copy(result_ckpt.with_suffix(".json"), dest.with_suffix(".json"))


def _load_else_train(kind: str, prof: Profile, cfg: Any, retrain: bool, train, load):
    """Return ``load(path)`` for the stored checkpoint if it matches the run config ``cfg`` and verifies; else
    train, store, load."""
    path = checkpoint_path(kind, prof)
    if not retrain:
        try:
            if _usable(path, cfg):
                print(f"[mnistdiff] loading {_shown(path)}")
                return load(path)
        except CheckpointError as err:  # corrupt, half-copied, trained on another VAE…
            print(f"[mnistdiff] not using {_shown(path)}: {err}")
    print(f"[mnistdiff] no usable {prof.name} {kind} checkpoint at {_shown(path)}: training one now")
    result = train(out=checkpoint_dir(prof) / "runs")
    _store(result.checkpoint, path)
    return load(path)


def _with_sampling_mode(model: DiffusionModel, prof: Profile, device) -> DiffusionModel:
    """Set ``model.fast`` from the profile: ``auto`` measures fp32 against bf16 autocast here and keeps the faster."""
    if prof.sample_fast == "auto":
        from mnistdiff.sampling import choose_fast

        model.fast, speeds = choose_fast(model.unet, model.sample_shape, device)
        print(f"[mnistdiff] sampling network: {'bf16 autocast' if model.fast == 'amp' else 'float32'} "
              f"(measured here: " + ", ".join(f"{k} {v:.0f} calls/s" for k, v in speeds.items()) + ")")
    else:
        model.fast = prof.sample_fast
    return model


def _resolve(profile: str | Profile | None, device: str | torch.device | None) -> tuple[Profile, str | torch.device]:
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    return prof, device or default_device()


def get_ddpm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's pixel-space DDPM: load ``checkpoints/<profile>/ddpm.pt``, else train and store it."""
    prof, device = _resolve(profile, device)
    model = _load_else_train(
        "ddpm", prof, prof.ddpm, retrain,
        lambda out: train_ddpm(prof.ddpm, out=out, device=device, progress=progress),
        lambda path: load_ddpm(path, device),
    )
    return _with_sampling_mode(model, prof, device)


def get_vae(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> tuple[VAE, dict]:
    """The profile's VAE and its sidecar: load ``checkpoints/<profile>/vae.pt``, else train and store it."""
    prof, device = _resolve(profile, device)
    vae, _, meta = _load_else_train(
        "vae", prof, prof.vae, retrain,
        lambda out: train_vae(prof.vae, out=out, device=device, progress=progress),
        lambda path: load_vae(path, device),
    )
    return vae, meta


def get_ldm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's latent diffusion model (with its VAE), loading or training each as needed."""
    return _get_latent("ldm", profile, device, retrain, progress)


def get_cldm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's class-conditional latent model (chapter 7) with its VAE, loading or training each as needed."""
    return _get_latent("cldm", profile, device, retrain, progress)


def _get_latent(kind: str, profile: str | Profile | None, device: str | torch.device | None, retrain: bool,
                progress: bool) -> DiffusionModel:
    """``get_ldm`` / ``get_cldm``: the profile's VAE first (loaded or trained), then the latent model of ``kind``."""
    prof, device = _resolve(profile, device)
    get_vae(prof, device=device, progress=progress)
    vae_path = checkpoint_path("vae", prof)
    cfg = getattr(prof, kind)
    train, load = _LATENT[kind]
    model = _load_else_train(
        kind, prof, cfg, retrain,
        lambda out: train(cfg, vae_path, out=out, device=device, progress=progress),
        lambda path: load(vae_path, path, device),
    )
    return _with_sampling_mode(model, prof, device)


def _unfinished_run(runs: Path, kind: str, cfg: Any) -> Path | None:
    """The newest run of ``kind`` under ``runs`` that stopped before its final checkpoint, with the config ``cfg``."""
    for run in sorted(runs.glob(f"*-{kind}"), reverse=True):
        last = run / "checkpoints" / "last.pt"
        if (run / "checkpoints" / "model.pt").exists() or not last.exists():
            continue
        try:
            if _same(_stored_config(last, cfg), cfg, with_train=True):
                return run
        except CheckpointError:
            continue
    return None


def train_all(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
              data_dir: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """Train the profile's DDPM, VAE, LDM and class-conditional LDM in that order into ``checkpoints/<profile>/``;
    resumable.

    A model whose stored checkpoint already has exactly the profile's config (training settings
    included) is skipped; a run that was stopped (Ctrl-C, SIGTERM, a session's end) is resumed from
    its ``last.pt`` in ``checkpoints/<profile>/runs/``; anything else starts afresh. So running the same
    command again finishes the job. Returns training seconds per model (as recorded in the sidecars).
    """
    prof, device = _resolve(profile, device)
    runs = checkpoint_dir(prof) / "runs"
    seconds: dict[str, float] = {}
    for kind in KINDS:
        cfg = getattr(prof, kind)
        dest = checkpoint_path(kind, prof)
        if dest.exists() and _same(_stored_config(dest, cfg), cfg, with_train=True):
            print(f"[mnistdiff] {_shown(dest)} is trained with the {prof.name} settings: skipping")
        else:
            resume = _unfinished_run(runs, kind, cfg)
            if resume is not None:
                print(f"[mnistdiff] resuming {_shown(resume)}")
            print(f"[mnistdiff] training the {prof.name} {kind}")
            kw = dict(out=runs, device=device, data_dir=data_dir, resume=resume, progress=progress)
            if kind == "ddpm":
                result = train_ddpm(cfg, **kw)
            elif kind == "vae":
                result = train_vae(cfg, **kw)
            else:
                result = _LATENT[kind][0](cfg, checkpoint_path("vae", prof), **kw)
            _store(result.checkpoint, dest)
            print(f"[mnistdiff] stored {_shown(dest)} ({result.seconds / 60:.1f} min of training)")
        seconds[kind] = float(read_sidecar(dest).get("seconds", 0.0))
    print("[mnistdiff] training minutes: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())
          + f"; total {sum(seconds.values()) / 60:.1f}")
    return seconds
