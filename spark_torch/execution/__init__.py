"""How the layer's kernel calls run: one route decision, one autograd node, executors behind one interface.

Data flow of a call (``IzhikevichSoma`` → :func:`run`)::

    run(call, current, v0, u0, params)            check_operands: one dtype, device, broadcastable shapes
      ├─ torch.compile tracing → custom_op         torch.library op: fake shapes, registered autograd
      └─ eager → route.executor_for(call, current) one decision: shape | direct | jax executor
             └─ KernelFunction (autograd.Function) forward/backward of that executor

Executors (same interface: ``forward(call, current, v0, u0, params, views, keep) -> (Outputs, Residuals)``
and ``backward(call, saved, cache, cotangents, needs, views, layout) -> grads``; ``keep``: :data:`.call.KEEP`,
``layout``: what the forward kept, :attr:`.call.Residuals.layout`):

* :class:`~.jax_executor.JaxExecutor` — DLPack, jitted JAX loops (XLA, and CUDA tensors);
* :class:`~.direct_executor.DirectExecutor` — the native kernel's C loops on torch's memory (every CPU call
  where the native kernel builds);
* :class:`~.shape_executor.ShapeExecutor` — meta/fake tensors: shapes only.

The kernel's numerics live in :mod:`spark_torch.kernel`; this package only moves tensors to it and back.
"""

from .call import Cotangents, KernelCall, Outputs, check_operands
from .custom_op import OP_NAMESPACE
from .function import KernelFunction, run
from .route import executor_for

__all__ = ["KernelCall", "Outputs", "Cotangents", "check_operands", "run", "executor_for", "KernelFunction",
           "OP_NAMESPACE"]
