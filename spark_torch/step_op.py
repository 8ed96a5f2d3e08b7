"""The eager step call, ``spk, mem = layer(cur, mem)``: one autograd node, one kernel execution per direction.

A step-mode layer in an snnTorch loop calls the kernel once per time step, so what a call costs beyond
the kernel's arithmetic is paid ``T`` times. Two paths, chosen per call:

**Direct** (small CPU calls with the native backend, :func:`spark_torch.native_calls.entry_points_for`):
the native kernel's C loops run on the tensors' memory (:mod:`spark_torch.native_calls`), without XLA's
runtime and without DLPack; results bit-identical to the JAX path's (parameter gradients to rounding).

**Through JAX** (everything else: the XLA backend, CUDA, other dtypes, large layers), kept to the minimum
the boundary allows:

* one jitted call per direction (:func:`spark_torch.kernel.step_calls.step_forward` / ``step_backward``),
  every array at the state's shape ``[*batch, *units]`` (no time axis to add or strip in torch);
* tensors that crossed before do not cross again: the parameters' JAX views live in the layer's
  ``views`` dict, and so do the arrays behind the state ``(v, u)`` a step returns and the state
  gradients its backward returns, which the next step (forward) and the previous step (backward)
  hand back. Per step, the input current is the one tensor imported in the forward; the spikes'
  cotangent (a scalar when uniform, as from ``loss = spk.sum()``) the one in the backward;
* the forward's JAX arrays stay with the autograd node for its backward (nothing imported twice); the
  tensors that alias them are saved with ``save_for_backward``, so torch's in-place check still guards
  them.

:data:`spark_torch.bridge.crossings` counts the imports, exports and kernel executions, so that tests
can pin the cost of a call without timing it. Under ``torch.compile`` the layer uses the custom op of :mod:`spark_torch.ops`
instead (same kernel, same results).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import bridge, kernel, native_calls
from .kernel import IzhikevichParams, precision_scope, step_calls
from .ops import N_PARAMS, _check_not_forked, _np_dtype, _step_count, _sum_to, _uniform_as_scalar, cotangent_to_jax


class StepCall(NamedTuple):
    """What a step call needs besides its tensors: ``dt`` (ms), ``scheme``, the fused surrogate
    (``""`` for none, i.e. the spikes carry no gradient and ``x`` is returned) and its parameter, and
    ``views``, the layer's dict of JAX views (:func:`spark_torch.bridge.to_jax_shared`)."""

    dt: float
    scheme: str
    surrogate: str
    surrogate_param: float
    views: dict


def _params_to_jax(params, views: dict) -> IzhikevichParams:
    return IzhikevichParams(*(bridge.to_jax_shared(p, name, views) for p, name in zip(params, IzhikevichParams._fields)))


def _forward(current, v0, u0, params, call: StepCall):
    """The step's tensors ``[spikes, x, v, u, mem]`` (``x`` is ``None`` with a fused surrogate) and the
    JAX arrays ``(inputs, outputs)`` behind them."""
    dtype, views, on_cpu = _np_dtype(current.dtype), call.views, current.device.type == "cpu"
    with precision_scope(dtype):
        inputs = (bridge.to_jax(current, "cur"), bridge.to_jax_shared(v0, "v0", views),
                  bridge.to_jax_shared(u0, "u0", views), _params_to_jax(params, views))
        bridge.crossings["forward"] += 1
        outputs = step_calls.step_forward(*inputs, _step_count(1, current), dt=call.dt, scheme=call.scheme,
                                           spike_dtype=dtype, return_x=not call.surrogate, backend=kernel.backend())
        tensors = bridge.arrays_to_torch(outputs, on_cpu)
    if on_cpu:  # the next step starts from this state: no import then
        bridge.remember_export(views, "v0", tensors[2], outputs[2])
        bridge.remember_export(views, "u0", tensors[3], outputs[3])
    return tensors, (inputs, outputs)


def _backward(ctx, g_spikes, g_x, g_v, g_u, g_mem):
    """The reverse step: grads of ``(current, v0, u0, *params)``, ``None`` where none is needed."""
    call, (inputs, outputs) = ctx.call, ctx.arrays
    saved = ctx.saved_tensors  # torch checks that none (``arrays`` alias them) was modified in place since
    dtype, views, on_cpu = _np_dtype(ctx.dtype), call.views, ctx.on_cpu
    needs = ctx.needs_input_grad
    param_mask = tuple(needs[4:])
    with precision_scope(dtype):
        cotangents = tuple(cotangent_to_jax(_uniform_as_scalar(g), name, views) for g, name in (
            (g_x, "grad_x"), (g_v, "grad_v"), (g_u, "grad_u"), (g_spikes if call.surrogate else None, "grad_spikes"),
            (g_mem, "grad_mem")))
        bridge.crossings["backward"] += 1
        g_current, g_v0, g_u0, g_params = step_calls.step_backward(
            *inputs, outputs[0], outputs[2], outputs[3], cotangents, _step_count(1, saved[0]), dt=call.dt,
            scheme=call.scheme, param_mask=param_mask,
            surrogate=(call.surrogate, call.surrogate_param) if call.surrogate else None, backend=kernel.backend())
        wanted = (g_current if needs[0] else None, g_v0 if needs[1] else None, g_u0 if needs[2] else None,
                  *g_params)
        grads = bridge.arrays_to_torch(wanted, on_cpu)
    if on_cpu:  # the previous step's backward receives these as its state cotangents: no import then
        for name, tensor, array in (("grad_v", grads[1], g_v0), ("grad_u", grads[2], g_u0)):
            if tensor is not None:
                bridge.remember_export(views, name, tensor, array)
    params = saved[3:3 + N_PARAMS]
    return (*grads[:3], None, *(None if g is None else _sum_to(g, p) for g, p in zip(grads[3:], params)))


# ------------------------------------------------------------------------------------------------ autograd
class _Step(torch.autograd.Function):
    """One step as an autograd node: outputs ``(spikes, x, v, u, mem)``, or ``(spikes, v, u, mem)``
    with a fused surrogate (then the spikes carry its gradient; without, they carry none and ``x``
    does, for a torch-side surrogate)."""

    @staticmethod
    def forward(ctx, current, v0, u0, call: StepCall, *params):
        ctx.call, ctx.entry = call, native_calls.entry_points_for(current)
        if ctx.entry is not None:
            tensors, current, ctx.model = native_calls.forward(ctx.entry, current, current.shape, v0, u0, params,
                                                               call.dt, call.scheme, want_x=not call.surrogate)
            spikes, x, v, u, mem = tensors
            ctx.save_for_backward(current, *ctx.model.operands, spikes, v, u)  # torch's in-place check guards them
            ctx.shapes = (v0.shape, u0.shape, *(p.shape for p in params))
        else:
            tensors, ctx.arrays = _forward(current, v0, u0, params, call)
            spikes, x, v, u, mem = tensors
            ctx.save_for_backward(current, v0, u0, *params, spikes, v, u)
            ctx.dtype, ctx.on_cpu = current.dtype, current.device.type == "cpu"
        ctx.set_materialize_grads(False)
        if call.surrogate:
            return spikes, v, u, mem
        ctx.mark_non_differentiable(spikes)
        return spikes, x, v, u, mem

    @staticmethod
    def backward(ctx, *grads):
        if ctx.call.surrogate:
            g_spikes, g_v, g_u, g_mem = grads
            g_x = None
        else:
            g_spikes, g_x, g_v, g_u, g_mem = grads
        if ctx.entry is not None:
            call, saved, needs = ctx.call, ctx.saved_tensors, ctx.needs_input_grad
            grads = native_calls.backward(
                ctx.entry, saved[0], ctx.model, saved[10:], saved[0].shape, call.dt, call.scheme, call.surrogate,
                call.surrogate_param, (g_x, g_v, g_u, g_spikes if call.surrogate else None, g_mem),
                needs[:3] + needs[4:], ctx.shapes)
            return (*grads[:3], None, *grads[3:])
        return _backward(ctx, g_spikes, g_x, g_v, g_u, g_mem)


def step(current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params: list[torch.Tensor], call: StepCall):
    """One step from ``(v0, u0)`` under input ``current`` (all ``[*batch, *units]``; parameters broadcastable):
    ``(spikes, x, v, u, mem)`` at the same shape, ``x`` ``None`` with a fused surrogate. Differentiable
    when grad mode is on and any input requires grad; else a plain kernel call."""
    _check_not_forked()
    if torch.is_grad_enabled() and (current.requires_grad or v0.requires_grad or u0.requires_grad
                                    or any(p.requires_grad for p in params)):
        outputs = _Step.apply(current, v0, u0, call, *params)
        return (outputs[0], None, *outputs[1:]) if call.surrogate else outputs
    entry = native_calls.entry_points_for(current)
    if entry is not None:
        return native_calls.forward(entry, current, current.shape, v0, u0, params, call.dt, call.scheme,
                                    want_x=not call.surrogate)[0]
    return _forward(current, v0, u0, params, call)[0]
