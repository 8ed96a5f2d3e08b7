"""Contenders for :mod:`spark_torch.bench` (not part of the library's API) and their registry (:data:`ALL`,
:data:`BY_NAME`); the hand-fused anchors are in :mod:`spark_torch.bench.anchors`, the workload's constants
and the :class:`Contender` base in :mod:`spark_torch.bench.base` (both imported here, neither imports this).

Every contender runs the RS workload of the benchmark on one input ``I`` ``[T, B, N]`` float32 given
in *drive* units (``R·I`` in mV/ms, i.e. ``resistance = 1``). Each exposes ``setup(I)``, ``fwd()``
(inference, under ``torch.no_grad``), ``fwdbwd()`` (``loss = spikes.sum()`` or a weighted sum, then
backward to the input) and ``counts()`` (per-neuron spike counts of one forward, ``int64 [B*N]``).
``same_model`` says whether it computes the same Izhikevich model as spark_torch (the paper's equations, euler,
``v* >= v_pk``, hard reset); peers that parameterise differently say what they compute instead.
A peer that cannot be imported raises :class:`Unavailable` from its constructor: it is reported as
skipped, never replaced by something else.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .anchors import CAnchor, NumbaFused, TorchFloor
# The constants and the base are also reached as contenders.X (run.py, the tests): re-exported here.
from .base import A, B_, C, D, DT, SLOPE, V_PK, V_R, Contender, Unavailable, loss_weights  # noqa: F401


def _fast_sigmoid():
    from snntorch import surrogate
    return surrogate.fast_sigmoid(slope=SLOPE)


# ----------------------------------------------------------------------------------- spark_torch
class SparkSequence(Contender):
    name, label = "spark_seq", "spark_torch sequence"
    note = ("IzhikevichSoma(sequence=True), one custom-op call forward, one backward; the native kernel where it "
            "builds (spark_torch.kernel.backend())")

    def setup(self, current):
        super().setup(current)
        from spark_torch import IzhikevichSoma
        self.layer = IzhikevichSoma(sequence=True, resistance=1.0, recovery_update=D, spike_grad=_fast_sigmoid())

    def run(self, inp):
        self.layer.reset()
        return self.layer(inp)[0]


class SparkSequenceCheckpointed(SparkSequence):
    name, label = "spark_seq_ckpt", "spark_torch sequence, checkpoint_recovery"
    note = "IzhikevichSoma(sequence=True, checkpoint_recovery=True): u kept every ceil(sqrt(T)) steps, recomputed"

    def setup(self, current):
        Contender.setup(self, current)
        from spark_torch import IzhikevichSoma
        self.layer = IzhikevichSoma(sequence=True, resistance=1.0, recovery_update=D, spike_grad=_fast_sigmoid(),
                                    checkpoint_recovery=True)


class SparkStep(Contender):
    name, label = "spark_step", "spark_torch step loop"
    note = "IzhikevichSoma step mode: `spk, mem = layer(x_t, mem)` for x_t in I.unbind(0) (snnTorch style)"

    def setup(self, current):
        super().setup(current)
        from spark_torch import IzhikevichSoma
        self.layer = IzhikevichSoma(resistance=1.0, recovery_update=D, spike_grad=_fast_sigmoid())

    def run(self, inp):
        self.layer.reset()
        mem = self.layer.reset_mem()
        out = []
        for cur in inp.unbind(0):
            spk, mem = self.layer(cur, mem)
            out.append(spk)
        return torch.stack(out)


class JaxDirect(Contender):
    """The spark_torch JAX kernel called directly (no torch, no DLPack): the bridge-overhead baseline.

    Keep in step with what :mod:`spark_torch.execution.jax_executor` calls: ``kernel.simulate_forward``
    (float spikes, no ``x`` trace, ``mem`` computed; forward-only without state traces) and
    ``kernel.simulate_backward`` with the fast-sigmoid surrogate fused, as the layer runs them through JAX
    (on the CPU the layer itself now calls the native loops directly); falls back to ``jax.vjp`` of
    ``kernel.simulate`` if that API is not there.
    """

    name, label = "jax_direct", "spark kernel direct (JAX)"

    def setup(self, current):
        import jax
        import jax.numpy as jnp
        from spark_torch import kernel
        self.jax, self.kernel = jax, kernel
        T, Bn, N = current.shape
        f32 = jnp.float32
        # on the JAX device that matches the input's (not JAX's default: a GPU wherever there is one)
        device = jax.devices("gpu" if current.is_cuda else "cpu")[current.device.index or 0]
        put = lambda a: jax.device_put(a, device)  # noqa: E731
        full = lambda v: put(jnp.full((N,), v, f32))  # noqa: E731  (per-neuron, as the layer's buffers)
        self.params = kernel.IzhikevichParams(full(V_R), full(C), full(1.0), full(V_PK), full(A), full(B_), full(D))
        self.state = kernel.IzhikevichState(put(jnp.full((Bn, N), V_R, f32)), put(jnp.full((Bn, N), B_ * V_R, f32)))
        self.Ij = put(current.cpu().numpy())
        self.wj = None if self.loss == "sum" else put(loss_weights(current.shape).numpy())
        self.dsg = jax.jit(lambda x, w: (1.0 if w is None else w) / (SLOPE * jnp.abs(x) + 1.0) ** 2)
        self.n_steps = np.int32(T)
        self.g_spikes = jnp.asarray(1.0, f32) if self.wj is None else self.wj
        self.path = "simulate_forward/simulate_backward"
        try:
            jax.block_until_ready(self._fwdbwd_split())
        except (TypeError, AttributeError):
            self.path = "jax.vjp(kernel.simulate)"
        self.note = f"JAX kernel without the torch bridge, via {self.path}"

    def _fwd(self, trace_state=True):
        return self.kernel.simulate_forward(self.Ij, self.state, self.params, self.n_steps, dt=DT, scheme="euler",
                                            spike_dtype=np.float32, return_x=False, return_mem=True,
                                            trace_state=trace_state)

    def _bwd(self, traj):
        return self.kernel.simulate_backward(self.Ij, self.state, self.params, traj, (None, None, None, self.g_spikes),
                                             self.n_steps, dt=DT, scheme="euler", param_mask=(False,) * 7,
                                             surrogate=("fast_sigmoid", SLOPE))

    def _fwdbwd_split(self):
        return self._bwd(self._fwd())

    def _fwdbwd_vjp(self):
        traj, vjp = self.jax.vjp(lambda i: self.kernel.simulate(i, self.state, self.params, DT, "euler"), self.Ij)
        ct = traj._replace(spikes=np.zeros(traj.spikes.shape, self.jax.dtypes.float0), x=self.dsg(traj.x, self.wj),
                           v=self.jax.numpy.zeros_like(traj.v), u=self.jax.numpy.zeros_like(traj.u))
        return vjp(ct)

    def fwd(self):
        return self.jax.block_until_ready(self._fwd(trace_state=False) if self.path.startswith("simulate_forward")
                                          else self.kernel.simulate(self.Ij, self.state, self.params, DT, "euler"))

    def fwdbwd(self):
        return self.jax.block_until_ready(self._fwdbwd_split() if self.path.startswith("simulate_forward")
                                          else self._fwdbwd_vjp())

    def counts(self):
        return np.asarray(self.fwd().spikes).sum(0).reshape(-1).astype(np.int64)


class _OnXlaKernel:
    """Mixin: every call of the contender runs the XLA (``lax``) kernel instead of the native one
    (:func:`spark_torch.kernel.use_backend`), so that both backends are timed side by side in one run."""

    def _xla(self, method, *args):
        from spark_torch import kernel
        with kernel.use_backend("xla"):
            return method(*args)

    def setup(self, current):
        self._xla(super().setup, current)

    def fwd(self):
        return self._xla(super().fwd)

    def fwdbwd(self):
        return self._xla(super().fwdbwd)

    def counts(self):
        return self._xla(super().counts)


class SparkSequenceXla(_OnXlaKernel, SparkSequence):
    name, label = "spark_seq_xla", "spark_torch sequence, XLA kernel"
    note = "as spark_seq, with kernel.use_backend('xla'): the pure-JAX loops instead of the native kernel"


class SparkStepXla(_OnXlaKernel, SparkStep):
    name, label = "spark_step_xla", "spark_torch step loop, XLA kernel"
    note = "as spark_step, with kernel.use_backend('xla')"


class JaxDirectXla(_OnXlaKernel, JaxDirect):
    name, label = "jax_direct_xla", "spark kernel direct (JAX), XLA kernel"


# ----------------------------------------------------------------------------------- plain PyTorch
class FastSigmoid(torch.autograd.Function):
    """Heaviside forward (``x >= 0``, as the kernel fires), snnTorch's fast-sigmoid derivative backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (SLOPE * x.abs() + 1.0) ** 2


def izh_step(v, u, i):
    """One euler step of the RS model; hard reset with the spike detached. Returns ``spk, v, u``."""
    v_star = v + DT * (0.04 * v * v + 5.0 * v + 140.0 - u + i)
    u_star = u + DT * A * (B_ * v - u)
    spk = FastSigmoid.apply((v_star - V_PK) / (V_PK - V_R))
    s = spk.detach() > 0
    return spk, torch.where(s, C, v_star), torch.where(s, u_star + D, u_star)


def izh_loop(current):
    """The "write it yourself" baseline: a ``for cur_t in I.unbind(0)`` loop of :func:`izh_step`."""
    v = torch.full_like(current[0], V_R)
    u = torch.full_like(current[0], B_ * V_R)
    out = []
    for cur in current.unbind(0):
        spk, v, u = izh_step(v, u, cur)
        out.append(spk)
    return torch.stack(out)


class TorchEager(Contender):
    name, label = "torch_eager", "PyTorch eager loop"
    note = "same model in plain torch ops, FastSigmoid autograd.Function, `for cur in I.unbind(0)`"

    def run(self, inp):
        return izh_loop(inp)


class TorchCompileLoop(Contender):
    name, label = "torch_compile_loop", "torch.compile (whole loop)"
    note = "torch.compile(izh_loop): the T-step loop unrolled into one graph; compile time reported separately"

    def setup(self, current):
        super().setup(current)
        torch._dynamo.reset()
        self.fn = torch.compile(izh_loop)

    def run(self, inp):
        return self.fn(inp)


class TorchCompileStep(Contender):
    name, label = "torch_compile_step", "torch.compile (step)"
    note = "torch.compile(izh_step) called in a Python loop over I.unbind(0)"

    def setup(self, current):
        super().setup(current)
        torch._dynamo.reset()
        self.step = torch.compile(izh_step)

    def run(self, inp):
        v = torch.full_like(inp[0], V_R)
        u = torch.full_like(inp[0], B_ * V_R)
        out = []
        for cur in inp.unbind(0):
            spk, v, u = self.step(v, u, cur)
            out.append(spk)
        return torch.stack(out)


# ----------------------------------------------------------------------------------- peers
class SnnLeaky(Contender):
    name, label = "snn_leaky", "snnTorch Leaky (LIF)"
    same_model = "no: LIF, for scale"
    note = "snn.Leaky(beta=0.9, fast_sigmoid(25)) step loop; input I/100 (a LIF, so counts are not compared)"

    def setup(self, current):
        super().setup(current)
        import snntorch as snn
        self.lif = snn.Leaky(beta=0.9, spike_grad=_fast_sigmoid()).to(current.device)

    def run(self, inp):
        mem = self.lif.reset_mem()
        out = []
        for cur in inp.unbind(0):
            spk, mem = self.lif(cur * 0.01, mem)
            out.append(spk)
        return torch.stack(out)


class NorseIzhikevich(Contender):
    name, label = "norse", "Norse Izhikevich"
    same_model = "forward only"

    def __init__(self, loss="sum"):
        super().__init__(loss)
        try:
            from norse.torch.functional import izhikevich as nf
            from norse.torch.module.izhikevich import Izhikevich
        except Exception as e:  # norse's top package imports nir/h5py; torchvision may break it too
            raise Unavailable(f"norse not importable ({type(e).__name__}: {e})") from None
        self.nf, self.cls = nf, Izhikevich
        self.note = ("norse.torch.Izhikevich, tau_inv=1, dt=1 ms (default tau_inv*dt=0.25); same euler forward but "
                     "spikes on v*>v_pk, reset NOT detached, SuperSpike 1/(|v*-v_pk|+1)^2 in mV (alpha unused), "
                     "indexes input[ts]")

    def setup(self, current):
        super().setup(current)
        p = self.nf.IzhikevichParameters(a=A, b=B_, c=C, d=D, v_th=V_PK, tau_inv=1.0, method="super")
        s = self.nf.IzhikevichState(v=torch.tensor(V_R, device=current.device),
                                    u=torch.tensor(B_ * V_R, device=current.device))
        self.mod = self.cls(self.nf.IzhikevichSpikingBehavior(p=p, s=s), dt=DT)

    def run(self, inp):
        return self.mod(inp)[0]


class SpikingJellyIzhikevich(Contender):
    name, label = "spikingjelly", "SpikingJelly IzhikevichNode"
    same_model = "variant: u from the new v"

    def __init__(self, loss="sum"):
        super().__init__(loss)
        try:
            from spikingjelly.activation_based import functional, neuron, surrogate
        except Exception as e:
            raise Unavailable(f"spikingjelly not importable ({type(e).__name__}: {e})") from None
        self.functional, self.neuron, self.surrogate = functional, neuron, surrogate
        # 0.04 v^2 + 5 v + 140 = 0.04 (v - r1)(v - r2); SJ's w = u - b*r2 absorbs the offset of a(b(v - rest) - w).
        disc = math.sqrt(5.0 ** 2 - 4 * 0.04 * 140.0)
        self.r1, self.r2 = (-5.0 + disc) / 0.08, (-5.0 - disc) / 0.08
        self.k = -B_ * self.r2
        self.note = (f"IzhikevichNode(a0=0.04, v_rest={self.r2:.3f}, v_c={self.r1:.3f}, tau_w=1/a, a=b, b=d, tau=1), "
                     f"input I+{self.k:.3f}, w0=u0+{self.k:.3f}: the RS model but u* uses v* (semi-implicit), "
                     "SoftSign(25/95) surrogate in mV, multi-step mode")

    def setup(self, current):
        super().setup(current)
        self.I = current + self.k
        self.x = self.I.detach().clone().requires_grad_(True)
        self.node = self.neuron.IzhikevichNode(
            tau=2.0, v_c=self.r1, a0=0.04, v_threshold=V_PK, v_reset=C, v_rest=self.r2,
            w_rest=B_ * V_R + self.k, tau_w=1.0 / A, a=B_, b=D, surrogate_function=self.surrogate.SoftSign(
                alpha=SLOPE / (V_PK - V_R)), detach_reset=True, step_mode="m")
        self.node.tau = 1.0  # the 2003 model at dt = 1 ms; the constructor only asserts tau > 1

    def run(self, inp):
        self.functional.reset_net(self.node)
        return self.node(inp)


ALL = [SparkSequence, SparkSequenceXla, SparkSequenceCheckpointed, SparkStep, SparkStepXla, JaxDirect, JaxDirectXla,
       TorchEager, TorchCompileLoop, TorchCompileStep, NorseIzhikevich, SpikingJellyIzhikevich, SnnLeaky, NumbaFused,
       CAnchor, TorchFloor]
BY_NAME = {c.name: c for c in ALL}
