r"""``spark-torch compare``: Izhikevich against snnTorch's neurons, under one protocol, on three tasks.

The library side of the command, usable from a notebook::

    from spark_torch.compare import CompareConfig, run_comparison, write_results, format_table

    results = run_comparison(CompareConfig.quick(tasks=("memory",)), progress=True)
    print(format_table(results))
    write_results(results, "compare_out")       # compare_results.json, comparison.png

Modules:

* :mod:`.tasks` — ``digits`` (rate code), ``randman`` (spike timing, :mod:`.randman`: Zenke & Vogels,
  *Neural Computation* 33(4), 2021), ``memory`` (evidence accumulation over a delay, :mod:`.memory`);
* :mod:`.neurons` — the seven neurons and their input-gain conventions;
* :mod:`.training` — the shared network, loss, optimiser and evaluation;
* :mod:`.protocol` — gain sweep on the validation split, seeds, summary;
* :mod:`.report` — JSON, Markdown table and figure.
"""

from .neurons import NEURON_NAMES, NEURONS, NeuronSpec
from .protocol import GAIN_FACTORS, PROTOCOL, CompareConfig, run_comparison, select_gain, summarize
from .report import format_matrix, format_table, plot_comparison, write_results
from .tasks import TASK_NAMES, SpikeTask, make_task
from .training import SpikingNet, TrainSettings, evaluate, fit

__all__ = [
    "TASK_NAMES", "NEURON_NAMES", "NEURONS", "NeuronSpec", "SpikeTask", "make_task",
    "TrainSettings", "SpikingNet", "fit", "evaluate",
    "GAIN_FACTORS", "PROTOCOL", "CompareConfig", "run_comparison", "select_gain", "summarize",
    "format_table", "format_matrix", "plot_comparison", "write_results",
]
