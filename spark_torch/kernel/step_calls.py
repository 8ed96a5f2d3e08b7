"""One time step of the kernel as its own jitted function pair: what a step-mode call runs.

:func:`step_forward` and :func:`step_backward` are the kernel's forward and reverse loops
(:data:`spark_torch.kernel.simulate_forward`, :data:`spark_torch.kernel.simulate_backward`, on the
active backend) over a one-row buffer, with every input and output at the state's shape
``[*batch, *units]``: no time axis to add or strip outside the computation (those reshapes are free
inside it), so a step call is exactly one JAX execution per direction. The number of steps (1) crosses
as a runtime scalar, as in a sequence call, so that the step is compiled as the loop body of a sequence
(a compile-time trip count of one would let XLA rewrite the loop into code that rounds differently).

The active backend is a static argument: switching it (:func:`spark_torch.kernel.set_backend`) traces
the step again instead of reusing the executable of the other backend.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from .. import kernel
from .model import IzhikevichParams, IzhikevichState, Trajectory


def _step_forward(current, v0, u0, params: IzhikevichParams, n_steps, *, dt: float, scheme: str, spike_dtype,
                  return_x: bool, backend: str):
    """``(spikes, x, v, u, mem)`` after one step from ``(v0, u0)``, each ``[*batch, *units]`` (``x`` is
    ``None`` unless ``return_x``); ``backend`` only keys the trace."""
    del backend
    traj = kernel.simulate_forward(current[None], IzhikevichState(v0, u0), params, n_steps, dt=dt, scheme=scheme,
                                   spike_dtype=spike_dtype, return_x=return_x, return_mem=True)
    return tuple(None if a is None else a[0] for a in (traj.spikes, traj.x, traj.v, traj.u, traj.mem))


def _step_backward(current, v0, u0, params: IzhikevichParams, spikes, v, u, cotangents, n_steps, *, dt: float,
                   scheme: str, param_mask: tuple[bool, ...], surrogate: Optional[tuple[str, float]], backend: str):
    """The reverse step: ``(g_current, g_v0, g_u0, g_params)`` from the cotangents ``(g_x, g_v, g_u,
    g_spikes, g_mem)`` of :func:`_step_forward`'s outputs (each ``None``, 0-d, or ``[*batch, *units]``)."""
    del backend
    traj = Trajectory(spikes[None], None, v[None], u[None])
    cotangents = tuple(g if g is None or jnp.ndim(g) == 0 else g[None] for g in cotangents)
    g_current, g_state, g_params = kernel.simulate_backward(
        current[None], IzhikevichState(v0, u0), params, traj, cotangents, n_steps, dt=dt, scheme=scheme,
        param_mask=param_mask, surrogate=surrogate)
    return g_current[0], g_state.v, g_state.u, g_params


step_forward = jax.jit(_step_forward, static_argnames=("dt", "scheme", "spike_dtype", "return_x", "backend"))
step_backward = jax.jit(_step_backward, static_argnames=("dt", "scheme", "param_mask", "surrogate", "backend"))
