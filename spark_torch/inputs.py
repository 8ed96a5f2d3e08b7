"""The rules on what an :class:`~spark_torch.soma.IzhikevichSoma` accepts: constructor arguments, inputs, states.

Each check raises a ``TypeError``/``ValueError`` that names the argument, the value and the rule, before
anything is built or changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

import torch

from . import persistence
from .config import IzhikevichSomaConfig
from .execution.call import FLOAT_DTYPES as SUPPORTED_DTYPES, nonfinite_current
from .execution.shape_executor import has_no_data

#: snnTorch keyword arguments that have no meaning for the Izhikevich model, with the reason.
UNSUPPORTED_SNNTORCH_KWARGS = {
    "beta": "the Izhikevich model has no leak factor; its decay comes from the quadratic and from u",
    "learn_beta": "there is no `beta`; make a model field learnable with `learnable=(...)`",
    "inhibition": "winner-take-all inhibition is not implemented for IzhikevichSoma",
    "state_quant": "state quantization is not implemented for IzhikevichSoma",
    "reset_delay": "the Izhikevich reset happens in the step that spikes (v -> c, u -> u + d)",
}


def autocast_to_float32(cur: torch.Tensor) -> torch.Tensor:
    """Inside an autocast region, half-precision activations are computed in float32 (like autocast's
    float32 ops: the quadratic overflows float16 and bfloat16 cannot resolve the dynamics)."""
    if isinstance(cur, torch.Tensor) and cur.dtype in (torch.float16, torch.bfloat16) \
            and torch.is_autocast_enabled(cur.device.type):
        return cur.float()
    return cur


def all_finite(t: torch.Tensor) -> bool:
    """One read-only pass: NaN and ±Inf propagate into the min/max (cheaper than ``isfinite(t).all()``).
    A tensor without data (meta device, fake tensor: shape inference) has no values to check."""
    if has_no_data(t):
        return True
    low, high = torch.aminmax(t.detach())
    return math.isfinite(low.item()) and math.isfinite(high.item())


def check_state_tensor(mem: torch.Tensor, shape: tuple, dtype) -> None:
    if not isinstance(mem, torch.Tensor):
        raise TypeError(f"`mem` must be a torch.Tensor, got {type(mem).__name__}")
    if mem.numel() and tuple(mem.shape[1:]) != shape[1:]:
        raise ValueError(f"`mem` has shape {tuple(mem.shape)}; expected [B, *units] = {shape} (a different "
                         "batch size B starts from the rest state, as in snnTorch; the units must match)")
    if mem.numel() and mem.dtype != dtype:
        raise TypeError(f"`mem` has dtype {mem.dtype}; expected the input's dtype {dtype}")


def units_from_specs(input_specs) -> tuple[int, ...]:
    if isinstance(input_specs, Mapping):
        if not input_specs:
            raise ValueError("`input_specs` is an empty mapping")
        spec = next(iter(input_specs.values()))
        shape = persistence.parse_units(getattr(spec, "shape", spec), "input_specs")
        return units_from_specs(torch.empty(0).new_empty(shape))
    if isinstance(input_specs, torch.Tensor):
        if input_specs.dim() < 2:
            raise ValueError(f"an example input must be [B, *units]; got shape {tuple(input_specs.shape)}")
        return tuple(input_specs.shape[1:])
    return persistence.parse_units(input_specs)


def field_tensors(config: IzhikevichSomaConfig, units: tuple[int, ...], dtype: torch.dtype, device) -> dict:
    """The seven per-neuron fields of ``config`` at ``units``, as tensors of ``dtype`` on ``device`` (what
    ``build`` materializes), checked to be representable in ``dtype``."""
    arrays = config.materialize(units)
    values = {name: torch.as_tensor(array, dtype=dtype) for name, array in arrays.items()}
    check_representable(values, arrays, float(config.dt), dtype)  # on the CPU: also for a meta `device`
    return {name: value.to(device) for name, value in values.items()}


def check_representable(values: Mapping[str, torch.Tensor], arrays: Mapping, dt: float, dtype: torch.dtype) -> None:
    """The per-neuron ``values`` (``arrays`` cast to ``dtype``), ``dt`` and the products the kernel forms from
    them are finite in ``dtype`` (a float64 config value like 1e300 is valid, but overflows float32)."""
    for name, value in values.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"`{name}` overflows {dtype} (|value| up to {float(abs(arrays[name]).max()):.3g}); "
                             "choose values representable in the layer's dtype or compute in float64")
    for what, product in (("dt", torch.tensor(dt, dtype=dtype)),
                          ("dt * recovery_timescale", dt * values["recovery_timescale"]),
                          ("dt * resistance", dt * values["resistance"])):
        if not torch.isfinite(product).all():
            raise ValueError(f"`{what}` overflows {dtype}; choose a smaller `dt` or field values")


def reject_unsupported_kwargs(kwargs: dict, reset_mechanism: str) -> None:
    for name, why in UNSUPPORTED_SNNTORCH_KWARGS.items():
        if name in kwargs:
            raise TypeError(f"IzhikevichSoma does not accept snnTorch's `{name}` (={kwargs[name]!r}): {why}")
    if reset_mechanism != "zero":
        raise ValueError(f"`reset_mechanism` (={reset_mechanism!r}): the Izhikevich model resets v to "
                         "`potential_reset` and adds `recovery_update` to u; only 'zero' (reset to a value) fits")


def resolve_config(config, overrides: dict) -> IzhikevichSomaConfig:
    if config is None:
        return IzhikevichSomaConfig(**overrides)
    if not isinstance(config, IzhikevichSomaConfig):
        raise TypeError(f"`config` must be an IzhikevichSomaConfig or None, got {type(config).__name__}")
    return config.merge(**overrides) if overrides else config


def resolve_learnable(learnable, learn_threshold: bool) -> tuple[str, ...]:
    names = persistence.parse_learnable(learnable)
    return tuple(dict.fromkeys(names + (("threshold",) if learn_threshold else ())))


def check_current(cur, name: str, sequence: bool, units: Optional[tuple[int, ...]]) -> None:
    """``cur`` is a float32/float64 tensor ``[B, *units]`` (``[T, B, *units]`` with ``sequence``), not empty;
    ``units=None``: any neuron shape. (Whether it is finite is checked by the kernel call:
    ``KernelCall.check_finite``.)"""
    if not isinstance(cur, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(cur).__name__}")
    if cur.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"`{name}` has dtype {cur.dtype}; IzhikevichSoma computes in float32 or float64 "
                        "(convert integer/bool/half input with .float())")
    layout = "[T, B, *units]" if sequence else "[B, *units]"
    min_dims = 3 if sequence else 2
    if cur.dim() < min_dims:
        raise ValueError(f"`{name}` must be {layout} with at least {min_dims} dims, got shape {tuple(cur.shape)}")
    if units is not None and tuple(cur.shape[min_dims - 1:]) != units:
        raise ValueError(f"`{name}` has shape {tuple(cur.shape)}: expected {layout} with units {units}")
    if cur.numel() == 0:
        raise ValueError(f"`{name}` has shape {tuple(cur.shape)}: empty input (T = 0 or B = 0) is not accepted")


def check_params_match(cur: torch.Tensor, fields: Mapping[str, torch.Tensor]) -> None:
    """The given per-neuron fields of the layer (``{name: tensor}``) have ``cur``'s dtype and device (the
    layer checks one before it derives its state from them; :func:`spark_torch.execution.run` checks all)."""
    for name, field in fields.items():
        if field.dtype != cur.dtype:
            raise TypeError(f"`{name}` has dtype {field.dtype}, but `cur` has dtype {cur.dtype}: every field of "
                            f"the layer must have the input's dtype; convert the layer (e.g. layer.to({cur.dtype})) "
                            "or the input")
        if field.device != cur.device:
            raise ValueError(f"`{name}` is on {field.device}, but `cur` is on {cur.device}: move the layer or the "
                             "input")


def check_call(layer, cur: torch.Tensor, mem: Optional[torch.Tensor]) -> tuple[int, ...]:
    """Validate a call of ``layer`` before anything (build, state) changes; returns the state's shape
    ``[B, *units]``."""
    if layer.init_hidden and mem is not None:
        raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
    if torch.compiler.is_exporting() and (not layer.sequence or layer.init_hidden or mem is not None):
        raise RuntimeError(
            "torch.export cannot carry IzhikevichSoma's state (v, u) from one call of the exported program to "
            "the next, so a step-mode layer, init_hidden=True or a `mem` argument would silently restart "
            "every call; export a sequence-mode layer (sequence=True, init_hidden=False) called without "
            "`mem`, which runs a whole [T, B, *units] input from rest in one call")
    check_current(cur, "cur", layer.sequence, layer.units)
    if layer.check_finite and not layer.built and not torch.compiler.is_compiling() and not all_finite(cur):
        raise nonfinite_current()  # before the build; a built layer's kernel call checks (KernelCall.check_finite)
    state_shape = tuple(cur.shape[1:] if layer.sequence else cur.shape)
    if mem is not None:
        check_state_tensor(mem, state_shape, cur.dtype)
        own = layer.built and layer._hidden.owns(mem)  # the layer's own mem came from checked input
        if layer.check_finite and mem.numel() and not own and not torch.compiler.is_compiling() \
                and not all_finite(mem):
            raise ValueError("`mem` contains NaN or Inf; pass a finite membrane (or check_finite=False)")
    return state_shape
