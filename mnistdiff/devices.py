"""Devices: which one to use, its name as the results files and figures report it, and the speed choices
measured on it.

Every figure in the course names the machine it was measured on: the GPU's model, or the CPU as
``lscpu`` names it with its bf16 features (speed tricks are chosen at run time by measurement,
and the same code is 2x faster or slower on another CPU). A choice that changes the bits a run computes
(fp32 or bf16, plain or channels_last) is measured once on a machine and remembered (:func:`remembered`), as
FFTW keeps its "wisdom": a near-tie timed again could flip it, and the same seed would draw other samples.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mnistdiff.files import FileWriteError, atomic_write_json

__all__ = ["default_device", "resolve_device", "cpu_name", "device_name", "device_info", "clear_winner", "remembered",
           "CACHE_ENV", "TIE_MARGIN", "remembered_choices"]

#: Where :func:`remembered` keeps its choices: ``$MNISTDIFF_CACHE/choices.json``, else ``~/.cache/mnistdiff/``.
CACHE_ENV = "MNISTDIFF_CACHE"

#: How much faster (10 %) a precision must run than one earlier in the timed order for ``"auto"`` to take it
#: (:func:`clear_winner`): timings on two shared cores wander by a few per cent, and on a near-tie (fp32 and fp32_cl
#: within 1 % for the latent UNet on an Intel Xeon without AMX) the choice flipped between runs.
TIE_MARGIN = 0.10


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means :func:`default_device`."""
    return torch.device(device) if device is not None else default_device()


def cpu_name() -> str:
    """The CPU as ``lscpu`` names it, with family/model and its bf16 features, e.g.
    ``Intel(R) Xeon(R) Processor (family 6 model 207; avx512_bf16 amx_bf16)``."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    bf16 = " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no native bf16"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']} model {fields['model']}; {bf16})"
    return name


def device_name(device: torch.device | str | None = None) -> str:
    """``torch.cuda.get_device_name`` on CUDA; on a CPU :func:`cpu_name` and torch's thread count.

    ``None`` names :func:`default_device`.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Name, peak memory and utilisation of ``device`` (CUDA), or the CPU's thread count."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu_name"] = torch.cuda.get_device_name(idx)
        info["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(idx) / 2**20, 1)
        try:
            info["gpu_utilization_percent"] = torch.cuda.utilization(idx)
        except Exception:  # noqa: BLE001 - needs pynvml; optional
            info["gpu_utilization_percent"] = None
    else:
        info["cpu_name"] = cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
    return info


def clear_winner(speeds: dict[str, float], margin: float = TIE_MARGIN) -> str:
    """The first of ``speeds`` (in their order: fp32, fp32_cl, bf16, bf16_cl, float32 plain first) that runs within
    ``margin`` of the fastest. Each precision draws other bits, so a choice that a near-tie flips from run to run
    would draw other samples for the same seed; this one changes only where a precision is clearly faster."""
    best = max(speeds.values())
    return next(p for p in speeds if speeds[p] * (1 + margin) >= best)


def choices_file() -> Path:
    """The file of remembered choices: ``$MNISTDIFF_CACHE/choices.json``, else ``~/.cache/mnistdiff/choices.json``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mnistdiff") / "choices.json"


def _choice_key(what: str, device: torch.device | str) -> str:
    """Where :func:`remembered` files ``what`` for this machine: ``device``'s name and torch's version complete it."""
    return f"{what} | {device_name(device)} | torch {torch.__version__}"


def remembered_choices(prefix: str, device: torch.device | str) -> dict[str, Any]:
    """The choices :func:`remembered` holds for this machine (``device``) whose ``what`` starts with ``prefix``:
    ``{what: {"choice", "timings"}}`` ({} where nothing is remembered or the file is unreadable)."""
    try:
        known = json.loads(choices_file().read_text())
    except (OSError, ValueError):
        return {}
    tail = _choice_key("", device)
    return {key[: -len(tail)]: entry for key, entry in known.items() if key.startswith(prefix) and key.endswith(tail)}


def remembered(what: str, device: torch.device | str, measure: Callable[[], tuple[str, dict[str, float]]]
               ) -> tuple[str, dict[str, float], bool]:
    """``measure()``'s choice and timings for ``what`` on this machine (``device``'s :func:`device_name` and torch's
    version complete the key), measured the first time and read back from :func:`choices_file` after. Returns
    ``(choice, timings, remembered)``. Delete the file (its path is printed with the choice) to measure again; an
    unreadable file is measured over, an unwritable one leaves the choice unremembered, each with a warning."""
    key = _choice_key(what, device)
    path = choices_file()
    known: dict[str, Any] = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text())
            if (entry := known.get(key)) is not None:
                return str(entry["choice"]), {k: float(v) for k, v in entry["timings"].items()}, True
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            warnings.warn(f"{path} is unreadable ({err}); measuring again and writing it anew", stacklevel=2)
            known = {}
    choice, timings = measure()
    try:
        atomic_write_json(path, {**known, key: {"choice": choice, "timings": timings}})
    except FileWriteError as err:
        warnings.warn(f"could not remember the choice in {path} ({err}): the next run measures again", stacklevel=2)
    return choice, timings, False
