"""What an :class:`~spark_torch.soma.IzhikevichSoma` stores in ``state_dict()``, and the checks a loaded one passes.

A checkpoint is untrusted input (a file can be edited, truncated or written by another version), so
everything in it is checked *before* a layer is built or changed from it: a refused load changes
nothing, and no size read from a checkpoint is allocated before the tensors that carry it agree.

Layout of a layer's entries (``prefix`` is the module's path in the model, e.g. ``"1."``):

* ``prefix + field`` for the seven model fields: per-neuron tensors of shape ``units`` (or, for a layer
  saved before it was built, an uninitialized parameter / an empty buffer);
* ``prefix + "mem" | "potential" | "recovery"``: the hidden state ``[B, *units]``, only with
  ``persist_hidden``;
* ``prefix + "_extra_state"``: a dict ``{"format": 1, "config": IzhikevichSomaConfig.to_dict(),
  "units": [..] | None, "learnable": [field, ...], "learn_graded_spikes_factor": bool,
  "hidden_state_own": bool}`` (the last says whether the stored ``(v, u)`` belong to the stored ``mem``,
  i.e. whether a restored layer continues from them or starts from ``mem`` as for any foreign membrane).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import NamedTuple, Optional

import numpy as np
import torch

from .config import IzhikevichSomaConfig, check_field_values
from .state import NAMES as HIDDEN_STATE

FORMAT = 1
MODEL_FIELDS = IzhikevichSomaConfig.MODEL_FIELDS
EXTRA_STATE_KEY = "_extra_state"


class SavedLayer(NamedTuple):
    """The validated ``_extra_state`` of a checkpoint."""

    config: IzhikevichSomaConfig
    units: Optional[tuple[int, ...]]
    learnable: tuple[str, ...]
    learn_graded_spikes_factor: bool
    hidden_state_own: bool


def where(prefix: str) -> str:
    """How an error names the layer whose entries start with ``prefix`` (``"1."`` -> "checkpoint entry `1`")."""
    return f"checkpoint entry `{prefix.rstrip('.')}`" if prefix else "checkpoint"


def parse_units(units, name: str = "units") -> tuple[int, ...]:
    """``units`` as a tuple of positive ints, or a ``TypeError``/``ValueError`` naming ``name``.

    Accepts any iterable of integers (ints, NumPy integers, a ``torch.Size``); refuses strings, floats
    (``2.7`` is not silently truncated) and bools.
    """
    if isinstance(units, (str, bytes)) or not hasattr(units, "__iter__"):
        raise TypeError(f"`{name}` (={units!r}) must be a tuple of positive ints, e.g. (128,)")
    units = tuple(units)
    bad = [n for n in units if not isinstance(n, numbers.Integral) or isinstance(n, (bool, np.bool_))]
    if bad:
        raise TypeError(f"`{name}` (={units!r}) must be a tuple of positive ints; {bad[0]!r} is not an int")
    units = tuple(int(n) for n in units)
    if not units or any(n <= 0 for n in units):
        raise ValueError(f"`{name}` (={units}) must be a non-empty tuple of positive sizes")
    return units


def parse_learnable(learnable, name: str = "learnable") -> tuple[str, ...]:
    """Model field names, in order and without repeats; a single string is one name."""
    if isinstance(learnable, str):
        learnable = (learnable,)
    if not hasattr(learnable, "__iter__") or not all(isinstance(n, str) for n in learnable):
        raise TypeError(f"`{name}` (={learnable!r}) must be a sequence of model field names")
    names = tuple(dict.fromkeys(learnable))
    unknown = [n for n in names if n not in MODEL_FIELDS]
    if unknown:
        raise ValueError(f"`{name}` names {unknown}, which are not model fields; choose from {MODEL_FIELDS}")
    return names


def parse_extra_state(extra) -> SavedLayer:
    """Validate a checkpoint's ``_extra_state`` (see the module docstring) without allocating from it."""
    if not isinstance(extra, Mapping):
        raise TypeError(f"`{EXTRA_STATE_KEY}` must be a dict made by IzhikevichSoma.get_extra_state(), "
                        f"got {type(extra).__name__}")
    if extra.get("format") != FORMAT:
        raise ValueError(f"`{EXTRA_STATE_KEY}['format']` (={extra.get('format')!r}) must be {FORMAT}: "
                         "not a checkpoint this version of spark_torch can read")
    missing = [k for k in ("config", "units", "learnable") if k not in extra]
    if missing:
        raise ValueError(f"`{EXTRA_STATE_KEY}` lacks {missing}")
    config = IzhikevichSomaConfig.from_dict(extra["config"])
    units = None if extra["units"] is None else parse_units(extra["units"], f"{EXTRA_STATE_KEY}['units']")
    learnable = parse_learnable(extra["learnable"], f"{EXTRA_STATE_KEY}['learnable']")
    flags = {}
    for key in ("learn_graded_spikes_factor", "hidden_state_own"):
        value = extra.get(key, False)
        if not isinstance(value, bool):
            raise TypeError(f"`{EXTRA_STATE_KEY}['{key}']` (={value!r}) must be a bool")
        flags[key] = value
    return SavedLayer(config, units, learnable, **flags)


def is_unbuilt_entry(tensor) -> bool:
    """An entry saved before its layer was built: an uninitialized parameter or an empty buffer."""
    return torch.nn.parameter.is_lazy(tensor) or (isinstance(tensor, torch.Tensor) and tensor.numel() == 0)


def check_model_entries(state_dict: Mapping, prefix: str, units: Optional[tuple[int, ...]],
                        current: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Check the model-field tensors a load would copy: type, shape ``units``, finite in ``dtype``, and the
    config's value rules on the values the layer would have afterwards (loaded ones, ``current`` for the
    rest). ``units=None``: the checkpoint was saved unbuilt; its entries must all be unbuilt ones."""
    values = {}
    for name in MODEL_FIELDS:
        key = prefix + name
        if key not in state_dict:
            continue
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{key}` must be a tensor, got {type(tensor).__name__}")
        if units is None or is_unbuilt_entry(tensor):
            if units is not None or not is_unbuilt_entry(tensor):
                raise ValueError(f"`{key}` has shape {tuple(getattr(tensor, 'shape', ()))} but the checkpoint's "
                                 f"units are {units}: the entries disagree")
            continue
        if not tensor.is_floating_point():
            raise TypeError(f"`{key}` has dtype {tensor.dtype}; model fields are floating-point")
        if tuple(tensor.shape) != units:
            raise ValueError(f"`{key}` has shape {tuple(tensor.shape)}, but the checkpoint's units are {units}")
        values[name] = tensor.detach().to(dtype)
    if units is None:
        return
    merged = {n: (values[n] if n in values else current[n]).to("cpu", torch.float64).numpy() for n in MODEL_FIELDS
              if n in values or (n in current and tuple(current[n].shape) == units)}
    for name, value in values.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"`{prefix + name}` holds NaN or Inf (in {dtype})")
    if len(merged) == len(MODEL_FIELDS):
        try:
            check_field_values(merged)
        except ValueError as err:
            raise ValueError(f"{where(prefix)}: {err}") from None


def check_hidden_entries(state_dict: Mapping, prefix: str, units: Optional[tuple[int, ...]]) -> bool:
    """Check the hidden-state entries; returns whether all three are present (they load together)."""
    entries = [state_dict.get(prefix + name) for name in HIDDEN_STATE]
    if all(t is None for t in entries):
        return False
    if any(t is None for t in entries):
        raise ValueError(f"{where(prefix)} holds only some of the hidden state {HIDDEN_STATE}; "
                         "all three are saved together (persist_hidden)")
    shapes = {tuple(t.shape) for t in entries if isinstance(t, torch.Tensor)}
    if len(shapes) != 1 or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in entries):
        raise ValueError(f"{where(prefix)}: the hidden state {HIDDEN_STATE} must be floating-point "
                         f"tensors of one shape, got {[tuple(getattr(t, 'shape', ())) for t in entries]}")
    shape = shapes.pop()
    if entries[0].numel() and (units is None or shape[1:] != units):
        raise ValueError(f"{where(prefix)}: the hidden state has shape {shape}, expected [B, *units] with "
                         f"units {units}")
    if not all(bool(torch.isfinite(t).all()) for t in entries):
        raise ValueError(f"{where(prefix)}: the hidden state holds NaN or Inf")
    return True


def extra_state(layer) -> dict:
    """The ``_extra_state`` of ``layer`` (an ``IzhikevichSoma``), see the module docstring."""
    return {"format": FORMAT, "config": layer.config.to_dict(),
            "units": None if layer.units is None else list(layer.units), "learnable": list(layer.learnable),
            "learn_graded_spikes_factor": isinstance(layer.graded_spikes_factor, torch.nn.Parameter),
            "hidden_state_own": layer._hidden.owns_current()}


def check_compatible(saved: IzhikevichSomaConfig, config: IzhikevichSomaConfig) -> None:
    """A layer built with ``config`` takes values saved with ``saved`` only if ``dt`` and ``scheme`` agree
    (parameters trained at one step size or scheme mean something else at another)."""
    for name in ("dt", "scheme"):
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(f"the checkpoint was made with `{name}` = {getattr(saved, name)!r}, but this layer "
                             f"has `{name}` = {getattr(config, name)!r}; build the layer with the saved "
                             "config (IzhikevichSoma.from_state_dict) or change its config first")


def save(layer, destination: dict, prefix: str, keep_vars: bool, save_tensors) -> None:
    """``layer._save_to_state_dict``: ``save_tensors`` (``nn.Module``'s own) for a built layer; for an
    unbuilt one, its placeholders as empty tensors (loadable with ``torch.load(weights_only=True)``, which
    refuses uninitialized parameters); then the hidden state, with ``persist_hidden``."""
    if layer.built:
        save_tensors(destination, prefix, keep_vars)
    else:
        for name, tensor in (*layer._parameters.items(), *layer._buffers.items()):
            if tensor is not None and name not in layer._non_persistent_buffers_set:
                tensor = torch.zeros(0) if torch.nn.parameter.is_lazy(tensor) else tensor
                destination[prefix + name] = tensor if keep_vars else tensor.detach()
        destination[prefix + EXTRA_STATE_KEY] = extra_state(layer)
    if layer.persist_hidden:
        for name, tensor in zip(HIDDEN_STATE, (layer.mem, layer.potential, layer.recovery)):
            destination[prefix + name] = tensor if keep_vars else tensor.detach()


def _check_keys(layer, state_dict: Mapping, prefix: str) -> None:
    """With ``strict``: every entry ``layer`` saves is there (torch would say so only after copying the rest)."""
    persistent = [n for n in layer._buffers if n not in layer._non_persistent_buffers_set]
    hidden = HIDDEN_STATE if layer.persist_hidden else ()
    missing = [prefix + n for n in (*layer._parameters, *persistent, *hidden, EXTRA_STATE_KEY)
               if prefix + n not in state_dict]
    if missing:
        raise ValueError(f"{where(prefix)} lacks {missing}: pass strict=False to load what it has")


def _saved_units(layer, saved: Optional[SavedLayer], entries: dict, example, prefix: str):
    """The checkpoint's neuron shape, checked against the layer's (``None``: saved unbuilt)."""
    units = saved.units if saved is not None else None if example is None else tuple(example.shape)
    if layer.built and units != layer.units:
        raise ValueError(f"{where(prefix)} holds units {units}, but this layer is built with units {layer.units}"
                         + (" (the checkpoint was saved before its layer was built)" if units is None else ""))
    if not layer.built and units is not None and len(entries) < len(MODEL_FIELDS):
        raise ValueError(f"{where(prefix)} names units {units} but holds only {sorted(entries)} of the model "
                         f"fields: a layer is built from a checkpoint only with all of {MODEL_FIELDS}")
    return units


def load(layer, state_dict: Mapping, prefix: str, strict: bool, missing_keys: list, load_tensors) -> None:
    """``layer._load_from_state_dict``: check everything first (nothing changes on a refusal), build the
    layer if the checkpoint is built and the layer not, let ``load_tensors`` (``nn.Module``'s own) copy the
    model fields, then set the hidden state, ``own`` only if the checkpoint says its ``(v, u)`` belong to
    its ``mem``. An unbuilt checkpoint's placeholders and the hidden state are not ``load_tensors``'s."""
    if strict:
        _check_keys(layer, state_dict, prefix)
    saved = parse_extra_state(state_dict[prefix + EXTRA_STATE_KEY]) if prefix + EXTRA_STATE_KEY in state_dict else None
    if saved is not None:
        check_compatible(saved.config, layer.config)
    entries = {n: state_dict[prefix + n] for n in MODEL_FIELDS if prefix + n in state_dict}
    example = next((t for t in entries.values() if not is_unbuilt_entry(t)), None)
    units = _saved_units(layer, saved, entries, example, prefix)
    dtype = layer.threshold.dtype if layer.built else getattr(example, "dtype", torch.get_default_dtype())
    current = {n: getattr(layer, n) for n in MODEL_FIELDS} if layer.built else {}
    check_model_entries(state_dict, prefix, units, current, dtype)
    with_hidden = layer.persist_hidden and check_hidden_entries(state_dict, prefix, units)
    own_keys = [prefix + n for n in (*(MODEL_FIELDS if units is None else ()), *(HIDDEN_STATE if with_hidden else ()))
                if prefix + n in state_dict]
    hidden = [state_dict[prefix + n] for n in HIDDEN_STATE] if with_hidden else None
    if units is not None and not layer.built:
        layer.build(units, dtype=example.dtype, device=example.device)
    n_missing = len(missing_keys)
    load_tensors({k: v for k, v in state_dict.items() if k not in own_keys} if own_keys else state_dict)
    missing_keys[n_missing:] = [k for k in missing_keys[n_missing:] if k not in own_keys]
    if hidden is not None:
        like = layer.threshold if layer.built else hidden[0]
        layer._hidden.set(*(t.detach().to(device=like.device, dtype=like.dtype, copy=True) for t in hidden),
                          own=saved is not None and saved.hidden_state_own)


def from_state_dict(layer_class, state_dict: Mapping, kwargs: dict):
    """``IzhikevichSoma.from_state_dict``: a new ``layer_class(saved config, **kwargs)`` loaded from ``state_dict``."""
    if not isinstance(state_dict, Mapping) or EXTRA_STATE_KEY not in state_dict:
        raise ValueError("`state_dict` has no '_extra_state' entry (config, units, learnable fields): pass a "
                         "dict made by IzhikevichSoma.state_dict(), or build the layer yourself and call "
                         "load_state_dict")
    saved = parse_extra_state(state_dict[EXTRA_STATE_KEY])
    check_model_entries(state_dict, "", saved.units, {}, torch.float64)
    kwargs = {"learn_graded_spikes_factor": saved.learn_graded_spikes_factor, **kwargs}
    layer = layer_class(saved.config, learnable=saved.learnable, **kwargs)
    layer.persist_hidden = HIDDEN_STATE[0] in state_dict
    layer.load_state_dict(state_dict)
    return layer


class StateDictPersistence:
    """``state_dict()`` / ``load_state_dict()`` / pickling of :class:`~spark_torch.soma.IzhikevichSoma`, by the
    layout and checks above. A mixin listed before ``torch.nn.Module`` in the layer's bases, so that
    ``super()`` here reaches the module's own implementations."""

    def get_extra_state(self) -> dict:
        """Stored in ``state_dict()`` as ``_extra_state`` (layout: module docstring)."""
        return extra_state(self)

    def set_extra_state(self, state: dict) -> None:
        saved = parse_extra_state(state)
        check_compatible(saved.config, self.config)
        self.config = saved.config

    @classmethod
    def from_state_dict(cls, state_dict: Mapping, **kwargs):
        """Rebuild a layer from ``state_dict()`` alone (config, units, learnables and values).

        ``kwargs`` are the non-config constructor arguments (``spike_grad``, ``init_hidden``, ...).
        The checkpoint is checked completely before anything is built from it.
        """
        return from_state_dict(cls, state_dict, kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_param_views"] = {}  # JAX views of this layer's tensors, not of a copy's
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        save(self, destination, prefix, keep_vars, super()._save_to_state_dict)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Check everything this layer would load, then build if needed, then load: a refused checkpoint
        raises before the layer changes."""
        def load_tensors(entries):
            super(StateDictPersistence, self)._load_from_state_dict(entries, prefix, local_metadata, strict, missing_keys,
                                                              unexpected_keys, error_msgs)
        load(self, state_dict, prefix, strict, missing_keys, load_tensors)
