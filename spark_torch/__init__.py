"""spark_torch: a fast, trainable Izhikevich (2003) spiking neuron for PyTorch, running in a JAX kernel.

The layer :class:`IzhikevichSoma` is a ``torch.nn.Module`` and an snnTorch drop-in; its configuration
:class:`IzhikevichSomaConfig` keeps the field names, defaults and reset semantics of the Spark
framework's ``IzhikevichSomaConfig``. See README.md for the equations and units.
"""

__version__ = "0.1.0"

from .config import IzhikevichSomaConfig
from .initializers import Constant, Initializer, Normal, Uniform
from .presets import PRESETS, heterogeneous_preset, preset
from .soma import IzhikevichSoma

__all__ = [
    "__version__",
    "IzhikevichSoma",
    "IzhikevichSomaConfig",
    "Initializer",
    "Constant",
    "Uniform",
    "Normal",
    "PRESETS",
    "preset",
    "heterogeneous_preset",
]
