"""The model's types and its one step, as JAX functions: what both loop backends compute.

The equations, units, bounds and shapes are stated in :mod:`spark_torch.kernel`. Every formula here is
written in the order of evaluation that the native kernel (``native/izhikevich.h``) repeats operation by
operation, so the two backends agree to rounding (the XLA loops may contract multiply-adds, the native
kernel does not).

Also here: the loop-buffer conventions that both backends follow (:data:`MIN_BUFFER_STEPS`,
:func:`recovery_checkpoint_interval`) and :func:`sum_to_shape`, which reduces per-neuron gradients to
the shape of the parameter or state they belong to.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import config as _config

#: Integration schemes: ``"euler"`` and ``"izhikevich2003"`` (the paper's two half steps for ``v``).
SCHEMES = _config.SCHEMES

#: Bound on every integrated membrane value, ``v½`` and ``v*`` (mV), and on ``u`` (mV/ms).
V_LIMIT = _config.V_LIMIT

#: Time buffers are at least this long: XLA simplifies a one-trip loop into straight-line code that
#: rounds differently, so a length-1 call runs in a 2-row buffer.
MIN_BUFFER_STEPS = 2


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
    """What :func:`spark_torch.kernel.simulate` and the forward loops return, each ``[T, *batch, *units]``.

    ``spikes`` is boolean; ``x`` is the normalized pre-reset distance to threshold; ``v`` and ``u`` are
    the post-step (post-reset) state, so ``Trajectory.v[-1], Trajectory.u[-1]`` is the final state.
    ``mem`` (only when asked for, else ``None``) is the post-reset membrane in snnTorch's normalized
    units, ``(v − v_r) / (v_pk − v_r)``.

    With recovery checkpoints (``simulate_forward(..., recovery_every=K)``) ``u`` is the final state
    only, ``[1, *batch, *units]``, and ``u_checkpoints`` ``[ceil(T_buf / K), *batch, *units]`` holds
    the pre-step ``u`` of steps 0, K, 2K, ...: the reverse loop recomputes the rest.
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


def cast_params(params: IzhikevichParams, dtype) -> IzhikevichParams:
    """Every parameter as a JAX array of ``dtype`` (the loops compute in the current's dtype)."""
    return IzhikevichParams(*(jnp.asarray(p, dtype) for p in params))


# ---------------------------------------------------------------------------------------------- one step

def drive(v, u, current, p: IzhikevichParams):
    """dv/dt [mV/ms] = 0.04 v² + 5 v + 140 − u + R·I (evaluated left to right, as written)."""
    return 0.04 * v * v + 5.0 * v + 140.0 - u + p.resistance * current


def confine(v):
    """Clip an integrated membrane value to ``[-V_LIMIT, V_LIMIT]`` mV (NaN stays NaN).

    Written with selects rather than ``jnp.clip``: the same values, but its derivative is 1 inside the
    closed interval and 0 beyond it (as ``torch.clamp``'s), where ``clip``'s max/min rule splits ties
    with a division, which XLA will not duplicate into the reverse loop's fusions (two more passes
    over the state per step in the backward).
    """
    return jnp.where(v > V_LIMIT, V_LIMIT, jnp.where(v < -V_LIMIT, -V_LIMIT, v))


def integrate(v, u, current, p: IzhikevichParams, dt: float, scheme: str):
    """One integration step before spike detection: returns ``(v*, u*)``."""
    a, b = p.recovery_timescale, p.recovery_sensitivity
    if scheme == "euler":
        v_star = confine(v + dt * drive(v, u, current, p))
        u_star = u + dt * a * (b * v - u)
    elif scheme == "izhikevich2003":
        half = 0.5 * dt
        v_half = confine(v + half * drive(v, u, current, p))
        v_star = confine(v_half + half * drive(v_half, u, current, p))
        u_star = u + dt * a * (b * v_star - u)
    else:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    return v_star, u_star


def normalized(v, p: IzhikevichParams):
    """snnTorch-style membrane: ``(v − v_r) · (1 / (v_pk − v_r))`` (0 at rest, 1 at the spike cut-off).

    Written as a product with the reciprocal, which is what XLA makes of a division by a loop-invariant
    value in some fusions but not in others: spelled out, every executable (traced or not, any batch
    size) rounds it the same way. Within one rounding of the quotient ``(v − v_r) / (v_pk − v_r)``.
    """
    return (v - p.potential_rest) * (1.0 / (p.threshold - p.potential_rest))


def fire_and_reset(v_star, u_star, spike, p: IzhikevichParams):
    """Given the spike mask, the normalized distance ``x`` and the post-reset state ``(x, v_next, u_next)``."""
    x = (v_star - p.threshold) / (p.threshold - p.potential_rest)
    v_next = jnp.where(spike, p.potential_reset, v_star)
    u_next = confine(jnp.where(spike, u_star + p.recovery_update, u_star))
    return x, v_next, u_next


def step(state: IzhikevichState, current, params: IzhikevichParams, *, dt: float, scheme: str = "euler"):
    """Advance one ``dt``. Returns ``((spike, x), next_state)``; ``spike`` is boolean."""
    v_star, u_star = integrate(state.v, state.u, current, params, dt, scheme)
    spike = v_star >= params.threshold
    x, v_next, u_next = fire_and_reset(v_star, u_star, spike, params)
    return (spike, x), IzhikevichState(v_next, u_next)


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


# ------------------------------------------------------------------------- conventions of both loops

def recovery_checkpoint_interval(n_buffer: int) -> int:
    """Steps between two recovery checkpoints for a loop buffer of ``n_buffer`` rows: ``ceil(√n_buffer)``.

    Keeping ``u`` every ``K`` steps and recomputing a block of ``K`` in the backward needs
    ``ceil(n/K) + K`` rows of ``u`` instead of ``n``; ``K = √n`` makes that smallest (~2√n rows).
    """
    return max(1, math.isqrt(max(n_buffer, MIN_BUFFER_STEPS) - 1) + 1)


def sum_to_shape(g, shape):
    """Reduce a broadcast gradient back to ``shape`` (the adjoint of ``broadcast_to``)."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g
