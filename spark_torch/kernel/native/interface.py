"""The native kernel's binary interface, written once on the Python side.

The shared library has two ways in, with the same operands, checks and loops
(``izhikevich_interface.h``): the XLA FFI handlers :data:`FORWARD_TARGET` / :data:`REVERSE_TARGET`, which
JAX calls with buffers, and two plain C functions, which a caller holding the memory calls with addresses
(:func:`bind`). Both take their operands and results in the orders below, and the same scalar
:data:`ATTRIBUTES`. The library describes its own tables in one string
(``SparkTorchIzhikevichInterface()``); :func:`check_library` compares it with :func:`description`, built
from the tables here, and refuses a library that disagrees (an order, a code or a threshold changed on
one side only).

Operand layout: a time buffer is ``[t_buf, m]`` row-major (``m`` neurons: the product of the state shape
``[*batch, *units]``); a *periodic* operand (state, parameters, time-constant cotangents) has ``P``
elements, ``P`` dividing ``m``, and neuron ``i`` reads element ``i % P`` (a scalar, per-unit values
broadcast over the batch, or one value per neuron). ``n_steps`` is an int32 scalar: the loops run the
first ``n_steps`` rows of the buffers and zero the rest of every result.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np

from ..model import SCHEMES, IzhikevichParams

PARAMETERS = IzhikevichParams._fields

#: The operands of a forward call, in order.
FORWARD_OPERANDS = ("current", "v0", "u0", *PARAMETERS, "n_steps")
#: What a forward keeps for its reverse pass (the ``residuals`` attribute; codes are positions):
#: ``final_state``: nothing (inference); ``state_traces``: v and u after every step (u: every ``every``
#: steps when ``every > 0``) and the spikes; ``raw_trace``: the unclipped membrane ``raw`` of every step
#: (``v* = clip(raw)``; the reverse derives the pre-step v and the spike from it) and u every ``every``
#: steps; ``checkpoints``: v and u every ``every`` steps (the reverse recomputes the steps in between).
RESIDUALS = ("final_state", "state_traces", "raw_trace", "checkpoints")
#: Its results: spikes (dtype or bool), x and mem (``[t_buf, m]`` or empty: not asked for), v and u
#: (traces ``[t_buf, m]`` with ``state_traces``, else the final state ``[m]``; u is final whenever it has
#: checkpoints), then ``raw`` ``[t_buf, m]`` and the checkpoints ``[ceil(t_buf/every), m]`` of the
#: residuals mode (every other one empty), and ``u_clipped`` (``raw_trace``, optional: one element, 1 when
#: the clip bounded any u', else 0; without it, and at 0, the euler reverse loop need not recompute u), and
#: ``nonfinite_current`` (optional: one element, 1 when the input of the steps run holds a NaN or ±Inf, else 0;
#: checked in the forward's own pass over the input).
FORWARD_RESULTS = ("spikes", "x", "v", "u", "mem", "raw", "v_checkpoints", "u_checkpoints", "u_clipped",
                   "nonfinite_current")
#: The operands of a reverse call: the forward's, what it kept (as its results; exactly those of the
#: mode, the others empty), the cotangents of x, v, u, the spikes and mem (each empty, periodic, or per
#: step; v's and u's only where they are traces), and those of the final v and u (where they are not).
COTANGENTS = ("g_x", "g_v", "g_u", "g_spikes", "g_mem")
REVERSE_OPERANDS = ("current", "v0", "u0", *PARAMETERS, "spikes", "v", "u", "raw", "v_checkpoints", "u_checkpoints",
                    "u_clipped", *COTANGENTS, "g_v_final", "g_u_final", "n_steps")
#: Its results: dL/dI ``[t_buf, m]``, then the initial state's and the parameters' gradients ``[m]``
#: (per neuron; empty: not wanted).
REVERSE_RESULTS = ("g_current", "g_v0", "g_u0", *(f"g_{name}" for name in PARAMETERS))

#: Codes are positions in these tuples.
SURROGATES = ("none", "atan", "fast_sigmoid", "sigmoid")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The scalars of a call, in the order of the C struct ``izh::Attributes``. The FFI handlers derive
#: ``dtype``, ``t_buf``, ``m`` and ``spikes_bool`` from their buffers and take the others by name, except
#: ``threads`` (the direct calls' thread limit, 0: every core; the FFI handlers run on XLA's pool).
ATTRIBUTES = (("dtype", ctypes.c_int64), ("t_buf", ctypes.c_int64), ("m", ctypes.c_int64), ("dt", ctypes.c_double),
              ("scheme", ctypes.c_int64), ("surrogate", ctypes.c_int64), ("surrogate_param", ctypes.c_double),
              ("residuals", ctypes.c_int64), ("every", ctypes.c_int64), ("per_step", ctypes.c_int64),
              ("spikes_bool", ctypes.c_int64), ("threads", ctypes.c_int64))
FFI_DERIVED_ATTRIBUTES = ("dtype", "t_buf", "m", "spikes_bool", "threads")
FORWARD_FFI_ATTRIBUTES = ("dt", "scheme", "residuals", "every")
REVERSE_FFI_ATTRIBUTES = ("dt", "scheme", "surrogate", "surrogate_param", "residuals", "every", "per_step")

#: Neuron-steps below which a call runs on the calling thread alone; larger calls share their blocks of
#: neurons among threads (results are the same bits whatever the thread count: blocks are independent).
PARALLEL_WORK = 1 << 18

FORWARD_TARGET = "spark_torch_izhikevich_fwd"
REVERSE_TARGET = "spark_torch_izhikevich_bwd"
SYMBOLS = {"forward_ffi": "SparkTorchIzhikevichForward", "reverse_ffi": "SparkTorchIzhikevichReverse",
           "forward_direct": "SparkTorchIzhikevichForwardDirect", "reverse_direct": "SparkTorchIzhikevichReverseDirect",
           "interface": "SparkTorchIzhikevichInterface", "host_threads": "SparkTorchUseHostThreads"}

_C_TYPE_NAMES = {ctypes.c_int64: "i64", ctypes.c_double: "f64"}


def description() -> str:
    """The tables above in the library's format (``InterfaceDescription()`` in ``izhikevich_interface.h``)."""
    tables = (("forward_operands", FORWARD_OPERANDS), ("forward_results", FORWARD_RESULTS),
              ("reverse_operands", REVERSE_OPERANDS), ("reverse_results", REVERSE_RESULTS), ("schemes", SCHEMES),
              ("surrogates", SURROGATES), ("dtypes", tuple(d.name for d in DTYPES)), ("residuals", RESIDUALS))
    fields = ",".join(f"{name}:{_C_TYPE_NAMES[kind]}" for name, kind in ATTRIBUTES)
    return "".join(f"{label}:{','.join(names)};" for label, names in tables) + \
        f"attributes:{fields};parallel_work:{PARALLEL_WORK}"


class InterfaceMismatch(RuntimeError):
    """The library's interface differs from this module's tables (it was built from other sources)."""


def check_library(handle: ctypes.CDLL) -> None:
    """Raise :class:`InterfaceMismatch` unless the library describes exactly :func:`description`."""
    describe = getattr(handle, SYMBOLS["interface"])
    describe.argtypes, describe.restype = (), ctypes.c_char_p
    found, expected = describe().decode(), description()
    if found != expected:
        raise InterfaceMismatch(f"the native library's interface ({found!r}) differs from spark_torch's ({expected!r})")


class Attributes(ctypes.Structure):
    """``izh::Attributes``: the scalars of a direct call (:data:`ATTRIBUTES`)."""

    _fields_ = list(ATTRIBUTES)


class View(ctypes.Structure):
    """``izh::View``: a buffer's address and element count (0: absent)."""

    _fields_ = [("data", ctypes.c_void_p), ("count", ctypes.c_int64)]


#: (attributes, operands, n_operands, results, n_results, error, error_size); operands and results are arrays
#: of :class:`View` (an ``int64`` array of address/count pairs has the same layout)
_DIRECT_ARGTYPES = (ctypes.POINTER(Attributes), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                    ctypes.c_char_p, ctypes.c_int64)


class EntryPoints(NamedTuple):
    """The direct C functions (ctypes, argument types set). Each is called as
    ``f(attributes, operands, len(operands), results, len(results), error, len(error))`` and returns 0, or
    1 with a message in ``error`` when an operand breaks the rules (then nothing is written)."""

    forward: ctypes._CFuncPtr
    reverse: ctypes._CFuncPtr
    #: ``use_host_threads(address)``: run the calls' threads on the OpenMP runtime whose ``GOMP_parallel`` is
    #: at ``address`` (``None``: on the library's own worker threads)
    use_host_threads: ctypes._CFuncPtr


def bind(handle: ctypes.CDLL) -> EntryPoints:
    """The direct entry points of a loaded library (checked with :func:`check_library` first)."""
    check_library(handle)
    functions = []
    for symbol in (SYMBOLS["forward_direct"], SYMBOLS["reverse_direct"]):
        function = getattr(handle, symbol)
        function.argtypes, function.restype = _DIRECT_ARGTYPES, ctypes.c_int
        functions.append(function)
    use_host_threads = getattr(handle, SYMBOLS["host_threads"])
    use_host_threads.argtypes, use_host_threads.restype = (ctypes.c_void_p,), None
    return EntryPoints(*functions, use_host_threads)


def dtype_code(dtype) -> int:
    """The code of a floating dtype (NumPy/JAX ``dtype`` or its name); ``TypeError`` for any other."""
    try:
        return DTYPES.index(np.dtype(dtype))
    except (TypeError, ValueError):
        raise TypeError(f"the native kernel computes in {[d.name for d in DTYPES]}; got dtype {dtype}") from None


def residuals_code(residuals: str) -> int:
    """The code of a residuals mode (:data:`RESIDUALS`)."""
    if residuals not in RESIDUALS:
        raise ValueError(f"`residuals` (={residuals!r}) must be one of {RESIDUALS}")
    return RESIDUALS.index(residuals)


def scheme_code(scheme: str) -> int:
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    return SCHEMES.index(scheme)


def surrogate_code(surrogate: str) -> int:
    """0 for ``""`` (no fused surrogate), else the position of ``surrogate`` in :data:`SURROGATES`."""
    if not surrogate:
        return 0
    if surrogate not in SURROGATES[1:]:
        raise ValueError(f"`surrogate` (={surrogate!r}) must be one of {SURROGATES[1:]}")
    return SURROGATES.index(surrogate)
