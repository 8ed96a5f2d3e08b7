"""Which implementation runs the kernel's loops: the native C++ kernel or the XLA (``lax``) loop.

Public through :mod:`spark_torch.kernel` (``kernel.set_backend``, ``kernel.backend``,
``kernel.use_backend``); :func:`dispatchers` makes ``kernel.simulate_forward`` and
``kernel.simulate_backward``.

Backends: ``"native"`` (:mod:`spark_torch.kernel.native`: one fused C++ call per direction, CPU only),
``"xla"`` (:data:`spark_torch.kernel.xla_simulate_forward` / ``xla_simulate_backward``), and
``"auto"``: native if it builds, else xla with one warning per process. The initial choice comes from
the environment variable ``SPARK_TORCH_KERNEL`` (``native``, ``xla`` or ``auto``; default ``auto``),
read when the kernel first runs; :func:`set_backend` overrides it for the process.

Where the arrays live decides too: the native kernel runs CPU arrays; arrays on another device (and,
under ``jit``, a process whose default JAX device is not the CPU) run the XLA loop. The choice is
made when a call is traced, so ``jax.jit``-ed code keeps the backend it was traced with.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Iterator, NamedTuple, Optional

import jax

BACKENDS = ("native", "xla", "auto")
ENV_VAR = "SPARK_TORCH_KERNEL"


class _Choice(NamedTuple):
    name: str  # "native" or "xla"
    forward: Callable
    backward: Callable
    cpu_only: bool  # JAX's default device is the CPU: no per-call device check needed


_xla: Optional[_Choice] = None  # installed by dispatchers()
_requested: Optional[str] = None  # set_backend()'s argument; None: read ENV_VAR
_active: Optional[_Choice] = None  # the resolved choice, read on every call
_warned = False


def _native_choice() -> _Choice:
    """The native implementation; raises :class:`spark_torch.kernel.native.Unavailable` with the reason."""
    from . import native

    native.load()
    return _Choice("native", native.simulate_forward, native.simulate_backward, _xla.cpu_only)


def _requested_backend() -> str:
    if _requested is not None:
        return _requested
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"${ENV_VAR} (={os.environ[ENV_VAR]!r}) must be one of {BACKENDS}")
    return value


def _resolve() -> _Choice:
    """Decide the backend (building the native kernel if needed) and remember the decision."""
    global _active, _warned, _xla
    _xla = _xla._replace(cpu_only=jax.default_backend() == "cpu")
    requested = _requested_backend()
    if requested == "xla":
        _active = _xla
        return _active
    from .native import Unavailable

    try:
        _active = _native_choice()
    except Unavailable as error:
        if requested == "native":
            raise RuntimeError(f"spark_torch: the native kernel was requested but is unavailable: {error}") from None
        if not _warned:
            _warned = True
            remedy = (" To get the native kernel, install a C++ compiler (e.g. `apt-get install g++`) or set $CXX "
                      "to one." if getattr(error, "reason", None) == "compiler" else "")
            warnings.warn(f"spark_torch: the native CPU kernel is unavailable ({error}); running the slower XLA "
                          f"kernel instead.{remedy}", UserWarning, stacklevel=3)
        _active = _xla
    return _active


def set_backend(name: str) -> None:
    """Use ``name`` (``"native"``, ``"xla"`` or ``"auto"``) for every later kernel call in this process.

    ``"native"`` builds (or loads) the native kernel now and raises ``RuntimeError`` naming the reason
    when it cannot; ``"auto"`` decides at the next call (native if it builds, else xla with a warning).
    Already-traced ``jax.jit`` functions keep the backend they were traced with.
    """
    global _requested, _active
    if name not in BACKENDS:
        raise ValueError(f"`name` (={name!r}) must be one of {BACKENDS}")
    _requested, _active = name, None
    if name == "native":
        _resolve()


def backend() -> str:
    """The backend that kernel calls on CPU arrays use now: ``"native"`` or ``"xla"`` (resolving ``"auto"``)."""
    return (_active or _resolve()).name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: :func:`set_backend` ``(name)`` inside, the previous setting restored after.

    Yields the backend in use (``"native"`` or ``"xla"``). Process-wide, not thread-local.
    """
    global _requested, _active
    saved = _requested, _active
    try:
        set_backend(name)
        yield backend()
    finally:
        _requested, _active = saved


def implementation() -> _Choice:
    """The resolved backend: ``name`` and its jitted ``forward`` and ``backward`` functions."""
    return _active or _resolve()


def _on_cpu(array) -> bool:
    """Whether ``array`` lives on the CPU; under tracing, whether JAX's default device is the CPU."""
    if isinstance(array, jax.Array) and not isinstance(array, jax.core.Tracer):
        return array.platform() == "cpu"
    return jax.default_backend() == "cpu"


def dispatchers(xla_forward: Callable, xla_backward: Callable) -> tuple[Callable, Callable]:
    """``simulate_forward`` and ``simulate_backward``: each call goes to the active backend's function
    (the XLA one for arrays off the CPU). Each has ``_cache_size()``: its active function's jit cache size."""
    global _xla
    _xla = _Choice("xla", xla_forward, xla_backward, cpu_only=False)

    def simulate_forward(current, *args, **kwargs):
        choice = _active or _resolve()
        if choice.cpu_only or _on_cpu(current):
            return choice.forward(current, *args, **kwargs)
        return xla_forward(current, *args, **kwargs)

    def simulate_backward(current, *args, **kwargs):
        choice = _active or _resolve()
        if choice.cpu_only or _on_cpu(current):
            return choice.backward(current, *args, **kwargs)
        return xla_backward(current, *args, **kwargs)

    simulate_forward._cache_size = lambda: implementation().forward._cache_size()
    simulate_backward._cache_size = lambda: implementation().backward._cache_size()
    return simulate_forward, simulate_backward
