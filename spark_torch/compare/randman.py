r"""Random-manifold spike-timing data ("randman"), generated from the description in Zenke & Vogels (2021).

Reference: F. Zenke and T. P. Vogels, "The remarkable robustness of surrogate gradient learning for
instilling complex function in spiking neural networks", *Neural Computation* 33(4):899–925, 2021,
doi:10.1162/neco_a_01367.

Each class ``k`` is a smooth random manifold: a map from intrinsic coordinates ``x ∈ [0, 1]^D`` to one
value per input unit,

.. math::

    f_i(x) = \prod_{d=1}^{D} \sum_{j=1}^{K} \frac{\theta^{(0)}_{idj}}{j^{\alpha}}
             \sin\!\big(2\pi\,(j\,x_d\,\theta^{(1)}_{idj} + \theta^{(2)}_{idj})\big),
    \qquad \theta \sim \mathcal{U}[0, 1),

a sum of sines with a power-law spectrum (fall-off ``α``; ``α = 2`` in the paper) cut off at
``K = ⌈ε^{-1/α}⌉`` terms (``ε = 10⁻³``: the first neglected amplitude is below ``ε``). A sample of
class ``k`` draws ``x`` uniformly, evaluates ``f`` of that class's manifold, min-max scales each unit
over the class's samples to ``[0, 1]`` and turns the value into the **time step of that unit's only
spike**. Every input unit therefore fires exactly once in every sample, whatever the class: spike
counts carry no information, only the timing does.

Arrays are NumPy; :func:`spike_raster` turns spike times into a dense ``[N, T, F]`` raster.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["RandmanData", "spectrum_cutoff", "RandomManifold", "make_randman", "spike_raster"]


def spectrum_cutoff(alpha: float, precision: float = 1e-3) -> int:
    """Number of sine terms ``K = ⌈precision^(−1/α)⌉``: amplitudes ``1/j^α`` beyond ``K`` are below
    ``precision``."""
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` (={alpha!r}) must be a positive finite number")
    if not 0.0 < precision < 1.0:
        raise ValueError(f"`precision` (={precision!r}) must be in (0, 1)")
    return int(math.ceil(precision ** (-1.0 / alpha)))


@dataclasses.dataclass(frozen=True)
class RandomManifold:
    r"""One smooth random map ``[0, 1]^D → ℝ^F`` (``F`` = ``units``, ``D`` = ``dim``).

    ``coefficients`` ``[F, D, K, 3]``: per unit, dimension and harmonic ``j`` the amplitude
    ``θ⁽⁰⁾``, frequency factor ``θ⁽¹⁾`` and phase ``θ⁽²⁾`` (all uniform in ``[0, 1)``); ``alpha``:
    spectral fall-off (amplitude of harmonic ``j`` is ``θ⁽⁰⁾/j^α``).
    """

    coefficients: np.ndarray
    alpha: float

    @classmethod
    def random(cls, rng: np.random.Generator, units: int, dim: int, alpha: float = 2.0,
               precision: float = 1e-3) -> "RandomManifold":
        """Draw the coefficients from ``rng``."""
        if units <= 0 or dim <= 0:
            raise ValueError(f"`units` (={units!r}) and `dim` (={dim!r}) must be positive")
        k = spectrum_cutoff(alpha, precision)
        return cls(rng.random((units, dim, k, 3)), float(alpha))

    @property
    def amplitudes(self) -> np.ndarray:
        """``[F, D, K]`` amplitudes ``θ⁽⁰⁾/j^α`` (the power-law spectrum)."""
        j = np.arange(1, self.coefficients.shape[2] + 1, dtype=np.float64)
        return self.coefficients[..., 0] / j**self.alpha

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``[N, D]`` intrinsic coordinates in ``[0, 1]`` → ``[N, F]`` manifold values (unscaled)."""
        x = np.asarray(x, dtype=np.float64)
        units, dim, k, _ = self.coefficients.shape
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"`x` must have shape [N, {dim}], got {x.shape}")
        j = np.arange(1, k + 1, dtype=np.float64)
        freq, phase = self.coefficients[..., 1], self.coefficients[..., 2]   # [F, D, K]
        arg = j * x[:, None, :, None] * freq[None] + phase[None]              # [N, F, D, K]
        per_dim = (self.amplitudes[None] * np.sin(2.0 * np.pi * arg)).sum(-1)  # [N, F, D]
        return per_dim.prod(-1)


@dataclasses.dataclass(frozen=True)
class RandmanData:
    """Generated samples: ``times`` int64 ``[N, F]`` (the time step of each unit's single spike, in
    ``[0, steps)``), ``labels`` int64 ``[N]``, ``coords`` float64 ``[N, D]`` (the intrinsic coordinates),
    and the generator's settings."""

    times: np.ndarray
    labels: np.ndarray
    coords: np.ndarray
    classes: int
    steps: int
    dim: int
    alpha: float
    seed: int

    @property
    def inputs(self) -> int:
        return int(self.times.shape[1])


def make_randman(classes: int = 10, inputs: int = 40, steps: int = 100, samples_per_class: int = 150,
                 dim: int = 1, alpha: float = 2.0, seed: int = 0) -> RandmanData:
    """Draw ``samples_per_class`` samples for each of ``classes`` random manifolds (one per class).

    Args:
        classes: number of classes (manifolds).
        inputs: input units ``F`` (each fires exactly once per sample).
        steps: time steps ``T`` of the window; spike times are ``⌊y·T⌋`` clipped to ``T − 1`` for the
            min-max scaled value ``y ∈ [0, 1]``.
        samples_per_class: samples per class (balanced classes).
        dim: manifold dimension ``D`` (the task gets harder with ``D``).
        alpha: spectral fall-off of the sines (smoothness; the paper uses 2).
        seed: seeds everything (manifolds, coordinates, sample order).

    Returns:
        :class:`RandmanData`, samples shuffled (seeded).
    """
    for name, value in (("classes", classes), ("inputs", inputs), ("steps", steps),
                        ("samples_per_class", samples_per_class), ("dim", dim)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"`{name}` (={value!r}) must be a positive int")
    if samples_per_class < 2:
        raise ValueError(f"`samples_per_class` (={samples_per_class}) must be >= 2 (min-max scaling)")
    rng = np.random.default_rng(seed)
    times, labels, coords = [], [], []
    for k in range(classes):
        manifold = RandomManifold.random(rng, inputs, dim, alpha)
        x = rng.random((samples_per_class, dim))
        y = manifold(x)
        lo, hi = y.min(0), y.max(0)
        scaled = (y - lo) / np.maximum(hi - lo, 1e-12)
        times.append(np.minimum(np.floor(scaled * steps), steps - 1).astype(np.int64))
        labels.append(np.full(samples_per_class, k, dtype=np.int64))
        coords.append(x)
    order = rng.permutation(classes * samples_per_class)
    return RandmanData(np.concatenate(times)[order], np.concatenate(labels)[order],
                       np.concatenate(coords)[order], classes, steps, dim, float(alpha), seed)


def spike_raster(times: np.ndarray, steps: int) -> np.ndarray:
    """Spike times ``[N, F]`` (ints in ``[0, steps)``) → uint8 raster ``[N, steps, F]`` with one spike per unit."""
    times = np.asarray(times)
    if times.size and (times.min() < 0 or times.max() >= steps):
        raise ValueError(f"spike times must lie in [0, {steps}), got [{times.min()}, {times.max()}]")
    n, f = times.shape
    raster = np.zeros((n, steps, f), dtype=np.uint8)
    raster[np.arange(n)[:, None], times, np.arange(f)[None, :]] = 1
    return raster
