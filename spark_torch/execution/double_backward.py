"""Refusing second derivatives: the kernel's reverse loop is not itself differentiable.

A backward run with ``create_graph=True`` still works (first-order gradients are exact), but
differentiating its results again raises :data:`SECOND_DERIVATIVE_ERROR` instead of giving a silently
wrong number (the reverse loop would be treated as a constant).
"""

from __future__ import annotations

import torch

SECOND_DERIVATIVE_ERROR = (
    "spark_torch: the Izhikevich kernel has no second derivative: differentiating the gradient of an "
    "IzhikevichSoma output again (double backward, e.g. a gradient penalty built with create_graph=True) is "
    "not supported")


def refuse_double_backward(grads: tuple, inputs: tuple) -> tuple:
    """``grads`` as they are, or, when the backward runs with ``create_graph=True``, as aliases whose own
    backward raises :data:`SECOND_DERIVATIVE_ERROR`. The aliases are tied to the forward's ``inputs`` (the
    saved tensors), so that every second-order gradient toward them (``backward()`` or
    ``torch.autograd.grad``) reaches the error instead of finding no path (and a silent zero)."""
    if not torch.is_grad_enabled():
        return grads
    positions = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    anchors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not positions:
        return grads
    delayed_error = torch._C._functions.DelayedError(SECOND_DERIVATIVE_ERROR, len(positions) + len(anchors))
    aliases = delayed_error(*(grads[i].detach().requires_grad_() for i in positions), *anchors)
    aliases = aliases if isinstance(aliases, tuple) else (aliases,)
    grads = list(grads)
    for i, alias in zip(positions, aliases):
        grads[i] = alias
    return tuple(grads)
