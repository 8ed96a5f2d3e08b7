"""snnTorch 1.0 call conventions, hidden state, reset, surrogate options and nn.Module plumbing."""

import copy

import pytest
import snntorch as snn
import snntorch.surrogate as surrogate
import torch
from snntorch import utils
from torch import nn

from spark_torch import IzhikevichSoma, IzhikevichSomaConfig, Uniform

from conftest import needs_inductor
from reference_torch import default_params, reference_run


def _net(**kw):
    return nn.Sequential(nn.Linear(8, 16), IzhikevichSoma(resistance=10.0, init_hidden=True, **kw))


def test_is_an_snntorch_spiking_neuron_and_exposes_config():
    layer = IzhikevichSoma(recovery_update=8.0)
    assert isinstance(layer, snn.SpikingNeuron)
    assert layer.config == IzhikevichSomaConfig(recovery_update=8.0)


def test_config_plus_overrides_override_wins():
    layer = IzhikevichSoma(IzhikevichSomaConfig(recovery_update=8.0, dt=0.5), recovery_update=4.0)
    assert layer.config.recovery_update == 4.0 and layer.config.dt == 0.5


def test_init_hidden_returns_spk_or_spk_mem_and_rejects_mem():
    x = torch.rand(4, 16)
    layer = IzhikevichSoma(resistance=10.0, init_hidden=True)
    spk = layer(x)
    assert isinstance(spk, torch.Tensor) and spk.shape == (4, 16)
    with pytest.raises(TypeError, match="init_hidden"):
        layer(x, layer.mem)
    spk, mem = IzhikevichSoma(resistance=10.0, init_hidden=True, output=True)(x)
    assert mem.shape == (4, 16)


def test_mem_is_a_new_tensor_each_step_and_not_a_module_buffer():
    """The hidden state is kept beside the module's buffers (spark_torch.state): torch.compile(dynamic=True)
    then treats its batch size as symbolic, and DDP does not broadcast one rank's neurons to another."""
    layer = IzhikevichSoma(resistance=10.0, init_hidden=True)
    x = torch.rand(2, 5)
    layer(x)
    first = layer.mem
    layer(x)
    assert layer.mem is not first and layer.mem.shape == (2, 5)
    assert not {"mem", "potential", "recovery"} & set(dict(layer.named_buffers()))
    assert "mem" not in layer.state_dict()  # hidden state is non-persistent (unless persist_hidden)


def test_utils_reset_resets_v_and_u_when_direct_child():
    net = _net()
    x = torch.rand(3, 8)
    fresh_out = [net(x) for _ in range(6)]
    utils.reset(net)
    assert torch.count_nonzero(net[1].mem) == 0
    again = [net(x) for _ in range(6)]
    for a, b in zip(fresh_out, again):
        assert torch.equal(a, b)


def test_reset_behaves_as_freshly_built():
    layer = IzhikevichSoma(resistance=10.0, sequence=True, recovery_update=Uniform(2.0, 8.0), seed=3)
    x = 2 * torch.rand(30, 2, 7)
    first = layer(x)
    layer(x)
    layer.reset()
    assert torch.count_nonzero(layer.mem) == 0
    assert torch.equal(layer.recovery, (layer.recovery_sensitivity * layer.potential_rest).expand(2, 7))
    second = layer(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_detach_hidden_truncates_bptt():
    net = _net()
    x = torch.rand(3, 8)
    for _ in range(3):
        net(x).sum().backward()  # would raise "backward through the graph a second time" without truncation
        snn.Leaky.detach_hidden()
        assert not net[1].mem.requires_grad
    net[1].detach_hidden_state()
    assert not net[1].recovery.requires_grad and not net[1].potential.requires_grad


def test_explicit_loop_detach_continues_exact_state():
    """`mem = mem.detach()` (truncated BPTT) keeps the exact state: same values as no truncation."""
    x = 2 * torch.rand(20, 2, 6)
    a, b = IzhikevichSoma(resistance=10.0), IzhikevichSoma(resistance=10.0)
    mem_a, mem_b = a.init_leaky(), b.init_leaky()
    for t, x_t in enumerate(x.unbind(0)):
        spk_a, mem_a = a(x_t, mem_a)
        spk_b, mem_b = b(x_t, mem_b)
        if t % 5 == 4:
            mem_b = mem_b.detach()
        assert torch.equal(spk_a, spk_b) and torch.equal(mem_a, mem_b)


def test_last_row_of_a_sequence_membrane_continues_exact_state():
    """``mem[-1]`` of a sequence call is this layer's own state (exact ``u``) while the caller holds
    ``mem``; a copy of it is foreign (fresh start with ``u = b·v``)."""
    x = 2 * torch.rand(30, 3, 5)
    whole = IzhikevichSoma(resistance=10.0, sequence=True)
    spk_ref, mem_ref = whole(x)
    split = IzhikevichSoma(resistance=10.0, sequence=True)
    _, mem = split(x[:12])
    spk, mem_tail = split(x[12:], mem[-1])
    assert torch.equal(spk, spk_ref[12:]) and torch.equal(mem_tail, mem_ref[12:])
    _, mem = split(x[:12])
    _, mem_fresh = split(x[12:], mem[-1].clone())
    assert not torch.equal(mem_fresh, mem_ref[12:])  # u restarted at b·v


def test_sequence_call_keeps_no_trajectory_alive():
    """The layer keeps only [B, *units] state: the returned [T, B, *units] tensors (and the kernel's
    v/u traces) are freed when the caller drops them."""
    import gc
    import weakref

    T, B, N = 40, 3, 5
    layer = IzhikevichSoma(resistance=10.0, sequence=True)
    x = 2 * torch.rand(T, B, N, requires_grad=True)
    spk, mem = layer(x)
    (spk.sum() + mem.sum()).backward()
    refs = [weakref.ref(spk), weakref.ref(mem)]
    del spk, mem
    gc.collect()
    assert all(r() is None for r in refs)
    for name in ("mem", "potential", "recovery"):
        state = getattr(layer, name)
        assert state.shape == (B, N) and state.untyped_storage().nbytes() == B * N * state.element_size(), name


def test_foreign_mem_starts_fresh_with_u_equal_b_v():
    """A mem the layer did not emit: v = v_r + mem·(v_pk − v_r), u = b·v (the paper's initial condition)."""
    layer = IzhikevichSoma(resistance=10.0).double()
    layer(torch.rand(2, 4, dtype=torch.float64))  # some earlier history that must not leak in
    mem = torch.full((2, 4), 0.3, dtype=torch.float64)
    cur = torch.rand(6, 2, 4, dtype=torch.float64)
    mems = []
    for cur_t in cur.unbind(0):
        _, mem = layer(cur_t, mem)
        mems.append(mem)
    v0 = torch.full((2, 4), -65.0 + 0.3 * 95.0, dtype=torch.float64)
    _, _, v_ref, u_ref = reference_run(cur, v0, 0.2 * v0, default_params(dtype=torch.float64, resistance=10.0))
    torch.testing.assert_close(torch.stack(mems), (v_ref + 65.0) / 95.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.recovery, u_ref[-1], rtol=1e-12, atol=1e-12)


def test_batch_size_change_starts_from_rest():
    layer = IzhikevichSoma(resistance=10.0, init_hidden=True)
    layer(2 * torch.rand(4, 6))
    out_small = layer(torch.ones(2, 6))
    fresh = IzhikevichSoma(resistance=10.0, init_hidden=True)(torch.ones(2, 6))
    assert torch.equal(out_small, fresh)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spike_values_dtype_and_graded_factor(dtype):
    layer = IzhikevichSoma(resistance=10.0, graded_spikes_factor=0.5, sequence=True).to(dtype)
    spk, mem = layer(3 * torch.rand(40, 3, 5, dtype=dtype))
    assert spk.dtype == mem.dtype == dtype
    assert set(spk.unique().tolist()) == {0.0, 0.5}


def test_learn_threshold_and_graded_spikes_factor_are_parameters_with_grads():
    layer = IzhikevichSoma(resistance=10.0, sequence=True, learn_threshold=True, learn_graded_spikes_factor=True,
                           units=(5,))
    names = dict(layer.named_parameters())
    assert set(names) == {"threshold", "graded_spikes_factor"}
    assert names["threshold"].shape == (5,)
    spk, _ = layer(3 * torch.rand(30, 2, 5))
    spk.sum().backward()
    assert names["threshold"].grad.abs().sum() > 0 and names["graded_spikes_factor"].grad != 0


def test_every_model_field_can_be_learnable():
    fields = IzhikevichSomaConfig.MODEL_FIELDS
    layer = IzhikevichSoma(resistance=10.0, sequence=True, learnable=fields, units=(4,))
    assert all(isinstance(getattr(layer, f), nn.Parameter) and getattr(layer, f).shape == (4,) for f in fields)
    spk, mem = layer(3 * torch.rand(30, 2, 4))
    (spk.sum() + mem.sum()).backward()
    assert all(getattr(layer, f).grad is not None for f in fields)


def test_surrogate_disable_gives_no_spike_gradient():
    layer = IzhikevichSoma(resistance=10.0, sequence=True, surrogate_disable=True)
    x = (3 * torch.rand(20, 2, 4)).requires_grad_()
    spk, _ = layer(x)
    assert spk.sum() > 0 and not spk.requires_grad


def test_spike_grad_defines_gradient_exactly():
    """The spike's gradient wrt x is exactly what the callable defines (checked through a 1-step call)."""
    slope = 7.0
    layer = IzhikevichSoma(spike_grad=surrogate.fast_sigmoid(slope=slope), sequence=True, units=(1,)).double()
    cur = torch.tensor([[[100.0]]], dtype=torch.float64, requires_grad=True)
    spk, _ = layer(cur)
    spk.sum().backward()
    v_star = -65.0 + 1.0 * (0.04 * 65.0 ** 2 - 5 * 65.0 + 140 + 13.0 + 10.0)  # -58
    x = (v_star - 30.0) / 95.0
    dspk_dx = 1.0 / (slope * abs(x) + 1.0) ** 2
    assert float(cur.grad) == pytest.approx(dspk_dx / 95.0 * 0.1, rel=1e-12)


@pytest.mark.parametrize("kwarg", ["beta", "learn_beta", "inhibition", "state_quant", "reset_delay"])
def test_snntorch_kwargs_without_izhikevich_meaning_raise(kwarg):
    with pytest.raises(TypeError, match=kwarg):
        IzhikevichSoma(**{kwarg: 0.9})


def test_reset_mechanism_other_than_zero_raises():
    with pytest.raises(ValueError, match="subtract"):
        IzhikevichSoma(reset_mechanism="subtract")


def test_unknown_kwarg_raises():
    with pytest.raises(TypeError, match="potental_rest"):
        IzhikevichSoma(potental_rest=-60.0)


def test_learnable_names_are_validated():
    with pytest.raises(ValueError, match="tau"):
        IzhikevichSoma(learnable=("tau",))


def test_to_double_state_dict_deepcopy_and_repr():
    layer = IzhikevichSoma(resistance=10.0, learnable=("recovery_timescale",), recovery_update=Uniform(1.0, 3.0),
                           units=(6,))
    layer.double()
    assert layer.recovery_timescale.dtype == layer.recovery_update.dtype == torch.float64
    state = layer.state_dict()
    assert set(IzhikevichSomaConfig.MODEL_FIELDS) <= set(state)
    unbuilt = IzhikevichSoma(resistance=10.0, learnable=("recovery_timescale",))
    unbuilt.load_state_dict(state)
    assert unbuilt.units == (6,) and torch.equal(unbuilt.recovery_update, layer.recovery_update)
    clone = copy.deepcopy(layer)
    x = 2 * torch.rand(3, 6, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(layer(x), clone(x)))
    assert "units=(6,)" in repr(layer) and "learnable=('recovery_timescale',)" in repr(layer)


def test_export_nir_refuses_instead_of_exporting_a_lif():
    export_nir = pytest.importorskip("snntorch.export_nir").export_to_nir
    net = nn.Sequential(nn.Linear(4, 3), IzhikevichSoma(init_hidden=True, units=(3,)))
    with pytest.raises(NotImplementedError, match="not a leaky integrate-and-fire"):
        export_nir(net, torch.rand(1, 4))


def test_build_explicit_and_from_specs():
    layer = IzhikevichSoma()
    layer.build({"in": torch.empty(2, 3, 4)})
    assert layer.units == (3, 4) and layer.mem.numel() == 0
    with pytest.raises(ValueError, match="units"):
        layer(torch.rand(2, 5))


@needs_inductor
def test_compile_fullgraph_matches_eager_with_no_graph_breaks():
    x = 2 * torch.rand(20, 3, 8)
    eager = IzhikevichSoma(resistance=10.0, sequence=True, units=(8,), learnable=("threshold",))
    compiled_layer = copy.deepcopy(eager)
    explain = torch._dynamo.explain(copy.deepcopy(eager))(x)
    assert explain.graph_break_count == 0
    compiled = torch.compile(compiled_layer, fullgraph=True)
    for _ in range(2):
        spk_e, mem_e = eager(x)
        spk_c, mem_c = compiled(x)
        assert torch.equal(spk_e, spk_c)
        torch.testing.assert_close(mem_e, mem_c)
    spk_e.sum().backward()
    spk_c.sum().backward()
    torch.testing.assert_close(eager.threshold.grad, compiled_layer.threshold.grad)


def test_tutorial_loop_with_smaller_last_batch_starts_from_rest():
    """snnTorch's loop: `mem = lif.init_leaky()` keeps the previous batch's shape; a new B means rest."""
    lif = IzhikevichSoma(resistance=10.0)
    mem = lif.init_leaky()
    lif(torch.ones(4, 8), mem)
    mem = lif.init_leaky()
    spk, mem = lif(torch.ones(3, 8), mem)
    fresh_spk, fresh_mem = IzhikevichSoma(resistance=10.0)(torch.ones(3, 8))
    assert torch.equal(mem, fresh_mem)
    with pytest.raises(ValueError, match="units"):
        lif(torch.ones(3, 8), torch.zeros(3, 5))


def test_utils_reset_never_mistakes_fresh_zeros_for_own_state():
    """Regression: zeros allocated at a freed address of an emitted mem must still mean rest."""
    net = nn.Sequential(IzhikevichSoma(resistance=10.0, init_hidden=True))
    fresh = IzhikevichSoma(resistance=10.0, init_hidden=True)
    zero = torch.zeros(8, 4)
    fresh(zero)
    expected = fresh.mem.clone()  # utils.reset resets every snn.Leaky instance, `fresh` included
    for _ in range(50):
        utils.reset(net)
        for _ in range(3):
            net(torch.rand(8, 4) * 3)
        utils.reset(net)
        net(zero)
        assert torch.equal(net[0].mem, expected)


def test_count_loss_gradient_crosses_as_one_row_without_copies():
    """snnTorch's count losses sum spikes over time, so the spikes' cotangent is one ``[B, C]`` row
    broadcast over ``T`` (stride 0): it crosses to JAX as that row (no ``[T, B, C]`` copy) and gives the
    gradient of the same loss with the cotangent materialized, to float32 rounding."""
    import snntorch.functional as SF
    from spark_torch import bridge

    torch.manual_seed(0)
    T, B, C = 40, 8, 10
    cur = (3.0 * torch.rand(T, B, C)).requires_grad_(True)
    targets = torch.randint(0, C, (B,))
    layer = IzhikevichSoma(resistance=10.0, sequence=True)
    grads = []
    for materialize in (False, True):
        cur.grad = None
        bridge.reset_copy_counts()
        spk, _ = layer(cur)
        SF.ce_count_loss()(spk * torch.ones_like(spk) if materialize else spk, targets).backward()
        grads.append(cur.grad.clone())
        if not materialize:
            assert not bridge.copy_counts, dict(bridge.copy_counts)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6 * float(grads[1].abs().max()))


def test_probe_monitors_record_mem_and_outputs_as_for_leaky():
    from snntorch.functional import probe

    net = nn.Sequential(nn.Linear(4, 4), IzhikevichSoma(resistance=10.0, init_hidden=True))
    mem_monitor = probe.AttributeMonitor("mem", False, net, instance=IzhikevichSoma)
    output_monitor = probe.OutputMonitor(net, instance=IzhikevichSoma)
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 4))
    assert len(mem_monitor.records) == 3 and len(output_monitor.records) == 3
    assert mem_monitor.records[-1] is net[1].mem
    assert mem_monitor.records[0].shape == (2, 4)


@pytest.mark.parametrize("form", ["layer_state", "explicit_mem", "init_hidden_step", "init_hidden_sequence"])
def test_compiled_stateful_calls_equal_eager_over_many_steps(form):
    """torch.compile(fullgraph=True) on calls that carry state from call to call: the layer's own state, the
    snnTorch loop passing mem back, and init_hidden in step and sequence mode."""
    sequence = form == "init_hidden_sequence"
    kwargs = dict(resistance=10.0, units=(5,), init_hidden=form.startswith("init_hidden"), sequence=sequence)
    eager, compiled_layer = IzhikevichSoma(**kwargs), IzhikevichSoma(**kwargs)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = 2.5 * torch.rand(12, 4, 3, 5) if sequence else 2.5 * torch.rand(12, 3, 5)
    mem_eager = mem_compiled = None
    for t in range(12):
        if form == "explicit_mem" and t:
            (spk_e, mem_eager), (spk_c, mem_compiled) = eager(x[t], mem_eager), compiled(x[t], mem_compiled)
        elif form.startswith("init_hidden"):
            spk_e, spk_c = eager(x[t]), compiled(x[t])
        else:
            (spk_e, mem_eager), (spk_c, mem_compiled) = eager(x[t]), compiled(x[t])
        assert torch.equal(spk_e, spk_c), t
    assert 0 < spk_e.sum() or sequence
    assert torch.equal(eager.recovery, compiled_layer.recovery) and torch.equal(eager.mem, compiled_layer.mem)
