r"""The comparison's three tasks, as fixed spike rasters split into train / validation / test.

============  =======================================================  =======  =====  ======  =======
task          what carries the class                                   classes  steps  inputs  readout
============  =======================================================  =======  =====  ======  =======
``digits``    pixel intensity, rate coded (scikit-learn's 8×8 digits)  10       25     64      all steps
``randman``   spike timing only (:mod:`.randman`, one spike per unit)  10       100    40      all steps
``memory``    which of two channels had more cues, before a delay      2        100    40      last 20
              (:mod:`.memory`)
============  =======================================================  =======  =====  ======  =======

Every task is generated locally (no download): ``digits`` from the copy bundled with scikit-learn,
the others by seeded generators. A :class:`SpikeTask` holds uint8 rasters ``[N, T, F]`` (samples,
time steps, input units) and int64 labels; input spikes reach the network with amplitude
:attr:`SpikeTask.input_scale` (``1/√ν`` for the mean input spike probability ν, so that sparse and dense
codes give the first layer inputs of the same variance at initialisation). The split is stratified,
60 % / 20 % / 20 %, reproducible from ``seed``. The network's output spikes are counted from step
``readout_start`` on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .memory import make_evidence
from .randman import make_randman, spike_raster

__all__ = ["TASK_NAMES", "SpikeTask", "make_task", "split"]

TASK_NAMES = ("digits", "randman", "memory")


@dataclasses.dataclass(frozen=True)
class SpikeTask:
    """One task: ``x_*`` uint8 spike rasters ``[N, T, F]``, ``y_*`` int64 labels ``[N]``.

    ``readout_start``: first time step whose output spikes count (loss and prediction);
    ``params``: the generator's settings (JSON-able).
    """

    name: str
    description: str
    classes: int
    readout_start: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    params: dict

    @property
    def steps(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def inputs(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def input_rate(self) -> float:
        """Mean spike probability ν per input unit and step over the training set."""
        return float(self.x_train.float().mean())

    @property
    def input_scale(self) -> float:
        """Amplitude ``1/√ν`` of an input spike as the network sees it: the first layer's summed input
        then has the same variance per step in every task, whatever its spike density."""
        return float(1.0 / np.sqrt(max(self.input_rate, 1e-6)))

    def info(self) -> dict[str, Any]:
        """JSON-able description: sizes, layout, chance level, generator settings."""
        counts = np.bincount(self.y_test.numpy(), minlength=self.classes)
        return {"classes": self.classes, "steps": self.steps, "inputs": self.inputs,
                "readout_start": self.readout_start, "input_rate": self.input_rate,
                "input_scale": self.input_scale, "train": len(self.y_train), "val": len(self.y_val),
                "test": len(self.y_test), "chance": float(counts.max() / counts.sum()),
                "description": self.description, "params": dict(self.params)}

    def __repr__(self) -> str:
        return (f"SpikeTask({self.name!r}, classes={self.classes}, steps={self.steps}, inputs={self.inputs}, "
                f"train/val/test={len(self.y_train)}/{len(self.y_val)}/{len(self.y_test)})")


def split(x: np.ndarray, y: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """Stratified ``(x_train, y_train, x_val, y_val, x_test, y_test)`` with the given fractions."""
    from sklearn.model_selection import train_test_split

    train, val, test = fractions
    if min(fractions) <= 0 or abs(train + val + test - 1.0) > 1e-9:
        raise ValueError(f"`fractions` (={fractions!r}) must be three positive numbers summing to 1")
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, train_size=train, random_state=seed, stratify=y)
    x_va, x_te, y_va, y_te = train_test_split(x_rest, y_rest, train_size=val / (val + test),
                                              random_state=seed, stratify=y_rest)
    return x_tr, y_tr, x_va, y_va, x_te, y_te


def _digits(seed: int, steps: int = 25) -> tuple[np.ndarray, np.ndarray, int, str, dict]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    probs = digits.data / 16.0                                            # [N, 64] in [0, 1]
    rng = np.random.default_rng(seed)
    raster = (rng.random((len(probs), steps, probs.shape[1])) < probs[:, None, :]).astype(np.uint8)
    description = "scikit-learn 8x8 digits; pixel/16 is the spike probability per step (rate code)"
    return raster, digits.target.astype(np.int64), 0, description, {"steps": steps}


def _randman(seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray, int, str, dict]:
    params = {"classes": 10, "inputs": 40, "steps": 100, "samples_per_class": 150, "dim": 1, "alpha": 2.0,
              **kwargs}
    data = make_randman(**params, seed=seed)
    description = ("random manifolds (Zenke & Vogels 2021): one spike per input unit, its time set by "
                   "a smooth random function of the class's manifold coordinate")
    return spike_raster(data.times, data.steps), data.labels, 0, description, params


def _memory(seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray, int, str, dict]:
    params = {"samples": 1200, "cues": 5, "cue_steps": 6, "gap_steps": 4, "delay": 30, "recall_steps": 20,
              "units": 10, "cue_rate": 0.4, "recall_rate": 0.4, "noise_rate": 0.05, **kwargs}
    data = make_evidence(**params, seed=seed)
    description = ("evidence accumulation: left/right cue bursts, a delay, then a recall period in which "
                   "the output is read; the class is the side with more cues")
    return data.raster, data.labels, data.recall_start, description, params


_BUILDERS = {"digits": _digits, "randman": _randman, "memory": _memory}


def make_task(name: str, seed: int = 0, **kwargs) -> SpikeTask:
    """Generate task ``name`` (one of :data:`TASK_NAMES`) and split it (stratified 60/20/20).

    ``seed`` fixes the data (generator, rate-coding spikes and split); it is the same for every neuron
    and every training seed of a comparison. ``kwargs`` override the generator's settings
    (:func:`~spark_torch.compare.randman.make_randman`, :func:`~spark_torch.compare.memory.make_evidence`,
    or ``steps`` for digits), e.g. smaller sizes for tests.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {list(TASK_NAMES)}")
    raster, labels, readout_start, description, params = _BUILDERS[name](seed, **kwargs)
    parts = split(raster, labels, seed)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in parts]
    classes = int(labels.max()) + 1
    return SpikeTask(name, description, classes, readout_start, *tensors, params={**params, "seed": seed})
