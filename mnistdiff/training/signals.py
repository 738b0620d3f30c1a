"""Ctrl-C and SIGTERM during training: a flag checked between steps instead of an exception mid-step.

:func:`stop_flag` installs the handlers for the length of a ``with`` block; the loop saves a
resumable checkpoint when it sees the flag and raises :class:`TrainingInterrupted`. A second Ctrl-C
raises ``KeyboardInterrupt`` at once, without saving.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainingInterrupted", "StopFlag", "stop_flag", "signal_name"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C / SIGTERM after saving a resumable checkpoint; ``signum`` is the signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


@dataclass
class StopFlag:
    """The signal that asked training to stop; ``signum`` is 0 while none has."""

    signum: int = 0


@contextmanager
def stop_flag() -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM into a :class:`StopFlag` checked between steps (main thread only).

    A second SIGINT (Ctrl-C pressed twice) raises ``KeyboardInterrupt`` at once, without saving.
    The previous handlers are restored on leaving the block.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt(
                "second Ctrl-C: stopped without saving; the last epoch's checkpoint (checkpoints/last.pt) is kept"
            )
        flag.signum = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, … (or ``signal N`` for a number without a name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
