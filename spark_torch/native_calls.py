"""Eager CPU calls of the native kernel's C loops on torch's memory: no XLA runtime, no DLPack.

Through JAX, every kernel call pays XLA's executable launch and the DLPack crossings of its operands and
results (~100 µs per forward+backward here, before any arithmetic), which an snnTorch step loop pays at
every time step. For small problems the layer therefore calls the same C++ loops directly
(:mod:`spark_torch.kernel.native.direct`): torch allocates the results, the loops write them in place.

:func:`entry_points_for` decides per call: CPU tensors, float32/float64, the native backend active, and
fewer than :data:`~spark_torch.kernel.native.direct.PARALLEL_WORK` neuron-steps (below which the FFI
handler runs on one thread too). Everything else (the XLA backend, CUDA, large problems, recovery
checkpoints, ``torch.compile``) goes through JAX. Both paths run the same loops in the same order:
spikes, membranes, state and the gradients of the input and initial state are bit-identical; gradients
of parameters that broadcast over the batch are summed by torch here (by XLA there), equal to rounding.

Shapes: ``current`` ``[T, *state]`` for a sequence or ``[*state]`` for one step (``state_shape`` says which);
``v0``, ``u0`` and the seven parameters broadcastable to ``state`` (``[*batch, *units]``); outputs at
``current``'s shape. :data:`spark_torch.bridge.crossings` counts each call as one kernel execution
(``"forward"`` / ``"backward"``), and no crossings.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple, Optional

import torch

from . import bridge, kernel
from .kernel import SCHEMES
from .kernel.native import SURROGATES, direct

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}  # the C functions' dtype codes


def entry_points_for(current: torch.Tensor) -> Optional[direct.EntryPoints]:
    """The C entry points when a call on ``current`` can use them (module docstring), else ``None``."""
    if current.device.type != "cpu" or current.dtype not in _DTYPE_CODES or \
            not 0 < current.numel() < direct.PARALLEL_WORK or kernel.backend() != "native":
        return None
    return direct.entry_points()


def _periodic(tensor: torch.Tensor, state_shape: torch.Size) -> torch.Tensor:
    """``tensor`` (broadcastable to ``state_shape``) as a periodic operand: itself when it is contiguous and
    its shape (leading 1s aside) is a suffix of ``state_shape`` (e.g. a per-unit parameter: period
    ``prod(units)``), else a contiguous copy at ``state_shape``. The period is the result's ``numel()``."""
    shape = tensor.shape
    while shape and shape[0] == 1:
        shape = shape[1:]
    if tensor.is_contiguous() and shape == state_shape[len(state_shape) - len(shape):]:
        return tensor
    return tensor.expand(state_shape).contiguous()


class Model(NamedTuple):
    """The nine periodic operands ``(v0, u0, *params)`` of one call: the tensors (kept alive with it), and the
    C arrays of their addresses and periods."""

    operands: tuple
    addresses: ctypes.Array
    periods: ctypes.Array


def _model(v0, u0, params, state_shape: torch.Size) -> Model:
    """:class:`Model` for a call."""
    operands = tuple(_periodic(t, state_shape) for t in (v0, u0, *params))
    return Model(operands, direct.pointer_array[9](*(t.data_ptr() for t in operands)),
                 direct.period_array[9](*(t.numel() for t in operands)))


def forward(entry: direct.EntryPoints, current: torch.Tensor, state_shape: torch.Size, v0, u0, params, dt: float,
            scheme: str, want_x: bool):
    """``[spikes, x, v, u, mem]`` at ``current``'s shape (``x`` ``None`` unless ``want_x``; ``v``, ``u`` the
    post-step traces), and what the loops read: ``current`` (contiguous) and the :class:`Model`, to keep for
    :func:`backward`. ``state_shape``: ``current.shape`` for a step, ``current.shape[1:]`` for a sequence."""
    if not current.is_contiguous():  # the C loops read any address, but only dense rows
        current = bridge.explicit_copy(current, "cur")
    model = _model(v0, u0, params, state_shape)
    spikes, v, u, mem = (torch.empty_like(current) for _ in range(4))
    x = torch.empty_like(current) if want_x else None
    m = state_shape.numel()
    bridge.crossings["forward"] += 1
    status = entry.forward(_DTYPE_CODES[current.dtype], current.numel() // m, m, dt, SCHEMES.index(scheme),
                           current.data_ptr(), model.addresses, model.periods, spikes.data_ptr(), 0,
                           None if x is None else x.data_ptr(), v.data_ptr(), u.data_ptr(), mem.data_ptr())
    if status:
        raise RuntimeError(f"the native kernel rejected the operands of a forward call (status {status})")
    return [spikes, x, v, u, mem], current, model


def _cotangent(grad: Optional[torch.Tensor], dtype: torch.dtype, state_shape: torch.Size, n_steps: int):
    """``(kept tensor, address, period)`` of a cotangent for the C loops: absent (period 0); uniform (1: the
    one value of a broadcast gradient such as ``y.sum()``'s, read in place); constant over the steps of a
    sequence (stride 0 along time, as ``y.sum(0)``'s: one value per neuron, period ``M``); else one row per
    step (-1)."""
    if grad is None:
        return None, None, 0
    if not any(grad.stride()):
        grad = grad.as_strided((), ()).to(dtype)
        return grad, grad.data_ptr(), 1
    if grad.dim() > len(state_shape) and n_steps > 1 and grad.stride(0) == 0:
        grad = grad[0].to(dtype).expand(state_shape).contiguous()
        return grad, grad.data_ptr(), grad.numel()
    grad = grad.to(dtype).contiguous()
    return grad, grad.data_ptr(), -1


def backward(entry: direct.EntryPoints, current: torch.Tensor, model: Model, traces, state_shape: torch.Size,
             dt: float, scheme: str, surrogate: str, surrogate_param: float, cotangents, needs, shapes):
    """Gradients of ``(current, v0, u0, *params)`` (``None`` where ``needs`` is false).

    ``current``, ``model``: what :func:`forward` read; ``traces``: its ``spikes, v, u``; ``cotangents``: of
    ``(x, v, u, spikes, mem)``, each ``None`` or at ``current``'s shape (the spikes' only with a fused
    ``surrogate``); ``shapes``: of ``(v0, u0, *params)`` as passed to :func:`forward`, to sum their gradients
    back to."""
    spikes, v, u = traces
    m = state_shape.numel()
    n_steps = current.numel() // m
    kept = [_cotangent(g, current.dtype, state_shape, n_steps) for g in cotangents]
    g_current = torch.empty_like(current)
    g_state = [current.new_empty(state_shape) if need else None for need in needs[1:3]]
    g_params = [current.new_empty(state_shape) if need else None for need in needs[3:]]
    bridge.crossings["backward"] += 1
    status = entry.reverse(
        _DTYPE_CODES[current.dtype], n_steps, m, dt, SCHEMES.index(scheme),
        1 + SURROGATES.index(surrogate) if surrogate else 0, surrogate_param, current.data_ptr(), model.addresses,
        model.periods, spikes.data_ptr(), 0, v.data_ptr(), u.data_ptr(), direct.pointer_array[5](*(c[1] for c in kept)),
        direct.period_array[5](*(c[2] for c in kept)), g_current.data_ptr(),
        *(None if g is None else g.data_ptr() for g in g_state),
        direct.pointer_array[7](*(None if g is None else g.data_ptr() for g in g_params)))
    if status:
        raise RuntimeError(f"the native kernel rejected the cotangents of a backward call (status {status})")
    return (g_current if needs[0] else None,
            *(None if g is None else _sum_to(g, shape) for g, shape in zip(g_state + g_params, shapes)))


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return grad if grad.shape == shape else grad.sum_to_size(shape)


class DirectScan(torch.autograd.Function):
    """A sequence call ``[T, *state]`` on the direct path, with the outputs of
    :func:`spark_torch.ops.izhikevich_scan` (``spikes, x, v, u, mem, u_checkpoints``; ``x`` and
    ``u_checkpoints`` empty where not computed). Recovery checkpoints are not supported here (the caller
    sends such calls through JAX)."""

    @staticmethod
    def forward(ctx, current, v0, u0, call: tuple, *params):
        entry, dt, scheme, surrogate, _ = ctx.call = call
        tensors, current, ctx.model = forward(entry, current, current.shape[1:], v0, u0, params, dt, scheme,
                                              want_x=not surrogate)
        spikes, x, v, u, mem = tensors
        ctx.save_for_backward(current, *ctx.model.operands, spikes, v, u)  # torch's in-place check guards them
        ctx.shapes = (v0.shape, u0.shape, *(p.shape for p in params))
        ctx.set_materialize_grads(False)
        if surrogate:
            x = current.new_empty(0)
        u_checkpoints = current.new_empty(0)
        # one call (a second would replace the first): the empties, and the spikes unless the surrogate is fused
        ctx.mark_non_differentiable(u_checkpoints, x if surrogate else spikes)
        return spikes, x, v, u, mem, u_checkpoints

    @staticmethod
    def backward(ctx, g_spikes, g_x, g_v, g_u, g_mem, g_u_checkpoints):
        entry, dt, scheme, surrogate, surrogate_param = ctx.call
        saved, needs = ctx.saved_tensors, ctx.needs_input_grad
        grads = backward(entry, saved[0], ctx.model, saved[10:], saved[0].shape[1:], dt, scheme, surrogate,
                         surrogate_param, (None if surrogate else g_x, g_v, g_u, g_spikes if surrogate else None,
                                           g_mem), needs[:3] + needs[4:], ctx.shapes)
        return (*grads[:3], None, *grads[3:])


def scan(entry: direct.EntryPoints, current, v0, u0, params, dt: float, scheme: str, surrogate: str,
         surrogate_param: float, differentiable: bool):
    """:func:`spark_torch.ops.scan` on the direct path: through :class:`DirectScan` when ``differentiable``,
    else one forward call whose ``v`` and ``u`` are the final state ``[1, *state]``."""
    if differentiable:
        return DirectScan.apply(current, v0, u0, (entry, dt, scheme, surrogate, surrogate_param), *params)
    (spikes, x, v, u, mem), _, _ = forward(entry, current, current.shape[1:], v0, u0, params, dt, scheme,
                                           want_x=not surrogate)
    return spikes, current.new_empty(0) if x is None else x, v[-1:], u[-1:], mem, current.new_empty(0)
