"""The kernel as a ``torch.library`` custom op: what ``torch.compile``, ``torch.export`` and ``opcheck`` see.

``torch.ops.spark_torch_<version>.izhikevich_scan`` is one opaque node with a fake implementation (shapes
from torch rules only) and a registered autograd formula whose backward is the custom op
``izhikevich_scan_backward``. When the compiled graph runs, each op asks :func:`~.route.executor_for` for
its executor, as an eager call does: the results are the same. The op namespace carries the package
version, so that no inductor cache reuses a compiled graph of another version's op.

Op inputs: ``current`` ``[T, *state]`` (pA), ``v0``, ``u0``, the seven fields (broadcastable to
``state``), ``dt`` (ms, a 0-d float64 CPU tensor: a float would make ``torch.compile`` guard on its value),
``scheme``, ``surrogate`` (``""`` or a fused surrogate's name), its parameter, ``recovery_checkpoints``.
Op outputs: ``spikes, x, v, u, mem, u_checkpoints`` (:class:`~.call.Outputs`; ``x`` and ``u_checkpoints``
empty where not computed): a custom op can only save its inputs and outputs for the backward.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._version import __version__
from . import route
from .call import Cotangents, KernelCall, Outputs
from .double_backward import refuse_double_backward

#: The ops' namespace carries the package version (module docstring).
OP_NAMESPACE = "spark_torch_" + __version__.replace(".", "_")


def _call(dt: torch.Tensor, scheme: str, surrogate: str, surrogate_param: float, recovery_checkpoints: bool):
    return KernelCall(float(dt), scheme, surrogate, float(surrogate_param), bool(recovery_checkpoints))


@torch.library.custom_op(f"{OP_NAMESPACE}::izhikevich_scan", mutates_args=())
def izhikevich_scan(
    current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params: list[torch.Tensor], dt: torch.Tensor,
    scheme: str, surrogate: str, surrogate_param: float, recovery_checkpoints: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulate ``T = current.shape[0]`` steps (module docstring)."""
    call = _call(dt, scheme, surrogate, surrogate_param, recovery_checkpoints)
    outputs, _ = route.executor_for(call, current).forward(call, current, v0, u0, params, None, keep="state_traces")
    empty = current.new_empty  # distinct empties: outputs must not alias each other
    return (outputs.spikes, empty(0) if outputs.x is None else outputs.x, outputs.v, outputs.u, outputs.mem,
            empty(0) if outputs.u_checkpoints is None else outputs.u_checkpoints)


@izhikevich_scan.register_fake
def _(current, v0, u0, params, dt, scheme, surrogate, surrogate_param, recovery_checkpoints):
    x = current.new_empty(0) if surrogate else torch.empty_like(current)
    u, u_checkpoints = torch.empty_like(current), current.new_empty(0)
    if recovery_checkpoints:  # the count, ceil(T / ceil(sqrt(T))), is no expression of T that torch's shape
        # system can carry: a size of its own, so that a new T does not recompile (dynamic=True)
        u = current.new_empty((1, *current.shape[1:]))
        u_checkpoints = current.new_empty((torch.library.get_ctx().new_dynamic_size(), *current.shape[1:]))
    return torch.empty_like(current), x, torch.empty_like(current), u, torch.empty_like(current), u_checkpoints


def _setup_context(ctx, inputs, output):
    current, v0, u0, params, dt, scheme, surrogate, surrogate_param, recovery_checkpoints = inputs
    spikes, x, v, u, mem, u_checkpoints = output
    ctx.save_for_backward(current, v0, u0, *params, spikes, v, u_checkpoints if recovery_checkpoints else u)
    ctx.dt, ctx.options = dt, (scheme, surrogate, surrogate_param, recovery_checkpoints)
    ctx.needs = [t.requires_grad for t in (current, v0, u0, *params)]
    # one call (a second would replace the first): the checkpoints, and either x (an empty placeholder when the
    # surrogate is fused) or the 0/1 spikes (whose gradient then comes through x, the surrogate's input)
    ctx.mark_non_differentiable(u_checkpoints, x if surrogate else spikes)
    ctx.set_materialize_grads(False)


def _backward(ctx, g_spikes, g_x, g_v, g_u, g_mem, g_u_checkpoints):
    scheme, surrogate, surrogate_param, recovery_checkpoints = ctx.options
    needs = ctx.needs
    grads = izhikevich_scan_backward(list(ctx.saved_tensors), g_x, g_v, g_u, g_spikes if surrogate else None, g_mem,
                                     ctx.dt, scheme, surrogate, surrogate_param, recovery_checkpoints, needs)
    grads = [g if need else None for g, need in zip(grads, needs)]
    g_current, g_v0, g_u0, *g_params = refuse_double_backward(tuple(grads), ctx.saved_tensors)
    return g_current, g_v0, g_u0, list(g_params), None, None, None, None, None


@torch.library.custom_op(f"{OP_NAMESPACE}::izhikevich_scan_backward", mutates_args=())
def izhikevich_scan_backward(
    saved: list[torch.Tensor], g_x: Optional[torch.Tensor], g_v: Optional[torch.Tensor], g_u: Optional[torch.Tensor],
    g_spikes: Optional[torch.Tensor], g_mem: Optional[torch.Tensor], dt: torch.Tensor, scheme: str, surrogate: str,
    surrogate_param: float, recovery_checkpoints: bool, needs: list[bool],
) -> list[torch.Tensor]:
    """The reverse loop of :func:`izhikevich_scan`: gradients of ``(current, v0, u0, *params)`` (zeros where
    ``needs`` is false). ``saved``: ``current, v0, u0``, the seven fields, and the forward's spikes, ``v`` and
    ``u`` (its recovery checkpoints, with ``recovery_checkpoints``); ``g_*``: the outputs' cotangents."""
    call = _call(dt, scheme, surrogate, surrogate_param, recovery_checkpoints)
    executor = route.executor_for(call, saved[0])
    cotangents = Cotangents(g_x, g_v, g_u, g_spikes, g_mem)
    if not executor.same_bits_for_any_cotangent_form:
        cotangents = Cotangents(*(_as_eager_passes(g) for g in cotangents))
    grads = executor.backward(call, tuple(saved), None, cotangents, tuple(needs), None, "state_traces")
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, saved)]


def _as_eager_passes(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A cotangent in the form eager autograd hands the layer: ``None`` when it is all zeros (an output the
    loss does not use), its one value (0-d) when uniform (as from ``y.sum()``), else itself. A compiled
    backward graph materializes both as full tensors, and for them the XLA loops would run another program
    than the eager call's, which rounds differently (one pass over each cotangent decides)."""
    if grad is None or grad.numel() == 0:
        return grad
    low, high = torch.aminmax(grad)
    if not bool(low == high):  # NaN anywhere: unequal
        return grad
    return None if bool(low == 0) else grad.reshape(-1)[0]


@izhikevich_scan_backward.register_fake
def _(saved, g_x, g_v, g_u, g_spikes, g_mem, dt, scheme, surrogate, surrogate_param, recovery_checkpoints, needs):
    return [torch.empty_like(t) for t in saved[:len(needs)]]


izhikevich_scan.register_autograd(_backward, setup_context=_setup_context)


def run_traced(call: KernelCall, current, v0, u0, params) -> Outputs:
    """:func:`~.function.run` while ``torch.compile`` traces: the custom op, outputs as :class:`~.call.Outputs`
    (a step call runs as a one-step sequence)."""
    sequence = current.unsqueeze(0) if call.step else current
    dt = torch.tensor(call.dt, dtype=torch.float64) if isinstance(call.dt, float) else call.dt
    spikes, x, v, u, mem, _ = izhikevich_scan(sequence, v0, u0, list(params), dt, call.scheme, call.surrogate,
                                              call.surrogate_param, call.recovery_checkpoints)
    x = None if call.surrogate else x
    if call.step:
        return Outputs(spikes[0], None if x is None else x[0], v[0], u[0], mem[0])
    return Outputs(spikes, x, v, u, mem)
