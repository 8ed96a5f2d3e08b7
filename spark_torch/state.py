"""The hidden state an :class:`~spark_torch.soma.IzhikevichSoma` carries between calls, and whose it is.

State per neuron: membrane ``v`` (mV) and recovery ``u`` (mV/ms), ``[B, *units]``, plus ``mem``, the
normalized membrane ``(v − v_r) / (v_pk − v_r)`` the layer returned last. snnTorch code hands ``mem`` back
to the next call; only ``mem`` crosses, so the layer must tell whether a ``mem`` it receives is the one it
emitted (then it continues from the exact ``(v, u)`` behind it) or anybody else's (then ``u`` restarts
at ``b·v``, the paper's initial condition). :meth:`HiddenState.owns` decides that.

The state lives in this plain object, not in module buffers: ``torch.compile(dynamic=True)`` then treats
its batch size as symbolic (module buffers have static shapes: a recompile per batch size), and
``DistributedDataParallel`` does not broadcast one rank's neurons over another's.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch

from .execution.shape_executor import has_no_data

NAMES = ("mem", "potential", "recovery")


def _version(tensor: torch.Tensor) -> Optional[int]:
    """``tensor._version``; ``None`` for an inference tensor, which has no version counter (it can only
    be modified inside ``torch.inference_mode``, where such an edit is not detected)."""
    return None if tensor.is_inference() else tensor._version


def _by_identity(tensor: torch.Tensor) -> bool:
    """Whether ownership is decided by identity alone: while ``torch.compile`` traces (versions and data
    pointers are not traceable), and for tensors without data (meta, fake)."""
    return torch.compiler.is_compiling() or has_no_data(tensor)


def _same_memory(mem: torch.Tensor, owner: torch.Tensor, data_ptr: int, stride: tuple, version) -> bool:
    """``mem`` has this data pointer and layout, ``owner``'s dtype and device, and the recorded version."""
    return (mem.data_ptr() == data_ptr and mem.stride() == stride and mem.dtype == owner.dtype
            and mem.device == owner.device and _version(mem) == version)


def rest_state(v_r: torch.Tensor, b: torch.Tensor, shape: tuple, dtype: torch.dtype):
    """The state after build and ``reset()``: ``v = v_r``, ``u = b·v_r``, broadcast to ``shape``, constants."""
    v = v_r.detach().to(dtype).expand(shape)
    u = (b * v_r).detach().to(dtype).expand(shape)
    return v.contiguous(), u.contiguous()


class RestStates:
    """:func:`rest_state`, kept for the parameters, shape and dtype it was made for: a sequence layer called
    without ``mem`` starts every call from it (the same two tensors then cross to JAX only once), and
    ``reset()`` installs it as the hidden state without recomputing it."""

    def __init__(self) -> None:
        self._made_for: tuple = ()
        self._state: tuple = ()

    def get(self, v_r: torch.Tensor, b: torch.Tensor, shape: tuple, dtype: torch.dtype):
        """``rest_state(v_r, b, shape, dtype)``, the kept one while ``v_r`` and ``b`` are the same tensors,
        unmodified (an optimizer step bumps their version), and the kept pair is unmodified too."""
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or v_r.is_inference() \
                or b.is_inference():  # (inference tensors have no version to check, and cannot be saved later)
            return rest_state(v_r, b, shape, dtype)
        made_for, kept = (v_r, v_r.data_ptr(), v_r._version, b, b.data_ptr(), b._version, shape, dtype), self._made_for
        if len(kept) != len(made_for) + 2 or any(
                x is not y if isinstance(x, torch.Tensor) else x != y for x, y in zip(made_for, kept)) \
                or any(t._version != version for t, version in zip(self._state, kept[-2:])):
            state = rest_state(v_r, b, shape, dtype)
            self._made_for, self._state = (*made_for, state[0]._version, state[1]._version), state
        return self._state

class HiddenState:
    """``mem``, ``v`` (``potential``) and ``u`` (``recovery``), and the record of which ``mem`` is own.

    Own: the ``mem`` tensor set last (held strongly, so its memory cannot be reused by another tensor:
    equal data pointer, layout and version mean equal values) or a view of it, untouched since; also
    the last row of the ``[T, B, *units]`` membrane a sequence call returned, tracked through a weak
    reference (the layer must not keep the caller's trajectories alive) while that tensor lives.
    """

    def __init__(self) -> None:
        empty = torch.zeros(0)
        self.mem, self.v, self.u = empty, empty, empty
        self._emitted: tuple = ()
        self._last_row: Optional[tuple] = None
        self._converted = False

    def set(self, mem: torch.Tensor, v: torch.Tensor, u: torch.Tensor, own: bool = True,
            also_own_last_row_of: Optional[torch.Tensor] = None) -> None:
        """Replace the state; ``own=False`` records ``mem`` as foreign (a later call restarts ``u`` from it)."""
        self.mem, self.v, self.u = mem, v, u
        self._converted = False
        if _by_identity(mem):  # ownership is identity there (see owns)
            return
        self._emitted = ((mem, _version(mem)),) if own and mem.numel() else ()
        self._last_row = None
        if own and also_own_last_row_of is not None and also_own_last_row_of.numel():
            last = also_own_last_row_of[-1]
            self._last_row = (weakref.ref(also_own_last_row_of), last.data_ptr(), last.stride(),
                              _version(also_own_last_row_of))

    def assign_mem(self, mem: torch.Tensor) -> None:
        """``layer.mem = mem``: the layer's own membrane (or a view or ``detach()`` of it, untouched: the TBPTT
        idiom ``layer.mem = layer.mem.detach()``) keeps ``(v, u)``; any other ``mem`` is foreign."""
        self.set(mem, self.v, self.u, own=self.owns(mem))

    def owns(self, mem: torch.Tensor) -> bool:
        """Is ``mem`` (a view/alias of) the membrane this state emitted last, unmodified since? After a
        conversion of the layer (:meth:`apply`), also a ``mem`` converted the same way (equal values, the
        converted state's dtype and device) until the next call."""
        if _by_identity(mem):
            return mem is self.mem
        if self.v.shape != mem.shape:
            return False
        if self._converted and mem.dtype == self.mem.dtype and mem.device == self.mem.device \
                and mem.shape == self.mem.shape and torch.equal(mem, self.mem):
            return True
        if self._emitted and mem is self._emitted[0][0]:  # the emitted tensor itself: unmodified since?
            return _version(mem) == self._emitted[0][1]
        if any(_same_memory(mem, t, t.data_ptr(), t.stride(), version) for t, version in self._emitted):
            return True
        if self._last_row is None:
            return False
        owner, data_ptr, stride, version = self._last_row
        owner = owner()
        return owner is not None and _same_memory(mem, owner, data_ptr, stride, version)

    def initial(self, mem: torch.Tensor, shape: tuple, dtype: torch.dtype, v_r: torch.Tensor, v_pk: torch.Tensor,
                b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state ``(v, u)`` a call given ``mem`` starts from (parameters ``v_r``, ``v_pk``, ``b``):

        * ``mem`` of another shape than ``shape`` (a new batch size): the rest state, a constant;
        * own ``mem`` (:meth:`owns`): the exact ``(v, u)`` behind it, with their history if ``mem``
          still requires grad, cut (truncated BPTT) if it was detached;
        * any other ``mem``: ``v = v_r + mem·(v_pk − v_r)``, ``u = b·v`` (zeros: the rest state).

        While ``torch.compile`` traces, where tensors have no identity to record, a ``mem`` equal in value to
        the layer's own counts as own (one comparison in the graph, no graph break).
        """
        if tuple(mem.shape) != shape:
            return rest_state(v_r, b, shape, dtype)
        if torch.compiler.is_compiling() and mem is not self.mem:
            return self._initial_traced(mem, v_r, v_pk, b)
        if self.owns(mem):
            v, u = self.v, self.u
            if not _by_identity(v) and v.is_inference() and not torch.is_inference_mode_enabled():
                return v.clone(), u.clone()  # state from an inference_mode call: a normal tensor again
            return (v, u) if mem.requires_grad else (v.detach(), u.detach())
        v = v_r + mem * (v_pk - v_r)
        return v, b * v

    def _initial_traced(self, mem, v_r, v_pk, b):
        """:meth:`initial` under ``torch.compile`` for a ``mem`` that is not the stored tensor itself."""
        v = v_r + mem * (v_pk - v_r)
        foreign = (v, b * v)
        if self.mem.shape != mem.shape or self.mem.dtype != mem.dtype or self.v.shape != mem.shape:
            return foreign
        own = (self.v, self.u) if mem.requires_grad else (self.v.detach(), self.u.detach())
        same = torch.eq(mem, self.mem).all()
        return tuple(torch.where(same, mine, theirs) for mine, theirs in zip(own, foreign))

    def owns_current(self) -> bool:
        """Whether the stored ``(v, u)`` belong to the stored ``mem`` (what a checkpoint records)."""
        return self.mem.numel() > 0 and self.owns(self.mem)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """``fn`` (a module conversion: ``.to()``, ``.double()``, ...) on every tensor; ownership is kept."""
        own = self.owns_current()
        self.set(fn(self.mem), fn(self.v), fn(self.u), own=own)
        self._converted = own

    def __getstate__(self) -> dict:
        return {"mem": self.mem, "v": self.v, "u": self.u, "own": self.owns_current()}

    def __setstate__(self, state: dict) -> None:
        """After unpickling or ``copy.deepcopy``: the copied ``mem`` is still own if the original was."""
        self._last_row = None
        self.set(state["mem"], state["v"], state["u"], own=state["own"])
