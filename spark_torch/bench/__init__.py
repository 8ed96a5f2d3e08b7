"""The speed benchmark: ``python -m spark_torch.bench`` (or ``spark-torch bench``); ``--help`` lists the options.

:mod:`~spark_torch.bench.run` times the contenders side by side (:mod:`~spark_torch.bench.contenders`; the
yardsticks, hand-fused loops and the torch floor, in :mod:`~spark_torch.bench.anchors`; the shared workload
and base in :mod:`~spark_torch.bench.base`), in one allocation mode or in each (:mod:`~spark_torch.bench.alloc`),
with fresh-process memory probes (:mod:`~spark_torch.bench.memory`); :mod:`~spark_torch.bench.report` formats
and plots the results. Not part of the library's API.
"""

from .run import MODES, QUICK_SIZES, QUICK_SKIP, SIZES, main, make_input, parse_args, run

__all__ = ["MODES", "QUICK_SIZES", "QUICK_SKIP", "SIZES", "main", "make_input", "parse_args", "run"]
