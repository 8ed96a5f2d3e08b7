r"""The Izhikevich (2003) neuron as pure JAX functions: one step, compiled loops over time, and their VJP.

This package imports no torch; :mod:`spark_torch.ops` wraps it for PyTorch.

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

Data flow: the forward loop :data:`simulate_forward` ``(current [T_buf, ...], state, params, n_steps)``
returns a :class:`Trajectory`: spikes, ``x``, the post-step ``v`` and ``u`` traces (or, for inference,
only the final state; or ``u`` every ``K`` steps, :func:`recovery_checkpoint_interval`) and optionally
the normalized membrane ``mem``. The reverse loop :data:`simulate_backward` takes that trajectory and the
cotangents of its outputs, re-integrates each step from the saved pre-step state with the recorded
spikes, and returns the gradients of the current, the initial state and the parameters.
:func:`simulate` is both, as a ``jax.custom_vjp``.

Backends: the loops run as XLA code (:data:`xla_simulate_forward`, :data:`xla_simulate_backward`: the
reference ``lax.fori_loop`` over time) or as one fused C++ call per direction (:mod:`.native`; CPU arrays;
no fused multiply-adds, so it agrees with the XLA loop to rounding). :data:`simulate_forward`,
:data:`simulate_backward` and :func:`simulate` use the active one: ``SPARK_TORCH_KERNEL=native|xla|auto``
in the environment (default ``auto``: native if it builds, else xla with one warning), :func:`set_backend`,
the context manager :func:`use_backend`, and :func:`backend` (the one in use).

Modules: :mod:`.model` (the types, constants and one-step equations), :mod:`.lax_loops` (the XLA
loops), :mod:`.native` (the C++ kernel and its build; :func:`.native.entry_points`, its loops as plain C
functions for callers that hold the memory), :mod:`._backend` (backend choice and dispatch),
:mod:`.step_calls` (one step as its own jitted pair, at the state's shape: what a step-mode call runs
through JAX).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import _backend
from ._backend import backend, set_backend, use_backend
from .lax_loops import forward_loop, reverse_loop
from .model import (MIN_BUFFER_STEPS, SCHEMES, V_LIMIT, IzhikevichParams, IzhikevichState, Trajectory,
                    precision_scope, recovery_checkpoint_interval, rest_state, step, sum_to_shape,
                    surrogate_derivative)

__all__ = [
    "IzhikevichParams", "IzhikevichState", "Trajectory", "SCHEMES", "V_LIMIT", "MIN_BUFFER_STEPS",
    "precision_scope", "rest_state", "step", "surrogate_derivative", "recovery_checkpoint_interval",
    "simulate", "simulate_forward", "simulate_backward", "xla_simulate_forward", "xla_simulate_backward",
    "backend", "set_backend", "use_backend",
]

xla_simulate_forward = jax.jit(forward_loop, static_argnames=("dt", "scheme", "spike_dtype", "return_x", "return_mem",
                                                             "trace_state", "recovery_every"))
xla_simulate_forward.__doc__ = """Jitted XLA forward loop: ``(current, state, params, n_steps, dt, scheme[, spike_dtype,
return_x, return_mem, trace_state, recovery_every]) -> Trajectory`` (see :func:`.lax_loops.forward_loop`). Pass
``n_steps`` as an array (e.g. ``np.int32(T)``): one executable per buffer shape."""

xla_simulate_backward = jax.jit(reverse_loop, static_argnames=("dt", "scheme", "param_mask", "surrogate"))
xla_simulate_backward.__doc__ = """Jitted XLA reverse loop: ``(current, state, params, traj, (g_x, g_v, g_u[, g_spikes[,
g_mem]]), n_steps, dt, scheme[, param_mask, surrogate]) -> (g_current, g_state, g_params)`` (see
:func:`.lax_loops.reverse_loop`)."""

simulate_forward, simulate_backward = _backend.dispatchers(xla_simulate_forward, xla_simulate_backward)
simulate_forward.__doc__ = """The forward loop on the active backend (:func:`backend`): the arguments and results of
:data:`xla_simulate_forward`; the native kernel (:mod:`.native`) for CPU arrays when it is in use."""
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
    g_params = IzhikevichParams(*(sum_to_shape(g, jnp.shape(p)) for g, p in zip(g_params, params)))  # all wanted
    return g_current, g_state, g_params


simulate.defvjp(_simulate_vjp_fwd, _simulate_vjp_bwd)
