"""Load, else train: how a notebook gets a trained model by name and profile.

Trained checkpoints live in ``checkpoints/<profile>/{ddpm,vae,ldm}.pt`` (with JSON sidecars) at the
repository root, or under ``$MNISTDIFF_CHECKPOINT_DIR/<profile>/``. The full profile's are committed;
the smoke profile's are written by whichever notebook first needs them. ``get_ddpm`` & co. return
the verified checkpoint when it exists and matches the profile's config, and otherwise train it with
the same :mod:`~mnistdiff.pipelines` functions the command line uses, then store it there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .checkpoints import CheckpointError, read_sidecar
from .config import to_dict
from .pipelines import DiffusionModel, load_ddpm, load_ldm, load_vae, train_ddpm, train_ldm, train_vae
from .profiles import Profile, default_device, get_profile
from .vae import VAE

__all__ = ["checkpoint_dir", "checkpoint_path", "get_ddpm", "get_vae", "get_ldm", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def checkpoint_dir(profile: str | Profile | None = None) -> Path:
    """``$MNISTDIFF_CHECKPOINT_DIR/<profile>`` or ``<repo>/checkpoints/<profile>``."""
    name = profile.name if isinstance(profile, Profile) else get_profile(profile).name
    root = Path(os.environ.get("MNISTDIFF_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))
    return root / name


def checkpoint_path(kind: str, profile: str | Profile | None = None) -> Path:
    return checkpoint_dir(profile) / f"{kind}.pt"


def _usable(path: Path, expected: dict) -> bool:
    """True if ``path`` exists with a sidecar whose config equals ``expected``; raises on a corrupt sidecar."""
    if not path.exists():
        return False
    return read_sidecar(path).get("config") == json.loads(json.dumps(expected))


def _store(result_ckpt: Path, dest: Path) -> None:
    """Copy a run's final checkpoint and sidecar to the profile's store (sidecar last: a half copy never verifies)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".pt.tmp")
    shutil.copyfile(result_ckpt, tmp)
    os.replace(tmp, dest)
    tmp_json = dest.with_suffix(".json.tmp")
    shutil.copyfile(result_ckpt.with_suffix(".json"), tmp_json)
    os.replace(tmp_json, dest.with_suffix(".json"))


def _prepare(kind: str, profile: Profile, expected: dict, retrain: bool) -> tuple[Path, bool]:
    path = checkpoint_path(kind, profile)
    try:
        ok = not retrain and _usable(path, expected)
    except CheckpointError as err:
        print(f"[mnistdiff] ignoring unusable {path}: {err}")
        ok = False
    return path, ok


def get_ddpm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
             retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's pixel-space DDPM: load ``checkpoints/<profile>/ddpm.pt``, else train and store it."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    device = device or default_device()
    path, ok = _prepare("ddpm", prof, to_dict(prof.ddpm), retrain)
    if not ok:
        print(f"[mnistdiff] no {prof.name} DDPM checkpoint at {path}: training one now")
        result = train_ddpm(prof.ddpm, out=checkpoint_dir(prof) / "runs", device=device, progress=progress)
        _store(result.checkpoint, path)
    else:
        print(f"[mnistdiff] loading {path}")
    return load_ddpm(path, device)


def get_vae(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> tuple[VAE, dict]:
    """The profile's VAE and its sidecar: load ``checkpoints/<profile>/vae.pt``, else train and store it."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    device = device or default_device()
    path, ok = _prepare("vae", prof, to_dict(prof.vae), retrain)
    if not ok:
        print(f"[mnistdiff] no {prof.name} VAE checkpoint at {path}: training one now")
        result = train_vae(prof.vae, out=checkpoint_dir(prof) / "runs", device=device, progress=progress)
        _store(result.checkpoint, path)
    else:
        print(f"[mnistdiff] loading {path}")
    vae, _, meta = load_vae(path, device)
    return vae, meta


def get_ldm(profile: str | Profile | None = None, *, device: str | torch.device | None = None,
            retrain: bool = False, progress: bool = True) -> DiffusionModel:
    """The profile's latent diffusion model (with its VAE), loading or training each as needed."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    device = device or default_device()
    get_vae(prof, device=device, progress=progress)
    vae_path = checkpoint_path("vae", prof)
    path, ok = _prepare("ldm", prof, to_dict(prof.ldm), retrain)
    if ok:
        try:
            return load_ldm(vae_path, path, device)
        except CheckpointError as err:  # e.g. trained on another VAE
            print(f"[mnistdiff] retraining {path}: {err}")
    print(f"[mnistdiff] no usable {prof.name} latent-diffusion checkpoint at {path}: training one now")
    result = train_ldm(prof.ldm, vae_path, out=checkpoint_dir(prof) / "runs", device=device, progress=progress)
    _store(result.checkpoint, path)
    return load_ldm(vae_path, path, device)
