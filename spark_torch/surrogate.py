"""Recognising snnTorch's built-in surrogates, so that their derivative can run inside the JAX kernel.

A ``spike_grad`` made by ``snntorch.surrogate.atan(alpha)``, ``fast_sigmoid(slope)`` or
``sigmoid(slope)`` is a closure ``inner(x)`` around its parameter. For those three, the layer can
*fuse* the surrogate: the kernel's reverse scan multiplies the spikes' cotangent by the same
derivative formula (:func:`spark_torch.kernel.surrogate_derivative`), so no ``x`` trace and no
torch-side surrogate ops are needed. Every other callable (custom surrogates, lambdas,
``autograd.Function.apply``) runs in PyTorch on ``x``, unchanged. Both paths give the same gradient
(tests/test_surrogate.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import snntorch.surrogate as _snn_surrogate
import torch

from .execution.shape_executor import has_no_data

#: snnTorch factory name -> name of the closure variable holding its parameter.
FUSABLE = {"atan": "alpha", "fast_sigmoid": "slope", "sigmoid": "slope"}
_FUNCTIONS = {"atan": _snn_surrogate.ATan, "fast_sigmoid": _snn_surrogate.FastSigmoid,
              "sigmoid": _snn_surrogate.Sigmoid}


class SnnTorchSurrogate:
    """A picklable ``snntorch.surrogate.<name>(param)``: calls the very same autograd Function.

    snnTorch's factories return local closures, which cannot be pickled (``torch.save(model)``,
    spawn-started DataLoader workers). ``IzhikevichSoma``'s default ``spike_grad`` is
    ``SnnTorchSurrogate("atan", 2.0)``, identical to snnTorch's default ``atan(alpha=2.0)``.
    """

    def __init__(self, name: str, param: float):
        if name not in _FUNCTIONS:
            raise ValueError(f"`name` (={name!r}) must be one of {tuple(_FUNCTIONS)}")
        self.name, self.param = name, float(param)

    def __call__(self, x):
        return _FUNCTIONS[self.name].apply(x, self.param)

    def __eq__(self, other):
        return isinstance(other, SnnTorchSurrogate) and (self.name, self.param) == (other.name, other.param)

    def __hash__(self):
        return hash((self.name, self.param))

    def __repr__(self):
        return f"SnnTorchSurrogate({self.name!r}, {self.param})"


def fused_surrogate(spike_grad: Callable) -> Optional[tuple[str, float]]:
    """``(name, parameter)`` if ``spike_grad`` is an unmodified snnTorch built-in we can fuse, else ``None``."""
    if isinstance(spike_grad, SnnTorchSurrogate):
        return spike_grad.name, spike_grad.param
    if getattr(spike_grad, "__module__", None) != "snntorch.surrogate":
        return None
    factory, _, rest = getattr(spike_grad, "__qualname__", "").partition(".")
    if rest != "<locals>.inner" or factory not in FUSABLE:
        return None
    code, closure = spike_grad.__code__, spike_grad.__closure__ or ()
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in closure)))
    value = cells.get(FUSABLE[factory])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return factory, float(value)


def emit_spikes(spikes: torch.Tensor, x: torch.Tensor, spike_grad, factor: torch.Tensor) -> torch.Tensor:
    """The layer's output spikes: the kernel's 0/1 ``spikes`` times ``factor`` (``graded_spikes_factor``),
    with the gradient of ``spike_grad`` at ``x`` (the surrogate's input, ``(v* − v_pk)/(v_pk − v_r)``).

    Straight-through: the value is ``spikes`` exactly (``s − s.detach()`` is 0), the gradient is
    ``spike_grad``'s. ``spike_grad=None``: the surrogate is fused into the kernel, whose spikes already
    carry that gradient.
    """
    if spike_grad is not None:
        surrogate = spike_grad(x)
        spikes = spikes + (surrogate - surrogate.detach())
    if not torch.compiler.is_compiling() and not factor.requires_grad and not has_no_data(spikes) \
            and float(factor) == 1.0:
        return spikes  # skip a [T, B, N] multiply by one
    return spikes * factor
