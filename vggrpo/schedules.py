"""Schedules shared by the trainers and the sampler: the learning-rate factor of the trainers
(:func:`warmup_cosine`), the step loss they refuse to go on from (:func:`finite_loss`) and the
windows of denoising steps that the sampler and the GRPO trainer take as ``(start, end)``
(:func:`check_step_window`)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

from ._checks import is_int

__all__ = ["warmup_cosine", "finite_loss", "check_step_window"]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based): linear warm-up
    ``(step+1)/warmup`` for the first ``warmup`` steps, then a cosine from 1 down to 0 at
    ``total`` steps (and 0 after)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def finite_loss(loss, trainer: str, step: int, lr_setting: str, lr: float) -> float:
    """``loss`` (a scalar tensor) as a Python float; a FloatingPointError naming ``trainer``,
    ``step`` and the learning-rate setting to lower when it is NaN or infinite (an optimiser
    step on it would make every weight NaN)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{trainer}: the loss became {value} at step {step}; lower "
                                 f"{lr_setting} ({lr})")
    return value


def check_step_window(window: Optional[Tuple[int, int]], steps: int, name: str) -> range:
    """The denoising steps ``range(start, end)`` of ``window = (start, end)`` in a schedule of
    ``steps`` steps (``0 <= start < end <= steps``); an empty range for None. A ValueError
    naming ``name`` otherwise."""
    if window is None:
        return range(0)
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(is_int(i) for i in window)):
        raise ValueError(f"{name} must be a (start, end) pair of step indices, got {window!r}")
    start, end = window
    if not 0 <= start < end <= steps:
        raise ValueError(f"{name} {tuple(window)} lies outside the schedule's {steps} steps "
                         f"(need 0 <= start < end <= {steps})")
    return range(start, end)
