r"""``IzhikevichSoma``: the Izhikevich (2003) neuron as a ``torch.nn.Module`` and snnTorch drop-in.

Data flow: :class:`~spark_torch.config.IzhikevichSomaConfig` → per-neuron tensors (``build``) → one
kernel call forward and one reverse call backward, a step or a whole sequence
(:func:`spark_torch.execution.run`: CPU calls run the native kernel's C loops directly where it builds, the
rest goes through JAX) → spikes with the gradient of the user's
``spike_grad``.

Units of what the layer returns and keeps:

* ``spk`` — 0 or ``graded_spikes_factor``, dtype/device of the input.
* ``mem`` — the membrane **normalized** like snnTorch's: ``mem = (v − v_r) / (v_pk − v_r)``, so the
  reset/rest state is ``0`` and the spike cut-off is ``1`` (``v`` in mV is ``layer.potential``).
  ``snntorch.utils.reset`` zeroes ``mem``: that *is* the rest state. ``mem`` is the post-reset value
  (the state carried into the next step), so it never shows the spike itself.
* ``layer.recovery`` — the recovery variable ``u`` (mV/ms), the second state variable, kept by the
  module in step and sequence calls alike.

State continuation rule: a ``mem`` that this layer emitted (or a view/``detach()`` of it, untouched
since) continues from the exact internal state ``(v, u)``; if it no longer requires grad (e.g.
``snn.Leaky.detach_hidden()`` / ``mem.detach()``), the history of ``v`` and ``u`` is cut too
(truncated BPTT). Any other ``mem`` (zeros from ``snntorch.utils.reset``, a tensor you made) starts a
fresh trajectory with ``v = v_r + mem·(v_pk − v_r)`` and ``u = b·v`` (the paper's initial
condition; zeros give exactly the rest state ``v = v_r, u = b·v_r``). A batch-size change, ``reset()``
and ``reset_mem()`` start from the rest state, treated as a constant (like snnTorch's zero state).

Calls without ``mem``: in step mode (snnTorch's convention) the layer continues from its own state;
with ``sequence=True`` and ``init_hidden=False`` every sequence starts from rest (like ``nn.RNN``
without ``h0``); with ``init_hidden=True`` state carries across calls until a reset.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import snntorch as snn
import torch
from torch import nn

from . import execution, inputs, persistence
from .config import IzhikevichSomaConfig
from .execution import KernelCall
from .state import HiddenState, RestStates
from .surrogate import SnnTorchSurrogate, emit_spikes, fused_surrogate

MODEL_FIELDS = IzhikevichSomaConfig.MODEL_FIELDS
STATE_PROPERTIES = ("mem", "potential", "recovery")
#: positions in MODEL_FIELDS of v_r, v_pk and b, from which the layer derives the state it starts from
_STATE_FIELDS = tuple(MODEL_FIELDS.index(n) for n in ("potential_rest", "threshold", "recovery_sensitivity"))


def _final_state(out, copy: bool) -> tuple:
    """``(v, u)`` after a sequence call's last step, as the layer's own tensors. ``out.v``, ``out.u`` are
    ``[T, ...]`` traces (a view of the last row would keep the whole trajectory alive: copied) or ``[1, ...]``
    final states (already tensors of their own, unless ``copy``: on CUDA the next call's initial state must not
    be JAX-allocated memory, and while compiling the op's outputs are not the layer's)."""
    if not copy and out.v.shape[0] == out.u.shape[0] == 1:
        return out.v[0], out.u[0]
    return out.v[-1].clone(), out.u[-1].clone()


def _model_fields(layer: nn.Module) -> list:
    """The layer's seven model fields, in :data:`MODEL_FIELDS` order (Parameters or buffers)."""
    parameters, buffers = layer._parameters, layer._buffers
    return [parameters[n] if n in parameters else buffers[n] for n in MODEL_FIELDS]


class IzhikevichSoma(persistence.StateDictPersistence, snn.Leaky):
    r"""Izhikevich (2003) spiking neurons, computed by a JAX kernel, usable wherever ``snn.Leaky`` is.

    Per neuron and step (``dt`` ms, input current ``I`` in pA, ``v`` in mV; the full model, with the
    scheme ``"izhikevich2003"`` and the bounds, is in :mod:`spark_torch.kernel`)::

        v* = v + dt·(0.04 v² + 5 v + 140 − u + R·I)      u* = u + dt·a·(b·v − u)     (scheme "euler")
        spike = v* >= v_pk;   v ← c, u ← u* + d if spike else v ← v*, u ← u*

    Gradients: the spike's gradient is ``spike_grad`` evaluated at ``x = (v* − v_pk)/(v_pk − v_r)``
    (straight-through: the emitted value is exactly the kernel's spike); resets are detached.

    Args:
        config: an :class:`IzhikevichSomaConfig` (``None``: Spark's defaults).
        **overrides: config fields that win over ``config`` (e.g. ``recovery_update=8.0``). Spark's
            default ``resistance=0.1`` GΩ keeps O(1) inputs from ``nn.Linear`` silent: use
            ``resistance=10.0`` so that unit input is the paper's I = 10.
        units: neuron shape (e.g. ``(128,)`` or ``(C, H, W)``); ``None`` infers it from the first
            input (the trailing dims after the batch dim, or after ``[T, B]`` with ``sequence=True``).
        sequence: ``False``: ``forward`` takes one step ``[B, *units]``; ``True``: a whole sequence
            ``[T, B, *units]`` in one kernel call (returns ``[T, B, *units]`` spikes and membranes).
        learnable: model fields to train as per-neuron ``nn.Parameter`` s (e.g. ``("threshold",
            "recovery_timescale")``); the others are buffers.
        spike_grad, surrogate_disable, init_hidden, output, graded_spikes_factor,
        learn_graded_spikes_factor, learn_threshold: as in snnTorch (``learn_threshold=True`` adds
            ``"threshold"`` to ``learnable``).
        reset_mechanism: only ``"zero"`` (the model resets to ``potential_reset``) is accepted.
        check_finite: reject NaN/Inf input with a ``ValueError`` (the native kernel checks each input row
            as it reads it; else one reduction per call; ``False`` skips it).
        fuse_surrogate: evaluate snnTorch's built-in ``atan``, ``fast_sigmoid`` and ``sigmoid`` (the
            default ``spike_grad`` included) inside the kernel's reverse loop instead of with torch ops
            (same gradient, less memory traffic); other callables always run in torch.
        checkpoint_recovery: keep the recovery variable ``u`` for the backward only every ``⌈√T⌉``
            steps and recompute the rest: one ``[T, B, *units]`` tensor less between forward and
            backward, for a little more time. Results and gradients are bit-identical either way.

    Attributes: ``potential`` (v, mV), ``recovery`` (u, mV/ms), ``mem`` (see module docs), each
    ``[B, *units]``; ``persist_hidden`` (default ``False``, as in snnTorch): ``state_dict()`` also carries
    them, so that a run checkpointed mid-way resumes bit-identically.

    Inputs: ``cur`` ``[B, *units]`` (or ``[T, B, *units]``), optional ``mem`` ``[B, *units]``
    (normalized, see module docs). Outputs: ``spk, mem`` (or ``spk`` with ``init_hidden=True``).

    Example::

        >>> layer = IzhikevichSoma(resistance=10.0)           # unit input = the paper's I = 10
        >>> spk, mem = layer(torch.ones(4, 16))               # builds 16 neurons, one step

    Reference: E. M. Izhikevich, "Simple Model of Spiking Neurons", IEEE TNN 14(6):1569–1572, 2003.
    """

    def __init__(self, config: Optional[IzhikevichSomaConfig] = None, *, units: Optional[Iterable[int]] = None,
                 sequence: bool = False, learnable: Iterable[str] = (), spike_grad=None,
                 surrogate_disable: bool = False, init_hidden: bool = False, output: bool = False,
                 graded_spikes_factor: float = 1.0, learn_graded_spikes_factor: bool = False,
                 learn_threshold: bool = False, reset_mechanism: str = "zero", check_finite: bool = True,
                 fuse_surrogate: bool = True, checkpoint_recovery: bool = False, **overrides):
        inputs.reject_unsupported_kwargs(overrides, reset_mechanism)
        config = inputs.resolve_config(config, overrides)
        learnable = inputs.resolve_learnable(learnable, learn_threshold)
        if spike_grad is None:  # snnTorch's default atan(alpha=2.0), but picklable
            spike_grad = SnnTorchSurrogate("atan", 2.0)
        snn.SpikingNeuron.__init__(
            self, threshold=0.0, spike_grad=spike_grad, surrogate_disable=surrogate_disable,
            init_hidden=init_hidden, inhibition=False, learn_threshold=False, reset_mechanism="zero",
            state_quant=False, output=output, graded_spikes_factor=graded_spikes_factor,
            learn_graded_spikes_factor=learn_graded_spikes_factor)
        del self.threshold  # snnTorch's scalar placeholder; ours is the per-neuron v_pk (mV)
        self.config = config
        self.learnable = learnable
        self.sequence = bool(sequence)
        self.check_finite = bool(check_finite)
        self.fuse_surrogate = bool(fuse_surrogate)
        self.checkpoint_recovery = bool(checkpoint_recovery)
        self._fused_for, self._fused = None, None
        self._fused_surrogate()  # decided here, outside any torch.compile trace
        self.units: Optional[tuple[int, ...]] = None
        for name in MODEL_FIELDS:  # placeholders until build(): lazy parameters, empty buffers
            if name in learnable:
                setattr(self, name, nn.UninitializedParameter())
            else:
                self.register_buffer(name, torch.zeros(0))
        self._hidden = HiddenState()  # mem, v, u and which mem is own (spark_torch.state)
        self._rest_states = RestStates()  # the rest state a sequence starts from, kept while it holds
        self.persist_hidden = False  # state_dict() with mem, potential, recovery: resumes bit-identically
        self._param_views: dict = {}  # JAX views of the fields and state, kept between calls (execution.run)
        if units is not None:
            self.build(units)

    # ------------------------------------------------------------------ build and reset
    def build(self, input_specs, dtype: Optional[torch.dtype] = None, device=None) -> None:
        """Materialize the per-neuron parameters (Spark's ``build``) and the rest state.

        ``input_specs``: the neuron shape ``units`` as a tuple, an example step input tensor
        ``[B, *units]``, or a Spark-style mapping whose first value has a ``shape`` ``(B, *units)``.
        Initializers are drawn from ``config.seed``; values land in ``dtype`` (default: torch's
        default dtype) on ``device``.
        """
        units = inputs.units_from_specs(input_specs)
        if self.units is not None and units != self.units:
            raise ValueError(f"`input_specs` give units {units}, but the layer is built with units {self.units}")
        values = inputs.field_tensors(self.config, units, dtype or torch.get_default_dtype(), device)
        with torch.inference_mode(False), torch.no_grad():  # parameters stay trainable after an eval-mode build
            for name, value in values.items():
                tensor = getattr(self, name)
                if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                    tensor.materialize(units, dtype=value.dtype, device=value.device)
                    tensor.copy_(value)
                elif name in self._parameters:  # the same Parameter (an optimizer may hold it): new values, dtype
                    tensor.data = value.clone()
                else:
                    self._buffers[name] = value.clone()
            self.units = units
            self.reset()

    @property
    def config(self) -> IzhikevichSomaConfig:
        """The layer's :class:`IzhikevichSomaConfig` (immutable; a loaded checkpoint may replace it)."""
        return self._config

    @config.setter
    def config(self, config: IzhikevichSomaConfig) -> None:
        self._config = config
        # dt as a 0-d tensor for torch.compile: a Python float would be guarded by value (spark_torch.execution.custom_op)
        self._dt = torch.tensor(float(config.dt), dtype=torch.float64)

    @property
    def built(self) -> bool:
        return self.units is not None

    def reset(self) -> None:
        """Spark's reset: every neuron back to ``v = v_r, u = b·v_r``; behaves as freshly built."""
        self.reset_mem()

    def reset_mem(self) -> torch.Tensor:
        """snnTorch's reset: the rest state (``mem = 0``, ``u = b·v_r``) at the current batch size."""
        if not self.built or self.mem.numel() == 0:
            self._hidden.set(*(torch.zeros(0, device=self.mem.device) for _ in range(3)))
            return self.mem
        v, u = self._rest_states.get(self.potential_rest, self.recovery_sensitivity, tuple(self.mem.shape),
                                     self.mem.dtype)
        self._hidden.set(torch.zeros_like(v), v, u)
        return self.mem

    def init_leaky(self) -> torch.Tensor:
        """snnTorch's (deprecated) name for :meth:`reset_mem`."""
        return self.reset_mem()

    def detach_hidden_state(self) -> None:
        """Cut the autograd history of ``mem``, ``v`` and ``u`` (truncated BPTT) for this layer only."""
        self._hidden.set(self.mem.detach(), self.potential.detach(), self.recovery.detach())

    @property
    def mem(self) -> torch.Tensor:
        """snnTorch's ``mem``: ``(v − v_r)/(v_pk − v_r)`` returned last, ``[B, *units]``. An assigned tensor
        (``snn.Leaky.reset_hidden``) is a foreign membrane: the next call starts from it with ``u = b·v``;
        the layer's own ``mem`` assigned back (``layer.mem = layer.mem.detach()``) continues."""
        return self._hidden.mem

    @mem.setter
    def mem(self, value: torch.Tensor) -> None:
        self._hidden.assign_mem(value)

    def __getattr__(self, name: str):
        """``nn.Module.__getattr__``, which also finds the state properties (``mem``, ``potential``,
        ``recovery``): snnTorch's probes read ``module.__getattr__("mem")`` directly."""
        if name in STATE_PROPERTIES:
            return getattr(type(self), name).__get__(self)
        return super().__getattr__(name)

    @property
    def potential(self) -> torch.Tensor:
        """The membrane potential ``v`` (mV), ``[B, *units]``."""
        return self._hidden.v

    @property
    def recovery(self) -> torch.Tensor:
        """The recovery variable ``u`` (mV/ms), ``[B, *units]``."""
        return self._hidden.u

    @property
    def beta(self):
        raise NotImplementedError(
            "IzhikevichSoma is not a leaky integrate-and-fire neuron: it has no `beta` and cannot be "
            "exported as snn.Leaky (e.g. by snntorch.export_nir); NIR has no Izhikevich node")

    # ------------------------------------------------------------------ forward
    def forward(self, cur: torch.Tensor, mem: Optional[torch.Tensor] = None):
        cur = inputs.autocast_to_float32(cur)
        state_shape = inputs.check_call(self, cur, mem)
        if not self.built:
            if torch.compiler.is_compiling():
                raise RuntimeError("IzhikevichSoma must be built before torch.compile traces it: pass "
                                   "`units=...`, call `build(...)`, or run one eager call first")
            self.build(state_shape[1:], dtype=cur.dtype, device=cur.device)
        fields = _model_fields(self)
        v_r, v_pk, b = (fields[i] for i in _STATE_FIELDS)
        inputs.check_params_match(cur, {"threshold": v_pk})  # the rest by run(), before any kernel
        if self.sequence and mem is None and not self.init_hidden:  # like nn.RNN without h0: from rest
            v0, u0 = self._rest_states.get(v_r, b, state_shape, cur.dtype)
        else:
            v0, u0 = self._hidden.initial(self.mem if mem is None else mem, state_shape, cur.dtype, v_r, v_pk, b)
        fused = self._fused_surrogate() or ("", 0.0)
        spikes, x, mem_out = self._run_kernel(cur, v0, u0, fields, *fused)
        spk = emit_spikes(spikes, x, None if fused[0] else self.spike_grad, self.graded_spikes_factor)
        if self.init_hidden and not self.output:
            return spk
        return spk, mem_out

    def _run_kernel(self, cur, v0, u0, fields: list, surrogate: str, surrogate_param: float):
        """One kernel call (:func:`spark_torch.execution.run`) from ``(v0, u0)``; keeps the state it ends in.
        Returns ``spikes, x, mem`` at ``cur``'s shape (``x`` ``None`` with a fused surrogate)."""
        compiling = torch.compiler.is_compiling()
        # under torch.compile dt crosses as a 0-d tensor: a float would be guarded by value
        call = KernelCall(self._dt if compiling else self.config.dt, self.config.scheme, surrogate, surrogate_param,
                          self.checkpoint_recovery, step=not self.sequence,
                          check_finite=self.check_finite and not compiling)
        out = execution.run(call, cur, v0, u0, fields, self._param_views)
        # own tensors, not views of the op's outputs; on CUDA the next call's state must not be JAX's memory
        copy = compiling or cur.device.type != "cpu"
        if not self.sequence:
            v, u, mem = (out.v.clone(), out.u.clone(), out.mem.clone()) if copy else (out.v, out.u, out.mem)
            self._hidden.set(mem, v, u)
            return out.spikes, out.x, mem
        if not torch.compiler.is_exporting():  # an exported sequence call is a pure function of its input
            v, u = _final_state(out, copy)
            self._hidden.set(out.mem[-1].clone(), v, u, also_own_last_row_of=out.mem)
        return out.spikes, out.x, out.mem

    def _fused_surrogate(self):
        """``(name, parameter)`` when ``spike_grad`` is fused into the kernel (cached per callable)."""
        if self.spike_grad is not self._fused_for:
            fusable = self.fuse_surrogate and not self.surrogate_disable
            self._fused_for, self._fused = self.spike_grad, fused_surrogate(self.spike_grad) if fusable else None
        return self._fused

    # ------------------------------------------------------------------ state
    def _apply(self, fn, recurse=True):
        """``.to()``, ``.double()``, ``.cuda()``, ...: also on the hidden state, which stays this layer's own,
        so ``u`` continues (instead of restarting from ``b·v`` as for a foreign ``mem``)."""
        module = super()._apply(fn, recurse)
        self._hidden.apply(fn)
        return module

    def extra_repr(self) -> str:
        flags = {"sequence": self.sequence, "learnable": self.learnable, "init_hidden": self.init_hidden,
                 "checkpoint_recovery": self.checkpoint_recovery}
        return ", ".join([f"units={self.units}", f"scheme={self.config.scheme!r}", f"dt={self.config.dt}",
                          *(f"{k}={v!r}" for k, v in flags.items() if v)])
