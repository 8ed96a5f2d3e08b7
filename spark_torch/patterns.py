r"""The paper's Fig. 2 firing patterns (Izhikevich 2003), simulated by the layer and drawn.

:func:`simulate_presets` drives each of the seven classes of :data:`spark_torch.PRESETS` with a constant
current (100 pA for 1000 ms by default, i.e. the paper's ``I = 10`` with Spark's ``resistance = 0.1`` GΩ)
and returns membrane traces in mV and spike times; :func:`plot_patterns` draws them (PNG, Agg).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np
import torch

from .plotting import agg_pyplot
from .presets import PRESETS, preset
from .soma import IzhikevichSoma

__all__ = ["PatternTrace", "simulate_presets", "plot_patterns"]


@dataclasses.dataclass(frozen=True)
class PatternTrace:
    """One preset driven by a constant current.

    ``time_ms[i] = i·dt`` (``i = 0`` is the rest state before the first step); ``v_mV[i]`` is the
    membrane potential after ``i`` steps (post-reset: a spike shows as the jump to ``c``);
    ``spike_times_ms``: end of each step whose integrated ``v`` reached ``v_pk``.
    """

    name: str
    long_name: str
    current_pA: float
    time_ms: np.ndarray
    v_mV: np.ndarray
    spike_times_ms: np.ndarray
    threshold_mV: float

    @property
    def spike_count(self) -> int:
        return int(self.spike_times_ms.size)


def simulate_presets(names: Optional[Iterable[str]] = None, current_pA: float = 100.0,
                     duration_ms: float = 1000.0, dt: float = 1.0,
                     dtype: torch.dtype = torch.float64) -> list[PatternTrace]:
    """Run each preset (default: all seven of :data:`PRESETS`) for ``duration_ms`` at ``current_pA``.

    One ``IzhikevichSoma(preset(name, dt=dt), sequence=True)`` call per class on a ``[T, 1, 1]``
    input; ``mem`` is converted to mV with the layer's config: ``v = v_r + mem·(v_pk − v_r)``.
    With the defaults (100 pA, Spark's R = 0.1 GΩ, 1000 ms, dt = 1) the spike counts are those of an
    independent float64 simulator (RS 22, IB 31, CH 75, FS 110, TC 201, RZ 143, LTS 69; the tests pin them).
    """
    names = list(PRESETS) if names is None else [str(n).upper() for n in names]
    if not (math.isfinite(duration_ms) and duration_ms > 0):
        raise ValueError(f"`duration_ms` (={duration_ms!r}) must be a positive finite number")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"`dt` (={dt!r}) must be a positive finite number")
    if not math.isfinite(current_pA):
        raise ValueError(f"`current_pA` (={current_pA!r}) must be finite")
    steps = int(round(duration_ms / dt))
    return [_simulate_one(name, current_pA, steps, dt, dtype) for name in names]


def _simulate_one(name: str, current_pA: float, steps: int, dt: float, dtype) -> PatternTrace:
    layer = IzhikevichSoma(preset(name, dt=dt), sequence=True)  # built from the input: params in `dtype`
    with torch.no_grad():
        spk, mem = layer(torch.full((steps, 1, 1), current_pA, dtype=dtype))
    cfg = layer.config
    v_r, v_pk = float(cfg.potential_rest), float(cfg.threshold)
    v = v_r + mem[:, 0, 0].double().numpy() * (v_pk - v_r)
    spike_steps = np.flatnonzero(spk[:, 0, 0].numpy() > 0)
    info = PRESETS[name]
    return PatternTrace(name=info.name, long_name=info.long_name, current_pA=current_pA,
                        time_ms=np.arange(steps + 1) * dt, v_mV=np.concatenate([[v_r], v]),
                        spike_times_ms=(spike_steps + 1) * dt, threshold_mV=v_pk)


def plot_patterns(traces: Sequence[PatternTrace], path, window_ms: float = 300.0) -> None:
    """Fig.-2-like PNG: one membrane-trace panel per class (first ``window_ms``) and a raster of all.

    Spikes are drawn up to ``v_pk`` at their step, as in the paper's figure.
    """
    plt = agg_pyplot()
    rows = math.ceil((len(traces) + 1) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.1 * rows), constrained_layout=True)
    axes = axes.ravel()
    for ax, tr in zip(axes, traces):
        shown = tr.time_ms <= window_ms
        v = tr.v_mV.copy()
        v[np.isin(tr.time_ms, tr.spike_times_ms)] = tr.threshold_mV
        ax.plot(tr.time_ms[shown], v[shown], lw=0.8, color="k")
        duration = tr.time_ms[-1]
        ax.set_title(f"{tr.name} ({tr.long_name}): {tr.spike_count} spikes / {duration:g} ms", fontsize=9)
        ax.set_ylabel("v (mV)")
        ax.set_ylim(-90, 40)
    raster = axes[len(traces)]
    for row, tr in enumerate(traces):
        raster.vlines(tr.spike_times_ms, row + 0.6, row + 1.4, lw=0.6, color="k")
    raster.set_yticks(range(1, len(traces) + 1), [tr.name for tr in traces])
    raster.invert_yaxis()
    raster.set_title(f"spike raster, {traces[0].current_pA:g} pA constant", fontsize=9)
    for ax in axes[len(traces) + 1:]:
        ax.axis("off")
    for ax in axes[-2:]:
        ax.set_xlabel("time (ms)")
    fig.suptitle("Izhikevich (2003) Fig. 2 classes, spark_torch.IzhikevichSoma", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


