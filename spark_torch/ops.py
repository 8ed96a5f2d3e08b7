"""The torch custom op around the JAX kernel: ``torch.ops.spark_torch_<version>.izhikevich_scan``.

Registered with :func:`torch.library.custom_op` (plus a fake implementation and a registered
autograd formula) so that ``torch.compile(..., fullgraph=True)`` treats it as one opaque node, and
``torch.library.opcheck`` can verify it. Forward and backward each make exactly one jitted JAX call:
:data:`spark_torch.kernel.simulate_forward` and the reverse loop
:data:`spark_torch.kernel.simulate_backward`. The number of steps crosses as a runtime scalar, and the
time buffers are either exactly ``T`` long or padded to a power of two (:data:`MAX_EXACT_LENGTHS`), so
the number of compiled executables stays bounded however many sequence lengths a program uses.

The op namespace carries the package version (:data:`OP_NAMESPACE`), so that no stale compiled graph
in an inductor cache is reused after an upgrade.

:func:`scan` is what the module calls: the custom op while ``torch.compile`` traces, and in eager
mode a plain ``autograd.Function`` (``_EagerScan``) over the very same forward/backward
implementation, which skips ~100 µs of dispatcher work per call; small CPU calls on the native backend
skip JAX altogether (:mod:`spark_torch.native_calls`). It also refuses to run in a
process ``fork()``-ed after the kernel ran in its parent (JAX would hang there). When nothing will be
differentiated (no grad mode, or no input requires grad) it skips autograd and asks the kernel for the
final state only instead of the ``v``/``u`` traces a backward would need.

Inputs (all tensors of one floating dtype and device):
    current ``[T, *batch, *units]`` (pA); v0, u0 ``[*batch, *units]`` (mV, mV/ms);
    seven parameter tensors broadcastable to ``[*batch, *units]`` in
    :class:`spark_torch.kernel.IzhikevichParams` order; ``dt`` (ms); ``scheme``;
    ``surrogate`` (``""`` or a fused surrogate's name) and its parameter; ``recovery_checkpoints``.
Outputs (fresh tensors, ``[T, *batch, *units]``, the input's dtype):
    spikes (0/1), x = (v* − v_pk)/(v_pk − v_r) (pre-reset; empty when the surrogate is fused),
    v (post-reset, mV), u (post-reset, mV/ms), mem = (v − v_r)/(v_pk − v_r) (snnTorch's normalized
    membrane, computed in the kernel), u_checkpoints (empty). With ``recovery_checkpoints=True``, u is
    the final state only, ``[1, *batch, *units]``, and u_checkpoints ``[ceil(T_buf / K), ...]`` holds u
    every ``K = ceil(√T_buf)`` steps (``T_buf``: the loop buffer's length, :func:`buffer_length`); the
    backward recomputes the rest (bit-identical), so one ``[T, ...]`` trace less is kept alive.
Autograd: gradients flow from x, v, u and mem to current, v0, u0 and every parameter tensor. The 0/1
spikes carry no gradient (the module applies the user's surrogate to x) — unless one of snnTorch's
built-in surrogates is *fused* (``surrogate="atan"|"fast_sigmoid"|"sigmoid"``): then the spikes'
cotangent is turned into dL/dx inside the reverse scan and no x trace is materialized.
"""

from __future__ import annotations

import os
from functools import partial
from typing import NamedTuple, Optional

import jax
import numpy as np
import torch

from . import __version__, bridge, native_calls
from .kernel import (IzhikevichParams, IzhikevichState, Trajectory, precision_scope,
                     recovery_checkpoint_interval, simulate_backward, simulate_forward)

#: The ops' namespace carries the package version: an inductor cache must never reuse a compiled graph of
#: another version's op (its schema or backward may differ under the same name).
OP_NAMESPACE = "spark_torch_" + __version__.replace(".", "_")
N_PARAMS = len(IzhikevichParams._fields)


@torch.library.custom_op(f"{OP_NAMESPACE}::izhikevich_scan", mutates_args=())
def izhikevich_scan(
    current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params: list[torch.Tensor], dt: torch.Tensor,
    scheme: str, surrogate: str, surrogate_param: float, recovery_checkpoints: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulate ``T = current.shape[0]`` steps. See the module docstring for shapes and units.

    ``dt`` (ms) is a 0-d CPU tensor: a float argument would make ``torch.compile`` guard on its value, so
    that layers with different steps would share (and exhaust) one recompile budget.

    ``surrogate=""``: spikes carry no gradient, ``x`` is returned for a torch-side surrogate.
    ``surrogate`` in ("atan", "fast_sigmoid", "sigmoid") with its parameter: the spikes are
    differentiable through that surrogate inside the reverse scan, and ``x`` is returned empty.
    ``recovery_checkpoints``: keep ``u`` only every ~√T steps for the backward (module docstring).
    """
    return _forward_impl(current, v0, u0, params, dt, scheme, surrogate, recovery_checkpoints=recovery_checkpoints)


class _KernelArrays(NamedTuple):
    """The JAX arrays a forward call imported and produced, kept (eager path) for its backward, which
    then imports nothing twice. They alias tensors that ``save_for_backward`` also holds, so torch's
    in-place check still runs before they are used. ``current`` is ``None`` when it was a padded copy
    (not kept alive between the passes; the backward pads again)."""

    current: Optional[jax.Array]
    state: IzhikevichState
    params: IzhikevichParams
    traj: Trajectory  # spikes, v, u (or final u and u_checkpoints) over the whole buffer (x and mem dropped)


def _forward_impl(current, v0, u0, params, dt, scheme, surrogate, trace_state=True, recovery_checkpoints=False,
                  param_views=None):
    """The kernel's forward; ``trace_state=False``: ``v``, ``u`` are the final state ``[1, ...]`` only."""
    return _forward_kernel(current, v0, u0, params, dt, scheme, surrogate, trace_state, recovery_checkpoints,
                           param_views)[0]


def _forward_kernel(current, v0, u0, params, dt, scheme, surrogate, trace_state=True, recovery_checkpoints=False,
                    param_views=None):
    """:func:`_forward_impl`'s outputs and the :class:`_KernelArrays` behind them. ``param_views``: the
    caller's cache of JAX views of ``params`` (see :func:`spark_torch.bridge.to_jax_shared`)."""
    dt = float(dt)
    n_steps = current.shape[0]
    n_buffer = buffer_length(n_steps)
    every = recovery_checkpoint_interval(n_buffer) if recovery_checkpoints and trace_state else 0
    with precision_scope(_np_dtype(current.dtype)):
        current_j = bridge.to_jax(_pad_steps(current, n_buffer), "current")
        arrays = _KernelArrays(current_j if n_buffer == n_steps else None,
                               IzhikevichState(*_state_to_jax(v0, u0, param_views)),
                               _params_to_jax(params, param_views), None)
        bridge.crossings["forward"] += 1
        traj = simulate_forward(
            current_j, arrays.state, arrays.params, _step_count(n_steps, current), dt=dt, scheme=scheme,
            spike_dtype=_np_dtype(current.dtype), return_x=not surrogate, return_mem=True, trace_state=trace_state,
            recovery_every=every)
        spikes, x, v, u, mem, u_checkpoints = bridge.arrays_to_torch(tuple(traj), current.device.type == "cpu")
    spikes, x, mem = (None if a is None else a[:n_steps] for a in (spikes, x, mem))
    if trace_state:
        v = v[:n_steps]
        u = u if every else u[:n_steps]  # with checkpoints: the final state [1, ...]
    outputs = (spikes, current.new_empty(0) if x is None else x, v, u, mem,
               current.new_empty(0) if u_checkpoints is None else u_checkpoints)  # distinct empties: no aliasing
    return outputs, arrays._replace(traj=traj._replace(x=None, mem=None))


#: How many distinct sequence lengths T get a loop buffer of exactly T steps (and so an executable of
#: their own, compiled on first use); every later new length runs in a buffer padded with zero current
#: to the next power of two (the loop still stops after T steps), so that sequences of arbitrarily many
#: lengths compile at most ``MAX_EXACT_LENGTHS + log2(T_max) + 1`` forward and backward executables per
#: shape ``[*batch, *units]``, dtype, dt and scheme. Results do not depend on the buffer (bit-identical),
#: only speed does: a padded call pays one copy of the input (and of its gradients) into the buffer.
#: Set it before the first call; ``0`` pads every length that is not a power of two.
MAX_EXACT_LENGTHS = 8
_exact_lengths: set[int] = set()


def buffer_length(n_steps: int) -> int:
    """The loop buffer's length for a sequence of ``n_steps`` (see :data:`MAX_EXACT_LENGTHS`)."""
    if n_steps in _exact_lengths:
        return n_steps
    if len(_exact_lengths) < MAX_EXACT_LENGTHS or n_steps & (n_steps - 1) == 0:
        _exact_lengths.add(n_steps)
        return n_steps
    return 1 << (n_steps - 1).bit_length()


def _pad_steps(tensor: Optional[torch.Tensor], n_buffer: int, n_dims: Optional[int] = None) -> Optional[torch.Tensor]:
    """``tensor`` ``[T, ...]`` copied into a zero buffer ``[n_buffer, ...]`` (counted in
    :data:`spark_torch.bridge.copy_counts` as "padded"); unchanged if it already has ``n_buffer`` rows,
    is ``None``, 0-d, or has fewer than ``n_dims`` dims (a time-constant cotangent has no time axis)."""
    if tensor is None or tensor.dim() == 0 or tensor.shape[0] == n_buffer or (n_dims and tensor.dim() < n_dims):
        return tensor
    padded = tensor.new_zeros((n_buffer, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    bridge.copy_counts["padded"] += 1
    return padded


@izhikevich_scan.register_fake
def _(current, v0, u0, params, dt, scheme, surrogate, surrogate_param, recovery_checkpoints=False):
    x = current.new_empty(0) if surrogate else torch.empty_like(current)
    u, u_checkpoints = torch.empty_like(current), current.new_empty(0)
    if recovery_checkpoints:  # the count, ceil(T_buf / ceil(sqrt(T_buf))), is no expression of T that torch's
        # shape system can carry: a size of its own, so that a new T does not recompile (dynamic=True)
        u = current.new_empty((1, *current.shape[1:]))
        u_checkpoints = current.new_empty((torch.library.get_ctx().new_dynamic_size(), *current.shape[1:]))
    return torch.empty_like(current), x, torch.empty_like(current), u, torch.empty_like(current), u_checkpoints


def _setup_context(ctx, inputs, output):
    _save_for_backward(ctx, *inputs, output)


def _save_for_backward(ctx, current, v0, u0, params, dt, scheme, surrogate, surrogate_param, recovery_checkpoints,
                       output):
    spikes, x, v, u, mem, u_checkpoints = output
    ctx.save_for_backward(current, v0, u0, *params, spikes, v, u, u_checkpoints)
    ctx.recovery_checkpoints = recovery_checkpoints
    # one call (a second would replace the first): the checkpoints, and either x (an empty placeholder when the
    # surrogate is fused) or the 0/1 spikes (whose gradient then comes through x, the surrogate's input)
    ctx.mark_non_differentiable(u_checkpoints, x if surrogate else spikes)
    ctx.set_materialize_grads(False)  # unused outputs send None, not [T, B, N] zeros to the reverse scan
    ctx.dt, ctx.scheme, ctx.surrogate, ctx.surrogate_param = dt, scheme, surrogate, surrogate_param
    ctx.param_mask = [p.requires_grad for p in params]


def _backward(ctx, g_spikes, g_x, g_v, g_u, g_mem, g_u_checkpoints):
    g_current, g_v0, g_u0, *g_params = _saved_backward(ctx, izhikevich_scan_backward, g_spikes, g_x, g_v, g_u,
                                                       g_mem)
    return g_current, g_v0, g_u0, g_params, None, None, None, None, None


def _saved_backward(ctx, backward_fn, g_spikes, g_x, g_v, g_u, g_mem):
    current, v0, u0, *rest = ctx.saved_tensors
    params, (spikes, v, u, u_checkpoints) = rest[:N_PARAMS], rest[N_PARAMS:]
    return backward_fn(current, v0, u0, params, spikes, v, u, g_x, g_v, g_u, ctx.dt, ctx.scheme, ctx.param_mask,
                       g_spikes if ctx.surrogate else None, ctx.surrogate, ctx.surrogate_param, g_mem,
                       u_checkpoints if ctx.recovery_checkpoints else None)


@torch.library.custom_op(f"{OP_NAMESPACE}::izhikevich_scan_backward", mutates_args=())
def izhikevich_scan_backward(
    current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params: list[torch.Tensor],
    spikes: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
    g_x: Optional[torch.Tensor], g_v: Optional[torch.Tensor], g_u: Optional[torch.Tensor], dt: torch.Tensor,
    scheme: str, param_mask: list[bool], g_spikes: Optional[torch.Tensor] = None, surrogate: str = "",
    surrogate_param: float = 0.0, g_mem: Optional[torch.Tensor] = None, u_checkpoints: Optional[torch.Tensor] = None,
) -> list[torch.Tensor]:
    """The reverse scan of :func:`izhikevich_scan`: grads of (current, v0, u0, *params), in that order.

    ``g_x``, ``g_v``, ``g_u`` are the cotangents of the outputs x, v, u (``None`` when unused);
    ``param_mask[i]`` says whether parameter ``i`` needs a gradient (zeros are returned otherwise);
    ``g_spikes`` is the spikes' cotangent when the surrogate is fused (see :func:`izhikevich_scan`);
    ``g_mem`` the normalized membrane's. With ``u_checkpoints`` (the forward's recovery checkpoints),
    ``u`` is the final state ``[1, ...]`` and ``g_u`` its cotangent.
    """
    grads = _backward_impl(current, v0, u0, params, spikes, v, u, g_x, g_v, g_u, dt, scheme, param_mask, g_spikes,
                           surrogate, surrogate_param, g_mem, u_checkpoints)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, [current, v0, u0, *params])]


def _backward_impl(current, v0, u0, params, spikes, v, u, g_x, g_v, g_u, dt, scheme, param_mask, g_spikes,
                   surrogate, surrogate_param, g_mem=None, u_checkpoints=None, arrays: Optional[_KernelArrays] = None):
    """The reverse scan; ``arrays`` (from the forward) saves re-importing what JAX already has.

    With ``u_checkpoints``, ``u`` is the final state ``[1, ...]`` (not needed here) and ``g_u`` its
    cotangent, which crosses unpadded. ``dt``: a float, or the custom op's 0-d tensor."""
    dt = float(dt)
    n_steps = current.shape[0]
    n_buffer = buffer_length(n_steps)
    checkpointed = u_checkpoints is not None
    n_dims = current.dim()
    g_x, g_v, g_spikes, g_mem = (_pad_steps(_compact_cotangent(g), n_buffer, n_dims)
                                 for g in (g_x, g_v, g_spikes, g_mem))
    g_u = _uniform_as_scalar(g_u) if checkpointed else _pad_steps(_compact_cotangent(g_u), n_buffer, n_dims)
    with precision_scope(_np_dtype(current.dtype)):
        if arrays is None:
            spikes, v = (_pad_steps(t, n_buffer) for t in (spikes, v))
            traj = Trajectory(bridge.to_jax(spikes, "spikes"), None, bridge.to_jax(v, "v"), None)
            traj = traj._replace(u_checkpoints=bridge.to_jax(u_checkpoints, "u_checkpoints")) if checkpointed \
                else traj._replace(u=bridge.to_jax(_pad_steps(u, n_buffer), "u"))
            arrays = _KernelArrays(None, IzhikevichState(bridge.to_jax(v0, "v0"), bridge.to_jax(u0, "u0")),
                                   _params_to_jax(params), traj)
        current_j = arrays.current if arrays.current is not None else bridge.to_jax(
            _pad_steps(current, n_buffer), "current")
        bridge.crossings["backward"] += 1
        cotangents = tuple(cotangent_to_jax(g, name) for g, name in (
            (g_x, "grad_x"), (g_v, "grad_v"), (g_u, "grad_u"), (g_spikes, "grad_spikes"), (g_mem, "grad_mem")))
        grads = simulate_backward(
            current_j, arrays.state, arrays.params, arrays.traj, cotangents, _step_count(n_steps, current), dt=dt,
            scheme=scheme, param_mask=tuple(param_mask),
            surrogate=(surrogate, float(surrogate_param)) if surrogate else None)
        g_current, g_v0, g_u0, *g_params = bridge.arrays_to_torch(
            (grads[0], *grads[1], *grads[2]), current.device.type == "cpu")
    return [g_current[:n_steps], _sum_to(g_v0, v0), _sum_to(g_u0, u0),
            *(None if g is None else _sum_to(g, p) for g, p in zip(g_params, params))]


@izhikevich_scan_backward.register_fake
def _(current, v0, u0, params, spikes, v, u, g_x, g_v, g_u, dt, scheme, param_mask, g_spikes=None, surrogate="",
      surrogate_param=0.0, g_mem=None, u_checkpoints=None):
    return [torch.empty_like(current), torch.empty_like(v0), torch.empty_like(u0), *map(torch.empty_like, params)]


def _compact_cotangent(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The smallest form of a ``[T, *batch, *units]`` cotangent the kernel takes: 0-d when uniform
    (``y.sum()``), one row ``[*batch, *units]`` when constant over time (stride 0 along ``T``, as the
    gradient of ``y.sum(0)``: spike-count losses), else unchanged. Avoids a ``[T, B, N]`` copy."""
    grad = _uniform_as_scalar(grad)
    if grad is None or grad.dim() < 2 or grad.stride(0) != 0:
        return grad
    return grad[0]


def _uniform_as_scalar(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A broadcast (all strides 0) gradient, e.g. from ``y.sum()``, crosses as its one value (0-d)."""
    if grad is None or grad.dim() == 0 or any(grad.stride()):
        return grad
    if grad.device.type == "cpu":
        return grad.as_strided((), ())  # read by cotangent_to_jax, never imported
    return grad.new_empty(()).copy_(grad.as_strided((), ()))


_SCALARS_KEPT = 64
_scalars: dict = {}


def cotangent_to_jax(grad: Optional[torch.Tensor], name: str, views: Optional[dict] = None):
    """A cotangent for the kernel: ``None``; a 0-d CPU tensor as a JAX scalar kept per value and dtype (the
    ``1.0`` of ``loss = y.sum()`` crosses once per process, not once per call); any other tensor imported
    (through ``views`` when given: :func:`spark_torch.bridge.to_jax_shared`). Call it inside the kernel's
    :func:`~spark_torch.kernel.precision_scope`."""
    if grad is None:
        return None
    if grad.dim() == 0 and grad.device.type == "cpu":
        key = (grad.item(), grad.dtype)
        scalar = _scalars.get(key)
        if scalar is None:
            if len(_scalars) >= _SCALARS_KEPT:
                _scalars.clear()
            bridge.crossings["to_jax"] += 1
            scalar = _scalars[key] = jax.device_put(np.asarray(key[0], _np_dtype(grad.dtype)), jax.devices("cpu")[0])
        return scalar
    return bridge.to_jax(grad, name) if views is None else bridge.to_jax_shared(grad, name, views)


def _params_to_jax(params, views: Optional[dict] = None) -> IzhikevichParams:
    """The parameters as JAX arrays; with ``views`` (a dict the caller owns) each view is imported once."""
    if views is None:
        return IzhikevichParams(*(bridge.to_jax(p, name) for p, name in zip(params, IzhikevichParams._fields)))
    return IzhikevichParams(*(bridge.to_jax_shared(p, name, views)
                              for p, name in zip(params, IzhikevichParams._fields)))


def _state_to_jax(v0: torch.Tensor, u0: torch.Tensor, views: Optional[dict] = None):
    """The initial state as JAX arrays; with ``views``, a state that crossed before (the rest state a
    sequence layer starts every call from) is not imported again."""
    if views is None:
        return bridge.to_jax(v0, "v0"), bridge.to_jax(u0, "u0")
    return bridge.to_jax_shared(v0, "v0", views), bridge.to_jax_shared(u0, "u0", views)


_STEP_COUNTS_KEPT = 256
_step_counts: dict = {}


def _step_count(n_steps: int, current: torch.Tensor):
    """``n_steps`` as the kernel's runtime int32 scalar: on the CPU a JAX array made once per value (a NumPy
    scalar would be transferred on every call), else a NumPy scalar (placed with the other operands)."""
    if current.device.type != "cpu":
        return np.int32(n_steps)
    array = _step_counts.get(n_steps)
    if array is None:
        if len(_step_counts) >= _STEP_COUNTS_KEPT:
            _step_counts.clear()
        array = _step_counts[n_steps] = jax.device_put(np.int32(n_steps), jax.devices("cpu")[0])
    return array


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a gradient that JAX returned at the broadcast shape down to ``like``'s shape."""
    if grad.shape == like.shape:
        return grad
    return grad.sum_to_size(like.shape)


izhikevich_scan.register_autograd(_backward, setup_context=_setup_context)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
SUPPORTED_DTYPES = tuple(_NUMPY_DTYPES)


def _np_dtype(dtype: torch.dtype):
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"izhikevich_scan computes in float32 or float64; got dtype {dtype}") from None


class _EagerScan(torch.autograd.Function):
    """The same forward/backward as the custom ops, without the dispatcher (~100 µs per call saved)."""

    @staticmethod
    def forward(ctx, current, v0, u0, dt, scheme, surrogate, surrogate_param, recovery_checkpoints, param_views,
                *params):
        output, ctx.kernel_arrays = _forward_kernel(current, v0, u0, list(params), dt, scheme, surrogate,
                                                    recovery_checkpoints=recovery_checkpoints,
                                                    param_views=param_views)
        _save_for_backward(ctx, current, v0, u0, params, dt, scheme, surrogate, surrogate_param,
                           recovery_checkpoints, output)
        return output

    @staticmethod
    def backward(ctx, g_spikes, g_x, g_v, g_u, g_mem, g_u_checkpoints):
        arrays, ctx.kernel_arrays = ctx.kernel_arrays, None  # released; a retain_graph rerun imports again
        g_current, g_v0, g_u0, *g_params = _saved_backward(
            ctx, partial(_backward_impl, arrays=arrays), g_spikes, g_x, g_v, g_u, g_mem)
        return (g_current, g_v0, g_u0, None, None, None, None, None, None, *g_params)


_forked_after_jax = False  # was this process fork()-ed from a parent in which JAX had started?


def _mark_forked_child() -> None:
    global _forked_after_jax
    _forked_after_jax = bridge.jax_backends_started()  # the parent's backends, as copied into this child


os.register_at_fork(after_in_child=_mark_forked_child)


def _check_not_forked() -> None:
    """JAX deadlocks in a ``fork``-ed child of a process that has started it: fail loudly instead of hanging."""
    if _forked_after_jax:
        raise RuntimeError(
            "spark_torch: this process was fork()-ed after JAX started in its parent, and JAX cannot run in such "
            "a child (it hangs). Start worker processes with 'spawn' or 'forkserver', e.g. "
            "DataLoader(..., multiprocessing_context='spawn') or torch.multiprocessing.set_start_method('spawn')")


def scan(current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params: list[torch.Tensor], dt: float,
         scheme: str, surrogate: str = "", surrogate_param: float = 0.0, recovery_checkpoints: bool = False,
         param_views: Optional[dict] = None):
    """What the module calls: the custom op :func:`izhikevich_scan` under ``torch.compile`` (an opaque
    node, fake shapes, registered autograd), a plain ``autograd.Function`` over the same
    implementation in eager mode (no dispatcher overhead per call), or, for small CPU calls on the native
    backend without recovery checkpoints, the native kernel's C loops called directly
    (:func:`spark_torch.native_calls.scan`: bit-identical, no JAX call). Same arguments and outputs, except
    that without anything to differentiate, ``v`` and ``u`` are the final state ``[1, *batch, *units]``
    (the kernel then writes no state traces). ``param_views``: a dict owned by the caller (the layer) in
    which the JAX views of ``params`` are kept between eager calls, so that they live as long as the
    layer and no longer."""
    if torch.compiler.is_compiling():
        return izhikevich_scan(current, v0, u0, params, dt, scheme, surrogate, surrogate_param, recovery_checkpoints)
    _check_not_forked()
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (current, v0, u0, *params))
    entry = None if recovery_checkpoints and differentiable else native_calls.entry_points_for(current)
    if entry is not None:
        return native_calls.scan(entry, current, v0, u0, params, float(dt), scheme, surrogate, surrogate_param,
                                 differentiable)
    if not differentiable:
        return _forward_impl(current, v0, u0, params, dt, scheme, surrogate, trace_state=False,
                             param_views=param_views)
    return _EagerScan.apply(current, v0, u0, dt, scheme, surrogate, surrogate_param, recovery_checkpoints, param_views,
                            *params)
