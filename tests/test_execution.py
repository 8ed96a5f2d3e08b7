"""What a step call costs, counted (not timed): kernel executions and tensor crossings between torch and JAX.

An snnTorch loop calls the layer once per time step, so every conversion a call makes is paid T times.
These tests pin the counts of :data:`spark_torch.bridge.crossings` for the loop users write
(``spk, mem = layer(x_t, mem)``, then one backward), so that the per-call overhead cannot creep back.
"""

import numpy as np
import pytest
import torch

from spark_torch import IzhikevichSoma, IzhikevichSomaConfig, bridge, kernel
from spark_torch.execution import direct_executor, route
from spark_torch.kernel.native import interface



def _loop(layer, x, loss="sum"):
    """The snnTorch step loop over ``x`` ``[T, B, N]`` from rest, then the backward of the loss."""
    mem, spikes = layer.init_leaky(), []
    for x_t in x.unbind(0):
        spk, mem = layer(x_t, mem)
        spikes.append(spk)
    spk = torch.stack(spikes)
    out = spk.sum() + mem.sum() if loss == "sum" else (spk * torch.linspace(0, 1, spk.shape[-1])).sum()
    forward = dict(bridge.crossings)
    out.backward()
    return forward


@pytest.mark.parametrize("learnable", [(), ("threshold", "recovery_timescale")])
def test_step_loop_runs_one_kernel_per_direction_and_the_fewest_crossings(kernel_backend, learnable):
    T, B, N = 12, 3, 8
    layer = IzhikevichSoma(resistance=10.0, units=(N,), learnable=learnable)
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    _loop(layer, x)  # first loop: the parameters' views are made, the loss's scalar cotangent is kept
    bridge.crossings.clear()
    forward = _loop(layer, x)
    total = bridge.crossings
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert forward["forward"] == T and "backward" not in forward
    assert total["backward"] == T
    if kernel_backend == "native":  # the C loops on torch's memory: nothing crosses to JAX or back
        assert dict(total) == {"forward": T, "backward": T}
        return
    # through JAX: the input crosses, the state the previous step returned does not, except the rest state
    # of the first step (v and u); spikes, v, u and mem come back
    assert forward["to_jax"] == T + 2
    assert forward["to_torch"] == 4 * T
    # backward: nothing crosses in (the spikes' cotangent of spk.sum() is a kept scalar, the state cotangents
    # are the arrays the next step's backward returned); out come the input's and the learnables' gradients
    # per step, and the state's except at the first step (from rest)
    assert total["to_jax"] == forward["to_jax"]
    assert total["to_torch"] - forward["to_torch"] == T * (1 + len(learnable)) + 2 * (T - 1)


def test_dense_cotangents_cross_once_per_step(kernel_backend):
    """A weighted loss gives each step's spikes a cotangent of their own: through JAX, one import per backward
    step; called directly, none."""
    T, B, N = 6, 2, 5
    layer = IzhikevichSoma(resistance=10.0, units=(N,))
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    _loop(layer, x, loss="weighted")
    bridge.crossings.clear()
    forward = _loop(layer, x, loss="weighted")
    assert bridge.crossings["to_jax"] - forward.get("to_jax", 0) == (0 if kernel_backend == "native" else T)
    assert bridge.crossings["backward"] == T


def test_inference_step_runs_one_kernel_call(kernel_backend):
    T, B, N = 5, 2, 4
    layer = IzhikevichSoma(resistance=10.0, units=(N,))
    x = 3.0 * torch.rand(T, B, N)
    with torch.no_grad():
        for _ in range(2):  # the first loop makes the parameters' views
            bridge.crossings.clear()
            mem = layer.init_leaky()
            for x_t in x.unbind(0):
                _, mem = layer(x_t, mem)
    expected = {"forward": T} if kernel_backend == "native" else {"forward": T, "to_jax": T + 2, "to_torch": 4 * T}
    assert dict(bridge.crossings) == expected


def test_large_calls_cross_to_jax_only_without_the_native_kernel(kernel_backend):
    """Calls of every size run the native kernel's C loops directly where it builds (large ones on several
    threads); only the XLA backend crosses to JAX."""
    layer = IzhikevichSoma(resistance=10.0, units=(8,))
    small, large = 3.0 * torch.rand(3, 8), 3.0 * torch.rand(interface.PARALLEL_WORK // 8, 8)
    for cur in (small, large):
        layer.reset()
        bridge.crossings.clear()
        with torch.no_grad():
            layer(cur)
        assert (bridge.crossings["to_jax"] > 0) == (kernel_backend == "xla")


def _step_loop_results(layer, x, mem0, weights):
    """Spikes, membranes and every gradient of a step loop with the given loss weights."""
    mem, spikes, mems = mem0, [], []
    for x_t in x.unbind(0):
        spk, mem = layer(x_t, mem)
        spikes.append(spk)
        mems.append(mem)
    spk, mem = torch.stack(spikes), torch.stack(mems)
    ((spk * weights[0]).sum() + (mem * weights[1]).sum()).backward()
    return [spk, mem, x.grad, mem0.grad], [p.grad for p in layer.parameters()]


def _assert_direct_equals_jax(results: dict, dtype: torch.dtype) -> None:
    """``results[path] = (exact, rounded)`` for the direct and JAX paths: spikes (some, not most, neurons
    fire), membranes, state and the input's and state's gradients bit-identical; the fields' gradients (summed
    over the batch by torch on one path, XLA on the other) equal to rounding."""
    (exact, rounded), (exact_jax, rounded_jax) = results["direct"], results["jax"]
    assert 0 < exact[0].sum() < exact[0].numel() / 2
    for a, b in zip(exact, exact_jax):
        assert torch.equal(a, b)
    for a, b in zip(rounded, rounded_jax):
        torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused_surrogate", "torch_surrogate"])
@pytest.mark.parametrize("scheme", ["euler", "izhikevich2003"])
def test_direct_calls_equal_the_native_kernel_through_jax(dtype, fuse, scheme, monkeypatch):
    """The direct path runs the loops of the native kernel behind jax.ffi: spikes, membranes and the input's
    and initial state's gradients are bit-identical; the per-unit parameters' gradients (summed over the
    batch by torch instead of XLA) agree to rounding. Units (2, 3, 4), a non-contiguous input and dense
    loss weights exercise the layouts."""
    native = pytest.importorskip("spark_torch.kernel.native")
    try:
        native.load()
    except native.Unavailable as error:
        pytest.skip(f"no native kernel here: {error}")
    T, B, units = 15, 3, (2, 3, 4)
    x0 = 3.0 * torch.rand(T, B, *units, dtype=dtype).transpose(-1, -2).contiguous().transpose(-1, -2)
    mem0 = 0.3 * torch.rand(B, *units, dtype=dtype)
    weights = (torch.randn(T, B, *units, dtype=dtype), torch.randn(T, B, *units, dtype=dtype))
    results = {}
    for path in ("direct", "jax"):
        layer = IzhikevichSoma(resistance=10.0, units=units, scheme=scheme, fuse_surrogate=fuse,
                               learnable=("threshold", "recovery_timescale", "resistance")).to(dtype)
        with kernel.use_backend("native"), monkeypatch.context() as patch:
            if path == "jax":
                patch.setattr(route, "executor_for", lambda call, current: route.JAX)
            bridge.crossings.clear()
            results[path] = _step_loop_results(layer, x0.clone().requires_grad_(), mem0.clone().requires_grad_(),
                                                weights)
            assert (bridge.crossings["to_jax"] == 0) == (path == "direct")
    _assert_direct_equals_jax(results, dtype)


def test_sequence_call_from_rest_imports_only_its_input(kernel_backend):
    """A sequence layer starts every call from the same rest state (kept, with its JAX views) and the loss's
    uniform cotangents are kept scalars: through JAX, per forward+backward one import, the input; called
    directly, nothing crosses."""
    T, B, N = 7, 2, 4
    layer = IzhikevichSoma(resistance=10.0, units=(N,), sequence=True)
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    for _ in range(2):
        bridge.crossings.clear()
        spk, mem = layer(x)
        (spk.sum() + mem.sum()).backward()
    through_jax = {"to_jax": 1, "forward": 1, "backward": 1, "to_torch": 4 + 3}
    assert dict(bridge.crossings) == ({"forward": 1, "backward": 1} if kernel_backend == "native" else through_jax)


@pytest.mark.parametrize("fields", ["scalar", "mixed"])
@pytest.mark.parametrize("loss", ["sum", "count", "dense", "state", "spikes"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused_surrogate", "torch_surrogate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", ["euler", "izhikevich2003"])
@pytest.mark.parametrize("checkpoints", [False, True], ids=["raw_trace", "checkpoints"])
def test_direct_sequence_calls_equal_the_native_kernel_through_jax(dtype, fuse, loss, scheme, checkpoints, fields,
                                                                    monkeypatch):
    """As for step calls, for a sequence call from a given membrane, with a uniform loss (one scalar
    cotangent), a loss on spike counts and final membranes (cotangents constant over time), dense weights
    (one cotangent row per step), a loss on the final state (u included) and one on weighted spikes alone.
    The direct executor keeps the unclipped membrane and u every 16 steps (with ``checkpoint_recovery``: v
    and u every ~√T steps) where JAX keeps the v and u traces: the same bits all the same, for both schemes
    and every field's gradient. ``fields="mixed"``: 600 neurons whose first block has the same fields (the
    loops then read each field once) and whose other blocks do not (two units' fields differ)."""
    native = pytest.importorskip("spark_torch.kernel.native")
    try:
        native.load()
    except native.Unavailable as error:
        pytest.skip(f"no native kernel here: {error}")
    T, B, N = (25, 3, 6) if fields == "scalar" else (25, 2, 300)
    overrides = {} if fields == "scalar" else {"recovery_update": np.r_[np.full(N - 2, 8.0), 6.0, 10.0],
                                               "threshold": np.r_[np.full(N - 1, 30.0), 28.0]}
    x0, mem0 = 3.0 * torch.rand(T, B, N, dtype=dtype), 0.3 * torch.rand(B, N, dtype=dtype)
    w = torch.randn(T, B, N, dtype=dtype)
    losses = {"sum": lambda spk, mem: spk.sum() + mem.sum(),
              "count": lambda spk, mem: (spk.sum(0) * w[0]).sum() + (mem.sum(0) * w[1]).sum(),
              "dense": lambda spk, mem: (spk * w).sum() + (mem * w.flip(0)).sum(),
              "state": lambda spk, mem: spk.sum() + (layer.recovery * w[2]).sum() + (layer.potential * w[3]).sum(),
              "spikes": lambda spk, mem: (spk * w).sum()}
    # "spikes": no field learns and the membranes have no cotangent: the reverse loop's lean euler path, which
    # skips u (unless the clip bound it)
    learnable = {"dense": IzhikevichSomaConfig.MODEL_FIELDS, "state": IzhikevichSomaConfig.MODEL_FIELDS,
                 "count": (), "spikes": ()}.get(loss, ("threshold", "recovery_update"))
    monkeypatch.setattr(direct_executor, "RAW_TRACE_WORK", 0)  # this small call keeps the raw trace too
    results = {}
    for path in ("direct", "jax"):
        layer = IzhikevichSoma(resistance=10.0, units=(N,), sequence=True, fuse_surrogate=fuse, scheme=scheme,
                               checkpoint_recovery=checkpoints, learnable=learnable, **overrides).to(dtype)
        x, mem0_ = x0.clone().requires_grad_(), mem0.clone().requires_grad_()
        with kernel.use_backend("native"), monkeypatch.context() as patch:
            if path == "jax":
                patch.setattr(route, "executor_for", lambda call, current: route.JAX)
            bridge.crossings.clear()
            spk, mem = layer(x, mem0_)
            losses[loss](spk, mem).backward()
            assert (bridge.crossings["to_jax"] == 0) == (path == "direct")
        results[path] = ([spk, mem, x.grad, mem0_.grad, layer.recovery], [p.grad for p in layer.parameters()])
    _assert_direct_equals_jax(results, dtype)


@pytest.mark.parametrize("path", ["direct", "jax", "compiled"])
def test_double_backward_is_refused_not_silently_wrong(kernel_backend, path, monkeypatch):
    """A gradient penalty (dm/dx)² needs the second derivative of the kernel, which it does not have: the
    backward through the penalty raises, on every path, instead of returning a wrong number."""
    if path == "direct" and kernel_backend != "native":
        pytest.skip("the direct executor runs the native kernel")
    if path == "jax":
        monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    layer = IzhikevichSoma(resistance=1.0, units=(3,), sequence=True)
    run = torch.compile(layer, fullgraph=True, backend="aot_eager") if path == "compiled" else layer
    w = torch.tensor(0.7, requires_grad=True)
    x = torch.rand(4, 2, 3, requires_grad=True)
    spikes, mem = run(w * x)
    if path == "compiled":  # torch.compile refuses create_graph itself (aot_autograd), with its own clear error
        with pytest.raises(RuntimeError, match="no second derivative|double backward|create_graph=False"):
            (g,) = torch.autograd.grad(mem.sum(), x, create_graph=True)
            (g ** 2).sum().backward()
        return
    (g,) = torch.autograd.grad(mem.sum(), x, create_graph=True)  # first order: fine
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match="no second derivative"):
        (g ** 2).sum().backward()
    assert w.grad is None


def test_gradgradcheck_raises_the_clear_error(kernel_backend):
    layer = IzhikevichSoma(resistance=1.0, units=(2,), sequence=True).double()
    x = torch.rand(3, 1, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.gradgradcheck(lambda c: layer(c)[1], (x,))


def test_backward_releases_the_forward_cache_while_the_outputs_live(kernel_backend, monkeypatch):
    """The JAX arrays a forward keeps for its backward (whole trajectories) are released by the backward, not
    when the outputs die: a training loop that keeps last step's outputs alive must not hold two trajectories
    at the next forward. A second backward (retain_graph=True) recomputes from the saved tensors."""
    monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    layer = IzhikevichSoma(resistance=10.0, units=(4,), sequence=True)
    x = (3.0 * torch.rand(6, 2, 4)).requires_grad_()
    spikes, mem = layer(x)
    node = mem.grad_fn
    assert type(node).__name__ == "KernelFunctionBackward" and node.cache is not None
    mem.sum().backward(retain_graph=True)
    first = x.grad.clone()
    assert node.cache is None
    x.grad = None
    mem.sum().backward()
    assert torch.equal(x.grad, first)


@pytest.mark.parametrize("checkpoints", [False, True], ids=["raw_trace", "checkpoints"])
@pytest.mark.parametrize("scheme", ["euler", "izhikevich2003"])
def test_a_recovery_bounded_by_the_clip_gives_the_same_gradients_directly(scheme, checkpoints, monkeypatch):
    """A strong input (R·I = 1e4 pA·GΩ) makes every neuron spike once early, and d = 2e5 mV/ms drives that
    spike's u' past the clip bound (1e5), where dClip/du' = 0; dt = 1 µs keeps v unclipped afterwards. The
    loss reads the final u only, so every input gradient before the spike flows through that clipped u':
    the direct executor's forward flags the clip and its reverse loop recomputes u rather than taking the
    lean euler path (which would pass u's gradient through). With ``checkpoint_recovery`` (u every 8 of the
    60 steps) each recomputed run decides: the run of the spike takes the full path, the later runs the lean
    one. Input gradients equal JAX's bit for bit."""
    native = pytest.importorskip("spark_torch.kernel.native")
    try:
        native.load()
    except native.Unavailable as error:
        pytest.skip(f"no native kernel here: {error}")
    monkeypatch.setattr(direct_executor, "RAW_TRACE_WORK", 0)
    x0 = 1000.0 + 100.0 * torch.rand(60, 2, 5, generator=torch.Generator().manual_seed(0))
    results = {}
    for path in ("direct", "jax"):
        layer = IzhikevichSoma(resistance=10.0, units=(5,), sequence=True, scheme=scheme, recovery_update=2e5,
                               dt=0.001, checkpoint_recovery=checkpoints)
        x = x0.clone().requires_grad_()
        with kernel.use_backend("native"), monkeypatch.context() as patch:
            if path == "jax":
                patch.setattr(route, "executor_for", lambda call, current: route.JAX)
            spk, mem = layer(x)
            layer.recovery.sum().backward()
        results[path] = [spk, mem, x.grad, layer.recovery]
    assert results["direct"][0].sum(0).eq(1).all()  # one spike per neuron
    assert results["direct"][2].abs().sum() > 0
    for a, b in zip(results["direct"], results["jax"]):
        assert torch.equal(a, b)
