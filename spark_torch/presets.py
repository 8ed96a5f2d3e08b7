"""The seven neuron classes of Izhikevich (2003), Fig. 2, as ready configs.

Each class is a choice of (a, b, c, d) = (``recovery_timescale`` [1/ms],
``recovery_sensitivity`` [dimensionless], ``potential_reset`` [mV],
``recovery_update`` [mV/ms]); ``potential_rest`` = -65 mV and ``threshold`` =
30 mV as in the paper's MATLAB code. The other fields keep the config defaults
(``resistance`` = 0.1 GOhm, so 100 pA gives the paper's I = 10).

Source: Izhikevich, E. M. (2003). Simple model of spiking neurons. IEEE Trans.
Neural Netw. 14(6):1569-1572, Fig. 2. doi:10.1109/TNN.2003.820440

Example:
    >>> cfg = preset("rs")                       # regular spiking
    >>> cfg.recovery_update
    8.0
    >>> preset("CH", dt=0.5).dt
    0.5
    >>> heterogeneous_preset(["RS", "FS"]).recovery_timescale
    array([0.02, 0.1 ])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .config import IzhikevichSomaConfig

__all__ = ["PresetInfo", "PRESETS", "CITATION", "preset", "heterogeneous_preset"]

CITATION = ("Izhikevich, E. M. (2003). Simple model of spiking neurons. IEEE Trans. "
            "Neural Netw. 14(6):1569-1572, Fig. 2. doi:10.1109/TNN.2003.820440")

#: ``potential_rest`` and ``threshold`` (mV) of the paper's MATLAB code.
PAPER_REST, PAPER_THRESHOLD = -65.0, 30.0


class PresetInfo(NamedTuple):
    """One Fig. 2 class: short and long name, (a, b, c, d) and the citation.

    Units: ``a`` 1/ms, ``b`` dimensionless, ``c`` mV, ``d`` mV/ms.
    """

    name: str
    long_name: str
    a: float
    b: float
    c: float
    d: float
    citation: str = CITATION

    def config_fields(self) -> dict[str, float]:
        """The config fields this class sets (Spark's names)."""
        return {
            "potential_rest": PAPER_REST,
            "threshold": PAPER_THRESHOLD,
            "recovery_timescale": self.a,
            "recovery_sensitivity": self.b,
            "potential_reset": self.c,
            "recovery_update": self.d,
        }


PRESETS: dict[str, PresetInfo] = {
    p.name: p
    for p in (
        PresetInfo("RS", "regular spiking", 0.02, 0.2, -65.0, 8.0),
        PresetInfo("IB", "intrinsically bursting", 0.02, 0.2, -55.0, 4.0),
        PresetInfo("CH", "chattering", 0.02, 0.2, -50.0, 2.0),
        PresetInfo("FS", "fast spiking", 0.1, 0.2, -65.0, 2.0),
        PresetInfo("TC", "thalamo-cortical", 0.02, 0.25, -65.0, 0.05),
        PresetInfo("RZ", "resonator", 0.1, 0.26, -65.0, 2.0),
        PresetInfo("LTS", "low-threshold spiking", 0.02, 0.25, -65.0, 2.0),
    )
}


def _lookup(name: Any) -> PresetInfo:
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__} ({name!r})")
    info = PRESETS.get(name.upper())
    if info is None:
        raise ValueError(f"unknown preset {name!r}; valid names (case-insensitive): "
                         f"{list(PRESETS)}")
    return info


def preset(name: str, **overrides: Any) -> IzhikevichSomaConfig:
    """Config for one Fig. 2 class (case-insensitive ``name``), with ``overrides`` applied.

    Unknown names raise ``ValueError`` listing the valid ones; overrides are
    validated like :class:`IzhikevichSomaConfig` keyword arguments.
    """
    fields = _lookup(name).config_fields()
    return IzhikevichSomaConfig(**{**fields, **overrides})


def heterogeneous_preset(names: Sequence[str], **overrides: Any) -> IzhikevichSomaConfig:
    """One config for a mixed population: neuron ``i`` is of class ``names[i]``.

    ``recovery_timescale``, ``recovery_sensitivity``, ``potential_reset`` and
    ``recovery_update`` become 1-D float64 arrays of length ``len(names)``; use
    ``units=(len(names),)`` when building the layer.

    Example:
        >>> cfg = heterogeneous_preset(["RS", "IB", "ch"])
        >>> cfg.potential_reset
        array([-65., -55., -50.])
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"`names` must be a sequence of preset names, got {names!r}")
    if len(names) == 0:
        raise ValueError("`names` (=[]) must contain at least one preset name")
    infos = [_lookup(n) for n in names]
    rows = [info.config_fields() for info in infos]
    fields = {key: np.array([row[key] for row in rows]) for key in
              ("recovery_timescale", "recovery_sensitivity", "potential_reset",
               "recovery_update")}
    fields.update(potential_rest=PAPER_REST, threshold=PAPER_THRESHOLD)
    return IzhikevichSomaConfig(**{**fields, **overrides})
