r"""``IzhikevichSoma``: the Izhikevich (2003) neuron as a ``torch.nn.Module`` and snnTorch drop-in.

Data flow: :class:`~spark_torch.config.IzhikevichSomaConfig` → per-neuron tensors (``build``) →
:func:`spark_torch.ops.scan` (one JAX scan forward, one reverse scan backward) → spikes
with the gradient of the user's ``spike_grad``.

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

import math
import warnings
import weakref
from collections.abc import Iterable, Mapping
from typing import Optional

import snntorch as snn
import torch
from torch import nn

from .config import IzhikevichSomaConfig
from .ops import SUPPORTED_DTYPES, scan
from .surrogate import SnnTorchSurrogate, fused_surrogate

MODEL_FIELDS = IzhikevichSomaConfig.MODEL_FIELDS
_HIDDEN_STATE = ("mem", "potential", "recovery")

#: snnTorch keyword arguments that have no meaning for the Izhikevich model, with the reason.
UNSUPPORTED_SNNTORCH_KWARGS = {
    "beta": "the Izhikevich model has no leak factor; its decay comes from the quadratic and from u",
    "learn_beta": "there is no `beta`; make a model field learnable with `learnable=(...)`",
    "inhibition": "winner-take-all inhibition is not implemented for IzhikevichSoma",
    "state_quant": "state quantization is not implemented for IzhikevichSoma",
    "reset_delay": "the Izhikevich reset happens in the step that spikes (v -> c, u -> u + d)",
}


class IzhikevichSoma(snn.Leaky):
    r"""Izhikevich (2003) spiking neurons, computed by a JAX kernel, usable wherever ``snn.Leaky`` is.

    Per neuron and step (``dt`` ms, input current ``I`` in pA, ``v`` in mV)::

        v* = v + dt·(0.04 v² + 5 v + 140 − u + R·I)      u* = u + dt·a·(b·v − u)     (scheme "euler")
        spike = v* >= v_pk;   v ← c, u ← u* + d if spike else v ← v*, u ← u*

    (scheme ``"izhikevich2003"``: two half steps for ``v``, then ``u`` from the new ``v``.)
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
        check_finite: reject NaN/Inf input with a ``ValueError`` (one reduction per call; set
            ``False`` to skip it).
        fuse_surrogate: for snnTorch's built-in ``atan``, ``fast_sigmoid`` and ``sigmoid`` (the
            default ``spike_grad`` included), evaluate the same derivative inside the JAX reverse scan
            instead of with torch ops (same gradient, less memory traffic). Other callables always run
            in torch. ``False`` forces the torch path.
        checkpoint_recovery: for training, keep the recovery variable ``u`` only every ``⌈√T⌉``
            steps (``T``: the kernel's loop buffer) and recompute the rest in the backward, instead
            of keeping all ``T`` steps: one ``[T, B, *units]`` tensor less between forward and backward
            (peak extra memory of a sequence's forward+backward ~3× instead of ~4× the input), for
            ~10–20 % more time. Results and gradients are bit-identical either way.

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
        _reject_unsupported_kwargs(overrides, reset_mechanism)
        config = _resolve_config(config, overrides)
        learnable = _resolve_learnable(learnable, learn_threshold)
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
        for name in MODEL_FIELDS:
            if name in learnable:
                setattr(self, name, nn.UninitializedParameter())
            else:
                self.register_buffer(name, nn.UninitializedBuffer())
        for name in _HIDDEN_STATE:
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self._emitted: tuple = ()  # (tensor, version) of the state mem this layer emitted last
        self._emitted_last_row: Optional[tuple] = None  # the last row of the [T, ...] mem it returned (weak)
        if units is not None:
            self.build(tuple(units))

    # ------------------------------------------------------------------ build and reset
    def build(self, input_specs, dtype: Optional[torch.dtype] = None, device=None) -> None:
        """Materialize the per-neuron parameters (Spark's ``build``) and the rest state.

        ``input_specs``: the neuron shape ``units`` as a tuple, an example step input tensor
        ``[B, *units]``, or a Spark-style mapping whose first value has a ``shape`` ``(B, *units)``.
        Initializers are drawn from ``config.seed``; values land in ``dtype`` (default: torch's
        default dtype) on ``device``.
        """
        units = _units_from_specs(input_specs)
        if self.units is not None and units != self.units:
            raise ValueError(f"`input_specs` give units {units}, but the layer is built with units {self.units}")
        arrays = self.config.materialize(units)
        dtype = dtype or torch.get_default_dtype()
        for name in MODEL_FIELDS:
            value = torch.as_tensor(arrays[name], dtype=dtype, device=device)
            tensor = getattr(self, name)
            if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                tensor.materialize(units, dtype=dtype, device=device)
            with torch.no_grad():
                getattr(self, name).copy_(value)
        self.units = units
        self.reset()

    @property
    def built(self) -> bool:
        return self.units is not None

    def reset(self) -> None:
        """Spark's reset: every neuron back to ``v = v_r, u = b·v_r``; behaves as freshly built."""
        self.reset_mem()

    def reset_mem(self) -> torch.Tensor:
        """snnTorch's reset: the rest state (``mem = 0``, ``u = b·v_r``) at the current batch size."""
        if not self.built or self.mem.numel() == 0:
            self._set_state(*(torch.zeros(0, device=self.mem.device) for _ in range(3)))
            return self.mem
        v, u = self._rest_state(tuple(self.mem.shape), self.mem.dtype)
        self._set_state(torch.zeros_like(v), v, u)
        return self.mem

    def init_leaky(self) -> torch.Tensor:
        """snnTorch's (deprecated) name for :meth:`reset_mem`."""
        return self.reset_mem()

    def detach_hidden_state(self) -> None:
        """Cut the autograd history of ``mem``, ``v`` and ``u`` (truncated BPTT) for this layer only."""
        self._set_state(self.mem.detach(), self.potential.detach(), self.recovery.detach())

    @property
    def beta(self):
        raise NotImplementedError(
            "IzhikevichSoma is not a leaky integrate-and-fire neuron: it has no `beta` and cannot be "
            "exported as snn.Leaky (e.g. by snntorch.export_nir); NIR has no Izhikevich node")

    # ------------------------------------------------------------------ forward
    def forward(self, cur: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        step_input = not self.sequence
        cur = _autocast_to_float32(cur)
        self._check_input(cur, "cur", sequence=self.sequence)
        state_shape = tuple(cur.shape) if step_input else tuple(cur.shape[1:])  # [B, *units]
        if mem is not None:  # validated before anything (build, state) changes
            _check_state_tensor(mem, state_shape, cur.dtype)
            if self.check_finite and mem.numel() and not torch.compiler.is_compiling() \
                    and not (self.built and self._is_own(mem)) and not _all_finite(mem):  # own mem: checked input
                raise ValueError("`mem` contains NaN or Inf; pass a finite membrane (or check_finite=False)")
        if not self.built:
            if torch.compiler.is_compiling():
                raise RuntimeError("IzhikevichSoma must be built before torch.compile traces it: pass "
                                   "`units=...`, call `build(...)`, or run one eager call first")
            self.build(tuple(cur.shape[1:] if step_input else cur.shape[2:]), dtype=cur.dtype, device=cur.device)
        self._check_params_match(cur)
        if self.sequence and mem is None and not self.init_hidden:
            v0, u0 = self._rest_state(state_shape, cur.dtype)  # like nn.RNN without h0: each sequence from rest
        else:
            v0, u0 = self._initial_state(mem, state_shape, cur.dtype)
        sequence = cur.unsqueeze(0) if step_input else cur
        fused = self._fused_surrogate()
        spikes, x, v, u, mem, _ = scan(sequence, v0, u0, [getattr(self, n) for n in MODEL_FIELDS],
                                       float(self.config.dt), self.config.scheme, *(fused or ("", 0.0)),
                                       recovery_checkpoints=self.checkpoint_recovery)
        spk = self._emit(spikes, x, fused is not None)
        # [T, ...] traces, or [1, ...] final states (no grad; u with checkpoints). Own copies in torch's
        # memory: a view would keep the whole [T, B, N] trajectories alive, and on CUDA the next call's
        # initial state must not be JAX-allocated memory (XLA 0.11's command buffers then fail: "Failed
        # to set memcpy D2D node params", tests/test_cuda.py).
        v_last, u_last = v[-1].clone(), u[-1].clone()
        mem_last = mem[-1].clone()  # a fresh tensor (not a view), so snnTorch may detach_() it
        if step_input:
            self._set_state(mem_last, v_last, u_last)
            spk, mem_out = spk[0], mem_last
        else:
            mem_out = mem
            self._set_state(mem_last, v_last, u_last, also_own_last_row_of=mem_out)
        if self.output:
            return spk, mem_out
        if self.init_hidden:
            return spk
        return spk, mem_out

    def _fused_surrogate(self):
        """``(name, parameter)`` when ``spike_grad`` is fused into the kernel (cached per callable)."""
        if self.spike_grad is not self._fused_for:
            fusable = self.fuse_surrogate and not self.surrogate_disable
            self._fused_for, self._fused = self.spike_grad, fused_surrogate(self.spike_grad) if fusable else None
        return self._fused

    def _emit(self, spikes: torch.Tensor, x: torch.Tensor, fused: bool) -> torch.Tensor:
        """Spikes with their gradient: the kernel's value; the gradient of ``spike_grad`` at ``x``.

        Fused: the kernel's spikes already carry that gradient. Otherwise straight-through: the
        value is ``spikes`` exactly (``s − s.detach()`` is 0), the gradient is ``spike_grad``'s.
        """
        if not fused:
            surrogate = self.spike_grad(x)
            spikes = spikes + (surrogate - surrogate.detach())
        factor = self.graded_spikes_factor
        if not torch.compiler.is_compiling() and not factor.requires_grad and float(factor) == 1.0:
            return spikes  # skip a [T, B, N] multiply by one
        return spikes * factor

    # ------------------------------------------------------------------ state
    def _rest_state(self, shape, dtype):
        v = self.potential_rest.detach().to(dtype).expand(shape)
        u = (self.recovery_sensitivity * self.potential_rest).detach().to(dtype).expand(shape)
        return v.contiguous(), u.contiguous()

    def _initial_state(self, mem_arg: Optional[torch.Tensor], shape: tuple, dtype):
        """The state ``(v, u)`` a call starts from; see the module docstring for the rule."""
        mem = self.mem if mem_arg is None else mem_arg
        if tuple(mem.shape) != shape:
            return self._rest_state(shape, dtype)
        if self._is_own(mem):
            v, u = self.potential, self.recovery
            return (v, u) if mem.requires_grad else (v.detach(), u.detach())
        v = self.potential_rest + mem * (self.threshold - self.potential_rest)
        return v, self.recovery_sensitivity * v

    def _is_own(self, mem: torch.Tensor) -> bool:
        """Is ``mem`` (a view/alias of) a membrane this layer emitted last, unmodified since?

        The state ``mem`` is held (strongly) in ``_emitted``, so its memory cannot be freed and reused
        by another tensor: equal data pointer, layout and version mean equal values. The last row of a
        returned ``[T, B, *units]`` membrane is tracked through a weak reference to that tensor (the
        layer must not keep the user's trajectories alive): it counts while that tensor is alive.
        """
        if torch.compiler.is_compiling():
            return mem is self.mem
        if self.potential.shape != mem.shape:
            return False
        if any(_same_memory(mem, t, t.data_ptr(), t.stride(), version) for t, version in self._emitted):
            return True
        if self._emitted_last_row is None:
            return False
        owner, data_ptr, stride, version = self._emitted_last_row
        owner = owner()
        return owner is not None and _same_memory(mem, owner, data_ptr, stride, version)

    def _set_state(self, mem, v, u, also_own_last_row_of: Optional[torch.Tensor] = None) -> None:
        if torch.compiler.is_compiling():
            self.mem, self.potential, self.recovery = mem, v, u
            return
        # registered buffers (``__init__``): set them directly, as nn.Module.__setattr__ would after its
        # checks (9.7 -> 0.2 µs per call, measured)
        self._buffers.update(mem=mem, potential=v, recovery=u)
        self._emitted = ((mem, mem._version),) if mem.numel() else ()
        self._emitted_last_row = None
        if also_own_last_row_of is not None and also_own_last_row_of.numel():
            last = also_own_last_row_of[-1]
            self._emitted_last_row = (weakref.ref(also_own_last_row_of), last.data_ptr(), last.stride(),
                                      also_own_last_row_of._version)

    # ------------------------------------------------------------------ checks
    def _check_input(self, cur, name: str, sequence: bool) -> None:
        if not isinstance(cur, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(cur).__name__}")
        if cur.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"`{name}` has dtype {cur.dtype}; IzhikevichSoma computes in float32 or float64 "
                            "(convert integer/bool/half input with .float())")
        layout = "[T, B, *units]" if sequence else "[B, *units]"
        min_dims = 3 if sequence else 2
        if cur.dim() < min_dims:
            raise ValueError(f"`{name}` must be {layout} with at least {min_dims} dims, got shape {tuple(cur.shape)}")
        if self.built and tuple(cur.shape[min_dims - 1:]) != self.units:
            raise ValueError(f"`{name}` has shape {tuple(cur.shape)}: expected {layout} with units {self.units}")
        if cur.numel() == 0:
            raise ValueError(f"`{name}` has shape {tuple(cur.shape)}: empty input (T = 0 or B = 0) is not accepted")
        if self.check_finite and not torch.compiler.is_compiling() and not _all_finite(cur):
            raise ValueError(f"`{name}` contains NaN or Inf; pass finite currents (or check_finite=False)")

    def _check_params_match(self, cur: torch.Tensor) -> None:
        ref = self.threshold
        if ref.dtype != cur.dtype:
            raise TypeError(f"`cur` has dtype {cur.dtype} but the layer's parameters are {ref.dtype}; "
                            f"convert the layer (e.g. layer.to({cur.dtype})) or the input")
        if ref.device != cur.device:
            raise ValueError(f"`cur` is on {cur.device} but the layer's parameters are on {ref.device}")

    def extra_repr(self) -> str:
        parts = [f"units={self.units}", f"scheme={self.config.scheme!r}", f"dt={self.config.dt}"]
        if self.sequence:
            parts.append("sequence=True")
        if self.learnable:
            parts.append(f"learnable={self.learnable}")
        if self.init_hidden:
            parts.append("init_hidden=True")
        if self.checkpoint_recovery:
            parts.append("checkpoint_recovery=True")
        return ", ".join(parts)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_emitted_last_row"] = None  # a weak reference to the caller's tensor: not copied
        return state

    def __setstate__(self, state):
        """After unpickling or ``copy.deepcopy``, the copied emitted ``mem`` is still this layer's own."""
        super().__setstate__(state)
        self._emitted = tuple((t, t._version) for t, _ in self.__dict__.get("_emitted", ()))
        self._emitted_last_row = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def persist_hidden(self) -> bool:
        """Whether ``state_dict()`` carries the hidden state (``mem``, ``potential``, ``recovery``).

        Off by default (as in snnTorch). On: a checkpoint taken mid-run resumes bit-identically.
        """
        return "mem" not in self._non_persistent_buffers_set

    @persist_hidden.setter
    def persist_hidden(self, enabled: bool) -> None:
        for name in _HIDDEN_STATE:
            (self._non_persistent_buffers_set.discard if enabled else self._non_persistent_buffers_set.add)(name)

    def get_extra_state(self) -> dict:
        """Stored in ``state_dict()`` as ``_extra_state``: the config, the units and the learnable fields."""
        return {"format": 1, "config": self.config.to_dict(), "units": None if self.units is None else list(self.units),
                "learnable": list(self.learnable)}

    def set_extra_state(self, state: dict) -> None:
        saved = IzhikevichSomaConfig.from_dict(state["config"])
        for name in ("dt", "scheme"):
            if getattr(saved, name) != getattr(self.config, name):
                raise ValueError(f"the checkpoint was made with `{name}` = {getattr(saved, name)!r}, but this layer "
                                 f"has `{name}` = {getattr(self.config, name)!r}; build the layer with the saved "
                                 "config (IzhikevichSoma.from_state_dict) or change its config first")
        self.config = saved

    @classmethod
    def from_state_dict(cls, state_dict: Mapping, **kwargs) -> "IzhikevichSoma":
        """Rebuild a layer from ``state_dict()`` alone (config, units, learnables and values).

        ``kwargs`` are the non-config constructor arguments (``spike_grad``, ``init_hidden``, ...).
        """
        extra = state_dict["_extra_state"]
        layer = cls(IzhikevichSomaConfig.from_dict(extra["config"]), learnable=tuple(extra["learnable"]),
                    units=extra["units"], **kwargs)
        layer.persist_hidden = "mem" in state_dict
        layer.load_state_dict(state_dict)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "threshold"
        if not self.built and key in state_dict:
            saved = state_dict[key]
            self.build(tuple(saved.shape), dtype=saved.dtype, device=saved.device)
        hidden = [state_dict.get(prefix + name) for name in _HIDDEN_STATE]
        if self.persist_hidden and all(t is not None for t in hidden):
            self._set_state(*(torch.empty_like(t) for t in hidden))  # shapes of the saved state
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.persist_hidden and all(t is not None for t in hidden):
            self._set_state(self.mem, self.potential, self.recovery)  # the loaded mem is this layer's own


def _autocast_to_float32(cur: torch.Tensor) -> torch.Tensor:
    """Inside an autocast region, half-precision activations are computed in float32 (like autocast's
    float32 ops: the quadratic overflows float16 and bfloat16 cannot resolve the dynamics)."""
    if isinstance(cur, torch.Tensor) and cur.dtype in (torch.float16, torch.bfloat16) \
            and torch.is_autocast_enabled(cur.device.type):
        return cur.float()
    return cur


def _same_memory(mem: torch.Tensor, owner: torch.Tensor, data_ptr: int, stride: tuple, version: int) -> bool:
    """``mem`` has this data pointer and layout, ``owner``'s dtype and device, and the recorded version."""
    return (mem.data_ptr() == data_ptr and mem.stride() == stride and mem.dtype == owner.dtype
            and mem.device == owner.device and mem._version == version)


def _all_finite(t: torch.Tensor) -> bool:
    """One read-only pass: NaN and ±Inf propagate into the min/max (cheaper than ``isfinite(t).all()``)."""
    low, high = torch.aminmax(t.detach())
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _check_state_tensor(mem: torch.Tensor, shape: tuple, dtype) -> None:
    if not isinstance(mem, torch.Tensor):
        raise TypeError(f"`mem` must be a torch.Tensor, got {type(mem).__name__}")
    if mem.numel() and tuple(mem.shape[1:]) != shape[1:]:
        raise ValueError(f"`mem` has shape {tuple(mem.shape)}; expected [B, *units] = {shape} (a different "
                         "batch size B starts from the rest state, as in snnTorch; the units must match)")
    if mem.numel() and mem.dtype != dtype:
        raise TypeError(f"`mem` has dtype {mem.dtype}; expected the input's dtype {dtype}")


def _units_from_specs(input_specs) -> tuple[int, ...]:
    if isinstance(input_specs, Mapping):
        if not input_specs:
            raise ValueError("`input_specs` is an empty mapping")
        spec = next(iter(input_specs.values()))
        return _units_from_specs(torch.empty(0).new_empty(tuple(getattr(spec, "shape", spec))))
    if isinstance(input_specs, torch.Tensor):
        if input_specs.dim() < 2:
            raise ValueError(f"an example input must be [B, *units]; got shape {tuple(input_specs.shape)}")
        return tuple(input_specs.shape[1:])
    units = tuple(int(n) for n in input_specs)
    if not units or any(n <= 0 for n in units):
        raise ValueError(f"`units` (={units}) must be a non-empty tuple of positive sizes")
    return units


def _reject_unsupported_kwargs(kwargs: dict, reset_mechanism: str) -> None:
    for name, why in UNSUPPORTED_SNNTORCH_KWARGS.items():
        if name in kwargs:
            raise TypeError(f"IzhikevichSoma does not accept snnTorch's `{name}` (={kwargs[name]!r}): {why}")
    if reset_mechanism != "zero":
        raise ValueError(f"`reset_mechanism` (={reset_mechanism!r}): the Izhikevich model resets v to "
                         "`potential_reset` and adds `recovery_update` to u; only 'zero' (reset to a value) fits")


def _resolve_config(config, overrides: dict) -> IzhikevichSomaConfig:
    if config is None:
        return IzhikevichSomaConfig(**overrides)
    if not isinstance(config, IzhikevichSomaConfig):
        raise TypeError(f"`config` must be an IzhikevichSomaConfig or None, got {type(config).__name__}")
    return config.merge(**overrides) if overrides else config


def _resolve_learnable(learnable, learn_threshold: bool) -> tuple[str, ...]:
    if isinstance(learnable, str):
        learnable = (learnable,)
    names = tuple(dict.fromkeys(list(learnable) + (["threshold"] if learn_threshold else [])))
    unknown = [n for n in names if n not in MODEL_FIELDS]
    if unknown:
        raise ValueError(f"`learnable` names {unknown}, which are not model fields; choose from {MODEL_FIELDS}")
    return names
