"""Exponential moving average of the weights, via ``torch.optim.swa_utils.AveragedModel``.

θ_EMA ← d·θ_EMA + (1 − d)·θ with a warm-up d_n = min(decay, (1 + n)/(10 + n)), where n is the
number of updates averaged so far (the schedule of TensorFlow's ExponentialMovingAverage with
num_updates). ``AveragedModel`` copies the weights on the first update, so the (k+1)-th update uses
d_k. The warm-up lets the random initial weights be forgotten within the first few hundred steps
instead of lingering for ~1/(1 − decay) steps.
Sampling uses the EMA weights (Ho et al. 2020, appendix B).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["make_ema", "ema_decay_at"]


def ema_decay_at(num_updates: int | torch.Tensor, decay: float) -> float | torch.Tensor:
    """The warm-up decay d_n = min(decay, (1 + n) / (10 + n))."""
    if isinstance(num_updates, torch.Tensor):
        return torch.clamp((1 + num_updates) / (10 + num_updates), max=decay)
    return min(decay, (1 + num_updates) / (10 + num_updates))


def make_ema(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """An :class:`AveragedModel` holding the EMA of ``model`` (buffers included); call ``.update_parameters(model)`` each step."""

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = ema_decay_at(num_averaged.to(averaged.device).float(), decay)
        return d * averaged + (1 - d) * current

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)
