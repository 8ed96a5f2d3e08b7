"""One autograd node for every eager kernel call, and :func:`run`, the entry point the layer calls.

:class:`KernelFunction` wraps whichever executor :func:`~.route.executor_for` chose: its forward saves the
executor's residual tensors with ``save_for_backward`` (so torch's in-place check guards them) and keeps
the executor's cache on the node; its backward hands both back to the same executor. A step and a
sequence are the same node (:attr:`~.call.KernelCall.step` says which shape ``current`` has).

Second derivatives are refused with a clear error (:mod:`.double_backward`).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import bridge, inputs
from . import custom_op, route
from .call import Cotangents, KernelCall, Outputs, check_operands, differentiable, nonfinite_current
from .double_backward import refuse_double_backward

class KernelFunction(torch.autograd.Function):
    """``(spikes, x, v, u, mem)`` of ``executor`` running ``call`` (see :class:`~.call.Outputs`); the spikes
    carry no gradient unless the surrogate is fused (then ``x`` is ``None`` and they carry its gradient)."""

    @staticmethod
    def forward(ctx, call: KernelCall, executor, views: Optional[dict], current, v0, u0, *params):
        outputs, residuals = executor.forward(call, current, v0, u0, params, views, keep="least")
        ctx.save_for_backward(*residuals.tensors)
        ctx.call, ctx.executor, ctx.views, ctx.cache = call, executor, views, residuals.cache
        ctx.layout = residuals.layout
        ctx.set_materialize_grads(False)  # unused outputs send None, not zeros, to the reverse loop
        if not call.surrogate:
            ctx.mark_non_differentiable(outputs.spikes)
        return outputs.spikes, outputs.x, outputs.v, outputs.u, outputs.mem

    @staticmethod
    def backward(ctx, g_spikes, g_x, g_v, g_u, g_mem):
        call = ctx.call
        cotangents = Cotangents(None if call.surrogate else g_x, g_v, g_u, g_spikes if call.surrogate else None,
                                g_mem)
        saved = ctx.saved_tensors
        # the cache (e.g. JAX arrays behind whole trajectories) is released now, not when the outputs die: a
        # backward with retain_graph=True runs again from the saved tensors
        cache, ctx.cache = ctx.cache, None
        with torch.no_grad():
            grads = ctx.executor.backward(call, saved, cache, cotangents, ctx.needs_input_grad[3:], ctx.views,
                                          ctx.layout)
        return (None, None, None, *refuse_double_backward(tuple(grads), saved))


def run(call: KernelCall, current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params,
        views: Optional[dict] = None) -> Outputs:
    """Run the kernel for ``call`` and return its :class:`~.call.Outputs`.

    The tensors are checked (:func:`~.call.check_operands`); then, while ``torch.compile`` traces, the call
    becomes the custom op (:mod:`.custom_op`), else the executor of :func:`~.route.executor_for` runs it,
    through :class:`KernelFunction` when autograd will differentiate it. ``v`` and ``u`` of a sequence are
    its final state ``[1, *state]`` without anything to differentiate (no traces are written), and where the
    executor keeps less than traces for the backward (the direct executor); else ``[T, *state]`` traces.
    ``views``: a dict owned by the caller (the layer) in which the JAX views of its tensors are kept between
    calls, so that they live as long as the layer and no longer.
    """
    check_operands(call, current, v0, u0, params)
    if torch.compiler.is_compiling():
        return custom_op.run_traced(call, current, v0, u0, params)  # the layer checks nothing while compiling
    check_not_forked()
    executor = route.executor_for(call, current)
    if call.check_finite and not executor.checks_finite:  # else the executor's kernel checks as it reads
        if not inputs.all_finite(current):
            raise nonfinite_current()
        call = call._replace(check_finite=False)
    if not differentiable(current, v0, u0, params):
        call = call._replace(recovery_checkpoints=False)  # nothing to recompute without a backward
        return executor.forward(call, current, v0, u0, params, views, keep="final_state")[0]
    spikes, x, v, u, mem = KernelFunction.apply(call, executor, views, current, v0, u0, *params)
    return Outputs(spikes, x, v, u, mem)


_forked_after_jax = False  # was this process fork()-ed from a parent in which JAX had started?


def _mark_forked_child() -> None:
    global _forked_after_jax
    _forked_after_jax = bridge.jax_backends_started()  # the parent's backends, as copied into this child


os.register_at_fork(after_in_child=_mark_forked_child)


def check_not_forked() -> None:
    """JAX deadlocks in a ``fork``-ed child of a process that has started it: fail loudly instead of hanging."""
    if _forked_after_jax:
        raise RuntimeError(
            "spark_torch: this process was fork()-ed after JAX started in its parent, and JAX cannot run in such "
            "a child (it hangs). Start worker processes with 'spawn' or 'forkserver', e.g. "
            "DataLoader(..., multiprocessing_context='spawn') or torch.multiprocessing.set_start_method('spawn')")
