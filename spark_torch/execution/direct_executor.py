"""The direct executor: the native kernel's C loops on torch's memory, without XLA's runtime or DLPack.

Through JAX, every kernel call pays XLA's executable launch and the DLPack crossings of its operands and
results before any arithmetic, which an snnTorch step loop pays at every time step. For CPU calls
(:mod:`.route`) the layer therefore calls the same compiled loops through their plain C entry points
(:func:`spark_torch.kernel.native.entry_points`): the results are allocated here, the loops write them in
place; calls above ``interface.PARALLEL_WORK`` neuron-steps share their blocks of neurons among at most
``torch.get_num_threads()`` threads (a team of torch's own OpenMP threads, see :func:`_entry_points`; else the
library's own pool). Blocks are independent and both ways run
the same checks and loops, so spikes, membranes, state and the gradients of the input and initial state
are bit-identical to the JAX executor's on the native backend, whatever the thread count; gradients of
fields that broadcast over the batch are summed by torch here (by XLA there), equal to rounding.

What a sequence keeps for its backward (``keep="least"``, :class:`DirectExecutor`) is less than the v and
u traces JAX keeps: the unclipped membrane of every step (from which the reverse loop derives each step's
spike and pre-step v, ``v' = s ? c : clip(raw)``) and u every :data:`RAW_TRACE_EVERY` steps (u between them
is recomputed by the forward's own arithmetic, without the input). With ``checkpoint_recovery``: v and u
every ~√T steps, the steps in between recomputed from the input. Either way the reverse loop sees the
forward's values bit for bit, so the gradients are those of the traces.

Memory safety: :func:`_buffer` is the only place an address is taken for C, and it checks the tensor's
dtype, device, contiguity and element count (a periodic operand: a count that divides the neurons); the
C side checks the counts again and writes nothing when one is wrong. Non-contiguous inputs are copied
explicitly (:func:`spark_torch.bridge.explicit_copy`, counted).
"""

from __future__ import annotations

import array
import ctypes
import glob
import os
import threading
from typing import Optional

import torch

from .. import bridge
from . import memory_pool
from ..kernel import native
from ..kernel.native import interface
from ..kernel import recovery_checkpoint_interval
from .call import (PARAMETERS, Cotangents, KernelCall, Outputs, Residuals, compact_cotangent, input_gradients,
                   nonfinite_current, uniform_as_scalar)

_ERROR_SIZE = 512
_DTYPE_CODES = {torch.float32: interface.dtype_code("float32"), torch.float64: interface.dtype_code("float64")}


_ABSENT = (0, 0)
_NONE_VIEW = (None, _ABSENT)  # an absent operand or result: (tensor, View)


def _buffer(tensor: Optional[torch.Tensor], name: str, dtype: torch.dtype, count: Optional[int] = None,
            period_of: Optional[int] = None) -> tuple[int, int]:
    """``(address, element count)`` of ``tensor`` for C (``(0, 0)`` for ``None``: absent), after checking that
    C may read or write it: ``dtype``, on the CPU, contiguous, and ``count`` elements exactly (or, with
    ``period_of=m``, a count that divides ``m``). The layout of an ``izh::View``."""
    if tensor is None:
        return _ABSENT
    n = tensor.numel()
    if tensor.dtype != dtype or not tensor.is_cpu or not tensor.is_contiguous():
        raise TypeError(f"`{name}` ({tensor.dtype}, {tensor.device}, contiguous={tensor.is_contiguous()}) cannot "
                        f"be handed to the native kernel: it needs a contiguous {dtype} CPU tensor")
    if (count is not None and n != count) or (period_of is not None and (n == 0 or period_of % n)):
        rule = f"{count} elements" if count is not None else f"a number of elements that divides {period_of}"
        raise ValueError(f"`{name}` has {n} elements; the native kernel needs {rule}")
    return tensor.data_ptr(), n


def _periodic(tensor: torch.Tensor, state_shape: torch.Size) -> torch.Tensor:
    """``tensor`` (broadcastable to ``state_shape``) as a periodic operand: itself when it is contiguous and
    its shape (leading 1s aside) is a suffix of ``state_shape`` (e.g. a per-unit field: period
    ``prod(units)``), else a contiguous copy at ``state_shape``."""
    shape = tensor.shape
    while shape and shape[0] == 1:
        shape = shape[1:]
    if tensor.is_contiguous() and shape == state_shape[len(state_shape) - len(shape):]:
        return tensor
    return tensor.expand(state_shape).contiguous()


def _still_valid(model: Optional[list]) -> bool:
    """Whether the forward's model views still point to their tensors' memory (``tensor.data = ...`` between
    forward and backward would leave a dangling address)."""
    return model is not None and all(t.data_ptr() == view[0] and t.numel() == view[1] for t, view in model)


def _model_views(v0, u0, params, state_shape: torch.Size, m: int, views: Optional[dict] = None) -> list:
    """``(tensor, view)`` of the initial state and the seven fields as periodic operands. With ``views`` (the
    layer's dict), a field's view is kept while the field is the same tensor, at the same address, in the
    same state shape (an optimizer's in-place step changes its values, not its memory)."""
    model = [(t, _buffer(t, name, v0.dtype, period_of=m)) for t, name in
             ((_periodic(v0, state_shape), "v0"), (_periodic(u0, state_shape), "u0"))]
    for field, name in zip(params, PARAMETERS):
        kept = views.get(("direct", name)) if views is not None else None
        if kept is not None and kept[0] is field and kept[1] == state_shape and kept[3] == (field.data_ptr(),
                                                                                       field.numel()):
            model.append(kept[2:])
            continue
        operand = _periodic(field, state_shape)
        entry = (operand, _buffer(operand, name, v0.dtype, period_of=m))
        model.append(entry)
        if views is not None and operand is field:
            views[("direct", name)] = (field, state_shape, *entry)
    return model


def torch_parallel_region() -> Optional[int]:
    """The address of ``GOMP_parallel`` in the OpenMP runtime that torch's CPU operations run on (``None``
    where torch uses none): the definition ``libtorch_cpu`` itself binds, looked up among the libraries
    already loaded (nothing new is loaded)."""
    if not torch.backends.openmp.is_available():
        return None
    for path in sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*"))):
        try:  # dlsym on libtorch_cpu's handle searches it, then its dependencies: torch's own runtime
            region = getattr(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW), "GOMP_parallel")
        except (OSError, AttributeError):
            continue
        return ctypes.cast(region, ctypes.c_void_p).value
    return None


_host_threads_chosen = False


def _entry_points() -> interface.EntryPoints:
    """The native kernel's direct entry points; on first use, its threads are set to run on torch's OpenMP
    threads (:func:`torch_parallel_region`): after each of its operations those keep spinning for a while,
    and on a small machine a second pool of threads would compete with them for the cores. (A child forked
    from this process runs no kernel call: JAX has started here, see ``function.check_not_forked``.)"""
    global _host_threads_chosen
    entry_points = native.entry_points()
    if not _host_threads_chosen:
        entry_points.use_host_threads(torch_parallel_region())
        _host_threads_chosen = True
    return entry_points


_errors = threading.local()
_step_counts: dict = {}


def _step_count(n_steps: int) -> torch.Tensor:
    """``n_steps`` as a 1-element int32 tensor, made once per value (read-only for C)."""
    tensor = _step_counts.get(n_steps)
    if tensor is None:
        tensor = _step_counts[n_steps] = torch.tensor([n_steps], dtype=torch.int32)
    return tensor


def _call(function, attributes: interface.Attributes, operands: list, results: list, what: str) -> None:
    """Run a C entry point on ``(tensor, View)`` pairs; the tensors stay referenced until it returns."""
    # izh::View {address, count} pairs
    in_views = array.array("q", [n for _, view in operands for n in view])
    out_views = array.array("q", [n for _, view in results for n in view])
    error = getattr(_errors, "buffer", None)
    if error is None:
        error = _errors.buffer = ctypes.create_string_buffer(_ERROR_SIZE)
    if function(ctypes.byref(attributes), in_views.buffer_info()[0], len(operands), out_views.buffer_info()[0],
                len(results), error, _ERROR_SIZE):
        raise RuntimeError(f"the native kernel rejected the operands of a {what} call: {error.value.decode()}")


#: Steps between the recovery checkpoints that a ``raw_trace`` forward keeps: the reverse recomputes ``u``
#: over runs of this many steps, whose rows stay in the cache between the recomputation and their use.
RAW_TRACE_EVERY = 16
#: Neuron-steps from which a sequence keeps its raw membrane trace rather than the v and u traces: below, the
#: traces live in the caches anyway, and they take two buffers fewer to allocate (the layer's final state
#: is their last row).
RAW_TRACE_WORK = 1 << 16


def residuals_layout(call: KernelCall, keep: str, work: int) -> str:
    """What a forward of ``work`` neuron-steps keeps for ``keep`` (see :class:`DirectExecutor`): an
    ``interface.RESIDUALS`` name."""
    if keep == "final_state":
        return "final_state"
    if keep == "state_traces" or call.step:
        return "state_traces"
    if call.recovery_checkpoints:
        return "checkpoints"
    return "raw_trace" if work >= RAW_TRACE_WORK else "state_traces"


def checkpoint_every(call: KernelCall, layout: str, t_buf: int) -> int:
    """Steps between checkpoints in ``layout`` (0: none)."""
    if layout == "raw_trace":
        return RAW_TRACE_EVERY
    if layout == "checkpoints" or (layout == "state_traces" and call.recovery_checkpoints and not call.step):
        return recovery_checkpoint_interval(t_buf)
    return 0


class DirectExecutor:
    """:meth:`forward` and :meth:`backward` of a kernel call on the C loops (module docstring).

    ``keep`` (what the forward keeps for a backward, and so what ``v``/``u`` it returns):

    * ``"final_state"``: nothing; ``v``, ``u`` are the final state (``[1, *state]`` for a sequence);
    * ``"state_traces"``: ``v``, ``u`` traces (``u`` final, with its checkpoints, under recovery checkpoints)
      and the spikes, as the JAX executor keeps them (the custom op's saved layout);
    * ``"least"``: for a sequence of at least :data:`RAW_TRACE_WORK` neuron-steps, the final state only and,
      saved, the unclipped membrane of every step and ``u`` every :data:`RAW_TRACE_EVERY` steps
      (``raw_trace``); with recovery checkpoints (any size), ``v`` and ``u`` every ~√T steps
      (``checkpoints``); else ``state_traces`` (a step's new state is its trace).
    """

    name = "direct"
    checks_finite = True  # the forward's kernel flags a NaN or ±Inf input in its own pass over it
    same_bits_for_any_cotangent_form = True  # absent: read as a row of zeros; a scalar: as a uniform row

    def forward(self, call: KernelCall, current, v0, u0, params, views: Optional[dict], keep: str):
        """``(Outputs, Residuals)`` (see the class docstring for ``keep``)."""
        if not current.is_contiguous():  # the C loops read dense rows only
            current = bridge.explicit_copy(current, "current")
        state_shape = call.state_shape(current)
        m, dtype = state_shape.numel(), current.dtype
        t_buf = 1 if call.step else current.shape[0]
        layout = residuals_layout(call, keep, current.numel())
        every = checkpoint_every(call, layout, t_buf)
        rows = t_buf * m
        traced = layout == "state_traces"
        shape = current.shape
        spikes, mem = _new(current, shape, rows), _new(current, shape, rows)
        x = None if call.surrogate else _new(current, shape, rows)
        v = _new(current, shape, rows) if traced else _new(current, state_shape, m)
        u = _new(current, shape, rows) if traced and not every else _new(current, state_shape, m)
        raw = _new(current, shape, rows) if layout == "raw_trace" else None
        n_checkpoints = -(-t_buf // every) if every else 0
        checkpoints_shape = (n_checkpoints, *state_shape)
        v_checkpoints = _new(current, checkpoints_shape, n_checkpoints * m) if layout == "checkpoints" else None
        u_checkpoints = _new(current, checkpoints_shape, n_checkpoints * m) if every else None
        u_clipped = current.new_empty(1) if layout == "raw_trace" else None
        nonfinite = current.new_empty(1) if call.check_finite else None
        steps, model = _step_count(t_buf), _model_views(v0, u0, params, state_shape, m, views)
        operands = [(current, _buffer(current, "current", dtype, rows)), *model,
                    (steps, _buffer(steps, "n_steps", torch.int32, 1))]
        results = [(spikes, _buffer(spikes, "spikes", dtype, rows)), (x, _buffer(x, "x", dtype, rows)),
                   (v, _buffer(v, "v", dtype, v.numel())), (u, _buffer(u, "u", dtype, u.numel())),
                   (mem, _buffer(mem, "mem", dtype, rows)), (raw, _buffer(raw, "raw", dtype, rows)),
                   *((c, _buffer(c, name, dtype, n_checkpoints * m)) for c, name in (
                       (v_checkpoints, "v_checkpoints"), (u_checkpoints, "u_checkpoints"))),
                   (u_clipped, _buffer(u_clipped, "u_clipped", dtype, 1)),
                   (nonfinite, _buffer(nonfinite, "nonfinite_current", dtype, 1))]
        attributes = interface.Attributes(dtype=_DTYPE_CODES[dtype], t_buf=t_buf, m=m, dt=call.dt,
                                          scheme=interface.scheme_code(call.scheme),
                                          residuals=interface.residuals_code(layout), every=every,
                                          threads=torch.get_num_threads())
        bridge.crossings["forward"] += 1
        _call(_entry_points().forward, attributes, operands, results, "forward")
        if nonfinite is not None and nonfinite.item():
            raise nonfinite_current()
        if not call.step and v.dim() < current.dim():  # a sequence's final state, [1, *state]
            v = v[None]
        if not call.step and u.dim() < current.dim():
            u = u[None]
        written = {"spikes": spikes, "v": v, "u": u, "raw": raw, "v_checkpoints": v_checkpoints,
                   "u_checkpoints": u_checkpoints, "u_clipped": u_clipped}
        kept = tuple(written[name] for name in _KEPT.get((layout, bool(every)), ()))
        # the model's operands are kept for the backward (the tensors they point to are saved too)
        return (Outputs(spikes, x, v, u, mem, u_checkpoints if traced and every else None),
                Residuals((current, v0, u0, *params, *kept), model, layout))

    def backward(self, call: KernelCall, saved: tuple, cache, cotangents: Cotangents, needs: tuple,
                 views: Optional[dict], layout: str):
        """Gradients of ``(current, v0, u0, *params)`` (``None`` where ``needs`` is false); ``saved``: the
        forward's :attr:`Residuals.tensors`, kept in ``layout``."""
        current, v0, u0, *rest = saved
        params, kept = rest[:len(PARAMETERS)], rest[len(PARAMETERS):]
        if not current.is_contiguous():
            current = bridge.explicit_copy(current, "current")
        state_shape = call.state_shape(current)
        m, dtype = state_shape.numel(), current.dtype
        t_buf = 1 if call.step else current.shape[0]
        rows, every = t_buf * m, checkpoint_every(call, layout, t_buf)
        n_checkpoints = -(-t_buf // every) if every else 0
        by_name = dict(zip(_KEPT[layout, bool(every)], kept))
        counts = {"v_checkpoints": n_checkpoints * m, "u_checkpoints": n_checkpoints * m, "u_clipped": 1}
        residual_views = [_NONE_VIEW if name not in by_name else
                          (by_name[name], _buffer(by_name[name], name, dtype, counts.get(name, rows)))
                          for name in _RESIDUAL_OPERANDS]
        per_step, g_operands = _cotangent_views(cotangents, call, state_shape, dtype, rows, m, layout, every)
        steps = _step_count(t_buf)
        model = cache if _still_valid(cache) else _model_views(v0, u0, params, state_shape, m)
        operands = [(current, _buffer(current, "current", dtype, rows)), *model, *residual_views, *g_operands,
                    (steps, _buffer(steps, "n_steps", torch.int32, 1))]
        g_current = _new(current, current.shape, rows)
        g_rest = [current.new_empty(state_shape) if need else None for need in needs[1:]]
        results = [(g_current, _buffer(g_current, "g_current", dtype, rows)),
                   *((g, _buffer(g, name, dtype, m)) for g, name in zip(g_rest, interface.REVERSE_RESULTS[1:]))]
        attributes = interface.Attributes(
            dtype=_DTYPE_CODES[dtype], t_buf=t_buf, m=m, dt=call.dt,
            scheme=interface.scheme_code(call.scheme), surrogate=interface.surrogate_code(call.surrogate),
            surrogate_param=call.surrogate_param, residuals=interface.residuals_code(layout), every=every,
            per_step=per_step, threads=torch.get_num_threads())
        bridge.crossings["backward"] += 1
        _call(_entry_points().reverse, attributes, operands, results, "reverse")
        return input_gradients(needs, (g_current, *g_rest), (current, v0, u0, *params))


#: The reverse call's operands for what a forward kept, in ``interface.REVERSE_OPERANDS`` order, and the names
#: of the tensors each layout keeps (by layout and whether it has checkpoints; ``final_state``: none), in the
#: order of ``Residuals.tensors``: the one table :meth:`DirectExecutor.forward` saves by and ``backward`` reads by.
_RESIDUAL_OPERANDS = ("spikes", "v", "u", "raw", "v_checkpoints", "u_checkpoints", "u_clipped")
_KEPT = {("state_traces", False): ("spikes", "v", "u"), ("state_traces", True): ("spikes", "v", "u_checkpoints"),
         ("raw_trace", True): ("raw", "u_checkpoints", "u_clipped"),
         ("checkpoints", True): ("v_checkpoints", "u_checkpoints")}
_ITEM_BYTES = {torch.float32: 4, torch.float64: 8}


def _new(like: torch.Tensor, shape, numel: int) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor of ``like``'s dtype, ``shape`` and ``numel`` elements for the
    kernel to write: from ``memory_pool.POOLED_BYTES`` on, on the library's pooled memory
    (:mod:`.memory_pool`: no page faults for memory a previous call freed)."""
    if numel * _ITEM_BYTES[like.dtype] < memory_pool.POOLED_BYTES:
        return torch.empty_like(like) if shape == like.shape else like.new_empty(shape)  # the first: faster
    return memory_pool.empty(tuple(shape), like.dtype, native.load().handle)


def _cotangent_views(cotangents: Cotangents, call: KernelCall, state_shape: torch.Size, dtype: torch.dtype,
                     rows: int, m: int, layout: str, every: int):
    """The per-step bit mask and the ``(tensor, View)`` of each cotangent operand (``interface.COTANGENTS``,
    then ``g_v_final``, ``g_u_final``): absent; uniform (one value, as ``y.sum()``'s); constant over the steps
    of a sequence (``y.sum(0)``'s: one value per neuron); else one row per step. A state returned as its
    final value only (``[1, *state]``) has its cotangent in ``g_*_final``."""
    per_step, views = 0, []
    v_final = layout in ("raw_trace", "checkpoints")
    u_final = v_final or (layout == "state_traces" and every > 0)
    spikes = cotangents.spikes if call.surrogate else None
    x = None if call.surrogate else cotangents.x
    finals = (cotangents.v if v_final else None, cotangents.u if u_final else None)
    traced = (x, None if v_final else cotangents.v, None if u_final else cotangents.u, spikes, cotangents.mem)
    for i, (name, grad) in enumerate(zip(interface.COTANGENTS, traced)):
        if grad is None:
            views.append(_NONE_VIEW)
            continue
        grad = compact_cotangent(grad, call.step)
        grad = grad.to(dtype)
        if grad.dim() == 0 or grad.shape == state_shape and not call.step:
            grad = grad.expand(state_shape).contiguous() if grad.dim() else grad.contiguous()
            views.append((grad, _buffer(grad, name, dtype, period_of=m)))
        else:
            per_step |= 1 << i
            grad = grad.contiguous()
            views.append((grad, _buffer(grad, name, dtype, rows)))
    for name, grad in zip(("g_v_final", "g_u_final"), finals):
        if grad is None:
            views.append(_NONE_VIEW)
            continue
        grad = uniform_as_scalar(grad)
        grad = (grad if grad.dim() == 0 else grad.reshape(state_shape)).to(dtype).contiguous()
        views.append((grad, _buffer(grad, name, dtype, period_of=m)))
    return per_step, views
