"""Soak: many forward+backward calls — memory flat, no recompilation after warm-up — and the
number of compilations caused by many different sequence lengths.

Measured on this machine (2 cores, torch 2.13 CPU, jax 0.10.2): one call ([T=10, B=4, N=32] sequence,
learnable threshold, forward + backward) takes ~1.1 ms, so the full 10,000 calls run in ~12 s.
Each new loop buffer length costs one forward + one backward compilation (~0.4 s together here); the
buffers are exactly T long for the first ``jax_executor.MAX_EXACT_LENGTHS`` lengths, powers of two after that.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from spark_torch import IzhikevichSoma, bridge, execution, kernel
from spark_torch.execution import jax_executor, route
from spark_torch.config import SCHEMES

N_CALLS = 10_000
WARMUP = 200


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    pytest.skip("no /proc/self/status")


def _cache_sizes():
    return kernel.simulate_forward._cache_size(), kernel.simulate_backward._cache_size()


def _fwd_bwd(layer, x):
    xx = x.clone().requires_grad_()
    spk, mem = layer(xx)
    (spk.sum() + mem.square().mean()).backward()
    return spk


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("path", ["default", "through_jax"])
def test_soak_10k_calls_memory_flat_no_recompilation(one_thread, monkeypatch, path):
    """On the default path (here: the native kernel's direct calls, where it builds) and through JAX."""
    if path == "through_jax":
        monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    layer = IzhikevichSoma(units=(32,), resistance=10.0, sequence=True, learnable=("threshold",))
    opt = torch.optim.SGD(layer.parameters(), lr=1e-4)
    x = torch.rand(10, 4, 32) * 10.0
    for _ in range(WARMUP):
        _fwd_bwd(layer, x)
        opt.step()
        opt.zero_grad()
    gc.collect()
    sizes, rss0 = _cache_sizes(), _rss_mb()
    bridge.reset_copy_counts()
    rss_trace = []
    start = time.perf_counter()
    for i in range(N_CALLS):
        _fwd_bwd(layer, x)
        opt.step()
        opt.zero_grad()
        if i % 1000 == 999:
            rss_trace.append(round(_rss_mb() - rss0, 1))
    elapsed = time.perf_counter() - start
    gc.collect()
    growth = _rss_mb() - rss0
    print(f"\n{N_CALLS} fwd+bwd calls: {elapsed:.1f} s ({1e3 * elapsed / N_CALLS:.2f} ms/call); "
          f"RSS growth per 1000 calls (MB): {rss_trace}; total {growth:.1f} MB; copies {dict(bridge.copy_counts)}")
    assert _cache_sizes() == sizes, "recompiled after warm-up"
    assert growth < 20.0, f"RSS grew {growth:.1f} MB over {N_CALLS} calls: {rss_trace}"
    # inputs, state and parameters cross zero-copy; at most the stride-0 gradient of `spk.sum()` is copied
    assert set(bridge.copy_counts) <= {"non-contiguous"} and bridge.copy_counts["non-contiguous"] <= N_CALLS
    assert torch.isfinite(layer.threshold).all()


@pytest.mark.parametrize("path", ["default", "through_jax"])
def test_soak_step_mode_calls_do_not_recompile(one_thread, monkeypatch, path):
    """snnTorch-style step loop (T = 1 per call, hidden state kept by the layer), truncated BPTT."""
    if path == "through_jax":
        monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    layer = IzhikevichSoma(units=(32,), resistance=10.0, learnable=("threshold",))
    x = torch.rand(4, 32) * 10.0
    for _ in range(50):
        _fwd_bwd(layer, x)
        layer.detach_hidden_state()
    sizes, rss0 = _cache_sizes(), _rss_mb()
    for _ in range(2000):
        _fwd_bwd(layer, x)
        layer.detach_hidden_state()
    assert _cache_sizes() == sizes
    assert _rss_mb() - rss0 < 20.0


@pytest.fixture
def fresh_length_policy(monkeypatch):
    """A clean record of exact lengths (other tests have used many) with room for 4 of them."""
    monkeypatch.setattr(jax_executor, "exact_lengths", set())
    monkeypatch.setattr(jax_executor, "MAX_EXACT_LENGTHS", 4)


def test_buffer_length_policy(fresh_length_policy):
    """The first 4 distinct lengths (and every power of two) run exactly; later ones in power-of-two buffers."""
    assert [jax_executor.buffer_length(t) for t in (100, 7, 1, 33)] == [100, 7, 1, 33]
    assert [jax_executor.buffer_length(t) for t in (5, 9, 64, 65, 100, 129, 7)] == [8, 16, 64, 128, 100, 256, 7]
    assert jax_executor.exact_lengths == {100, 7, 1, 33, 64}


def test_sequence_lengths_compile_a_bounded_number_of_times(one_thread, fresh_length_policy, monkeypatch):
    """T = 1..40, each twice: 4 exact lengths (1..4), the powers of two 8, 16, 32 and the bucket 64 —
    and nothing more when the lengths repeat. (Before the buffers, every T compiled its own pair: 40 + 40.)
    Through JAX (small calls could otherwise run the native kernel directly, which compiles nothing)."""
    monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    layer = IzhikevichSoma(units=(32,), resistance=10.0, sequence=True)
    x = torch.rand(40, 4, 32) * 10
    before = _cache_sizes()
    for T in range(1, 41):
        _fwd_bwd(layer, x[:T].contiguous())
    after = _cache_sizes()
    for T in range(1, 41):
        _fwd_bwd(layer, x[:T].contiguous())
    assert _cache_sizes() == after
    buffers = {jax_executor.buffer_length(T) for T in range(1, 41)}
    assert buffers == {1, 2, 3, 4, 8, 16, 32, 64}, buffers
    # at most one forward and one backward executable per buffer length (fewer if another test compiled it)
    assert after[0] - before[0] <= len(buffers) and after[1] - before[1] <= len(buffers), (before, after)


def _run_with_grads(x, **kw):
    layer = IzhikevichSoma(units=(x.shape[-1],), resistance=10.0, sequence=True, learnable=("threshold",), **kw).to(x.dtype)
    xx = x.clone().requires_grad_()
    spk, mem = layer(xx)
    (spk.sum() + mem.square().mean()).backward()
    return spk, mem, layer.potential, layer.recovery, xx.grad, layer.threshold.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_padded_buffer_gives_bit_identical_results(kernel_backend, monkeypatch, dtype, scheme):
    """A length run in a padded power-of-two buffer equals the same length run exactly, bit for bit:
    spikes, membranes, final state and all gradients (the loop body does not depend on the buffer). Loop
    buffers are what JAX runs: the calls go through JAX here even where they could call the native
    kernel directly."""
    monkeypatch.setattr(route, "executor_for", lambda call, current: route.JAX)
    x = (torch.rand(23, 3, 17, generator=torch.Generator().manual_seed(0)) * 20).to(dtype)
    monkeypatch.setattr(jax_executor, "exact_lengths", {23})
    exact = _run_with_grads(x, scheme=scheme)
    monkeypatch.setattr(jax_executor, "exact_lengths", set())
    monkeypatch.setattr(jax_executor, "MAX_EXACT_LENGTHS", 0)
    bridge.reset_copy_counts()
    padded = _run_with_grads(x, scheme=scheme)
    assert jax_executor.buffer_length(23) == 32 and bridge.copy_counts["padded"] >= 1
    for a, b in zip(exact, padded):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spike_count_loss_backward_makes_no_copy():
    layer = IzhikevichSoma(units=(32,), resistance=10.0, sequence=True)
    x = (torch.rand(10, 4, 32) * 10).requires_grad_()
    bridge.reset_copy_counts()
    spk, mem = layer(x)
    spk.sum().backward()
    assert dict(bridge.copy_counts) == {}
