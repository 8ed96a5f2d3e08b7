"""Allocation modes of :mod:`spark_torch.bench`: how the benchmark's process treats freed memory.

Every layer call returns fresh ``[T, B, N]`` tensors; whether their pages are still mapped from the
previous call (no page faults) or handed back to the OS and faulted in again depends on glibc's
``malloc`` settings and on the process's allocation history. Two modes:

* ``steady``: the process keeps freed memory mapped (:func:`spark_torch.tuning.keep_freed_memory_mapped`),
  as the ``spark-torch`` command line does: the steady state of a training loop in such a program;
* ``default``: the process changes no setting (glibc's defaults): what a program that never heard of
  :mod:`spark_torch.tuning` sees.

``--alloc-mode MODE`` runs this process in one mode. ``--alloc-modes steady,default`` runs the whole
timing once per mode, each in a fresh subprocess (``python -m spark_torch.bench ... --alloc-mode MODE``,
glibc's ``MALLOC_*`` variables removed from its environment), collects their results under
``results["alloc_modes"]`` and reports, per size, spark_seq's median time over the hand-fused anchor's
(:data:`ANCHOR`) in each mode. Without either flag the process applies
:func:`spark_torch.tuning.keep_freed_memory_by_default` (steady unless the environment opts out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..tuning import (GLIBC_MALLOC_ENV, KEEP_FREED_MEMORY_ENV, keep_freed_memory_by_default, keep_freed_memory_mapped,
                      kept_freed_memory_threshold)

ALLOC_MODES = ("steady", "default")
#: The contender the ratios are taken to: the threaded hand-fused C loop.
ANCHOR = "c_anchor"


def apply(mode) -> str:
    """Set this process's allocator for ``mode`` (``None``: the command line's default); returns the mode
    the process is in (``"steady"`` when freed memory is kept mapped, else ``"default"``)."""
    if mode == "steady":
        keep_freed_memory_mapped()
    elif mode is None:
        keep_freed_memory_by_default()
    return "steady" if kept_freed_memory_threshold() is not None else "default"


def child_env() -> dict:
    """The environment of a mode's subprocess: this one without glibc's ``MALLOC_*`` tunables and the
    opt-out variable (the mode alone decides), with this package first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_MALLOC_ENV and k != KEEP_FREED_MEMORY_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])
    return env


def run_modes(args, report=print) -> dict:
    """Time every mode of ``args.alloc_modes`` in its own subprocess (same options, ``--no-memory``);
    returns ``{mode: results}`` (a failed mode: ``{"error": ...}``)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="spark_torch_bench_modes_") as tmp:
        for mode in args.alloc_modes:
            path, log = Path(tmp) / f"{mode}.json", Path(tmp) / f"{mode}.stderr"
            cmd = [sys.executable, "-m", "spark_torch.bench", *args.argv, "--alloc-mode", mode, "--no-memory",
                   "--child-out", str(path)]
            report(f"allocation mode {mode}: {' '.join(cmd[1:])}")
            with log.open("w") as err, subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=err,
                                                        text=True) as child:
                for line in child.stdout:  # its progress, as it comes
                    report(f"  [{mode}] {line.rstrip()}")
            errors = log.read_text().strip().splitlines()
            if child.returncode == 0 and path.exists():
                out[mode] = json.loads(path.read_text())
            else:
                out[mode] = {"error": errors[-3:] or [f"exit status {child.returncode}"]}
                report(f"allocation mode {mode} failed: {out[mode]['error']}")
    return out


def ratios(by_mode: dict, subject="spark_seq", anchor=ANCHOR) -> list:
    """Per size and mode: ``{"size", "alloc_mode", "<timing mode>": {subject_ms, anchor_ms, ratio}}``."""
    rows = []
    for mode, res in by_mode.items():
        for rec in res.get("sizes", []):
            row = {"size": rec["size"], "alloc_mode": mode}
            for timing_mode, tm in rec["timings"].items():
                if subject in tm and anchor in tm:
                    a, b = tm[subject]["median_ms"], tm[anchor]["median_ms"]
                    row[timing_mode] = {"subject_ms": a, "anchor_ms": b, "ratio": a / b}
            rows.append(row)
    return sorted(rows, key=lambda r: (_size_order(by_mode, r["size"]), list(by_mode).index(r["alloc_mode"])))


def _size_order(by_mode: dict, size) -> int:
    """The position of ``size`` in the first mode that measured it (the run's order of sizes)."""
    for res in by_mode.values():
        sizes = [rec["size"] for rec in res.get("sizes", [])]
        if size in sizes:
            return sizes.index(size)
    return len(by_mode)


def ratio_lines(res: dict, subject="spark_seq", anchor=ANCHOR) -> list[str]:
    """The report's table of ``subject / anchor`` medians per size and allocation mode."""
    if "alloc_modes" not in res:
        return []
    modes = res["workload"]["modes"]
    lines = [f"\n== {subject} / {anchor} per allocation mode (median ms; ratio < 1: {subject} is faster) ==",
             "size".ljust(14) + "alloc".ljust(9) + "".join(
                 f"{m} {subject}".ljust(20) + f"{m} {anchor}".ljust(20) + "ratio".ljust(8) for m in modes)]
    for row in res["alloc_ratios"]:
        cells = "".join((f"{row[m]['subject_ms']:.3g}".ljust(20) + f"{row[m]['anchor_ms']:.3g}".ljust(20)
                         + f"{row[m]['ratio']:.2f}".ljust(8)) if m in row else "-".ljust(48) for m in modes)
        lines.append("x".join(map(str, row["size"])).ljust(14) + row["alloc_mode"].ljust(9) + cells)
    for mode, sub in res["alloc_modes"].items():
        if "error" in sub:
            lines.append(f"{mode}: failed: {sub['error']}")
    return lines
