"""spark_torch.bridge and the custom ops in spark_torch.ops: zero-copy, values, gradients, torch integration.

Tests of the ops take the ``kernel_backend`` fixture (tests/conftest.py): each runs on the XLA loop and on
the native kernel (where it builds)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import snntorch.surrogate
import torch

from spark_torch import bridge, kernel
from spark_torch import execution
from spark_torch.execution import route

sys.path.insert(0, str(Path(__file__).parent))
import reference_numpy as ref_np  # noqa: E402
from reference_torch import PARAM_NAMES, reference_run  # noqa: E402

SCAN = getattr(torch.ops, execution.OP_NAMESPACE).izhikevich_scan
SCAN_BWD = getattr(torch.ops, execution.OP_NAMESPACE).izhikevich_scan_backward
DT = torch.tensor(1.0, dtype=torch.float64)  # the ops take dt (ms) as a 0-d CPU tensor
SCHEMES = ("euler", "izhikevich2003")


@pytest.fixture(autouse=True)
def _clean_bridge_state():
    bridge.reset_copy_counts()
    yield
    bridge.warn_on_copy(False)
    bridge.reset_copy_counts()


def make_inputs(T=25, B=3, dtype=torch.float64, seed=0, low=0.0, high=150.0, requires_grad=False):
    """Random current [T, B, 7], a random state near rest, the seven Fig. 2 classes as per-neuron params
    (plus a per-neuron threshold and resistance so every parameter is heterogeneous)."""
    g = torch.Generator().manual_seed(seed)
    n = len(ref_np.FIG2_CLASSES)
    current = low + (high - low) * torch.rand(T, B, n, generator=g, dtype=dtype)
    v0 = -70.0 + 10.0 * torch.rand(B, n, generator=g, dtype=dtype)
    u0 = -14.0 + 2.0 * torch.rand(B, n, generator=g, dtype=dtype)
    values = ref_np.fig2_params()
    values["threshold"] = np.linspace(25.0, 35.0, n)
    values["resistance"] = np.linspace(0.08, 0.12, n)
    values["potential_rest"] = np.linspace(-66.0, -64.0, n)
    # clone(): torch's allocator (64-byte aligned), not NumPy's memory, so the bridge can share it
    params = {k: torch.as_tensor(np.broadcast_to(values[k], (n,)).copy(), dtype=dtype).clone() for k in PARAM_NAMES}
    tensors = [current, v0, u0, *params.values()]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return current, v0, u0, params


def run_op(current, v0, u0, params, dt=1.0, scheme="euler"):
    """The op's outputs: spikes, x, v, u, mem."""
    return SCAN(current, v0, u0, [params[k] for k in PARAM_NAMES], torch.tensor(dt, dtype=torch.float64), scheme, "", 0.0, False)


def normalized(v, params):
    """snnTorch's membrane units, as the op computes mem: (v − v_r) / (v_pk − v_r)."""
    return (v - params["potential_rest"]) / (params["threshold"] - params["potential_rest"])


# ---- (a) the bridge: zero-copy where possible, explicit copies otherwise, no downcast -------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_torch_to_jax_is_zero_copy(dtype):
    t = torch.arange(48, dtype=dtype).reshape(4, 12)
    assert bridge.shares_memory_layout(t)
    a = bridge.to_jax(t)
    assert a.unsafe_buffer_pointer() == t.data_ptr()
    assert a.dtype.name == str(dtype).removeprefix("torch.")
    assert not bridge.copy_counts


def test_jax_to_torch_is_zero_copy():
    a = jnp.arange(10.0) * 2.0
    t = bridge.to_torch(a)
    assert t.data_ptr() == a.unsafe_buffer_pointer()
    torch.testing.assert_close(t.cpu(), torch.arange(10.0) * 2.0)  # on JAX's default device (a GPU if any)


def test_misaligned_view_is_copied_explicitly():
    t = torch.arange(17, dtype=torch.float32)[1:]
    assert t.is_contiguous() and t.data_ptr() % bridge.ALIGNMENT_BYTES != 0
    a = bridge.to_jax(t, "cur")
    assert a.unsafe_buffer_pointer() != t.data_ptr()
    assert bridge.copy_counts == {"misaligned": 1}
    np.testing.assert_array_equal(np.asarray(a), t.numpy())


@pytest.mark.parametrize("make", [lambda: torch.ones(3).expand(4, 3), lambda: torch.arange(12.0).reshape(3, 4).t(),
                                  lambda: torch.arange(24.0).reshape(4, 6)[:, ::2]],
                         ids=["stride0", "transposed", "gapped"])
def test_non_contiguous_is_copied_explicitly(make):
    t = make()
    a = bridge.to_jax(t)
    assert bridge.copy_counts == {"non-contiguous": 1}
    np.testing.assert_array_equal(np.asarray(a), t.numpy())


def test_warn_on_copy_emits_user_warning():
    bridge.warn_on_copy(True)
    with pytest.warns(UserWarning, match=r"copying `g`.*non-contiguous"):
        bridge.to_jax(torch.ones(3).expand(4, 3), "g")
    with pytest.warns(UserWarning, match="misaligned"):
        bridge.to_jax(torch.zeros(17)[1:])
    bridge.warn_on_copy(False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bridge.to_jax(torch.zeros(17)[1:])  # counted, not warned
    assert bridge.copy_counts["misaligned"] == 2


def test_float64_outside_precision_scope_raises_instead_of_downcasting():
    assert jax.config.jax_enable_x64 is False
    with pytest.raises(TypeError, match=r"`v0` has dtype torch.float64.*float32"):
        bridge.to_jax(torch.zeros(8, dtype=torch.float64), "v0")
    with kernel.precision_scope(np.float64):
        assert bridge.to_jax(torch.zeros(8, dtype=torch.float64)).dtype == jnp.float64


def test_float64_op_is_float64_and_matches_numpy(kernel_backend):
    current, v0, u0, params = make_inputs(T=40)  # short: the spike/reset map amplifies 1-ulp FMA differences
    spikes, x, v, u, mem, _ = run_op(current, v0, u0, params)
    assert all(o.dtype == torch.float64 for o in (spikes, x, v, u))
    assert jax.config.jax_enable_x64 is False
    r = ref_np.simulate(current.numpy(), {k: p.numpy() for k, p in params.items()}, v0.numpy(), u0.numpy())
    np.testing.assert_array_equal(spikes.numpy(), r.spikes)
    assert r.spikes.any()
    np.testing.assert_allclose(v.numpy(), r.v, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(u.numpy(), r.u, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(x.numpy(), (r.v_star - params["threshold"].numpy())
                               / (params["threshold"] - params["potential_rest"]).numpy(), rtol=1e-12, atol=1e-12)


def test_op_hot_path_makes_no_copies(kernel_backend):
    current, v0, u0, params = make_inputs(requires_grad=True)
    spikes, x, v, u, mem, _ = run_op(current, v0, u0, params)
    w = torch.randn(4, *x.shape, dtype=x.dtype)
    ((w[0] * x).sum() + (w[1] * v).sum() + (w[2] * u).sum() + (w[3] * mem).sum()).backward()
    assert not bridge.copy_counts, dict(bridge.copy_counts)


# ---- (b) op outputs == the references ------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_outputs_match_references(kernel_backend, scheme, dtype):
    current, v0, u0, params = make_inputs(T=30, dtype=dtype)
    spikes, x, v, u, mem, _ = run_op(current, v0, u0, params, 1.0, scheme)
    assert spikes.shape == x.shape == v.shape == u.shape == mem.shape == current.shape
    assert all(o.dtype == dtype for o in (spikes, x, v, u, mem))
    # XLA may divide as a multiplication by the reciprocal: within one rounding of torch's division
    torch.testing.assert_close(mem, normalized(v, params), rtol=2 * torch.finfo(dtype).eps, atol=0)
    r_spk, r_x, r_v, r_u = reference_run(current, v0, u0, params, 1.0, scheme)
    # float32: XLA's FMA contraction vs torch's separate rounding, amplified near threshold by the quadratic
    tol = dict(rtol=1e-11, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-2)
    assert 0 < spikes.sum() < spikes.numel() / 2
    torch.testing.assert_close(spikes, r_spk, rtol=0, atol=0)
    torch.testing.assert_close(x, r_x, **tol)
    torch.testing.assert_close(v, r_v, **tol)
    torch.testing.assert_close(u, r_u, **tol)
    npy = ref_np.simulate(current.numpy(), {k: p.numpy() for k, p in params.items()}, v0.numpy(), u0.numpy(),
                          scheme=scheme, dtype=current.numpy().dtype)
    np.testing.assert_array_equal(spikes.numpy().astype(bool), npy.spikes)
    np.testing.assert_allclose(v.numpy(), npy.v, **tol)
    np.testing.assert_allclose(u.numpy(), npy.u, **tol)


def test_op_worked_example_float32(kernel_backend):
    current = torch.full((5, 1, 1), 100.0)
    params = {k: torch.tensor([v], dtype=torch.float32) for k, v in ref_np.DEFAULTS.items()}
    spikes, x, v, u, mem, _ = run_op(current, torch.full((1, 1), -65.0), torch.full((1, 1), -13.0), params)
    torch.testing.assert_close(spikes.flatten(), torch.tensor([0.0, 0, 0, 0, 1]))
    torch.testing.assert_close(v.flatten(), torch.tensor([-58.0, -50.44, -37.900256, -7.03004, -65.0]), rtol=0, atol=1e-4)
    torch.testing.assert_close(u.flatten(), torch.tensor([-13.0, -12.972, -12.91432, -12.807635, -10.579602]),
                               rtol=0, atol=1e-4)


# ---- (c) gradients == reference_torch; gradcheck in a smooth region -----------------------------

def _weighted_loss(w, spk, x, v, u, mem):
    return (w[0] * spk).sum() + (w[1] * x).sum() + (w[2] * v).sum() + (w[3] * u).sum() + (w[4] * mem).sum()


def _op_with_surrogate(spike_grad):
    """What the module does: the kernel's hard spike, with the gradient of spike_grad(x)."""
    def run(current, v0, u0, params, dt, scheme):
        spikes, x, v, u, mem, _ = run_op(current, v0, u0, params, dt, scheme)
        sg = spike_grad(x)
        return spikes + (sg - sg.detach()), x, v, u, mem
    return run


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("spike_grad", [snntorch.surrogate.atan(alpha=2.0), snntorch.surrogate.fast_sigmoid(slope=5.0)],
                         ids=["atan", "fast_sigmoid"])
def test_op_gradients_match_reference_torch(kernel_backend, scheme, spike_grad):
    current, v0, u0, params = make_inputs(T=25, requires_grad=True)
    leaves = [current, v0, u0, *params.values()]
    w = torch.randn(5, *current.shape, dtype=current.dtype, generator=torch.Generator().manual_seed(3))
    dt = 1.0 if scheme == "euler" else 0.5

    out = _op_with_surrogate(spike_grad)(current, v0, u0, params, dt, scheme)
    assert 0 < out[0].sum() < out[0].numel() / 2
    got = torch.autograd.grad(_weighted_loss(w, *out), leaves)
    out_ref = reference_run(current, v0, u0, params, dt, scheme, spike_grad=spike_grad)
    out_ref = (*out_ref, normalized(out_ref[2], params))
    torch.testing.assert_close(out[0], out_ref[0], rtol=0, atol=0)
    want = torch.autograd.grad(_weighted_loss(w, *out_ref), leaves)

    for name, g, e in zip(["current", "v0", "u0", *PARAM_NAMES], got, want):
        assert g.shape == e.shape and g.dtype == torch.float64, name
        assert e.abs().max() > 0, name
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("used", ["x", "v", "u", "mem"])
def test_op_gradient_from_a_single_output(kernel_backend, used):
    """Unused outputs send no gradient (None cotangents); the result still equals the reference."""
    current, v0, u0, params = make_inputs(T=15, requires_grad=True)
    leaves = [current, v0, u0, *params.values()]
    k = ["x", "v", "u", "mem"].index(used) + 1
    opts = dict(allow_unused=True, materialize_grads=True)  # e.g. u does not depend on the threshold
    g = torch.autograd.grad(run_op(current, v0, u0, params)[k].sum(), leaves, **opts)
    ref = reference_run(current, v0, u0, params)
    e = torch.autograd.grad((*ref, normalized(ref[2], params))[k].sum(), leaves, **opts)
    for a, b in zip(g, e):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradcheck_in_smooth_region(kernel_backend, scheme):
    current, v0, u0, params = make_inputs(T=5, B=2, low=0.0, high=30.0)
    v0, u0 = torch.full_like(v0, -65.0), torch.full_like(u0, -13.0)
    inputs = [t.clone().requires_grad_() for t in (current, v0, u0, *params.values())]

    def fn(current, v0, u0, *p):
        _, x, v, u, mem, _ = SCAN(current, v0, u0, list(p), DT, scheme, "", 0.0, False)
        return x, v, u, mem

    spikes = SCAN(*inputs[:3], inputs[3:], DT, scheme, "", 0.0, False)[0]
    assert spikes.sum() == 0
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---- (d) opcheck ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(kernel_backend, dtype):
    current, v0, u0, params = make_inputs(T=6, B=2, dtype=dtype, requires_grad=True)
    plist = [params[k] for k in PARAM_NAMES]
    torch.library.opcheck(SCAN, (current, v0, u0, plist, DT, "izhikevich2003", "", 0.0, False))
    torch.library.opcheck(SCAN, (current, v0, u0, plist, DT, "euler", "fast_sigmoid", 25.0, False))
    torch.library.opcheck(SCAN, (current, v0, u0, plist, DT, "euler", "fast_sigmoid", 25.0, True))


def test_opcheck_backward(kernel_backend):
    current, v0, u0, params = make_inputs(T=6, B=2)
    spikes, x, v, u, mem, _ = run_op(current, v0, u0, params)
    g = torch.randn(2, *x.shape, dtype=x.dtype)
    plist = [params[k] for k in PARAM_NAMES]
    needs = [True, False, True, True, False, True, False, True, False, True]
    torch.library.opcheck(SCAN_BWD, ([current, v0, u0, *plist, spikes, v, u], g[0], g[1], None, None, None, DT,
                                     "euler", "", 0.0, False, needs))


# ---- (e) torch.compile -------------------------------------------------------------------------

def _compiled_target(current, v0, u0, *p):
    spikes, x, v, u, mem, _ = SCAN(current, v0, u0, list(p), DT, "euler", "", 0.0, False)
    return spikes, (x * 0.5).sum() + (v ** 2).mean() - u.sum() + (mem ** 2).sum()


# aot_eager runs Dynamo (fullgraph) and AOTAutograd over the op's fake impls and registered backward,
# which is where a custom op can break. The default (inductor) backend is exercised on the module in
# tests/test_snntorch_compat.py::test_compile_fullgraph_matches_eager_with_no_graph_breaks.
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_torch_compile_fullgraph_matches_eager(kernel_backend, backend):
    current, v0, u0, params = make_inputs(T=12, B=2, dtype=torch.float32, requires_grad=True)
    leaves = [current, v0, u0, *params.values()]
    spikes, loss = _compiled_target(*leaves)
    eager = torch.autograd.grad(loss, leaves)
    explained = torch._dynamo.explain(_compiled_target)(*leaves)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(_compiled_target, fullgraph=True, backend=backend)
    c_spikes, c_loss = compiled(*leaves)
    torch.testing.assert_close(c_spikes, spikes, rtol=0, atol=0)
    torch.testing.assert_close(c_loss, loss)
    for g, e in zip(torch.autograd.grad(c_loss, leaves), eager):
        torch.testing.assert_close(g, e)


# ---- (f) in-place edits between forward and backward ---------------------------------------------

@pytest.mark.parametrize("which", ["current", "v0", "recovery_sensitivity"])
def test_inplace_edit_before_backward_raises_like_native_torch(kernel_backend, which):
    current, v0, u0, params = make_inputs(T=8, requires_grad=True)

    def attempt(runner):
        c, v, u = current * 1.0, v0 * 1.0, u0 * 1.0  # non-leaf copies, so in-place edits are legal
        p = {k: t * 1.0 for k, t in params.items()}
        out = runner(c, v, u, p)
        {"current": c, "v0": v, "recovery_sensitivity": p["recovery_sensitivity"]}[which].add_(1.0)
        (out[1].sum() + out[2].sum() + out[3].sum()).backward()

    # Native torch refuses too (for `current` its message is about the unbind views of the loop).
    with pytest.raises(RuntimeError, match="inplace"):
        attempt(reference_run)
    with pytest.raises(RuntimeError, match="one of the variables needed for gradient computation has been "
                                          "modified by an inplace operation"):
        attempt(run_op)


# ---- (g) no recompilation per call -------------------------------------------------------------

def test_no_recompilation_per_call(kernel_backend):
    def fwd_bwd(seed, loss_kind):
        current, v0, u0, params = make_inputs(T=17, B=2, dtype=torch.float32, seed=seed, requires_grad=True)
        spikes, x, v, u, mem, _ = run_op(current, v0, u0, params)
        loss = (x.sum() + v.sum() + u.sum()) if loss_kind == "sum" else (x * v).mean() + u.mean()
        loss.backward()
        return current.grad

    fwd_bwd(0, "sum")  # warm-up: stride-0 cotangents (copied at the boundary)
    fwd_bwd(0, "mixed")  # and dense ones
    sizes = kernel.simulate_forward._cache_size(), kernel.simulate_backward._cache_size()
    for seed in range(1, 6):
        assert torch.isfinite(fwd_bwd(seed, ("sum", "mixed")[seed % 2])).all()
    assert (kernel.simulate_forward._cache_size(), kernel.simulate_backward._cache_size()) == sizes


def test_empty_sequence_backward(kernel_backend):
    """T = 0 at the op level: no outputs, the state's gradient passes straight through."""
    current, v0, u0, params = make_inputs(T=0, requires_grad=True)
    spikes, x, v, u, mem, _ = run_op(current, v0, u0, params)
    assert v.shape == (0, *v0.shape)
    (v.sum() + v0.sum()).backward()
    torch.testing.assert_close(v0.grad, torch.ones_like(v0))
    torch.testing.assert_close(current.grad, torch.zeros_like(current))


def test_a_compiled_backward_hands_the_xla_loops_cotangents_in_their_eager_form():
    """A compiled backward graph materializes the cotangent of an unused output as zeros and that of ``y.sum()``
    as a full tensor of ones; where the executor's bits depend on the form (the XLA loops compile another
    program), they are passed as eager autograd passes them: ``None`` and a 0-d value. Others pass as they are."""
    from spark_torch.execution import custom_op

    ones, mixed = torch.ones(3, 2, 4), torch.ones(3, 2, 4)
    mixed[1, 0, 2] = 2.0
    with_nan = torch.ones(3, 2, 4)
    with_nan[2, 1, 3] = float("nan")
    assert custom_op._as_eager_passes(torch.zeros(3, 2, 4)) is None
    scalar = custom_op._as_eager_passes(3.0 * ones)
    assert scalar.dim() == 0 and scalar.item() == 3.0
    for kept in (mixed, with_nan, torch.ones(0, 2, 4)):
        assert custom_op._as_eager_passes(kept) is kept
    assert custom_op._as_eager_passes(None) is None
    assert not route.JAX.same_bits_for_any_cotangent_form and route.DIRECT.same_bits_for_any_cotangent_form
