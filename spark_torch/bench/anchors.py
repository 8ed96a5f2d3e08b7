"""Yardsticks for :mod:`spark_torch.bench`, not part of the library.

* Hand-fused anchors: the same RS workload (:mod:`~spark_torch.bench.base`) as one loop written by hand, in C
  (:class:`CAnchor`, the anchor the report compares against) and in Numba. They are what a user could write
  by hand for this one model (fixed parameters, float32, euler, fast-sigmoid surrogate, ``loss =
  spikes.sum()``). Neurons run in blocks whose state stays in L1 for all T steps.
* :class:`TorchFloor`: a torch layer that computes nothing, i.e. what any layer called from PyTorch pays per
  forward and backward besides its own loops and allocations (dispatch, the autograd node, the loss).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from .base import A, B_, C, D, DT, SLOPE, V_PK, V_R, Contender, Unavailable, loss_weights

#: The C anchor's source, compiled on first use with the system C compiler (:func:`c_library`).
C_SOURCE = Path(__file__).with_name("c_anchor.c")

_NUMBA_KERNELS = None


def _numba_kernels():
    global _NUMBA_KERNELS
    if _NUMBA_KERNELS is None:
        from numba import njit

        @njit(parallel=False, fastmath=False, cache=False)
        def fwd(I, spk, vs, us, save, block):
            T, M = I.shape
            f = np.float32
            vloc, uloc = np.empty(block, np.float32), np.empty(block, np.float32)
            for j0 in range(0, M, block):
                n = min(block, M - j0)
                vloc[:n] = f(V_R)
                uloc[:n] = f(B_ * V_R)
                for t in range(T):
                    for j in range(n):
                        v, u = vloc[j], uloc[j]
                        if save:
                            vs[t, j0 + j] = v
                            us[t, j0 + j] = u
                        vst = v + f(DT) * (f(0.04) * v * v + f(5.0) * v + f(140.0) - u + I[t, j0 + j])
                        ust = u + f(DT) * f(A) * (f(B_) * v - u)
                        if vst >= f(V_PK):
                            spk[t, j0 + j] = f(1.0)
                            vloc[j], uloc[j] = f(C), ust + f(D)
                        else:
                            spk[t, j0 + j] = f(0.0)
                            vloc[j], uloc[j] = vst, ust
            return spk

        @njit(parallel=False, fastmath=False, cache=False)
        def bwd(I, vs, us, w, gI, block):
            T, M = I.shape
            f = np.float32
            gvl, gul = np.empty(block, np.float32), np.empty(block, np.float32)
            scale = f(1.0) / f(V_PK - V_R)
            for j0 in range(0, M, block):
                n = min(block, M - j0)
                gvl[:n] = f(0.0)
                gul[:n] = f(0.0)
                for t in range(T - 1, -1, -1):
                    for j in range(n):
                        v, u = vs[t, j0 + j], us[t, j0 + j]
                        vst = v + f(DT) * (f(0.04) * v * v + f(5.0) * v + f(140.0) - u + I[t, j0 + j])
                        x = (vst - f(V_PK)) * scale
                        den = f(SLOPE) * abs(x) + f(1.0)
                        gx = w[t, j0 + j] / (den * den)
                        gvs = gx * scale + (f(0.0) if vst >= f(V_PK) else gvl[j])
                        gus = gul[j]
                        gI[t, j0 + j] = gvs * f(DT)
                        gvl[j] = gvs * (f(1.0) + f(DT) * (f(0.08) * v + f(5.0))) + gus * f(DT * A * B_)
                        gul[j] = gus * (f(1.0) - f(DT * A)) - gvs * f(DT)
            return gI

        _NUMBA_KERNELS = (fwd, bwd)
    return _NUMBA_KERNELS


class NumbaFused(Contender):
    """Hand-fused reference loop in Numba, one thread (not part of the library): a block of neurons stays in
    L1 for all T steps.

    Forward saves the pre-step ``(v, u)`` (float32) and emits float32 spikes; backward re-integrates each
    step from them, applies the fast-sigmoid derivative and the detached hard reset. Output buffers are
    allocated once and reused (no page faults per call: the best case of a hand-written loop).
    """

    name, label = "numba_fused", "hand-fused loop (Numba)"
    note = ("Numba @njit(parallel=False) fwd+bwd over blocks of 256 neurons, pre-step (v, u) kept per step. Its 4 "
            "[T,B,N] buffers (spk, v, u, grad) are allocated once in setup and reused, so its 'extra memory' reads ~0")
    BLOCK = 256
    devices = ("cpu",)

    def __init__(self, loss="sum"):
        super().__init__(loss)
        try:
            import numba  # noqa: F401
        except Exception as e:
            raise Unavailable(f"numba not importable ({e})") from None

    def setup(self, current):
        T = current.shape[0]
        self.In = np.ascontiguousarray(current.numpy().reshape(T, -1))
        self.shape = current.shape
        self.spk, self.vs, self.us, self.gI = (np.empty_like(self.In) for _ in range(4))
        self.wn = np.ones_like(self.In) if self.loss == "sum" else loss_weights(current.shape).numpy().reshape(T, -1)
        self.kf, self.kb = _numba_kernels()

    def fwd(self):
        return self.kf(self.In, self.spk, self.vs, self.us, False, self.BLOCK)

    def fwdbwd(self):
        self.kf(self.In, self.spk, self.vs, self.us, True, self.BLOCK)
        return self.kb(self.In, self.vs, self.us, self.wn, self.gI, self.BLOCK)

    def counts(self):
        return self.fwd().sum(0).astype(np.int64)


class Model(ctypes.Structure):
    """The C anchor's neuron constants (``Model`` in ``c_anchor.c``), passed by value."""

    _fields_ = [(name, ctypes.c_float) for name in ("a", "b", "c", "d", "vr", "vpk", "dt", "slope")]


#: The C compiler's flags: vectorized for this CPU, no fused multiply-add (so it rounds as the library's native
#: kernel does), OpenMP threads over the blocks; without ``-fopenmp`` when the compiler rejects it.
C_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC")

_C_LIBRARY = None


def c_library():
    """``c_anchor.c`` compiled once per process with the system C compiler and loaded: ``(library, flags)``.

    Raises :class:`Unavailable` when there is no compiler or it fails with and without ``-fopenmp``.
    """
    global _C_LIBRARY
    if _C_LIBRARY is None:
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise Unavailable("no C compiler (cc/gcc/clang) on PATH")
        errors = []
        with tempfile.TemporaryDirectory(prefix="spark_torch_bench_c_") as tmp:  # the loaded library outlives it
            for extra in (("-fopenmp",), ()):
                lib = os.path.join(tmp, f"izh{len(extra)}.so")
                cmd = [cc, *C_FLAGS, *extra, "-o", lib, str(C_SOURCE)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode == 0:
                    _C_LIBRARY = (_declare(ctypes.CDLL(lib)), " ".join(cmd[1:-3]))
                    break
                errors.append(f"{' '.join(cmd)} failed: {done.stderr.strip()[:200]}")
            else:
                raise Unavailable("; ".join(errors))
    return _C_LIBRARY


def _declare(lib):
    f32p = ctypes.POINTER(ctypes.c_float)
    lib.izh_forward.argtypes = [f32p, f32p, f32p, ctypes.c_long, ctypes.c_long, Model]
    lib.izh_reverse.argtypes = [f32p, f32p, f32p, ctypes.c_long, ctypes.c_long, Model]
    lib.izh_forward.restype = lib.izh_reverse.restype = None
    lib.izh_threads.restype = ctypes.c_int
    return lib


def _staggered(shape, address: int, k: int) -> np.ndarray:
    """A float32 buffer whose address is ``k·(1024 + 64)`` bytes past ``address`` modulo the 4 KiB page, so
    that the loop's input, outputs and kept ``v*`` rows (equal strides) never share their offset in a page:
    a load and a store 4 KiB apart look alike to the CPU's store-to-load check (4K aliasing)."""
    n = int(np.prod(shape))
    raw = np.empty(n + 1024, np.float32)
    start = ((address + k * (1024 + 64) - raw.ctypes.data) % 4096) // 4
    return raw[start:start + n].reshape(shape)


def _pointer(array):
    return None if array is None else array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


class CAnchor(Contender):
    """The hand-fused anchor in C (``c_anchor.c``; not part of the library): the yardstick of the report.

    Blocks of 512 neurons keep their state in L1 for all T steps, shared among the OpenMP threads
    (as many as the runtime's default, i.e. torch's thread count where torch's OpenMP runtime is loaded).
    ``fwd``: one pass writing the spikes. ``fwdbwd``: the forward also keeps ``v*`` (the pre-reset
    membrane), then one reverse pass reads one row of ``v*`` per step and writes ``dL/dI``; the spikes'
    cotangent is the constant 1 of ``loss = spikes.sum()`` (``w[t]`` for ``--loss weighted``). Buffers
    (spikes, ``v*``, gradient) are allocated once in setup, at page offsets apart from the input's and each
    other's, and reused: no page faults per call, the best case of a hand-written loop.
    """

    name, label = "c_anchor", "hand-fused loop (C, threads)"
    devices = ("cpu",)

    def __init__(self, loss="sum"):
        super().__init__(loss)
        self.lib, flags = c_library()
        self.note = (f"C ({flags}), {self.lib.izh_threads()} thread(s), blocks of 512 neurons; forward keeps v* and "
                     "spikes, reverse recomputes the pre-step v. Its 3 [T,B,N] buffers are allocated once in setup "
                     "and reused, so its 'extra memory' reads ~0")

    def setup(self, current):
        T = current.shape[0]
        self.In = np.ascontiguousarray(current.cpu().numpy().reshape(T, -1))
        self.spk, self.vs, self.gI = (_staggered(self.In.shape, self.In.ctypes.data, k) for k in (1, 2, 3))
        self.wn = None if self.loss == "sum" else loss_weights(current.shape).numpy().reshape(T, -1)
        model = Model(A, B_, C, D, V_R, V_PK, DT, SLOPE)
        shape = (ctypes.c_long(T), ctypes.c_long(self.In.shape[1]), model)
        self._forward_only = (_pointer(self.In), _pointer(self.spk), None, *shape)
        self._forward = (_pointer(self.In), _pointer(self.spk), _pointer(self.vs), *shape)
        self._reverse = (_pointer(self.vs), _pointer(self.wn), _pointer(self.gI), *shape)

    def fwd(self):
        self.lib.izh_forward(*self._forward_only)
        return self.spk

    def fwdbwd(self):
        self.lib.izh_forward(*self._forward)
        self.lib.izh_reverse(*self._reverse)
        return self.gI

    def counts(self):
        return self.fwd().sum(0).astype(np.int64)


class _NoArithmetic(torch.autograd.Function):
    """The autograd node of a layer that computes nothing: forward returns views of the ``spikes`` and ``mem``
    buffers it is given (``mem`` without a gradient), backward a view of the ``g_current`` buffer."""

    @staticmethod
    def forward(ctx, current, spikes, mem, g_current):
        ctx.g_current = g_current
        ctx.set_materialize_grads(False)  # the unused mem's gradient stays None, not a tensor of zeros
        mem = mem.view_as(mem)
        ctx.mark_non_differentiable(mem)
        return spikes.view_as(spikes), mem

    @staticmethod
    def backward(ctx, g_spikes, g_mem):
        return ctx.g_current.view_as(ctx.g_current), None, None, None


class TorchFloor(Contender):
    """The floor under any layer called from PyTorch (a yardstick, not a peer): one ``autograd.Function`` that
    returns the layer's two ``[T, B, N]`` outputs and, backward, the input gradient, and computes nothing.
    Like the C anchor's, its buffers are allocated once in setup (zeros) and reused, so it pays no allocation
    either. With the workload's loss (``spikes.sum()`` and its backward) it is what any layer pays per call
    besides its own loops and allocations: a layer takes at least this floor plus its loops' time."""

    name, label = "torch_floor", "torch floor (no arithmetic)"
    same_model = "no: computes nothing"
    note = ("autograd.Function returning zero spikes and mem and a zero input gradient from buffers allocated in "
            "setup; the same loss and backward as every contender: what a torch layer pays besides its loops")

    def setup(self, current):
        super().setup(current)
        self.buffers = tuple(torch.zeros_like(current) for _ in range(3))  # spikes, mem, g_current

    def run(self, inp):
        return _NoArithmetic.apply(inp, *self.buffers)[0]
