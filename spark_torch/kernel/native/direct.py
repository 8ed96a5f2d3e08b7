"""The native loops called directly on memory the caller holds, without XLA's runtime around them.

A kernel call through JAX costs a fixed ~35–45 µs per direction on a 2-core CPU before any arithmetic
(XLA's executable launch and argument handling; a jitted call of a trivial function with the same eleven
operands costs ~34 µs), plus the DLPack crossings of its operands and results. An snnTorch step loop pays
that twice per time step, which alone is most of what ``snn.Leaky`` spends on a whole step. The shared
library that holds the FFI handlers (:mod:`spark_torch.kernel.native`) therefore also exports the same
loops as two plain C functions, ``SparkTorchIzhikevichForwardDirect`` and
``SparkTorchIzhikevichReverseDirect`` (``izhikevich_direct.h``); :func:`entry_points` returns them as
ctypes functions.

Operands are addresses of row-major buffers in the caller's memory, laid out as the FFI handlers take them:
time buffers ``[n_steps, M]`` (``M`` neurons), periodic operands ``(address, period)`` (neuron ``i``
reads element ``i % period``; the period divides ``M``). The C functions run every block of neurons on the
calling thread in order, so results are bit-identical to the FFI handlers', which run on one thread too
below :data:`PARALLEL_WORK` neuron-steps: callers use this path only below that size.

The caller is responsible for the rest: every buffer alive, contiguous, of the dtype named and large
enough for the layout, for the duration of the call (the C functions check only the dtype code, the
periods and null pointers, and return non-zero, writing nothing, when those are wrong).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["PARALLEL_WORK", "DTYPE_CODES", "EntryPoints", "entry_points", "pointer_array", "period_array"]

#: neuron-steps below which the FFI handlers run on the calling thread alone (``kParallelWork`` in
#: ``izhikevich_ffi.cc``): direct calls are for problems below this size
PARALLEL_WORK = 1 << 18

#: the C functions' dtype codes
DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}

_i64, _f64, _ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
_ptrs, _i64s = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)

#: forward(dtype, n_steps, m, dt, scheme, current, model[9], periods[9], spikes, spikes_bool, x, v, u, mem)
_FORWARD_ARGTYPES = (_i64, _i64, _i64, _f64, _i64, _ptr, _ptrs, _i64s, _ptr, _i64, _ptr, _ptr, _ptr, _ptr)
#: reverse(dtype, n_steps, m, dt, scheme, surrogate, surrogate_param, current, model[9], periods[9], spikes,
#: spikes_bool, v_trace, u_trace, cotangents[5], cotangent_periods[5], g_current, g_v0, g_u0, g_params[7])
_REVERSE_ARGTYPES = (_i64, _i64, _i64, _f64, _i64, _i64, _f64, _ptr, _ptrs, _i64s, _ptr, _i64, _ptr, _ptr, _ptrs,
                     _i64s, _ptr, _ptr, _ptr, _ptrs)

pointer_array = {n: ctypes.c_void_p * n for n in (5, 7, 9)}  # pointer_array[9](*addresses)
period_array = {n: ctypes.c_int64 * n for n in (5, 9)}


class EntryPoints(NamedTuple):
    """The two C functions (ctypes, argument types set; each returns 0 on success)."""

    forward: ctypes._CFuncPtr
    reverse: ctypes._CFuncPtr


_entry_points: Optional[EntryPoints] = None


def entry_points() -> EntryPoints:
    """The direct entry points of the loaded native library; raises
    :class:`spark_torch.kernel.native.Unavailable` where the library cannot be built or loaded."""
    global _entry_points
    if _entry_points is None:
        from . import load

        handle = load().handle
        forward, reverse = handle.SparkTorchIzhikevichForwardDirect, handle.SparkTorchIzhikevichReverseDirect
        for function, argtypes in ((forward, _FORWARD_ARGTYPES), (reverse, _REVERSE_ARGTYPES)):
            function.argtypes, function.restype = argtypes, ctypes.c_int
        _entry_points = EntryPoints(forward, reverse)
    return _entry_points
