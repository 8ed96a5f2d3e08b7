"""Zero-copy tensor exchange between PyTorch and JAX (DLPack). Knows nothing about neurons.

Design note — who owns a buffer, and when a copy happens:

* torch -> JAX (:func:`to_jax`): a contiguous tensor whose data pointer is 64-byte aligned is
  *shared* (JAX reads torch's memory; same pointer). JAX cannot import other layouts (offset views,
  stride-0 broadcasts, gapped/transposed strides), so those are copied **explicitly** here into a
  fresh, aligned torch buffer, and every such copy is recorded in :data:`copy_counts` (and warned
  about when :func:`warn_on_copy` is on). The import itself runs with ``copy=False``: if JAX would
  copy anything behind our back, it raises instead.
* Small eager CPU calls on the native kernel do not cross at all (:mod:`spark_torch.execution.direct_executor`: its C
  loops read and write torch's memory in place): only non-contiguous inputs are copied for them
  (:func:`explicit_copy`, counted the same way); alignment does not matter there.
* JAX -> torch (:func:`to_torch`): JAX results are fresh buffers; torch wraps them without a copy.
  :func:`to_torch` first blocks until the whole computation that produced them is finished, because
  JAX dispatch is asynchronous (on CPU too): otherwise torch could read a buffer that is still being
  written, or mutate an input that JAX is still reading.
* 64-bit: with JAX's default (x64 off) a float64 tensor would arrive silently as float32. Callers
  wrap kernel calls in :func:`spark_torch.kernel.precision_scope`; :func:`to_jax` verifies the
  dtype that arrived and raises on any mismatch instead of computing in lower precision.
* Tensors that require grad cannot be exported; :func:`to_jax` detaches (the autograd op owns the
  graph, the kernel only sees values).
* Devices: a CUDA tensor is shared with JAX's GPU device the same way (JAX makes its stream wait for
  the work torch queued on the tensor's stream; tests/test_cuda.py). A tensor on a device JAX has no
  backend for raises a ``RuntimeError`` that names it, instead of a DLPack error from inside JAX.
* Cost: on CPU both directions call JAX's own DLPack primitives directly (the public wrappers add
  Python checks per tensor); other devices and other JAX versions use the public API.
  Module parameters go through :func:`to_jax_shared`, which reuses one JAX view per parameter, kept by
  the module that owns it.
"""

from __future__ import annotations

import collections
import functools
import sys
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.dlpack
import torch
import torch.utils.dlpack

class _CpuPrimitives(NamedTuple):
    """JAX's own DLPack primitives for the local CPU, without the public wrappers' per-call Python checks."""

    device: object
    import_: Callable
    export: Callable


_cpu_primitives: Optional[_CpuPrimitives] = None
_cpu_primitives_probed = False


def _fast_cpu() -> Optional[_CpuPrimitives]:
    """The primitives, probed on first use (not at import: that would start JAX's CPU backend, and a
    process ``fork()``-ed after that cannot run JAX); ``None`` where this JAX lacks them."""
    global _cpu_primitives, _cpu_primitives_probed
    if not _cpu_primitives_probed:
        _cpu_primitives_probed = True
        try:
            from jax._src.lib import _jax as jax_ext
            from jax._src import xla_bridge

            device = xla_bridge.get_backend("cpu").device_from_local_hardware_id(0)
            import_, export = jax_ext.dlpack_managed_tensor_to_buffer, jax_ext.buffer_to_dlpack_managed_tensor
            probe = import_(torch.utils.dlpack.to_dlpack(torch.zeros(1)), device, None, False, 1)
            torch.utils.dlpack.from_dlpack(export(probe, stream=None))  # both signatures as expected
            _cpu_primitives = _CpuPrimitives(device, import_, export)
        except Exception:  # pragma: no cover - other JAX versions: the public API is always correct
            _cpu_primitives = None
    return _cpu_primitives


def jax_backends_started() -> bool:
    """Whether this process has started any JAX backend (its thread pools then exist: see ``fork``)."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xla_bridge, "_backends", None))


ALIGNMENT_BYTES = 64
_JAX_DTYPES = {torch.float32: jax.numpy.dtype("float32"), torch.float64: jax.numpy.dtype("float64"),
               torch.float16: jax.numpy.dtype("float16"), torch.bfloat16: jax.numpy.dtype("bfloat16"),
               torch.int32: jax.numpy.dtype("int32"), torch.int64: jax.numpy.dtype("int64"),
               torch.bool: jax.numpy.dtype("bool"), torch.uint8: jax.numpy.dtype("uint8")}

#: Explicit copies made by :func:`to_jax`, by reason ("misaligned", "non-contiguous"). Read it to
#: check that a hot path is zero-copy; :func:`reset_copy_counts` clears it.
copy_counts: collections.Counter = collections.Counter()

#: How many arrays crossed: ``"to_jax"`` (new JAX arrays made from tensors or host values) and
#: ``"to_torch"`` (JAX arrays wrapped for torch); the kernel's callers add ``"forward"`` and
#: ``"backward"`` (kernel executions). Tests pin a call's cost with it; ``crossings.clear()`` resets it.
crossings: collections.Counter = collections.Counter()

_warn_on_copy = False


def warn_on_copy(enabled: bool = True) -> None:
    """Emit a ``UserWarning`` for every explicit copy made at the boundary (a debug switch)."""
    global _warn_on_copy
    _warn_on_copy = bool(enabled)


def reset_copy_counts() -> None:
    """Clear :data:`copy_counts`."""
    copy_counts.clear()


def shares_memory_layout(tensor: torch.Tensor) -> bool:
    """True when JAX can import ``tensor`` without a copy: contiguous and 64-byte aligned."""
    return tensor.is_contiguous() and tensor.data_ptr() % ALIGNMENT_BYTES == 0


def explicit_copy(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """A contiguous, 64-byte aligned copy of ``tensor`` for the kernel, counted in :data:`copy_counts` (by
    reason: ``"non-contiguous"`` or ``"misaligned"``) and announced when :func:`warn_on_copy` is on."""
    reason = "non-contiguous" if not tensor.is_contiguous() else "misaligned"
    copy_counts[reason] += 1
    if _warn_on_copy:
        warnings.warn(
            f"spark_torch: copying `{name}` ({reason}, shape {tuple(tensor.shape)}, strides "
            f"{tensor.stride()}, data_ptr % {ALIGNMENT_BYTES} = {tensor.data_ptr() % ALIGNMENT_BYTES}) "
            "before handing it to the kernel", stacklevel=3)
    # A fresh allocation from torch's allocator is 64-byte aligned and contiguous.
    return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device).copy_(tensor)


_JAX_PLATFORMS = {"cuda": "gpu"}  # torch device type -> JAX platform (ROCm torch also says "cuda")


@functools.lru_cache(maxsize=None)
def _jax_has_platform(platform: str) -> bool:
    try:
        return bool(jax.devices(platform))
    except RuntimeError:  # JAX raises when it has no backend for the platform
        return False


def _check_device_reachable(tensor: torch.Tensor, name: str) -> None:
    """A non-CPU tensor needs a JAX backend for its device: say which, instead of a DLPack error."""
    platform = _JAX_PLATFORMS.get(tensor.device.type, tensor.device.type)
    if not _jax_has_platform(platform):
        raise RuntimeError(
            f"`{name}` is on {tensor.device}, but this JAX ({jax.__version__}) has no '{platform}' backend "
            f"(it has {sorted({d.platform for d in jax.devices()})}); the kernel runs on the tensor's device: "
            + ("install a JAX with GPU support matching your CUDA (e.g. pip install -U \"jax[cuda13]\") or "
               if platform == "gpu" else "") + "move the layer and its input to the CPU")


def to_jax(tensor: torch.Tensor, name: str = "tensor") -> jax.Array:
    """Share ``tensor`` with JAX (zero-copy when :func:`shares_memory_layout`, else an explicit copy).

    Raises ``TypeError`` if JAX would receive another dtype (64-bit outside a 64-bit precision scope),
    ``RuntimeError`` if the tensor's device has no JAX backend (e.g. CUDA with a CPU-only JAX).
    """
    crossings["to_jax"] += 1
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        _check_device_reachable(tensor, name)
    if not shares_memory_layout(tensor):
        tensor = explicit_copy(tensor, name)
    fast = _fast_cpu() if tensor.device.type == "cpu" else None
    if fast is not None:
        array = fast.import_(torch.utils.dlpack.to_dlpack(tensor), fast.device, None, False, 1)
        if array.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
            array = jax.dlpack.from_dlpack(tensor, copy=False)  # let the public path apply JAX's x64 rule
    else:
        array = jax.dlpack.from_dlpack(tensor, copy=False)
    if array.dtype != _JAX_DTYPES.get(tensor.dtype):
        raise TypeError(
            f"`{name}` has dtype {tensor.dtype} but reached JAX as {array.dtype.name}: 64-bit tensors "
            "must cross inside spark_torch.kernel.precision_scope (jax x64); refusing to downcast")
    return array


class _View(NamedTuple):
    """A JAX array that aliases ``tensor``'s memory, and the layout it was made for."""

    tensor: torch.Tensor
    data_ptr: int
    shape: torch.Size
    stride: tuple
    array: jax.Array

    def matches(self, tensor: torch.Tensor) -> bool:
        """``tensor`` reads the same memory the same way (it is the tensor, or a view/``detach()`` of it):
        the entry holds its tensor, so no other tensor can have been allocated at its address since."""
        if tensor is self.tensor:
            return tensor.data_ptr() == self.data_ptr and tensor.shape == self.shape
        return (tensor.data_ptr() == self.data_ptr and tensor.shape == self.shape and tensor.stride() == self.stride
                and tensor.dtype == self.tensor.dtype and tensor.device == self.tensor.device)


def to_jax_shared(tensor: torch.Tensor, name: str, views: dict) -> jax.Array:
    """:func:`to_jax` for tensors that cross again and again (module parameters, a step's state), reusing
    the JAX view kept in ``views``.

    ``views`` is a dict owned by whoever owns ``tensor`` (the layer): ``views[name]`` holds the view and
    the tensor it was made for, so that both live exactly as long as their owner. The JAX array aliases
    the tensor's memory, so in-place updates (optimizer steps) are seen by the next kernel call; a tensor
    whose storage or layout changed (``.data = ...``, ``.to()``) is imported again. Tensors that would
    need a copy are never cached (a copy would go stale). :func:`remember_export` records a tensor that
    JAX produced, so that handing it back costs no import.
    """
    hit = views.get(name)
    if hit is not None and hit.matches(tensor):
        return hit.array
    array = to_jax(tensor, name)
    if shares_memory_layout(tensor):
        views[name] = _View(tensor, tensor.data_ptr(), tensor.shape, tensor.stride(), array)
    return array


def remember_export(views: dict, name: str, tensor: torch.Tensor, array: jax.Array) -> None:
    """Record that ``tensor`` wraps ``array`` (a :func:`to_torch` export): a later
    :func:`to_jax_shared` ``(tensor, name, views)`` then returns ``array`` without importing."""
    views[name] = _View(tensor, tensor.data_ptr(), tensor.shape, tensor.stride(), array)


def _on_one_local_cpu(array: jax.Array) -> bool:
    return array.is_fully_addressable and len(array.devices()) == 1 and array.platform() == "cpu"


def _export_cpu(array: jax.Array) -> torch.Tensor:
    crossings["to_torch"] += 1
    return torch.utils.dlpack.from_dlpack(_fast_cpu().export(array, stream=None))


def to_torch(array: jax.Array) -> torch.Tensor:
    """Wrap a (finished) JAX array as a torch tensor without a copy."""
    if _fast_cpu() is not None and _on_one_local_cpu(array):
        return _export_cpu(array)
    crossings["to_torch"] += 1
    return torch.from_dlpack(array)


def arrays_to_torch(arrays: tuple, on_cpu: bool) -> list:
    """The results of one computation (a flat tuple; ``None`` entries stay ``None``) as torch tensors, each
    blocked on first. ``on_cpu``: the caller knows they are on the local CPU (its inputs were), which
    skips the per-array placement checks."""
    fast = _fast_cpu() if on_cpu else None
    if fast is None:
        return [None if a is None else to_torch(a.block_until_ready()) for a in arrays]
    crossings["to_torch"] += len(arrays) - arrays.count(None)
    return [None if a is None else torch.utils.dlpack.from_dlpack(fast.export(a.block_until_ready(), stream=None))
            for a in arrays]
