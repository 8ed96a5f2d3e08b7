"""The native library's memory pool (izhikevich_memory.h) and its Python side (spark_torch.execution.memory_pool).

The tests run against the integrated native library (``native.load().handle``). To test the header alone,
point ``SPARK_TORCH_TEST_POOL_LIBRARY`` at a shared library built from it, e.g. from a file ``pool.cc``::

    #define IZH_EXPORT extern "C" __attribute__((visibility("default")))
    #include "izhikevich_memory.h"

    g++ -std=c++17 -O2 -shared -fPIC -fvisibility=hidden -I spark_torch/kernel/native pool.cc -o libpool.so

The pool is per process and other tests may hold pooled tensors, so counters are compared as differences,
and each test that reads them starts from a collected heap.
"""

import ctypes
import gc
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from spark_torch.execution import memory_pool

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_ENV = "SPARK_TORCH_TEST_POOL_LIBRARY"
MIB = 1 << 20
BLOCK = 2 * MIB  # the pool's block granule


def _library() -> tuple[ctypes.CDLL, Path]:
    """The library under test and its path: $SPARK_TORCH_TEST_POOL_LIBRARY, else the native kernel's."""
    if os.environ.get(LIBRARY_ENV):
        path = Path(os.environ[LIBRARY_ENV])
        return ctypes.CDLL(str(path)), path
    from spark_torch.kernel import native

    try:
        library = native.load()
    except native.Unavailable as error:
        pytest.skip(f"the native kernel does not build here: {error}", allow_module_level=True)
    return library.handle, library.path


HANDLE, LIBRARY_PATH = _library()
try:
    POOL = memory_pool.bind(HANDLE)
except AttributeError as missing:
    pytest.fail(f"{LIBRARY_PATH} has no memory pool ({missing}): izhikevich_ffi.cc must include "
                "izhikevich_memory.h", pytrace=False)


def stats() -> dict[str, int]:
    return memory_pool.stats(HANDLE)


def empty(shape, dtype=torch.float32) -> torch.Tensor:
    return memory_pool.empty(tuple(shape), dtype, HANDLE)


@pytest.fixture(autouse=True)
def _collected():
    """No tensor of an earlier test is freed in the middle of this one by the cycle collector."""
    gc.collect()
    yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(3 * MIB + 5,), (100, 128, 129), (2, 3, 4, 5, 6, 7, 8, 9)])
def test_tensor_layout_and_contents(shape, dtype):
    tensor = empty(shape, dtype)
    reference = torch.empty(shape, dtype=dtype)
    assert (tensor.shape, tensor.dtype, tensor.device) == (reference.shape, dtype, torch.device("cpu"))
    assert tensor.stride() == reference.stride() and tensor.is_contiguous()
    assert tensor.data_ptr() % BLOCK == 0 and not tensor.requires_grad
    values = (torch.arange(tensor.numel()) % 251).reshape(shape)
    values = values % 2 == 1 if dtype is torch.bool else values.to(dtype)
    tensor.copy_(values)  # every element written, then read back
    assert torch.equal(tensor, values)


def test_freed_block_is_reused_by_the_next_request_of_its_size():
    memory_pool.release_cached_memory(HANDLE)  # no cached block of this size from an earlier test
    shape = (3, 1000, 1001)  # 12,012,000 bytes: a 12 MiB block
    first = empty(shape)
    address = first.data_ptr()
    del first
    before = stats()
    second = empty(shape)
    after = stats()
    assert second.data_ptr() == address
    assert after["reuses_total"] == before["reuses_total"] + 1
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"]
    assert after["in_use_bytes"] - before["in_use_bytes"] == 12 * MIB
    assert before["cached_bytes"] - after["cached_bytes"] == 12 * MIB


def test_memory_of_a_live_tensor_is_never_handed_out_twice():
    shape = (5 * MIB,)
    first, second = empty(shape), empty(shape)
    assert first.data_ptr() != second.data_ptr()
    first.fill_(1.0)
    second.fill_(2.0)
    assert bool((first == 1.0).all()) and bool((second == 2.0).all())
    del second
    third = empty(shape)  # takes cached memory (the second's or other), never the first's
    third.fill_(3.0)
    assert bool((first == 1.0).all()) and bool((third == 3.0).all())


def test_a_view_keeps_its_block_alive():
    base = empty((4, MIB))
    base.fill_(4.0)
    in_use = stats()["in_use_bytes"]
    view = base[1:, ::2]
    del base
    assert stats()["in_use_bytes"] == in_use and bool((view == 4.0).all())
    del view
    assert stats()["in_use_bytes"] == in_use - 16 * MIB


def test_cached_plus_in_use_never_exceeds_the_high_water_mark():
    memory_pool.release_cached_memory(HANDLE)  # the bound restarts from the bytes in use now
    peak = stats()["in_use_bytes"]
    generator = torch.Generator().manual_seed(1)
    held = []
    for _ in range(200):
        if held and torch.rand((), generator=generator) < 0.45:
            held.pop(int(torch.randint(len(held), (), generator=generator)))
        else:
            held.append(empty((int(torch.randint(1, 12, (), generator=generator)) * MIB,), torch.uint8))
        now = stats()
        peak = max(peak, now["in_use_bytes"])
        assert now["in_use_bytes"] + now["cached_bytes"] <= peak, now


def _carve(total_mib: int, sizes_mib) -> tuple[int, list[torch.Tensor]]:
    """From an empty cache: one fresh range of ``total_mib`` MiB, freed, then tensors of ``sizes_mib`` MiB
    split off its front one after another (each takes the smallest free range that holds it, here always
    the rest of this one). Returns the range's address and the tensors, checked to lie back to back."""
    memory_pool.release_cached_memory(HANDLE)
    whole = empty((total_mib * MIB,), torch.uint8)
    address = whole.data_ptr()
    del whole
    before = stats()
    parts = [empty((n * MIB,), torch.uint8) for n in sizes_mib]
    after = stats()
    offsets = [sum(sizes_mib[:i]) * MIB for i in range(len(sizes_mib))]
    assert [part.data_ptr() - address for part in parts] == offsets
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"]
    assert after["reuses_total"] == before["reuses_total"] + len(sizes_mib)
    return address, parts


def test_a_smaller_request_splits_a_cached_range():
    memory_pool.release_cached_memory(HANDLE)
    big = empty((16 * MIB,), torch.uint8)
    address = big.data_ptr()
    del big  # cached: one 16 MiB range
    before = stats()
    small = empty((4 * MIB,), torch.uint8)  # its first 4 MiB; no new mapping
    after = stats()
    assert small.data_ptr() == address
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"]
    assert after["reuses_total"] == before["reuses_total"] + 1
    assert after["in_use_bytes"] - before["in_use_bytes"] == 4 * MIB
    assert before["cached_bytes"] - after["cached_bytes"] == 4 * MIB  # the other 12 MiB stay cached
    rest = empty((12 * MIB,), torch.uint8)
    assert rest.data_ptr() == address + 4 * MIB
    assert stats()["mapped_blocks_total"] == before["mapped_blocks_total"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_a_split_range_is_whole_again_once_its_parts_are_freed(order):
    """Every order of freeing: a part merges with a free neighbour before it, after it, or both."""
    address, parts = _carve(16, (4, 4, 8))
    for i in order:
        parts[i] = None
    before = stats()
    assert before["cached_bytes"] >= 16 * MIB
    whole = empty((16 * MIB,), torch.uint8)
    after = stats()
    assert whole.data_ptr() == address
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"]
    assert after["reuses_total"] == before["reuses_total"] + 1


def test_contents_survive_splits_and_merges():
    address, (first, middle, last) = _carve(24, (4, 4, 4))  # 12 MiB stay free after them
    first.fill_(1)
    middle.fill_(2)
    last.fill_(3)
    del middle
    refill = empty((4 * MIB,), torch.uint8).fill_(4)  # the hole between first and last fits exactly
    assert refill.data_ptr() == address + 4 * MIB
    assert bool((first == 1).all()) and bool((last == 3).all())
    del first, refill  # merged: the front 8 MiB
    front = empty((8 * MIB,), torch.uint8).fill_(5)
    assert front.data_ptr() == address and bool((last == 3).all())
    del last  # merged with the free 12 MiB after it
    back = empty((16 * MIB,), torch.uint8).fill_(6)
    assert back.data_ptr() == address + 8 * MIB
    assert bool((front == 5).all()) and bool((back == 6).all())


def test_alternating_layouts_map_memory_in_the_first_round_only():
    """Calls that keep {40, 8} MiB and {6, 6, 6} MiB alive in turn: the small buffers are split off the
    large ones' free ranges, which are whole again for the next call of the first kind."""
    memory_pool.release_cached_memory(HANDLE)
    start = stats()
    peak = start["in_use_bytes"]
    for round_ in range(4):
        for layout in ((40, 8), (6, 6, 6)):
            held = [empty((n * MIB,), torch.uint8) for n in layout]
            during = stats()
            peak = max(peak, during["in_use_bytes"])
            del held
            after = stats()
            for now in (during, after):
                assert now["in_use_bytes"] + now["cached_bytes"] <= peak, now
        if round_ == 0:
            first = stats()
            assert first["mapped_blocks_total"] - start["mapped_blocks_total"] == 2  # the 40 and the 8 MiB
    end = stats()
    assert end["mapped_blocks_total"] == first["mapped_blocks_total"]
    assert end["reuses_total"] - first["reuses_total"] == 3 * 5
    assert end["in_use_bytes"] + end["cached_bytes"] <= peak


def test_a_new_mapping_unmaps_only_the_excess_over_the_bound():
    """Free ranges of 12, 8 and 4 MiB (cut from one 28 MiB range, kept apart by live 2 MiB tensors) and a
    14 MiB request that none holds alone (though together they would): a new mapping, and 14 MiB of cache
    must go to keep in use + cached within the most in use at once (the 28 MiB range, since the trim). The
    largest range goes whole; the 2 MiB still needed are cut from the end of the smallest range that holds
    them (the 4 MiB one); the 8 MiB range stays whole."""
    address, (twelve, spacer, eight, spacer_) = _carve(28, (12, 2, 8, 2))  # the last 4 MiB stay free
    del twelve, eight
    before = stats()
    new = empty((14 * MIB,), torch.uint8)
    after = stats()
    assert after["mapped_blocks_total"] == before["mapped_blocks_total"] + 1
    assert before["cached_bytes"] - after["cached_bytes"] == 14 * MIB
    assert after["in_use_bytes"] + after["cached_bytes"] == before["in_use_bytes"] + before["cached_bytes"]
    eight = empty((8 * MIB,), torch.uint8)  # the 8 MiB range, whole
    two = empty((2 * MIB,), torch.uint8)  # the front of the 4 MiB range
    assert (eight.data_ptr() - address, two.data_ptr() - address) == (14 * MIB, 24 * MIB)
    final = stats()
    assert final["mapped_blocks_total"] == after["mapped_blocks_total"]
    assert after["cached_bytes"] - final["cached_bytes"] == 10 * MIB
    del new, spacer, spacer_


def test_release_cached_memory_unmaps_cached_blocks_only():
    kept = empty((6 * MIB,), torch.uint8)
    kept.fill_(5)
    freed = empty((10 * MIB,), torch.uint8)
    del freed
    before = stats()
    assert before["cached_bytes"] >= 10 * MIB
    memory_pool.release_cached_memory(HANDLE)
    after = stats()
    assert after["cached_bytes"] == 0 and after["in_use_bytes"] == before["in_use_bytes"]
    assert bool((kept == 5).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(0,), (4, 0, 3)])
def test_zero_element_tensors(shape, dtype):
    before = stats()
    tensor = empty(shape, dtype)
    assert tensor.shape == shape and tensor.dtype == dtype and tensor.numel() == 0
    assert tensor.stride() == torch.empty(shape).stride()
    assert stats()["in_use_bytes"] == before["in_use_bytes"]  # no block behind it
    assert torch.cat([tensor.reshape(-1), torch.ones(2, dtype=dtype)]).tolist() == [1, 1]
    del tensor  # its deleter runs; nothing to give back
    assert stats()["in_use_bytes"] == before["in_use_bytes"]


def test_uint8_and_bool_tensors():
    raw = empty((3, MIB), torch.uint8)
    raw.fill_(255)
    assert raw.dtype == torch.uint8 and int(raw.sum()) == 255 * 3 * MIB
    spikes = empty((3, MIB), torch.bool)
    torch.gt(torch.arange(3 * MIB).reshape(3, MIB) % 3, 0, out=spikes)
    assert spikes.dtype == torch.bool and int(spikes.sum()) == 2 * MIB


@pytest.mark.parametrize("shape, dtype, error, words", [
    ((), torch.float32, ValueError, ("`shape`", "()", "1 to 8")),
    ((1,) * 9, torch.float32, ValueError, ("`shape`", "1 to 8", "not 9")),
    ((2, -3), torch.float32, ValueError, ("`shape[1]`", "-3", ">= 0")),
    ((0, 1 << 64), torch.float32, ValueError, ("`shape[1]`", str(1 << 64), "2**63")),
    ((1 << 40, 1 << 40), torch.float32, ValueError, ("`shape`", "int64")),
    ((1 << 40, 1 << 40, 0), torch.float32, ValueError, ("`shape`", "int64")),  # torch.empty refuses these too
    ((0, 1 << 61, 4), torch.float32, ValueError, ("`shape`", "strides", "int64")),
    ((4,), torch.int32, TypeError, ("`dtype`", "torch.int32", "torch.float32")),
])
def test_bad_requests_are_refused_by_name(shape, dtype, error, words):
    with pytest.raises(error) as raised:
        empty(shape, dtype)
    assert all(word in str(raised.value) for word in words), str(raised.value)
    if "int64" in words:
        with pytest.raises(RuntimeError, match="overflow"):  # the same rule as torch.empty's
            torch.empty(shape, dtype=dtype)


@pytest.mark.parametrize("shape", [(0, 1 << 62), (1 << 62, 0), (3, 0, 1 << 62), (0, 1 << 40, 1 << 20)])
def test_empty_shapes_torch_accepts(shape):
    tensor = empty(shape, torch.float64)
    assert tensor.shape == shape and tensor.stride() == torch.empty(shape, dtype=torch.float64).stride()


@pytest.mark.parametrize("ndim, dtype_code, words", [
    (0, 0, ("`ndim`", "(=0)", "[1, 8]")),
    (9, 0, ("`ndim`", "(=9)", "[1, 8]")),
    (1, 4, ("`dtype_code`", "(=4)", "3 (bool)")),
    (1, -1, ("`dtype_code`", "(=-1)",)),
])
def test_the_c_function_names_a_bad_argument(ndim, dtype_code, words):
    shape = (ctypes.c_int64 * 9)(*([2] * 9))
    error = ctypes.create_string_buffer(256)
    assert POOL.tensor(ndim, shape, dtype_code, error, len(error)) is None
    message = error.value.decode()
    assert all(word in message for word in words), message
    short = ctypes.create_string_buffer(8)  # the message is cut to fit, and terminated
    assert POOL.tensor(ndim, shape, dtype_code, short, len(short)) is None
    assert short.value.decode() == message[:7]
    assert POOL.tensor(ndim, shape, dtype_code, None, 0) is None  # no buffer: no message


def test_a_refused_capsule_gives_its_block_back(monkeypatch):
    before = stats()

    def refuse(capsule):
        raise RuntimeError("refused")

    monkeypatch.setattr(memory_pool, "_from_dlpack", refuse)
    with pytest.raises(RuntimeError, match="refused"):
        empty((4 * MIB,), torch.uint8)
    assert stats()["in_use_bytes"] == before["in_use_bytes"]


def test_new_buffer_pools_large_buffers_only():
    small = memory_pool.new_buffer((memory_pool.POOLED_BYTES // 4 - 1,), torch.float32, HANDLE)
    large = memory_pool.new_buffer((memory_pool.POOLED_BYTES // 4,), torch.float32, HANDLE)
    no_library = memory_pool.new_buffer((memory_pool.POOLED_BYTES,), torch.float32, None)
    other_dtype = memory_pool.new_buffer((memory_pool.POOLED_BYTES,), torch.int64, HANDLE)
    assert large.data_ptr() % BLOCK == 0
    assert all(t.is_contiguous() for t in (small, large, no_library, other_dtype))
    assert other_dtype.dtype == torch.int64 and no_library.shape == (memory_pool.POOLED_BYTES,)


def test_concurrent_use_from_threads():
    before = stats()
    failures = []
    sizes = (2 * MIB, 3 * MIB, 5 * MIB)

    def work(value: int):
        held = []
        try:
            for i in range(60):
                tensor = empty((sizes[i % 3],), torch.uint8)
                tensor.fill_(value)
                held.append(tensor)
                if len(held) > 3:
                    held.pop(0)
                if not all(bool((t == value).all()) for t in held):
                    failures.append(f"thread {value}: a held tensor was overwritten")
                    return
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(f"thread {value}: {error!r}")

    threads = [threading.Thread(target=work, args=(value,)) for value in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert not failures, failures
    assert stats()["in_use_bytes"] == before["in_use_bytes"]


class _PooledDouble(torch.autograd.Function):
    """y = 2 x, with its output and its gradient on pooled memory (as the native executors produce them)."""

    @staticmethod
    def forward(ctx, x):
        return torch.mul(x, 2, out=empty(x.shape, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return torch.mul(grad, 2, out=empty(grad.shape, grad.dtype))


def test_pooled_tensors_under_autograd():
    before = stats()
    x = torch.randn(4, 512, 512, dtype=torch.float64, requires_grad=True)
    y = _PooledDouble.apply(x)
    assert y.requires_grad and y.grad_fn is not None
    (y * y).sum().backward()
    torch.testing.assert_close(x.grad, 8 * x.detach(), rtol=0, atol=0)
    leaf = empty((2, 512, 1024)).normal_().requires_grad_()
    (leaf.sin()).sum().backward()
    torch.testing.assert_close(leaf.grad, leaf.detach().cos())
    del x, y, leaf
    assert stats()["in_use_bytes"] == before["in_use_bytes"]


FORK_SCRIPT = textwrap.dedent("""
    import ctypes, multiprocessing, sys, threading
    import torch
    from spark_torch.execution import memory_pool

    torch.set_num_threads(1)
    handle = ctypes.CDLL(sys.argv[1])
    MIB = 1 << 20
    held = [memory_pool.empty((4 * MIB,), torch.uint8, handle).fill_(7)]
    stop = threading.Event()

    def churn():  # holds the pool's lock often (a new mapping each time) while the main thread forks
        while not stop.is_set():
            memory_pool.empty((3 * MIB,), torch.uint8, handle)
            memory_pool.release_cached_memory(handle)

    def child():
        inherited = held.pop()
        assert bool((inherited == 7).all())
        inherited.fill_(9)  # the child's copy
        del inherited  # its deleter runs in the child
        for size in (3, 4, 4, 9):
            tensor = memory_pool.empty((size * MIB,), torch.uint8, handle).fill_(size)
            assert bool((tensor == size).all())
            del tensor
        counters = memory_pool.stats(handle)
        assert counters["in_use_bytes"] >= 0 and counters["cached_bytes"] >= 0, counters

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    context = multiprocessing.get_context("fork")
    exitcode = 0
    for _ in range(16):  # without the fork handlers, about half of these children hang
        process = context.Process(target=child, daemon=True)
        process.start()
        process.join(timeout=20)
        exitcode = process.exitcode
        if exitcode is None:
            process.kill()
            process.join()
        if exitcode != 0:
            break
    stop.set()
    for thread in threads:
        thread.join()
    if exitcode != 0:
        sys.exit(f"a forked child ended with exit code {exitcode} (None: it hung for 20 s)")
    assert bool((held[0] == 7).all()), "a child's writes reached the parent"
    print("ok")
""")


def test_forked_children_use_the_pool_without_deadlock():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", FORK_SCRIPT, str(LIBRARY_PATH)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the script and its forked children
        process.communicate()
        pytest.fail("the fork test did not finish within 180 s: a deadlock")
    assert process.returncode == 0 and out.strip() == "ok", err[-3000:]
