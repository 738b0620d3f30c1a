"""Convert a trained model from the old ``.pt`` + ``.json`` pair to one model file (``NAME.safetensors``).

From the command line::

    python -m mnistdiff convert OLD.pt [--vae VAE] [--out NEW]

``--vae`` is required for a latent model (``ldm``, ``cldm``): the VAE it was trained on, as its old
``.pt`` pair or as its converted ``.safetensors`` file. The old pair is verified (SHA-256, weights
only) and left in place; see :mod:`mnistdiff.modelfile` for the new format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mnistdiff.config import LATENT_KINDS, VAE_KIND
from mnistdiff.modelfile import SUFFIX, CheckpointError, git_commit, load_model_file, save_model_file, weights_sha256
from mnistdiff.training.checkpoints import load_checkpoint, sha256_file

__all__ = ["convert_checkpoint"]

#: sidecar fields that are not carried over as provenance: the old file's own bookkeeping, and what
#: the new file records in its own way (kind, config, the latent numbers, the VAE reference)
_NOT_PROVENANCE = {"format_version", "sha256", "bytes", "kind", "config", "latent_scale", "latent_clip", "vae_sha256"}
_LATENT_NUMBERS = ("latent_scale", "latent_clip")


def _exact_float(old: Path, name: str, value: Any) -> float:
    """``value`` (a Python float or a 0-d tensor) as a float that survives JSON unchanged."""
    x = float(value.item() if isinstance(value, torch.Tensor) else value)
    if not math.isfinite(x) or float(json.loads(json.dumps(x))) != x:
        raise CheckpointError(f"checkpoint {old} stores {name} = {x!r}, which is not a finite number: retrain it")
    return x


def _vae_weights_sha256(vae: Path, side: dict[str, Any], old: Path) -> str:
    """The ``weights_sha256`` of the VAE at ``vae`` (old pair or model file), checked against the VAE the
    latent model at ``old`` was trained on when its sidecar records that (``vae_sha256``: the old VAE file's)."""
    trained_on = side.get("vae_sha256")
    if vae.suffix == SUFFIX:
        _, meta = load_model_file(vae, kind=VAE_KIND)
        known = meta.get("converted_from_sha256")
        if trained_on and known != trained_on:
            raise CheckpointError(
                f"{old} was trained on a different VAE than {vae} ({vae.name} was not converted from the VAE file "
                f"with SHA-256 {trained_on}): pass the VAE it was trained with (its old .pt or the {SUFFIX} "
                "converted from it)"
            )
        return str(meta["weights_sha256"])
    if trained_on and sha256_file(vae) != trained_on:
        raise CheckpointError(
            f"{old} was trained on a different VAE than {vae} (SHA-256 differs): pass the VAE checkpoint it was "
            "trained with"
        )
    tensors, _ = load_checkpoint(vae, kind=VAE_KIND)
    return weights_sha256(tensors["model"])


def _latent_meta(old: Path, tensors: dict[str, Any], side: dict[str, Any], vae: Path) -> dict[str, Any]:
    """``latent_scale``, ``latent_clip`` (when stored) and ``vae_weights_sha256`` of a latent model."""
    if "latent_scale" not in tensors:
        raise CheckpointError(f"checkpoint {old} is a latent model without its latent_scale: retrain it")
    meta: dict[str, Any] = {name: _exact_float(old, name, tensors[name]) for name in _LATENT_NUMBERS if name in tensors}
    meta["vae_weights_sha256"] = _vae_weights_sha256(vae, side, old)
    return meta


def _model_state(old: Path, tensors: dict[str, Any], kind: str) -> dict[str, torch.Tensor]:
    """The state dict of an old model checkpoint, refusing anything the new file could not carry."""
    state = tensors.get("model")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"checkpoint {old} holds no model state dict (tensors['model']): it is not a "
                              "trained model; pass the model.pt a training run wrote")
    unknown = sorted(set(tensors) - {"model", *(_LATENT_NUMBERS if kind in LATENT_KINDS else ())})
    if unknown:
        raise CheckpointError(f"checkpoint {old} holds {unknown} besides the weights, which a model file "
                              "cannot carry: it is not a trained model of a known kind")
    return dict(state)


def convert_checkpoint(old: str | Path, out: str | Path | None = None, *, vae: str | Path | None = None) -> Path:
    """Convert the old verified pair ``old`` (``NAME.pt`` + ``NAME.json``) to a model file; returns its path.

    ``out`` defaults to ``old`` with the suffix ``.safetensors``. The file holds ``tensors["model"]``
    unchanged (same keys, dtypes and bits) and as metadata: ``kind``, ``config`` (the sidecar's),
    the sidecar's provenance (``seconds``, ``metrics``, ``history``, ``git_commit``, ``torch_version``,
    device fields …), ``converted_from`` (the old file's name), ``converted_from_sha256`` (its SHA-256),
    ``converted_at_commit``, ``converted_with_torch``; for ``ldm``/``cldm`` also ``latent_scale``, ``latent_clip`` and
    ``vae_weights_sha256``. A latent model requires ``vae`` (ValueError otherwise); a VAE other than
    the one it was trained on is refused with :class:`CheckpointError`. The command line:
    ``python -m mnistdiff convert OLD.pt [--vae VAE] [--out NEW]``.
    """
    old = Path(old)
    out = Path(out) if out is not None else old.with_suffix(SUFFIX)
    if out.resolve() == old.resolve():
        raise ValueError(f"--out {out} would overwrite the checkpoint being converted: choose another path")
    tensors, side = load_checkpoint(old)
    kind = str(side.get("kind"))
    if kind.endswith("-resume"):
        raise CheckpointError(f"{old} is a resumable training state ({kind}), which stays in the .pt format: "
                              "convert the run's model.pt instead")
    if kind in LATENT_KINDS and vae is None:
        raise ValueError(f"{old} is a {kind!r} model: pass the VAE it was trained on with --vae VAE_PATH")
    if kind not in LATENT_KINDS and vae is not None:
        raise ValueError(f"--vae is only for latent models (ldm, cldm); {old} holds a {kind!r} model")
    state = _model_state(old, tensors, kind)
    meta: dict[str, Any] = {key: value for key, value in side.items() if key not in _NOT_PROVENANCE}
    meta.update(kind=kind, config=side.get("config"), converted_from=old.name, converted_from_sha256=side["sha256"],
                converted_at_commit=git_commit(), converted_with_torch=torch.__version__)
    if vae is not None:
        meta.update(_latent_meta(old, tensors, side, Path(vae)))
    return save_model_file(out, state, meta)
