r"""Writing and drawing the results of :func:`~spark_torch.compare.run_comparison`.

* :func:`write_results` — ``DIR/compare_results.json`` and ``DIR/comparison.png``;
* :func:`format_table` — the summary as a Markdown table, one row per task and neuron;
* :func:`format_matrix` — a compact one: neurons × tasks (both are printed by ``spark-torch compare``);
* :func:`plot_comparison` — a matplotlib ``Figure``: top row, test accuracy per task and neuron (mean ±
  std over seeds, chance level dashed); bottom row, validation accuracy per epoch (mean over seeds) at
  the selected gain. Drawn without ``pyplot``, so it neither needs a display nor changes the backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["write_results", "format_table", "format_matrix", "plot_comparison", "RESULTS_FILE", "FIGURE_FILE"]

RESULTS_FILE = "compare_results.json"
FIGURE_FILE = "comparison.png"


def write_results(results: dict, out: Union[str, Path]) -> tuple[Path, Path]:
    """Write ``compare_results.json`` and ``comparison.png`` into folder ``out`` (created if needed);
    returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / RESULTS_FILE, out / FIGURE_FILE
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot_comparison(results).savefig(png_path, dpi=110)
    return json_path, png_path


def _rate(value: float) -> str:
    return f"{value:.3f}"


def format_table(results: dict) -> str:
    """Markdown table: one row per (task, neuron) with test accuracy (mean ± std, %), seeds, the
    selected input gain, hidden/output spike rates (spikes per neuron per step) and seconds per epoch."""
    chance = {name: info.get("chance") for name, info in results["tasks"].items()}
    lines = ["| task | neuron | test accuracy (%) | seeds | input gain | hidden / output rate | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    for row in results["summary"]:
        unit = results.get("neuron_info", {}).get(row["neuron"], {}).get("gain_unit", "")
        gain = f"R = {row['input_gain']:.3g} GΩ" if unit.startswith("GΩ") else f"× {row['input_gain']:.3g}"
        task = row["task"] + (f" (chance {100 * chance[row['task']]:.0f})" if chance.get(row["task"]) else "")
        lines.append(f"| {task} | {row['neuron']} | {100 * row['test_accuracy_mean']:.1f} ± "
                     f"{100 * row['test_accuracy_std']:.1f} | {row['seeds']} | {gain} | "
                     f"{_rate(row['spike_rate_mean'])} / {_rate(row['output_spike_rate_mean'])} | "
                     f"{row['epoch_seconds_mean']:.2f} |")
    return "\n".join(lines)


def _mean_std(row: dict) -> str:
    return f"{100 * row['test_accuracy_mean']:.1f} ± {100 * row['test_accuracy_std']:.1f}"


def format_matrix(results: dict) -> str:
    """Markdown table, one row per neuron and one column per task: test accuracy (mean ± std, %), then
    the training seconds per epoch on each task."""
    tasks = list(results["tasks"])
    rows = {(r["task"], r["neuron"]): r for r in results["summary"]}
    seconds = " / ".join(tasks)
    lines = ["| neuron | " + " | ".join(tasks) + f" | s / epoch ({seconds}) |",
             "|---" * (len(tasks) + 2) + "|"]
    for neuron in results["neurons"]:
        cells = [_mean_std(rows[(t, neuron)]) if (t, neuron) in rows else "–" for t in tasks]
        times = " / ".join(f"{rows[(t, neuron)]['epoch_seconds_mean']:.2f}" if (t, neuron) in rows else "–"
                           for t in tasks)
        lines.append(f"| {neuron} | " + " | ".join(cells) + f" | {times} |")
    return "\n".join(lines)


def _mean_curve(results: dict, task: str, neuron: str) -> np.ndarray:
    curves = [r["curves"]["val_accuracy"] for r in results["runs"] if r["task"] == task and r["neuron"] == neuron]
    return np.mean(np.array(curves, dtype=float), axis=0) if curves else np.zeros(0)


def plot_comparison(results: dict):
    """A ``matplotlib.figure.Figure`` with one column per task (see the module docs)."""
    from matplotlib.figure import Figure

    tasks, neurons = list(results["tasks"]), list(results["neurons"])
    rows = {(r["task"], r["neuron"]): r for r in results["summary"]}
    fig = Figure(figsize=(4.2 * len(tasks) + 1.0, 7.0), constrained_layout=True)
    axes = fig.subplots(2, len(tasks), squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(neurons))]
    for col, task in enumerate(tasks):
        ax_bar, ax_curve = axes[0, col], axes[1, col]
        means = [100 * rows[(task, n)]["test_accuracy_mean"] if (task, n) in rows else np.nan for n in neurons]
        stds = [100 * rows[(task, n)]["test_accuracy_std"] if (task, n) in rows else 0.0 for n in neurons]
        ax_bar.bar(range(len(neurons)), means, yerr=stds, color=colors, capsize=3)
        chance = results["tasks"][task].get("chance")
        if chance:
            ax_bar.axhline(100 * chance, color="k", ls="--", lw=1, label="chance")
            ax_bar.legend(fontsize=7, loc="lower right")
        ax_bar.set_xticks(range(len(neurons)), neurons, rotation=40, ha="right", fontsize=8)
        ax_bar.set(ylim=(0, 100), ylabel="test accuracy (%)", title=f"{task}: test accuracy (mean ± std)")
        for neuron, color in zip(neurons, colors):
            curve = _mean_curve(results, task, neuron)
            ax_curve.plot(np.arange(1, len(curve) + 1), 100 * curve, "o-", ms=3, color=color, label=neuron)
        ax_curve.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100),
                     title=f"{task}: training curves (selected gain)")
        ax_curve.grid(alpha=0.3)
    axes[1, 0].legend(fontsize=7, loc="lower right")
    return fig
