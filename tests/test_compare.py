"""``spark_torch.compare``: the task generators, the neurons, the protocol, the results file, the command
and notebook 04 (executed with small settings)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_torch import IzhikevichSoma
from spark_torch.cli import main
from spark_torch.compare import (NEURON_NAMES, NEURONS, TASK_NAMES, CompareConfig, SpikingNet, TrainSettings,
                                 format_table, make_task, run_comparison, select_gain, summarize, write_results)
from spark_torch.compare.memory import make_evidence
from spark_torch.compare.neurons import IZHIKEVICH_FIELDS, neuron_param_groups, project_neuron_params
from spark_torch.compare.randman import RandomManifold, make_randman, spectrum_cutoff, spike_raster
from spark_torch.compare.training import FitResult

ROOT = Path(__file__).resolve().parents[1]
#: small generator settings for runs inside the tests (the real tasks keep their documented sizes)
TINY_TASKS = {"digits": {"steps": 6},
              "randman": {"classes": 3, "inputs": 12, "steps": 20, "samples_per_class": 20},
              "memory": {"samples": 60, "cues": 3, "cue_steps": 2, "gap_steps": 1, "delay": 4, "recall_steps": 4}}


def _holdout_accuracy(features: np.ndarray, labels: np.ndarray, classifier) -> float:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(features, labels, test_size=0.3, random_state=0, stratify=labels)
    return float(classifier.fit(x_tr, y_tr).score(x_te, y_te))


# ---------------------------------------------------------------------------- randman
def test_randman_one_spike_per_unit_and_seeded():
    data = make_randman(classes=4, inputs=30, steps=50, samples_per_class=40, seed=3)
    raster = spike_raster(data.times, data.steps)
    assert raster.shape == (160, 50, 30) and raster.dtype == np.uint8
    assert (raster.sum(1) == 1).all()                                  # exactly one spike per unit and sample
    assert np.bincount(data.labels).tolist() == [40] * 4
    again = make_randman(classes=4, inputs=30, steps=50, samples_per_class=40, seed=3)
    assert np.array_equal(again.times, data.times) and np.array_equal(again.labels, data.labels)
    other = make_randman(classes=4, inputs=30, steps=50, samples_per_class=40, seed=4)
    assert not np.array_equal(other.times, data.times)


def test_randman_times_spread_over_the_window():
    data = make_randman(classes=5, inputs=40, steps=100, samples_per_class=100, seed=0)
    for k in range(5):
        times = data.times[data.labels == k]
        assert (times.min(0) == 0).all() and (times.max(0) == 99).all()  # min-max scaled per class and unit
    quarters = np.bincount(data.times.ravel() // 25, minlength=4) / data.times.size
    assert quarters.min() > 0.1, quarters
    assert data.times.std() > 15


def test_randman_spectrum_and_smoothness():
    assert spectrum_cutoff(2.0) == 32 and spectrum_cutoff(1.0) == 1000
    manifold = RandomManifold.random(np.random.default_rng(0), units=20, dim=1, alpha=2.0)
    j = np.arange(1, 33)
    assert manifold.coefficients.shape == (20, 1, 32, 3)
    assert (manifold.amplitudes <= 1.0 / j**2 + 1e-12).all()            # power-law fall-off, alpha = 2
    x = np.linspace(0, 1, 2001)[:, None]
    y = manifold(x)
    step, spread = np.abs(np.diff(y, axis=0)).max(), y.max(0) - y.min(0)
    assert (step < 0.05 * spread).all()                                  # smooth: small steps in x, small changes
    two_d = RandomManifold.random(np.random.default_rng(1), units=5, dim=2)
    assert two_d(np.random.default_rng(2).random((7, 2))).shape == (7, 5)


def test_randman_classes_are_separable_by_timing_only():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    data = make_randman(classes=10, inputs=40, steps=100, samples_per_class=60, seed=0)
    raster = spike_raster(data.times, data.steps)
    counts = raster.sum(1)                                               # spike count per unit: all ones
    assert (counts == counts[0]).all()
    assert _holdout_accuracy(counts, data.labels, LogisticRegression(max_iter=200)) <= 0.15  # chance: 0.1
    assert _holdout_accuracy(data.times.astype(float), data.labels, KNeighborsClassifier(1)) > 0.8


@pytest.mark.parametrize("kwargs", [{"classes": 0}, {"steps": 1.5}, {"samples_per_class": 1}, {"alpha": -1.0}])
def test_randman_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        make_randman(**kwargs)


# ---------------------------------------------------------------------------- memory (evidence accumulation)
def test_evidence_layout_and_labels():
    data = make_evidence(samples=400, seed=1)
    u, slot = data.units, 6 + 4
    assert data.raster.shape == (400, data.steps, 4 * u) and data.steps == 5 * slot + 30 + 20 == 100
    assert np.array_equal(data.labels, (data.sides.sum(1) >= 3).astype(np.int64))
    assert 0.35 < data.labels.mean() < 0.65
    left, right, recall = (data.raster[:, :, g * u:(g + 1) * u] for g in range(3))
    for i in range(5):                                   # a cue burst only in its slot and on its side
        start = i * slot
        burst_left = left[:, start:start + 6].sum((1, 2))
        burst_right = right[:, start:start + 6].sum((1, 2))
        assert (burst_left[data.sides[:, i] == 1] == 0).all() and (burst_right[data.sides[:, i] == 0] == 0).all()
        assert (left[:, start + 6:start + slot].sum() == 0) and (right[:, start + 6:start + slot].sum() == 0)
    assert left[:, data.cue_end:].sum() == 0 and right[:, data.cue_end:].sum() == 0
    assert recall[:, :data.recall_start].sum() == 0 and recall[:, data.recall_start:].mean() > 0.3


def test_evidence_answer_is_only_in_the_past():
    """The cue period predicts the class; the readout window's input does not."""
    from sklearn.linear_model import LogisticRegression

    data = make_evidence(samples=1000, seed=0)
    u = data.units
    cue_counts = data.raster[:, :data.cue_end, :2 * u].reshape(1000, data.cue_end, 2, u).astype(int).sum((1, 3))
    evidence = (cue_counts[:, 1] - cue_counts[:, 0])[:, None].astype(float)
    assert _holdout_accuracy(evidence, data.labels, LogisticRegression()) > 0.9
    window = data.raster[:, data.recall_start:].sum(1).astype(float)
    assert _holdout_accuracy(window, data.labels, LogisticRegression(max_iter=500)) < 0.62
    task = make_task("memory")           # the answer is 30 steps old: 3x the time constant of snn.Leaky(0.9)
    assert task.params["delay"] == 30 and (task.readout_start, task.steps) == (80, 100)


@pytest.mark.parametrize("kwargs", [{"cues": 4}, {"cue_rate": 1.5}, {"delay": -1}, {"samples": 0}])
def test_evidence_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        make_evidence(**kwargs)


# ---------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("name", TASK_NAMES)
def test_tasks_split_and_describe_themselves(name):
    task = make_task(name, **TINY_TASKS[name])
    n = len(task.y_train) + len(task.y_val) + len(task.y_test)
    assert abs(len(task.y_train) / n - 0.6) < 0.02 and abs(len(task.y_test) / n - 0.2) < 0.02
    assert task.x_train.dtype == torch.uint8 and task.x_train.shape[1:] == task.x_val.shape[1:]
    assert set(task.y_test.tolist()) == set(range(task.classes))          # stratified
    info = task.info()
    for key, kind in (("classes", int), ("steps", int), ("inputs", int), ("readout_start", int), ("chance", float)):
        assert isinstance(info[key], kind), key
    assert 0 <= info["readout_start"] < info["steps"]
    assert task.input_scale == pytest.approx(task.input_rate ** -0.5)
    json.dumps(info)


def test_digits_task_is_rate_coded_scikit_learn_digits():
    task = make_task("digits")
    assert (task.classes, task.steps, task.inputs, task.readout_start) == (10, 25, 64, 0)
    assert len(task.y_train) + len(task.y_val) + len(task.y_test) == 1797
    assert 0.25 < task.input_rate < 0.35                                  # mean pixel/16 of the digits


def test_unknown_task():
    with pytest.raises(ValueError, match="valid tasks"):
        make_task("mnist")


# ---------------------------------------------------------------------------- neurons and network
@pytest.mark.parametrize("name", NEURON_NAMES)
def test_every_neuron_runs_the_network(name):
    spec = NEURONS[name]
    net = SpikingNet(spec, inputs=6, hidden=9, classes=3, gain=spec.reference_gain)
    x = (torch.rand(12, 4, 6) < 0.5).float()
    spk_hidden, spk_out = net(x)
    assert spk_hidden.shape == (12, 4, 9) and spk_out.shape == (12, 4, 3)
    spk_out.sum().backward()
    assert net.fc1.weight.grad is not None and torch.isfinite(net.fc1.weight.grad).all()
    if spec.gain_in_layer:
        assert isinstance(net.lif1, IzhikevichSoma) and net.lif1.sequence and net.current_scale == 1.0
        assert torch.allclose(net.lif1.resistance, torch.tensor(spec.reference_gain, dtype=torch.float32))
    else:
        assert net.current_scale == spec.reference_gain


def test_learnable_and_mixed_neurons():
    mixed = SpikingNet(NEURONS["izhikevich-mixed"], 5, 14, 3, 30.0)
    assert set(np.round(mixed.lif1.recovery_update.double().numpy(), 4).tolist()) == {2.0, 4.0, 0.05, 8.0}
    assert len(set(mixed.lif1.potential_reset.tolist())) == 3 and (mixed.lif2.recovery_update == 8.0).all()
    learn = SpikingNet(NEURONS["izhikevich-learnable"], 5, 14, 3, 30.0)
    for layer in (learn.lif1, learn.lif2):
        assert {n for n, _ in layer.named_parameters()} == set(IZHIKEVICH_FIELDS)
    groups = neuron_param_groups(learn, lr=1e-2)
    assert len(groups) == 1 + 2 * len(IZHIKEVICH_FIELDS)
    assert any(g["lr"] == pytest.approx(1e-2 * 0.02) for g in groups)   # a moves relative to its size
    with torch.no_grad():
        learn.lif1.recovery_timescale.fill_(-1.0)
        learn.lif1.threshold.fill_(-80.0)
    project_neuron_params(learn)
    assert (learn.lif1.recovery_timescale >= 1e-3).all() and (learn.lif1.threshold >= -60.0 + 1e-6).all()
    leaky = SpikingNet(NEURONS["leaky-learnable"], 5, 14, 3, 1.0)
    assert leaky.lif1.beta.shape == (14,) and leaky.lif1.threshold.requires_grad


# ---------------------------------------------------------------------------- protocol
def _fake_result(gain, val):
    return FitResult(net=None, gain=gain, seed=0, train_loss=[1.0] * len(val), train_accuracy=[0.5] * len(val),
                     val_accuracy=list(val), train_seconds=1.0)


def test_select_gain_uses_validation_mean_of_last_epochs_and_prefers_smaller_gain_on_ties():
    sweep = [_fake_result(1.0, [0.1, 0.5, 0.5, 0.5]), _fake_result(3.0, [0.9, 0.9, 0.2, 0.3]),
             _fake_result(10.0, [0.0, 0.6, 0.6, 0.6])]
    assert select_gain(sweep) == 2
    tie = [_fake_result(10.0, [0.7] * 3), _fake_result(1.0, [0.7] * 3)]
    assert select_gain(tie) == 1


def test_summarize_mean_and_std():
    runs = [{"task": "t", "neuron": "n", "seed": s, "input_gain": 2.0, "gain_factor": 1.0, "val_accuracy": 0.5,
             "test_accuracy": acc, "spike_rate": 0.1, "output_spike_rate": 0.2, "train_seconds": 4.0,
             "epoch_seconds": 2.0} for s, acc in enumerate((0.6, 0.8, 0.7))]
    (row,) = summarize(runs)
    assert row["seeds"] == 3 and row["test_accuracy_mean"] == pytest.approx(0.7)
    assert row["test_accuracy_std"] == pytest.approx(0.1) and row["train_seconds_mean"] == 4.0


@pytest.mark.parametrize("kwargs", [{"tasks": ("mnist",)}, {"neurons": ("lif",)}, {"seeds": 0}, {"tasks": "digits"},
                                    {"gain_factors": (0.0, 1.0)}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        CompareConfig(**kwargs).validate()


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A test-size comparison: every task and neuron, 2 seeds, through the library function."""
    config = CompareConfig(seeds=2, settings=TrainSettings(hidden=8, epochs=2, batch_size=32, max_train=48),
                           task_options=TINY_TASKS)
    started = time.perf_counter()
    results = run_comparison(config)
    seconds = time.perf_counter() - started
    out = tmp_path_factory.mktemp("compare")
    write_results(results, out)
    return results, out, seconds


def test_results_file_schema(tiny_results):
    results, out, seconds = tiny_results
    assert seconds < 60
    on_disk = json.loads((out / "compare_results.json").read_text())
    assert on_disk["neurons"] == list(NEURON_NAMES) and set(on_disk["tasks"]) == set(TASK_NAMES)
    for info in on_disk["tasks"].values():
        assert all(isinstance(info[k], int) for k in ("classes", "steps", "inputs"))
    assert len(on_disk["runs"]) == len(TASK_NAMES) * len(NEURON_NAMES) * 2
    for run in on_disk["runs"]:
        assert {"task", "neuron", "seed", "input_gain", "val_accuracy", "test_accuracy", "spike_rate",
                "train_seconds"} <= set(run)
        assert 0.0 <= run["val_accuracy"] <= 1.0 and 0.0 <= run["test_accuracy"] <= 1.0
        assert 0.0 <= run["spike_rate"] <= 1.0 and run["train_seconds"] > 0
        assert len(run["curves"]["val_accuracy"]) == len(run["curves"]["train_loss"]) == 2
    assert len(on_disk["summary"]) == len(TASK_NAMES) * len(NEURON_NAMES)
    for row in on_disk["summary"]:
        assert {"task", "neuron", "seeds", "input_gain", "test_accuracy_mean", "test_accuracy_std",
                "train_seconds_mean"} <= set(row)
        assert row["seeds"] == 2 and 0.0 <= row["test_accuracy_mean"] <= 1.0 and row["test_accuracy_std"] >= 0
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_protocol_tests_only_the_gain_chosen_on_validation(tiny_results):
    results = tiny_results[0]
    for task in TASK_NAMES:
        for neuron in NEURON_NAMES:
            sweep = [s for s in results["sweep"] if s["task"] == task and s["neuron"] == neuron]
            runs = [r for r in results["runs"] if r["task"] == task and r["neuron"] == neuron]
            assert len(sweep) == 3 and sum(s["selected"] for s in sweep) == 1
            gains = sorted(s["input_gain"] for s in sweep)
            assert gains[2] / gains[0] == pytest.approx(10.0)               # one decade
            chosen = next(s for s in sweep if s["selected"])
            assert chosen["selection_score"] == max(s["selection_score"] for s in sweep)
            assert [r["seed"] for r in runs] == [0, 1] and {r["input_gain"] for r in runs} == {chosen["input_gain"]}
            assert runs[0]["curves"] == chosen["curves"]                     # seed 0 is the sweep's run
    table = format_table(results)
    assert table.count("\n") == 1 + len(TASK_NAMES) * len(NEURON_NAMES) and "izhikevich-mixed" in table


# ---------------------------------------------------------------------------- command
def test_compare_help(capsys):
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--tasks", "--neurons", "--seeds", "--quick", "--out", "randman", "izhikevich-learnable"):
        assert flag in out


@pytest.mark.parametrize("argv", [["compare", "--tasks", "mnist"], ["compare", "--seeds", "0"],
                                  ["compare", "--neurons"]])
def test_compare_bad_flags(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_compare_command_writes_results(tmp_path, capsys):
    argv = ["compare", "--tasks", "memory", "--neurons", "izhikevich", "leaky", "--seeds", "1", "--epochs", "1",
            "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| memory (chance" in out and "izhikevich" in out and "leaky" in out
    results = json.loads((tmp_path / "compare_results.json").read_text())
    assert results["neurons"] == ["izhikevich", "leaky"] and list(results["tasks"]) == ["memory"]
    assert results["settings"]["epochs"] == 1 and results["settings"]["max_train"] == 360
    assert (tmp_path / "comparison.png").exists()


# ---------------------------------------------------------------------------- notebook 04
def test_notebook_04_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(ROOT / "notebooks" / "04_comparing_neurons.ipynb", as_version=4)
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_before) if p)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    (cell,) = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    summary = json.loads("".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"))
    assert set(summary["test_accuracy_mean"]) == {f"{t}/{n}" for t in summary["tasks"] for n in summary["neurons"]}
    assert all(0.0 <= v <= 1.0 for v in summary["test_accuracy_mean"].values())
    assert summary["randman_one_spike_per_unit"] is True
    assert any(o.output_type == "display_data" and "image/png" in o.data for c in nb.cells
               if c.cell_type == "code" for o in c.outputs)
