"""The real snnTorch pipeline on scikit-learn's digits, with IzhikevichSoma and snn.Leaky.

``nn.Linear → neuron → nn.Linear → neuron``, rate-coded input, ``ce_rate_loss``, Adam,
``snntorch.utils.reset`` between batches, in both the ``nn.Sequential(init_hidden=True)`` form and the
explicit-state tutorial loop. Budgets are small (10 steps, few epochs, ~20 s in all on 2 cores);
measured with these budgets (seeds 0–2): Izhikevich 76–78 % test accuracy after 4 epochs, Leaky
90–94 % after 2 epochs, chance is 10 %.
"""

import numpy as np
import pytest
import snntorch as snn
import torch
from torch import nn

from spark_torch import IzhikevichSoma
from spark_torch.demo import (DigitsData, LoopNet, TrainConfig, build_network, load_digits_data,
                              plot_training_curves, rate_encode, run_network, train)
from spark_torch.patterns import simulate_presets

BUDGET = {"izhikevich": dict(epochs=4, num_steps=10), "leaky": dict(epochs=2, num_steps=10)}
MIN_ACCURACY = {"izhikevich": 0.60, "leaky": 0.80}
CASES = [(kind, form) for kind in ("izhikevich", "leaky") for form in ("sequential", "loop")]


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_data(seed=0)


@pytest.fixture(scope="module")
def results(data):
    """Each (kind, form) trained once per module; the tests below inspect the results."""
    return {(kind, form): train(TrainConfig(kind=kind, form=form, seed=0, **BUDGET[kind]), data)
            for kind, form in CASES}


def test_digits_are_scaled_split_and_reproducible(data):
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) == 1.0
    assert set(data.y_test.tolist()) == set(range(10))
    again = load_digits_data(seed=0)
    torch.testing.assert_close(again.x_test, data.x_test)
    assert not torch.equal(load_digits_data(seed=1).y_test, data.y_test)


def test_rate_encode_is_snntorch_rate_coding():
    spikes = rate_encode(torch.tensor([[0.0, 1.0, 0.5]]).repeat(2000, 1), num_steps=3)
    assert spikes.shape == (3, 2000, 3)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    rates = spikes.mean(dim=(0, 1))
    assert rates[0] == 0 and rates[1] == 1 and abs(float(rates[2]) - 0.5) < 0.03


@pytest.mark.parametrize("form", ["sequential", "loop", "sequence"])
def test_network_is_linear_neuron_linear_neuron(form):
    net = build_network("izhikevich", hidden=32, form=form)
    layers = list(net.children())
    assert [type(m) for m in layers] == [nn.Linear, IzhikevichSoma, nn.Linear, IzhikevichSoma]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (64, 32, 10)
    assert all(m.config.resistance == 10.0 for m in layers[1::2])
    assert isinstance(net, LoopNet if form == "loop" else nn.Sequential)
    assert all(m.init_hidden == (form != "loop") for m in layers[1::2])


def test_leaky_network_uses_snn_leaky():
    net = build_network("leaky", hidden=16, form="sequential")
    assert type(net[1]) is snn.Leaky and type(net[3]) is snn.Leaky
    with pytest.raises(ValueError, match="sequence"):
        build_network("leaky", form="sequence")


@pytest.mark.xdist_group("demo_results")  # the tests on `results` share one training run (one worker)
@pytest.mark.parametrize("kind, form", CASES)
def test_training_lowers_loss_and_beats_chance(results, kind, form):
    res = results[(kind, form)]
    assert len(res.train_loss) == len(res.test_accuracy) == BUDGET[kind]["epochs"]
    assert res.train_loss[-1] < res.train_loss[0] - 0.05
    assert res.final_test_accuracy > MIN_ACCURACY[kind], res.test_accuracy
    assert res.wall_time_s > 0
    hidden_rate, output_rate = res.spike_rates.values()
    assert 0.0 < hidden_rate < 1.0 and 0.0 < output_rate < 1.0


@pytest.mark.xdist_group("demo_results")
@pytest.mark.parametrize("kind", ["izhikevich", "leaky"])
def test_sequential_and_loop_forms_train_identically(results, kind):
    """Same seed, same weights, same spikes: the two snnTorch call styles are one computation."""
    seq, loop = results[(kind, "sequential")], results[(kind, "loop")]
    np.testing.assert_allclose(seq.train_loss, loop.train_loss, rtol=1e-4)
    assert seq.test_accuracy == pytest.approx(loop.test_accuracy, abs=0.01)


def test_sequence_form_matches_step_form(data):
    """``IzhikevichSoma(sequence=True)`` on ``[T, B, H]`` = the same net stepped T times."""
    torch.manual_seed(3)
    stepped = build_network("izhikevich", hidden=64, form="sequential")
    whole = build_network("izhikevich", hidden=64, form="sequence")
    spikes = rate_encode(data.x_train[:40].clamp(min=0.5), num_steps=20)
    run_network(stepped, spikes[:, :1])  # build the lazy layers, then share the weights
    run_network(whole, spikes[:, :1])
    with torch.no_grad():  # an output layer that fires at initialisation, so spikes are compared too
        stepped[2].bias.fill_(0.6)
    whole.load_state_dict(stepped.state_dict())
    torch.testing.assert_close(run_network(whole, spikes), run_network(stepped, spikes))
    assert run_network(stepped, spikes).sum() > 0


def test_loop_form_survives_batch_size_changes(data):
    net = build_network("izhikevich", hidden=16, form="loop")
    for batch in (8, 5, 8):
        assert run_network(net, rate_encode(data.x_train[:batch], 4)).shape == (4, batch, 10)


def test_train_config_rejects_bad_values():
    for bad, match in [(dict(kind="lif"), "kind"), (dict(form="scan"), "form"), (dict(epochs=0), "epochs"),
                       (dict(lr=-1.0), "lr"), (dict(kind="leaky", form="sequence"), "sequence"),
                       (dict(num_threads=0), "num_threads")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad).validate()


def test_train_restores_torch_threads(data):
    before = torch.get_num_threads()
    train(TrainConfig(kind="leaky", epochs=1, num_steps=2, max_train=64, num_threads=1), data)
    assert torch.get_num_threads() == before


@pytest.mark.xdist_group("demo_results")
def test_training_curves_png(results, tmp_path):
    path = tmp_path / "curves.png"
    plot_training_curves([results[("izhikevich", "loop")], results[("leaky", "loop")]], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rs_preset_trace_in_mv():
    (rs,) = simulate_presets(["RS"])
    assert rs.spike_count == 22  # RS at 100 pA, 1000 ms, dt = 1 (reference_numpy.FIG2_COUNTS)
    assert rs.time_ms[-1] == 1000.0 and rs.v_mV.shape == (1001,)
    assert rs.v_mV[0] == -65.0
    np.testing.assert_allclose(rs.v_mV[1:4], [-58.0, -50.44, -37.900256], rtol=1e-9)  # the worked example of tests/test_kernel.py
    assert rs.spike_times_ms[0] == 5.0  # the spike in step index 4 ends at t = 5 ms
    assert rs.v_mV.max() < 30.0 and rs.v_mV[5] == -65.0  # post-reset state: v -> c after the spike
