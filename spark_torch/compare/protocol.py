r"""The comparison protocol: gain sweep on the validation split, then seeds, then a summary.

For every task and every neuron (:mod:`.neurons`), with the same network, optimiser, epochs, loss and
surrogate (:mod:`.training`):

1. **Gain sweep** — train with seed 0 at each input gain ``factor × reference`` for the factors
   :data:`GAIN_FACTORS` (``10^-½, 1, 10^½``: one decade around the neuron's reference gain).
2. **Selection** — keep the gain with the highest validation accuracy (mean over the last
   :data:`SELECTION_EPOCHS` epochs; ties: the smaller gain). The test split is not looked at.
3. **Seeds** — train seeds ``1 … seeds−1`` at the selected gain; evaluate every run of the selected gain
   (seed 0 included) once on the test split.

The data of a task are the same for every neuron and seed (``data_seed``); a training seed fixes the
initial weights and the batch order. :func:`run_comparison` returns a JSON-able dict (the format of
``compare_results.json``)::

    {"tasks": {name: {"classes", "steps", "inputs", "readout_start", "train", "val", "test", "chance", ...}},
     "neurons": [name, ...], "neuron_info": {name: {...}}, "settings": {...}, "protocol": "...",
     "runs": [{"task", "neuron", "seed", "input_gain", "gain_factor", "val_accuracy", "test_accuracy",
               "spike_rate", "output_spike_rate", "train_seconds", "epoch_seconds",
               "curves": {"train_loss", "train_accuracy", "val_accuracy"}}],
     "sweep": [{"task", "neuron", "seed", "input_gain", "gain_factor", "selection_score", "selected",
                "curves": {...}}],
     "summary": [{"task", "neuron", "seeds", "input_gain", "gain_factor", "test_accuracy_mean",
                  "test_accuracy_std", "val_accuracy_mean", "spike_rate_mean", "train_seconds_mean",
                  "epoch_seconds_mean"}],
     "wall_seconds": float}

Accuracies are fractions in [0, 1]; spike rates are spikes per neuron per time step (hidden layer:
``spike_rate``; output layer: ``output_spike_rate``) on the test split; ``train_seconds`` is the wall time
of the training steps of a run (no evaluation), ``epoch_seconds`` that divided by the epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

from .neurons import NEURON_NAMES, NEURONS
from .tasks import TASK_NAMES, SpikeTask, make_task
from .training import FitResult, TrainSettings, evaluate, fit

__all__ = ["GAIN_FACTORS", "SELECTION_EPOCHS", "CompareConfig", "run_comparison", "select_gain",
           "summarize", "PROTOCOL"]

GAIN_FACTORS = (10.0 ** -0.5, 1.0, 10.0 ** 0.5)
SELECTION_EPOCHS = 3

PROTOCOL = ("Same network (input -> Linear -> neuron -> Linear -> neuron), Adam, epochs, batch size, "
            "spike-count cross-entropy loss and atan surrogate for every neuron. Input gain: 3 values "
            "spanning one decade around each neuron's reference, trained with seed 0; the gain with the "
            "best validation accuracy (mean of the last epochs) is kept; further seeds are trained at "
            "that gain; the test split is only used to report the kept runs.")


@dataclasses.dataclass
class CompareConfig:
    """What :func:`run_comparison` runs.

    Attributes:
        tasks, neurons: names from :data:`~spark_torch.compare.tasks.TASK_NAMES` and
            :data:`~spark_torch.compare.neurons.NEURON_NAMES`.
        seeds: training seeds per task and neuron (``0 … seeds−1``); seed 0 also runs the gain sweep.
        settings: the shared hyper-parameters (:class:`~spark_torch.compare.training.TrainSettings`).
        gain_factors: multipliers of each neuron's reference gain.
        data_seed: seed of the task generators and splits.
        task_options: ``{task: generator kwargs}`` (e.g. smaller tasks for tests).
        num_threads: torch intra-op threads while training (``None``: unchanged); 1 avoids torch's and
            JAX's thread pools stalling each other on small CPUs.
    """

    tasks: Sequence[str] = TASK_NAMES
    neurons: Sequence[str] = NEURON_NAMES
    seeds: int = 3
    settings: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    gain_factors: Sequence[float] = GAIN_FACTORS
    data_seed: int = 0
    task_options: dict = dataclasses.field(default_factory=dict)
    num_threads: Optional[int] = 1

    @classmethod
    def quick(cls, **overrides) -> "CompareConfig":
        """The ``--quick`` preset: 2 seeds, 5 epochs, at most 360 training samples per task."""
        settings = TrainSettings(epochs=5, max_train=360)
        return cls(**{"seeds": 2, "settings": settings, **overrides})

    def validate(self) -> "CompareConfig":
        for kind, names, valid in (("task", self.tasks, TASK_NAMES), ("neuron", self.neurons, NEURON_NAMES)):
            if isinstance(names, str) or not names:
                raise ValueError(f"`{kind}s` must be a non-empty sequence of names, got {names!r}")
            unknown = [n for n in names if n not in valid]
            if unknown:
                raise ValueError(f"unknown {kind}(s) {unknown}; valid: {list(valid)}")
        if not (isinstance(self.seeds, int) and self.seeds > 0):
            raise ValueError(f"`seeds` (={self.seeds!r}) must be a positive int")
        if not self.gain_factors or any(not (math.isfinite(g) and g > 0) for g in self.gain_factors):
            raise ValueError(f"`gain_factors` (={self.gain_factors!r}) must be positive finite numbers")
        self.settings.validate()
        return self

    def total_epochs(self) -> int:
        """Training epochs the comparison will run (for a progress bar)."""
        per_pair = (len(self.gain_factors) + self.seeds - 1) * self.settings.epochs
        return len(self.tasks) * len(self.neurons) * per_pair


def select_gain(sweep: Sequence[FitResult], epochs: int = SELECTION_EPOCHS) -> int:
    """Index of the run with the best validation score (mean of the last ``epochs`` validation
    accuracies); ties go to the smaller gain."""
    scores = [selection_score(r, epochs) for r in sweep]
    best = max(scores)
    return min((r.gain, i) for i, (r, s) in enumerate(zip(sweep, scores)) if s == best)[1]


def selection_score(result: FitResult, epochs: int = SELECTION_EPOCHS) -> float:
    """Mean validation accuracy over the last ``epochs`` epochs of ``result``."""
    return float(np.mean(result.val_accuracy[-epochs:]))


def _curves(result: FitResult) -> dict:
    return {"train_loss": list(result.train_loss), "train_accuracy": list(result.train_accuracy),
            "val_accuracy": list(result.val_accuracy)}


def _run_record(task: SpikeTask, neuron: str, factor: float, result: FitResult) -> dict:
    test = evaluate(result.net, task.x_test, task.y_test, task.readout_start, task.input_scale)
    return {"task": task.name, "neuron": neuron, "seed": result.seed, "input_gain": result.gain,
            "gain_factor": factor, "val_accuracy": result.val_accuracy[-1], "test_accuracy": test["accuracy"],
            "spike_rate": test["hidden_rate"], "output_spike_rate": test["output_rate"],
            "train_seconds": result.train_seconds, "epoch_seconds": result.epoch_seconds,
            "curves": _curves(result)}


def _compare_pair(task: SpikeTask, neuron: str, config: CompareConfig, on_epoch) -> tuple[list, list]:
    """Sweep, select and seed one (task, neuron) pair; returns ``(runs, sweep records)``."""
    spec = NEURONS[neuron]
    factors = sorted(config.gain_factors)
    sweep = [fit(spec, task, f * spec.reference_gain, 0, config.settings, on_epoch) for f in factors]
    chosen = select_gain(sweep)
    sweep_records = [{"task": task.name, "neuron": neuron, "seed": 0, "input_gain": r.gain, "gain_factor": f,
                      "selection_score": selection_score(r), "selected": i == chosen, "curves": _curves(r)}
                     for i, (f, r) in enumerate(zip(factors, sweep))]
    factor, gain = factors[chosen], sweep[chosen].gain
    runs = [_run_record(task, neuron, factor, sweep[chosen])]
    for seed in range(1, config.seeds):
        runs.append(_run_record(task, neuron, factor, fit(spec, task, gain, seed, config.settings, on_epoch)))
    return runs, sweep_records


def summarize(runs: Sequence[dict]) -> list[dict]:
    """One row per (task, neuron), in the order of ``runs``: mean ± std (sample std, 0 for one seed)."""
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault((run["task"], run["neuron"]), []).append(run)
    rows = []
    for (task, neuron), group in groups.items():
        acc = np.array([r["test_accuracy"] for r in group])
        mean = lambda key: float(np.mean([r[key] for r in group]))  # noqa: E731
        rows.append({"task": task, "neuron": neuron, "seeds": len(group), "input_gain": group[0]["input_gain"],
                     "gain_factor": group[0]["gain_factor"], "test_accuracy_mean": float(acc.mean()),
                     "test_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                     "val_accuracy_mean": mean("val_accuracy"), "spike_rate_mean": mean("spike_rate"),
                     "output_spike_rate_mean": mean("output_spike_rate"),
                     "train_seconds_mean": mean("train_seconds"), "epoch_seconds_mean": mean("epoch_seconds")})
    return rows


def run_comparison(config: Optional[CompareConfig] = None, progress: Any = False) -> dict:
    """Run the whole protocol (module docs) and return the results dict.

    Args:
        config: what to run (default: :class:`CompareConfig` ``()``, the full default comparison).
        progress: ``True`` for a tqdm bar over all training epochs, or a tqdm-like class to use.

    Writes nothing; see :func:`spark_torch.compare.write_results`.
    """
    config = (config or CompareConfig()).validate()
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    bar = _progress_bar(progress, config.total_epochs())
    started = time.perf_counter()
    try:
        results = _run(config, bar)
    finally:
        torch.set_num_threads(previous_threads)
        if bar is not None:
            bar.close()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def _run(config: CompareConfig, bar) -> dict:
    tasks, runs, sweep = {}, [], []
    for task_name in config.tasks:
        task = make_task(task_name, seed=config.data_seed, **config.task_options.get(task_name, {}))
        tasks[task_name] = task.info()
        for neuron in config.neurons:
            if bar is not None:
                bar.set_postfix_str(f"{task_name} / {neuron}")
            on_epoch = (lambda _result: bar.update(1)) if bar is not None else None
            pair_runs, pair_sweep = _compare_pair(task, neuron, config, on_epoch)
            runs += pair_runs
            sweep += pair_sweep
    settings = {**dataclasses.asdict(config.settings), "seeds": config.seeds, "data_seed": config.data_seed,
                "gain_factors": list(config.gain_factors), "selection_epochs": SELECTION_EPOCHS,
                "num_threads": config.num_threads, "loss": "cross-entropy of output spike counts (readout window)",
                "optimizer": "Adam", "surrogate": "atan(alpha=2)"}
    return {"tasks": tasks, "neurons": list(config.neurons),
            "neuron_info": {n: NEURONS[n].info() for n in config.neurons}, "settings": settings,
            "protocol": PROTOCOL, "runs": runs, "sweep": sweep, "summary": summarize(runs)}


def _progress_bar(progress, total: int):
    if progress is False or progress is None:
        return None
    if progress is True:
        from tqdm.auto import tqdm as progress
    return progress(total=total, desc="compare", unit="epoch", leave=True)
