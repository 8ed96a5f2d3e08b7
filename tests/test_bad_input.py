"""Bad input: a catalogue of rejected inputs, plus inputs that must be accepted.

Every rejected call must

* raise the stated exception type,
* name the argument and the offending value / the rule in the message,
* leave the module exactly as it was: ``built``/``units``, every parameter and buffer (including the
  hidden state ``mem``, ``potential``, ``recovery``), *and* its behaviour — the next valid call gives
  bit-for-bit what an untouched twin layer gives (so the state-continuation bookkeeping survives too).

Inputs that are merely laid out unusually (transposed views, misaligned views, broadcast views) are
NOT bad: they are accepted, give the same result as the contiguous input, and the copy made at the
DLPack boundary is explicit in :data:`spark_torch.bridge.copy_counts`.

Tests marked ``xfail(strict=True)`` document library defects; they flip to XPASS (and fail the suite)
once fixed, at which point the marker should be removed.
"""

from __future__ import annotations

import io
import itertools
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from spark_torch import IzhikevichSoma, IzhikevichSomaConfig, Uniform, bridge, kernel
from spark_torch.persistence import is_unbuilt_entry

sys.path.insert(0, str(Path(__file__).parent))
import reference_numpy as ref  # noqa: E402
import reference_torch  # noqa: E402

#: every catalogue entry runs on each available kernel backend (native C++ and the XLA loops)
pytestmark = pytest.mark.usefixtures("kernel_backend")

N = 4
B = 2
T = 5


# ------------------------------------------------------------------------------------------------ helpers

def _drive(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 20.0).to(dtype)


def step_layer(dtype=torch.float32, **kw):
    """A built step-mode layer in mid-run: 3 steps taken, so mem/potential/recovery are non-trivial."""
    layer = IzhikevichSoma(units=(N,), resistance=10.0, **kw).to(dtype)
    for t in range(3):
        layer(_drive((B, N), dtype, seed=t))
    return layer


def seq_layer(dtype=torch.float32, **kw):
    layer = IzhikevichSoma(units=(N,), resistance=10.0, sequence=True, init_hidden=True, **kw).to(dtype)
    layer(_drive((T, B, N), dtype))
    return layer


def good_step_call(layer):
    return layer(_drive((B, N), layer.threshold.dtype, seed=99))


def good_seq_call(layer):
    return layer(_drive((T, B, N), layer.threshold.dtype, seed=99))


class _TensorSnap(NamedTuple):
    value: torch.Tensor
    requires_grad: bool


def snapshot(layer: nn.Module) -> dict:
    snap = {"built": getattr(layer, "built", None), "units": getattr(layer, "units", None)}
    hidden = [(name, getattr(layer, name)) for name in ("mem", "potential", "recovery")]  # not buffers
    for name, t in itertools.chain(layer.named_parameters(), layer.named_buffers(), hidden):
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            snap[name] = "uninitialized"
        else:
            snap[name] = _TensorSnap(t.detach().clone(), t.requires_grad)
    return snap


def assert_unchanged(layer: nn.Module, before: dict) -> None:
    after = snapshot(layer)
    assert after.keys() == before.keys(), f"parameters/buffers changed: {before.keys() ^ after.keys()}"
    for key in before:
        b, a = before[key], after[key]
        if isinstance(b, _TensorSnap) and isinstance(a, _TensorSnap):
            assert a[1] == b[1], f"{key}.requires_grad changed"
            assert a[0].shape == b[0].shape and a[0].dtype == b[0].dtype, f"{key} changed shape/dtype"
            torch.testing.assert_close(a[0], b[0], rtol=0, atol=0, equal_nan=True, msg=f"{key} changed")
        else:
            assert a == b, f"{key} changed: {b!r} -> {a!r}"


def assert_same_outputs(x, y):
    xs = x if isinstance(x, tuple) else (x,)
    ys = y if isinstance(y, tuple) else (y,)
    assert len(xs) == len(ys)
    for a, b in zip(xs, ys):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def check_rejected(make, bad_call, good_call, exc, patterns):
    """The full contract for one catalogue entry (see module docstring)."""
    layer, twin = make(), make()
    before = snapshot(layer)
    with pytest.raises(exc) as info:
        bad_call(layer)
    message = str(info.value)
    for pat in patterns:
        assert re.search(pat, message, flags=re.IGNORECASE), f"message lacks {pat!r}: {message}"
    assert_unchanged(layer, before)
    assert_same_outputs(good_call(layer), good_call(twin))
    return message


# ------------------------------------------------------------------------------------------------ the catalogue of call-time input errors
# (id, layer factory, bad call, good call, exception, regexes the message must contain)

def _f64_step_layer():
    return step_layer(torch.float64)


def _f64_layer_with_f32_field():
    layer = _f64_step_layer()
    layer.recovery_timescale = layer.recovery_timescale.float()  # e.g. assigned by hand after .double()
    return layer


def _good_f64_call(layer):
    layer.recovery_timescale = layer.recovery_timescale.double()
    return layer(torch.ones(B, N, dtype=torch.float64))


def _f32_layer_with_f64_field():
    layer = step_layer()
    layer.threshold = layer.threshold.double()
    return layer


def _good_f32_call(layer):
    layer.threshold = layer.threshold.float()
    return good_step_call(layer)


CALL_CASES = [
    # --- rank / neuron shape
    ("rank-1 step input", step_layer, lambda l: l(torch.ones(N)), good_step_call,
     ValueError, [r"`cur`", r"\(4,\)", r"\[B, \*units\]"]),
    ("rank-0 step input", step_layer, lambda l: l(torch.tensor(1.0)), good_step_call,
     ValueError, [r"`cur`", r"\(\)", r"at least 2 dims"]),
    ("rank-2 sequence input", seq_layer, lambda l: l(torch.ones(B, N)), good_seq_call,
     ValueError, [r"`cur`", r"\(2, 4\)", r"\[T, B, \*units\]"]),
    ("wrong units after build (step)", step_layer, lambda l: l(torch.ones(B, N + 1)), good_step_call,
     ValueError, [r"`cur`", r"\(2, 5\)", r"units \(4,\)"]),
    ("extra dim to a step layer", step_layer, lambda l: l(torch.ones(T, B, N)), good_step_call,
     ValueError, [r"`cur`", r"\(5, 2, 4\)", r"units \(4,\)"]),
    ("wrong units after build (sequence)", seq_layer, lambda l: l(torch.ones(T, B, N + 1)), good_seq_call,
     ValueError, [r"`cur`", r"\(5, 2, 5\)", r"units \(4,\)"]),
    # --- not a float tensor
    ("python list", step_layer, lambda l: l([[1.0] * N] * B), good_step_call,
     TypeError, [r"`cur`", r"torch\.Tensor", r"list"]),
    ("numpy array", step_layer, lambda l: l(np.ones((B, N), np.float32)), good_step_call,
     TypeError, [r"`cur`", r"torch\.Tensor", r"ndarray"]),
    ("int32 input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.int32)), good_step_call,
     TypeError, [r"`cur`", r"int32", r"float32 or float64"]),
    ("int64 input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.int64)), good_step_call,
     TypeError, [r"`cur`", r"int64", r"float32 or float64"]),
    ("bool input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.bool)), good_step_call,
     TypeError, [r"`cur`", r"bool", r"float32 or float64"]),
    ("complex input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.complex64)), good_step_call,
     TypeError, [r"`cur`", r"complex64", r"float32 or float64"]),
    ("bfloat16 input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.bfloat16)), good_step_call,
     TypeError, [r"`cur`", r"bfloat16", r"float32 or float64"]),
    ("float16 input", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.float16)), good_step_call,
     TypeError, [r"`cur`", r"float16", r"float32 or float64"]),
    # --- 64-bit must never be silently downcast (nor 32-bit silently upcast into a float64 layer)
    ("float64 input, float32 layer", step_layer, lambda l: l(torch.ones(B, N, dtype=torch.float64)),
     good_step_call, TypeError, [r"`cur`", r"float64", r"float32"]),
    ("float32 input, float64 layer", _f64_step_layer, lambda l: l(torch.ones(B, N, dtype=torch.float32)),
     good_step_call, TypeError, [r"`cur`", r"float32", r"float64"]),
    # --- every field in the input's dtype: one field of another dtype is refused by name, before any kernel
    ("float32 field in a float64 layer", _f64_layer_with_f32_field,
     lambda l: l(torch.ones(B, N, dtype=torch.float64)), _good_f64_call, TypeError,
     [r"`recovery_timescale`", r"float32", r"`cur`", r"float64"]),
    ("float64 field in a float32 layer", _f32_layer_with_f64_field, lambda l: l(torch.ones(B, N)),
     _good_f32_call, TypeError, [r"`threshold`", r"float64", r"`cur`", r"float32"]),
    # --- non-finite
    ("NaN input", step_layer, lambda l: l(torch.full((B, N), float("nan"))), good_step_call,
     ValueError, [r"`cur`", r"nan", r"finite"]),
    ("+Inf input", step_layer, lambda l: l(torch.full((B, N), float("inf"))), good_step_call,
     ValueError, [r"`cur`", r"inf", r"finite"]),
    ("-Inf input", step_layer, lambda l: l(torch.full((B, N), -float("inf"))), good_step_call,
     ValueError, [r"`cur`", r"inf", r"finite"]),
    ("one NaN deep in a sequence", seq_layer,
     lambda l: l(torch.ones(T, B, N).index_put_((torch.tensor(3), torch.tensor(1), torch.tensor(2)),
                                                torch.tensor(float("nan")))),
     good_seq_call, ValueError, [r"`cur`", r"nan", r"finite"]),
    ("NaN in a float64 layer", _f64_step_layer, lambda l: l(torch.full((B, N), float("nan"), dtype=torch.float64)),
     good_step_call, ValueError, [r"`cur`", r"nan", r"finite"]),
    # --- empty
    ("empty batch B=0 (step)", step_layer, lambda l: l(torch.ones(0, N)), good_step_call,
     ValueError, [r"`cur`", r"\(0, 4\)", r"empty"]),
    ("empty batch B=0 (sequence)", seq_layer, lambda l: l(torch.ones(T, 0, N)), good_seq_call,
     ValueError, [r"`cur`", r"\(5, 0, 4\)", r"empty"]),
    ("T=0 sequence", seq_layer, lambda l: l(torch.ones(0, B, N)), good_seq_call,
     ValueError, [r"`cur`", r"\(0, 2, 4\)", r"T = 0"]),
    # --- mem
    ("mem with wrong units", step_layer, lambda l: l(torch.ones(B, N), torch.zeros(B, N + 1)), good_step_call,
     ValueError, [r"`mem`", r"\(2, 5\)", r"units must match"]),
    ("mem of rank 1", step_layer, lambda l: l(torch.ones(B, N), torch.zeros(N)), good_step_call,
     ValueError, [r"`mem`", r"\(4,\)", r"\[B, \*units\]"]),
    ("mem float64 for float32 input", step_layer,
     lambda l: l(torch.ones(B, N), torch.zeros(B, N, dtype=torch.float64)), good_step_call,
     TypeError, [r"`mem`", r"float64", r"float32"]),
    ("mem int64", step_layer, lambda l: l(torch.ones(B, N), torch.zeros(B, N, dtype=torch.int64)), good_step_call,
     TypeError, [r"`mem`", r"int64", r"float32"]),
    ("mem not a tensor", step_layer, lambda l: l(torch.ones(B, N), [0.0] * N), good_step_call,
     TypeError, [r"`mem`", r"torch\.Tensor", r"list"]),
    ("mem with wrong units (sequence)", lambda: IzhikevichSoma(units=(N,), resistance=10.0, sequence=True),
     lambda l: l(torch.ones(T, B, N), torch.zeros(B, N + 1)),
     lambda l: l(_drive((T, B, N)), torch.full((B, N), 0.25)),
     ValueError, [r"`mem`", r"\(2, 5\)"]),
    ("mem passed with init_hidden=True", seq_layer, lambda l: l(torch.ones(T, B, N), torch.zeros(B, N)),
     good_seq_call, TypeError, [r"`mem`", r"init_hidden=True"]),
]


@pytest.mark.parametrize("case", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_rejected_call(case):
    _, make, bad, good, exc, patterns = case
    check_rejected(make, bad, good, exc, patterns)


def test_catalogue_has_at_least_20_cases():
    assert len(CALL_CASES) + len(CONSTRUCTION_CASES) >= 20


# ------------------------------------------------------------------------------------------------ defects in the call-time checks

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_mem_is_rejected(value):
    check_rejected(step_layer, lambda l: l(torch.ones(B, N), torch.full((B, N), value)), good_step_call,
                   ValueError, [r"`mem`", r"nan|inf", r"finite"])


def assert_unbuilt(layer: IzhikevichSoma) -> None:
    """Not built, and every model field still its placeholder (a lazy parameter or an empty buffer)."""
    assert not layer.built and layer.units is None
    assert all(is_unbuilt_entry(getattr(layer, name)) for name in IzhikevichSomaConfig.MODEL_FIELDS)


@pytest.mark.parametrize("bad_mem", [torch.zeros(B, N + 1), torch.zeros(B, N, dtype=torch.float64)],
                         ids=["wrong-units", "wrong-dtype"])
def test_rejected_mem_leaves_unbuilt_layer_unbuilt(bad_mem):
    layer = IzhikevichSoma(resistance=10.0)
    with pytest.raises((ValueError, TypeError), match="`mem`"):
        layer(torch.ones(B, N), bad_mem)
    assert_unbuilt(layer)


def test_rejected_input_leaves_unbuilt_layer_unbuilt():
    for bad in (torch.full((B, N), float("nan")), torch.ones(B, N, dtype=torch.int32), torch.ones(0, N),
                torch.ones(N)):
        layer = IzhikevichSoma(resistance=10.0)
        with pytest.raises((ValueError, TypeError), match="`cur`"):
            layer(bad)
        assert_unbuilt(layer)
        layer(torch.ones(B, N))  # and it still builds normally afterwards
        assert layer.units == (N,)


def test_unbuilt_layer_with_unbroadcastable_config_array_stays_unbuilt():
    layer = IzhikevichSoma(resistance=10.0, threshold=[30.0, 31.0, 32.0])  # 3 values, input has 4 neurons
    with pytest.raises(ValueError, match=r"`threshold` \(shape \(3,\)\) does not broadcast to `units` \(=\(4,\)\)"):
        layer(torch.ones(B, N))
    assert not layer.built
    layer(torch.ones(B, 3))  # a matching input builds it


# ------------------------------------------------------------------------------------------------ devices

def test_input_and_parameters_on_different_devices():
    """No GPU here: put the layer on the `meta` device and feed a CPU tensor (same code path as cuda/cpu)."""
    layer = IzhikevichSoma(units=(N,), resistance=10.0).to("meta")
    with pytest.raises(ValueError) as info:
        layer(torch.ones(B, N))
    msg = str(info.value)
    assert "`cur`" in msg and "cpu" in msg and "meta" in msg
    assert layer.threshold.device.type == "meta" and layer.potential.device.type == "meta"


def test_device_without_a_jax_backend_is_named(monkeypatch):
    """A tensor on a device JAX has no backend for (CUDA with a CPU-only JAX) fails at the boundary with
    the argument, the device and what to install, not with a DLPack error from inside JAX."""
    from spark_torch import bridge

    with pytest.raises(RuntimeError, match=r"`current` is on meta, but this JAX \(.*\) has no 'meta' backend .*"
                                           r"move the layer and its input to the CPU"):
        bridge.to_jax(torch.empty(3, device="meta"), "current")
    if bridge._jax_has_platform("gpu"):
        return  # the CUDA wording below needs a JAX without a GPU backend
    monkeypatch.setitem(bridge._JAX_PLATFORMS, "meta", "gpu")  # stands in for a CUDA tensor (no GPU here)
    with pytest.raises(RuntimeError, match=r"has no 'gpu' backend .*install a JAX with GPU support"):
        bridge.to_jax(torch.empty(3, device="meta"), "current")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_for_cpu_layer_is_rejected():
    check_rejected(step_layer, lambda l: l(torch.ones(B, N, device="cuda")), good_step_call,
                   ValueError, [r"`cur`", r"cuda", r"cpu"])


# ------------------------------------------------------------------------------------------------ check_finite=False

def test_check_finite_false_skips_the_check_and_documents_the_consequence():
    """With ``check_finite=False`` no exception is raised and NaN propagates (garbage in, NaN out):

    * NaN current: no spike (NaN >= v_pk is False), ``mem``/``potential`` NaN; ``recovery`` is still
      finite after that step (u* uses the OLD v) and NaN from the next step on. ``reset()`` recovers.
    * +Inf current: v* = +Inf >= v_pk, so the neuron spikes and resets: state stays finite.
    * -Inf current: v* is clipped to the documented bound ``-kernel.V_LIMIT`` (finite state); the next
      ordinary step overshoots from there and spikes.
    """
    layer = IzhikevichSoma(units=(N,), resistance=10.0, check_finite=False)
    spk, mem = layer(torch.full((B, N), float("nan")))
    assert (spk == 0).all() and mem.isnan().all() and layer.potential.isnan().all()
    assert torch.isfinite(layer.recovery).all()
    spk, mem = layer(torch.ones(B, N))
    assert mem.isnan().all() and layer.recovery.isnan().all()
    layer.reset()
    spk, mem = layer(torch.ones(B, N))
    assert torch.isfinite(mem).all() and torch.isfinite(layer.recovery).all()

    layer.reset()
    spk, mem = layer(torch.full((B, N), float("inf")))
    assert (spk == 1).all() and (mem == 0).all() and torch.isfinite(layer.recovery).all()

    layer.reset()  # -Inf drive: v* is clipped to the documented bound -V_LIMIT, so the state stays finite
    spk, mem = layer(torch.full((B, N), -float("inf")))
    assert (spk == 0).all() and (layer.potential == -kernel.V_LIMIT).all()
    torch.testing.assert_close(mem, torch.full_like(mem, (-kernel.V_LIMIT + 65.0) / 95.0))
    spk, mem = layer(torch.ones(B, N))  # the quadratic at -1e5 mV overshoots: a (spurious) spike, no NaN
    assert (spk == 1).all() and torch.isfinite(layer.potential).all() and torch.isfinite(layer.recovery).all()


def test_check_finite_false_gives_the_same_result_on_finite_input():
    on, off = step_layer(), step_layer(check_finite=False)
    assert_same_outputs(good_step_call(on), good_step_call(off))


# ------------------------------------------------------------------------------------------------ autocast

def test_float32_input_inside_autocast_computes_in_float32():
    """A float32 current inside a CPU bfloat16 autocast region is computed in float32, bit-identical."""
    ref, amp = step_layer(), step_layer()
    x = _drive((B, N), seed=7)
    spk_ref, mem_ref = ref(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spk, mem = amp(x)
    assert spk.dtype == mem.dtype == amp.potential.dtype == amp.recovery.dtype == torch.float32
    assert_same_outputs((spk, mem), (spk_ref, mem_ref))


def test_autocast_pipeline_computes_in_float32():
    torch.manual_seed(0)
    lin = nn.Linear(3, N)
    layer, ref = IzhikevichSoma(units=(N,), resistance=10.0), IzhikevichSoma(units=(N,), resistance=10.0)
    x = torch.randn(B, 3) * 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        spk, mem = layer(h)
    assert spk.dtype == mem.dtype == torch.float32
    assert_same_outputs((spk, mem), ref(h.float()))


# ------------------------------------------------------------------------------------------------ unusual layouts: accepted, same result, explicit copy

def _seq_run(x):
    layer = IzhikevichSoma(units=(N,), resistance=10.0, sequence=True)
    return layer(x)


def test_transposed_view_is_accepted_with_one_explicit_copy():
    x = _drive((T, B, N))
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, [T, B, N] but non-contiguous
    assert not xt.is_contiguous() and torch.equal(xt, x)
    expected = _seq_run(x)
    bridge.reset_copy_counts()
    got = _seq_run(xt)
    assert dict(bridge.copy_counts) == {"non-contiguous": 1}
    assert_same_outputs(got, expected)


def test_misaligned_view_is_accepted_with_one_explicit_copy(kernel_backend):
    """JAX imports only 64-byte aligned buffers: one explicit copy; the native kernel's direct calls read
    any address: none."""
    x = _drive((T, B, N))
    flat = torch.empty(1 + x.numel())
    xm = flat[1:].view(T, B, N)  # contiguous, but 4 bytes past a 64-byte boundary
    xm.copy_(x)
    assert xm.is_contiguous() and xm.data_ptr() % 64 != 0
    expected = _seq_run(x)
    bridge.reset_copy_counts()
    got = _seq_run(xm)
    assert dict(bridge.copy_counts) == ({} if kernel_backend == "native" else {"misaligned": 1})
    assert_same_outputs(got, expected)


def test_contiguous_aligned_input_makes_no_copy():
    x = _drive((T, B, N))
    assert x.data_ptr() % 64 == 0
    bridge.reset_copy_counts()
    spk, mem = _seq_run(x.requires_grad_())
    w = torch.rand(spk.shape)  # a dense cotangent (spk.sum()'s stride-0 one: see test_soak)
    ((spk * w).sum() + (mem * w).sum()).backward()
    assert dict(bridge.copy_counts) == {}


def test_per_step_slice_of_a_sequence_is_accepted(kernel_backend):
    """``x[t]`` of a [T, B, N] tensor is misaligned for t>0 here (B*N*4 = 32 bytes): copied explicitly for
    JAX, read in place by the native kernel's direct calls."""
    x = _drive((T, B, N))
    a, b = IzhikevichSoma(units=(N,), resistance=10.0), IzhikevichSoma(units=(N,), resistance=10.0)
    bridge.reset_copy_counts()
    outs_view = [a(x[t]) for t in range(T)]
    if kernel_backend == "native":
        assert dict(bridge.copy_counts) == {}
    else:
        assert bridge.copy_counts["misaligned"] >= 1 and set(bridge.copy_counts) == {"misaligned"}
    outs_copy = [b(x[t].clone()) for t in range(T)]
    for o1, o2 in zip(outs_view, outs_copy):
        assert_same_outputs(o1, o2)


def test_broadcast_view_input_is_accepted():
    row = _drive((1, N))
    xe = row.expand(B, N)  # stride 0
    a, b = IzhikevichSoma(units=(N,), resistance=10.0), IzhikevichSoma(units=(N,), resistance=10.0)
    bridge.reset_copy_counts()
    got = a(xe)
    assert dict(bridge.copy_counts) == {"non-contiguous": 1}
    assert_same_outputs(got, b(xe.contiguous()))


def test_gradients_through_a_transposed_view_equal_contiguous():
    base = _drive((B, T, N)).requires_grad_()
    ref = base.detach().clone().requires_grad_()
    out1 = _seq_run(base.transpose(0, 1))
    out2 = _seq_run(ref.transpose(0, 1).contiguous())
    (out1[1] * torch.linspace(0, 1, N)).sum().backward()
    (out2[1] * torch.linspace(0, 1, N)).sum().backward()
    torch.testing.assert_close(base.grad, ref.grad, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ construction / config errors
# (id, constructor call, exception, regexes)

def _bad_initializer_build():
    # threshold drawn BELOW potential_rest: only detectable when the initializer is materialized (build)
    return IzhikevichSoma(units=(N,), threshold=Uniform(low=-90.0, high=-80.0))


CONSTRUCTION_CASES = [
    ("threshold NaN", lambda: IzhikevichSoma(threshold=float("nan")), ValueError, [r"`threshold`", r"nan", r"finite"]),
    ("resistance +Inf", lambda: IzhikevichSoma(resistance=float("inf")), ValueError, [r"`resistance`", r"inf", r"finite"]),
    ("recovery_update -Inf array element",
     lambda: IzhikevichSoma(recovery_update=np.array([1.0, -np.inf, 2.0, 3.0])), ValueError,
     [r"`recovery_update`", r"inf", r"finite", r"neuron \(1,\)"]),
    ("dt NaN", lambda: IzhikevichSoma(dt=float("nan")), ValueError, [r"`dt`", r"nan", r"> 0"]),
    ("dt negative", lambda: IzhikevichSoma(dt=-0.5), ValueError, [r"`dt`", r"-0\.5", r"> 0"]),
    ("dt as a list", lambda: IzhikevichSoma(dt=[1.0]), TypeError, [r"`dt`", r"list", r"real number"]),
    ("threshold as a str", lambda: IzhikevichSoma(threshold="high"), TypeError, [r"`threshold`", r"str", r"'high'"]),
    ("recovery_update as a bool", lambda: IzhikevichSoma(recovery_update=True), TypeError,
     [r"`recovery_update`", r"bool", r"not bool"]),
    ("potential_rest as a dict", lambda: IzhikevichSoma(potential_rest={"v": -65.0}), TypeError,
     [r"`potential_rest`", r"dict"]),
    ("scheme unknown", lambda: IzhikevichSoma(scheme="rk4"), ValueError, [r"`scheme`", r"rk4", r"euler"]),
    ("seed negative", lambda: IzhikevichSoma(seed=-1), ValueError, [r"`seed`", r"-1", r">= 0"]),
    ("seed a float", lambda: IzhikevichSoma(seed=1.5), TypeError, [r"`seed`", r"float", r"int"]),
    ("threshold below rest", lambda: IzhikevichSoma(threshold=-70.0), ValueError,
     [r"`threshold`", r"-70", r"potential_rest"]),
    ("resistance negative", lambda: IzhikevichSoma(resistance=-1.0), ValueError, [r"`resistance`", r"-1", r">= 0"]),
    ("array not broadcastable to units (explicit units)",
     lambda: IzhikevichSoma(units=(N,), recovery_timescale=[0.02, 0.03, 0.04]), ValueError,
     [r"`recovery_timescale`", r"\(3,\)", r"units", r"\(4,\)"]),
    ("2-D array not broadcastable to units",
     lambda: IzhikevichSoma(units=(2, 3), potential_reset=np.full((3, 2), -60.0)), ValueError,
     [r"`potential_reset`", r"\(3, 2\)", r"\(2, 3\)"]),
    ("initializer with NaN parameter", lambda: IzhikevichSoma(threshold=Uniform(low=float("nan"), high=40.0)),
     ValueError, [r"`low`", r"nan", r"finite"]),
    ("initializer draws violate a rule at build", _bad_initializer_build, ValueError,
     [r"`threshold`", r"potential_rest", r"neuron"]),
    ("unknown kwarg", lambda: IzhikevichSoma(thresold=30.0), TypeError, [r"unknown field", r"thresold"]),
    ("unknown kwarg next to valid ones", lambda: IzhikevichSoma(resistance=10.0, tau_mem=5.0), TypeError,
     [r"tau_mem"]),
    ("config of the wrong type", lambda: IzhikevichSoma({"threshold": 30.0}), TypeError,
     [r"`config`", r"IzhikevichSomaConfig", r"dict"]),
    ("units with a zero", lambda: IzhikevichSoma(units=(0,)), ValueError, [r"`units`", r"\(0,\)", r"positive"]),
    ("units negative", lambda: IzhikevichSoma(units=(4, -1)), ValueError, [r"`units`", r"-1", r"positive"]),
    ("learnable names a non-field", lambda: IzhikevichSoma(learnable=("beta",)), ValueError,
     [r"`learnable`", r"beta", r"model fields"]),
    ("units a str", lambda: IzhikevichSoma(units="abc"), TypeError, [r"`units`", r"'abc'", r"positive ints"]),
    ("units a float (not truncated)", lambda: IzhikevichSoma(units=[2.7]), TypeError,
     [r"`units`", r"2\.7", r"not an int"]),
    ("threshold beyond the membrane bound", lambda: IzhikevichSoma(threshold=2e5), ValueError,
     [r"`threshold`", r"200000", r"within ±100000 mV"]),
    ("potential_reset beyond the bound, per neuron", lambda: IzhikevichSoma(potential_reset=[-65.0, -1e38]), ValueError,
     [r"`potential_reset`", r"neuron \(1,\)", r"-1e\+38", r"within"]),
    ("recovery_timescale overflowing float32 at build",
     lambda: IzhikevichSoma(units=(N,), recovery_timescale=1e300), ValueError,
     [r"`recovery_timescale`", r"overflows torch\.float32", r"1e\+300"]),
    ("dt * recovery_timescale overflowing float32",
     lambda: IzhikevichSoma(units=(N,), dt=1e20, recovery_timescale=1e20), ValueError,
     [r"`dt \* recovery_timescale`", r"overflows torch\.float32"]),
    # snnTorch-only kwargs: rejected, never silently ignored (an snnTorch user must not lose a setting unnoticed)
    ("snnTorch beta", lambda: IzhikevichSoma(beta=0.9), TypeError, [r"`beta`", r"0\.9", r"leak"]),
    ("snnTorch learn_beta", lambda: IzhikevichSoma(learn_beta=True), TypeError, [r"`learn_beta`", r"True"]),
    ("snnTorch inhibition", lambda: IzhikevichSoma(inhibition=True), TypeError, [r"`inhibition`", r"True"]),
    ("snnTorch state_quant", lambda: IzhikevichSoma(state_quant=lambda x: x), TypeError, [r"`state_quant`"]),
    ("snnTorch reset_delay", lambda: IzhikevichSoma(reset_delay=False), TypeError, [r"`reset_delay`", r"False"]),
    ("snnTorch reset_mechanism subtract", lambda: IzhikevichSoma(reset_mechanism="subtract"), ValueError,
     [r"`reset_mechanism`", r"subtract", r"zero"]),
    ("snnTorch reset_mechanism none", lambda: IzhikevichSoma(reset_mechanism="none"), ValueError,
     [r"`reset_mechanism`", r"none"]),
]


@pytest.mark.parametrize("case", CONSTRUCTION_CASES, ids=[c[0] for c in CONSTRUCTION_CASES])
def test_rejected_construction(case):
    _, build, exc, patterns = case
    with pytest.raises(exc) as info:
        build()
    for pat in patterns:
        assert re.search(pat, str(info.value), flags=re.IGNORECASE), f"message lacks {pat!r}: {info.value}"


def test_rejected_merge_leaves_config_unchanged():
    cfg = IzhikevichSomaConfig(recovery_update=8.0)
    before = cfg.to_dict()
    with pytest.raises(ValueError, match="`threshold`"):
        cfg.merge(threshold=float("nan"))
    assert cfg.to_dict() == before


def test_rebuild_with_other_units_is_rejected_and_keeps_state():
    check_rejected(step_layer, lambda l: l.build((N + 1,)), good_step_call, ValueError,
                   [r"`input_specs`", r"\(5,\)", r"\(4,\)"])


# ------------------------------------------------------------------------------------------------ extreme finite input

def _all_finite(layer, *tensors):
    return all(bool(torch.isfinite(t).all()) for t in (*tensors, layer.potential, layer.recovery))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e6, 1e15, 1e30], ids=["1e6", "1e15", "1e30"])
def test_large_finite_input_gives_no_nan_in_spikes_mem_state(magnitude, dtype):
    """|I| up to 1e30 pA (R = 10 GΩ): v reaches ~1e31 mV, the quadratic then overflows to +Inf, which
    the spike test catches (v* = +Inf >= v_pk -> reset), so spikes, mem and state stay finite today."""
    layer = IzhikevichSoma(units=(3,), resistance=10.0, sequence=True, init_hidden=True).to(dtype)
    pattern = torch.tensor([magnitude, -magnitude, -magnitude, magnitude, 0.0, -magnitude], dtype=dtype)
    x = pattern.repeat(20).reshape(-1, 1, 1).expand(-1, 2, 3).contiguous()
    spk = layer(x)
    assert _all_finite(layer, spk, layer.mem)


@pytest.mark.parametrize("dtype,value", [(torch.float32, -3.0e38), (torch.float64, -1.7e308)], ids=["f32", "f64"])
def test_overflowing_finite_input_gives_no_nan(dtype, value):
    layer = IzhikevichSoma(units=(1,), resistance=10.0, sequence=True, init_hidden=True).to(dtype)
    x = torch.full((3, 1, 1), value, dtype=dtype)
    assert torch.isfinite(x).all()
    spk = layer(x)
    assert _all_finite(layer, spk, layer.mem)


def test_large_finite_input_gives_finite_gradients():
    layer = IzhikevichSoma(units=(3,), resistance=10.0, sequence=True,
                           learnable=("threshold", "recovery_timescale"))
    x = torch.tensor([1e30, -1e30, 5.0]).expand(4, 1, 3).contiguous().requires_grad_()
    spk, mem = layer(x)
    (spk.sum() + mem.sum()).backward()
    for g in (x.grad, layer.threshold.grad, layer.recovery_timescale.grad):
        assert torch.isfinite(g).all(), g


def test_large_negative_input_makes_the_model_fire_spuriously_documented():
    """Not NaN, but worth knowing: with dt = 1 an extreme *inhibitory* current drives v far below rest,
    where the quadratic 0.04 v² dominates, so the next Euler step overshoots to v* >> v_pk and the neuron
    'spikes' every other step. This is the model's arithmetic (the float64 NumPy reference agrees); a
    V_min clamp would remove it."""
    cur = np.full((6, 1), -1e4)
    r = ref.simulate(cur, dict(ref.DEFAULTS, resistance=10.0))
    layer = IzhikevichSoma(units=(1,), resistance=10.0, sequence=True).to(torch.float64)
    spk, _ = layer(torch.from_numpy(cur).reshape(6, 1, 1))
    np.testing.assert_array_equal(spk.flatten().numpy().astype(bool), r.spikes.flatten())
    assert r.spikes.flatten().tolist() == [False, True, False, True, False, True]


# ------------------------------------------------------------------------------------------------ untrusted checkpoints
# A checkpoint is checked completely before anything is built or copied from it: a refused load raises and
# leaves the layer as it was (built or not), and no size it names is allocated before its tensors agree.

def _checkpoint(persist_hidden=False):
    layer = step_layer(learnable=("threshold",))
    layer.persist_hidden = persist_hidden
    good_step_call(layer)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what a user loads from a file


def _set_extra(key, value):
    def edit(sd):
        sd["_extra_state"][key] = value
    return edit


def _set_entry(key, value):
    def edit(sd):
        sd[key] = value(sd[key]) if callable(value) else value
    return edit


def _drop(key):
    return lambda sd: sd.pop(key)


CHECKPOINT_CASES = [
    ("units far larger than the tensors", _set_extra("units", [10**9]), ValueError,
     [r"\(4,\)", r"units( are)? \(1000000000,\)"]),
    ("units a str", _set_extra("units", "abc"), TypeError, [r"_extra_state\['units'\]", r"'abc'"]),
    ("units a float", _set_extra("units", [4.0]), TypeError, [r"_extra_state\['units'\]", r"4\.0", r"not an int"]),
    ("unknown format", _set_extra("format", 99), ValueError, [r"format", r"99"]),
    ("learnable names a non-field", _set_extra("learnable", ["beta"]), ValueError, [r"learnable", r"beta"]),
    ("config with an unknown field", _set_extra("config", {"tau": 5.0}), TypeError, [r"unknown field", r"tau"]),
    ("config dt differs (a valid checkpoint of another layer)", lambda sd: sd["_extra_state"]["config"].update(dt=0.5),
     ValueError, [r"`dt` = 0\.5", r"`dt` = 1\.0"]),
    ("NaN threshold", _set_entry("threshold", lambda t: torch.full_like(t, float("nan"))), ValueError,
     [r"`threshold`", r"NaN"]),
    ("threshold equal to potential_rest", _set_entry("threshold", lambda t: torch.full_like(t, -65.0)), ValueError,
     [r"`threshold`", r"> `potential_rest`", r"-65"]),
    ("potential_reset beyond the membrane bound", _set_entry("potential_reset", lambda t: torch.full_like(t, -1e30)),
     ValueError, [r"`potential_reset`", r"within"]),
    ("a field of the wrong shape", _set_entry("resistance", torch.ones(N + 1)), ValueError,
     [r"`resistance`", r"\(5,\)", r"\(4,\)"]),
    ("an integer field", _set_entry("resistance", torch.ones(N, dtype=torch.int64)), TypeError,
     [r"`resistance`", r"int64", r"floating"]),
    ("a field that is not a tensor", _set_entry("resistance", [10.0] * N), TypeError, [r"`resistance`", r"list"]),
    ("missing model field", _drop("recovery_update"), ValueError, [r"recovery_update"]),
    ("missing _extra_state", _drop("_extra_state"), ValueError, [r"_extra_state"]),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_rejected_checkpoint_changes_nothing(case):
    _, edit, exc, patterns = case
    sd = _checkpoint()
    edit(sd)
    built, twin = step_layer(learnable=("threshold",)), step_layer(learnable=("threshold",))
    for l in (built, twin):
        good_step_call(l)
    before = snapshot(built)
    with pytest.raises(exc) as info:
        built.load_state_dict(sd)
    for pat in patterns:
        assert re.search(pat, str(info.value), flags=re.IGNORECASE), f"message lacks {pat!r}: {info.value}"
    assert_unchanged(built, before)
    assert_same_outputs(good_step_call(built), good_step_call(twin))
    unbuilt = IzhikevichSoma(resistance=10.0, learnable=("threshold",))
    with pytest.raises((ValueError, TypeError)):
        unbuilt.load_state_dict(sd)
    assert_unbuilt(unbuilt)
    if "valid checkpoint" not in case[0]:
        with pytest.raises(exc):
            IzhikevichSoma.from_state_dict(sd)


def test_checkpoint_naming_a_huge_layer_allocates_nothing():
    import resource

    sd = _checkpoint()
    sd["_extra_state"]["units"] = [10**9]
    for name in IzhikevichSomaConfig.MODEL_FIELDS:  # not even with no tensor to disagree with
        sd.pop(name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for load in (IzhikevichSoma.from_state_dict, IzhikevichSoma(resistance=10.0).load_state_dict,
                 lambda sd: IzhikevichSoma(resistance=10.0).load_state_dict(sd, strict=False)):
        with pytest.raises(ValueError, match=r"units \(1000000000,\) but holds only|lacks \["):
            load(sd)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing like 4 GB


@pytest.mark.parametrize("edit", [
    _set_entry("mem", lambda t: t[:, :-1]),
    _set_entry("recovery", lambda t: torch.full_like(t, float("inf"))),
    _drop("potential"),
], ids=["mem of the wrong shape", "Inf recovery", "potential missing"])
def test_rejected_hidden_state_changes_nothing(edit):
    sd = _checkpoint(persist_hidden=True)
    edit(sd)
    layer, twin = step_layer(learnable=("threshold",)), step_layer(learnable=("threshold",))
    for l in (layer, twin):
        l.persist_hidden = True
        good_step_call(l)
    before = snapshot(layer)
    with pytest.raises(ValueError, match=r"hidden state|mem|potential"):
        layer.load_state_dict(sd)
    assert_unchanged(layer, before)
    assert_same_outputs(good_step_call(layer), good_step_call(twin))


# ------------------------------------------------------------------------------------------------ configs that pass validation stay finite

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fields", [
    {"recovery_timescale": 3.0}, {"dt": 150.0}, {"recovery_timescale": 100.0}, {"recovery_update": -1e38},
    {"recovery_timescale": -5.0}, {"recovery_update": 1e38, "scheme": "izhikevich2003"},
    {"potential_reset": 9.9e4, "threshold": 1e5},
], ids=["a=3", "dt=150", "a=100", "d=-1e38", "a=-5", "d=1e38 paper scheme", "reset near the bound"])
def test_valid_config_gives_finite_state_and_gradients(fields, dtype):
    """Explicit Euler on u is unstable once dt·a > 2, and a huge |d| pushes u past any float: the bound on u
    keeps every output, the state and the gradients finite (they were NaN from step ~135 for a = 3)."""
    layer = IzhikevichSoma(units=(N,), sequence=True, resistance=10.0, learnable=("recovery_timescale",),
                           **fields).to(dtype)
    x = torch.ones(300, B, N, dtype=dtype, requires_grad=True)
    spk, mem = layer(x)
    (spk.sum() + mem.sum()).backward()
    assert _all_finite(layer, spk, mem, x.grad, layer.recovery_timescale.grad)
    assert layer.recovery.abs().max() <= kernel.V_LIMIT


def test_bound_on_u_has_the_clamp_gradient():
    """Inside the bound u's gradient passes unchanged (1), beyond it 0, as torch.clamp's (pure-PyTorch reference)."""
    layer = IzhikevichSoma(units=(N,), sequence=True, resistance=10.0, recovery_timescale=3.0).double()
    x = torch.ones(60, B, N, dtype=torch.float64, requires_grad=True)
    u0 = layer.recovery_sensitivity * layer.potential_rest
    spk, mem = layer(x)
    mem.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    params = {n: getattr(layer, n) for n in IzhikevichSomaConfig.MODEL_FIELDS}
    v0 = layer.potential_rest.expand(B, N)
    _, _, v_ref, u_ref = reference_torch.reference_run(x_ref, v0, u0.expand(B, N), params, dt=1.0)
    assert (u_ref.abs() == kernel.V_LIMIT).any()  # the bound is reached in this run
    ((v_ref - layer.potential_rest) / (layer.threshold - layer.potential_rest)).sum().backward()
    torch.testing.assert_close(mem, (v_ref - layer.potential_rest) / (layer.threshold - layer.potential_rest),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
