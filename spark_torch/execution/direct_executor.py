"""The direct executor: the native kernel's C loops on torch's memory, without XLA's runtime or DLPack.

Through JAX, every kernel call pays XLA's executable launch and the DLPack crossings of its operands and
results before any arithmetic, which an snnTorch step loop pays at every time step. For small eager CPU
calls (:mod:`.route`) the layer therefore calls the same compiled loops through their plain C entry points
(:func:`spark_torch.kernel.native.entry_points`): torch allocates the results, the loops write them in place.
Both ways run the same checks and loops on one thread in the same order, so spikes, membranes, state and
the gradients of the input and initial state are bit-identical to the JAX executor's on the native
backend; gradients of fields that broadcast over the batch are summed by torch here (by XLA there), equal
to rounding.

Memory safety: :func:`_buffer` is the only place an address is taken for C, and it checks the tensor's
dtype, device, contiguity and element count (a periodic operand: a count that divides the neurons); the
C side checks the counts again and writes nothing when one is wrong. Non-contiguous inputs are copied
explicitly (:func:`spark_torch.bridge.explicit_copy`, counted). Recovery checkpoints are not supported
here (the route sends such calls to JAX).
"""

from __future__ import annotations

import array
import ctypes
import threading
from typing import Optional

import torch

from .. import bridge
from ..kernel import native
from ..kernel.native import interface
from .call import PARAMETERS, Cotangents, KernelCall, Outputs, Residuals, compact_cotangent, input_gradients

_ERROR_SIZE = 512
_DTYPE_CODES = {torch.float32: interface.dtype_code("float32"), torch.float64: interface.dtype_code("float64")}


def _buffer(tensor: Optional[torch.Tensor], name: str, dtype: torch.dtype, count: Optional[int] = None,
            period_of: Optional[int] = None) -> tuple[int, int]:
    """``(address, element count)`` of ``tensor`` for C (``(0, 0)`` for ``None``: absent), after checking that
    C may read or write it: ``dtype``, on the CPU, contiguous, and ``count`` elements exactly (or, with
    ``period_of=m``, a count that divides ``m``). The layout of an ``izh::View``."""
    if tensor is None:
        return 0, 0
    n = tensor.numel()
    if tensor.dtype != dtype or not tensor.is_cpu or not tensor.is_contiguous():
        raise TypeError(f"`{name}` ({tensor.dtype}, {tensor.device}, contiguous={tensor.is_contiguous()}) cannot "
                        f"be handed to the native kernel: it needs a contiguous {dtype} CPU tensor")
    if (count is not None and n != count) or (period_of is not None and (n == 0 or period_of % n)):
        rule = f"{count} elements" if count is not None else f"a number of elements that divides {period_of}"
        raise ValueError(f"`{name}` has {n} elements; the native kernel needs {rule}")
    return tensor.data_ptr(), n


def _periodic(tensor: torch.Tensor, state_shape: torch.Size) -> torch.Tensor:
    """``tensor`` (broadcastable to ``state_shape``) as a periodic operand: itself when it is contiguous and
    its shape (leading 1s aside) is a suffix of ``state_shape`` (e.g. a per-unit field: period
    ``prod(units)``), else a contiguous copy at ``state_shape``."""
    shape = tensor.shape
    while shape and shape[0] == 1:
        shape = shape[1:]
    if tensor.is_contiguous() and shape == state_shape[len(state_shape) - len(shape):]:
        return tensor
    return tensor.expand(state_shape).contiguous()


def _still_valid(model: Optional[list]) -> bool:
    """Whether the forward's model views still point to their tensors' memory (``tensor.data = ...`` between
    forward and backward would leave a dangling address)."""
    return model is not None and all(t.data_ptr() == view[0] and t.numel() == view[1] for t, view in model)


def _model_views(v0, u0, params, state_shape: torch.Size, m: int, views: Optional[dict] = None) -> list:
    """``(tensor, view)`` of the initial state and the seven fields as periodic operands. With ``views`` (the
    layer's dict), a field's view is kept while the field is the same tensor, at the same address, in the
    same state shape (an optimizer's in-place step changes its values, not its memory)."""
    model = [(t, _buffer(t, name, v0.dtype, period_of=m)) for t, name in
             ((_periodic(v0, state_shape), "v0"), (_periodic(u0, state_shape), "u0"))]
    for field, name in zip(params, PARAMETERS):
        kept = views.get(("direct", name)) if views is not None else None
        if kept is not None and kept[0] is field and kept[1] == state_shape and kept[3] == (field.data_ptr(),
                                                                                       field.numel()):
            model.append(kept[2:])
            continue
        operand = _periodic(field, state_shape)
        entry = (operand, _buffer(operand, name, v0.dtype, period_of=m))
        model.append(entry)
        if views is not None and operand is field:
            views[("direct", name)] = (field, state_shape, *entry)
    return model


_errors = threading.local()
_step_counts: dict = {}


def _step_count(n_steps: int) -> torch.Tensor:
    """``n_steps`` as a 1-element int32 tensor, made once per value (read-only for C)."""
    tensor = _step_counts.get(n_steps)
    if tensor is None:
        tensor = _step_counts[n_steps] = torch.tensor([n_steps], dtype=torch.int32)
    return tensor


def _call(function, attributes: interface.Attributes, operands: list, results: list, what: str) -> None:
    """Run a C entry point on ``(tensor, View)`` pairs; the tensors stay referenced until it returns."""
    in_views, out_views = array.array("q"), array.array("q")  # izh::View {address, count} pairs
    for _, view in operands:
        in_views.extend(view)
    for _, view in results:
        out_views.extend(view)
    error = getattr(_errors, "buffer", None)
    if error is None:
        error = _errors.buffer = ctypes.create_string_buffer(_ERROR_SIZE)
    if function(ctypes.byref(attributes), in_views.buffer_info()[0], len(operands), out_views.buffer_info()[0],
                len(results), error, _ERROR_SIZE):
        raise RuntimeError(f"the native kernel rejected the operands of a {what} call: {error.value.decode()}")


class DirectExecutor:
    """:meth:`forward` and :meth:`backward` of a kernel call on the C loops (module docstring)."""

    name = "direct"

    def forward(self, call: KernelCall, current, v0, u0, params, views: Optional[dict], trace_state: bool):
        """``(Outputs, Residuals)``; ``trace_state=False``: ``v``, ``u`` are the final state only."""
        if not current.is_contiguous():  # the C loops read dense rows only
            current = bridge.explicit_copy(current, "current")
        state_shape = call.state_shape(current)
        m, dtype = state_shape.numel(), current.dtype
        t_buf = 1 if call.step else current.shape[0]
        spikes, mem = torch.empty_like(current), torch.empty_like(current)
        x = None if call.surrogate else torch.empty_like(current)
        v, u = (torch.empty_like(current) if trace_state else current.new_empty(state_shape) for _ in range(2))
        steps, model = _step_count(t_buf), _model_views(v0, u0, params, state_shape, m, views)
        operands = [(current, _buffer(current, "current", dtype, t_buf * m)), *model,
                    (steps, _buffer(steps, "n_steps", torch.int32, 1))]
        n_state = t_buf * m if trace_state else m
        results = [(spikes, _buffer(spikes, "spikes", dtype, t_buf * m)), (x, _buffer(x, "x", dtype, t_buf * m)),
                   (v, _buffer(v, "v", dtype, n_state)), (u, _buffer(u, "u", dtype, n_state)),
                   (mem, _buffer(mem, "mem", dtype, t_buf * m)), (None, _buffer(None, "u_checkpoints", dtype))]
        attributes = interface.Attributes(dtype=_DTYPE_CODES[dtype], t_buf=t_buf, m=m,
                                          dt=call.dt, scheme=interface.scheme_code(call.scheme),
                                          trace_state=int(trace_state))
        bridge.crossings["forward"] += 1
        _call(native.entry_points().forward, attributes, operands, results, "forward")
        if not trace_state and not call.step:
            v, u = v[None], u[None]
        # the model's operands are kept for the backward (the tensors they point to are saved too)
        return Outputs(spikes, x, v, u, mem), Residuals((current, v0, u0, *params, spikes, v, u), model)

    def backward(self, call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple,
                 views: Optional[dict]):
        """Gradients of ``(current, v0, u0, *params)`` (``None`` where ``needs`` is false)."""
        current, v0, u0, *rest = saved
        params, (spikes, v, u) = rest[:len(PARAMETERS)], rest[len(PARAMETERS):]
        if not current.is_contiguous():
            current = bridge.explicit_copy(current, "current")
        state_shape = call.state_shape(current)
        m, dtype = state_shape.numel(), current.dtype
        t_buf = 1 if call.step else current.shape[0]
        per_step, g_operands = _cotangent_views(cotangents, call, state_shape, dtype, t_buf * m, m)
        steps = _step_count(t_buf)
        model = cache if _still_valid(cache) else _model_views(v0, u0, params, state_shape, m)
        operands = [(current, _buffer(current, "current", dtype, t_buf * m)), *model,
                    *((t, _buffer(t, n, dtype, t_buf * m)) for t, n in ((spikes, "spikes"), (v, "v"), (u, "u"))),
                    *g_operands, (None, _buffer(None, "g_u_final", dtype)),
                    (steps, _buffer(steps, "n_steps", torch.int32, 1))]
        g_current = torch.empty_like(current)
        g_rest = [current.new_empty(state_shape) if need else None for need in needs[1:]]
        results = [(g_current, _buffer(g_current, "g_current", dtype, t_buf * m)),
                   *((g, _buffer(g, name, dtype, m)) for g, name in zip(g_rest, interface.REVERSE_RESULTS[1:]))]
        attributes = interface.Attributes(
            dtype=_DTYPE_CODES[dtype], t_buf=t_buf, m=m, dt=call.dt,
            scheme=interface.scheme_code(call.scheme), surrogate=interface.surrogate_code(call.surrogate),
            surrogate_param=call.surrogate_param, per_step=per_step)
        bridge.crossings["backward"] += 1
        _call(native.entry_points().reverse, attributes, operands, results, "reverse")
        return input_gradients(needs, (g_current, *g_rest), (current, v0, u0, *params))


def _cotangent_views(cotangents: Cotangents, call: KernelCall, state_shape: torch.Size, dtype: torch.dtype,
                     rows: int, m: int):
    """The per-step bit mask and the ``(tensor, View)`` of each cotangent: absent; uniform (one value, as
    ``y.sum()``'s); constant over the steps of a sequence (``y.sum(0)``'s: one value per neuron); else one
    row per step."""
    per_step, views = 0, []
    spikes = cotangents.spikes if call.surrogate else None
    x = None if call.surrogate else cotangents.x
    for i, (name, grad) in enumerate(zip(interface.COTANGENTS, (x, cotangents.v, cotangents.u, spikes,
                                                                cotangents.mem))):
        grad = compact_cotangent(grad, call.step)
        if grad is None:
            views.append((None, _buffer(None, name, dtype)))
            continue
        grad = grad.to(dtype)
        if grad.dim() == 0 or grad.shape == state_shape and not call.step:
            grad = grad.expand(state_shape).contiguous() if grad.dim() else grad.contiguous()
            views.append((grad, _buffer(grad, name, dtype, period_of=m)))
        else:
            per_step |= 1 << i
            grad = grad.contiguous()
            views.append((grad, _buffer(grad, name, dtype, rows)))
    return per_step, views
