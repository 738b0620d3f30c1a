"""Exponential moving average of the weights, via ``torch.optim.swa_utils.AveragedModel``.

θ_EMA ← d·θ_EMA + (1 − d)·θ with a warm-up d_n = min(decay, (1 + n)/(10 + n)), where n is the
number of updates averaged so far (the schedule of TensorFlow's ExponentialMovingAverage with
num_updates). ``AveragedModel`` copies the weights on the first update, so the (k+1)-th update uses
d_k. The warm-up lets the random initial weights be forgotten within the first few hundred steps
instead of lingering for ~1/(1 − decay) steps.
Sampling uses the EMA weights (Ho et al. 2020, appendix B).

The update is one fused ``torch._foreach_lerp_`` over all parameters and buffers, with d_n computed
on the host from a step counter: no per-tensor kernels and no device synchronisation per step (the
stock ``AveragedModel.update_parameters`` with an ``avg_fn`` launches ~7 kernels per tensor and reads
``n_averaged`` on the host). The state dict is ``AveragedModel``'s (``module.*`` and ``n_averaged``).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "make_ema", "ema_decay_at"]


def ema_decay_at(num_updates: int | torch.Tensor, decay: float) -> float | torch.Tensor:
    """The warm-up decay d_n = min(decay, (1 + n) / (10 + n))."""
    if isinstance(num_updates, torch.Tensor):
        return torch.clamp((1 + num_updates) / (10 + num_updates), max=decay)
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA(AveragedModel):
    """An :class:`AveragedModel` (same state dict) whose ``update_parameters`` is one fused lerp.

    θ_EMA ← θ_EMA + (1 − d_n)(θ − θ_EMA) with d_n = :func:`ema_decay_at` (n, decay), n = the number of
    updates so far; the first update copies θ. Integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self._updates = 0  # host copy of n_averaged: reading the buffer would synchronise the device

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        pairs = [(e, c.detach()) for e, c in zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                                                 itertools.chain(model.parameters(), model.buffers()))]
        floats = [(e, c) for e, c in pairs if e.is_floating_point()]
        if self._updates == 0 or not floats:
            for e, c in pairs:
                e.copy_(c)
        else:
            w = 1.0 - float(ema_decay_at(self._updates, self.decay))
            torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], w)
            for e, c in pairs:
                if not e.is_floating_point():
                    e.copy_(c)
        self._updates += 1
        self.n_averaged.add_(1)  # kept for the state dict; never read on the host here

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._updates = int(self.n_averaged)
        return result


def make_ema(model: nn.Module, decay: float = 0.999) -> EMA:
    """An :class:`EMA` (an ``AveragedModel``, buffers included) of ``model``; call
    ``.update_parameters(model)`` each step."""
    return EMA(model, decay)
