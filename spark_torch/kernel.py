r"""The Izhikevich (2003) neuron as pure JAX functions: one step, a compiled loop over time, and its VJP.

This module imports no torch; :mod:`spark_torch.ops` wraps it for PyTorch.

Model (Izhikevich, "Simple model of spiking neurons", IEEE TNN 14(6), 2003, doi:10.1109/TNN.2003.820440),
per neuron, with membrane ``v`` (mV), recovery ``u`` (mV/ms), input current ``I`` (pA), step ``dt`` (ms)::

    f(v, u, I) = 0.04 v² + 5 v + 140 − u + R·I                       (mV/ms; u is NOT scaled by R)

    scheme "euler":           v* = v + dt·f(v, u, I)
                              u* = u + dt·a·(b·v − u)                (u uses the OLD v)
    scheme "izhikevich2003":  v½ = v + (dt/2)·f(v, u, I)
                              v* = v½ + (dt/2)·f(v½, u, I)
                              u* = u + dt·a·(b·v* − u)               (the paper's MATLAB code)

    bound   v½, v* are confined to [−V_LIMIT, V_LIMIT] = [−1e5, 1e5] mV  (see below)
    spike   s      = v* >= v_pk                                      (tested on the integrated value)
    reset   v_next = c      if s else v*
            u_next = u* + d if s else u*,  confined to [−V_LIMIT, V_LIMIT] mV/ms
    output  x      = (v* − v_pk) / (v_pk − v_r)                      (0 at threshold, −1 at rest)

Bound: the quadratic makes the model blow up for large inputs (the next step squares the membrane, and
in the paper's scheme ``u*`` feeds on the overshoot ``v*``), so an extreme but finite current — e.g. |R·I|
near the dtype's maximum, or a single 1e6-pA pulse in scheme ``"izhikevich2003"`` — would overflow to
Inf and then NaN. Like NEST's ``V_min``, every integrated membrane value (``v½`` and ``v*``) is clipped to
``±V_LIMIT``; its gradient is 0 beyond the bound (1 on it, as ``torch.clamp``'s). Ordinary trajectories
never reach it (the paper's scheme overshoots to ~2e3 mV at drive R·I = 100, Euler stays below ~1e3), so
it changes nothing there; it guarantees that finite input gives finite state, spikes, ``x`` and gradients.
The recovery variable is confined the same way after its update: explicit Euler on ``u`` is unstable once
``dt·a > 2`` (``u`` then grows by ``|1 − dt·a|`` per step), and a large negative ``d`` drives ``u`` to −Inf,
so a config that passes validation (finite fields, membrane levels within ``±V_LIMIT``) cannot reach
Inf/NaN either; ordinary trajectories keep ``|u|`` in the hundreds.

Gradients treat the spike in the reset as a constant (as snnTorch detaches its reset); the spike
itself is not differentiated here: the caller applies a surrogate to ``x`` and sends back ``dL/dx``.

Shapes: ``current`` is ``[T, *batch, *units]``; parameters broadcast against ``[*batch, *units]``
(typically ``[*units]``, one value per neuron); the state is ``[*batch, *units]``.

Precision: everything is computed in the dtype of ``current``. JAX computes float64 as float32 unless
x64 is enabled, so :func:`precision_scope` enables it (thread-locally, for the duration of a call)
when the input is 64-bit; the user's global JAX setting is never changed.

Backends: the loops run as XLA code (:data:`xla_simulate_forward`, :data:`xla_simulate_backward`, a
``lax.fori_loop`` over time; ``_simulate`` and ``_simulate_bwd`` are the reference) or as one fused C++
call per direction (:mod:`spark_torch.native`; CPU arrays; no fused multiply-adds, so it agrees with the
XLA loop to rounding). :data:`simulate_forward`, :data:`simulate_backward` and :func:`simulate` use the
active one: ``SPARK_TORCH_KERNEL=native|xla|auto`` in the environment (default ``auto``: native if it
builds, else xla with one warning), :func:`set_backend`, the context manager :func:`use_backend`, and
:func:`backend` (the one in use); details in :mod:`spark_torch._backend`.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from . import _backend
from . import config as _config
from ._backend import backend, set_backend, use_backend  # noqa: F401  (public here; see below)

SCHEMES = _config.SCHEMES

#: Bound on every integrated membrane value, ``v½`` and ``v*`` (mV), and on ``u`` (mV/ms): module docstring.
V_LIMIT = _config.V_LIMIT


class IzhikevichParams(NamedTuple):
    """Per-neuron model parameters, each broadcastable to ``[*batch, *units]``.

    Field names follow Spark's ``IzhikevichSomaConfig``; the paper's symbols are in brackets.
    """

    potential_rest: jax.Array  # v_r [mV]: rest state (v = v_r, u = b·v_r) and the scale of x
    potential_reset: jax.Array  # c [mV]: v after a spike
    resistance: jax.Array  # R [GΩ]: drive = R·I, so 100 pA -> 10 mV/ms
    threshold: jax.Array  # v_pk [mV]: spike cut-off (the paper's apex, 30 mV)
    recovery_timescale: jax.Array  # a [1/ms]
    recovery_sensitivity: jax.Array  # b [dimensionless]
    recovery_update: jax.Array  # d [mV/ms]: added to u after a spike


if IzhikevichParams._fields != _config.IzhikevichSomaConfig.MODEL_FIELDS:  # the op and the layer pass them by position
    raise ImportError("IzhikevichParams must list IzhikevichSomaConfig.MODEL_FIELDS, in that order")


class IzhikevichState(NamedTuple):
    """Neuron state, each ``[*batch, *units]``: membrane ``v`` [mV] and recovery ``u`` [mV/ms]."""

    v: jax.Array
    u: jax.Array


class Trajectory(NamedTuple):
    """What :func:`simulate` returns, each ``[T, *batch, *units]``.

    ``spikes`` is boolean; ``x`` is the normalized pre-reset distance to threshold; ``v`` and ``u`` are
    the post-step (post-reset) state, so ``Trajectory.v[-1], Trajectory.u[-1]`` is the final state.
    ``mem`` (only when asked for, else ``None``) is the post-reset membrane in snnTorch's normalized
    units, ``(v − v_r) / (v_pk − v_r)``.

    With recovery checkpoints (``simulate_forward(..., recovery_every=K)``) ``u`` is the final state
    only, ``[1, *batch, *units]``, and ``u_checkpoints`` ``[ceil(T_buf / K), *batch, *units]`` holds
    the pre-step ``u`` of steps 0, K, 2K, ...: :func:`simulate_backward` recomputes the rest.
    """

    spikes: jax.Array
    x: jax.Array
    v: jax.Array
    u: jax.Array
    mem: Optional[jax.Array] = None
    u_checkpoints: Optional[jax.Array] = None


def precision_scope(dtype) -> contextlib.AbstractContextManager:
    """Context in which JAX honours ``dtype``: enables x64 (thread-locally) for 64-bit dtypes.

    ``dtype``: a NumPy/JAX dtype, or anything with an ``itemsize`` (e.g. ``torch.float64``).
    """
    itemsize = dtype.itemsize if isinstance(getattr(dtype, "itemsize", None), int) else np.dtype(dtype).itemsize
    if itemsize == 8:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def rest_state(params: IzhikevichParams, shape, dtype) -> IzhikevichState:
    """The state after build and after ``reset()``: ``v = v_r``, ``u = b·v_r``, broadcast to ``shape``."""
    v = jnp.broadcast_to(jnp.asarray(params.potential_rest, dtype), shape)
    u = jnp.broadcast_to(jnp.asarray(params.recovery_sensitivity * params.potential_rest, dtype), shape)
    return IzhikevichState(v, u)


def _drive(v, u, current, p: IzhikevichParams):
    """dv/dt [mV/ms] = 0.04 v² + 5 v + 140 − u + R·I (evaluated left to right, as written)."""
    return 0.04 * v * v + 5.0 * v + 140.0 - u + p.resistance * current


def _confine(v):
    """Clip an integrated membrane value to ``[-V_LIMIT, V_LIMIT]`` mV (NaN stays NaN).

    Written with selects rather than ``jnp.clip``: the same values, but its derivative is 1 inside the
    closed interval and 0 beyond it (as ``torch.clamp``'s), where ``clip``'s max/min rule splits ties
    with a division, which XLA will not duplicate into the reverse loop's fusions (two more passes
    over the state per step in the backward).
    """
    return jnp.where(v > V_LIMIT, V_LIMIT, jnp.where(v < -V_LIMIT, -V_LIMIT, v))


def _integrate(v, u, current, p: IzhikevichParams, dt: float, scheme: str):
    """One integration step before spike detection: returns ``(v*, u*)``."""
    a, b = p.recovery_timescale, p.recovery_sensitivity
    if scheme == "euler":
        v_star = _confine(v + dt * _drive(v, u, current, p))
        u_star = u + dt * a * (b * v - u)
    elif scheme == "izhikevich2003":
        half = 0.5 * dt
        v_half = _confine(v + half * _drive(v, u, current, p))
        v_star = _confine(v_half + half * _drive(v_half, u, current, p))
        u_star = u + dt * a * (b * v_star - u)
    else:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    return v_star, u_star


def _normalized(v, p: IzhikevichParams):
    """snnTorch-style membrane: ``(v − v_r) · (1 / (v_pk − v_r))`` (0 at rest, 1 at the spike cut-off).

    Written as a product with the reciprocal, which is what XLA makes of a division by a loop-invariant
    value in some fusions but not in others: spelled out, every executable (traced or not, any batch
    size) rounds it the same way. Within one rounding of the quotient ``(v − v_r) / (v_pk − v_r)``.
    """
    return (v - p.potential_rest) * (1.0 / (p.threshold - p.potential_rest))


def _fire_and_reset(v_star, u_star, spike, p: IzhikevichParams):
    """Given the spike mask, the normalized distance ``x`` and the post-reset state."""
    x = (v_star - p.threshold) / (p.threshold - p.potential_rest)
    v_next = jnp.where(spike, p.potential_reset, v_star)
    u_next = _confine(jnp.where(spike, u_star + p.recovery_update, u_star))
    return x, v_next, u_next


def step(state: IzhikevichState, current, params: IzhikevichParams, *, dt: float, scheme: str = "euler"):
    """Advance one ``dt``. Returns ``((spike, x), next_state)``; ``spike`` is boolean."""
    v_star, u_star = _integrate(state.v, state.u, current, params, dt, scheme)
    spike = v_star >= params.threshold
    x, v_next, u_next = _fire_and_reset(v_star, u_star, spike, params)
    return (spike, x), IzhikevichState(v_next, u_next)


def _cast_params(params: IzhikevichParams, dtype) -> IzhikevichParams:
    return IzhikevichParams(*(jnp.asarray(p, dtype) for p in params))


def surrogate_derivative(name: str, param: float, x):
    """d spike / d x of snnTorch's built-in surrogates, for the fused backward (same formulas).

    ``"atan"`` (alpha): α/2 / (1 + (π/2·α·x)²); ``"fast_sigmoid"`` (slope k): 1/(k|x| + 1)²;
    ``"sigmoid"`` (slope k): k·e^(−kx)/(e^(−kx) + 1)².
    """
    if name == "atan":
        return param / 2 / (1 + (jnp.pi / 2 * param * x) ** 2)
    if name == "fast_sigmoid":
        return 1.0 / (param * jnp.abs(x) + 1.0) ** 2
    if name == "sigmoid":
        e = jnp.exp(-param * x)
        return param * e / ((e + 1) ** 2)
    raise ValueError(f"`surrogate` (={name!r}) must be one of ('atan', 'fast_sigmoid', 'sigmoid')")


#: Time buffers are at least this long: XLA simplifies a one-trip loop into straight-line code that
#: rounds differently, so a length-1 call runs in a 2-row buffer (see :func:`_simulate`).
MIN_BUFFER_STEPS = 2


def recovery_checkpoint_interval(n_buffer: int) -> int:
    """Steps between two recovery checkpoints for a loop buffer of ``n_buffer`` rows: ``ceil(√n_buffer)``.

    Keeping ``u`` every ``K`` steps and recomputing a block of ``K`` in the backward needs
    ``ceil(n/K) + K`` rows of ``u`` instead of ``n``; ``K = √n`` makes that smallest (~2√n rows).
    """
    return max(1, math.isqrt(max(n_buffer, MIN_BUFFER_STEPS) - 1) + 1)


def _at_least_two_rows(a):
    """Pad a ``[1, ...]`` time buffer with a zero row (inside the executable); others unchanged."""
    if a is None or jnp.ndim(a) == 0 or a.shape[0] >= MIN_BUFFER_STEPS:
        return a
    return jnp.concatenate([a, jnp.zeros((MIN_BUFFER_STEPS - a.shape[0], *a.shape[1:]), a.dtype)])


def _distinct_zeros(shape, dtype, k: int):
    """A zero buffer that XLA does not merge with the other ``k`` (0, 1, ...) built the same way.

    XLA merges identical ``zeros`` into one buffer and then gives every loop buffer its own *copy* of
    it: one extra read and write of ``[T, ...]`` per trace. ``(iota + k) * 0`` (floating point: XLA
    cannot fold it) is written once per buffer instead; its values are exactly +0. (Kernel forward at
    50×256×4096, with the select-based :func:`_confine`: 148 -> 126 ms in one A/B series, equal in a
    later one; this VM's memory bandwidth varies.)
    """
    if k == 0:
        return jnp.zeros(shape, dtype)
    iota = lax.broadcasted_iota(jnp.float32, shape, 0)
    return ((iota + k) * 0.0).astype(dtype)


def _simulate(current, state: IzhikevichState, params: IzhikevichParams, n_steps, dt: float, scheme: str,
              spike_dtype=None, return_x: bool = True, return_mem: bool = False,
              trace_state: bool = True, recovery_every: int = 0) -> Trajectory:
    """The forward loop over the first ``n_steps`` rows of ``current`` (a buffer ``[T_buf, ...]``).

    ``n_steps`` is a *runtime* int32 scalar (``0 <= n_steps <= T_buf``), so the loop is a while loop
    whose body XLA compiles the same way for every buffer length: a sequence call, T one-step calls
    and a call on a padded buffer give bit-identical results. Rows ``t >= n_steps`` of the outputs
    are zero. ``return_x=False`` skips the ``x`` trace (a fused surrogate needs none);
    ``return_mem=True`` adds ``mem`` (:func:`_normalized` of the post-reset ``v``).

    ``trace_state=False`` (inference: nothing will be differentiated) writes no ``v``/``u`` traces:
    ``v`` and ``u`` are then the final state only, ``[1, *batch, *units]``, and ``mem`` is written
    in the loop instead (same values, one ``[T, ...]`` buffer less to write).

    ``recovery_every=K > 0`` (with ``trace_state``; static) keeps ``u`` only at steps 0, K, 2K, ...
    (``Trajectory.u_checkpoints``, before the step) and returns the final ``u`` ``[1, ...]``: one
    ``[T, ...]`` buffer less to keep for the backward, which recomputes the rest block by block.
    ``K`` must be :func:`recovery_checkpoint_interval` of the (padded) buffer length, as the backward
    assumes.
    """
    dtype = current.dtype
    spike_dtype = jnp.bool_ if spike_dtype is None else spike_dtype
    params = _cast_params(params, dtype)
    n_rows = current.shape[0]
    current = _at_least_two_rows(current)
    shape = current.shape[1:]
    state = IzhikevichState(jnp.broadcast_to(jnp.asarray(state.v, dtype), shape),
                            jnp.broadcast_to(jnp.asarray(state.u, dtype), shape))
    mem_in_loop = return_mem and not trace_state
    every = recovery_every if trace_state else 0
    if every and every != recovery_checkpoint_interval(current.shape[0]):
        raise ValueError(f"`recovery_every` (={every}) must be recovery_checkpoint_interval({current.shape[0]}) "
                         f"= {recovery_checkpoint_interval(current.shape[0])} for a {current.shape[0]}-row buffer")

    def body(t, carry):
        state, traces, checkpoints = carry
        (spike, x), nxt = step(state, lax.dynamic_index_in_dim(current, t, keepdims=False), params,
                               dt=dt, scheme=scheme)
        values = (spike.astype(spike_dtype), x, nxt.v, nxt.u, _normalized(nxt.v, params) if mem_in_loop else None)
        traces = tuple(None if buf is None else lax.dynamic_update_index_in_dim(buf, val, t, 0)
                       for buf, val in zip(traces, values))
        if checkpoints is not None:  # row t // K holds u before step K·(t // K): written at its first step
            j = t // every
            kept = jnp.where(t % every == 0, state.u, lax.dynamic_index_in_dim(checkpoints, j, keepdims=False))
            checkpoints = lax.dynamic_update_index_in_dim(checkpoints, kept, j, 0)
        return nxt, traces, checkpoints

    n_buffers = iter(range(len(Trajectory._fields)))

    def buffer(wanted, buffer_dtype=dtype):
        return _distinct_zeros(current.shape, buffer_dtype, next(n_buffers)) if wanted else None

    traces = (buffer(True, spike_dtype), buffer(return_x), buffer(trace_state), buffer(trace_state and not every),
              buffer(mem_in_loop))
    checkpoints = jnp.zeros((-(-current.shape[0] // every), *shape), dtype) if every else None
    final, (spikes, x, v, u, mem), checkpoints = lax.fori_loop(0, n_steps, body, (state, traces, checkpoints))
    if trace_state and return_mem:  # one vectorized pass after the loop; rows >= n_steps stay zero
        written = lax.broadcasted_iota(jnp.int32, v.shape, 0) < n_steps
        mem = jnp.where(written, _normalized(v, params), jnp.zeros((), dtype))
    rows = lambda a: None if a is None else a[:n_rows]  # noqa: E731
    if not trace_state:
        return Trajectory(rows(spikes), rows(x), final.v[None], final.u[None], rows(mem))
    if every:
        return Trajectory(rows(spikes), rows(x), rows(v), final.u[None], rows(mem), checkpoints)
    return Trajectory(*map(rows, (spikes, x, v, u, mem)))


def _simulate_bwd(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                  n_steps, dt: float, scheme: str, param_mask: tuple[bool, ...] | None = None,
                  surrogate: tuple[str, float] | None = None):
    """Reverse loop: cotangents ``(dL/dx, dL/dv_trace, dL/du_trace[, dL/dspikes[, dL/dmem]])`` -> grads
    of (current, state, params), over the first ``n_steps`` (runtime scalar) rows of the buffers.

    With ``surrogate=(name, param)`` (static) the spikes' cotangent is turned into ``dL/dx`` inside
    the loop with :func:`surrogate_derivative` (fused surrogate: no ``x`` trace is needed). ``dL/dmem``
    is the cotangent of ``Trajectory.mem`` (it reaches ``v`` and, through the normalization, ``v_r``
    and ``v_pk``).

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
    dtype = current.dtype
    params = _cast_params(params, dtype)
    mask = tuple(param_mask) if param_mask is not None else (True,) * len(params)
    g_x, g_v, g_u, g_spikes, g_mem = (tuple(cotangents) + (None, None))[:5]
    if surrogate is None and g_spikes is not None:
        raise ValueError("a cotangent for the spikes needs a fused `surrogate`")
    checkpointed = traj.u_checkpoints is not None
    g_u_final, g_u = (g_u, None) if checkpointed else (None, g_u)
    n_rows = current.shape[0]
    per_step = lambda a: _at_least_two_rows(a) if a is not None and jnp.ndim(a) == current.ndim else a  # noqa: E731
    current, g_x, g_v, g_u, g_spikes, g_mem = map(per_step, (current, g_x, g_v, g_u, g_spikes, g_mem))
    spikes, v_trace = map(_at_least_two_rows, (traj.spikes, traj.v))
    u_trace = None if checkpointed else _at_least_two_rows(traj.u)
    state_shape = current.shape[1:]
    v0, u0 = (jnp.broadcast_to(jnp.asarray(a, dtype), state_shape) for a in (state.v, state.u))

    def row(a, t):
        """Row ``t`` of a per-step cotangent; a 0-d or time-constant one is the same at every step."""
        if a is None:
            return None
        if jnp.ndim(a) < current.ndim:
            return jnp.broadcast_to(a.astype(dtype), state_shape)
        return lax.dynamic_index_in_dim(a, t, keepdims=False)

    def before(trace, initial, t):
        """The state before step ``t``: ``initial`` at ``t = 0``, else row ``t - 1`` of the post-step trace."""
        return jnp.where(t == 0, initial, lax.dynamic_index_in_dim(trace, jnp.maximum(t - 1, 0), keepdims=False))

    def spike_at(t):
        spike = lax.dynamic_index_in_dim(spikes, t, keepdims=False)
        return spike if spike.dtype == jnp.bool_ else spike != 0  # per row: no [T, ...] bool copy

    def local(v, u, i, wanted, spike):
        wanted = iter(wanted)
        p = IzhikevichParams(*(next(wanted) if m else q for q, m in zip(params, mask)))
        v_star, u_star = _integrate(v, u, i, p, dt, scheme)
        x, v_next, u_next = _fire_and_reset(v_star, u_star, spike, p)
        return (x, v_next, u_next) if g_mem is None else (x, v_next, u_next, _normalized(v_next, p))

    def reverse_step(t, u, carry):
        """Back through step ``t`` from the pre-step recovery ``u``."""
        g_v_next, g_u_next, g_wanted, g_current = carry
        v = before(v_trace, v0, t)
        gx_t, gv_t, gu_t, gs_t, gm_t = (row(a, t) for a in (g_x, g_v, g_u, g_spikes, g_mem))
        wanted = tuple(jnp.broadcast_to(q, state_shape) for q, m in zip(params, mask) if m)
        (x_t, *_), vjp = jax.vjp(partial(local, spike=spike_at(t)), v, u, row(current, t), wanted)
        g_v_post = g_v_next if gv_t is None else gv_t + g_v_next
        g_u_post = g_u_next if gu_t is None else gu_t + g_u_next
        g_x_t = jnp.zeros_like(v) if gx_t is None else gx_t
        if gs_t is not None:
            g_x_t = g_x_t + gs_t * surrogate_derivative(*surrogate, x_t)
        g_v_prev, g_u_prev, g_i, g_p = vjp((g_x_t, g_v_post, g_u_post) + (() if gm_t is None else (gm_t,)))
        g_current = lax.dynamic_update_index_in_dim(g_current, g_i, t, 0)
        return g_v_prev, g_u_prev, tuple(map(jnp.add, g_wanted, g_p)), g_current

    zeros_state = jnp.zeros(state_shape, dtype)
    g_u_last = zeros_state if g_u_final is None else jnp.broadcast_to(
        (g_u_final[0] if jnp.ndim(g_u_final) else g_u_final).astype(dtype), state_shape)
    init = (zeros_state, g_u_last, tuple(zeros_state for m in mask if m), jnp.zeros(current.shape, dtype))
    if not checkpointed:
        def body(k, carry):
            t = n_steps - 1 - k
            return reverse_step(t, before(u_trace, u0, t), carry)

        g_v0, g_u0, g_wanted, g_current = lax.fori_loop(0, n_steps, body, init)
    else:
        every = recovery_checkpoint_interval(current.shape[0])
        n_blocks = (n_steps + every - 1) // every

        def block(k, carry):
            first = (n_blocks - 1 - k) * every
            stop = jnp.minimum(first + every, n_steps)
            checkpoint = lax.dynamic_index_in_dim(traj.u_checkpoints, first // every, keepdims=False)

            def recompute(t, u_block):  # the forward's u update of step t, with its recorded spike
                u = lax.dynamic_index_in_dim(u_block, t - first, keepdims=False)
                v_star, u_star = _integrate(before(v_trace, v0, t), u, row(current, t), params, dt, scheme)
                u_next = _fire_and_reset(v_star, u_star, spike_at(t), params)[2]
                return lax.dynamic_update_index_in_dim(u_block, u_next, t - first + 1, 0)

            u_block = jnp.zeros((every, *state_shape), dtype).at[0].set(checkpoint)
            u_block = lax.fori_loop(first, stop - 1, recompute, u_block)
            def body(i, carry):
                t = stop - 1 - i
                return reverse_step(t, lax.dynamic_index_in_dim(u_block, t - first, keepdims=False), carry)

            return lax.fori_loop(0, stop - first, body, carry)

        g_v0, g_u0, g_wanted, g_current = lax.fori_loop(0, n_blocks, block, init)
    g_wanted = iter(g_wanted)
    g_params = IzhikevichParams(*(_sum_to_shape(next(g_wanted), jnp.shape(q)) if m else None
                                  for q, m in zip(params, mask)))
    g_state = IzhikevichState(_sum_to_shape(g_v0, jnp.shape(state.v)), _sum_to_shape(g_u0, jnp.shape(state.u)))
    return g_current[:n_rows], g_state, g_params


def _sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to ``shape`` (the adjoint of ``broadcast_to``)."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


xla_simulate_forward = jax.jit(_simulate, static_argnames=("dt", "scheme", "spike_dtype", "return_x", "return_mem",
                                                          "trace_state", "recovery_every"))
xla_simulate_forward.__doc__ = """Jitted XLA forward loop: ``(current, state, params, n_steps, dt, scheme[, spike_dtype,
return_x, return_mem, trace_state, recovery_every]) -> Trajectory`` (see ``_simulate``). Pass ``n_steps`` as an
array (e.g. ``np.int32(T)``): one executable per buffer shape."""

xla_simulate_backward = jax.jit(_simulate_bwd, static_argnames=("dt", "scheme", "param_mask", "surrogate"))
xla_simulate_backward.__doc__ = """Jitted XLA reverse loop: ``(current, state, params, traj, (g_x, g_v, g_u[, g_spikes[,
g_mem]]), n_steps, dt, scheme[, param_mask, surrogate]) -> (g_current, g_state, g_params)``."""

simulate_forward, simulate_backward = _backend.dispatchers(xla_simulate_forward, xla_simulate_backward)
simulate_forward.__doc__ = """The forward loop on the active backend (:func:`backend`): the arguments and results of
:data:`xla_simulate_forward`; the native kernel (:mod:`spark_torch.native`) for CPU arrays when it is in use."""
simulate_backward.__doc__ = """The reverse loop on the active backend (:func:`backend`): the arguments and results of
:data:`xla_simulate_backward`; the native kernel for CPU arrays when it is in use."""


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def simulate(current, state: IzhikevichState, params: IzhikevichParams, dt: float, scheme: str = "euler") -> Trajectory:
    """Run the model over ``current`` ``[T, *batch, *units]`` (pA) from ``state``; differentiable.

    Differentiating through ``spikes`` is not possible (they are boolean); differentiate ``x``
    (via a surrogate), ``v`` or ``u``. Gradients flow to ``current``, ``state`` and ``params``. Both
    directions run on the active backend (:func:`backend`), chosen when the call is traced.
    """
    return simulate_forward(current, state, params, current.shape[0], dt=dt, scheme=scheme)


def _simulate_vjp_fwd(current, state, params, dt, scheme):
    traj = simulate_forward(current, state, params, current.shape[0], dt=dt, scheme=scheme)
    return traj, (current, state, params, traj)


def _simulate_vjp_bwd(dt, scheme, residuals, cotangent: Trajectory):
    current, state, params, traj = residuals
    g_current, g_state, g_params = simulate_backward(
        current, state, params, traj, (cotangent.x, cotangent.v, cotangent.u), current.shape[0], dt=dt, scheme=scheme)
    g_params = IzhikevichParams(*(_sum_to_shape(g, jnp.shape(p)) for g, p in zip(g_params, params)))  # all wanted
    return g_current, g_state, g_params


simulate.defvjp(_simulate_vjp_fwd, _simulate_vjp_bwd)
