"""Model files: one self-describing, code-free file per trained model (``NAME.safetensors``).

A trained model is a single `safetensors <https://huggingface.co/docs/safetensors>`_ file: the
model's state dict (tensor name → tensor, stored contiguous, little-endian, unchanged dtypes) and a
header that describes it. Loading never unpickles anything, so a model file cannot run code.

The header's metadata (safetensors allows str → str) holds four entries:

=====================  ========================================================================
``format``             ``"mnistdiff"``: the file was written by :func:`save_model_file`
``format_version``     ``"2"`` (version 1 was the ``.pt`` + ``.json`` pair, see below)
``weights_sha256``     :func:`weights_sha256` of the tensors, checked on every load
``mnistdiff``          everything else, one JSON object (``json.dumps(..., sort_keys=True)``):
                       ``kind`` ("ddpm", "vae", "ldm", "cldm", …), ``config`` (the run config
                       dict), ``format_version``, ``weights_sha256``, ``torch_version``,
                       ``git_commit`` and whatever the writer adds (``seconds``, ``metrics``,
                       ``history``; ``latent_scale``, ``latent_clip`` and ``vae_weights_sha256``
                       for a latent model)
=====================  ========================================================================

``weights_sha256`` identifies the weights, not the file: it is computed from the tensors' names,
dtypes, shapes and bytes (see :func:`weights_sha256`), so the same weights give the same hash in
any file layout. A latent-diffusion model records its VAE's ``weights_sha256``, and the reference
stays valid when the VAE's file is converted or rewritten.

:func:`read_model_meta` reads the header only; :func:`load_model_file` also loads the tensors and
checks them against the header's hash. Every refusal raises :class:`CheckpointError` (or its
subclass :class:`CheckpointIntegrityError` for a missing, truncated or corrupt file) with a message
that says what to do. Writing is atomic (:func:`mnistdiff.files.atomic_write_bytes`): a failure,
a full disk included, leaves the previous file intact.

The old format (format version 1: ``NAME.pt``, a ``torch.save`` zip, plus its ``NAME.json`` sidecar)
stays the format of the resumable training state ``last.pt`` (:mod:`mnistdiff.training.checkpoints`).
An old model pair is converted once with ``python -m mnistdiff convert NAME.pt`` (latent models:
``--vae VAE_PATH``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mnistdiff.config import LATENT_KINDS, VAE_KIND, VAERunConfig, from_dict, to_dict
from mnistdiff.files import PACKAGE_DIR, FileWriteError, atomic_write_bytes
from mnistdiff.vae import VAE

__all__ = [
    "FORMAT_VERSION",
    "SUFFIX",
    "CheckpointError",
    "CheckpointIntegrityError",
    "weights_sha256",
    "save_model_file",
    "read_model_meta",
    "load_model_file",
    "git_commit",
    "load_vae",
    "save_vae",
    "load_weights",
    "matching_vae",
]

FORMAT_VERSION = 2
SUFFIX = ".safetensors"
#: the largest header safetensors accepts (bytes); a bigger length field means "not a safetensors file"
_MAX_HEADER = 100_000_000


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of the wrong kind or config, or that could not be written."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint whose files are missing, unreadable or do not match each other (truncated, half-written)."""


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout (looked up once per process)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 of the weights that does not depend on how (or whether) they are stored in a file.

    For each key in sorted order, the hash is fed two things:

    1. ``json.dumps([key, dtype, shape], ensure_ascii=False)`` encoded as UTF-8, then ``b"\\n"``, where
       ``dtype`` is the torch dtype's name without ``torch.`` (``"float32"``, ``"bfloat16"``, ``"int64"``)
       and ``shape`` the list of sizes (``[]`` for a 0-d tensor);
    2. the tensor's raw bytes: its elements in row-major (C) order, on the CPU, in the machine's byte
       order (little-endian on every platform PyTorch supports).

    The JSON line cannot contain a newline and the number of raw bytes follows from dtype and shape,
    so different state dicts cannot produce the same stream. Strides, devices, the key order of the
    mapping and the file format do not enter the hash.
    """
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        line = json.dumps([key, str(t.dtype).removeprefix("torch."), list(t.shape)], ensure_ascii=False)
        h.update(line.encode("utf-8") + b"\n")
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of ``tensors`` (copies: safetensors refuses tensors that share memory)."""
    out = {}
    for key, t in tensors.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"a model file holds str → torch.Tensor entries, got {key!r}: {type(t).__name__}")
        out[key] = t.detach().to("cpu").contiguous().clone()
    return out


def save_model_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (a state dict) and ``meta`` to the model file ``path``, atomically; returns ``path``.

    ``meta`` must hold ``"kind"`` (a str; else ValueError) and be JSON-serialisable; it usually holds
    ``"config"`` and training provenance too. The header's JSON is ``meta`` plus ``format_version``
    and ``weights_sha256`` (always computed here) and ``torch_version`` and ``git_commit`` (this
    process's, unless ``meta`` gives them, as a converter does for the training run's). Tensors are
    stored contiguous on the CPU. A failed write (a full disk included) raises :class:`CheckpointError`
    and leaves any previous file at ``path`` intact, with no temporary file behind.
    """
    path = Path(path)
    if not isinstance(meta.get("kind"), str) or not meta["kind"]:
        raise ValueError(f"meta must hold the model's 'kind' (a non-empty str, e.g. 'ddpm'), got {meta.get('kind')!r}")
    cpu = _cpu_tensors(tensors)
    digest = weights_sha256(cpu)
    full = {"torch_version": torch.__version__, "git_commit": git_commit(), **meta,
            "format_version": FORMAT_VERSION, "weights_sha256": digest}
    try:
        text = json.dumps(full, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    header = {"format": "mnistdiff", "format_version": str(FORMAT_VERSION), "weights_sha256": digest,
              "mnistdiff": text}
    data = safetensors.torch.save(cpu, metadata=header)
    try:
        atomic_write_bytes(path, data)
    except FileWriteError as err:  # files.write_error's message: what is left and what to do
        raise CheckpointError(str(err)) from err
    return path


def _old_format_error(path: Path) -> CheckpointError:
    """The refusal of a ``.pt`` / pickle file: how to convert it (or what it is instead)."""
    side = path.with_suffix(".json")
    kind = None
    if side.is_file():
        try:
            kind = json.loads(side.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
    if isinstance(kind, str) and kind.endswith("-resume"):
        return CheckpointError(
            f"{path} is a resumable training state ({kind}), not a model file: continue the run with --resume, "
            f"or pass the run's model file (model{SUFFIX})"
        )
    vae = " --vae VAE_PATH (the VAE it was trained on)" if kind in LATENT_KINDS else ""
    if kind is not None:
        src = path.with_suffix(".pt") if path.suffix == SUFFIX else path  # the converter writes NAME.safetensors
        rename = f"rename it to {src.name} and " if src != path else ""
        return CheckpointError(
            f"{path} is a {kind!r} model in the old format (.pt + .json sidecar), which is no longer loaded as a "
            f"model: {rename}convert it once with `python -m mnistdiff convert {src}{vae}` and pass the {SUFFIX} "
            "file it writes"
        )
    if side.is_file():
        return CheckpointError(f"{path} is a PyTorch/pickle file, not a mnistdiff model file (model files are never "
                               f"unpickled), and its {side.name} names no model kind: pass a NAME{SUFFIX} model file")
    return CheckpointError(
        f"{path} is a PyTorch/pickle file, not a mnistdiff model file (model files are never unpickled). If it is "
        f"an old mnistdiff checkpoint, put its .json sidecar next to it and convert it with "
        f"`python -m mnistdiff convert {path}` (ldm/cldm: add --vae VAE_PATH)"
    )


def _looks_old(path: Path, head: bytes) -> bool:
    """A ``torch.save`` zip, a pickle (protocol 2–5), or a ``.pt`` file with a sidecar."""
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return True
    return path.suffix in (".pt", ".pth") and path.with_suffix(".json").is_file()


def _check_path(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.glob(f"*{SUFFIX}"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointError(f"{path} is a folder{hint}: pass a model file, NAME{SUFFIX}")
    if not path.is_file():
        old = path.with_suffix(".pt")
        hint = (f"; {old.name} next to it is in the old format: convert it with `python -m mnistdiff convert {old}`"
                if old.is_file() and old != path else "")
        raise CheckpointIntegrityError(
            f"model file {path} does not exist: pass the {SUFFIX} file a training run or `python -m mnistdiff "
            f"convert` wrote{hint}"
        )


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header of ``path`` (parsed JSON) and the file size the header implies."""
    _check_path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
            plausible = len(head) == 9 and 0 < n <= _MAX_HEADER and head[8:9] == b"{"
            raw = head[8:] + f.read(n - 1) if plausible else b""
    except OSError as err:
        raise CheckpointIntegrityError(f"model file {path} cannot be read ({err.strerror or err}): "
                                       "check its permissions") from err
    if size < 9:
        raise CheckpointIntegrityError(f"model file {path} is truncated ({size} bytes, too short to hold a header): "
                                       "use another copy or retrain")
    if not plausible:
        if _looks_old(path, head):
            raise _old_format_error(path)
        raise CheckpointError(f"{path} is not a model file (not in the safetensors format): pass the NAME{SUFFIX} "
                              "file a training run or `python -m mnistdiff convert` wrote")
    if len(raw) < n:
        raise CheckpointIntegrityError(f"model file {path} is truncated: it ends inside its header ({size} bytes); "
                                       "use another copy or retrain")
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointIntegrityError(f"model file {path} has a damaged header ({type(err).__name__}): "
                                       "use another copy or retrain") from err
    return header, 8 + n + max(ends, default=0)


def _decode_meta(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The ``mnistdiff`` JSON of a parsed header, after checking the format and its version."""
    md = header.get("__metadata__")
    if not isinstance(md, dict) or md.get("format") != "mnistdiff":
        raise CheckpointError(f"{path} is a safetensors file that was not written by mnistdiff (its header has no "
                              f"mnistdiff metadata): pass a model file written by mnistdiff training or `convert`")
    version = md.get("format_version")
    if not isinstance(version, str) or not version.isdigit():
        raise CheckpointIntegrityError(f"model file {path} has a damaged header (format version {version!r}): "
                                       "use another copy or retrain")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer mnistdiff (format version {version}, this one reads "
                              f"{FORMAT_VERSION}): update mnistdiff (git pull, or pip install -U) to load it")
    if int(version) < FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by an older mnistdiff (format version {version}, this one reads "
                              f"{FORMAT_VERSION}): retrain it with this version of mnistdiff")
    try:
        meta = json.loads(md["mnistdiff"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointIntegrityError(f"model file {path} has damaged metadata ({type(err).__name__}): "
                                       "use another copy or retrain") from err
    if not isinstance(meta, dict) or meta.get("weights_sha256") != md.get("weights_sha256") or "kind" not in meta:
        raise CheckpointIntegrityError(f"model file {path} has inconsistent metadata: use another copy or retrain")
    return meta


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of model file ``path`` (the header's ``mnistdiff`` JSON), reading no tensor data.

    Raises :class:`CheckpointIntegrityError` for a missing, truncated or damaged file and
    :class:`CheckpointError` for a folder, a file in the old ``.pt`` format (the message names the
    ``convert`` command), a file that is not safetensors, a safetensors file not written by
    mnistdiff, or another format version.
    """
    path = Path(path)
    header, expected = _read_header(path)
    meta = _decode_meta(path, header)
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "damaged (it has bytes after its tensors)"
        raise CheckpointIntegrityError(f"model file {path} is {what}: {size} bytes on disk, its header describes "
                                       f"{expected}; use another copy or retrain")
    return meta


def load_model_file(
    path: str | Path, *, kind: str | tuple[str, ...] | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and load model file ``path``: returns ``(tensors, meta)``, the tensors on ``device``.

    ``kind``: the model kind(s) accepted (a VAE where a DDPM is expected is refused). The tensors are
    read with safetensors (never unpickled) and their :func:`weights_sha256` must match the header's;
    every failure raises :class:`CheckpointError` (see :func:`read_model_meta`), a corrupt or
    truncated file :class:`CheckpointIntegrityError`.
    """
    path = Path(path)
    meta = read_model_meta(path)
    kinds = (kind,) if isinstance(kind, str) else (tuple(kind) if kind is not None else None)
    if kinds is not None and meta.get("kind") not in kinds:
        raise CheckpointError(f"model file {path} holds a {meta.get('kind')!r} model, expected a "
                              f"{' or '.join(map(repr, kinds))} one: check which file you passed")
    try:
        tensors = safetensors.torch.load_file(path, device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for any damage
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointIntegrityError(f"model file {path} cannot be read ({type(err).__name__}: {first}): "
                                       "it is damaged; use another copy or retrain") from err
    if weights_sha256(tensors) != meta["weights_sha256"]:
        raise CheckpointIntegrityError(f"model file {path} is corrupt: its weights do not match the hash in its "
                                       "header; use another copy or retrain")
    return {k: t.to(device) for k, t in tensors.items()}, meta


# ----------------------------------------------------------------------------- a VAE file, and a latent model's VAE


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The VAE saved at ``path`` (verified; eval mode on ``device``); its run config and provenance in ``vae.meta``."""
    tensors, meta = load_model_file(path, kind=VAE_KIND, device=device)
    cfg = from_dict(VAERunConfig, meta["config"])
    vae = VAE(cfg.vae)
    load_weights(vae, tensors, path)
    vae.meta = meta
    return vae.to(device).eval()


def save_vae(vae: VAE, path: str | Path, cfg: VAERunConfig, **provenance: Any) -> Path:
    """Write ``vae`` and its run config (and ``provenance``: seconds, metrics, …) as one model file."""
    return save_model_file(path, vae.state_dict(), {**provenance, "kind": VAE_KIND, "config": to_dict(cfg)})


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """``tensors`` into ``module``, or a :class:`CheckpointError` naming ``path`` where they do not fit."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the architecture its header describes: {err}") from err


def matching_vae(path: str | Path, meta: dict[str, Any], vae: str | Path | VAE | None,
                  device: str | torch.device) -> VAE:
    """The VAE a latent model was trained on: loaded if a path, and its weights' hash must be the one recorded."""
    if vae is None:
        raise CheckpointError(f"{path} is a latent {meta['kind']} model: pass the VAE it was trained on "
                              "(DiffusionModel.load(path, vae=...); on the command line, the VAE checkpoint first)")
    if not isinstance(vae, VAE):
        vae = load_vae(vae, device)
    found = getattr(vae, "meta", {}).get("weights_sha256")
    if meta.get("vae_weights_sha256") and found != meta["vae_weights_sha256"]:
        raise CheckpointError(f"{path} was trained on a different VAE than the one given (their weights' SHA-256 "
                              "differ): pass the VAE checkpoint it was trained with")
    return vae.to(device).eval()
