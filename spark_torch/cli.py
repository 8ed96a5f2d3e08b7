"""``spark-torch`` / ``python -m spark_torch``: demo, patterns, bench and compare subcommands.

* ``demo``: train the digits network with IzhikevichSoma, then with ``snn.Leaky``; print a table
  (test accuracy, spike rates, wall time); write ``training_curves.png`` and ``demo_results.json``.
* ``patterns``: the seven Fig. 2 classes at 100 pA for 1000 ms; write ``patterns.png`` and
  ``patterns.json`` (spike counts and times).
* ``bench``: delegates to ``spark_torch.bench.main(args)`` when that module exists.
* ``compare``: Izhikevich against snnTorch's neurons on three tasks under one protocol
  (:mod:`spark_torch.compare`); print a table; write ``compare_results.json`` and ``comparison.png``.

Errors in flags or values print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import tuning

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message (see prog --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .demo import TrainConfig

    parser = _Parser(prog="spark-torch", description="spark_torch: Izhikevich (2003) neurons for PyTorch/snnTorch.")
    parser.add_argument("--version", action="version", version=f"spark_torch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,patterns,bench,compare}", required=True)
    d = TrainConfig()

    demo = sub.add_parser("demo", help="train IzhikevichSoma and snn.Leaky on scikit-learn digits",
                          description="Train nn.Linear(64,H) -> neuron -> nn.Linear(H,10) -> neuron on "
                          "scikit-learn's digits (rate coded), first with IzhikevichSoma, then with snn.Leaky; "
                          "print a comparison and write training_curves.png and demo_results.json to --out.")
    demo.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    demo.add_argument("--steps", type=_positive_int, default=d.num_steps,
                      help=f"time steps per image (rate coding num_steps, default {d.num_steps})")
    demo.add_argument("--seed", type=_non_negative_int, default=d.seed, help=f"random seed (default {d.seed})")
    demo.add_argument("--hidden", type=_positive_int, default=d.hidden, help=f"hidden neurons (default {d.hidden})")
    demo.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                      help=f"minibatch size (default {d.batch_size})")
    demo.add_argument("--form", choices=("auto", "sequential", "loop"), default="auto",
                      help="network form: auto = Izhikevich with sequence=True (one kernel call per layer), "
                      "Leaky as nn.Sequential; sequential = both nn.Sequential stepped per time step; "
                      "loop = both as the explicit-state tutorial loop (default auto)")
    demo.add_argument("--threads", type=_positive_int, default=d.num_threads,
                      help=f"torch intra-op threads while training (default {d.num_threads}: torch and JAX "
                      "threads stall each other on small CPUs)")
    demo.add_argument("--out", type=Path, default=Path("spark_torch_demo"), help="output folder (default ./spark_torch_demo)")
    demo.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")

    pat = sub.add_parser("patterns", help="plot the seven Izhikevich (2003) Fig. 2 firing patterns",
                         description="Drive each Fig. 2 preset with a constant current and write patterns.png "
                         "(membrane traces and a raster) and patterns.json (spike counts and times) to --out.")
    pat.add_argument("--current", type=float, default=100.0, help="constant input current in pA (default 100)")
    pat.add_argument("--duration", type=float, default=1000.0, help="simulated time in ms (default 1000)")
    pat.add_argument("--dt", type=float, default=1.0, help="integration step in ms (default 1)")
    pat.add_argument("--window", type=float, default=300.0, help="ms of membrane trace shown per panel (default 300)")
    pat.add_argument("--out", type=Path, default=Path("spark_torch_patterns"), help="output folder (default ./spark_torch_patterns)")

    bench = sub.add_parser("bench", help="speed benchmark (spark_torch.bench), if installed",
                           description="Run spark_torch.bench.main(args) with the remaining arguments.")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to spark_torch.bench")
    _add_compare_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    from .compare.neurons import NEURON_NAMES
    from .compare.protocol import CompareConfig
    from .compare.tasks import TASK_NAMES

    full, quick = CompareConfig(), CompareConfig.quick()

    cmp = sub.add_parser("compare", help="Izhikevich vs snnTorch neurons on digits, randman and memory tasks",
                         description="Train input -> Linear -> neuron -> Linear -> neuron with each neuron on each "
                         "task under one protocol (input gain chosen on a validation split, then several seeds); "
                         "print a table and write compare_results.json and comparison.png to --out.")
    cmp.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=list(TASK_NAMES), metavar="TASK",
                     help=f"tasks to run, from {', '.join(TASK_NAMES)} (default: all)")
    cmp.add_argument("--neurons", nargs="+", choices=NEURON_NAMES, default=list(NEURON_NAMES), metavar="NEURON",
                     help=f"neurons to compare, from {', '.join(NEURON_NAMES)} (default: all)")
    cmp.add_argument("--seeds", type=_positive_int, default=None,
                     help=f"training seeds per task and neuron (default {full.seeds}; {quick.seeds} with --quick)")
    cmp.add_argument("--epochs", type=_positive_int, default=None,
                     help=f"training epochs per run (default {full.settings.epochs}; {quick.settings.epochs} "
                     "with --quick)")
    cmp.add_argument("--quick", action="store_true",
                     help=f"a short run: {quick.seeds} seeds, {quick.settings.epochs} epochs, at most "
                     f"{quick.settings.max_train} training samples per task")
    cmp.add_argument("--threads", type=_positive_int, default=1,
                     help="torch intra-op threads while training (default 1)")
    cmp.add_argument("--out", type=Path, default=Path("spark_torch_compare"),
                     help="output folder (default ./spark_torch_compare)")
    cmp.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 bad flags or values)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tuning.keep_freed_memory_by_default()  # this program's own process: opt in (spark_torch.tuning)
    if argv[:1] == ["bench"] and _bench_available():  # every later argument, --help included, is bench's
        return _run_bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a one-line argparse error (2)
        return int(exc.code or 0)
    command = {"demo": _demo, "patterns": _patterns, "bench": lambda a: _run_bench(a.args),
               "compare": _compare}[args.command]
    try:
        return command(args)
    except ValueError as exc:
        print(f"spark-torch {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    from .demo import TrainConfig, load_digits_data, plot_training_curves, train

    configs = [TrainConfig(kind=kind, form=args.form, hidden=args.hidden, num_steps=args.steps, epochs=args.epochs,
                           batch_size=args.batch_size, seed=args.seed, num_threads=args.threads).validate()
               for kind in ("izhikevich", "leaky")]
    args.out.mkdir(parents=True, exist_ok=True)
    print(_kernel_line())
    data = load_digits_data(seed=args.seed)
    print(f"digits: {len(data.y_train)} train / {len(data.y_test)} test images, {args.steps} steps, "
          f"{args.epochs} epochs, hidden {args.hidden}, torch threads {args.threads}")
    results = [train(cfg, data, progress=not args.no_progress) for cfg in configs]
    print(_table(results))
    png, js = args.out / "training_curves.png", args.out / "demo_results.json"
    plot_training_curves(results, png)
    js.write_text(json.dumps({r.config.kind: r.to_dict() for r in results}, indent=2) + "\n")
    print(f"wrote {png} and {js}")
    return 0


def _kernel_line() -> str:
    """Which kernel backend runs (building the native one on first use), and its one-time build time."""
    started = time.perf_counter()
    from . import kernel

    name = kernel.backend()
    if name != "native":
        return "kernel: XLA loops (the native kernel is unavailable; see the warning above)"
    from .kernel import native

    library = native.load()
    how = (f"built in {library.build_seconds:.1f} s, once" if library.built_here
           else f"cached, loaded in {time.perf_counter() - started:.1f} s")
    return f"kernel: native ({how}; {library.path})"


def _table(results) -> str:
    rows = [("neuron", "form", "test acc", "hidden rate", "output rate", "wall time")]
    for r in results:
        hidden_rate, output_rate = list(r.spike_rates.values())
        rows.append((r.config.kind, r.form, f"{r.final_test_accuracy:.1%}", f"{hidden_rate:.3f}",
                     f"{output_rate:.3f}", f"{r.wall_time_s:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(rates: spikes per neuron per time step on the test set)"


def _patterns(args) -> int:
    from .patterns import plot_patterns, simulate_presets

    traces = simulate_presets(current_pA=args.current, duration_ms=args.duration, dt=args.dt)
    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "patterns.png", args.out / "patterns.json"
    plot_patterns(traces, png, window_ms=args.window)
    summary = {"current_pA": args.current, "duration_ms": args.duration, "dt_ms": args.dt,
               "spike_counts": {t.name: t.spike_count for t in traces},
               "spike_times_ms": {t.name: t.spike_times_ms.tolist() for t in traces}}
    js.write_text(json.dumps(summary, indent=2) + "\n")
    print("  ".join(f"{t.name} {t.spike_count}" for t in traces) + f"  (spikes / {args.duration:g} ms)")
    print(f"wrote {png} and {js}")
    return 0


def _compare(args) -> int:
    import dataclasses

    from .compare import CompareConfig, format_matrix, format_table, run_comparison, write_results

    config = CompareConfig.quick() if args.quick else CompareConfig()
    settings = config.settings if args.epochs is None else dataclasses.replace(config.settings, epochs=args.epochs)
    config = dataclasses.replace(config, tasks=tuple(args.tasks), neurons=tuple(args.neurons), settings=settings,
                                 seeds=config.seeds if args.seeds is None else args.seeds,
                                 num_threads=args.threads).validate()
    print(f"compare: tasks {', '.join(config.tasks)} | neurons {', '.join(config.neurons)} | {config.seeds} "
          f"seeds | {settings.epochs} epochs | torch threads {args.threads}")
    results = run_comparison(config, progress=not args.no_progress)
    print(format_table(results) + "\n\n" + format_matrix(results))
    json_path, png_path = write_results(results, args.out)
    print(f"wrote {json_path} and {png_path} ({results['wall_seconds']:.0f} s)")
    return 0


def _bench_available() -> bool:
    return importlib.util.find_spec("spark_torch.bench") is not None


def _run_bench(argv: list) -> int:
    if not _bench_available():
        print("spark-torch bench: the benchmark is not available yet (no spark_torch.bench module)")
        return 0
    from . import bench

    try:
        status = bench.main(argv)
    except SystemExit as exc:  # bench's own argparse (--help, bad flags)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return status if isinstance(status, int) else 0
