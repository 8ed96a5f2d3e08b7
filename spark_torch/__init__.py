"""spark_torch: a fast, trainable Izhikevich (2003) spiking neuron for PyTorch, running in a JAX kernel.

The layer :class:`IzhikevichSoma` is a ``torch.nn.Module`` and an snnTorch drop-in; its configuration
:class:`IzhikevichSomaConfig` keeps the field names, defaults and reset semantics of the Spark
framework's ``IzhikevichSomaConfig``. See README.md for the equations and units.
"""

from ._version import __version__

import os as _os
import sys as _sys

# On small CPUs, torch's OpenMP workers spin-wait after every parallel op and steal the cores that
# JAX's kernel needs (the layer's calls then stall). OpenMP reads its wait
# policy once, when torch is first imported: if that has not happened yet, and the user has not chosen
# a policy, we choose PASSIVE (workers sleep instead of spinning). Nothing is changed otherwise.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# On a GPU, JAX's client reserves 75 % of the device's memory when it starts (at the first layer
# call), leaving torch a quarter of its own GPU. Unless the user chose a policy, or JAX's
# backends already started, JAX allocates on demand instead (tests/test_cuda.py measures it).
_jax_bridge = _sys.modules.get("jax._src.xla_bridge")
if not getattr(_jax_bridge, "_backends", None):
    _os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
del _jax_bridge

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
