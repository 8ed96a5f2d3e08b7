"""What every contender of :mod:`spark_torch.bench` shares (not part of the library's API): the workload's
neuron constants, the :class:`Contender` interface and the :class:`Unavailable` signal.

The workload is the RS neuron of Izhikevich (2003), with ``v`` in mV, ``u`` in mV/ms, ``dt`` in ms and the
input in drive units (``R·I`` in mV/ms, resistance 1)::

    v* = v + dt·(0.04·v² + 5·v + 140 − u + I)        u* = u + dt·a·(b·v − u)
    s = v* >= v_pk;  v' = s ? c : v*;  u' = s ? u* + d : u*     (v_0 = v_r, u_0 = b·v_r)

The surrogate of the spike is snnTorch's ``fast_sigmoid(slope=SLOPE)`` at ``x = (v* − v_pk)/(v_pk − v_r)``,
i.e. ``ds/dx = 1/(SLOPE·|x| + 1)²``; the reset treats the spike as a constant.
"""

from __future__ import annotations

import numpy as np
import torch

#: The input ``I = LEVEL + NOISE·N(0, 1)`` in drive units (mV/ms); LEVEL from ``run.calibrate()`` for 34 Hz
#: at T=100 (B=16, N=128, seed 0).
LEVEL, NOISE = 11.385, 2.0
#: RS neuron of Izhikevich (2003): a, b (1/ms), c, d (mV, mV/ms), v_r, v_pk (mV), dt (ms), surrogate slope.
A, B_, C, D, V_R, V_PK, DT, SLOPE = 0.02, 0.2, -65.0, 8.0, -65.0, 30.0, 1.0, 25.0


class Unavailable(Exception):
    """The peer's package is not importable here; the contender is skipped with this reason."""


class Contender:
    """One way of running the workload on an input ``I`` ``[T, B, N]`` float32 (see
    :mod:`spark_torch.bench.contenders` for the interface: ``setup``, ``fwd``, ``fwdbwd``, ``counts``)."""

    name = ""
    label = ""
    same_model = "yes"  # "yes" | "forward only" | "variant: ..." | "no: ..."
    note = ""
    devices = ("cpu", "cuda")  # torch device types it runs on (the input tensor's device)

    def __init__(self, loss="sum"):
        self.loss = loss

    def setup(self, current: torch.Tensor) -> None:
        self.I = current
        self.x = current.detach().clone().requires_grad_(True)
        self.w = None if self.loss == "sum" else loss_weights(current.shape).to(current.device)

    def run(self, inp: torch.Tensor) -> torch.Tensor:  # spikes [T, B, N]
        raise NotImplementedError

    def fwd(self):
        with torch.no_grad():
            return self.run(self.I)

    def fwdbwd(self):
        self.x.grad = None
        spk = self.run(self.x)
        (spk.sum() if self.w is None else (spk * self.w).sum()).backward()

    def counts(self) -> np.ndarray:
        with torch.no_grad():
            spk = self.run(self.I)
        return spk.sum(0).reshape(-1).to(torch.int64).cpu().numpy()


def loss_weights(shape) -> torch.Tensor:
    """The weights ``w ~ U(0, 1)`` (seed 1) of ``--loss weighted``: ``loss = (spikes·w).sum()``."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(1))


def make_input(T, B, N, level=LEVEL, noise=NOISE, seed=0) -> torch.Tensor:
    """The workload's input ``[T, B, N]`` float32: ``level + noise·N(0, 1)`` (drive units, mV/ms), seeded."""
    g = torch.Generator().manual_seed(seed)
    return level + noise * torch.randn((T, B, N), generator=g, dtype=torch.float32)
