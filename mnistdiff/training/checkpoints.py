"""Checkpoints that can't be lost and can't be misread.

A checkpoint is two files: ``NAME.pt`` (tensors only: state dicts and RNG states, loaded with
``torch.load(weights_only=True)`` so a file can never run code) and ``NAME.json``, its sidecar:
format version, model kind, config, the ``.pt``'s SHA-256, git commit, device, training time and
metrics.

Writing is atomic: both files are first written in full to temporary files in the same folder
(and fsynced), and only then renamed over the old ones. An interrupted write, or a full disk,
therefore leaves the previous checkpoint intact and no temporary file behind. The two renames
are not one atomic step; with ``keep_previous=True`` (what training does for ``last.pt``) the
previous verified pair is kept as ``NAME.prev.pt``/``NAME.prev.json`` (hard links, no copy) and
``load_checkpoint(..., fallback=True)`` falls back to it if a crash between the renames left the
newest pair inconsistent.

Loading checks, in order: both files exist, the format version, the kind (a VAE where a UNet is
expected is refused), the config (if the caller expects one), the SHA-256, then that the file
holds only tensors. Each failure raises :class:`CheckpointError` saying what was expected and
what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mnistdiff.files import ensure_folder, fsync_dir, unlink_quiet, write_error, write_temp
from mnistdiff.modelfile import CheckpointError, CheckpointIntegrityError, git_commit

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointIntegrityError",
    "save_checkpoint",
    "read_sidecar",
    "load_checkpoint",
    "sidecar_path",
    "previous_path",
    "git_commit",
    "sha256_file",
    "config_diffs",
]

FORMAT_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(..., keep_previous=True)`` keeps the pair it replaced: ``NAME.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# SHA-256 of the pairs this process wrote, so that keep_previous need not re-hash its own files.
_WRITTEN: dict[str, tuple[str, int, int]] = {}


def _pair_consistent(path: Path) -> bool:
    """True if ``path`` and its sidecar exist and agree (the sidecar's SHA-256 is the file's)."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or not meta.get("sha256") or meta.get("bytes") not in (None, st.st_size):
        return False
    cached = _WRITTEN.get(str(path.resolve()))
    if cached is not None and cached == (meta["sha256"], st.st_size, st.st_mtime_ns):
        return True
    try:
        return sha256_file(path) == meta["sha256"]
    except OSError:
        return False


def _link_or_copy(src: Path, dest: Path) -> None:
    """Make ``dest`` a hard link to ``src`` (a copy where links are not supported), atomically."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    unlink_quiet(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        unlink_quiet(tmp)
        raise


def _keep_previous(path: Path) -> None:
    """Keep the current (verified) pair of ``path`` as ``NAME.prev.pt``/``.json``; best effort."""
    if not _pair_consistent(path):
        return  # never replace a good previous pair with a broken current one
    prev = previous_path(path)
    try:
        _link_or_copy(path, prev)
        _link_or_copy(sidecar_path(path), sidecar_path(prev))
    except OSError:
        pass  # the current pair is still intact; only the safety copy is missing


def _write_pair(path: Path, data: bytes, sidecar: bytes, keep_previous: bool) -> None:
    """Write both files to temporaries, then rename them into place (the ``.pt`` first, its sidecar last)."""
    ensure_folder(path, CheckpointError)
    tmp_pt = tmp_json = None
    try:
        tmp_pt = write_temp(path, data)
        tmp_json = write_temp(sidecar_path(path), sidecar)
        if keep_previous:
            _keep_previous(path)
        # From here on only renames: the new .pt, then its sidecar (a crash in between is what
        # keep_previous/fallback are for).
        os.replace(tmp_pt, path)
        tmp_pt = None
        os.replace(tmp_json, sidecar_path(path))
        tmp_json = None
    except BaseException as err:
        unlink_quiet(tmp_pt)
        unlink_quiet(tmp_json)
        if isinstance(err, OSError):
            raise write_error(path, err, CheckpointError) from err
        raise
    fsync_dir(path.parent)


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, Any],
    *,
    kind: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep_previous: bool = False,
) -> Path:
    """Save ``tensors`` (state dicts, tensors, numbers) to ``path`` and write its JSON sidecar.

    ``kind`` names the model ("ddpm", "vae", "ldm", "classifier", …) and ``config`` its config dict;
    ``extra`` adds fields to the sidecar (device, seconds, metrics, epoch …). Both files are written
    to temporary files first and renamed only when both are complete: a failure (a full disk
    included) raises :class:`CheckpointError` and leaves the previous checkpoint intact.
    ``keep_previous`` keeps the replaced pair as ``NAME.prev.pt`` (see :func:`load_checkpoint`'s
    ``fallback``). Returns ``path``.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "sha256": digest,
        "bytes": len(data),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        **(extra or {}),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    _write_pair(path, data, text.encode("utf-8"), keep_previous)
    try:
        st = path.stat()
        _WRITTEN[str(path.resolve())] = (digest, st.st_size, st.st_mtime_ns)
    except OSError:
        pass
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of checkpoint ``path``, with a clear error if it is missing or unreadable."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointIntegrityError(
            f"checkpoint {path} does not exist or is not a file: pass the .pt file a training run wrote "
            "(<experiment>/checkpoints/model.pt)"
        )
    if not side.is_file():
        raise CheckpointIntegrityError(
            f"checkpoint {path} has no sidecar {side.name} next to it: it was not written by mnistdiff, or the "
            f"write was interrupted. Copy the .pt together with its .json, or retrain."
        )
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointIntegrityError(
            f"sidecar {side} is unreadable or not JSON ({err}): restore it with its .pt, or retrain"
        ) from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version') if isinstance(meta, dict) else '?'}, "
            f"expected {FORMAT_VERSION}: retrain it with this version of mnistdiff"
        )
    return meta


def config_diffs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted.key, a's value, b's value)`` for every setting where two nested config dicts differ
    (tuples = lists)."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            diffs += config_diffs(x, y, f"{prefix}{key}.")
        elif (list(x) if isinstance(x, tuple) else x) != (list(y) if isinstance(y, tuple) else y):
            diffs.append((f"{prefix}{key}", x, y))
    return diffs


def _load_one(
    path: Path, kinds: tuple[str, ...] | None, expect_config: dict[str, Any] | None, map_location: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = read_sidecar(path)
    if kinds is not None and meta.get("kind") not in kinds:
        raise CheckpointError(
            f"checkpoint {path} holds a {meta.get('kind')!r} model, expected {' or '.join(map(repr, kinds))}: "
            "check which file you passed"
        )
    if expect_config is not None:
        found = meta.get("config") or {}
        diffs = [f"{k}: expected {e!r}, checkpoint has {f!r}"
                 for k, e, f in config_diffs(expect_config, {k: found.get(k) for k in expect_config})]
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} has an incompatible config: " + "; ".join(diffs)
                + ". Use the settings it was trained with, or another checkpoint."
            )
    try:
        digest = sha256_file(path)
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointIntegrityError(
            f"checkpoint {path} cannot be read ({err.strerror or err}): check its permissions"
        ) from err
    if digest != meta.get("sha256"):
        what = "truncated" if isinstance(meta.get("bytes"), int) and size < meta["bytes"] else "corrupt"
        raise CheckpointIntegrityError(
            f"checkpoint {path} is {what}: its SHA-256 does not match the one in its sidecar "
            f"({size} bytes on disk, {meta.get('bytes')} expected). Use another checkpoint or retrain."
        )
    try:
        tensors = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(
            f"checkpoint {path} was refused: torch.load(weights_only=True) found something other than tensors "
            f"and plain values in it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "A checkpoint may only hold weights; use one written by mnistdiff."
        ) from err
    if not isinstance(tensors, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(tensors).__name__}, expected a dict of state dicts")
    return tensors, meta


def load_checkpoint(
    path: str | Path,
    *,
    kind: str | tuple[str, ...] | None = None,
    expect_config: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    fallback: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load a checkpoint: returns ``(tensors, sidecar)``.

    ``kind``: the model kind(s) accepted; ``expect_config``: a config dict the checkpoint must match
    (only the keys given are compared). Raises :class:`CheckpointError` on any mismatch.
    ``fallback``: if ``path`` fails its integrity checks (missing or unreadable sidecar, SHA-256
    mismatch) use ``NAME.prev.pt`` instead when that one verifies; the sidecar returned then has
    ``"loaded_from"`` and ``"fallback_reason"`` set.
    """
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else (tuple(kind) if kind is not None else None)
    try:
        return _load_one(path, kinds, expect_config, map_location)
    except CheckpointIntegrityError as err:
        prev = previous_path(path)
        if not fallback or not prev.is_file():
            raise
        try:
            tensors, meta = _load_one(prev, kinds, expect_config, map_location)
        except CheckpointError as err2:
            raise CheckpointIntegrityError(f"{err} The previous checkpoint {prev} is unusable too: {err2}") from err
        return tensors, {**meta, "loaded_from": str(prev), "fallback_reason": str(err)}
