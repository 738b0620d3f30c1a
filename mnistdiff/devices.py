"""Devices: which one to use, and its name as the results files and figures report it.

Every figure in the course names the machine it was measured on: the GPU's model, or the CPU as
``lscpu`` names it with its bf16 features (speed tricks are chosen at run time by measurement,
and the same code is 2x faster or slower on another CPU).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["default_device", "resolve_device", "cpu_name", "device_name", "device_info"]


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
