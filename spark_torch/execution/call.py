"""What one kernel call is: its static facts (:class:`KernelCall`), its tensors, and the one check they pass.

Tensors of a call (units: current pA, v mV, u mV/ms; shapes with ``state = [*batch, *units]``):

* ``current``: ``[T, *state]`` for a sequence, ``[*state]`` for one step (``KernelCall.step``);
* ``v0``, ``u0``: the initial state, broadcastable to ``state``;
* ``params``: the seven model fields in :data:`PARAMETERS` order, each broadcastable to ``state``.

:func:`check_operands` is the single check every route runs before any executor sees the tensors: one
floating dtype (float32 or float64) and one device for all of them, and shapes that broadcast to the
state. The executors rely on it; the direct executor checks each address it hands to C again.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ..kernel.model import IzhikevichParams

PARAMETERS = IzhikevichParams._fields
FLOAT_DTYPES = (torch.float32, torch.float64)


class KernelCall(NamedTuple):
    """The static facts of a kernel call.

    ``dt`` (ms) and ``scheme`` (``"euler"`` or ``"izhikevich2003"``); ``surrogate``: ``""`` (the spikes carry
    no gradient; ``x`` is returned for a torch-side surrogate) or a fused snnTorch surrogate's name with its
    parameter ``surrogate_param`` (the spikes' cotangent becomes dL/dx inside the reverse loop; no ``x``);
    ``recovery_checkpoints``: keep ``u`` only every ~√T steps for the backward; ``step``: ``current`` is one
    step ``[*state]`` (state in and out at that shape) rather than a sequence ``[T, *state]``;
    ``check_finite``: raise ``ValueError`` (:func:`nonfinite_current`) when ``current`` holds a NaN or ±Inf —
    found by the native kernel's forward in its own pass over the input (the direct executor), else by one
    reduction before the call.
    """

    dt: float
    scheme: str
    surrogate: str = ""
    surrogate_param: float = 0.0
    recovery_checkpoints: bool = False
    step: bool = False
    check_finite: bool = False

    def state_shape(self, current: torch.Tensor) -> torch.Size:
        return current.shape if self.step else current.shape[1:]


def nonfinite_current() -> ValueError:
    """The error of a call whose ``current`` holds a NaN or ±Inf (:attr:`KernelCall.check_finite`)."""
    return ValueError("`cur` contains NaN or Inf; pass finite currents (or check_finite=False)")


class Outputs(NamedTuple):
    """A call's results at ``current``'s shape: 0/1 ``spikes`` (the input's dtype), ``x = (v* − v_pk)/(v_pk − v_r)``
    (``None`` with a fused surrogate), the post-step ``v`` and ``u``, and ``mem = (v − v_r)/(v_pk − v_r)``.

    ``v``/``u`` of a sequence are traces ``[T, *state]`` — or ``[1, *state]`` where only the final state was
    kept (no backward to serve; ``u`` with recovery checkpoints). ``u_checkpoints``: ``u`` every ``K`` steps,
    ``[ceil(T_buf/K), *state]``, with recovery checkpoints only (else ``None``)."""

    spikes: torch.Tensor
    x: Optional[torch.Tensor]
    v: torch.Tensor
    u: torch.Tensor
    mem: torch.Tensor
    u_checkpoints: Optional[torch.Tensor] = None


class Cotangents(NamedTuple):
    """The cotangents of :class:`Outputs` the reverse loop takes (``None``: no gradient flows there); ``spikes``
    only with a fused surrogate."""

    x: Optional[torch.Tensor]
    v: Optional[torch.Tensor]
    u: Optional[torch.Tensor]
    spikes: Optional[torch.Tensor]
    mem: Optional[torch.Tensor]


def check_operands(call: KernelCall, current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params) -> None:
    """Raise ``TypeError``/``ValueError`` naming the operand unless every tensor has ``current``'s floating
    dtype and device and broadcasts to the state shape (see the module docstring). The fields are checked
    before the state, which the layer derives from them."""
    dtype, device = current.dtype, current.device
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"`cur` has dtype {dtype}; the kernel computes in float32 or float64")
    if len(params) != len(PARAMETERS):
        raise ValueError(f"expected the {len(PARAMETERS)} fields {PARAMETERS}, got {len(params)} tensors")
    state = call.state_shape(current)
    for name, tensor in (*zip(PARAMETERS, params), ("v0", v0), ("u0", u0)):
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype is not dtype:
            raise TypeError(f"`{name}` has dtype {tensor.dtype}, but `cur` has dtype {dtype}: every field of the "
                            f"layer and its state must have the input's dtype; convert the layer (e.g. "
                            f"layer.to({dtype})) or the input")
        if tensor.device != device:
            raise ValueError(f"`{name}` is on {tensor.device}, but `cur` is on {device}: move the layer or the input")
        shape = tensor.shape
        if shape != state[len(state) - len(shape):] and (len(shape) > len(state) or any(
                d != 1 and d != s for d, s in zip(reversed(shape), reversed(state)))):
            raise ValueError(f"`{name}` has shape {tuple(shape)}, which does not broadcast to the state "
                             f"shape {tuple(state)}")


#: What an executor's forward may keep for the backward (``keep``): nothing (``v``, ``u`` are the final
#: state), the ``v``/``u`` traces and spikes (the layout the custom op saves), or the least the executor
#: needs (the direct executor then returns the final state; the JAX executor keeps traces).
KEEP = ("final_state", "state_traces", "least")


class Residuals(NamedTuple):
    """What a forward leaves for its backward: ``tensors`` (saved with ``save_for_backward``: current, v0, u0,
    the seven fields, then what ``layout`` names, e.g. spikes, v and u — or u's checkpoints), an optional
    ``cache`` the executor may use instead of re-reading them (``None`` where the caller can only keep
    tensors), and the ``layout`` (a name of ``spark_torch.kernel.native.interface.RESIDUALS``) to hand back
    to the executor's backward."""

    tensors: tuple
    cache: object = None
    layout: str = "state_traces"


def differentiable(current: torch.Tensor, v0: torch.Tensor, u0: torch.Tensor, params) -> bool:
    """Whether autograd will differentiate the call: grad mode on and any tensor requiring grad."""
    return torch.is_grad_enabled() and (current.requires_grad or v0.requires_grad or u0.requires_grad
                                        or any(p.requires_grad for p in params))


def sum_to(grad: Optional[torch.Tensor], shape: torch.Size) -> Optional[torch.Tensor]:
    """A per-neuron gradient reduced to the shape of the tensor it belongs to (``None`` stays ``None``)."""
    if grad is None or grad.shape == shape:
        return grad
    return grad.sum_to_size(shape)


def input_gradients(needs: tuple, grads: tuple, inputs: tuple) -> list:
    """Each gradient summed to its input's shape where ``needs`` asks for it, else ``None``."""
    return [sum_to(g, t.shape) if need else None for need, g, t in zip(needs, grads, inputs)]


def uniform_as_scalar(grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A broadcast (all strides 0) gradient, e.g. from ``y.sum()``, as its one value (0-d)."""
    if grad is None or grad.dim() == 0 or any(grad.stride()):
        return grad
    if grad.device.type == "cpu":
        return grad.as_strided((), ())
    return grad.new_empty(()).copy_(grad.as_strided((), ()))


def compact_cotangent(grad: Optional[torch.Tensor], step: bool) -> Optional[torch.Tensor]:
    """The smallest form of a cotangent: 0-d when uniform (``y.sum()``); for a sequence, one row ``[*state]``
    when constant over time (stride 0 along ``T``, as the gradient of ``y.sum(0)``); else unchanged."""
    grad = uniform_as_scalar(grad)
    if step or grad is None or grad.dim() < 2 or grad.stride(0) != 0:
        return grad
    return grad[0]
