"""spark_torch.execution.direct_executor: the C loops on torch's memory, and the checks on every address it
hands to C (dtype, device, contiguity, element count or period)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from spark_torch import IzhikevichSoma
from spark_torch.execution import KernelCall, direct_executor, route
from spark_torch.execution.direct_executor import _buffer


@pytest.fixture(scope="module")
def native_kernel():
    from spark_torch.kernel import native

    try:
        native.load()
    except native.Unavailable as error:
        pytest.skip(f"no native kernel here: {error}")


@pytest.mark.parametrize("tensor,kwargs,error,match", [
    (torch.ones(4, dtype=torch.float64), dict(count=4), TypeError, "float32"),
    (torch.ones(4, 2).t(), dict(count=8), TypeError, "contiguous"),
    (torch.ones(5), dict(count=4), ValueError, "4 elements"),
    (torch.ones(4), dict(period_of=6), ValueError, "divides 6"),
    (torch.ones(0), dict(period_of=6), ValueError, "divides 6"),
])
def test_every_address_handed_to_c_is_checked(tensor, kwargs, error, match):
    with pytest.raises(error, match=match):
        _buffer(tensor, "operand", torch.float32, **kwargs)
    assert _buffer(None, "absent", torch.float32) == (0, 0)
    assert _buffer(torch.ones(3), "ok", torch.float32, period_of=6)[1] == 3


def test_cpu_calls_take_the_direct_executor(native_kernel):
    from spark_torch import kernel

    call = KernelCall(1.0, "euler", step=True)
    with kernel.use_backend("native"):
        assert route.executor_for(call, torch.ones(4, 8)) is route.DIRECT
        assert route.executor_for(call._replace(recovery_checkpoints=True), torch.ones(4, 8)) is route.DIRECT
        assert route.executor_for(call, torch.ones(1 << 18)) is route.DIRECT
    with kernel.use_backend("xla"):
        assert route.executor_for(call, torch.ones(4, 8)) is route.JAX
    assert route.executor_for(call, torch.ones(4, 8, device="meta")) is route.SHAPES


@pytest.mark.parametrize("field", ["recovery_timescale", "threshold", "resistance"])
def test_a_field_of_another_dtype_is_refused_before_any_kernel_runs(kernel_backend, field):
    """A float64 layer given a float32 field (or a float32 layer a float64 one) raises a TypeError naming the
    field; nothing is read past a buffer's end, no silently wrong value."""
    for layer_dtype, field_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        layer = IzhikevichSoma(resistance=10.0, units=(4,), learnable=(field,)).to(layer_dtype)
        setattr(layer, field, torch.nn.Parameter(getattr(layer, field).detach().to(field_dtype)))
        with pytest.raises(TypeError, match=f"`{field}` has dtype {field_dtype}"):
            layer(torch.ones(2, 4, dtype=layer_dtype))
        assert layer.mem.numel() == 0  # the rejected call left the state as it was (never called)


def test_a_short_buffer_before_an_inaccessible_page_is_refused_not_read(native_kernel, tmp_path):
    """A float32 field of 4 elements that ends where an inaccessible page begins, set on a float64 layer: reading
    it as 4 float64 values would fault. The call must raise a TypeError instead (in a subprocess, so that a
    fault could not take the test runner down)."""
    script = textwrap.dedent("""
        import ctypes, mmap, torch
        from spark_torch import IzhikevichSoma, kernel
        page = mmap.PAGESIZE
        area = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        libc = ctypes.CDLL(None)
        address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        assert libc.mprotect(ctypes.c_void_p(address + page), page, 0) == 0
        field = torch.frombuffer(area, dtype=torch.float32, count=4, offset=page - 16)
        field.fill_(0.02)
        layer = IzhikevichSoma(resistance=10.0, units=(4,)).double()
        layer.recovery_timescale = field
        kernel.set_backend("native")
        try:
            layer(torch.ones(2, 4, dtype=torch.float64))
        except TypeError as error:
            print("refused:", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: `recovery_timescale` has dtype torch.float32" in done.stdout


def test_non_contiguous_input_is_copied_explicitly_once(native_kernel):
    from spark_torch import bridge, kernel

    layer = IzhikevichSoma(resistance=10.0, units=(3,), sequence=True)
    current = 3.0 * torch.rand(5, 3, 2).transpose(1, 2)  # [T, B, N], not contiguous
    with kernel.use_backend("native"):
        bridge.reset_copy_counts()
        spikes, mem = layer(current)
        assert bridge.copy_counts["non-contiguous"] == 1
        assert torch.equal(mem, layer(current.contiguous())[1])


@pytest.mark.parametrize("scheme", ["euler", "izhikevich2003"])
@pytest.mark.parametrize("checkpoints", [False, True], ids=["raw_trace", "checkpoints"])
@pytest.mark.parametrize("T, B, N", [(16, 3, 6000), (400, 1, 700)], ids=["many_blocks", "three_blocks"])
def test_large_calls_share_their_blocks_among_threads_with_the_same_bits(native_kernel, scheme, checkpoints, T, B, N):
    """A call above the parallel threshold runs its blocks of neurons on every thread torch may use (in runs of
    several blocks; with three blocks, two runs of which the last is partly filled); blocks are independent, so
    spikes, membranes and every gradient are the same bits as on one thread."""
    from spark_torch import kernel
    from spark_torch.kernel.native import interface

    assert T * B * N >= interface.PARALLEL_WORK  # more neuron-steps than the parallel threshold
    generator = torch.Generator().manual_seed(3)
    x0 = 3.0 * torch.rand(T, B, N, generator=generator)
    weights = torch.randn(T, B, N, generator=generator)
    results, threads = [], torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            layer = IzhikevichSoma(resistance=10.0, units=(N,), sequence=True, scheme=scheme,
                                   checkpoint_recovery=checkpoints, learnable=("threshold", "recovery_timescale"))
            x = x0.clone().requires_grad_()
            with kernel.use_backend("native"):
                spk, mem = layer(x)
                ((spk * weights).sum() + mem.sum()).backward()
            results.append([spk, mem, x.grad, layer.potential, *(p.grad for p in layer.parameters())])
    finally:
        torch.set_num_threads(threads)
    assert 0 < results[0][0].sum() < results[0][0].numel() / 2
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_what_a_forward_keeps_for_its_backward():
    """Large sequences keep the raw membrane trace and sparse u (their v and u outputs are the final state);
    small ones and steps keep the v and u traces; recovery checkpoints keep v and u every ~√T steps;
    inference keeps nothing."""
    from spark_torch.execution.direct_executor import RAW_TRACE_WORK, residuals_layout

    sequence = KernelCall(1.0, "euler")
    assert residuals_layout(sequence, "least", RAW_TRACE_WORK) == "raw_trace"
    assert residuals_layout(sequence, "least", RAW_TRACE_WORK - 1) == "state_traces"
    assert residuals_layout(sequence._replace(recovery_checkpoints=True), "least", 10) == "checkpoints"
    assert residuals_layout(sequence._replace(step=True), "least", RAW_TRACE_WORK) == "state_traces"
    assert residuals_layout(sequence, "state_traces", RAW_TRACE_WORK) == "state_traces"  # the custom op's layout
    assert residuals_layout(sequence, "final_state", RAW_TRACE_WORK) == "final_state"


def test_large_outputs_reuse_the_pooled_memory_of_earlier_calls(native_kernel):
    """A training loop's large outputs (spikes, mem, the kept trace, the input's gradient) come from the
    kernel's pool: once warm, a call maps no new memory (so it pays no page faults), in a process that
    changed no allocator setting."""
    from spark_torch.execution import memory_pool

    layer = IzhikevichSoma(resistance=10.0, units=(512,), sequence=True)
    x = (3.0 * torch.rand(40, 64, 512)).requires_grad_()  # 5 MiB per [T, B, N] buffer
    assert x.numel() * 4 >= memory_pool.POOLED_BYTES

    def step():
        x.grad = None
        spk, mem = layer(x)
        (spk.sum() + mem.sum()).backward()

    step()
    before = memory_pool.stats()
    for _ in range(3):
        step()
    after = memory_pool.stats()
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"]
    assert after["reuses_total"] >= before["reuses_total"] + 3 * 4  # spikes, mem, raw trace, input gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_forward_flags_a_nonfinite_input_wherever_it_lies(native_kernel, dtype, value, monkeypatch):
    """The direct executor's forward checks the input in its own pass over it (no reduction before the call):
    one NaN or ±Inf anywhere — the first or last element, a middle block, a call that runs on several threads,
    a step call, with or without a backward to serve — raises the layer's error and leaves its state as it was;
    a finite input passes, and ``check_finite=False`` lets the value through."""
    from spark_torch import inputs, kernel

    T, B, N = 16, 3, 6000  # above interface.PARALLEL_WORK: blocks on several threads
    x = torch.rand(T, B, N, dtype=dtype)
    for sequence, grad in ((True, False), (True, True), (False, False), (False, True)):
        layer = IzhikevichSoma(resistance=10.0, units=(N,), sequence=sequence).to(dtype)
        unchecked = IzhikevichSoma(resistance=10.0, units=(N,), sequence=sequence, check_finite=False).to(dtype)
        good = x if sequence else x[0]
        with kernel.use_backend("native"), monkeypatch.context() as patch:
            mem = layer(good)[1].clone()
            patch.setattr(inputs, "all_finite", lambda t: pytest.fail("a reduction checked the input"))
            state = (layer.potential.clone(), layer.recovery.clone())
            for index in (0, good.numel() - 1, good.numel() // 2 + 1234):
                bad = good.clone()
                bad.view(-1)[index] = value
                with pytest.raises(ValueError, match=r"`cur` contains NaN or Inf"):
                    layer(bad.requires_grad_(grad))
                assert torch.equal(layer.potential, state[0]) and torch.equal(layer.recovery, state[1])
                unchecked(bad)
            if sequence:  # from rest again: the same membranes as before the refused calls
                assert torch.equal(layer(good)[1], mem)


def test_large_calls_run_on_torchs_openmp_threads(native_kernel):
    """Where torch's operations run on OpenMP, a large call's blocks run on a team of the same runtime's threads:
    the ``GOMP_parallel`` that ``libtorch_cpu`` binds, in an OpenMP runtime torch loaded (the bit-identity of
    one and two threads is pinned above)."""
    from spark_torch.execution.direct_executor import torch_parallel_region

    if not torch.backends.openmp.is_available():
        pytest.skip("this torch runs its operations without OpenMP")
    region = torch_parallel_region()
    assert region is not None
    with open("/proc/self/maps") as maps:
        owner = next(line.split()[-1] for line in maps
                     if int(line.split("-")[0], 16) <= region < int(line.split()[0].split("-")[1], 16))
    assert "omp" in os.path.basename(owner), owner
