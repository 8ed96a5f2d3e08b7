r"""The Izhikevich (2003) neuron as pure JAX functions: one step, a ``lax.scan`` over time, and its VJP.

This module imports no torch; :mod:`spark_torch.ops` wraps it for PyTorch.

Model (Izhikevich, "Simple model of spiking neurons", IEEE TNN 14(6), 2003, doi:10.1109/TNN.2003.820440),
per neuron, with membrane ``v`` (mV), recovery ``u`` (mV/ms), input current ``I`` (pA), step ``dt`` (ms)::

    f(v, u, I) = 0.04 v² + 5 v + 140 − u + R·I                       (mV/ms; u is NOT scaled by R)

    scheme "euler":           v* = v + dt·f(v, u, I)
                              u* = u + dt·a·(b·v − u)                (u uses the OLD v)
    scheme "izhikevich2003":  v½ = v + (dt/2)·f(v, u, I)
                              v* = v½ + (dt/2)·f(v½, u, I)
                              u* = u + dt·a·(b·v* − u)               (the paper's MATLAB code)

    spike   s      = v* >= v_pk                                      (tested on the integrated value)
    reset   v_next = c      if s else v*
            u_next = u* + d if s else u*
    output  x      = (v* − v_pk) / (v_pk − v_r)                      (0 at threshold, −1 at rest)

Gradients treat the spike in the reset as a constant (as snnTorch detaches its reset); the spike
itself is not differentiated here: the caller applies a surrogate to ``x`` and sends back ``dL/dx``.

Shapes: ``current`` is ``[T, *batch, *units]``; parameters broadcast against ``[*batch, *units]``
(typically ``[*units]``, one value per neuron); the state is ``[*batch, *units]``.

Precision: everything is computed in the dtype of ``current``. JAX computes float64 as float32 unless
x64 is enabled, so :func:`precision_scope` enables it (thread-locally, for the duration of a call)
when the input is 64-bit; the user's global JAX setting is never changed.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEMES = ("euler", "izhikevich2003")


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


class IzhikevichState(NamedTuple):
    """Neuron state, each ``[*batch, *units]``: membrane ``v`` [mV] and recovery ``u`` [mV/ms]."""

    v: jax.Array
    u: jax.Array


class Trajectory(NamedTuple):
    """What :func:`simulate` returns, each ``[T, *batch, *units]``.

    ``spikes`` is boolean; ``x`` is the normalized pre-reset distance to threshold; ``v`` and ``u`` are
    the post-step (post-reset) state, so ``Trajectory.v[-1], Trajectory.u[-1]`` is the final state.
    """

    spikes: jax.Array
    x: jax.Array
    v: jax.Array
    u: jax.Array


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


def _integrate(v, u, current, p: IzhikevichParams, dt: float, scheme: str):
    """One integration step before spike detection: returns ``(v*, u*)``."""
    a, b = p.recovery_timescale, p.recovery_sensitivity
    if scheme == "euler":
        v_star = v + dt * _drive(v, u, current, p)
        u_star = u + dt * a * (b * v - u)
    elif scheme == "izhikevich2003":
        half = 0.5 * dt
        v_half = v + half * _drive(v, u, current, p)
        v_star = v_half + half * _drive(v_half, u, current, p)
        u_star = u + dt * a * (b * v_star - u)
    else:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    return v_star, u_star


def _fire_and_reset(v_star, u_star, spike, p: IzhikevichParams):
    """Given the spike mask, the normalized distance ``x`` and the post-reset state."""
    x = (v_star - p.threshold) / (p.threshold - p.potential_rest)
    v_next = jnp.where(spike, p.potential_reset, v_star)
    u_next = jnp.where(spike, u_star + p.recovery_update, u_star)
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


def _simulate(current, state: IzhikevichState, params: IzhikevichParams, dt: float, scheme: str,
              spike_dtype=None, return_x: bool = True) -> Trajectory:
    """The forward scan; ``return_x=False`` skips the ``x`` trace (a fused surrogate needs none)."""
    dtype = current.dtype
    spike_dtype = jnp.bool_ if spike_dtype is None else spike_dtype
    params = _cast_params(params, dtype)
    state = IzhikevichState(jnp.asarray(state.v, dtype), jnp.asarray(state.u, dtype))

    def body(carry, current_t):
        (spike, x), nxt = step(carry, current_t, params, dt=dt, scheme=scheme)
        return nxt, (spike.astype(spike_dtype), x if return_x else None, nxt.v, nxt.u)

    _, (spikes, x, v, u) = jax.lax.scan(body, state, current)
    return Trajectory(spikes, x, v, u)


def _simulate_bwd(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                  dt: float, scheme: str, param_mask: tuple[bool, ...] | None = None,
                  surrogate: tuple[str, float] | None = None):
    """Reverse scan: cotangents ``(dL/dx, dL/dv_trace, dL/du_trace[, dL/dspikes])`` -> grads of
    (current, state, params).

    With ``surrogate=(name, param)`` (static) the spikes' cotangent is turned into ``dL/dx`` inside
    the scan with :func:`surrogate_derivative` (fused surrogate: no ``x`` trace is needed).

    A cotangent may be ``None`` (that output was not used) or 0-d (the same value everywhere, as for
    ``loss = y.sum()``: it crosses as a scalar instead of a [T, B, N] copy); ``traj.x`` is not needed. Each step is
    re-integrated from the saved pre-step state (``traj`` shifted by one) and differentiated with
    ``jax.vjp``; the recorded spikes are reused, so the backward sees exactly the forward's resets.
    ``param_mask`` (static) selects the parameters whose gradients are wanted (default: all); the
    others are returned as zeros without being computed. Parameter gradients are accumulated at the
    state's shape ``[*batch, *units]`` (elementwise adds in the loop) and reduced once at the end.
    """
    dtype = current.dtype
    params = _cast_params(params, dtype)
    mask = tuple(param_mask) if param_mask is not None else (True,) * len(params)
    g_x, g_v, g_u, *g_spikes = cotangents
    g_spikes = g_spikes[0] if g_spikes else None
    # A 0-d cotangent stands for the same value at every step and neuron (e.g. from ``loss = y.sum()``).
    uniform = tuple(g if g is not None and jnp.ndim(g) == 0 else None for g in (g_x, g_v, g_u, g_spikes))
    g_x, g_v, g_u, g_spikes = (None if c is not None else g for g, c in zip((g_x, g_v, g_u, g_spikes), uniform))
    if surrogate is None and g_spikes is not None:
        raise ValueError("a cotangent for the spikes needs a fused `surrogate`")
    n_steps, state_shape = traj.v.shape[0], traj.v.shape[1:]
    v_prev = jnp.concatenate([jnp.broadcast_to(state.v, state_shape)[None], traj.v[:-1]])[:n_steps]
    u_prev = jnp.concatenate([jnp.broadcast_to(state.u, state_shape)[None], traj.u[:-1]])[:n_steps]

    def local(v, u, i, wanted, spike):
        wanted = iter(wanted)
        p = IzhikevichParams(*(next(wanted) if m else q for q, m in zip(params, mask)))
        v_star, u_star = _integrate(v, u, i, p, dt, scheme)
        return _fire_and_reset(v_star, u_star, spike, p)

    def body(carry, xs):
        g_v_next, g_u_next, g_wanted = carry
        v, u, i, spike, *per_step = xs
        gx_t, gv_t, gu_t, gs_t = (g if c is None else jnp.broadcast_to(c.astype(dtype), v.shape)
                                  for g, c in zip(per_step, uniform))
        wanted = tuple(jnp.broadcast_to(q, state_shape) for q, m in zip(params, mask) if m)
        (x_t, _, _), vjp = jax.vjp(partial(local, spike=spike), v, u, i, wanted)
        g_v_post = g_v_next if gv_t is None else gv_t + g_v_next
        g_u_post = g_u_next if gu_t is None else gu_t + g_u_next
        g_x_t = jnp.zeros_like(v) if gx_t is None else gx_t
        if gs_t is not None:
            g_x_t = g_x_t + gs_t * surrogate_derivative(*surrogate, x_t)
        g_v_prev, g_u_prev, g_i, g_p = vjp((g_x_t, g_v_post, g_u_post))
        return (g_v_prev, g_u_prev, tuple(map(jnp.add, g_wanted, g_p))), g_i

    zeros_state = jnp.zeros(state_shape, dtype)
    spikes = traj.spikes if traj.spikes.dtype == jnp.bool_ else traj.spikes != 0
    xs = (v_prev, u_prev, current, spikes, g_x, g_v, g_u, g_spikes)
    init = (zeros_state, zeros_state, tuple(zeros_state for m in mask if m))
    (g_v0, g_u0, g_wanted), g_current = jax.lax.scan(body, init, xs, reverse=True)
    g_wanted = iter(g_wanted)
    g_params = IzhikevichParams(*(_sum_to_shape(next(g_wanted), jnp.shape(q)) if m else jnp.zeros_like(q)
                                  for q, m in zip(params, mask)))
    g_state = IzhikevichState(_sum_to_shape(g_v0, jnp.shape(state.v)), _sum_to_shape(g_u0, jnp.shape(state.u)))
    return g_current, g_state, g_params


def _sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to ``shape`` (the adjoint of ``broadcast_to``)."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


simulate_forward = jax.jit(_simulate, static_argnames=("dt", "scheme", "spike_dtype", "return_x"))
simulate_forward.__doc__ = """Jitted forward scan: ``(current, state, params, dt, scheme[, spike_dtype]) -> Trajectory``."""

simulate_backward = jax.jit(_simulate_bwd, static_argnames=("dt", "scheme", "param_mask", "surrogate"))
simulate_backward.__doc__ = """Jitted reverse scan: ``(..., traj, (g_x, g_v, g_u), dt, scheme) -> grads``."""


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def simulate(current, state: IzhikevichState, params: IzhikevichParams, dt: float, scheme: str = "euler") -> Trajectory:
    """Run the model over ``current`` ``[T, *batch, *units]`` (pA) from ``state``; differentiable.

    Differentiating through ``spikes`` is not possible (they are boolean); differentiate ``x``
    (via a surrogate), ``v`` or ``u``. Gradients flow to ``current``, ``state`` and ``params``.
    """
    return _simulate(current, state, params, dt, scheme)


def _simulate_vjp_fwd(current, state, params, dt, scheme):
    traj = _simulate(current, state, params, dt, scheme)
    return traj, (current, state, params, traj)


def _simulate_vjp_bwd(dt, scheme, residuals, cotangent: Trajectory):
    current, state, params, traj = residuals
    g_current, g_state, g_params = _simulate_bwd(
        current, state, params, traj, (cotangent.x, cotangent.v, cotangent.u), dt, scheme)
    g_params = IzhikevichParams(*(_sum_to_shape(g, jnp.shape(p)) for g, p in zip(g_params, params)))
    return g_current, g_state, g_params


simulate.defvjp(_simulate_vjp_fwd, _simulate_vjp_bwd)
