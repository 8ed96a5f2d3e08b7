"""``spark-torch`` / ``python -m spark_torch``: help, one-line errors, demo and patterns outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_torch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "spark_torch", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["patterns", "--help"]])
def test_help(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spark-torch")
    for flag in {"demo": ["--epochs", "--steps", "--seed", "--hidden", "--batch-size", "--out"],
                 "patterns": ["--out"], "--help": ["demo", "patterns", "bench"]}[argv[0]]:
        assert flag in out


def test_bench_help_or_not_available(capsys):
    assert main(["bench", "--help"]) == 0
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--bogus"], ["demo", "--bogus"], ["demo", "--epochs", "0"],
                                  ["demo", "--steps", "many"], ["patterns", "--dt", "-1"], []])
def test_bad_flags_give_one_line_and_status_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "error" in err and "Traceback" not in err


def test_module_entry_point_bad_flag():
    proc = run_module("demo", "--epochs", "-3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "spark-torch demo: error: argument --epochs: expected a positive integer, got '-3' "
        "(see spark-torch demo --help)"]


def test_demo_tiny_writes_png_and_json(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--steps", "5", "--hidden", "16", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "izhikevich" in out and "leaky" in out and "test acc" in out
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert set(results) == {"izhikevich", "leaky"}
    for res in results.values():
        assert len(res["train_loss"]) == len(res["test_accuracy"]) == 1
        assert 0.0 <= res["final_test_accuracy"] <= 1.0 and res["wall_time_s"] > 0
        assert res["config"]["num_steps"] == 5 and res["config"]["hidden"] == 16


def test_patterns_through_the_module(tmp_path):
    proc = run_module("patterns", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "patterns.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "patterns.json").read_text())
    assert summary["spike_counts"]["RS"] == 22  # the paper's RS neuron: 100 pA, 1000 ms, dt = 1
    assert set(summary["spike_counts"]) == {"RS", "IB", "CH", "FS", "TC", "RZ", "LTS"}
    assert "RS 22" in proc.stdout
