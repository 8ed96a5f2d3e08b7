"""Memory probes of :mod:`spark_torch.bench` (not part of the library's API).

Peak extra memory of one forward+backward is measured per contender in a fresh subprocess
(``python -m spark_torch.bench --memprobe NAME --size TxBxN``): glibc is told to serve allocations
>= 128 KiB by mmap (``MALLOC_MMAP_THRESHOLD_``, which also disables its dynamic threshold) so that
freed buffers leave the resident set; after two warm-up calls (compilation) and ``gc.collect()`` the
resident set is read (VmRSS), the peak is reset (``/proc/self/clear_refs`` ← 5), one fwd+bwd runs,
and ``VmHWM − VmRSS_before`` is reported, also as a multiple of the input tensor's bytes. It includes
the gradient w.r.t. the input (1×). Allocator caches that keep pages mapped would hide memory: the
native kernel's buffer pool (:mod:`spark_torch.execution.memory_pool`) is emptied before the baseline is
read, so its blocks count in the peak. The method is Linux-only (else reported as unavailable).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import contenders as peers
from .base import make_input


def memprobe_main(name, size, loss) -> dict:
    """Run inside a fresh process: peak extra resident memory of one fwd+bwd (see module docs)."""
    T, B, N = size
    cur = make_input(T, B, N)
    c = peers.BY_NAME[name](loss=loss)
    c.setup(cur)
    t0 = time.perf_counter()
    c.fwdbwd()
    first = time.perf_counter() - t0
    c.fwdbwd()
    if isinstance(getattr(c, "x", None), torch.Tensor):
        c.x.grad = None  # the call's input gradient counts in its peak, not in the baseline
    gc.collect()
    time.sleep(0.5)  # JAX may release a finished call's buffers from its own threads, a little later
    gc.collect()
    _release_pooled_memory()

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)
    base = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    c.fwdbwd()
    peak = status("VmHWM")
    in_bytes = cur.numel() * cur.element_size()
    return {"contender": name, "size": list(size), "extra_bytes": peak - base, "input_bytes": in_bytes,
            "extra_x_input": (peak - base) / in_bytes, "first_call_fresh_process_s": first,
            "method": "VmHWM - VmRSS after warm-up, MALLOC_MMAP_THRESHOLD_=131072, fresh process"}


def _release_pooled_memory() -> None:
    """Unmap the native kernel's cached buffers (where it builds), as ``torch.cuda.empty_cache()`` would."""
    from ..execution import memory_pool
    from ..kernel import native

    try:
        memory_pool.release_cached_memory()
    except native.Unavailable:
        pass


def _memory(names, size, args, report) -> list:
    out = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", SPARK_TORCH_KEEP_FREED_MEMORY="0", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    for name in names:
        cmd = [sys.executable, "-m", "spark_torch.bench", "--memprobe", name, "--size", "x".join(map(str, size)),
               "--loss", args.loss]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.memprobe_timeout)
            res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                "contender": name, "size": list(size), "error": p.stderr.strip().splitlines()[-1:] or ["failed"]}
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            res = {"contender": name, "size": list(size), "error": [f"{type(e).__name__}: {e}"]}
        report(f"  memory {name} {size}: " + (f"{res['extra_x_input']:.2f}x input" if "extra_x_input" in res
                                               else f"error {res['error']}"))
        out.append(res)
    return out


def memory_section(names, sizes, args, report) -> list:
    """The fresh-process probes of ``names`` (``--memory``, CPU only) at ``--memory-sizes`` (default: 100x128x1024;
    with ``--quick`` the first of ``sizes``)."""
    if not args.memory:
        return []
    if args.device != "cpu":
        report(f"memory not measured: the probe reads the process's resident set (CPU memory), not {args.device}")
        return []
    out = []
    for size in args.memory_sizes or ([sizes[0]] if args.quick else [(100, 128, 1024)]):
        out += _memory(names, size, args, report)
    return out
