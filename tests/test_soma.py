"""IzhikevichSoma against the pure-PyTorch reference: values, gradients, sequence == steps, presets."""

import pytest
import snntorch as snn
import snntorch.surrogate as surrogate
import torch
from torch.testing import assert_close

from spark_torch import IzhikevichSoma, IzhikevichSomaConfig, preset
from spark_torch.config import SCHEMES
from spark_torch import kernel

from reference_numpy import FIG2_COUNTS as SPEC_COUNTS
from reference_torch import PARAM_NAMES, exact_surrogate, reference_run



class _BoxcarSpike(torch.autograd.Function):
    """A user-written surrogate: Heaviside forward, boxcar (|x| < 0.5) backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 0.5).to(grad.dtype)


def _custom_grad(input_, grad_input, spikes):
    return grad_input * torch.exp(-input_.abs())


SPIKE_GRADS = {
    "default_atan": None,
    "fast_sigmoid": surrogate.fast_sigmoid(slope=25),
    "sigmoid": surrogate.sigmoid(slope=5),
    "custom_surrogate": surrogate.custom_surrogate(_custom_grad),
    "autograd_function": _BoxcarSpike.apply,
    "lambda": lambda x: torch.sigmoid(4.0 * x),
}


def _drive(shape, dtype=torch.float64, scale=2.0):
    return scale * torch.rand(shape, dtype=dtype)


def _layer_params(layer):
    return {name: getattr(layer, name) for name in PARAM_NAMES}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("grad_name", list(SPIKE_GRADS))
def test_sequence_values_and_gradients_match_reference(scheme, grad_name):
    spike_grad = SPIKE_GRADS[grad_name]
    T, B, N = 25, 3, 6
    # the torch-side surrogate path (fused snnTorch surrogates: tests/test_surrogate.py)
    layer = IzhikevichSoma(resistance=10.0, scheme=scheme, sequence=True, units=(N,), spike_grad=spike_grad,
                           learnable=PARAM_NAMES, recovery_update=8.0, fuse_surrogate=False)
    layer.double()
    cur = _drive((T, B, N)).requires_grad_()
    mem0 = (0.3 * torch.rand(B, N, dtype=torch.float64)).requires_grad_()
    spk, mem = layer(cur, mem0)

    ref_params = {k: v.detach().clone().requires_grad_() for k, v in _layer_params(layer).items()}
    cur_ref = cur.detach().clone().requires_grad_()
    mem0_ref = mem0.detach().clone().requires_grad_()
    v_r, v_pk = ref_params["potential_rest"], ref_params["threshold"]
    v0 = v_r + mem0_ref * (v_pk - v_r)
    spk_ref, _, v_ref, _ = reference_run(cur_ref, v0, ref_params["recovery_sensitivity"] * v0, ref_params,
                                         scheme=scheme, spike_grad=spike_grad or surrogate.atan(alpha=2.0))
    mem_ref = (v_ref - v_r) / (v_pk - v_r)
    assert spk_ref.sum() > 0, "the test drive must make neurons spike"
    assert_close(spk, spk_ref, rtol=0, atol=0)
    assert_close(mem, mem_ref, rtol=1e-12, atol=1e-12)

    w_spk, w_mem = torch.randn_like(spk), torch.randn_like(mem)
    ((spk * w_spk).sum() + (mem * w_mem).sum()).backward()
    ((spk_ref * w_spk).sum() + (mem_ref * w_mem).sum()).backward()
    assert_close(cur.grad, cur_ref.grad, rtol=1e-9, atol=1e-9)
    assert_close(mem0.grad, mem0_ref.grad, rtol=1e-9, atol=1e-9)
    for name in PARAM_NAMES:
        assert_close(getattr(layer, name).grad, ref_params[name].grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_sequence_call_equals_step_calls_bitwise(dtype, scheme):
    T, B, N = 60, 4, 10
    cur = _drive((T, B, N), dtype=dtype, scale=3.0)
    seq = IzhikevichSoma(resistance=10.0, scheme=scheme, sequence=True).to(dtype)
    steps = IzhikevichSoma(resistance=10.0, scheme=scheme).to(dtype)
    spk_seq, mem_seq = seq(cur)
    mem, outs = steps.init_leaky(), []
    for cur_t in cur.unbind(0):
        spk, mem = steps(cur_t, mem)
        outs.append((spk, mem))
    assert spk_seq.sum() > 0
    assert torch.equal(spk_seq, torch.stack([s for s, _ in outs]))
    assert torch.equal(mem_seq, torch.stack([m for _, m in outs]))
    assert torch.equal(seq.recovery, steps.recovery) and torch.equal(seq.potential, steps.potential)


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("sequence", [True, False], ids=["sequence", "step"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_inference_equals_training_forward_bitwise(sequence, scheme, B, no_grad):
    """Under ``torch.no_grad()`` / ``torch.inference_mode()`` the kernel writes no state traces; spikes, mem
    and the carried state are bit-identical to a call that records the graph (at every batch size), and
    the hidden state continues the same."""
    T, N = 40, 8
    cur = _drive((T, B, N), scale=3.0)
    layers = [IzhikevichSoma(resistance=10.0, scheme=scheme, sequence=sequence, learnable=("threshold",))
              for _ in range(2)]
    outputs = []
    for layer, grad in zip(layers, (True, False)):
        with torch.enable_grad() if grad else no_grad():
            if sequence:
                spk, mem = layer(cur[:25])
                spk2, mem2 = layer(cur[25:], mem[-1])
                outputs.append((torch.cat([spk, spk2]), torch.cat([mem, mem2])))
            else:
                mem, steps = layer.init_leaky(), []
                for cur_t in cur.unbind(0):
                    spk, mem = layer(cur_t, mem)
                    steps.append((spk, mem))
                outputs.append(tuple(torch.stack(z) for z in zip(*steps)))
    (spk_train, mem_train), (spk_infer, mem_infer) = outputs
    assert mem_train.requires_grad and not mem_infer.requires_grad
    assert spk_train.sum() > 0
    assert torch.equal(spk_train, spk_infer) and torch.equal(mem_train.detach(), mem_infer)
    for name in ("mem", "potential", "recovery"):
        assert torch.equal(getattr(layers[0], name).detach(), getattr(layers[1], name)), name


@pytest.mark.parametrize("sequence", [True, False], ids=["sequence", "step"])
def test_layer_built_under_inference_mode_trains_afterwards(sequence):
    """An evaluation loop under ``torch.inference_mode()`` may build the layer and leave state behind: the
    parameters stay trainable, and the next training call continues from that state with gradients."""
    T, B, N = 6, 2, 5
    cur = _drive((T, B, N), scale=3.0)
    layer = IzhikevichSoma(resistance=10.0, sequence=sequence, init_hidden=True, learnable=("threshold",))
    twin = IzhikevichSoma(resistance=10.0, sequence=sequence, init_hidden=True, learnable=("threshold",))
    with torch.inference_mode():
        first = layer(cur) if sequence else layer(cur[0])
    with torch.no_grad():
        assert torch.equal(first, twin(cur) if sequence else twin(cur[0]))
    assert not layer.threshold.is_inference() and layer.threshold.requires_grad
    out = layer(cur) if sequence else layer(cur[1])
    out.sum().backward()
    assert layer.threshold.grad is not None and torch.isfinite(layer.threshold.grad).all()
    expected = twin(cur) if sequence else twin(cur[1])
    assert torch.equal(out.detach(), expected) and torch.equal(layer.recovery.detach(), twin.recovery)


@pytest.mark.parametrize("loss", ["spike_sum", "weighted_spikes_and_mem"])
@pytest.mark.parametrize("fuse", [False, True], ids=["torch_surrogate", "fused_surrogate"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_step_gradients_match_reference_through_time(kernel_backend, scheme, fuse, loss):
    """BPTT over explicit step calls == the reference's gradients (input, initial membrane, learnables), with the
    surrogate in torch or fused into the kernel, from a uniform loss (``spk.sum()``: every step's cotangent is
    one scalar) and from dense weights on the spikes and on every step's membrane; on each backend (with the
    native one, step calls run its C loops directly, with the XLA one, through JAX)."""
    T, B, N = 20, 2, 5
    layer = IzhikevichSoma(resistance=10.0, scheme=scheme, learnable=("recovery_timescale", "threshold", "resistance"),
                           units=(N,), fuse_surrogate=fuse).double()
    cur = _drive((T, B, N), scale=3.0).requires_grad_()
    mem0 = (0.3 * torch.rand(B, N, dtype=torch.float64)).requires_grad_()
    mem, spikes, mems = mem0, [], []
    for cur_t in cur.unbind(0):
        spk, mem = layer(cur_t, mem)
        spikes.append(spk)
        mems.append(mem)
    spk, mem = torch.stack(spikes), torch.stack(mems)
    params = {k: v.detach().clone().requires_grad_() for k, v in _layer_params(layer).items()}
    cur_ref, mem0_ref = cur.detach().clone().requires_grad_(), mem0.detach().clone().requires_grad_()
    v_r, v_pk = params["potential_rest"], params["threshold"]
    v0 = v_r + mem0_ref * (v_pk - v_r)
    spike_grad = exact_surrogate("atan", 2.0) if fuse else None  # the layer's default, fused: exact in float64
    spk_ref, _, v_ref, _ = reference_run(cur_ref, v0, params["recovery_sensitivity"] * v0, params, scheme=scheme,
                                         spike_grad=spike_grad)
    mem_ref = (v_ref - v_r) / (v_pk - v_r)
    assert torch.equal(spk, spk_ref) and 0 < spk.sum() < spk.numel() / 2
    w_spk, w_mem = (torch.randn_like(spk), torch.randn_like(mem)) if loss != "spike_sum" else (1.0, 0.0)
    for s, m in ((spk, mem), (spk_ref, mem_ref)):
        ((s * w_spk).sum() + (m * w_mem).sum()).backward()
    assert_close(cur.grad, cur_ref.grad, rtol=1e-9, atol=1e-9)
    assert_close(mem0.grad, mem0_ref.grad, rtol=1e-9, atol=1e-9)
    for name in ("recovery_timescale", "threshold", "resistance"):
        assert_close(getattr(layer, name).grad, params[name].grad, rtol=1e-9, atol=1e-9, msg=name)


def test_gradcheck_in_smooth_region():
    """float64 gradcheck of the input and the initial membrane where no spike occurs."""
    layer = IzhikevichSoma(sequence=True, units=(3,)).double()
    cur = (0.5 * torch.rand(5, 2, 3, dtype=torch.float64)).requires_grad_()
    mem0 = (0.1 * torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    spk, _ = layer(cur, mem0)
    assert spk.sum() == 0
    assert torch.autograd.gradcheck(lambda c, m: layer(c, m)[1], (cur, mem0))


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_paper_classes_through_module_match_spec_counts(name):
    layer = IzhikevichSoma(preset(name), sequence=True).double()
    spk, _ = layer(torch.full((1000, 1, 1), 100.0, dtype=torch.float64))
    assert int(spk.sum()) == SPEC_COUNTS[name]


def test_paper_classes_float32_within_tolerance():
    for name, count in SPEC_COUNTS.items():
        spk, _ = IzhikevichSoma(preset(name), sequence=True)(torch.full((1000, 1, 1), 100.0))
        assert abs(int(spk.sum()) - count) <= 2, name


def test_spec_worked_example_membrane_in_normalized_units():
    layer = IzhikevichSoma().double()
    mem, mems, spikes = None, [], []
    for _ in range(5):
        spk, mem = layer(torch.full((1, 1), 100.0, dtype=torch.float64), mem)
        mems.append(float(mem)), spikes.append(float(spk))
    expected_v = [-58.0, -50.44, -37.900256, -7.03004, -65.0]
    assert mems == pytest.approx([(v + 65.0) / 95.0 for v in expected_v], abs=1e-7)
    assert spikes == [0, 0, 0, 0, 1]
    assert float(layer.recovery) == pytest.approx(-10.579602, abs=1e-6)
    assert float(layer.potential) == -65.0


def test_heterogeneous_config_and_image_units():
    config = IzhikevichSomaConfig(resistance=10.0, recovery_timescale=torch.tensor([0.02, 0.1]).reshape(2, 1, 1))
    layer = IzhikevichSoma(config)
    spk, mem = layer(torch.rand(3, 2, 4, 5))
    assert layer.units == (2, 4, 5) and spk.shape == mem.shape == (3, 2, 4, 5)
    assert torch.equal(layer.recovery_timescale[:, 0, 0], torch.tensor([0.02, 0.1]))


def test_retained_graph_backward_twice_accumulates_identical_gradients():
    """The eager backward reuses the forward's JAX arrays once; a ``retain_graph`` rerun imports the
    saved tensors again and must give the same gradients (so they accumulate to exactly twice)."""
    layer = IzhikevichSoma(resistance=10.0, sequence=True, learnable=("threshold",))
    x = _drive((30, 3, 5), scale=3.0).requires_grad_(True)
    spk, mem = layer(x)
    loss = spk.sum() + (mem ** 2).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone(), layer.threshold.grad.clone()
    loss.backward()
    assert first[0].abs().sum() > 0 and first[1].abs().sum() > 0
    assert torch.equal(x.grad, 2 * first[0]) and torch.equal(layer.threshold.grad, 2 * first[1])


def _chained_sequences(layer, cur, split):
    """Two sequence calls, the second continuing the first's state (gradients reach the final ``u``)."""
    spk, mem = layer(cur[:split])
    spk2, mem2 = layer(cur[split:], mem[-1])
    return torch.cat([spk, spk2]), torch.cat([mem, mem2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch_surrogate"])
def test_checkpoint_recovery_is_bit_identical_and_keeps_fewer_traces(dtype, scheme, fused):
    """``checkpoint_recovery=True`` recomputes ``u`` in the backward from every ⌈√T⌉-th step: spikes, mem,
    the carried state and every gradient (input, initial state through a chained call, all parameters)
    are bit-identical, the retain_graph rerun too, and the graph holds fewer ``[T, B, N]`` tensors."""
    T, B, N = 47, 3, 6  # 47 = 7·7 − 2: the last block is short
    cur = _drive((T, B, N), dtype=dtype, scale=3.0)
    results = []
    for checkpoint in (False, True):
        layer = IzhikevichSoma(resistance=10.0, scheme=scheme, sequence=True, learnable=PARAM_NAMES,
                               checkpoint_recovery=checkpoint, fuse_surrogate=fused).to(dtype)
        x = cur.clone().requires_grad_(True)
        saved = layer(x[:30])[1].grad_fn.saved_tensors  # mem comes straight from the kernel's autograd node
        full_traces = sum(t.shape == (30, B, N) for t in saved)
        layer.reset()
        spk, mem = _chained_sequences(layer, x, 30)
        w = torch.randn(spk.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        loss = (spk * w).sum() + (mem * w.flip(0)).sum() + layer.recovery.sum()
        loss.backward(retain_graph=True)
        grads = [x.grad.clone()] + [getattr(layer, n).grad.clone() for n in PARAM_NAMES]
        loss.backward()
        twice = [x.grad] + [getattr(layer, n).grad for n in PARAM_NAMES]
        results.append((spk, mem, layer.potential, layer.recovery, grads, twice, full_traces))
    (spk_a, mem_a, v_a, u_a, g_a, g2_a, traces_a), (spk_b, mem_b, v_b, u_b, g_b, g2_b, traces_b) = results
    assert spk_a.sum() > 0
    for a, b in ((spk_a, spk_b), (mem_a, mem_b), (v_a, v_b), (u_a, u_b)):
        assert torch.equal(a.detach(), b.detach())
    for name, a, b, a2, b2 in zip(["cur"] + list(PARAM_NAMES), g_a, g_b, g2_a, g2_b):
        assert a.abs().sum() > 0 or name == "resistance", name
        assert torch.equal(a, b), name
        assert torch.equal(a2, b2) and torch.equal(b2, 2 * b), name
    # without checkpoints: current, spikes, v, u; with them, through JAX: current, spikes, v; through the native
    # kernel's direct calls: current (v and u every ⌈√T⌉ steps, the rest recomputed from it)
    assert (traces_a, traces_b) == ((4, 1) if kernel.backend() == "native" else (4, 3))
    assert "checkpoint_recovery=True" in repr(IzhikevichSoma(checkpoint_recovery=True))


def test_checkpoint_recovery_under_torch_compile_matches_eager():
    """The custom op path (torch.compile) carries the checkpoints as an output: same values and gradients."""
    layer = IzhikevichSoma(resistance=10.0, sequence=True, units=(5,), learnable=("threshold",),
                           checkpoint_recovery=True)
    cur = _drive((20, 2, 5), dtype=torch.float32, scale=3.0)
    outs = []
    for run in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        layer.zero_grad()
        x = cur.clone().requires_grad_(True)
        spk, mem = run(x)
        (spk.sum() + mem.pow(2).sum()).backward()
        outs.append((spk.detach(), mem.detach(), x.grad, layer.threshold.grad.clone()))
    assert outs[0][0].sum() > 0
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["step", "padded_sequence"])
def test_checkpoint_recovery_in_step_mode_and_padded_buffers(mode, monkeypatch):
    """Checkpoints also hold for one-step calls (a 2-row buffer, one checkpoint) and for sequences run in
    a padded loop buffer (T = 21 in a 32-row buffer): identical spikes and gradients to the default."""
    from spark_torch.execution import jax_executor

    if mode == "padded_sequence":
        monkeypatch.setattr(jax_executor, "MAX_EXACT_LENGTHS", 0)  # every length that is not a power of two is padded
        monkeypatch.setattr(jax_executor, "exact_lengths", set())
    T, B, N = 21, 2, 4
    cur = _drive((T, B, N), scale=3.0)
    results = []
    for checkpoint in (False, True):
        layer = IzhikevichSoma(resistance=10.0, sequence=mode != "step", learnable=("recovery_update",),
                               checkpoint_recovery=checkpoint)
        x = cur.clone().requires_grad_(True)
        if mode == "step":
            mem, steps = layer.init_leaky(), []
            for x_t in x.unbind(0):
                spk_t, mem = layer(x_t, mem)
                steps.append(spk_t)
            spk = torch.stack(steps)
        else:
            spk, mem = layer(x)
        (spk.sum() + mem.sum()).backward()
        results.append((spk.detach(), x.grad, layer.recovery_update.grad))
    assert results[0][0].sum() > 0
    if mode == "padded_sequence":
        assert jax_executor.buffer_length(T) == 32
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_export_refuses_state_carrying_calls_and_exports_sequences():
    """An exported program cannot carry (v, u) between its calls: step mode, ``init_hidden`` or a ``mem``
    argument are refused with the reason; a sequence call from rest exports and equals eager."""
    x = _drive((30, 2, 4), scale=2.0).float()
    for kwargs, args in (({}, (x[0],)), ({"sequence": True, "init_hidden": True}, (x,)),
                         ({"sequence": True}, (x, torch.zeros(2, 4)))):
        layer = IzhikevichSoma(units=(4,), resistance=10.0, **kwargs)
        with pytest.raises(RuntimeError, match=r"torch\.export cannot carry .*sequence=True"):
            torch.export.export(layer, args)
    layer = IzhikevichSoma(units=(4,), resistance=10.0, sequence=True)
    program = torch.export.export(layer, (x,)).module()
    for _ in range(2):  # a pure function of its input: the same every call
        for got, want in zip(program(x), layer(x)):
            assert torch.equal(got, want)
    assert layer(x)[0].sum() > 0


def test_deleted_layers_release_their_parameters_on_the_jax_side(monkeypatch):
    import gc

    import jax

    from spark_torch.execution import route

    monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)  # the executor that keeps views
    units = (300_000,)
    count = lambda: sum(a.shape == units for a in jax.live_arrays())  # noqa: E731
    before = count()
    layers = [IzhikevichSoma(units=units, resistance=10.0) for _ in range(3)]
    for layer in layers:
        layer(torch.ones(1, *units))
    assert count() >= before + 3 * 7  # each layer's seven parameter views are cached while it lives
    # snnTorch keeps every neuron in a class-level list (for its reset utilities): forget ours, as
    # snn.SpikingNeuron.init() would forget all
    snn.SpikingNeuron.instances[:] = [n for n in snn.SpikingNeuron.instances if all(n is not l for l in layers)]
    del layers, layer
    gc.collect()
    assert count() == before


# ------------------------------------------------------------------------------------------------ torch.compile(dynamic=True)

def _compiled_equals_eager(make, calls, **compile_kwargs):
    """Each call of the compiled layer equals the same call of an eager twin (outputs and input gradients)."""
    torch._dynamo.reset()  # the recompile budget of IzhikevichSoma.forward starts empty
    compiled, eager = make(), make()
    run = torch.compile(compiled, fullgraph=True, backend="aot_eager", **compile_kwargs)
    for x in calls:
        outs = []
        for layer in (run, eager):
            xx = x.clone().requires_grad_()
            spk, mem = layer(xx)
            (spk.sum() + mem.sum()).backward()
            outs.append((spk.detach(), mem.detach(), xx.grad))
        for got, want in zip(*outs):
            assert torch.equal(got, want)


def test_compile_dynamic_takes_more_batch_sizes_than_the_recompile_limit():
    limit = torch._dynamo.config.recompile_limit
    _compiled_equals_eager(lambda: IzhikevichSoma(units=(4,), resistance=10.0),
                           [_drive((b, 4), scale=3.0).float() for b in range(2, limit + 4)], dynamic=True)


def test_compile_dynamic_with_checkpoint_recovery_takes_more_lengths_than_the_recompile_limit():
    limit = torch._dynamo.config.recompile_limit
    _compiled_equals_eager(lambda: IzhikevichSoma(units=(4,), resistance=10.0, sequence=True,
                                                  checkpoint_recovery=True),
                           [_drive((t, 2, 4), scale=3.0).float() for t in range(2, limit + 4)], dynamic=True)


def test_separately_compiled_layers_with_different_dt_do_not_share_a_recompile_budget():
    torch._dynamo.reset()
    x = _drive((3, 4), scale=3.0).float()
    for dt in [0.1 * k for k in range(1, torch._dynamo.config.recompile_limit + 3)]:
        layer = IzhikevichSoma(units=(4,), resistance=10.0, dt=dt)
        twin = IzhikevichSoma(units=(4,), resistance=10.0, dt=dt)
        got = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
        for a, b in zip(got, twin(x)):
            assert torch.equal(a, b), dt


def test_reset_state_survives_in_place_edits_and_parameter_updates():
    """``reset()`` reuses the rest state it computed before while it is valid: an in-place edit of the
    state it installed, or an optimizer step on ``v_r`` / ``b``, makes the next ``reset()`` compute it anew."""
    layer = IzhikevichSoma(units=(3,), resistance=10.0, learnable=("potential_rest", "recovery_sensitivity"))
    layer(torch.ones(2, 3))
    layer.reset()
    assert torch.equal(layer.potential, torch.full((2, 3), -65.0))
    layer.potential.add_(5.0)  # a user's in-place edit of the installed state
    layer.reset()
    assert torch.equal(layer.potential, torch.full((2, 3), -65.0))
    assert torch.equal(layer.recovery, torch.full((2, 3), -13.0))
    with torch.no_grad():
        layer.recovery_sensitivity.fill_(0.25)  # as an optimizer step would (in place, version bumped)
        layer.potential_rest.fill_(-70.0)
    layer.reset()
    assert torch.equal(layer.potential, torch.full((2, 3), -70.0))
    assert torch.equal(layer.recovery, torch.full((2, 3), -17.5))


# ---- regressions: rebuild dtype, the TBPTT assignment idiom, converted state, meta/fake tensors ----------

def test_rebuild_in_another_dtype_converts_every_field_and_keeps_the_parameters():
    layer = IzhikevichSoma(resistance=10.0, units=(4,), learnable=("recovery_timescale", "threshold"))
    parameter = layer.recovery_timescale
    layer.build((4,), dtype=torch.float64)
    assert layer.recovery_timescale is parameter  # an optimizer holding it keeps training the layer's field
    assert {t.dtype for n, t in layer.named_parameters()} | {
        getattr(layer, n).dtype for n in IzhikevichSomaConfig.MODEL_FIELDS} == {torch.float64}
    buffers = [name for name, _ in layer.named_buffers()]
    assert len(buffers) == len(set(buffers)) and "threshold" not in buffers and "recovery_timescale" not in buffers
    x = torch.full((2, 4), 1.5, dtype=torch.float64)
    for _ in range(40):
        spikes, mem = layer(x)
    reference = IzhikevichSoma(resistance=10.0)
    reference.build((4,), dtype=torch.float64)
    for _ in range(40):
        spikes_ref, mem_ref = reference(x)
    assert torch.equal(mem.detach(), mem_ref)


def test_assigning_the_layers_own_detached_mem_continues_like_detach_hidden():
    def spike_steps(cut):
        layer = IzhikevichSoma(resistance=10.0, units=(1,))
        steps = []
        for t in range(60):
            spikes, _ = layer(torch.ones(1, 1))
            if spikes.item():
                steps.append(t)
            if t % 5 == 4:
                cut(layer)
        return steps

    def assign(layer):
        layer.mem = layer.mem.detach()

    expected = spike_steps(lambda layer: layer.detach_hidden())
    assert expected == [4, 10, 18, 32, 54]
    assert spike_steps(assign) == expected


def test_a_mem_converted_with_the_layer_continues_its_recovery():
    x = torch.ones(1, 1)
    layer, reference = IzhikevichSoma(resistance=10.0, units=(1,)), IzhikevichSoma(resistance=10.0, units=(1,))
    mem, mem_ref = layer.init_leaky(), reference.init_leaky()
    for _ in range(10):
        _, mem = layer(x, mem)
        _, mem_ref = reference(x, mem_ref)
    layer, mem = layer.double(), mem.double()  # the user converts the layer and the mem they hold
    reference = reference.double()  # the layer's own state, converted with it: continues exactly
    _, mem = layer(x.double(), mem)
    _, mem_ref = reference(x.double())
    assert torch.equal(layer.recovery, reference.recovery)
    assert torch.equal(mem, mem_ref)
    layer(x.double(), torch.zeros_like(mem))  # a fresh zero mem still restarts from the rest state
    fresh = IzhikevichSoma(resistance=10.0, units=(1,)).double()
    fresh(x.double(), torch.zeros_like(mem))
    assert torch.equal(layer.recovery, fresh.recovery)


@pytest.mark.parametrize("sequence", [False, True])
def test_meta_tensors_give_outputs_and_gradients_of_the_right_shapes(sequence):
    layer = IzhikevichSoma(resistance=10.0, sequence=sequence)
    shape = (5, 2, 4) if sequence else (2, 4)
    x = torch.ones(shape, device="meta", requires_grad=True)
    spikes, mem = layer(x)
    assert spikes.device.type == "meta" and spikes.shape == shape and mem.shape == shape
    assert layer.threshold.device.type == "meta" and layer.units == (4,)
    (spikes.sum() + mem.sum()).backward()
    assert x.grad.shape == shape and x.grad.device.type == "meta"
    spikes, mem = layer(x, mem[-1] if sequence else mem)
    assert spikes.shape == shape


def test_fake_tensor_mode_infers_shapes_without_running_the_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

    layer = IzhikevichSoma(resistance=10.0, units=(4,), sequence=True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        spikes, mem = layer(torch.ones(5, 2, 4))
    assert is_fake(spikes) and spikes.shape == (5, 2, 4) and mem.shape == (5, 2, 4)
