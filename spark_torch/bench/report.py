"""Tables, plot and the spark_torch time breakdown for :mod:`spark_torch.bench` (not library API)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .alloc import ratio_lines


def _median_time(fn, n=5):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def profile_spark(spark, jax_direct=None, iters=3) -> dict:
    """Where spark_seq's forward+backward time goes at the contender's size (ms per call).

    ``op_fwd_ms``/``op_bwd_ms``: the custom ops (``*izhikevich_scan*``) as seen by ``torch.profiler``
    (JAX call + DLPack + plumbing); ``kernel_*_ms``: the same jitted JAX functions called directly;
    ``torch_rest_ms``: everything else in the wall time (surrogate and straight-through ops, membrane
    normalisation, input check, loss, autograd engine) within the profiled call time
    ``profiled_wall_ms`` (``wall_fwdbwd_ms`` is unprofiled); ``top_ops``: self CPU time per call.
    """
    from torch.profiler import ProfilerActivity, profile, record_function
    wall = _median_time(spark.fwdbwd)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            with record_function("bench_fwdbwd_call"):
                spark.fwdbwd()
    ev = prof.key_averages()
    prof_wall = sum(e.cpu_time_total for e in ev if e.key == "bench_fwdbwd_call") / iters / 1e3
    # A custom op shows up as nested events of the same name (autograd wrapper + kernel): key_averages sums
    # both, so take the mean per event (one outer call per fwd+bwd assumed).
    # Eager calls go through spark_torch.ops._EagerScan (an autograd.Function), compiled ones through the op.
    def op_ms(match):
        hits = [e for e in ev if match(e.key)]
        return sum(e.cpu_time_total / max(e.count, 1) for e in hits) / 1e3
    op_fwd = op_ms(lambda k: k.endswith("::izhikevich_scan") or k == "_EagerScan")
    op_bwd = op_ms(lambda k: k.endswith("::izhikevich_scan_backward") or k == "_EagerScanBackward")
    top = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    top = [e for e in top if e.key != "bench_fwdbwd_call"]
    out = {"wall_fwdbwd_ms": wall, "profiled_wall_ms": prof_wall, "op_fwd_ms": op_fwd, "op_bwd_ms": op_bwd,
           "torch_rest_ms": prof_wall - op_fwd - op_bwd,
           "top_ops": [{"op": e.key, "self_ms_per_call": e.self_cpu_time_total / iters / 1e3,
                        "calls_per_call": e.count / iters} for e in top]}
    if jax_direct is not None and jax_direct.path.startswith("simulate_forward"):
        import jax
        traj = jax.block_until_ready(jax_direct._fwd())
        out["kernel_fwd_ms"] = _median_time(lambda: jax.block_until_ready(jax_direct._fwd()))
        out["kernel_bwd_ms"] = _median_time(lambda: jax.block_until_ready(jax_direct._bwd(traj)))
        out["bridge_fwd_ms"] = op_fwd - out["kernel_fwd_ms"]
        out["bridge_bwd_ms"] = op_bwd - out["kernel_bwd_ms"]
    return out


def _cell(s):
    return f"{s['median_ms']:.2f} [{s['q1_ms']:.2f}-{s['q3_ms']:.2f}]"


def _size(rec):
    return "x".join(map(str, rec["size"]))


def format_report(res: dict) -> str:
    """The plain-text report of one benchmark run (what ``bench.txt`` holds): one section per table; with
    ``--alloc-modes``, each mode's report, then spark_seq over the anchor per size and mode, then memory."""
    if "alloc_modes" in res:
        lines = _header_lines(res)
        for mode, sub in res["alloc_modes"].items():
            lines += [f"\n######## allocation mode {mode} ########"]
            lines += [format_report(sub)] if "sizes" in sub else [f"failed: {sub.get('error')}"]
        lines += ratio_lines(res)
        lines += _memory_lines(res)
        return "\n".join(lines)
    names = [n for n, c in res["contenders"].items() if c["status"] == "ok"]
    lines = _header_lines(res)
    for mode in res["workload"]["modes"]:
        lines += _timing_lines(res, mode, names)
    lines += _first_call_lines(res, names)
    lines += _spike_count_lines(res)
    lines += _derived_lines(res)
    lines += _thread_lines(res)
    lines += _profile_lines(res)
    lines += _memory_lines(res)
    lines += _contender_lines(res)
    return "\n".join(lines)


def _header_lines(res: dict) -> list[str]:
    """The machine, versions and method settings, and the workload."""
    m, w = res["meta"], res["workload"]
    return [f"spark_torch benchmark  device {m.get('device', 'cpu')} ({m.get('device_name', '-')})  "
            f"torch {m['torch']}  jax {m.get('jax', '-')}  cpus {m['cpu_count']}  "
            f"torch threads {m['torch_num_threads']}  kernel {m.get('kernel_backend', '-')}  rounds {m['rounds']} "
            f"warmup {m['warmup']}  alloc {m.get('alloc_mode', '-')}  {m['time']}  "
            f"load avg {m['loadavg_start'][0]:.1f} -> {m.get('loadavg_end', [float('nan')])[0]:.1f}",
            f"workload: {w['neuron']}; {w['dtype']}; {w['input']}; {w['surrogate']}; loss {w['loss']}"]


def _timing_lines(res: dict, mode: str, names: list[str]) -> list[str]:
    """Median [IQR] per size (rows) and contender (columns) for one mode."""
    lines = [f"\n== {mode}: median [IQR] ms per call ==", "size".ljust(14) + "".join(n[:22].ljust(24) for n in names)]
    for rec in res["sizes"]:
        tm = rec["timings"].get(mode, {})
        lines.append(_size(rec).ljust(14) + "".join((_cell(tm[n]) if n in tm else "skipped").ljust(24) for n in names))
    return lines


def _first_call_lines(res: dict, names: list[str]) -> list[str]:
    lines = ["\n== first call (s; compile included) fwd / fwdbwd =="]
    for rec in res["sizes"]:
        fc = rec["first_call_s"]
        lines.append(_size(rec).ljust(14) + "  ".join(
            f"{n} {fc.get('fwd', {}).get(n, float('nan')):.2f}/{fc.get('fwdbwd', {}).get(n, float('nan')):.2f}"
            for n in names if n in fc.get("fwdbwd", fc.get("fwd", {}))))
    return lines


def _spike_count_lines(res: dict) -> list[str]:
    lines = ["\n== spike counts (rate Hz; max |diff| per neuron vs torch_eager; agrees?) =="]
    for rec in res["sizes"]:
        parts = []
        for n, c in rec["spike_counts"].items():
            extra = ""
            if "agrees" in c:
                extra = f" d{c['max_abs_diff']} {'ok' if c['agrees'] else 'DISAGREES'}"
            parts.append(f"{n} {c['rate_hz']:.1f}{extra}")
        lines.append(_size(rec).ljust(14) + "; ".join(parts))
    return lines


def _derived_lines(res: dict) -> list[str]:
    lines = ["\n== derived (spark_seq ratios; <1 is faster) =="]
    for rec in res["sizes"]:
        lines.append(_size(rec).ljust(14) + "  ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec["derived"].items()))
        for k, why in rec.get("skipped", {}).items():
            lines.append(" " * 14 + f"skipped {k}: {why}")
    return lines


def _thread_lines(res: dict) -> list[str]:
    if not any("threads" in r for r in res["sizes"]):
        return []
    lines = ["\n== torch.set_num_threads 1 vs 2, fwdbwd median ms =="]
    for rec in res["sizes"]:
        if "threads" in rec:
            lines.append(_size(rec).ljust(14) + "  ".join(f"{k} {_cell(s)}" for k, s in rec["threads"].items()))
    return lines


def _profile_lines(res: dict) -> list[str]:
    if not any("profile" in r for r in res["sizes"]):
        return []
    lines = ["\n== spark_seq fwdbwd breakdown (ms per call) =="]
    keys = ("wall_fwdbwd_ms", "profiled_wall_ms", "op_fwd_ms", "kernel_fwd_ms", "op_bwd_ms", "kernel_bwd_ms",
            "torch_rest_ms")
    for rec in res["sizes"]:
        p = rec.get("profile")
        if p:
            lines.append(_size(rec).ljust(14) + "  ".join(f"{k[:-3]} {p[k]:.2f}" for k in keys if k in p))
            lines.append(" " * 14 + "top self: " + ", ".join(
                f"{o['op']} {o['self_ms_per_call']:.2f}" for o in p["top_ops"][:6]))
    return lines


def _memory_lines(res: dict) -> list[str]:
    if not res["memory"]:
        return []
    lines = ["\n== peak extra memory of one fwd+bwd (fresh process; x input bytes) =="]
    for r in res["memory"]:
        val = (f"{r['extra_x_input']:.2f}x ({r['extra_bytes'] / 2**20:.1f} MiB; input "
               f"{r['input_bytes'] / 2**20:.1f} MiB; first call {r['first_call_fresh_process_s']:.2f} s)"
               if "extra_x_input" in r else f"error: {r['error']}")
        lines.append(f"{'x'.join(map(str, r['size']))}".ljust(14) + f"{r['contender']:<20}{val}")
    return lines


def _contender_lines(res: dict) -> list[str]:
    lines = ["\n== contenders =="]
    for n, c in res["contenders"].items():
        lines.append(f"{n:<20}{c['status']:<8}same model: {c['same_model']:<28}"
                     f"{c.get('reason', '') if c['status'] != 'ok' else c['note']}")
    return lines


def plot(results, path=None, mode="fwdbwd"):
    """Grouped bars (log scale) of median time per contender and size, IQR as error bars; PNG if ``path``.

    ``results`` is what :func:`spark_torch.bench.main` returns, or the path of its ``bench.json``.
    Returns the matplotlib figure (for notebooks).
    """
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    if "alloc_modes" in results:  # --alloc-modes: the first mode that ran
        results = next(r for r in results["alloc_modes"].values() if "sizes" in r)
    sizes = results["sizes"]
    names = [n for n, c in results["contenders"].items() if c["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(sizes)), 4.5))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        xs, med, lo, hi = [], [], [], []
        for j, rec in enumerate(sizes):
            s = rec["timings"].get(mode, {}).get(n)
            if s:
                xs.append(j + (i - len(names) / 2 + 0.5) * width)
                med.append(s["median_ms"])
                lo.append(s["median_ms"] - s["q1_ms"])
                hi.append(s["q3_ms"] - s["median_ms"])
        if xs:
            ax.bar(xs, med, width, yerr=[lo, hi], label=results["contenders"][n]["label"])
    ax.set_xticks(range(len(sizes)), ["x".join(map(str, r["size"])) for r in sizes])
    ax.set_yscale("log")
    ax.set_ylabel(f"{mode} time per call (ms, median, IQR)")
    ax.set_xlabel("T x B x N")
    ax.set_title(f"Izhikevich RS layer, float32, {mode}, torch threads {results['meta']['torch_num_threads']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
