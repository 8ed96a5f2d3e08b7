"""The shape executor: a kernel call on tensors without data (``meta`` device, ``FakeTensorMode``).

Such tensors are for shape inference, so a call returns :class:`~.call.Outputs` of the right shapes, dtype
and device (uninitialised, on the input's device) and its backward gradients of the inputs' shapes; no
kernel runs. The custom op's fake implementation (:mod:`.custom_op`) gives the same shapes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..kernel import recovery_checkpoint_interval
from .call import PARAMETERS, Cotangents, KernelCall, Outputs, Residuals


def has_no_data(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a meta tensor or a fake tensor (no memory behind it)."""
    if tensor.device.type == "meta":
        return True
    if type(tensor) is torch.Tensor or type(tensor) is torch.nn.Parameter:  # the common case, decided at once
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor)


def checkpoint_rows(n_steps: int) -> int:
    """Rows of the recovery checkpoints of a sequence of ``n_steps`` (a buffer of exactly that length)."""
    every = recovery_checkpoint_interval(n_steps)
    return -(-max(n_steps, 2) // every)


class ShapeExecutor:
    """Outputs and gradients of the right shapes, computing nothing (module docstring)."""

    name = "shape"
    checks_finite = False  # shapes only: nothing to check
    same_bits_for_any_cotangent_form = True  # no values

    def forward(self, call: KernelCall, current, v0, u0, params, views: Optional[dict], keep: str):
        state = call.state_shape(current)
        trace_state = keep == "state_traces"  # "least": the final state, as the direct executor returns it
        traced = current.shape if call.step or trace_state else (1, *state)
        checkpoints = call.recovery_checkpoints and trace_state and not call.step
        v = current.new_empty(traced)
        u = current.new_empty((1, *state) if checkpoints else traced)
        u_checkpoints = current.new_empty((checkpoint_rows(current.shape[0]), *state)) if checkpoints else None
        x = None if call.surrogate else torch.empty_like(current)
        outputs = Outputs(torch.empty_like(current), x, v, u, torch.empty_like(current), u_checkpoints)
        return outputs, Residuals((current, v0, u0, *params, outputs.spikes, v, u_checkpoints if checkpoints else u))

    def backward(self, call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple,
                 views: Optional[dict], layout: str = "state_traces"):
        inputs = saved[:3 + len(PARAMETERS)]
        return [torch.empty_like(t) if need else None for need, t in zip(needs, inputs)]
