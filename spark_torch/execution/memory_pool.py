"""Pooled CPU memory for the kernel's large outputs: fresh tensors without fresh page faults.

Why. A layer call returns fresh ``[T, B, N]`` tensors every call. glibc serves each one above its mmap
threshold (which rises with the blocks freed, to at most 32 MiB on 64-bit Linux) with a new mapping and
unmaps it on free, so every call writes to untouched memory and pays a page fault per 4 KiB page; below
it, a heap trim can have the same effect. The native library keeps a pool of such blocks (``izhikevich_memory.h``) and
hands them to torch through DLPack; nothing process-wide (``mallopt``, environment) is changed.

Data flow of :func:`empty`::

    SparkTorchPoolTensor(ndim, shape, dtype_code)   C: take cached memory (or mmap some), wrap it in a
        -> DLManagedTensor*                          DLManagedTensor whose deleter gives it back
    PyCapsule_New(pointer, "dltensor")               the DLPack hand-off object
    torch._C._from_dlpack(capsule) -> Tensor         torch owns the DLManagedTensor from here on
    ... the tensor (and every view of it) dies       torch calls the deleter: the memory returns to the
                                                     pool, ready for the next requests

Policy (:func:`stats`, :func:`release_cached_memory`): a tensor's memory is 2 MiB aligned and a multiple of
2 MiB (transparent huge pages where the kernel offers them in ``madvise`` mode), so it occupies less than
2 MiB more than its size. The cache is a set of free address ranges: a request takes the smallest that
holds it (the rest of a larger one stays cached), and freed memory merges with its free neighbours, so
calls of different layouts or lengths reuse each other's memory. The pool never holds more bytes, in use
plus cached, than the most bytes in use at once so far (a new mapping unmaps just the cached bytes over
that), so a training loop's peak memory is that of its live tensors (in 2 MiB units), as without the pool.
Requests under :data:`POOLED_BYTES` go to ``torch.empty`` (:func:`new_buffer`): glibc's heap serves those
from memory it keeps, and rounding to 2 MiB would cost them the most.

The pool is per process and thread-safe; a forked child inherits a consistent copy of it.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Callable, NamedTuple, Optional

import torch

__all__ = ["POOLED_BYTES", "PoolBinding", "bind", "empty", "new_buffer", "stats", "release_cached_memory"]

#: Bytes from which :func:`new_buffer` takes pooled memory (1 MiB); smaller buffers use ``torch.empty``.
POOLED_BYTES = 1 << 20
#: The most dimensions a pooled tensor may have.
MAX_DIMS = 8
#: The library's dtype codes (``SparkTorchPoolTensor``'s ``dtype_code``).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.uint8: 2, torch.bool: 3}

_SYMBOLS = ("SparkTorchPoolTensor", "SparkTorchPoolTrim", "SparkTorchPoolStats")
_ERROR_BYTES = 512
_STATS_FIELDS = ("in_use_bytes", "cached_bytes", "mapped_blocks_total", "reuses_total")
_SHAPE_TYPES = tuple(ctypes.c_int64 * n for n in range(MAX_DIMS + 1))  # index: ndim
_CAPSULE_NAME = b"dltensor"
_INT64_MAX = (1 << 63) - 1
_from_dlpack = getattr(torch._C, "_from_dlpack", None) or torch.utils.dlpack.from_dlpack


# PyCapsule_New(pointer, name, destructor) and PyCapsule_IsValid(capsule, name), called with the GIL held.
# Own function objects: setting argtypes on ctypes.pythonapi's shared ones would change them for everyone.
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi))
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))


class _DLManagedTensorHead(ctypes.Structure):
    """The DLManagedTensor's fields up to its deleter (DLPack ABI; 64-bit layout), to call the deleter
    from Python when torch refused the capsule."""

    _fields_ = [("data", ctypes.c_void_p), ("device", ctypes.c_int32 * 2), ("ndim", ctypes.c_int32),
                ("dtype", ctypes.c_uint8 * 4), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("byte_offset", ctypes.c_uint64), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.CFUNCTYPE(None, ctypes.c_void_p))]


class PoolBinding(NamedTuple):
    """The pool's C functions in a loaded library, with their ctypes signatures set.

    * ``tensor(ndim, shape, dtype_code, error, error_size) -> DLManagedTensor* | None``
    * ``trim() -> None``
    * ``stats(out4) -> None``: in_use_bytes, cached_bytes, mapped_blocks_total, reuses_total
    """

    tensor: Callable[..., Optional[int]]
    trim: Callable[[], None]
    stats: Callable[[ctypes.Array], None]


_bindings: dict[ctypes.CDLL, PoolBinding] = {}  # by library handle (compared by identity)
_bind_lock = threading.Lock()
_errors = threading.local()  # .buffer: this thread's error message buffer


def bind(handle: ctypes.CDLL) -> PoolBinding:
    """The pool functions of ``handle`` (a library that includes ``izhikevich_memory.h``), their
    argument and result types set; cached per handle. Raises :class:`AttributeError` naming the missing
    symbol when the library was built without the pool."""
    binding = _bindings.get(handle)
    if binding is not None:
        return binding
    with _bind_lock:
        if handle in _bindings:
            return _bindings[handle]
        tensor, trim, stats_ = (getattr(handle, name) for name in _SYMBOLS)
        tensor.restype = ctypes.c_void_p
        tensor.argtypes = (ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_char_p,
                           ctypes.c_int64)
        trim.restype, trim.argtypes = None, ()
        stats_.restype, stats_.argtypes = None, (ctypes.POINTER(ctypes.c_int64),)
        binding = _bindings[handle] = PoolBinding(tensor, trim, stats_)
        return binding


def _error_buffer() -> ctypes.Array:
    buffer = getattr(_errors, "buffer", None)
    if buffer is None:
        buffer = _errors.buffer = ctypes.create_string_buffer(_ERROR_BYTES)
    return buffer


def _check_request(shape, dtype: torch.dtype) -> None:
    """Raises the error for a request that the fast path of :func:`empty` cannot pass to C."""
    if dtype not in DTYPE_CODES:
        names = ", ".join(str(d) for d in DTYPE_CODES)
        raise TypeError(f"`dtype` (={dtype}) must be one of {names}")
    if not 1 <= len(shape) <= MAX_DIMS:
        raise ValueError(f"`shape` (={tuple(shape)}) must have 1 to {MAX_DIMS} dimensions, not {len(shape)}")
    for i, size in enumerate(shape):
        if size > _INT64_MAX:  # ctypes would wrap it silently
            raise ValueError(f"`shape[{i}]` (={size}) must be < 2**63")


def empty(shape: tuple[int, ...], dtype: torch.dtype, handle: ctypes.CDLL) -> torch.Tensor:
    """An uninitialized, contiguous CPU tensor of ``shape`` (1 to :data:`MAX_DIMS` dimensions, each in
    ``[0, 2**63)``, their product times the item size within int64, as for ``torch.empty``) and ``dtype``
    (float32, float64, uint8 or bool) on pooled memory of the library ``handle``.

    It is an ordinary tensor (autograd, views, in-place ops, ``torch.save``, ``.numpy()``) whose storage,
    like ``torch.from_numpy``'s, cannot be resized (``resize_`` to more elements raises). When its storage is
    freed, its block returns to the pool. Raises :class:`TypeError` for another dtype, :class:`ValueError`
    for a bad shape (the message names it) and :class:`MemoryError` when no memory can be mapped.
    """
    tensor_fn = (_bindings.get(handle) or bind(handle)).tensor
    code = DTYPE_CODES.get(dtype)
    ndim = len(shape)
    if code is None or not 1 <= ndim <= MAX_DIMS or max(shape) > _INT64_MAX:
        _check_request(shape, dtype)
    error = _error_buffer()
    pointer = tensor_fn(ndim, _SHAPE_TYPES[ndim](*shape), code, error, _ERROR_BYTES)
    if not pointer:
        message = error.value.decode(errors="replace")
        raise (MemoryError if message.startswith("out of memory") else ValueError)(message)
    capsule = None
    try:
        capsule = _capsule_new(pointer, _CAPSULE_NAME, None)
        return _from_dlpack(capsule)  # renames the capsule "used_dltensor": torch owns the DLManagedTensor
    except BaseException:
        if capsule is None or _capsule_is_valid(capsule, _CAPSULE_NAME):  # not consumed: still ours
            _DLManagedTensorHead.from_address(pointer).deleter(pointer)
        raise


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, handle: ctypes.CDLL | None) -> torch.Tensor:
    """An uninitialized contiguous CPU tensor of ``shape`` and ``dtype``: pooled (:func:`empty`) from
    :data:`POOLED_BYTES` bytes on when ``handle`` (the native library) is given and the dtype is one the
    pool serves, else ``torch.empty``."""
    if handle is not None and dtype in DTYPE_CODES and 1 <= len(shape) <= MAX_DIMS:
        n_bytes = dtype.itemsize
        for size in shape:
            n_bytes *= size
        if n_bytes >= POOLED_BYTES:
            return empty(shape, dtype, handle)
    return torch.empty(shape, dtype=dtype)


def _native_handle() -> ctypes.CDLL:
    from ..kernel import native  # loaded on demand: the pool lives in the native library

    return native.load().handle


def stats(handle: Optional[ctypes.CDLL] = None) -> dict[str, int]:
    """The pool's counters (the pool is per process; ``handle``: the library that holds it, by default the
    native kernel's, :func:`spark_torch.kernel.native.load`):

    * ``in_use_bytes``: bytes of the memory behind live pooled tensors (each a multiple of 2 MiB);
    * ``cached_bytes``: bytes kept mapped for reuse (never more than the most bytes in use at once, since
      the process started or the last :func:`release_cached_memory`, minus the bytes in use now);
    * ``mapped_blocks_total``: blocks mapped from the system (``mmap`` calls) since the process started;
    * ``reuses_total``: requests served from cached memory (a free range, split if larger) since the
      process started.
    """
    out = (ctypes.c_int64 * len(_STATS_FIELDS))()
    bind(handle or _native_handle()).stats(out)
    return dict(zip(_STATS_FIELDS, out))


def release_cached_memory(handle: Optional[ctypes.CDLL] = None) -> None:
    """Returns all cached memory to the system (as ``torch.cuda.empty_cache()`` does for the GPU): the
    memory of live tensors stays. The bound on cached memory restarts from the bytes in use now.
    ``handle``: as for :func:`stats`."""
    bind(handle or _native_handle()).trim()
