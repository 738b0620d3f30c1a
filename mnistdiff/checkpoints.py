"""Checkpoints that can't be lost and can't be misread.

A checkpoint is two files: ``NAME.pt`` (tensors only: state dicts and RNG states, loaded with
``torch.load(weights_only=True)`` so a file can never run code) and ``NAME.json``, its sidecar:
format version, model kind, config, the ``.pt``'s SHA-256, git commit, device, training time and
metrics. Both are written atomically (temporary file, fsync, rename): an interrupted write, or a
full disk, leaves the previous checkpoint intact.

Loading checks, in order: both files exist, the format version, the kind (a VAE where a UNet is
expected is refused), the config (if the caller expects one), the SHA-256, then that the tensors
fit the model exactly. Each failure raises :class:`CheckpointError` saying what was expected.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "read_sidecar",
    "load_checkpoint",
    "sidecar_path",
    "git_commit",
    "sha256_file",
]

FORMAT_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parent


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of the wrong kind or config, or that could not be written."""


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, then ``os.replace``.

    On any error (a full disk included) the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise CheckpointError(
                f"ran out of disk space while writing {path}; the previous version of {path.name} (if any) is "
                "intact. Free some space and run again (with --resume to continue training)."
            ) from err
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, Any],
    *,
    kind: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``tensors`` (state dicts, tensors, numbers) to ``path`` and write its JSON sidecar.

    ``kind`` names the model ("ddpm", "vae", "ldm", "classifier", …) and ``config`` its config dict;
    ``extra`` adds fields to the sidecar (device, seconds, metrics, epoch …). Returns ``path``.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of checkpoint ``path``, with a clear error if it is missing or unreadable."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (pass the .pt file a training run wrote)")
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name}: it was not written by mnistdiff, or is incomplete")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"sidecar {side} is unreadable or not JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version') if isinstance(meta, dict) else '?'}, "
            f"expected {FORMAT_VERSION}: retrain it with this version of mnistdiff"
        )
    return meta


def _diff_config(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(expected) | set(found)):
        e, f = expected.get(key), found.get(key)
        if isinstance(e, dict) and isinstance(f, dict):
            diffs += _diff_config(e, f, f"{prefix}{key}.")
        elif (list(e) if isinstance(e, tuple) else e) != (list(f) if isinstance(f, tuple) else f):
            diffs.append(f"{prefix}{key}: expected {e!r}, checkpoint has {f!r}")
    return diffs


def load_checkpoint(
    path: str | Path,
    *,
    kind: str | tuple[str, ...] | None = None,
    expect_config: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load a checkpoint: returns ``(tensors, sidecar)``.

    ``kind``: the model kind(s) accepted; ``expect_config``: a config dict the checkpoint must match
    (only the keys given are compared). Raises :class:`CheckpointError` on any mismatch.
    """
    path = Path(path)
    meta = read_sidecar(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and meta.get("kind") not in kinds:
        raise CheckpointError(
            f"checkpoint {path} holds a {meta.get('kind')!r} model, expected {' or '.join(map(repr, kinds))}: "
            "check which file you passed"
        )
    if expect_config is not None:
        found = meta.get("config") or {}
        diffs = _diff_config(expect_config, {k: found.get(k) for k in expect_config})
        if diffs:
            raise CheckpointError(f"checkpoint {path} has an incompatible config: " + "; ".join(diffs))
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated: its SHA-256 does not match the sidecar "
            f"({size} bytes on disk, {meta.get('bytes')} expected). Use another checkpoint or retrain."
        )
    try:
        tensors = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {path} could not be read safely ({err})") from err
    return tensors, meta
