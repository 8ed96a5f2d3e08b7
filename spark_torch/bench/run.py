r"""Side-by-side benchmark of trainable Izhikevich layers: ``python -m spark_torch.bench``.

On the CPU by default; ``--device cuda`` puts the input on the GPU and runs every contender that can
run there (the layer, the kernel called directly on JAX's GPU device, the PyTorch loops, snnTorch,
Norse, SpikingJelly); the hand-fused CPU anchors and the memory, thread and profile checks are then
skipped. Timed calls are bracketed by ``torch.cuda.synchronize()``.

Workload: RS neurons (a=0.02, b=0.2, c=-65, d=8; v_r=-65, v_pk=30 mV; euler, dt=1 ms), float32,
input ``I = LEVEL + NOISE·N(0,1)`` (drive units, ``R·I`` in mV/ms; seed 0) with ``LEVEL`` calibrated
once (:func:`calibrate`) so that the model fires ~34 Hz over T=100 ms. Surrogate: snnTorch
``fast_sigmoid(slope=25)`` on ``x = (v*-v_pk)/(v_pk-v_r)``. Modes: ``fwd`` (inference, no_grad) and
``fwdbwd`` (``loss = spikes.sum()``, or ``--loss weighted``; backward to the input).

Method: all contenders in one process; per size and mode, each is called once (its *first call*,
compile included, reported separately) and ``--warmup`` more times (excluded), then ``--rounds``
interleaved rounds (one call of each contender per round, in an order shuffled each round with a fixed
seed: a call runs slower after one that flushed the caches, and a rotation would give every contender
the same predecessor in every round). Reported: median, IQR and min/max in ms. A contender whose calls
are slow gets fewer rounds (``--budget-s`` per size and mode). Spike counts per neuron are checked
against the PyTorch eager reference: the same model in float32 may differ by rounding (±2 spikes per
1000 ms), so a neuron "disagrees" when it is off by more than ``max(2, 2·T/1000)`` spikes, and a
contender is flagged when more than 1 % of neurons do.

Peak extra memory of one forward+backward: :mod:`~spark_torch.bench.memory` (a fresh process per
contender). Allocation modes (``--alloc-mode``, ``--alloc-modes``): :mod:`~spark_torch.bench.alloc`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import alloc
from . import contenders as peers
from .base import LEVEL, NOISE, make_input
from .memory import memory_section, memprobe_main
from ..tuning import kept_freed_memory_threshold

SIZES = [(100, 32, 256), (100, 128, 1024), (500, 16, 128), (50, 256, 4096)]
QUICK_SIZES = [(20, 4, 32)]
MODES = ("fwd", "fwdbwd")
REFERENCE = "torch_eager"
QUICK_SKIP = ("torch_compile_loop", "torch_compile_step")  # their compile step does not fit a smoke test
HAND_FUSED = (alloc.ANCHOR, "numba_fused")  # the anchors: not peers
FLOOR = peers.TorchFloor.name  # what any torch layer pays besides its loops: a yardstick, not a peer


def calibrate(target_hz=34.0, T=100, B=16, N=128, noise=NOISE) -> tuple[float, float]:
    """Bisect the input level for ``target_hz`` with the eager reference; returns ``(level, rate_hz)``."""
    z = make_input(T, B, N, level=0.0, noise=1.0)
    lo, hi, rate = 0.0, 40.0, 0.0
    with torch.no_grad():
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            rate = peers.izh_loop(mid + noise * z).sum().item() / (B * N) / (T * peers.DT) * 1000.0
            lo, hi = (mid, hi) if rate < target_hz else (lo, mid)
    return mid, rate


def _stats(ts):
    a = np.asarray(ts) * 1e3
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3), "min_ms": float(a.min()),
            "max_ms": float(a.max()), "n": int(a.size), "times_ms": [round(float(x), 4) for x in a]}


def _no_sync():
    pass


def _timed(fn, sync=_no_sync):
    """Seconds for one call of ``fn``; ``sync`` (e.g. ``torch.cuda.synchronize``) waits for queued device
    work before the clock starts and before it stops (CUDA calls return before the GPU is done)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _count_check(counts: dict, T: int) -> dict:
    ref = counts.get(REFERENCE)
    tol = max(2, int(np.ceil(2 * T / 1000)))
    out = {}
    for name, n in counts.items():
        rec = {"total": int(n.sum()), "rate_hz": float(n.mean() / (T * peers.DT) * 1000.0)}
        cls = peers.BY_NAME[name]
        if ref is not None and name != REFERENCE and not cls.same_model.startswith("no"):
            d = np.abs(n - ref)
            frac = float((d > tol).mean())
            rec.update(max_abs_diff=int(d.max()), frac_neurons_beyond_tol=frac, tol=tol,
                       agrees=frac <= 0.01, same_model=cls.same_model)
        out[name] = rec
    return out


def _time_size(size, contenders, args, report) -> dict:
    T, B, N = size
    cur = make_input(T, B, N).to(args.device)
    sync = torch.cuda.synchronize if cur.is_cuda else _no_sync
    rec = {"size": list(size), "input_bytes": cur.numel() * cur.element_size(), "timings": {m: {} for m in args.modes},
           "first_call_s": {m: {} for m in args.modes}, "skipped": {}}
    active = {}
    for name, c in contenders.items():
        if name == "torch_compile_loop" and T > args.compile_loop_max_t:
            rec["skipped"][name] = f"T={T} > --compile-loop-max-t {args.compile_loop_max_t} (compile time)"
            continue
        if name.startswith("spark_step") and args.step_max_bn and B * N > args.step_max_bn:
            rec["skipped"][name] = f"B*N={B * N} > --step-max-bn {args.step_max_bn} (run time)"
            continue
        try:
            c.setup(cur)
            active[name] = c
        except Exception as e:  # noqa: BLE001  a failure is reported, never hidden
            rec["skipped"][name] = f"setup failed: {type(e).__name__}: {e}"
    counts = {}
    for mode in args.modes:
        calls, rounds = {}, {}
        for name, c in list(active.items()):
            fn = getattr(c, mode)
            try:
                first = _timed(fn, sync)
                warm = [_timed(fn, sync) for _ in range(args.warmup)]
            except Exception as e:  # noqa: BLE001
                rec["skipped"][name] = f"{mode} failed: {type(e).__name__}: {e}"
                del active[name]
                continue
            rec["first_call_s"][mode][name] = first
            per_call = min(warm) if warm else first
            calls[name] = fn
            rounds[name] = max(min(2, args.rounds), min(args.rounds, int(args.budget_s / max(per_call, 1e-6))))
        times = {n: [] for n in calls}
        names = list(calls)
        shuffle = random.Random(0)
        for _ in range(args.rounds):
            for name in shuffle.sample(names, len(names)):
                if len(times[name]) < rounds[name]:
                    times[name].append(_timed(calls[name], sync))
        for name, ts in times.items():
            rec["timings"][mode][name] = _stats(ts)
        report(f"  {size} {mode}: " + ", ".join(f"{n} {rec['timings'][mode][n]['median_ms']:.2f}" for n in names))
    for name, c in active.items():
        try:
            counts[name] = c.counts()
        except Exception as e:  # noqa: BLE001
            rec["skipped"][name] = f"counts failed: {e}"
    rec["spike_counts"] = _count_check(counts, T)
    rec["derived"] = _derived(rec, size)
    if args.threads and "spark_seq" in active and not cur.is_cuda:
        rec["threads"] = _thread_check(active, args)
    if args.profile and "spark_seq" in active and not cur.is_cuda:
        from .report import profile_spark
        rec["profile"] = profile_spark(active["spark_seq"], active.get("jax_direct"))
    return rec


def _derived(rec, size) -> dict:
    d = {}
    for mode, tm in rec["timings"].items():
        med = {n: s["median_ms"] for n, s in tm.items()}
        if "spark_seq" in med and "jax_direct" in med:
            d[f"bridge_overhead_{mode}"] = med["spark_seq"] / med["jax_direct"]
        anchors = [med[n] for n in HAND_FUSED if n in med]
        if "spark_seq" in med and anchors:  # the faster hand-fused loop
            d[f"vs_hand_fused_{mode}"] = med["spark_seq"] / min(anchors)
        if "spark_seq" in med and alloc.ANCHOR in med:
            d[f"vs_c_anchor_{mode}"] = med["spark_seq"] / med[alloc.ANCHOR]
        if FLOOR in med and alloc.ANCHOR in med:
            d[f"floor_vs_c_anchor_{mode}"] = med[FLOOR] / med[alloc.ANCHOR]
        if "spark_seq" in med and "spark_seq_xla" in med:
            d[f"xla_vs_native_{mode}"] = med["spark_seq_xla"] / med["spark_seq"]
        if "spark_seq" in med and REFERENCE in med:
            d[f"speedup_vs_eager_{mode}"] = med[REFERENCE] / med["spark_seq"]
        peer = {n: v for n, v in med.items()  # other libraries only: not this one's variants, not the anchors
                if not n.startswith(("spark_", "jax_direct")) and n not in (*HAND_FUSED, FLOOR)}
        if "spark_seq" in med and peer:
            best = min(peer, key=peer.get)
            d[f"fastest_peer_{mode}"] = best
            d[f"vs_fastest_peer_{mode}"] = med["spark_seq"] / peer[best]
        if "spark_step" in med and "snn_leaky" in med:
            d[f"step_vs_leaky_{mode}"] = med["spark_step"] / med["snn_leaky"]
    if "spark_seq" in rec["first_call_s"].get("fwdbwd", {}):
        d["spark_first_call_fwdbwd_s"] = rec["first_call_s"]["fwdbwd"]["spark_seq"]
    return d


def _thread_check(active, args) -> dict:
    """spark_seq (and jax_direct) fwd+bwd with torch.set_num_threads(1) vs (2), interleaved."""
    saved = torch.get_num_threads()
    names = [n for n in ("spark_seq", "jax_direct") if n in active]
    times = {f"{n}@{k}": [] for n in names for k in (1, 2)}
    try:
        for r in range(max(2, args.rounds)):
            for k in ((1, 2) if r % 2 == 0 else (2, 1)):
                torch.set_num_threads(k)
                for n in names:
                    times[f"{n}@{k}"].append(_timed(active[n].fwdbwd))
    finally:
        torch.set_num_threads(saved)
    return {key: _stats(ts[1:] if len(ts) > 2 else ts) for key, ts in times.items()}


def run(args, report=print) -> dict:
    """Time every selected contender at every size (and measure memory): the results dict behind
    ``bench.json`` and :func:`~spark_torch.bench.report.format_report`. ``report`` prints progress."""
    t_start = time.perf_counter()
    report(f"freed memory kept mapped below {kept_freed_memory_threshold()} bytes (spark_torch.tuning; "
           "None: glibc's default)")
    sizes = _sizes(args)
    results = {"meta": _meta(args), "workload": _workload(args), "contenders": {}, "sizes": [], "memory": []}
    report(f"spark_torch kernel backend: {results['meta']['kernel_backend']}")
    contenders = _set_up_contenders(args, results["contenders"], report)
    for size in sizes:
        report(f"size T,B,N = {size}")
        results["sizes"].append(_time_size(size, contenders, args, report))
        for name, c in contenders.items():  # notes may be refined during setup (e.g. jax_direct path)
            results["contenders"][name]["note"] = c.note or results["contenders"][name]["note"]
        _save_partial(results, args)
    names = [n for n in contenders if n in args.memory_contenders]
    results["memory"] = memory_section(names, sizes, args, report)
    results["meta"]["loadavg_end"] = list(os.getloadavg())
    results["meta"]["wall_s"] = time.perf_counter() - t_start
    return results


def run_alloc_modes(args, report=print) -> dict:
    """``--alloc-modes``: the timing of :func:`run` once per allocation mode, each in its own subprocess
    (:mod:`~spark_torch.bench.alloc`), then the memory probes; the modes' results under ``"alloc_modes"``,
    spark_seq over the anchor per size and mode under ``"alloc_ratios"``."""
    t_start = time.perf_counter()
    results = {"meta": _meta(args), "workload": _workload(args), "contenders": {}, "sizes": [], "memory": []}
    results["meta"]["alloc_mode"] = ",".join(args.alloc_modes) + " (a subprocess each)"
    by_mode = alloc.run_modes(args, report)
    ran = [r for r in by_mode.values() if "contenders" in r]
    results["contenders"] = ran[0]["contenders"] if ran else {}
    results.update(alloc_modes=by_mode, alloc_ratios=alloc.ratios(by_mode))
    names = [n for n, c in results["contenders"].items() if c["status"] == "ok" and n in args.memory_contenders]
    results["memory"] = memory_section(names, _sizes(args), args, report)
    results["meta"]["loadavg_end"] = list(os.getloadavg())
    results["meta"]["wall_s"] = time.perf_counter() - t_start
    return results


def _sizes(args):
    return QUICK_SIZES if args.quick and not args.sizes else (args.sizes or SIZES)


def _meta(args) -> dict:
    """The machine, the versions, the method's settings and the kernel backend of this run."""
    meta = {"device": args.device, "device_name": _device_name(args.device),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(), "argv": args.argv, "quick": args.quick,
            "kept_freed_memory_threshold": kept_freed_memory_threshold(),
            "alloc_mode": "steady" if kept_freed_memory_threshold() is not None else "default",
            "rounds": args.rounds, "warmup": args.warmup, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_start": list(os.getloadavg())}
    try:
        import jax
        meta["jax"] = jax.__version__
    except Exception:  # noqa: BLE001
        pass
    from .. import kernel
    meta["kernel_backend"] = kernel.backend()  # what spark_seq, spark_step and jax_direct run
    return meta


def _workload(args) -> dict:
    return {"neuron": "RS a=0.02 b=0.2 c=-65 d=8, v_r=-65, v_pk=30, euler, dt=1 ms", "dtype": "float32",
            "input": f"I = {LEVEL} + {NOISE}*N(0,1) mV/ms (R*I), seed 0; ~34 Hz at T=100",
            "surrogate": "fast_sigmoid(slope=25) on x=(v*-v_pk)/(v_pk-v_r)",
            "loss": "spikes.sum()" if args.loss == "sum" else "(spikes*w).sum(), w~U(0,1)",
            "modes": list(args.modes)}


def _set_up_contenders(args, info_by_name: dict, report) -> dict:
    """Instantiate every selected contender that can run here; ``info_by_name`` gets each one's label,
    status (``"ok"`` or ``"skipped"``, with the reason) and note. Returns the runnable ones by name."""
    contenders = {}
    for cls in peers.ALL:
        info = {"label": cls.label, "same_model": cls.same_model, "status": "ok", "note": cls.note}
        if cls.name not in args.contenders:
            by_quick = " (--quick)" if args.quick and cls.name in QUICK_SKIP else ""
            info.update(status="skipped", reason="not selected" + by_quick)
        elif args.device not in cls.devices:
            info.update(status="skipped", reason=f"runs on {', '.join(cls.devices)} only (--device {args.device})")
        else:
            try:
                contenders[cls.name] = cls(loss=args.loss)
                info["note"] = contenders[cls.name].note or cls.note
            except peers.Unavailable as e:
                info.update(status="skipped", reason=str(e))
        info_by_name[cls.name] = info
        if info["status"] == "skipped":
            report(f"skipped {cls.name}: {info['reason']}")
    return contenders


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def _save_partial(results, args):
    """Write what is measured so far (a long run that is stopped keeps its finished sizes)."""
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench.partial.json").write_text(json.dumps(results, indent=1))


def _parse_sizes(text):
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s] if text else None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m spark_torch.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny size, 2 rounds, no torch.compile")
    p.add_argument("--sizes", type=_parse_sizes, default=None, help="e.g. 100x32x256,500x16x128")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 7; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first (default 2; quick 1)")
    p.add_argument("--budget-s", type=float, default=20.0, help="max timed seconds per contender, size and mode")
    p.add_argument("--contenders", default=None, help=f"comma list of {','.join(peers.BY_NAME)}")
    p.add_argument("--skip", default="", help="comma list of contenders to leave out")
    p.add_argument("--loss", choices=("sum", "weighted"), default="sum")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the input lives and the contenders run (cuda: CPU-only anchors and the memory, "
                        "thread and profile checks are skipped)")
    p.add_argument("--compile-loop-max-t", type=int, default=100, help="largest T for torch.compile of the whole loop")
    p.add_argument("--step-max-bn", type=int, default=None, help="skip spark_step where B*N is larger (slow loop)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--memory-sizes", type=_parse_sizes, default=None, help="default 100x128x1024 (quick: its size)")
    p.add_argument("--memory-contenders", default=None, help="default: all timed (quick: spark_seq,torch_eager)")
    p.add_argument("--memprobe-timeout", type=float, default=600.0)
    p.add_argument("--no-threads", dest="threads", action="store_false", help="skip torch threads 1 vs 2 check")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the spark_seq time breakdown")
    p.add_argument("--out", default=None, help="directory for bench.json, bench.txt (and bench.png with --plot)")
    p.add_argument("--plot", action="store_true")
    p.add_argument("--alloc-mode", choices=alloc.ALLOC_MODES, default=None,
                   help="this process's allocator: steady (freed memory kept mapped) or default (glibc's); "
                        "unset: steady unless SPARK_TORCH_KEEP_FREED_MEMORY=0 (spark_torch.bench.alloc)")
    p.add_argument("--alloc-modes", default=None,
                   help="e.g. steady,default: time once per mode, each in its own subprocess, and report "
                        f"spark_seq / {alloc.ANCHOR} per size and mode")
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)  # a mode's subprocess: its results JSON
    p.add_argument("--memprobe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.argv = list(argv)
    a.modes = tuple(m for m in a.modes.split(",") if m)
    if any(m not in MODES for m in a.modes):
        p.error(f"--modes must be a subset of {MODES}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    a.rounds = a.rounds or (2 if a.quick else 7)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    default = [n for n in peers.BY_NAME if not (a.quick and n in QUICK_SKIP)]
    a.contenders = [n.strip() for n in a.contenders.split(",")] if a.contenders else default
    a.contenders = [n for n in a.contenders if n not in a.skip.split(",")]
    unknown = [n for n in a.contenders if n not in peers.BY_NAME]
    if unknown:
        p.error(f"unknown contenders {unknown}; choose from {list(peers.BY_NAME)}")
    mc = a.memory_contenders or ("spark_seq,torch_eager" if a.quick else ",".join(a.contenders))
    a.memory_contenders = [n.strip() for n in mc.split(",")]
    a.alloc_modes = [m.strip() for m in a.alloc_modes.split(",") if m.strip()] if a.alloc_modes else None
    if a.alloc_modes and any(m not in alloc.ALLOC_MODES for m in a.alloc_modes):
        p.error(f"--alloc-modes must be a subset of {alloc.ALLOC_MODES}")
    if a.quick:
        a.threads = a.threads and False
    return a


def main(argv=None) -> dict:
    """CLI entry (also ``spark_torch.cli bench``): runs, prints the tables, writes ``--out``; returns the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    mode = alloc.apply(args.alloc_mode)  # the allocator setting of this process (spark_torch.bench.alloc)
    if args.alloc_mode and mode != args.alloc_mode:  # e.g. `spark-torch bench`: its process set it already
        print(f"note: --alloc-mode {args.alloc_mode} asked, but this process runs in mode {mode} (set before the "
              "benchmark started); --alloc-modes runs each mode in a fresh process", file=sys.stderr)
    if args.memprobe:
        res = memprobe_main(args.memprobe, tuple(int(v) for v in args.size.split("x")), args.loss)
        print(json.dumps(res))
        return res
    from .report import format_report, plot
    report = lambda s: print(s, flush=True)  # noqa: E731
    if args.child_out:  # one allocation mode's subprocess: results to the parent (which reports them), no files
        args.out = None
        results = run(args, report=report)
        Path(args.child_out).write_text(json.dumps(results))
        return results
    results = run_alloc_modes(args, report) if args.alloc_modes else run(args, report=report)
    text = format_report(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(results, indent=1))
        (out / "bench.txt").write_text(text)
        if args.plot:
            try:
                plot(results, out / "bench.png")
            except ImportError as e:
                print(f"no plot: {e}")
    return results
