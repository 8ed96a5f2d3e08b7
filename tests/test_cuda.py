"""CUDA: torch CUDA tensors <-> JAX GPU arrays without copies, the layer on a GPU against the CPU.

Runs where torch sees a CUDA device *and* JAX has a GPU backend (jax with its CUDA plugin); skipped
otherwise (this project's CI machine has no GPU). What is pinned:

* the boundary: a CUDA tensor reaches JAX as the same device memory (same pointer), a JAX GPU array
  reaches torch likewise; work queued on a non-default torch stream is finished before JAX reads;
* the layer on ``cuda``: outputs and gradients on the input's device and dtype, float64 values and
  every gradient equal to the CPU layer's (to float64 rounding), no explicit copy at the boundary,
  ``checkpoint_recovery`` bit-identical to the default, the snnTorch step loop equal to one sequence
  call, ``torch.compile(fullgraph=True)`` equal to eager, a few optimizer steps of an snnTorch-style
  network that lower its loss;
* ``import spark_torch`` leaves the GPU's memory to torch (JAX does not preallocate 75 % of it).
"""

import copy
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from spark_torch import IzhikevichSoma, bridge

from reference_torch import PARAM_NAMES


def _jax_gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this JAX installation
        return []


pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and _jax_gpus()),
                                reason="needs a CUDA device visible to both torch and JAX")

T, B, N = 60, 8, 32


def _drive(shape, dtype, scale=3.0, device="cuda"):
    generator = torch.Generator().manual_seed(7)
    return (scale * torch.rand(shape, dtype=torch.float64, generator=generator)).to(dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def _no_copies_recorded():
    bridge.reset_copy_counts()
    yield


# ------------------------------------------------------------------------------------------------ boundary

def test_cuda_tensor_reaches_jax_as_the_same_device_memory():
    tensor = torch.arange(4 * 33, dtype=torch.float32, device="cuda").reshape(4, 33)
    array = bridge.to_jax(tensor, "tensor")
    assert array.platform() == "gpu"
    (device,) = array.devices()
    assert device.id == tensor.device.index
    assert array.unsafe_buffer_pointer() == tensor.data_ptr()
    assert array.dtype == jnp.float32 and array.shape == (4, 33)
    np.testing.assert_array_equal(np.asarray(array), tensor.cpu().numpy())
    assert not bridge.copy_counts


def test_jax_gpu_array_reaches_torch_as_the_same_device_memory():
    array = jax.device_put(jnp.arange(24.0).reshape(2, 12), _jax_gpus()[0])
    tensor = bridge.to_torch(array)
    assert tensor.device.type == "cuda"
    assert tensor.data_ptr() == array.unsafe_buffer_pointer()
    assert torch.equal(tensor.cpu(), torch.arange(24.0).reshape(2, 12))


def test_float64_cuda_tensor_is_refused_outside_a_precision_scope_and_kept_inside():
    from spark_torch.kernel import precision_scope

    tensor = torch.ones(3, dtype=torch.float64, device="cuda")
    if not jax.config.jax_enable_x64:
        with pytest.raises(TypeError, match=r"`t` has dtype torch.float64 but reached JAX as float32"):
            bridge.to_jax(tensor, "t")
    with precision_scope(np.float64):
        assert bridge.to_jax(tensor, "t").dtype == jnp.float64


def test_work_queued_on_a_side_stream_is_finished_before_jax_reads():
    """torch writes on a non-default stream behind a ~10 ms GPU spin; JAX must see the written values."""
    side = torch.cuda.Stream()
    tensor = torch.zeros(1 << 22, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(20_000_000)  # GPU cycles: keeps the stream busy before the write
        tensor.add_(1.0)
        array = bridge.to_jax(tensor, "tensor")
    assert float(jnp.sum(array)) == float(1 << 22)


# ------------------------------------------------------------------------------------------------ layer

def _layer(dtype, **kwargs):
    torch.manual_seed(1)
    return IzhikevichSoma(units=(N,), resistance=10.0, sequence=True, learnable=PARAM_NAMES, **kwargs).to(dtype)


def _fwd_bwd(layer, cur):
    """One sequence call, a loss on spikes, membrane and the carried state; returns values and grads."""
    layer.zero_grad()
    x = cur.detach().clone().requires_grad_(True)
    spk, mem = layer(x)
    weights = torch.linspace(-1.0, 1.0, spk.numel(), dtype=cur.dtype, device=cur.device).reshape(spk.shape)
    loss = (spk * weights).sum() + (mem * weights.flip(0)).pow(2).mean() + layer.recovery.sum()
    loss.backward()
    grads = {"cur": x.grad, **{n: getattr(layer, n).grad for n in PARAM_NAMES}}
    return spk.detach(), mem.detach(), grads


def test_layer_on_cuda_float64_equals_the_cpu_layer_values_and_gradients():
    cpu_layer = _layer(torch.float64)
    gpu_layer = copy.deepcopy(cpu_layer).cuda()
    cur = _drive((T, B, N), torch.float64, device="cpu")
    spk_c, mem_c, grads_c = _fwd_bwd(cpu_layer, cur)
    bridge.reset_copy_counts()
    spk_g, mem_g, grads_g = _fwd_bwd(gpu_layer, cur.cuda())
    assert not bridge.copy_counts, dict(bridge.copy_counts)  # nothing copied at the boundary on the GPU
    for t in (spk_g, mem_g, gpu_layer.potential, gpu_layer.recovery, *grads_g.values()):
        assert t.device.type == "cuda" and t.dtype == torch.float64
    assert spk_c.sum() > 0.02 * spk_c.numel()  # the neurons fire: spike times are compared, not silence
    assert torch.equal(spk_g.cpu(), spk_c)
    assert_close(mem_g.cpu(), mem_c, rtol=1e-10, atol=1e-10)
    assert_close(gpu_layer.recovery.cpu(), cpu_layer.recovery, rtol=1e-10, atol=1e-10)
    for name in grads_c:
        assert grads_c[name].abs().sum() > 0 or name == "resistance", name
        assert_close(grads_g[name].cpu(), grads_c[name], rtol=1e-8, atol=1e-10, msg=name)


def test_layer_on_cuda_float32_agrees_with_the_cpu_layer():
    """float32 on two backends may round differently (fused multiply-adds); a spike that moves one
    step changes the rest of that neuron's trace, so counts are compared per neuron, not traces."""
    cpu_layer = _layer(torch.float32)
    gpu_layer = copy.deepcopy(cpu_layer).cuda()
    cur = _drive((T, B, N), torch.float32, device="cpu")
    spk_c, _, grads_c = _fwd_bwd(cpu_layer, cur)
    spk_g, mem_g, grads_g = _fwd_bwd(gpu_layer, cur.cuda())
    assert mem_g.dtype == torch.float32 and grads_g["cur"].device.type == "cuda"
    same_counts = (spk_g.sum(0).cpu() == spk_c.sum(0)).float().mean()
    assert same_counts >= 0.97, float(same_counts)
    assert torch.isfinite(grads_g["cur"]).all()


def test_checkpoint_recovery_on_cuda_is_bit_identical_to_the_default():
    cur = _drive((47, B, N), torch.float32)
    results = [_fwd_bwd(_layer(torch.float32, checkpoint_recovery=ckpt).cuda(), cur) for ckpt in (False, True)]
    (spk_a, mem_a, g_a), (spk_b, mem_b, g_b) = results
    assert torch.equal(spk_a, spk_b) and torch.equal(mem_a, mem_b)
    for name in g_a:
        assert torch.equal(g_a[name], g_b[name]), name


def test_snntorch_step_loop_on_cuda_equals_one_sequence_call():
    seq_layer = _layer(torch.float64)
    step_layer = copy.deepcopy(seq_layer)
    step_layer.sequence = False
    seq_layer, step_layer = seq_layer.cuda(), step_layer.cuda()
    cur = _drive((T, B, N), torch.float64)
    spk_seq, mem_seq = seq_layer(cur)
    mem, spikes, mems = step_layer.init_leaky(), [], []
    for cur_t in cur.unbind(0):
        spk_t, mem = step_layer(cur_t, mem)
        spikes.append(spk_t)
        mems.append(mem)
    assert mem.device.type == "cuda"
    assert torch.equal(torch.stack(spikes), spk_seq)
    assert_close(torch.stack(mems), mem_seq, rtol=1e-12, atol=1e-12)


def test_layers_chained_on_cuda_take_each_others_jax_allocated_outputs():
    """Spikes of one layer (memory JAX allocated) fed straight into the next, call after call, and a
    step loop whose carried state alternates with torch-allocated input: XLA's CUDA command buffers
    refuse to re-point a copy from torch- to JAX-allocated memory, so the layer keeps its state in
    torch's memory (this failed with 'Failed to set memcpy D2D node params' before)."""
    first = IzhikevichSoma(units=(N,), resistance=10.0, sequence=True).cuda()
    second = IzhikevichSoma(units=(N,), resistance=30.0, sequence=True, learnable=("threshold",)).cuda()
    for k in range(4):
        x = _drive((20, B, N), torch.float32) * (k + 1) / 4
        spk, _ = second(x if k == 0 else first(x)[0])
        spk.sum().backward()
    assert second.threshold.grad.device.type == "cuda" and torch.isfinite(second.threshold.grad).all()
    step = IzhikevichSoma(units=(N,), resistance=10.0, learnable=("threshold",)).cuda()
    mem = step.init_leaky()
    for k in range(6):
        spk, mem = step(_drive((B, N), torch.float32), mem if k % 2 else torch.zeros(B, N, device="cuda"))
    spk.sum().backward()
    assert torch.isfinite(step.threshold.grad).all()


def test_torch_compile_fullgraph_on_cuda_matches_eager():
    layer = _layer(torch.float32)
    cur = _drive((T, B, N), torch.float32)
    layer = layer.cuda()
    eager = _fwd_bwd(layer, cur)
    compiled = _fwd_bwd(torch.compile(layer, fullgraph=True), cur)
    for a, b in zip(eager[:2], compiled[:2]):
        assert torch.equal(a, b)
    for name in eager[2]:
        assert_close(compiled[2][name], eager[2][name], rtol=1e-5, atol=1e-6, msg=name)


def test_snntorch_style_network_trains_on_cuda():
    """Linear -> IzhikevichSoma (init_hidden) -> Linear -> snn.Leaky over a sequence; count loss."""
    import snntorch as snn
    import snntorch.functional as SF
    from snntorch import utils

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 64), IzhikevichSoma(units=(64,), resistance=10.0, init_hidden=True),
        torch.nn.Linear(64, 4), snn.Leaky(beta=0.9, init_hidden=True, output=True)).cuda()
    data = torch.rand(32, 16, device="cuda")
    labels = torch.arange(32, device="cuda") % 4
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    loss_fn = SF.ce_count_loss()
    losses = []
    for _ in range(15):
        utils.reset(net)
        spikes = torch.stack([net(data * 4.0)[0] for _ in range(25)])
        loss = loss_fn(spikes, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert net[0].weight.grad.device.type == "cuda" and torch.isfinite(net[0].weight.grad).all()
    assert min(losses[-3:]) < losses[0], losses


def test_benchmark_quick_mode_runs_on_cuda(tmp_path):
    """``python -m spark_torch.bench --device cuda``: GPU contenders timed, CPU-only anchors skipped,
    spike counts of the layer and the direct kernel agree with the eager loop on the GPU."""
    from spark_torch import bench

    res = bench.main(["--quick", "--device", "cuda", "--rounds", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert res["meta"]["device"] == "cuda" and res["meta"]["device_name"]
    rec = res["sizes"][0]
    assert {"spark_seq", "spark_step", "jax_direct", "torch_eager", "snn_leaky"} <= set(rec["timings"]["fwdbwd"])
    for name in ("c_anchor", "numba_fused"):
        assert "--device cuda" in res["contenders"][name]["reason"]
    for name in ("spark_seq", "spark_step", "jax_direct"):
        assert rec["spike_counts"][name]["agrees"], rec["spike_counts"][name]
    assert not res["memory"] and "threads" not in rec
    assert (tmp_path / "bench.json").exists()


def test_cpu_input_for_cuda_layer_is_rejected():
    layer = _layer(torch.float32).cuda()
    with pytest.raises(ValueError, match=r"is on cuda.*, but `cur` is on cpu"):
        layer(torch.ones(T, B, N))


# ------------------------------------------------------------------------------------------------ memory

def test_import_leaves_gpu_memory_to_torch():
    """JAX's GPU client reserves 75 % of the device at start unless told otherwise; ``import spark_torch``
    (which starts JAX) sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless the user chose a value."""
    script = textwrap.dedent("""
        import os, torch
        free_before, total = torch.cuda.mem_get_info()
        import spark_torch
        layer = spark_torch.IzhikevichSoma(units=(64,), resistance=10.0, sequence=True).cuda()
        layer(torch.rand(20, 4, 64, device="cuda"))
        torch.cuda.synchronize()
        free_after, _ = torch.cuda.mem_get_info()
        print(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), (free_before - free_after) / total)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_PYTHON_CLIENT_")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    setting, used_fraction = out.stdout.split()
    assert setting == "false"
    assert float(used_fraction) < 0.1, used_fraction
