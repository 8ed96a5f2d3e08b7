"""The route of a kernel call: the one place that decides which executor runs it.

======================================  ===========================================================
call                                    executor
======================================  ===========================================================
tensors without data (meta, fake)       :class:`~.shape_executor.ShapeExecutor` (shapes only)
CPU, native backend                     :class:`~.direct_executor.DirectExecutor` (the C loops on
                                        torch's memory, threads for large calls; bit-identical to the
                                        native kernel through JAX)
everything else                         :class:`~.jax_executor.JaxExecutor` (XLA or the native kernel
                                        through ``jax.ffi``: :func:`spark_torch.kernel.backend`)
======================================  ===========================================================

Which torch wrapper carries the executor is decided by :func:`spark_torch.execution.run`: the
``torch.library`` custom op while ``torch.compile`` traces (its implementation asks :func:`executor_for`
again when the compiled graph runs), else one ``autograd.Function``. Adding a way to run the kernel is
a new executor and a line here.
"""

from __future__ import annotations

import torch

from .. import kernel
from .call import KernelCall
from .direct_executor import DirectExecutor
from .jax_executor import JaxExecutor
from .shape_executor import ShapeExecutor, has_no_data

JAX = JaxExecutor()
DIRECT = DirectExecutor()
SHAPES = ShapeExecutor()


def executor_for(call: KernelCall, current: torch.Tensor):
    """The executor for ``call`` on ``current`` (module docstring); the decision reads only the call's facts."""
    if has_no_data(current):
        return SHAPES
    if current.device.type == "cpu" and current.numel() > 0 and kernel.backend() == "native":
        return DIRECT
    return JAX
