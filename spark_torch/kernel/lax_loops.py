"""The reference loops over time as ``lax.fori_loop``: the forward pass and its reverse (VJP) pass.

:func:`forward_loop` and :func:`reverse_loop` are the XLA backend (jitted as
:data:`spark_torch.kernel.xla_simulate_forward` / ``xla_simulate_backward``) and the definition that
the native kernel (:mod:`spark_torch.kernel.native`) reproduces. Both run over the first ``n_steps``
rows of a time buffer ``[T_buf, *batch, *units]``; ``n_steps`` is a *runtime* int32 scalar
(``0 <= n_steps <= T_buf``), so the loop is a while loop whose body XLA compiles the same way for
every buffer length: a sequence call, T one-step calls and a call on a padded buffer give
bit-identical results. Rows ``t >= n_steps`` of every ``[T_buf, ...]`` output are zero.

Each loop body is a module-level function; its loop-invariant inputs are bound with
:func:`functools.partial` (the reverse loop's in one :class:`_ReverseInputs`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from .model import (MIN_BUFFER_STEPS, IzhikevichParams, IzhikevichState, Trajectory, cast_params,
                    fire_and_reset, integrate, normalized, recovery_checkpoint_interval, step, sum_to_shape,
                    surrogate_derivative)

__all__ = ["forward_loop", "reverse_loop"]


def _at_least_two_rows(a):
    """Pad a ``[1, ...]`` time buffer with a zero row (inside the executable); others unchanged."""
    if a is None or jnp.ndim(a) == 0 or a.shape[0] >= MIN_BUFFER_STEPS:
        return a
    return jnp.concatenate([a, jnp.zeros((MIN_BUFFER_STEPS - a.shape[0], *a.shape[1:]), a.dtype)])


def _distinct_zeros(shape, dtype, k: int):
    """A zero buffer that XLA does not merge with the other ``k`` (0, 1, ...) built the same way.

    XLA merges identical ``zeros`` into one buffer and then gives every loop buffer its own *copy* of
    it: one extra read and write of ``[T, ...]`` per trace. ``(iota + k) * 0`` (floating point: XLA
    cannot fold it) is written once per buffer instead; its values are exactly +0.
    """
    if k == 0:
        return jnp.zeros(shape, dtype)
    iota = lax.broadcasted_iota(jnp.float32, shape, 0)
    return ((iota + k) * 0.0).astype(dtype)


def _row(a, t, like):
    """Row ``t`` of a per-step array; a 0-d or time-constant one (fewer dims than the time buffer
    ``like``) is the same at every step, broadcast to ``like``'s state shape. ``None`` stays ``None``."""
    if a is None:
        return None
    if jnp.ndim(a) < like.ndim:
        return jnp.broadcast_to(a.astype(like.dtype), like.shape[1:])
    return lax.dynamic_index_in_dim(a, t, keepdims=False)


# ---------------------------------------------------------------------------------------------- forward

def _check_recovery_every(every: int, n_buffer: int) -> None:
    if every and every != recovery_checkpoint_interval(n_buffer):
        raise ValueError(f"`recovery_every` (={every}) must be recovery_checkpoint_interval({n_buffer}) "
                         f"= {recovery_checkpoint_interval(n_buffer)} for a {n_buffer}-row buffer")


def _zero_traces(shape, dtype, spike_dtype, *, return_x: bool, trace_state: bool, trace_u: bool,
                 mem_in_loop: bool) -> tuple:
    """The forward's output buffers ``(spikes, x, v, u, mem)``, each ``shape`` or ``None`` when not
    written; the ones written are built by :func:`_distinct_zeros` with ``k = 0, 1, ...`` in that order."""
    wanted = ((True, spike_dtype), (return_x, dtype), (trace_state, dtype), (trace_u, dtype), (mem_in_loop, dtype))
    k = iter(range(len(wanted)))
    return tuple(_distinct_zeros(shape, buffer_dtype, next(k)) if want else None for want, buffer_dtype in wanted)


def _keep_checkpoint(checkpoints, u_before, t, every: int):
    """Row ``t // K`` of the checkpoints holds ``u`` before step ``K·(t // K)``: written at that block's
    first step (``t % K == 0``), rewritten unchanged at its other steps."""
    j = t // every
    kept = jnp.where(t % every == 0, u_before, lax.dynamic_index_in_dim(checkpoints, j, keepdims=False))
    return lax.dynamic_update_index_in_dim(checkpoints, kept, j, 0)


def _forward_step(t, carry, *, current, params: IzhikevichParams, dt: float, scheme: str, spike_dtype,
                  mem_in_loop: bool, every: int):
    """Step ``t`` of the forward loop: ``carry = (state, traces, checkpoints)`` before it, after it."""
    state, traces, checkpoints = carry
    (spike, x), nxt = step(state, lax.dynamic_index_in_dim(current, t, keepdims=False), params, dt=dt, scheme=scheme)
    values = (spike.astype(spike_dtype), x, nxt.v, nxt.u, normalized(nxt.v, params) if mem_in_loop else None)
    traces = tuple(None if buf is None else lax.dynamic_update_index_in_dim(buf, val, t, 0)
                   for buf, val in zip(traces, values))
    if checkpoints is not None:
        checkpoints = _keep_checkpoint(checkpoints, state.u, t, every)
    return nxt, traces, checkpoints


def _forward_result(final: IzhikevichState, traces: tuple, checkpoints, params: IzhikevichParams, n_steps,
                    n_rows: int, *, trace_state: bool, return_mem: bool) -> Trajectory:
    """The :class:`Trajectory` of :func:`forward_loop` from the loop's final carry, cut to ``n_rows``."""
    spikes, x, v, u, mem = traces
    if trace_state and return_mem:  # one vectorized pass after the loop; rows >= n_steps stay zero
        written = lax.broadcasted_iota(jnp.int32, v.shape, 0) < n_steps
        mem = jnp.where(written, normalized(v, params), jnp.zeros((), v.dtype))
    rows = lambda a: None if a is None else a[:n_rows]  # noqa: E731
    if not trace_state:
        return Trajectory(rows(spikes), rows(x), final.v[None], final.u[None], rows(mem))
    if checkpoints is not None:
        return Trajectory(rows(spikes), rows(x), rows(v), final.u[None], rows(mem), checkpoints)
    return Trajectory(*map(rows, (spikes, x, v, u, mem)))


def forward_loop(current, state: IzhikevichState, params: IzhikevichParams, n_steps, dt: float, scheme: str,
                 spike_dtype=None, return_x: bool = True, return_mem: bool = False,
                 trace_state: bool = True, recovery_every: int = 0) -> Trajectory:
    """The forward loop over the first ``n_steps`` rows of ``current`` (a buffer ``[T_buf, ...]``, pA).

    Returns a :class:`Trajectory` of ``T_buf`` rows. ``spike_dtype`` (default bool) is the spikes'
    dtype. ``return_x=False`` skips the ``x`` trace (a fused surrogate needs none); ``return_mem=True``
    adds ``mem`` (:func:`~spark_torch.kernel.model.normalized` of the post-reset ``v``).

    ``trace_state=False`` (inference: nothing will be differentiated) writes no ``v``/``u`` traces:
    ``v`` and ``u`` are then the final state only, ``[1, *batch, *units]``, and ``mem`` is written
    in the loop instead (same values, one ``[T, ...]`` buffer less to write).

    ``recovery_every=K > 0`` (with ``trace_state``; static) keeps ``u`` only at steps 0, K, 2K, ...
    (``Trajectory.u_checkpoints``, before the step) and returns the final ``u`` ``[1, ...]``: one
    ``[T, ...]`` buffer less to keep for the backward, which recomputes the rest block by block.
    ``K`` must be :func:`~spark_torch.kernel.model.recovery_checkpoint_interval` of the (padded)
    buffer length, as :func:`reverse_loop` assumes.
    """
    dtype = current.dtype
    spike_dtype = jnp.bool_ if spike_dtype is None else spike_dtype
    params = cast_params(params, dtype)
    n_rows = current.shape[0]
    current = _at_least_two_rows(current)
    shape = current.shape[1:]
    state = IzhikevichState(jnp.broadcast_to(jnp.asarray(state.v, dtype), shape),
                            jnp.broadcast_to(jnp.asarray(state.u, dtype), shape))
    mem_in_loop = return_mem and not trace_state
    every = recovery_every if trace_state else 0
    _check_recovery_every(every, current.shape[0])
    body = partial(_forward_step, current=current, params=params, dt=dt, scheme=scheme, spike_dtype=spike_dtype,
                   mem_in_loop=mem_in_loop, every=every)
    traces = _zero_traces(current.shape, dtype, spike_dtype, return_x=return_x, trace_state=trace_state,
                          trace_u=trace_state and not every, mem_in_loop=mem_in_loop)
    checkpoints = jnp.zeros((-(-current.shape[0] // every), *shape), dtype) if every else None
    final, traces, checkpoints = lax.fori_loop(0, n_steps, body, (state, traces, checkpoints))
    return _forward_result(final, traces, checkpoints, params, n_steps, n_rows, trace_state=trace_state,
                           return_mem=return_mem)


# ---------------------------------------------------------------------------------------------- reverse

class _ReverseInputs(NamedTuple):
    """What every reverse step reads; time buffers padded to at least ``MIN_BUFFER_STEPS`` rows."""

    current: jax.Array  # [T_buf, *batch, *units], pA
    v0: jax.Array  # initial state, broadcast to [*batch, *units]
    u0: jax.Array
    params: IzhikevichParams  # in the current's dtype
    spikes: jax.Array  # the forward's spikes [T_buf, ...] (bool or 0/1)
    v_trace: jax.Array  # the forward's post-step v [T_buf, ...]
    u_trace: Optional[jax.Array]  # post-step u [T_buf, ...]; None with recovery checkpoints
    cotangents: tuple  # (g_x, g_v, g_u, g_spikes, g_mem): each None, 0-d, [*batch, *units] or [T_buf, ...]
    param_mask: tuple  # static: which parameters' gradients are computed
    dt: float
    scheme: str
    surrogate: Optional[tuple]  # static (name, parameter) of a fused surrogate, else None


def _reverse_inputs(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                    dt: float, scheme: str, param_mask, surrogate) -> tuple[_ReverseInputs, Optional[jax.Array]]:
    """The reverse loop's inputs, padded and cast, and ``dL/du`` of the final ``u`` (checkpointed
    trajectories only, else ``None``)."""
    dtype = current.dtype
    params = cast_params(params, dtype)
    mask = tuple(param_mask) if param_mask is not None else (True,) * len(params)
    g_x, g_v, g_u, g_spikes, g_mem = (tuple(cotangents) + (None, None))[:5]
    if surrogate is None and g_spikes is not None:
        raise ValueError("a cotangent for the spikes needs a fused `surrogate`")
    checkpointed = traj.u_checkpoints is not None
    g_u_final, g_u = (g_u, None) if checkpointed else (None, g_u)
    per_step = lambda a: _at_least_two_rows(a) if a is not None and jnp.ndim(a) == current.ndim else a  # noqa: E731
    current, g_x, g_v, g_u, g_spikes, g_mem = map(per_step, (current, g_x, g_v, g_u, g_spikes, g_mem))
    spikes, v_trace = map(_at_least_two_rows, (traj.spikes, traj.v))
    u_trace = None if checkpointed else _at_least_two_rows(traj.u)
    v0, u0 = (jnp.broadcast_to(jnp.asarray(a, dtype), current.shape[1:]) for a in (state.v, state.u))
    inputs = _ReverseInputs(current, v0, u0, params, spikes, v_trace, u_trace, (g_x, g_v, g_u, g_spikes, g_mem),
                            mask, dt, scheme, surrogate)
    return inputs, g_u_final


def _before(trace, initial, t):
    """The state before step ``t``: ``initial`` at ``t = 0``, else row ``t - 1`` of the post-step trace."""
    return jnp.where(t == 0, initial, lax.dynamic_index_in_dim(trace, jnp.maximum(t - 1, 0), keepdims=False))


def _spike_at(inputs: _ReverseInputs, t):
    """The forward's spike mask at step ``t`` (boolean; a 0/1 trace is compared per row, not copied)."""
    spike = lax.dynamic_index_in_dim(inputs.spikes, t, keepdims=False)
    return spike if spike.dtype == jnp.bool_ else spike != 0


def _local_step(inputs: _ReverseInputs, v, u, current, wanted, spike):
    """One step from ``(v, u)`` with the recorded ``spike``, as a function of the wanted parameters:
    ``(x, v_next, u_next[, mem_next])`` (``mem_next`` when ``mem`` has a cotangent)."""
    wanted = iter(wanted)
    p = IzhikevichParams(*(next(wanted) if m else q for q, m in zip(inputs.params, inputs.param_mask)))
    v_star, u_star = integrate(v, u, current, p, inputs.dt, inputs.scheme)
    x, v_next, u_next = fire_and_reset(v_star, u_star, spike, p)
    return (x, v_next, u_next) if inputs.cotangents[4] is None else (x, v_next, u_next, normalized(v_next, p))


def _reverse_step(inputs: _ReverseInputs, t, u, carry):
    """Back through step ``t`` from the pre-step recovery ``u``.

    ``carry = (dL/dv, dL/du after step t, dL/d wanted parameters so far, dL/dcurrent buffer)``; returns
    it for the state before step ``t``, with row ``t`` of ``dL/dcurrent`` written.
    """
    g_v_next, g_u_next, g_wanted, g_current = carry
    v = _before(inputs.v_trace, inputs.v0, t)
    gx_t, gv_t, gu_t, gs_t, gm_t = (_row(a, t, inputs.current) for a in inputs.cotangents)
    state_shape = inputs.current.shape[1:]
    wanted = tuple(jnp.broadcast_to(q, state_shape) for q, m in zip(inputs.params, inputs.param_mask) if m)
    (x_t, *_), vjp = jax.vjp(partial(_local_step, inputs, spike=_spike_at(inputs, t)), v, u,
                             _row(inputs.current, t, inputs.current), wanted)
    g_v_post = g_v_next if gv_t is None else gv_t + g_v_next
    g_u_post = g_u_next if gu_t is None else gu_t + g_u_next
    g_x_t = jnp.zeros_like(v) if gx_t is None else gx_t
    if gs_t is not None:
        g_x_t = g_x_t + gs_t * surrogate_derivative(*inputs.surrogate, x_t)
    g_v_prev, g_u_prev, g_i, g_p = vjp((g_x_t, g_v_post, g_u_post) + (() if gm_t is None else (gm_t,)))
    g_current = lax.dynamic_update_index_in_dim(g_current, g_i, t, 0)
    return g_v_prev, g_u_prev, tuple(map(jnp.add, g_wanted, g_p)), g_current


def _reverse_step_from_trace(inputs: _ReverseInputs, n_steps, k, carry):
    """Iteration ``k`` of the reverse loop over a full ``u`` trace: step ``t = n_steps - 1 - k``."""
    t = n_steps - 1 - k
    return _reverse_step(inputs, t, _before(inputs.u_trace, inputs.u0, t), carry)


def _recompute_recovery(inputs: _ReverseInputs, first, t, u_block):
    """The forward's ``u`` update of step ``t`` with its recorded spike: row ``t - first + 1`` of
    ``u_block`` (the pre-step ``u`` of the block that starts at step ``first``)."""
    u = lax.dynamic_index_in_dim(u_block, t - first, keepdims=False)
    v_star, u_star = integrate(_before(inputs.v_trace, inputs.v0, t), u, _row(inputs.current, t, inputs.current),
                               inputs.params, inputs.dt, inputs.scheme)
    u_next = fire_and_reset(v_star, u_star, _spike_at(inputs, t), inputs.params)[2]
    return lax.dynamic_update_index_in_dim(u_block, u_next, t - first + 1, 0)


def _reverse_step_in_block(inputs: _ReverseInputs, u_block, first, stop, i, carry):
    """Iteration ``i`` of the reverse loop over the block ``[first, stop)``: step ``t = stop - 1 - i``."""
    t = stop - 1 - i
    return _reverse_step(inputs, t, lax.dynamic_index_in_dim(u_block, t - first, keepdims=False), carry)


def _reverse_block(inputs: _ReverseInputs, checkpoints, n_steps, n_blocks, every: int, k, carry):
    """Block ``k`` from the end: recompute its pre-step ``u`` from its checkpoint (bit-identical to the
    forward's), then run its reverse steps, last first."""
    first = (n_blocks - 1 - k) * every
    stop = jnp.minimum(first + every, n_steps)
    checkpoint = lax.dynamic_index_in_dim(checkpoints, first // every, keepdims=False)
    u_block = jnp.zeros((every, *inputs.current.shape[1:]), inputs.current.dtype).at[0].set(checkpoint)
    u_block = lax.fori_loop(first, stop - 1, partial(_recompute_recovery, inputs, first), u_block)
    return lax.fori_loop(0, stop - first, partial(_reverse_step_in_block, inputs, u_block, first, stop), carry)


def _reduced_gradients(g_v0, g_u0, g_wanted, state: IzhikevichState, params: IzhikevichParams, mask):
    """The accumulated ``[*batch, *units]`` gradients reduced to the shapes of ``state`` and ``params``
    (``None`` for a parameter left out by ``mask``)."""
    g_wanted = iter(g_wanted)
    g_params = IzhikevichParams(*(sum_to_shape(next(g_wanted), jnp.shape(q)) if m else None
                                  for q, m in zip(params, mask)))
    g_state = IzhikevichState(sum_to_shape(g_v0, jnp.shape(state.v)), sum_to_shape(g_u0, jnp.shape(state.u)))
    return g_state, g_params


def reverse_loop(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                 n_steps, dt: float, scheme: str, param_mask: tuple[bool, ...] | None = None,
                 surrogate: tuple[str, float] | None = None):
    """Reverse loop: cotangents ``(dL/dx, dL/dv_trace, dL/du_trace[, dL/dspikes[, dL/dmem]])`` -> grads
    ``(g_current, g_state, g_params)`` of (current, state, params), over the first ``n_steps`` (runtime
    scalar) rows of the buffers.

    With ``surrogate=(name, param)`` (static) the spikes' cotangent is turned into ``dL/dx`` inside
    the loop with :func:`~spark_torch.kernel.model.surrogate_derivative` (fused surrogate: no ``x``
    trace is needed). ``dL/dmem`` is the cotangent of ``Trajectory.mem`` (it reaches ``v`` and, through
    the normalization, ``v_r`` and ``v_pk``).

    A cotangent may be ``None`` (that output was not used), 0-d (the same value everywhere, as for
    ``loss = y.sum()``), time-constant ``[*batch, *units]`` (one row for every step, as for a loss on
    ``y.sum(0)``: spike-count losses) or per-step ``[T_buf, ...]``; the first two forms cross
    without a ``[T, B, N]`` copy. ``traj.x`` is not needed. Each step is
    re-integrated from the saved pre-step state (``traj.v[t-1]``, or the initial state at ``t = 0``)
    and differentiated with ``jax.vjp``; the recorded spikes are reused, so the backward sees exactly
    the forward's resets. ``param_mask`` (static) selects the parameters whose gradients are wanted
    (default: all); the others are returned as ``None`` without being computed. Parameter gradients are
    accumulated at the state's shape ``[*batch, *units]`` (elementwise adds in the loop) and reduced
    once at the end. Rows ``t >= n_steps`` of the current's gradient are zero.

    With recovery checkpoints (``traj.u_checkpoints``; ``traj.u`` is then the final ``u`` and ``dL/du``
    its cotangent) the loop runs block by block, last block first: each block of ``K`` steps first
    recomputes its pre-step ``u`` forward from its checkpoint, with the forward's own operations and
    recorded spikes (bit-identical to the trace it replaces), then runs the same reverse steps.
    """
    n_rows = current.shape[0]
    inputs, g_u_final = _reverse_inputs(current, state, params, traj, cotangents, dt, scheme, param_mask, surrogate)
    state_shape, dtype = inputs.current.shape[1:], inputs.current.dtype
    zeros_state = jnp.zeros(state_shape, dtype)
    g_u_last = zeros_state if g_u_final is None else jnp.broadcast_to(
        (g_u_final[0] if jnp.ndim(g_u_final) else g_u_final).astype(dtype), state_shape)
    init = (zeros_state, g_u_last, tuple(zeros_state for m in inputs.param_mask if m),
            jnp.zeros(inputs.current.shape, dtype))
    if traj.u_checkpoints is None:
        body = partial(_reverse_step_from_trace, inputs, n_steps)
        g_v0, g_u0, g_wanted, g_current = lax.fori_loop(0, n_steps, body, init)
    else:
        every = recovery_checkpoint_interval(inputs.current.shape[0])
        n_blocks = (n_steps + every - 1) // every
        body = partial(_reverse_block, inputs, traj.u_checkpoints, n_steps, n_blocks, every)
        g_v0, g_u0, g_wanted, g_current = lax.fori_loop(0, n_blocks, body, init)
    g_state, g_params = _reduced_gradients(g_v0, g_u0, g_wanted, state, inputs.params, inputs.param_mask)
    return g_current[:n_rows], g_state, g_params
