r"""Configuration of the Izhikevich (2003) soma: fields, units, validation, dict/JSON.

The model (E. M. Izhikevich, "Simple Model of Spiking Neurons", IEEE Trans.
Neural Netw. 14(6):1569-1572, 2003, doi:10.1109/TNN.2003.820440), per neuron,
with membrane potential ``v`` (mV), recovery ``u`` (mV/ms), input current
``I`` (pA), time step ``dt`` (ms)::

    f(v, u) = 0.04 v^2 + 5 v + 140 - u + R I       (mV/ms; R in GOhm, so R I in mV/ms)
    "euler":          v* = v + dt f(v, u)
                      u* = u + dt a (b v - u)          (u uses the OLD v)
    "izhikevich2003": v1/2 = v + dt/2 f(v, u);  v* = v1/2 + dt/2 f(v1/2, u)
                      u* = u + dt a (b v* - u)
    spike:            s = (v* >= v_pk)
    reset:            v <- c if s else v*;  u <- u* + d if s else u*
    rest / reset():   v = v_r, u = b v_r

Field names and defaults are those of the Spark framework's
``IzhikevichSomaConfig``. Its numerical defects are NOT kept: Spark evaluated
the quadratic at ``v + 130 mV`` (so every neuron fired every step), multiplied
``u`` by ``R``, reset ``u`` to 0 instead of ``b v_r``, used a strict ``>``
spike test, and computed in float16 by default.

Each model field takes a float, an array-like broadcastable to the layer's
neuron shape ``units`` (numpy array, list, torch tensor, jax array; stored as
a read-only float64 numpy array), or an :class:`~spark_torch.initializers.Initializer`
drawn reproducibly from ``seed`` by :meth:`IzhikevichSomaConfig.materialize`.

Pure numpy + stdlib: torch tensors and jax arrays are accepted by duck typing.

Example:
    >>> cfg = IzhikevichSomaConfig(recovery_update=8.0)       # regular spiking
    >>> cfg.merge(potential_reset=-55.0).potential_reset
    -55.0
    >>> IzhikevichSomaConfig.from_json(cfg.to_json()) == cfg
    True
    >>> cfg.materialize((2, 3))["threshold"].shape
    (2, 3)
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, ClassVar, Union

import numpy as np

from .initializers import Initializer, initializer_from_dict

__all__ = ["IzhikevichSomaConfig", "SCHEMES", "FieldValue", "V_LIMIT", "check_field_values"]

#: Integration schemes understood by the kernel.
SCHEMES: tuple[str, ...] = ("euler", "izhikevich2003")

#: Bound (mV) on the membrane potential and (mV/ms) on the recovery variable: the kernel confines every
#: integrated value to ``[-V_LIMIT, V_LIMIT]``, so membrane levels of the config must lie inside it.
V_LIMIT = 1e5

#: What a model field holds after construction.
FieldValue = Union[float, np.ndarray, Initializer]

_ACCEPTED = ("a real number (int or float, not bool), an array-like of real numbers "
             "(numpy array, list, torch tensor, jax array) broadcastable to the neuron "
             "shape, or an Initializer")


def _field(default: Any, unit: str, symbol: str, description: str) -> Any:
    meta = {"unit": unit, "symbol": symbol, "description": description}
    return dataclasses.field(default=default, metadata=meta)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_real_scalar(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _to_numpy(name: str, value: Any) -> np.ndarray:
    """Convert an array-like (incl. torch/jax by duck typing) to a read-only float64 array."""
    bad = TypeError(f"`{name}`: expected {_ACCEPTED}; got {type(value).__name__} "
                    f"({_short(value)})")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()  # also handles bfloat16, which numpy lacks
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise bad from err
    if arr.dtype.kind not in "iuf":
        raise bad
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


def _coerce_model_value(name: str, value: Any) -> FieldValue:
    """float | read-only float64 array | Initializer, or TypeError naming ``name``."""
    if isinstance(value, Initializer):
        return value
    if _is_real_scalar(value):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "__array__"):
        return _to_numpy(name, value)
    raise TypeError(f"`{name}`: expected {_ACCEPTED}; got {type(value).__name__} "
                    f"({_short(value)})")


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _check_finite(name: str, value: FieldValue) -> None:
    if isinstance(value, Initializer):
        for key, p in value.params().items():
            if not math.isfinite(p):
                raise ValueError(f"`{name}`: initializer parameter `{key}` (={p!r}) must be finite")
        return
    arr = np.asarray(value)
    if not np.isfinite(arr).all():
        if arr.ndim == 0:
            raise ValueError(f"`{name}` (={float(arr)!r}) must be finite")
        idx = _first_bad(~np.isfinite(arr))
        raise ValueError(f"`{name}` must be finite everywhere; neuron {idx} has {float(arr[idx])!r}")


def _check_nonneg(name: str, value: FieldValue) -> None:
    if isinstance(value, Initializer):
        return  # deferred to materialize
    arr = np.asarray(value)
    if (arr < 0).any():
        if arr.ndim == 0:
            raise ValueError(f"`{name}` (={float(arr)!r}) must be >= 0")
        idx = _first_bad(arr < 0)
        raise ValueError(f"`{name}` must be >= 0 everywhere; neuron {idx} has {float(arr[idx])!r}")


def _check_above(hi_name: str, hi: FieldValue, lo_name: str, lo: FieldValue) -> None:
    """Elementwise ``hi > lo`` after broadcasting; skipped if either is an initializer."""
    if isinstance(hi, Initializer) or isinstance(lo, Initializer):
        return
    try:
        h, l = np.broadcast_arrays(np.asarray(hi), np.asarray(lo))
    except ValueError as err:
        raise ValueError(f"`{hi_name}` (shape {np.shape(hi)}) and `{lo_name}` "
                         f"(shape {np.shape(lo)}) do not broadcast together") from err
    bad = ~(h > l)
    if bad.any():
        if h.ndim == 0:
            raise ValueError(f"`{hi_name}` (={float(h)!r}) must be > `{lo_name}` (={float(l)!r})")
        idx = _first_bad(bad)
        raise ValueError(f"`{hi_name}` must be > `{lo_name}` elementwise; neuron {idx} has "
                         f"{hi_name}={float(h[idx])!r}, {lo_name}={float(l[idx])!r}")


def _check_within_bound(name: str, value: FieldValue) -> None:
    """``|value| <= V_LIMIT``: a membrane level the bounded state can hold (skipped for initializers)."""
    if isinstance(value, Initializer):
        return
    arr = np.asarray(value)
    bad = np.abs(arr) > V_LIMIT
    if bad.any():
        rule = f"must lie within ±{V_LIMIT:g} mV, the bound on the membrane potential"
        if arr.ndim == 0:
            raise ValueError(f"`{name}` (={float(arr)!r}) {rule}")
        idx = _first_bad(bad)
        raise ValueError(f"`{name}` {rule} everywhere; neuron {idx} has {float(arr[idx])!r}")


def check_field_values(values: dict[str, FieldValue]) -> None:
    """The value rules on the seven model fields (shared by validate(), materialize() and checkpoint loads):
    finite; ``resistance >= 0``; ``threshold > potential_rest`` and ``threshold > potential_reset``
    elementwise; ``potential_rest``, ``potential_reset`` and ``threshold`` within ``±V_LIMIT`` mV."""
    for name in IzhikevichSomaConfig.MODEL_FIELDS:
        _check_finite(name, values[name])
    _check_nonneg("resistance", values["resistance"])
    for name in ("potential_rest", "potential_reset", "threshold"):
        _check_within_bound(name, values[name])
    _check_above("threshold", values["threshold"], "potential_rest", values["potential_rest"])
    _check_above("threshold", values["threshold"], "potential_reset", values["potential_reset"])


def _coerce_dt(value: Any) -> float:
    if not _is_real_scalar(value):
        raise TypeError(f"`dt`: expected a real number in ms (int or float, not bool); "
                        f"got {type(value).__name__} ({_short(value)})")
    return float(value)


def _coerce_scheme(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`scheme`: expected a str, one of {SCHEMES}; "
                        f"got {type(value).__name__} ({_short(value)})")
    return value


def _coerce_seed(value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`seed`: expected a non-negative int (not bool); "
                        f"got {type(value).__name__} ({_short(value)})")
    return int(value)


def _check_settings(dt: float, scheme: str, seed: int) -> None:
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"`dt` (={dt!r}) must be a finite number > 0 (ms)")
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}")
    if seed < 0:
        raise ValueError(f"`seed` (={seed!r}) must be >= 0")


def _encode(value: Any) -> Any:
    if isinstance(value, Initializer):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return {"array": value.tolist(), "shape": list(value.shape)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "initializer" in value:
        return initializer_from_dict(value)
    if isinstance(value, dict) and set(value) == {"array", "shape"}:
        return np.asarray(value["array"], dtype=np.float64).reshape(value["shape"])
    return value


def _values_equal(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.shape == y.shape and bool(np.array_equal(x, y)))
    return type(x) is type(y) and x == y


def _summary(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape})"
    return repr(value)


@dataclasses.dataclass(eq=False, frozen=True)
class IzhikevichSomaConfig:
    """Parameters of an :class:`IzhikevichSoma` layer (Spark's names and defaults).

    Args:
        __skip_validation__: if True, skip the value rules (finite, ``dt > 0``,
            ``resistance >= 0``, ``threshold > potential_rest, potential_reset``,
            known ``scheme``, ``seed >= 0``), here and in :meth:`materialize`.
            Types and field names are always checked.
        **kwargs: any of the fields below; unknown names raise ``TypeError``.

    Fields (unit): ``potential_rest`` v_r (mV), ``potential_reset`` c (mV),
    ``resistance`` R (GOhm), ``threshold`` v_pk (mV), ``recovery_timescale``
    a (1/ms), ``recovery_sensitivity`` b (dimensionless), ``recovery_update``
    d (mV/ms), ``dt`` (ms), ``scheme`` (one of :data:`SCHEMES`), ``seed`` (int).
    See :meth:`field_info` for the one-line descriptions.

    The config is immutable: use :meth:`merge` to change fields.

    Example:
        >>> IzhikevichSomaConfig(threshold=-100.0)
        Traceback (most recent call last):
        ...
        ValueError: `threshold` (=-100.0) must be > `potential_rest` (=-65.0)
        >>> IzhikevichSomaConfig(__skip_validation__=True, threshold=-100.0).threshold
        -100.0
    """

    potential_rest: FieldValue = _field(
        -65.0, "mV", "v_r", "membrane potential at rest: state after build/reset is v = v_r, u = b*v_r")
    potential_reset: FieldValue = _field(
        -65.0, "mV", "c", "membrane potential right after a spike (absolute)")
    resistance: FieldValue = _field(
        0.1, "GΩ", "R", "scales the input current: drive = R*I (100 pA -> 10 mV/ms)")
    threshold: FieldValue = _field(
        30.0, "mV", "v_pk", "spike cut-off (the paper's apex): spike when v >= v_pk")
    recovery_timescale: FieldValue = _field(
        0.02, "1/ms", "a", "rate at which the recovery variable u relaxes")
    recovery_sensitivity: FieldValue = _field(
        0.2, "—", "b", "coupling of u to the membrane potential v")
    recovery_update: FieldValue = _field(
        2.0, "mV/ms", "d", "added to u after each spike (not scaled by dt)")
    dt: float = _field(1.0, "ms", "dt", "integration time step")
    scheme: str = _field(
        "euler", "—", "—", "integration scheme: 'euler' or 'izhikevich2003' (two half steps for v)")
    seed: int = _field(0, "—", "—", "seed for the initializers of the model fields")

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = (
        "potential_rest", "potential_reset", "resistance", "threshold",
        "recovery_timescale", "recovery_sensitivity", "recovery_update",
    )

    def __init__(self, __skip_validation__: bool = False, **kwargs: Any) -> None:
        if not isinstance(__skip_validation__, (bool, np.bool_)):
            raise TypeError(f"`__skip_validation__` must be a bool, got "
                            f"{type(__skip_validation__).__name__} ({_short(__skip_validation__)})")
        self._check_names(kwargs, "IzhikevichSomaConfig")
        for f in dataclasses.fields(self):
            value = kwargs.get(f.name, f.default)
            object.__setattr__(self, f.name, self._coerce(f.name, value))
        object.__setattr__(self, "_skip_validation", bool(__skip_validation__))
        if not __skip_validation__:
            self.validate()

    @classmethod
    def _check_names(cls, names: Any, where: str) -> None:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise TypeError(f"{where}: unknown field(s) {unknown}; valid fields: {valid}")

    @classmethod
    def _coerce(cls, name: str, value: Any) -> Any:
        if name in cls.MODEL_FIELDS:
            return _coerce_model_value(name, value)
        return {"dt": _coerce_dt, "scheme": _coerce_scheme, "seed": _coerce_seed}[name](value)

    @property
    def skip_validation(self) -> bool:
        """True if this config was built with ``__skip_validation__=True``."""
        return self._skip_validation

    def validate(self) -> None:
        """Check every type and value rule; raise TypeError/ValueError naming field and value."""
        for f in dataclasses.fields(self):
            self._coerce(f.name, getattr(self, f.name))
        _check_settings(self.dt, self.scheme, self.seed)
        check_field_values(self._model_values())

    def _model_values(self) -> dict[str, FieldValue]:
        return {name: getattr(self, name) for name in self.MODEL_FIELDS}

    @classmethod
    def field_info(cls) -> dict[str, dict[str, Any]]:
        """Per field: ``{"unit", "symbol", "description", "default"}`` (e.g. for docs tables)."""
        return {f.name: {**f.metadata, "default": f.default} for f in dataclasses.fields(cls)}

    def materialize(self, units: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Per-neuron float64 arrays of exactly shape ``units`` for the 7 model fields.

        Floats and arrays are broadcast to ``units``; an initializer for the
        field with index ``i`` in :attr:`MODEL_FIELDS` draws from
        ``np.random.default_rng([seed, i])``. The value rules are then checked
        on the arrays (unless validation was skipped).
        """
        units = (units,) if isinstance(units, numbers.Integral) else tuple(units)
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in units):
            raise TypeError(f"`units` (={units!r}) must be a tuple of ints")
        if any(n < 0 for n in units):
            raise ValueError(f"`units` (={units!r}) must have non-negative entries")
        out = {name: self._materialize_one(i, name, units)
               for i, name in enumerate(self.MODEL_FIELDS)}
        if not self._skip_validation:
            check_field_values(out)
        return out

    def _materialize_one(self, index: int, name: str, units: tuple[int, ...]) -> np.ndarray:
        value = getattr(self, name)
        if isinstance(value, Initializer):
            return value(units, np.random.default_rng([self.seed, index]))
        try:
            return np.broadcast_to(np.asarray(value, dtype=np.float64), units).copy()
        except ValueError as err:
            raise ValueError(f"`{name}` (shape {np.shape(value)}) does not broadcast to "
                             f"`units` (={units!r})") from err

    def merge(self, **overrides: Any) -> "IzhikevichSomaConfig":
        """A new, validated config with ``overrides`` applied; ``self`` is unchanged."""
        skip = overrides.pop("__skip_validation__", False)
        self._check_names(overrides, "IzhikevichSomaConfig.merge")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(skip, **{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: floats, ``{"array", "shape"}`` for arrays, initializer dicts.

        A config made with ``__skip_validation__=True`` carries that flag, so it round-trips.
        """
        d = {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.skip_validation:
            d["__skip_validation__"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IzhikevichSomaConfig":
        """Inverse of :meth:`to_dict` (validates; unknown keys raise TypeError)."""
        if not isinstance(d, dict):
            raise TypeError(f"from_dict: expected a dict, got {type(d).__name__}")
        d = dict(d)
        skip = d.pop("__skip_validation__", False)
        cls._check_names(d, "IzhikevichSomaConfig.from_dict")
        return cls(__skip_validation__=skip, **{k: _decode(v) for k, v in d.items()})

    def to_json(self, **kwargs: Any) -> str:
        """JSON string of :meth:`to_dict` (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, s: str) -> "IzhikevichSomaConfig":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IzhikevichSomaConfig):
            return NotImplemented
        return all(_values_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in dataclasses.fields(self))

    __hash__ = None  # mutable-looking values (arrays) inside

    def __repr__(self) -> str:
        body = ", ".join(f"{f.name}={_summary(getattr(self, f.name))}"
                         for f in dataclasses.fields(self))
        return f"{type(self).__name__}({body})"


def config_reference_markdown() -> str:
    """The README's config table, generated from the fields' own metadata (a test keeps them equal)."""
    rows = ["| field | symbol | unit | default | meaning |", "|---|---|---|---|---|"]
    for name, info in IzhikevichSomaConfig.field_info().items():
        rows.append(f"| `{name}` | {info['symbol']} | {info['unit']} | `{info['default']!r}` | {info['description']} |")
    return "\n".join(rows)
