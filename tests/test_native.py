"""The native kernel (spark_torch.kernel.native) against the XLA loop and the NumPy reference; backend selection;
the build, its cache and its fallback.

Numbers: float64 spike rasters are compared exactly, gradients to 1e-9 relative (the native kernel
rounds every operation on its own, the XLA loop may fuse multiply-adds), and within the native
backend, results that take different code paths to the same arithmetic are compared bit for bit.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from spark_torch import IzhikevichSoma, kernel as K
from spark_torch.execution import jax_executor
from spark_torch.kernel import native
from spark_torch.kernel.native import _build

sys.path.insert(0, str(Path(__file__).parent))
import reference_numpy as ref  # noqa: E402
from conftest import KERNEL_BACKENDS  # noqa: E402

FIELDS = K.IzhikevichParams._fields
CLASSES = tuple(ref.FIG2_CLASSES)
ROOT = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif("native" not in KERNEL_BACKENDS, reason="the native kernel does not build here")


def _has_compiler() -> bool:
    try:
        _build.find_compiler()
    except _build.Unavailable:
        return False
    return True


def test_native_kernel_builds_where_a_compiler_exists():
    """A C++ compiler here means the native tests must run, not silently skip."""
    if not _has_compiler():
        pytest.skip("no C++ compiler here")
    library = native.load()
    assert library.path.is_file() and library.path.parent == _build.cache_dir()
    assert "native" in KERNEL_BACKENDS


# ---- the paper's Fig. 2 classes, 1000 ms ---------------------------------------------------------------

def _fig2(dtype, scheme, backend, T=1000):
    current = np.full((T, len(CLASSES)), 100.0)
    params = {**ref.DEFAULTS, **ref.fig2_params()}
    with K.precision_scope(dtype), K.use_backend(backend):
        p = K.IzhikevichParams(*(jnp.asarray(params[f], dtype) for f in FIELDS))
        cur = jnp.asarray(current, dtype)
        traj = K.simulate_forward(cur, K.rest_state(p, cur.shape[1:], dtype), p, np.int32(T), dt=1.0, scheme=scheme)
        traj = K.Trajectory(*(None if a is None else np.asarray(a) for a in traj))
    return traj, ref.simulate(current, ref.fig2_params(), scheme=scheme, dtype=dtype)


@needs_native
def test_fig2_float64_euler_spike_steps_identical_to_xla_and_numpy():
    nat, r = _fig2(np.float64, "euler", "native")
    xla, _ = _fig2(np.float64, "euler", "xla")
    np.testing.assert_array_equal(nat.spikes.sum(0), [ref.FIG2_COUNTS[n] for n in CLASSES])
    np.testing.assert_array_equal(nat.spikes, r.spikes)
    np.testing.assert_array_equal(nat.spikes, xla.spikes)


@needs_native
@pytest.mark.parametrize("scheme", K.SCHEMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fig2_bit_identical_to_numpy_reference(dtype, scheme):
    """No fused multiply-add: every operation rounds as NumPy's, so 1000 ms of both schemes (chaotic for
    FS, TC, RZ, LTS in the paper's scheme) reproduce the reference in the same dtype exactly."""
    nat, r = _fig2(dtype, scheme, "native")
    np.testing.assert_array_equal(nat.spikes, r.spikes)
    np.testing.assert_array_equal(nat.v, r.v)
    np.testing.assert_array_equal(nat.u, r.u)
    np.testing.assert_array_equal(nat.x, ((r.v_star - 30.0) / 95.0).astype(dtype))


@needs_native
def test_fig2_float32_counts_within_two_of_float64_reference():
    nat, _ = _fig2(np.float32, "euler", "native")
    counts = nat.spikes.sum(0)
    np.testing.assert_array_less(np.abs(counts - np.array([ref.FIG2_COUNTS[n] for n in CLASSES])), 3)


# ---- native == XLA: values and gradients -----------------------------------------------------------

def _problem(seed=0, T=40, B=3, dtype=np.float64, drive=(0.0, 30.0), a=(0.02, 0.1), N=5):
    """Heterogeneous parameters in every broadcast form: 0-d (resistance), per-unit [N], full [B, N]."""
    rng = np.random.default_rng(seed)
    with K.precision_scope(dtype):
        p = K.IzhikevichParams(*(jnp.asarray(v, dtype) for v in (
            rng.uniform(-70, -60, N), rng.uniform(-65, -50, N), 1.0, rng.uniform(25, 35, N), rng.uniform(*a, N),
            rng.uniform(0.2, 0.25, N), rng.uniform(2, 8, (B, N)))))
        cur = jnp.asarray(rng.uniform(*drive, (T, B, N)), dtype)
        state = K.IzhikevichState(jnp.asarray(rng.uniform(-70, -60, (B, N)), dtype),
                                  jnp.asarray(rng.uniform(-14, -12, N), dtype))
    return cur, state, p, rng


def _cotangents(kind, shape, rng, checkpointed):
    """(g_x, g_v, g_u, g_spikes, g_mem) for a test case; g_u is the final u's when ``checkpointed``."""
    dense = lambda: rng.normal(size=shape)  # noqa: E731
    row = lambda: rng.normal(size=shape[1:])  # noqa: E731
    g = {"x": (dense(), None, None, None, None), "v,u": (None, dense(), dense(), None, None),
         "mem": (None, None, None, None, dense()), "spikes": (None, None, None, dense(), None),
         "row": (None, row(), None, row(), row()), "scalar": (None, rng.normal(), None, rng.normal(), None),
         "all": (dense(), dense(), dense(), dense(), dense())}[kind]
    if checkpointed:
        g = (g[0], g[1], rng.normal(size=(1, *shape[1:])), *g[3:])
    return tuple(None if a is None else jnp.asarray(a) for a in g)


def _assert_close(got, want, rtol=1e-9, name=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, name
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(initial=0.0), err_msg=name)


def _both_backends(cur, state, p, kind, scheme, surrogate, checkpointed, rng, n_steps=None):
    n = np.int32(cur.shape[0] if n_steps is None else n_steps)
    every = K.recovery_checkpoint_interval(cur.shape[0]) if checkpointed else 0
    fwd = dict(dt=0.5, scheme=scheme, spike_dtype=np.float64, return_x=True, return_mem=True, recovery_every=every)
    cotangents = _cotangents(kind, cur.shape, rng, checkpointed)
    out = {}
    for name, forward, backward in (("native", native.simulate_forward, native.simulate_backward),
                                    ("xla", K.xla_simulate_forward, K.xla_simulate_backward)):
        traj = forward(cur, state, p, n, **fwd)
        grads = backward(cur, state, p, traj._replace(x=None, mem=None), cotangents, n, dt=0.5, scheme=scheme,
                         surrogate=surrogate)
        out[name] = traj, grads
    return out


@needs_native
@pytest.mark.parametrize("scheme", K.SCHEMES)
@pytest.mark.parametrize("kind, surrogate, checkpointed", [
    ("spikes", ("atan", 2.0), False), ("spikes", ("fast_sigmoid", 25.0), False), ("spikes", ("sigmoid", 5.0), False),
    ("x", None, False), ("v,u", None, False), ("mem", None, False), ("row", ("atan", 2.0), False),
    ("scalar", ("fast_sigmoid", 25.0), False), ("all", ("sigmoid", 5.0), False), ("all", ("atan", 2.0), True),
    ("row", ("fast_sigmoid", 25.0), True)])
def test_float64_values_and_gradients_equal_xla(scheme, kind, surrogate, checkpointed):
    """Every output, and the gradients of the input, the initial state and all seven parameters (0-d, per-unit
    and full-shape), from each kind of cotangent (dense, time-constant row, 0-d scalar; through each fused
    surrogate or the torch-side x path; v, u, mem), equal the XLA loop's to 1e-9 relative."""
    cur, state, p, rng = _problem(seed=len(kind) + 7 * checkpointed)
    with K.precision_scope(np.float64):
        out = _both_backends(cur, state, p, kind, scheme, surrogate, checkpointed, rng)
    (t_nat, g_nat), (t_xla, g_xla) = out["native"], out["xla"]
    assert 10 < np.asarray(t_xla.spikes).sum() < t_xla.spikes.size // 2
    np.testing.assert_array_equal(np.asarray(t_nat.spikes), np.asarray(t_xla.spikes))
    for name, a, b in zip(K.Trajectory._fields, t_nat, t_xla):
        assert (a is None) == (b is None), name
        if a is not None:
            _assert_close(a, b, 1e-12, name)
    names = ["current", "v0", "u0", *FIELDS]
    for name, a, b in zip(names, jax.tree_util.tree_leaves(g_nat), jax.tree_util.tree_leaves(g_xla)):
        _assert_close(a, b, 1e-9, name)
        if kind == "all":
            assert np.abs(np.asarray(b)).max() > 0, name  # every gradient is exercised


@needs_native
def test_many_blocks_with_a_period_that_straddles_them_equal_xla():
    """700 neurons (B=7, N=100) run in several blocks of the native loop, and the per-unit parameters'
    period (100) does not divide a block: each block gathers its neurons' values across period boundaries."""
    cur, state, p, rng = _problem(seed=11, T=12, B=7, N=100)
    with K.precision_scope(np.float64):
        out = _both_backends(cur, state, p, "all", "euler", ("atan", 2.0), False, rng)
    (t_nat, g_nat), (t_xla, g_xla) = out["native"], out["xla"]
    assert np.asarray(t_xla.spikes).sum() > 20
    np.testing.assert_array_equal(np.asarray(t_nat.spikes), np.asarray(t_xla.spikes))
    for a, b in zip(jax.tree_util.tree_leaves((t_nat, g_nat)), jax.tree_util.tree_leaves((t_xla, g_xla))):
        _assert_close(a, b, 1e-9)


@needs_native
@pytest.mark.parametrize("scheme", K.SCHEMES)
def test_bounds_equal_xla(scheme):
    """Runaway states, clipped at ±V_LIMIT: v from 1e6-pA pulses, u from an unstable dt·a > 2 (float64)."""
    cur, state, p, rng = _problem(seed=3, drive=(-1e6, 1e6), a=(5.0, 7.0))
    with K.precision_scope(np.float64):
        out = _both_backends(cur, state, p, "all", scheme, ("atan", 2.0), False, rng)
    (t_nat, g_nat), (t_xla, g_xla) = out["native"], out["xla"]
    v_star = np.asarray(t_xla.x) * np.asarray(p.threshold - p.potential_rest) + np.asarray(p.threshold)
    assert np.isclose(np.abs(v_star), K.V_LIMIT, rtol=1e-12).mean() > 0.2  # v* clipped on many steps
    assert (np.abs(np.asarray(t_xla.u)) == K.V_LIMIT).mean() > 0.2
    np.testing.assert_array_equal(np.asarray(t_nat.spikes), np.asarray(t_xla.spikes))
    for a, b in zip(jax.tree_util.tree_leaves((t_nat, g_nat)), jax.tree_util.tree_leaves((t_xla, g_xla))):
        _assert_close(a, b, 1e-9)


@needs_native
def test_param_mask_computes_only_the_requested_gradients():
    cur, state, p, rng = _problem(seed=5)
    mask = (False, True, False, False, True, False, False)
    with K.precision_scope(np.float64):
        n = np.int32(cur.shape[0])
        traj = native.simulate_forward(cur, state, p, n, dt=1.0, scheme="euler", spike_dtype=np.float64)
        g_spikes = jnp.asarray(rng.normal(size=cur.shape))
        args = (cur, state, p, traj, (None, None, None, g_spikes), n)
        kw = dict(dt=1.0, scheme="euler", surrogate=("atan", 2.0))
        masked = native.simulate_backward(*args, param_mask=mask, **kw)
        full = native.simulate_backward(*args, **kw)
    assert [g is not None for g in masked[2]] == list(mask)
    for a, b in zip(jax.tree_util.tree_leaves(masked[:2]), jax.tree_util.tree_leaves(full[:2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(masked[2], full[2]):
        assert a is None or np.array_equal(np.asarray(a), np.asarray(b))


@needs_native
def test_outputs_are_fresh_buffers():
    """No output aliases an input or another output, even when n_steps = 0 leaves the state unchanged."""
    cur, state, p, _ = _problem(seed=6, T=4)
    with K.precision_scope(np.float64):
        traj = native.simulate_forward(cur, state, p, np.int32(0), dt=1.0, scheme="euler", return_mem=True,
                                       trace_state=False)
    np.testing.assert_array_equal(np.asarray(traj.v[0]), np.asarray(state.v))
    pointers = [a.unsafe_buffer_pointer() for a in (*traj[:5], cur, state.v, state.u, *p) if a.size]
    assert len(set(pointers)) == len(pointers)


@needs_native
def test_spike_cotangent_needs_a_surrogate():
    cur, state, p, _ = _problem(seed=8, T=3)
    with K.precision_scope(np.float64):
        traj = native.simulate_forward(cur, state, p, np.int32(3), dt=1.0, scheme="euler")
        with pytest.raises(ValueError, match="a cotangent for the spikes needs a fused `surrogate`"):
            native.simulate_backward(cur, state, p, traj, (None, None, None, jnp.ones(cur.shape)), np.int32(3),
                                     dt=1.0, scheme="euler")
        with pytest.raises(ValueError, match=r"`surrogate` \(='relu'\) must be one of"):
            native.simulate_backward(cur, state, p, traj, (None, None, None, jnp.ones(cur.shape)), np.int32(3),
                                     dt=1.0, scheme="euler", surrogate=("relu", 1.0))


# ---- within the native backend: one arithmetic, bit for bit --------------------------------------------

def _layer(learnable=("threshold", "recovery_update", "resistance"), **kw):
    config = dict(recovery_timescale=np.linspace(0.02, 0.1, 6), potential_reset=np.linspace(-65, -50, 6),
                  recovery_update=np.linspace(2, 8, 6), resistance=10.0)
    return IzhikevichSoma(units=(6,), learnable=learnable, **config, **kw).double()


def _run_and_grad(layer, x):
    x = x.clone().requires_grad_()
    spk, mem = layer(x)
    w = torch.linspace(-1, 1, spk.numel(), dtype=x.dtype).reshape(spk.shape)
    ((w * spk).sum() + (w.flip(0) * mem).sum()).backward()
    return spk.detach(), mem.detach(), x.grad, [p.grad for p in layer.parameters()]


@needs_native
@pytest.mark.parametrize("scheme", K.SCHEMES)
def test_native_sequence_equals_step_calls_and_checkpointing_and_padding_bitwise(scheme, monkeypatch):
    """One sequence call == T one-step calls (spikes, mem, final state); checkpoint_recovery and a padded
    loop buffer (n_steps < T_buf) give bit-identical outputs and gradients."""
    x = 1.5 * torch.rand(11, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with K.use_backend("native"):
        seq = _layer(sequence=True, scheme=scheme)
        base = _run_and_grad(seq, x)
        assert 10 < base[0].sum() < base[0].numel() / 2
        step = _layer(scheme=scheme)
        with torch.no_grad():
            outs = [step(x[t]) for t in range(x.shape[0])]
        torch.testing.assert_close(torch.stack([o[0] for o in outs]), base[0], rtol=0, atol=0)
        torch.testing.assert_close(torch.stack([o[1] for o in outs]), base[1], rtol=0, atol=0)
        final = _layer(sequence=True, scheme=scheme, init_hidden=True)
        with torch.no_grad():
            final(x)
        torch.testing.assert_close((step.potential, step.recovery), (final.potential, final.recovery), rtol=0, atol=0)
        checkpointed = _run_and_grad(_layer(sequence=True, scheme=scheme, checkpoint_recovery=True), x)
        monkeypatch.setattr(jax_executor, "MAX_EXACT_LENGTHS", 0)  # T = 11 now runs in a 16-row buffer
        monkeypatch.setattr(jax_executor, "exact_lengths", set())
        assert jax_executor.buffer_length(11) == 16
        padded = _run_and_grad(_layer(sequence=True, scheme=scheme), x)
    for other in (checkpointed, padded):
        for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(other)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- the JAX-level custom VJP, on both backends ---------------------------------------------------------

def test_jax_grad_through_simulate_matches_torch_layer(kernel_backend):
    """``jax.grad`` through :func:`spark_torch.kernel.simulate` (float64) gives the torch layer's gradients of
    the same loss: spikes through the atan surrogate (straight-through, as the layer's default) and mem."""
    layer = _layer(sequence=True, learnable=FIELDS)
    x = 1.5 * torch.rand(20, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    spk, mem, g_x, g_params = _run_and_grad(layer, x)
    w = np.linspace(-1, 1, spk.numel()).reshape(spk.shape)
    alpha = 2.0

    def loss(current, params):
        rest = K.rest_state(jax.lax.stop_gradient(params), current.shape[1:], jnp.float64)  # the layer's: detached
        traj = K.simulate(current, rest, params, 1.0, "euler")
        smooth = jnp.arctan(jnp.pi / 2 * alpha * traj.x) / jnp.pi  # d/dx: the atan surrogate
        spikes = jax.lax.stop_gradient(traj.spikes.astype(jnp.float64) - smooth) + smooth
        membrane = (traj.v - params.potential_rest) / (params.threshold - params.potential_rest)
        return (w * spikes).sum() + (w[::-1] * membrane).sum()

    with K.precision_scope(np.float64):
        params = K.IzhikevichParams(*(jnp.asarray(getattr(layer, f).detach().numpy()) for f in FIELDS))
        g_cur, g_par = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x.numpy()), params)
        assert jax.config.jax_enable_x64 and K.backend() == kernel_backend
    _assert_close(np.asarray(g_cur), g_x.numpy(), 1e-9, "current")
    by_name = dict(zip((n for n, _ in layer.named_parameters()), g_params))
    for field, g in zip(FIELDS, g_par):
        _assert_close(np.asarray(g), by_name[field].numpy(), 1e-9, field)


# ---- backend selection ----------------------------------------------------------------------------------

def test_backend_selection_api(monkeypatch):
    with K.use_backend("xla") as name:
        assert name == "xla" == K.backend()
        with K.use_backend("auto") as inner:
            assert inner == K.backend() == KERNEL_BACKENDS[0]
        assert K.backend() == "xla"
    with pytest.raises(ValueError, match=r"`name` \(='fast'\) must be one of \('native', 'xla', 'auto'\)"):
        K.set_backend("fast")
    monkeypatch.setattr(K._backend, "_requested", None)  # the environment decides again
    monkeypatch.setattr(K._backend, "_active", None)
    monkeypatch.setenv("SPARK_TORCH_KERNEL", "xla")
    assert K.backend() == "xla"
    assert K._backend.implementation().forward is K.xla_simulate_forward
    monkeypatch.setattr(K._backend, "_active", None)
    monkeypatch.setenv("SPARK_TORCH_KERNEL", "gpu")
    with pytest.raises(ValueError, match=r"\$SPARK_TORCH_KERNEL \(='gpu'\) must be one of"):
        K.backend()


@needs_native
def test_dispatch_runs_the_native_functions():
    with K.use_backend("native"):
        assert K._backend.implementation().forward is native.simulate_forward
        assert K.simulate_forward._cache_size() == native.simulate_forward._cache_size()


@needs_native
def test_arrays_off_the_cpu_run_the_xla_loop(monkeypatch):
    """Where JAX's default device is not the CPU, arrays that are not on the CPU go to the XLA loop."""
    cur, state, p, _ = _problem(seed=9, T=7, dtype=np.float32)
    assert K._backend._on_cpu(cur)
    monkeypatch.setattr(K._backend, "_active", K._backend._native_choice()._replace(cpu_only=False))
    monkeypatch.setattr(K._backend, "_on_cpu", lambda array: False)
    before = K.xla_simulate_forward._cache_size(), native.simulate_forward._cache_size()
    K.simulate_forward(cur, state, p, np.int32(7), dt=1.0, scheme="euler")
    assert (K.xla_simulate_forward._cache_size(), native.simulate_forward._cache_size()) == (before[0] + 1, before[1])


# ---- build, cache, fallback (fresh processes) -----------------------------------------------------------

_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import reference_numpy as ref
    import torch
    from spark_torch import IzhikevichSoma, kernel
    from spark_torch.kernel import native
    current = np.full((300, 7), 100.0)
    layer = IzhikevichSoma(units=(7,), sequence=True, **ref.fig2_params()).double()
    spk, mem = layer(torch.as_tensor(current[:, None]))
    spk2, _ = layer(torch.as_tensor(current[:, None]))  # a second call: no second warning
    result = dict(backend=kernel.backend(), matches=bool((spk[:, 0].numpy() == ref.simulate(current,
                  ref.fig2_params()).spikes).all() and torch.equal(spk, spk2)))
    try:
        library = native.load()
        result.update(path=str(library.path), build_seconds=library.build_seconds, built_here=library.built_here)
    except native.Unavailable as error:
        result.update(unavailable=str(error))
    try:
        kernel.set_backend("native")
    except RuntimeError as error:
        result.update(forced=str(error))
    print(json.dumps(result))
""").format(tests=str(Path(__file__).parent))


def _probe(cache_dir, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("SPARK_TORCH_KERNEL", "CXX")}
    environ.update(SPARK_TORCH_CACHE_DIR=str(cache_dir), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen([sys.executable, "-c", _PROBE], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(process, timeout=900):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def test_without_a_compiler_falls_back_to_xla_with_one_warning(tmp_path):
    result, err = _result(_probe(tmp_path / "cache", CXX="/nonexistent"))
    assert result["backend"] == "xla" and result["matches"]
    assert "$CXX (='/nonexistent') is not an executable compiler" in result["unavailable"]
    assert "native kernel was requested but is unavailable" in result["forced"] and "/nonexistent" in result["forced"]
    warning = [line for line in err.splitlines() if "native CPU kernel is unavailable" in line]
    assert len(warning) == 1, err
    assert "UserWarning" in warning[0] and "apt-get install g++" in warning[0] and "/nonexistent" in warning[0]
    assert not list((tmp_path / "cache").glob("*.so"))


@pytest.fixture(scope="module")
def concurrent_build(tmp_path_factory):
    """Two fresh processes that find the same empty cache and build at the same time."""
    if not _has_compiler():
        pytest.skip("no C++ compiler here")
    cache = tmp_path_factory.mktemp("native_cache")
    processes = [_probe(cache), _probe(cache)]
    return cache, [_result(p)[0] for p in processes]


@pytest.mark.xdist_group("native_build")  # both read the module-scoped concurrent build: one worker
def test_concurrent_builds_both_succeed(concurrent_build):
    cache, results = concurrent_build
    assert all(r["backend"] == "native" and r["matches"] for r in results)
    assert results[0]["path"] == results[1]["path"]
    assert [r["built_here"] for r in results].count(True) == 1  # the other waited for the build (lock)
    assert all(r["build_seconds"] > 0 for r in results)
    library = Path(results[0]["path"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(library.with_suffix(s).name for s in (".so", ".json",
                                                                                                    ".lock"))


@pytest.mark.xdist_group("native_build")
def test_cache_is_reused_by_the_next_process(concurrent_build):
    cache, results = concurrent_build
    result, _ = _result(_probe(cache))
    assert result["backend"] == "native" and result["matches"]
    assert result["path"] == results[0]["path"] and not result["built_here"]
    assert result["build_seconds"] == results[0]["build_seconds"]  # the recorded compile time


@needs_native
@pytest.mark.parametrize("spike_dtype", [np.float32, np.int8, np.bool_])
def test_spikes_in_any_dtype_equal_xla(spike_dtype):
    """Spikes asked for in a dtype other than the input's (float64 input, float32 spikes: once a heap overrun
    in the native kernel) come out in that dtype, with the XLA loop's values."""
    cur, state, p, rng = _problem(seed=13, T=16)
    with K.precision_scope(np.float64):
        n = np.int32(cur.shape[0])
        kw = dict(dt=1.0, scheme="euler", spike_dtype=spike_dtype)
        nat, xla = native.simulate_forward(cur, state, p, n, **kw), K.xla_simulate_forward(cur, state, p, n, **kw)
    assert nat.spikes.dtype == xla.spikes.dtype == np.dtype(spike_dtype)
    assert np.asarray(xla.spikes).sum() > 0
    np.testing.assert_array_equal(np.asarray(nat.spikes), np.asarray(xla.spikes))
    _assert_close(nat.v, xla.v, 1e-12, "v")  # the XLA loop may contract multiply-adds
