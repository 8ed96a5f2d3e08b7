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

#: snnTorch factory name -> name of the closure variable holding its parameter.
FUSABLE = {"atan": "alpha", "fast_sigmoid": "slope", "sigmoid": "slope"}


def fused_surrogate(spike_grad: Callable) -> Optional[tuple[str, float]]:
    """``(name, parameter)`` if ``spike_grad`` is an unmodified snnTorch built-in we can fuse, else ``None``."""
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
