"""Training data: one tensor (images, latents) or a tuple of tensors with the same rows (latents and their labels).

The loop draws a batch by indexing every tensor of the tuple with the same rows, so labels stay with their
images; a loss function receives what it was given: a tensor, or a tuple of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

import torch

__all__ = ["Data", "num_rows", "take", "to_device", "chunks"]

#: A tensor (N, …), or a tuple of tensors that all have N rows.
Data = Union[torch.Tensor, tuple[torch.Tensor, ...]]


def _parts(data: Data) -> tuple[torch.Tensor, ...]:
    return data if isinstance(data, tuple) else (data,)


def _like(data: Data, parts: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Data:
    return tuple(parts) if isinstance(data, tuple) else parts[0]


def num_rows(data: Data) -> int:
    """N, the rows of ``data``; a tuple whose tensors disagree is a ``ValueError``."""
    rows = {int(p.shape[0]) for p in _parts(data)}
    if len(rows) != 1:
        raise ValueError(f"the tensors of a data tuple must have the same number of rows, got {sorted(rows)}")
    return rows.pop()


def take(data: Data, index: torch.Tensor | slice) -> Data:
    """The rows ``index`` of every tensor of ``data``."""
    return _like(data, [p[index] for p in _parts(data)])


def to_device(data: Data, device: torch.device | str) -> Data:
    """``data`` with every tensor on ``device``."""
    return _like(data, [p.to(device) for p in _parts(data)])


def chunks(data: Data, size: int) -> Iterator[Data]:
    """Consecutive batches of ``size`` rows (the last may be smaller)."""
    n = num_rows(data)
    for start in range(0, n, size):
        yield take(data, slice(start, start + size))
