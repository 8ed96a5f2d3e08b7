r"""The native CPU kernel: the Izhikevich loops fused into one C++ call per direction, behind ``jax.ffi``.

:func:`simulate_forward` and :func:`simulate_backward` have the signatures and results of
:data:`spark_torch.kernel.xla_simulate_forward` / :data:`spark_torch.kernel.xla_simulate_backward`
(the reference: :func:`spark_torch.kernel.lax_loops.forward_loop` and ``reverse_loop``), with
the same equations, bound, options and output shapes; each is a jitted function whose body is a
single ``jax.ffi.ffi_call`` (plus free reshapes and the parameter gradients' reduction), compiled once
per shape and static options. ``dt`` and ``scheme`` cross as FFI attributes; ``n_steps`` as a runtime
int32 scalar, so a padded buffer runs only its first ``n_steps`` rows (the rest of every output is 0;
``n_steps`` outside ``[0, T_buf]`` is clamped to it).

The C++ source (``izhikevich.h``, ``izhikevich_loops.h``, ``izhikevich_ffi.cc``, shipped in this package;
``izhikevich_direct.h`` adds the same loops as plain C functions, :mod:`.direct`) evaluates every
formula in the input's dtype, operation by operation in the order :mod:`spark_torch.kernel.model` writes it,
with no fused multiply-add, so float64 results equal an IEEE evaluation of those formulas (the XLA
loop may contract into FMAs: it agrees to rounding). It is compiled on first use and cached
(:mod:`spark_torch.kernel.native._build`); :func:`load` says whether that worked.

Operand layout: state and parameters reach C++ as flat *periodic* arrays of ``P`` elements, neuron
``i`` (row-major over ``[*batch, *units]``) reading element ``i % P``: a scalar (``P = 1``), per-unit
values broadcast over the batch (``P = prod(units)``), or one value per neuron. Other broadcasts are
materialized by :func:`jnp.broadcast_to`. Time-constant cotangents cross the same way.

What is stored: the forward writes the same traces as the XLA loop (post-step ``v`` and ``u``, or
``u`` every ``K`` steps with ``recovery_every``); the backward re-integrates each step from them.

Dtypes other than float32/float64 (which the torch layer never passes) run the XLA loop.
"""

from __future__ import annotations

import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import lax_loops
from ..model import (MIN_BUFFER_STEPS, SCHEMES, IzhikevichParams, IzhikevichState, Trajectory,
                     recovery_checkpoint_interval, sum_to_shape)
from . import _build
from ._build import Library, Unavailable, cache_dir

__all__ = ["load", "Unavailable", "simulate_forward", "simulate_backward", "cache_dir", "FORWARD_TARGET",
           "REVERSE_TARGET"]

FORWARD_TARGET = "spark_torch_izhikevich_fwd"
REVERSE_TARGET = "spark_torch_izhikevich_bwd"
SURROGATES = ("atan", "fast_sigmoid", "sigmoid")  # FFI codes 1, 2, 3 (0: none)
_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_library: Optional[Library] = None
_failure: Optional[str] = None
_lock = threading.Lock()


def load() -> Library:
    """Build or load the library and register its FFI targets (once per process, thread-safe).

    Returns the :class:`~spark_torch.kernel.native._build.Library` (with the recorded compile time,
    ``build_seconds``, and whether this process compiled it, ``built_here``); raises
    :class:`Unavailable` (every later call too) when there is no working C++ compiler or the build fails.
    """
    if _library is not None:
        return _library
    with _lock:
        return _load_locked()


def _load_locked() -> Library:
    global _library, _failure
    if _library is None:
        if _failure is not None:
            raise Unavailable(_failure)
        try:
            library = _build.load()
        except Unavailable as error:
            _failure = str(error)
            raise
        for target, symbol in ((FORWARD_TARGET, "SparkTorchIzhikevichForward"),
                               (REVERSE_TARGET, "SparkTorchIzhikevichReverse")):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library.handle, symbol)), platform="cpu")
        _library = library
    return _library


def _periodic(a, dtype, state_shape) -> jax.Array:
    """``a`` (broadcastable to ``state_shape``) as a flat periodic operand (module docstring)."""
    a = jnp.asarray(a, dtype)
    core = a.shape
    while core and core[0] == 1:
        core = core[1:]
    if len(core) <= len(state_shape) and core == tuple(state_shape[len(state_shape) - len(core):]):
        return a.reshape(-1)
    return jnp.broadcast_to(a, state_shape).reshape(-1)


def _empty(dtype) -> jax.Array:
    return jnp.zeros((0,), dtype)


def _simulate_native(current, state: IzhikevichState, params: IzhikevichParams, n_steps, dt: float, scheme: str,
                     spike_dtype=None, return_x: bool = True, return_mem: bool = False,
                     trace_state: bool = True, recovery_every: int = 0) -> Trajectory:
    """:func:`spark_torch.kernel.lax_loops.forward_loop` as one FFI call (same arguments, results and errors)."""
    if current.dtype not in _NATIVE_DTYPES:
        return lax_loops.forward_loop(current, state, params, n_steps, dt, scheme, spike_dtype, return_x, return_mem,
                                      trace_state, recovery_every)
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    load()
    dtype, spike_dtype = current.dtype, jnp.dtype(jnp.bool_ if spike_dtype is None else spike_dtype)
    kernel_spike_dtype = spike_dtype if spike_dtype in (jnp.dtype(jnp.bool_), dtype) else dtype  # cast after
    n_rows, state_shape = current.shape[0], tuple(current.shape[1:])
    n_buffer = max(n_rows, MIN_BUFFER_STEPS)
    every = recovery_every if trace_state else 0
    if every and every != recovery_checkpoint_interval(n_buffer):
        raise ValueError(f"`recovery_every` (={every}) must be recovery_checkpoint_interval({n_buffer}) "
                         f"= {recovery_checkpoint_interval(n_buffer)} for a {n_buffer}-row buffer")
    steps, final = current.shape, (1, *state_shape)
    results = (jax.ShapeDtypeStruct(steps, kernel_spike_dtype),
               jax.ShapeDtypeStruct(steps if return_x else (0,), dtype),
               jax.ShapeDtypeStruct(steps if trace_state else final, dtype),
               jax.ShapeDtypeStruct(steps if trace_state and not every else final, dtype),
               jax.ShapeDtypeStruct(steps if return_mem else (0,), dtype),
               jax.ShapeDtypeStruct((-(-n_buffer // every), *state_shape) if every else (0,), dtype))
    operands = (current, *(_periodic(a, dtype, state_shape) for a in (*state, *params)),
                jnp.asarray(n_steps).astype(jnp.int32))
    spikes, x, v, u, mem, checkpoints = jax.ffi.ffi_call(FORWARD_TARGET, results, vmap_method="sequential")(
        *operands, dt=np.float64(dt), scheme=np.int64(SCHEMES.index(scheme)), trace_state=np.int64(trace_state),
        every=np.int64(every))
    return Trajectory(spikes.astype(spike_dtype), x if return_x else None, v, u, mem if return_mem else None,
                      checkpoints if every else None)


def _cotangent_operands(cotangents, current, checkpointed: bool):
    """The five cotangent operands, the per-step bit mask, and dL/du_final (periodic or empty)."""
    dtype, state_shape = current.dtype, tuple(current.shape[1:])
    g_x, g_v, g_u, g_spikes, g_mem = (tuple(cotangents) + (None, None))[:5]
    g_u_final, g_u = (g_u, None) if checkpointed else (None, g_u)
    operands, per_step = [], 0
    for i, g in enumerate((g_x, g_v, g_u, g_spikes, g_mem)):
        if g is None:
            operands.append(_empty(dtype))
        elif jnp.ndim(g) == current.ndim:
            per_step |= 1 << i
            operands.append(jnp.broadcast_to(jnp.asarray(g, dtype), current.shape))
        else:
            operands.append(_periodic(g, dtype, state_shape))
    if g_u_final is None:
        g_u_last = _empty(dtype)
    else:
        g_u_last = _periodic(g_u_final[0] if jnp.ndim(g_u_final) else g_u_final, dtype, state_shape)
    return operands, per_step, g_u_last


def _simulate_bwd_native(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                         n_steps, dt: float, scheme: str, param_mask: tuple[bool, ...] | None = None,
                         surrogate: tuple[str, float] | None = None):
    """:func:`spark_torch.kernel.lax_loops.reverse_loop` as one FFI call (same arguments, results and errors)."""
    if current.dtype not in _NATIVE_DTYPES:
        return lax_loops.reverse_loop(current, state, params, traj, cotangents, n_steps, dt, scheme, param_mask,
                                      surrogate)
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    if surrogate is not None and surrogate[0] not in SURROGATES:
        raise ValueError(f"`surrogate` (={surrogate[0]!r}) must be one of {SURROGATES}")
    if surrogate is None and len(cotangents) > 3 and cotangents[3] is not None:
        raise ValueError("a cotangent for the spikes needs a fused `surrogate`")
    load()
    dtype, state_shape = current.dtype, tuple(current.shape[1:])
    params = IzhikevichParams(*(jnp.asarray(p, dtype) for p in params))
    mask = tuple(param_mask) if param_mask is not None else (True,) * len(params)
    checkpointed = traj.u_checkpoints is not None
    every = recovery_checkpoint_interval(max(current.shape[0], MIN_BUFFER_STEPS)) if checkpointed else 0
    g_operands, per_step, g_u_last = _cotangent_operands(cotangents, current, checkpointed)
    spikes = traj.spikes if traj.spikes.dtype == jnp.bool_ else traj.spikes.astype(dtype)
    operands = (current, *(_periodic(a, dtype, state_shape) for a in (*state, *params)), spikes,
                traj.v.astype(dtype), (traj.u_checkpoints if checkpointed else traj.u).astype(dtype), *g_operands,
                g_u_last, jnp.asarray(n_steps).astype(jnp.int32))
    results = (jax.ShapeDtypeStruct(current.shape, dtype), jax.ShapeDtypeStruct(state_shape, dtype),
               jax.ShapeDtypeStruct(state_shape, dtype),
               *(jax.ShapeDtypeStruct(state_shape if wanted else (0,), dtype) for wanted in mask))
    g_current, g_v0, g_u0, *g_params = jax.ffi.ffi_call(REVERSE_TARGET, results, vmap_method="sequential")(
        *operands, dt=np.float64(dt), scheme=np.int64(SCHEMES.index(scheme)),
        surrogate=np.int64(0 if surrogate is None else 1 + SURROGATES.index(surrogate[0])),
        surrogate_param=np.float64(0.0 if surrogate is None else surrogate[1]), every=np.int64(every),
        per_step=np.int64(per_step))
    g_state = IzhikevichState(sum_to_shape(g_v0, jnp.shape(state.v)), sum_to_shape(g_u0, jnp.shape(state.u)))
    g_params = IzhikevichParams(*(sum_to_shape(g, jnp.shape(q)) if wanted else None
                                  for g, q, wanted in zip(g_params, params, mask)))
    return g_current, g_state, g_params


simulate_forward = jax.jit(_simulate_native, static_argnames=(
    "dt", "scheme", "spike_dtype", "return_x", "return_mem", "trace_state", "recovery_every"))
simulate_forward.__doc__ = """Native forward loop, one FFI call: ``(current, state, params, n_steps, dt, scheme[,
spike_dtype, return_x, return_mem, trace_state, recovery_every]) -> Trajectory`` (as
:data:`spark_torch.kernel.xla_simulate_forward`)."""

simulate_backward = jax.jit(_simulate_bwd_native, static_argnames=("dt", "scheme", "param_mask", "surrogate"))
simulate_backward.__doc__ = """Native reverse loop, one FFI call: ``(current, state, params, traj, (g_x, g_v, g_u[,
g_spikes[, g_mem]]), n_steps, dt, scheme[, param_mask, surrogate]) -> (g_current, g_state, g_params)`` (as
:data:`spark_torch.kernel.xla_simulate_backward`)."""
