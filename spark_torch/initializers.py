"""Seeded initializers: how a config field becomes a per-neuron array.

An initializer is a small frozen dataclass that, given a neuron shape and a
``numpy.random.Generator``, returns a float64 array of exactly that shape. The
config (:mod:`spark_torch.config`) seeds one generator per field, so draws are
reproducible and independent across fields.

Pure numpy + stdlib: no torch or jax import.

Example:
    >>> import numpy as np
    >>> init = Uniform(low=-70.0, high=-60.0)   # e.g. potential_reset in mV
    >>> x = init((2, 3), np.random.default_rng(0))
    >>> x.shape, x.dtype
    ((2, 3), dtype('float64'))
    >>> initializer_from_dict(init.to_dict()) == init
    True
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Initializer",
    "Constant",
    "Uniform",
    "Normal",
    "INITIALIZERS",
    "initializer_from_dict",
]

#: Registry: name used in ``to_dict()["initializer"]`` -> class.
INITIALIZERS: dict[str, type["Initializer"]] = {}


def _check_float(owner: str, name: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise TypeError/ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{owner}: `{name}` must be a real number (int or float, not bool), "
            f"got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` (={value!r}) must be finite")
    return value


def _check_shape(shape: Any) -> tuple[int, ...]:
    """Validate a neuron shape: a tuple of non-negative ints."""
    shape = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:
        raise TypeError(f"`shape` (={shape!r}) must be a tuple of ints") from err
    if any(s < 0 for s in out):
        raise ValueError(f"`shape` (={out!r}) must have non-negative entries")
    return out


@dataclasses.dataclass(frozen=True)
class Initializer:
    """Base class. Subclasses set ``name`` and implement ``_draw``.

    Calling an initializer, ``init(shape, rng)``, returns a float64 array of
    exactly ``shape``; the unit is that of the config field it is assigned to.
    """

    name: ClassVar[str] = "initializer"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INITIALIZERS[cls.name] = cls

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_float(type(self).__name__, f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draw a float64 array of exactly ``shape`` from ``rng``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"`rng` must be a numpy.random.Generator, got {type(rng).__name__}"
            )
        shape = _check_shape(shape)
        out = np.asarray(self._draw(shape, rng), dtype=np.float64)
        return np.broadcast_to(out, shape).copy()

    def _draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """The parameters as a dict of floats."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict ``{"initializer": name, **params}``."""
        return {"initializer": self.name, **self.params()}


@dataclasses.dataclass(frozen=True)
class Constant(Initializer):
    """Every neuron gets ``value``.

    Example:
        >>> Constant(-65.0)((3,), np.random.default_rng(0))
        array([-65., -65., -65.])
    """

    name: ClassVar[str] = "constant"
    value: float

    def _draw(self, shape, rng):
        return np.full(shape, self.value)


@dataclasses.dataclass(frozen=True)
class Uniform(Initializer):
    """Independent draws from the uniform distribution U[low, high).

    Example:
        >>> x = Uniform(0.02, 0.1)((4,), np.random.default_rng(0))
        >>> bool(((x >= 0.02) & (x < 0.1)).all())
        True
    """

    name: ClassVar[str] = "uniform"
    low: float
    high: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.low < self.high:
            raise ValueError(
                f"Uniform: `low` (={self.low!r}) must be < `high` (={self.high!r})"
            )

    def _draw(self, shape, rng):
        return rng.uniform(self.low, self.high, size=shape)


@dataclasses.dataclass(frozen=True)
class Normal(Initializer):
    """Independent draws from the normal distribution N(mean, std²).

    ``std == 0`` gives a constant array equal to ``mean``.

    Example:
        >>> x = Normal(mean=-65.0, std=5.0)((1000,), np.random.default_rng(0))
        >>> bool(abs(x.mean() + 65.0) < 1.0)
        True
    """

    name: ClassVar[str] = "normal"
    mean: float
    std: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std < 0:
            raise ValueError(f"Normal: `std` (={self.std!r}) must be >= 0")

    def _draw(self, shape, rng):
        return rng.normal(self.mean, self.std, size=shape)


def initializer_from_dict(d: dict[str, Any]) -> Initializer:
    """Rebuild an initializer from its ``to_dict()`` form."""
    if not isinstance(d, dict) or "initializer" not in d:
        raise TypeError(
            f"initializer_from_dict: expected a dict with key 'initializer', got {d!r}"
        )
    kind = d["initializer"]
    if kind not in INITIALIZERS:
        raise ValueError(
            f"initializer_from_dict: unknown initializer {kind!r}; "
            f"valid names: {sorted(INITIALIZERS)}"
        )
    cls = INITIALIZERS[kind]
    params = {k: v for k, v in d.items() if k != "initializer"}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise TypeError(
            f"initializer_from_dict: unknown parameter(s) {unknown} for {kind!r}; "
            f"valid: {sorted(valid)}"
        )
    return cls(**params)
