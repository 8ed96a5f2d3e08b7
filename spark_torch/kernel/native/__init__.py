r"""The native CPU kernel: the Izhikevich loops fused into one C++ call per direction, behind ``jax.ffi``.

:func:`simulate_forward` and :func:`simulate_backward` have the signatures and results of
:data:`spark_torch.kernel.xla_simulate_forward` / :data:`spark_torch.kernel.xla_simulate_backward`
(the reference: :func:`spark_torch.kernel.lax_loops.forward_loop` and ``reverse_loop``), with
the same equations, bound, options and output shapes; each is a jitted function whose body is a
single ``jax.ffi.ffi_call`` (plus free reshapes and the parameter gradients' reduction), compiled once
per shape and static options. ``dt`` and ``scheme`` cross as FFI attributes; ``n_steps`` as a runtime
int32 scalar, so a padded buffer runs only its first ``n_steps`` rows (the rest of every output is 0;
``n_steps`` outside ``[0, T_buf]`` is clamped to it).

The C++ source (``izhikevich.h``: one step; ``izhikevich_loops.h``: the loops over a block of neurons;
``izhikevich_interface.h``: the operands and their checks, shared by both ways in; ``izhikevich_ffi.cc``: the
FFI handlers; ``izhikevich_direct.h``: the same loops as plain C functions, for callers that hold the memory,
:func:`entry_points`; ``izhikevich_threads.h``: the blocks on several threads; ``izhikevich_memory.h``: a
pool of large output buffers handed to torch through DLPack), shipped in this package, evaluates every
formula in the input's dtype, operation by operation in the order :mod:`spark_torch.kernel.model` writes it,
with no fused multiply-add, so float64 results equal an IEEE evaluation of those formulas (the XLA
loop may contract into FMAs: it agrees to rounding). It is compiled on first use and cached
(:mod:`spark_torch.kernel.native._build`); :func:`load` says whether that worked.

Operands, results and attributes, their order and codes: :mod:`.interface` (the one Python copy of the
library's interface, checked against the library when it is loaded). State and parameters cross as
flat *periodic* arrays (a scalar, per-unit values broadcast over the batch, or one value per neuron);
other broadcasts are materialized by :func:`jnp.broadcast_to`. Time-constant cotangents cross the same way.

What is stored: through JAX, the forward writes the same traces as the XLA loop (post-step ``v`` and ``u``,
or ``u`` every ``K`` steps with ``recovery_every``), which are part of its :class:`Trajectory`; the backward
re-integrates each step from them. The torch layer's direct calls keep less (``interface.RESIDUALS``).

Dtypes other than float32/float64 (which the torch layer never passes) run the XLA loop.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import lax_loops
from ..model import (MIN_BUFFER_STEPS, IzhikevichParams, IzhikevichState, Trajectory,
                     recovery_checkpoint_interval, sum_to_shape)
from . import _build, interface
from ._build import Library, Unavailable, cache_dir
from .interface import FORWARD_TARGET, REVERSE_TARGET

__all__ = ["load", "entry_points", "Unavailable", "simulate_forward", "simulate_backward", "cache_dir",
           "FORWARD_TARGET", "REVERSE_TARGET"]

_library: Optional[Library] = None
_entry_points: Optional[interface.EntryPoints] = None
_failure: Optional[Unavailable] = None  # the first failure, raised again by every later load()
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
            raise Unavailable(str(_failure), _failure.reason)
        try:
            library = _build.load()
            interface.check_library(library.handle)
        except interface.InterfaceMismatch as error:
            _failure = Unavailable(f"{library.path} was built from other sources: {error}", "build")
            raise Unavailable(str(_failure), "build") from None
        except Unavailable as error:
            _failure = error
            raise
        for target, symbol in ((FORWARD_TARGET, interface.SYMBOLS["forward_ffi"]),
                               (REVERSE_TARGET, interface.SYMBOLS["reverse_ffi"])):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library.handle, symbol)), platform="cpu")
        _library = library
    return _library


def entry_points() -> interface.EntryPoints:
    """The loaded library's direct C entry points (:func:`.interface.bind`); raises :class:`Unavailable`."""
    global _entry_points
    if _entry_points is None:
        _entry_points = interface.bind(load().handle)
    return _entry_points


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


def _ffi_call(target: str, operands: dict, results: dict, attributes: dict):
    """One FFI call with ``operands`` and ``results`` (``jax.ShapeDtypeStruct`` s) by name, in the order of
    :mod:`.interface`; returns the results as a dict."""
    forward = target == FORWARD_TARGET
    names = interface.FORWARD_RESULTS if forward else interface.REVERSE_RESULTS
    order = interface.FORWARD_OPERANDS if forward else interface.REVERSE_OPERANDS
    wanted = interface.FORWARD_FFI_ATTRIBUTES if forward else interface.REVERSE_FFI_ATTRIBUTES
    kinds = dict(interface.ATTRIBUTES)
    attrs = {name: (np.float64 if kinds[name] is ctypes.c_double else np.int64)(attributes[name]) for name in wanted}
    outputs = jax.ffi.ffi_call(target, tuple(results[name] for name in names), vmap_method="sequential")(
        *(operands[name] for name in order), **attrs)
    return dict(zip(names, outputs))


def _model_operands(state: IzhikevichState, params: IzhikevichParams, dtype, state_shape) -> dict:
    return {name: _periodic(a, dtype, state_shape) for name, a in
            zip(("v0", "u0", *interface.PARAMETERS), (*state, *params))}


def _simulate_native(current, state: IzhikevichState, params: IzhikevichParams, n_steps, dt: float, scheme: str,
                     spike_dtype=None, return_x: bool = True, return_mem: bool = False,
                     trace_state: bool = True, recovery_every: int = 0) -> Trajectory:
    """:func:`spark_torch.kernel.lax_loops.forward_loop` as one FFI call (same arguments, results and errors)."""
    if current.dtype not in interface.DTYPES:
        return lax_loops.forward_loop(current, state, params, n_steps, dt, scheme, spike_dtype, return_x, return_mem,
                                      trace_state, recovery_every)
    scheme_code = interface.scheme_code(scheme)
    load()
    dtype, spike_dtype = current.dtype, jnp.dtype(jnp.bool_ if spike_dtype is None else spike_dtype)
    kernel_spike_dtype = spike_dtype if spike_dtype in (jnp.dtype(jnp.bool_), dtype) else dtype  # cast after
    n_rows, state_shape = current.shape[0], tuple(current.shape[1:])
    n_buffer = max(n_rows, MIN_BUFFER_STEPS)
    every = recovery_every if trace_state else 0
    if every and every != recovery_checkpoint_interval(n_buffer):
        raise ValueError(f"`recovery_every` (={every}) must be recovery_checkpoint_interval({n_buffer}) "
                         f"= {recovery_checkpoint_interval(n_buffer)} for a {n_buffer}-row buffer")
    steps, final = current.shape, state_shape
    results = {"spikes": jax.ShapeDtypeStruct(steps, kernel_spike_dtype),
               "x": jax.ShapeDtypeStruct(steps if return_x else (0,), dtype),
               "v": jax.ShapeDtypeStruct(steps if trace_state else final, dtype),
               "u": jax.ShapeDtypeStruct(steps if trace_state and not every else final, dtype),
               "mem": jax.ShapeDtypeStruct(steps if return_mem else (0,), dtype),
               "raw": jax.ShapeDtypeStruct((0,), dtype), "v_checkpoints": jax.ShapeDtypeStruct((0,), dtype),
               "u_clipped": jax.ShapeDtypeStruct((0,), dtype),
               "nonfinite_current": jax.ShapeDtypeStruct((0,), dtype),
               "u_checkpoints": jax.ShapeDtypeStruct((-(-n_buffer // every), *state_shape) if every else (0,), dtype)}
    operands = {"current": current, **_model_operands(state, params, dtype, state_shape),
                "n_steps": jnp.asarray(n_steps).astype(jnp.int32)}
    out = _ffi_call(FORWARD_TARGET, operands, results,
                    {"dt": dt, "scheme": scheme_code, "every": every,
                     "residuals": interface.residuals_code("state_traces" if trace_state else "final_state")})
    v = out["v"] if trace_state else out["v"][None]
    u = out["u"] if trace_state and not every else out["u"][None]
    return Trajectory(out["spikes"].astype(spike_dtype), out["x"] if return_x else None, v, u,
                      out["mem"] if return_mem else None, out["u_checkpoints"] if every else None)


def _cotangent_operands(cotangents, current, checkpointed: bool):
    """The cotangent operands by name, the per-step bit mask, and dL/du_final (periodic or empty)."""
    dtype, state_shape = current.dtype, tuple(current.shape[1:])
    g_x, g_v, g_u, g_spikes, g_mem = (tuple(cotangents) + (None, None))[:5]
    g_u_final, g_u = (g_u, None) if checkpointed else (None, g_u)
    operands, per_step = {}, 0
    for i, (name, g) in enumerate(zip(interface.COTANGENTS, (g_x, g_v, g_u, g_spikes, g_mem))):
        if g is None:
            operands[name] = _empty(dtype)
        elif jnp.ndim(g) == current.ndim:
            per_step |= 1 << i
            operands[name] = jnp.broadcast_to(jnp.asarray(g, dtype), current.shape)
        else:
            operands[name] = _periodic(g, dtype, state_shape)
    operands["g_v_final"] = _empty(dtype)  # v is a trace here: its cotangent is g_v
    if g_u_final is None:
        operands["g_u_final"] = _empty(dtype)
    else:
        operands["g_u_final"] = _periodic(g_u_final[0] if jnp.ndim(g_u_final) else g_u_final, dtype, state_shape)
    return operands, per_step


def _simulate_bwd_native(current, state: IzhikevichState, params: IzhikevichParams, traj: Trajectory, cotangents,
                         n_steps, dt: float, scheme: str, param_mask: tuple[bool, ...] | None = None,
                         surrogate: tuple[str, float] | None = None):
    """:func:`spark_torch.kernel.lax_loops.reverse_loop` as one FFI call (same arguments, results and errors)."""
    if current.dtype not in interface.DTYPES:
        return lax_loops.reverse_loop(current, state, params, traj, cotangents, n_steps, dt, scheme, param_mask,
                                      surrogate)
    scheme_code = interface.scheme_code(scheme)
    surrogate_code = interface.surrogate_code(surrogate[0] if surrogate is not None else "")
    if surrogate is None and len(cotangents) > 3 and cotangents[3] is not None:
        raise ValueError("a cotangent for the spikes needs a fused `surrogate`")
    load()
    dtype, state_shape = current.dtype, tuple(current.shape[1:])
    params = IzhikevichParams(*(jnp.asarray(p, dtype) for p in params))
    mask = tuple(param_mask) if param_mask is not None else (True,) * len(params)
    checkpointed = traj.u_checkpoints is not None
    every = recovery_checkpoint_interval(max(current.shape[0], MIN_BUFFER_STEPS)) if checkpointed else 0
    g_operands, per_step = _cotangent_operands(cotangents, current, checkpointed)
    spikes = traj.spikes if traj.spikes.dtype == jnp.bool_ else traj.spikes.astype(dtype)
    operands = {"current": current, **_model_operands(state, params, dtype, state_shape), "spikes": spikes,
                "v": traj.v.astype(dtype), "u": _empty(dtype) if checkpointed else traj.u.astype(dtype),
                "raw": _empty(dtype), "v_checkpoints": _empty(dtype), "u_clipped": _empty(dtype),
                "u_checkpoints": traj.u_checkpoints.astype(dtype) if checkpointed else _empty(dtype),
                **g_operands, "n_steps": jnp.asarray(n_steps).astype(jnp.int32)}
    per_neuron = {name: jax.ShapeDtypeStruct(state_shape, dtype) for name in ("g_v0", "g_u0")}
    for name, wanted in zip(interface.REVERSE_RESULTS[3:], mask):
        per_neuron[name] = jax.ShapeDtypeStruct(state_shape if wanted else (0,), dtype)
    out = _ffi_call(REVERSE_TARGET, operands, {"g_current": jax.ShapeDtypeStruct(current.shape, dtype), **per_neuron},
                    {"dt": dt, "scheme": scheme_code, "surrogate": surrogate_code,
                     "surrogate_param": 0.0 if surrogate is None else surrogate[1], "every": every,
                     "residuals": interface.residuals_code("state_traces"),
                     "per_step": per_step})
    g_state = IzhikevichState(sum_to_shape(out["g_v0"], jnp.shape(state.v)), sum_to_shape(out["g_u0"], jnp.shape(state.u)))
    g_params = IzhikevichParams(*(sum_to_shape(out[name], jnp.shape(q)) if wanted else None
                                  for name, q, wanted in zip(interface.REVERSE_RESULTS[3:], params, mask)))
    return out["g_current"], g_state, g_params


simulate_forward = jax.jit(_simulate_native, static_argnames=(
    "dt", "scheme", "spike_dtype", "return_x", "return_mem", "trace_state", "recovery_every"))
simulate_forward.__doc__ = """Native forward loop, one FFI call: ``(current, state, params, n_steps, dt, scheme[,
spike_dtype, return_x, return_mem, trace_state, recovery_every]) -> Trajectory`` (as
:data:`spark_torch.kernel.xla_simulate_forward`)."""

simulate_backward = jax.jit(_simulate_bwd_native, static_argnames=("dt", "scheme", "param_mask", "surrogate"))
simulate_backward.__doc__ = """Native reverse loop, one FFI call: ``(current, state, params, traj, (g_x, g_v, g_u[,
g_spikes[, g_mem]]), n_steps, dt, scheme[, param_mask, surrogate]) -> (g_current, g_state, g_params)`` (as
:data:`spark_torch.kernel.xla_simulate_backward`)."""
