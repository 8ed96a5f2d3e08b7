"""The JAX executor: a kernel call as one jitted JAX execution per direction, tensors crossing by DLPack.

Runs every call the direct executor does not take (:mod:`.route`): the XLA backend, CUDA, large calls,
recovery checkpoints, and the custom op's calls under ``torch.compile``. What it does per call:

* tensors cross zero-copy (:mod:`spark_torch.bridge`); tensors that crossed before do not cross again: the
  parameters' JAX views, the rest state a sequence starts from, and the state ``(v, u)`` a step returned
  (and the state gradients its backward returned) live in the layer's ``views`` dict;
* a sequence runs :data:`spark_torch.kernel.simulate_forward` / ``simulate_backward`` over a time buffer of
  :func:`buffer_length` rows (the step count crosses as a runtime scalar), so a bounded number of
  executables serves any number of sequence lengths; a step runs the state-shaped pair of
  :mod:`spark_torch.kernel.step_calls`;
* the forward's JAX arrays are kept for the backward (``Residuals.cache``), which then imports nothing
  twice; the tensors that alias them are saved with ``save_for_backward`` so torch's in-place check
  guards them. Without the cache (the custom op) the backward imports the saved tensors.
* uniform cotangents (``loss = y.sum()``) cross as one JAX scalar per value, kept per process.

:data:`spark_torch.bridge.crossings` counts imports, exports and executions.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np
import torch

from .. import bridge, kernel
from ..kernel import (IzhikevichParams, IzhikevichState, Trajectory, precision_scope, recovery_checkpoint_interval,
                      step_calls)
from .call import (PARAMETERS, Cotangents, KernelCall, Outputs, Residuals, compact_cotangent, input_gradients,
                   uniform_as_scalar)

#: How many distinct sequence lengths T get a loop buffer of exactly T steps (and so an executable of
#: their own, compiled on first use); every later new length runs in a buffer padded with zero current
#: to the next power of two (the loop still stops after T steps), so that sequences of arbitrarily many
#: lengths compile at most ``MAX_EXACT_LENGTHS + log2(T_max) + 1`` forward and backward executables per
#: shape ``[*batch, *units]``, dtype, dt and scheme. Results do not depend on the buffer (bit-identical),
#: only speed does: a padded call pays one copy of the input (and of its gradients) into the buffer.
#: Set it before the first call; ``0`` pads every length that is not a power of two.
MAX_EXACT_LENGTHS = 8
exact_lengths: set[int] = set()

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def buffer_length(n_steps: int) -> int:
    """The loop buffer's length for a sequence of ``n_steps`` (see :data:`MAX_EXACT_LENGTHS`)."""
    if n_steps in exact_lengths:
        return n_steps
    if len(exact_lengths) < MAX_EXACT_LENGTHS or n_steps & (n_steps - 1) == 0:
        exact_lengths.add(n_steps)
        return n_steps
    return 1 << (n_steps - 1).bit_length()


def _pad_steps(tensor: Optional[torch.Tensor], n_buffer: int, n_dims: int = 0) -> Optional[torch.Tensor]:
    """``tensor`` ``[T, ...]`` copied into a zero buffer ``[n_buffer, ...]`` (counted in
    :data:`spark_torch.bridge.copy_counts` as "padded"); unchanged if it already has ``n_buffer`` rows,
    is ``None``, 0-d, or has fewer than ``n_dims`` dims (a time-constant cotangent has no time axis)."""
    if tensor is None or tensor.dim() == 0 or tensor.shape[0] == n_buffer or tensor.dim() < n_dims:
        return tensor
    padded = tensor.new_zeros((n_buffer, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    bridge.copy_counts["padded"] += 1
    return padded


class _Kept:
    """JAX scalars made once per value and kept (a NumPy scalar would be transferred on every call)."""

    def __init__(self, limit: int) -> None:
        self._limit, self._arrays = limit, {}

    def get(self, key, make):
        array = self._arrays.get(key)
        if array is None:
            if len(self._arrays) >= self._limit:
                self._arrays.clear()
            array = self._arrays[key] = make()
        return array


_step_counts, _scalars = _Kept(256), _Kept(64)


def _step_count(n_steps: int, current: torch.Tensor):
    """``n_steps`` as the kernel's runtime int32 scalar (a kept JAX array on the CPU, else a NumPy scalar)."""
    if current.device.type != "cpu":
        return np.int32(n_steps)
    return _step_counts.get(n_steps, lambda: jax.device_put(np.int32(n_steps), jax.devices("cpu")[0]))


def _cotangent_to_jax(grad: Optional[torch.Tensor], name: str, views: Optional[dict]):
    """``None``; a 0-d CPU tensor as a kept JAX scalar; else the tensor imported (through ``views`` if given)."""
    if grad is None:
        return None
    if grad.dim() == 0 and grad.device.type == "cpu":
        value = grad.item()

        def make():
            bridge.crossings["to_jax"] += 1
            return jax.device_put(np.asarray(value, _NUMPY_DTYPES[grad.dtype]), jax.devices("cpu")[0])

        return _scalars.get((value, grad.dtype), make)
    return bridge.to_jax(grad, name) if views is None else bridge.to_jax_shared(grad, name, views)


def _import(tensor: torch.Tensor, name: str, views: Optional[dict]):
    return bridge.to_jax(tensor, name) if views is None else bridge.to_jax_shared(tensor, name, views)


class _SequenceArrays(NamedTuple):
    """The JAX arrays a sequence forward imported and produced, kept for its backward. ``current`` is
    ``None`` when it was a padded copy (the backward pads again)."""

    current: Optional[jax.Array]
    state: IzhikevichState
    params: IzhikevichParams
    traj: Trajectory


class JaxExecutor:
    """:meth:`forward` and :meth:`backward` of a kernel call through JAX (module docstring)."""

    name = "jax"
    checks_finite = False  # the input is checked before the call (``KernelCall.check_finite``)
    # a zero or uniform cotangent array makes XLA compile another program than None or a scalar does
    same_bits_for_any_cotangent_form = False

    def forward(self, call: KernelCall, current, v0, u0, params, views: Optional[dict], keep: str):
        """``(Outputs, Residuals)``; ``keep="final_state"``: ``v``, ``u`` are the final state only, else traces
        (``"least"`` keeps the traces too: JAX's backward re-integrates from them)."""
        if call.step:
            return _step_forward(call, current, v0, u0, params, views)
        return _sequence_forward(call, current, v0, u0, params, views, keep != "final_state")

    def backward(self, call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple,
                 views: Optional[dict], layout: str = "state_traces"):
        """Gradients of ``(current, v0, u0, *params)`` (``None`` where ``needs`` is false); ``saved`` is always in
        the ``state_traces`` layout here."""
        if call.step:
            return _step_backward(call, saved, cache, cotangents, needs, views)
        return _sequence_backward(call, saved, cache, cotangents, needs)


def _sequence_forward(call: KernelCall, current, v0, u0, params, views, trace_state):
    n_steps, dtype = current.shape[0], _NUMPY_DTYPES[current.dtype]
    n_buffer = buffer_length(n_steps)
    every = recovery_checkpoint_interval(n_buffer) if call.recovery_checkpoints and trace_state else 0
    with precision_scope(dtype):
        current_j = bridge.to_jax(_pad_steps(current, n_buffer), "current")
        state = IzhikevichState(_import(v0, "v0", views), _import(u0, "u0", views))
        params_j = IzhikevichParams(*(_import(p, name, views) for p, name in zip(params, PARAMETERS)))
        bridge.crossings["forward"] += 1
        traj = kernel.simulate_forward(
            current_j, state, params_j, _step_count(n_steps, current), dt=call.dt, scheme=call.scheme,
            spike_dtype=dtype, return_x=not call.surrogate, return_mem=True, trace_state=trace_state,
            recovery_every=every)
        spikes, x, v, u, mem, u_checkpoints = bridge.arrays_to_torch(tuple(traj), current.device.type == "cpu")
    spikes, x, mem = (None if a is None else a[:n_steps] for a in (spikes, x, mem))
    if trace_state:
        v, u = v[:n_steps], (u if every else u[:n_steps])
    outputs = Outputs(spikes, x, v, u, mem, u_checkpoints)
    cache = _SequenceArrays(current_j if n_buffer == n_steps else None, state, params_j,
                            traj._replace(x=None, mem=None))
    return outputs, Residuals((current, v0, u0, *params, spikes, v, u_checkpoints if every else u), cache)


def _sequence_arrays(saved: tuple, n_buffer: int, checkpointed: bool) -> _SequenceArrays:
    """The JAX arrays of a sequence backward imported from the saved tensors (no forward cache)."""
    current, v0, u0, *rest = saved
    params, (spikes, v, u) = rest[:len(PARAMETERS)], rest[len(PARAMETERS):]
    traj = Trajectory(bridge.to_jax(_pad_steps(spikes, n_buffer), "spikes"), None,
                      bridge.to_jax(_pad_steps(v, n_buffer), "v"), None)
    traj = traj._replace(u_checkpoints=bridge.to_jax(u, "u_checkpoints")) if checkpointed \
        else traj._replace(u=bridge.to_jax(_pad_steps(u, n_buffer), "u"))
    return _SequenceArrays(None, IzhikevichState(bridge.to_jax(v0, "v0"), bridge.to_jax(u0, "u0")),
                           IzhikevichParams(*(bridge.to_jax(p, n) for p, n in zip(params, PARAMETERS))), traj)


def _sequence_backward(call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple):
    current, v0, u0, *params = saved[:3 + len(PARAMETERS)]
    n_steps, dtype = current.shape[0], _NUMPY_DTYPES[current.dtype]
    n_buffer, n_dims = buffer_length(n_steps), current.dim()
    checkpointed = call.recovery_checkpoints
    g_x, g_v, g_spikes, g_mem = (_pad_steps(compact_cotangent(g, False), n_buffer, n_dims)
                                 for g in (cotangents.x, cotangents.v, cotangents.spikes, cotangents.mem))
    # with checkpoints, u is the final state [1, *state]: its cotangent crosses unpadded
    g_u = uniform_as_scalar(cotangents.u) if checkpointed else _pad_steps(compact_cotangent(cotangents.u, False),
                                                                           n_buffer, n_dims)
    with precision_scope(dtype):
        arrays = cache if cache is not None else _sequence_arrays(saved, n_buffer, checkpointed)
        current_j = arrays.current if arrays.current is not None else bridge.to_jax(
            _pad_steps(current, n_buffer), "current")
        bridge.crossings["backward"] += 1
        g_jax = tuple(_cotangent_to_jax(g, name, None) for g, name in (
            (g_x, "grad_x"), (g_v, "grad_v"), (g_u, "grad_u"), (g_spikes, "grad_spikes"), (g_mem, "grad_mem")))
        grads = kernel.simulate_backward(
            current_j, arrays.state, arrays.params, arrays.traj, g_jax, _step_count(n_steps, current),
            dt=call.dt, scheme=call.scheme, param_mask=tuple(needs[3:]),
            surrogate=(call.surrogate, float(call.surrogate_param)) if call.surrogate else None)
        g_current, g_v0, g_u0, *g_params = bridge.arrays_to_torch(
            (grads[0], *grads[1], *grads[2]), current.device.type == "cpu")
    return input_gradients(needs, (g_current[:n_steps], g_v0, g_u0, *g_params), (current, v0, u0, *params))


def _step_forward(call: KernelCall, current, v0, u0, params, views: Optional[dict]):
    dtype, on_cpu = _NUMPY_DTYPES[current.dtype], current.device.type == "cpu"
    with precision_scope(dtype):
        inputs = (bridge.to_jax(current, "current"), _import(v0, "v0", views), _import(u0, "u0", views),
                  IzhikevichParams(*(_import(p, name, views) for p, name in zip(params, PARAMETERS))))
        bridge.crossings["forward"] += 1
        arrays = step_calls.step_forward(*inputs, _step_count(1, current), dt=call.dt, scheme=call.scheme,
                                         spike_dtype=dtype, return_x=not call.surrogate, backend=kernel.backend())
        spikes, x, v, u, mem = bridge.arrays_to_torch(arrays, on_cpu)
    if on_cpu and views is not None:  # the next step starts from this state: no import then
        bridge.remember_export(views, "v0", v, arrays[2])
        bridge.remember_export(views, "u0", u, arrays[3])
    return Outputs(spikes, x, v, u, mem), Residuals((current, v0, u0, *params, spikes, v, u), (inputs, arrays))


def _step_backward(call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple,
                   views: Optional[dict]):
    current, v0, u0, *rest = saved
    params, (spikes, v, u) = rest[:len(PARAMETERS)], rest[len(PARAMETERS):]
    dtype, on_cpu = _NUMPY_DTYPES[current.dtype], current.device.type == "cpu"
    with precision_scope(dtype):
        if cache is None:
            inputs = (bridge.to_jax(current, "current"), bridge.to_jax(v0, "v0"), bridge.to_jax(u0, "u0"),
                      IzhikevichParams(*(bridge.to_jax(p, n) for p, n in zip(params, PARAMETERS))))
            traces = tuple(bridge.to_jax(t, n) for t, n in ((spikes, "spikes"), (v, "v"), (u, "u")))
        else:
            inputs, arrays = cache
            traces = (arrays[0], arrays[2], arrays[3])
        g_jax = tuple(_cotangent_to_jax(compact_cotangent(g, True), name, views) for g, name in zip(
            cotangents, ("grad_x", "grad_v", "grad_u", "grad_spikes", "grad_mem")))
        bridge.crossings["backward"] += 1
        g_current, g_v0, g_u0, g_params = step_calls.step_backward(
            *inputs, *traces, g_jax, _step_count(1, current), dt=call.dt, scheme=call.scheme,
            param_mask=tuple(needs[3:]), surrogate=(call.surrogate, call.surrogate_param) if call.surrogate else None,
            backend=kernel.backend())
        wanted = (g_current if needs[0] else None, g_v0 if needs[1] else None, g_u0 if needs[2] else None,
                  *g_params)
        grads = bridge.arrays_to_torch(wanted, on_cpu)
    if on_cpu and views is not None:  # the previous step's backward receives these: no import then
        for name, tensor, array in (("grad_v", grads[1], g_v0), ("grad_u", grads[2], g_u0)):
            if tensor is not None:
                bridge.remember_export(views, name, tensor, array)
    return input_gradients(needs, grads, (current, v0, u0, *params))
