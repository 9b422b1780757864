"""The two ways a benchmark calls a function: a rollout-style forward under no_grad, or a forward
and backward."""

from __future__ import annotations

from typing import Callable

import torch


def no_grad(fn: Callable) -> Callable:
    """``fn`` run under ``torch.no_grad`` (a rollout-style forward)."""

    def run(*args):
        with torch.no_grad():
            return fn(*args)

    run.__name__ = getattr(fn, "__name__", "fn")
    return run


def forward_backward(fn: Callable, grad_argnums: tuple[int, ...]) -> Callable:
    """``fn(*args).sum()`` and its gradients w.r.t. the arguments at ``grad_argnums``
    (``torch.autograd.grad``: nothing accumulates in ``.grad`` between rounds)."""

    def run(*args):
        out = fn(*args)
        return torch.autograd.grad(out.sum(), [args[i] for i in grad_argnums])

    run.__name__ = getattr(fn, "__name__", "fn")
    return run
