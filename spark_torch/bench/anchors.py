"""Hand-fused anchors for :mod:`spark_torch.bench`: the same RS workload as one loop in Numba and in C.

Not part of the library: they are what a user could write by hand for this one model (fixed parameters,
float32, euler, fast-sigmoid surrogate, ``loss = spikes.sum()``), the yardstick the layer is measured
against. Blocks of 256 neurons stay in L1 for all T steps; the forward saves the pre-step state; the
backward re-integrates each step and applies the surrogate derivative and the detached reset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .contenders import A, B_, C, D, DT, SLOPE, V_PK, V_R, Contender, Unavailable

#: The C anchor's source, compiled on first use with the system C compiler.
C_SOURCE = Path(__file__).with_name("c_fused.c")

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
    """Hand-fused reference loop (not part of the library): a block of neurons stays in L1 for all T steps.

    Forward saves the pre-step ``(v, u)`` (float32) and emits float32 spikes; backward re-integrates each
    step from them, applies the fast-sigmoid derivative and the detached hard reset. Output buffers are
    allocated once and reused (no page faults per call: the best case of a hand-written loop).
    """

    name, label = "numba_fused", "hand-fused loop (Numba)"
    note = ("Numba @njit(parallel=False) fwd+bwd over blocks of 256 neurons; the 1.5x anchor. Its 4 [T,B,N] "
            "buffers (spk, v, u, grad) are allocated once in setup and reused, so its 'extra memory' reads ~0")
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
        self.wn = (np.ones_like(self.In) if self.loss == "sum" else
                   torch.rand(current.shape, generator=torch.Generator().manual_seed(1)).numpy().reshape(T, -1))
        self.kf, self.kb = _numba_kernels()

    def fwd(self):
        return self.kf(self.In, self.spk, self.vs, self.us, False, self.BLOCK)

    def fwdbwd(self):
        self.kf(self.In, self.spk, self.vs, self.us, True, self.BLOCK)
        return self.kb(self.In, self.vs, self.us, self.wn, self.gI, self.BLOCK)

    def counts(self):
        return self.fwd().sum(0).astype(np.int64)


def _c_library():
    """Compile ``c_fused.c`` (beside this file) once per process with the system C compiler (``cc -O3 -march=native
    -ffp-contract=off``: vectorized, but no fused multiply-adds, so it rounds like the other float32
    contenders); ``Unavailable`` if there is none."""
    global _C_LIBRARY
    if _C_LIBRARY is None:
        import ctypes
        import shutil
        import subprocess
        import tempfile

        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise Unavailable("no C compiler (cc/gcc/clang) on PATH")
        with tempfile.TemporaryDirectory(prefix="spark_torch_bench_c_") as tmp:  # the loaded library outlives it
            src, lib = str(C_SOURCE), os.path.join(tmp, "izh.so")
            cmd = [cc, "-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC", "-o", lib, src]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise Unavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[:200]}")
            _C_LIBRARY = ctypes.CDLL(lib)
    return _C_LIBRARY


_C_LIBRARY = None


class CFused(Contender):
    """Hand-fused reference loop in C (not part of the library): the single-thread C anchor.

    Same algorithm as :class:`NumbaFused` (blocks of 256 neurons stay in L1 for all T steps; forward
    saves the pre-step state; backward re-integrates each step and applies the fast-sigmoid derivative
    and the detached reset), written branch-free so that the compiler vectorizes the neuron loop.
    Buffers are allocated once in setup and reused.
    """

    name, label = "c_fused", "hand-fused loop (C)"
    note = ("C, cc -O3 -march=native -ffp-contract=off, single thread, blocks of 256 neurons; the 1.5x anchor. "
            "Its 4 [T,B,N] buffers are allocated once in setup and reused, so its 'extra memory' reads ~0")
    devices = ("cpu",)

    def __init__(self, loss="sum"):
        super().__init__(loss)
        self.lib = _c_library()

    def setup(self, current):
        import ctypes
        T = current.shape[0]
        self.In = np.ascontiguousarray(current.numpy().reshape(T, -1))
        self.spk, self.vs, self.us, self.gI = (np.empty_like(self.In) for _ in range(4))
        self.wn = (np.ones_like(self.In) if self.loss == "sum" else
                   torch.rand(current.shape, generator=torch.Generator().manual_seed(1)).numpy().reshape(T, -1))
        F, L = ctypes.c_float, ctypes.c_long
        ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
        T, M = self.In.shape
        self._fwd_args = (ptr(self.In), ptr(self.spk), ptr(self.vs), ptr(self.us), L(T), L(M),
                          *map(F, (A, B_, C, D, V_R, V_PK, DT)))
        self._bwd_args = (ptr(self.In), ptr(self.vs), ptr(self.us), ptr(self.wn), ptr(self.gI), L(T), L(M),
                          *map(F, (A, B_, V_R, V_PK, DT, SLOPE)))

    def fwd(self):
        self.lib.izh_fwd(*self._fwd_args)
        return self.spk

    def fwdbwd(self):
        self.lib.izh_fwd(*self._fwd_args)
        self.lib.izh_bwd(*self._bwd_args)
        return self.gI

    def counts(self):
        return self.fwd().sum(0).astype(np.int64)
