"""Opt-in process settings that make large, repeated layer calls faster on CPU.

Nothing here runs on import; each function says exactly what it changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory_mapped(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks below ``threshold_bytes`` mapped and reuse them.

    By default glibc returns large freed blocks (≥ 128 KiB–32 MiB) to the OS, so every call that
    allocates fresh ``[T, B, N]`` outputs (the JAX kernel's, torch's) pays the page faults again
    (~0.2 ms per MiB here; BRIDGE_NOTES items 14 and 17). This sets ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` to ``threshold_bytes`` for the whole process: faster repeated calls, at the
    price of a resident set that does not shrink after peaks. Equivalent to starting Python with
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set. Returns ``False`` (and changes
    nothing) where the C library is not glibc.
    """
    if not isinstance(threshold_bytes, int) or isinstance(threshold_bytes, bool) or not 0 < threshold_bytes < 2**31:
        raise ValueError(f"`threshold_bytes` (={threshold_bytes!r}) must be an int in (0, 2**31)")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
