"""Process settings that make large, repeated layer calls faster on CPU: glibc's handling of freed memory.

Why: glibc's ``malloc`` serves large blocks (≥ 128 KiB, its threshold growing up to 32 MiB) with
``mmap`` and gives them back to the OS when freed, so a loop that allocates fresh large tensors touches
brand-new pages every iteration and pays a page fault per 4 KiB. The layer's own large outputs do not
need this setting: the native kernel's direct calls take them from a pool that keeps freed blocks
mapped (:mod:`spark_torch.execution.memory_pool`). It still helps the rest of a program (torch's own
tensors, the XLA backend's outputs); the benchmark runs each allocator mode in its own process.

``import spark_torch`` changes none of this: it is the host program's allocator. A program opts in with
:func:`keep_freed_memory_mapped` (blocks below 1 GiB are served from the main heap, for every thread: JAX
allocates its outputs on its own threads, and freed memory up to 1 GiB stays mapped for reuse), or with
:func:`keep_freed_memory_by_default`, which the ``spark-torch`` command line (demo, patterns, benchmark)
calls, and which does nothing where the environment opts out:

* ``SPARK_TORCH_KEEP_FREED_MEMORY`` set to ``0``, ``false``, ``no`` or ``off``, or
* any of glibc's own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
  ``MALLOC_MMAP_MAX_``, ``MALLOC_ARENA_MAX`` is set (you chose an allocator policy; it is left alone).

The price: the process's resident set does not shrink after a peak (call :func:`release_freed_memory`
to hand free heap memory back). Where the C library is not glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Set to ``"0"`` (or ``false``, ``no``, ``off``) to keep glibc's default handling of freed memory when ``spark_torch`` is imported.
KEEP_FREED_MEMORY_ENV = "SPARK_TORCH_KEEP_FREED_MEMORY"
#: glibc's own tunables: if any is set, the import-time setting is skipped.
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                    "MALLOC_ARENA_MAX")

_active_threshold: Optional[int] = None  # what keep_freed_memory_mapped last set, if it succeeded


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def keep_freed_memory_mapped(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks below ``threshold_bytes`` mapped and reuse them.

    Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (see ``mallopt(3)``) to ``threshold_bytes`` for
    the whole process: blocks smaller than that come from the heap, and up to that much free memory at
    the top of the heap is kept instead of returned to the OS. Also sets ``M_ARENA_MAX`` to 1, so that
    threads created from now on allocate from the main heap: glibc's per-thread heaps are limited to
    64 MiB, so a larger block allocated on a thread (e.g. a JAX output at 50×256×4096) would be
    ``mmap``-ed and faulted in on every call whatever the threshold. Equivalent to
    starting Python with ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_ARENA_MAX=1``. Returns ``False`` (and changes nothing) where the C library is not glibc.
    """
    global _active_threshold
    if not isinstance(threshold_bytes, int) or isinstance(threshold_bytes, bool) or not 0 < threshold_bytes < 2**31:
        raise ValueError(f"`threshold_bytes` (={threshold_bytes!r}) must be an int in (0, 2**31)")
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    ok = all(mallopt(option, value) for option, value in (
        (_M_MMAP_THRESHOLD, threshold_bytes), (_M_TRIM_THRESHOLD, threshold_bytes), (_M_ARENA_MAX, 1)))
    _active_threshold = threshold_bytes if ok else _active_threshold
    return ok


#: Values of an on/off environment variable that mean "off" (compared case-insensitively, stripped).
OFF_VALUES = ("0", "false", "no", "off")


def env_flag_off(name: str) -> bool:
    """Whether the environment variable ``name`` is set to one of :data:`OFF_VALUES`."""
    return os.environ.get(name, "").strip().lower() in OFF_VALUES


def keep_freed_memory_by_default() -> bool:
    """Apply :func:`keep_freed_memory_mapped` unless the environment opts out (module docstring).

    Called by the ``spark-torch`` command line and ``python -m spark_torch.bench``; returns whether the
    setting was applied.
    """
    if env_flag_off(KEEP_FREED_MEMORY_ENV) or any(k in os.environ for k in GLIBC_MALLOC_ENV):
        return False
    return keep_freed_memory_mapped()


def kept_freed_memory_threshold() -> Optional[int]:
    """The threshold (bytes) that this process's last successful :func:`keep_freed_memory_mapped` set,
    or ``None`` if it never ran (opted out, or not glibc)."""
    return _active_threshold


def release_freed_memory() -> bool:
    """Return free heap memory to the OS now (glibc ``malloc_trim(0)``), e.g. after a large evaluation.

    Returns whether any memory was released (``False`` where the C library is not glibc).
    """
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False
