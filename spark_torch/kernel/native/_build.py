"""Compile the native kernel's C++ source once per machine and load it: a cached shared library.

The library is built with the system C++ compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++`` on
``PATH``) against the XLA FFI headers shipped in jaxlib (:func:`jax.ffi.include_dir`), and cached in
``$SPARK_TORCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/spark_torch``, else ``~/.cache/spark_torch``. The
file name carries a hash of everything the binary depends on: the sources, the jaxlib version, the
compiler (its ``--version``) and flags, the machine and the CPU's feature flags (``-march=native``),
so a changed input builds a new library and a stale one is never loaded.

Concurrent builds are safe: a process compiles into a temporary file in the cache directory and
renames it into place (:func:`os.replace`, atomic), under an advisory lock (``fcntl.flock``, where
available) so that a second process waits for the first build instead of repeating it.

Flags: ``-O3 -march=native`` (vectorized for this CPU), ``-ffp-contract=off`` (no fused multiply-add:
every operation rounds on its own, as the formulas are written), ``-fno-trapping-math`` (lets the
selects vectorize; assumes no floating-point trap handler, changes no value). Never ``-ffast-math``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

HERE = Path(__file__).parent
SOURCES = ("izhikevich.h", "izhikevich_loops.h", "izhikevich_direct.h", "izhikevich_ffi.cc")
MAIN_SOURCE = "izhikevich_ffi.cc"  # includes the rest: one translation unit (FFI handlers and C entry points)
FLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC",
         "-fvisibility=hidden")
COMPILE_TIMEOUT_S = 600


class Unavailable(RuntimeError):
    """The native kernel cannot be built or loaded here; the message says why."""


class Library(NamedTuple):
    """A loaded native library: ``handle`` (ctypes), its ``path``, ``build_seconds`` (how long its
    compilation took, recorded next to it; ``None`` if unknown) and ``built_here`` (whether this
    process compiled it, rather than finding it in the cache)."""

    handle: ctypes.CDLL
    path: Path
    build_seconds: Optional[float]
    built_here: bool


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("SPARK_TORCH_CACHE_DIR"):
        return Path(os.environ["SPARK_TORCH_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spark_torch"


def find_compiler() -> list[str]:
    """The C++ compiler command: ``$CXX`` (may include arguments), else the first of c++, g++, clang++."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        command = shlex.split(cxx)
        if shutil.which(command[0]) is None:
            raise Unavailable(f"$CXX (={cxx!r}) is not an executable compiler")
        return command
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise Unavailable("no C++ compiler found ($CXX is not set and none of c++, g++, clang++ is on PATH)")


def _compiler_identity(command: list[str]) -> str:
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"cannot run the C++ compiler {command[0]!r}: {error}") from None
    if done.returncode != 0:
        raise Unavailable(f"`{shlex.join([*command, '--version'])}` failed: {done.stderr.strip()[:200]}")
    return done.stdout.strip()


def cpu_fingerprint() -> str:
    """The machine and its CPU feature flags (what ``-march=native`` compiles for)."""
    flags = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 / ARM
                flags = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()} {flags}"


def _library_path(command: list[str], include_dir: str) -> Path:
    import jaxlib

    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((HERE / name).read_bytes())
    for part in (jaxlib.__version__, _compiler_identity(command), shlex.join(command), " ".join(FLAGS),
                 cpu_fingerprint(), include_dir):
        digest.update(b"\0" + part.encode())
    return cache_dir() / f"izhikevich_ffi-{digest.hexdigest()[:24]}.so"


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive advisory lock next to ``path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: os.replace alone keeps the cache consistent
        yield
        return
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(command: list[str], include_dir: str, target: Path) -> float:
    """Compile into a temporary file next to ``target``, then rename it into place; returns seconds."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    args = [*command, *FLAGS, "-isystem", include_dir, str(HERE / MAIN_SOURCE), "-o", tmp]
    logging.getLogger("spark_torch").info("compiling the native kernel once for this machine: %s", shlex.join(args))
    start = time.perf_counter()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            message = " ".join(done.stderr.strip().splitlines()[:3])[:400]
            raise Unavailable(f"compiling the native kernel failed ({shlex.join(command)}): {message}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"compiling the native kernel failed ({shlex.join(command)}): {error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return time.perf_counter() - start


def load() -> Library:
    """Build (or find in the cache) and load the native library; raises :class:`Unavailable`."""
    import jax.ffi

    command = find_compiler()
    include_dir = jax.ffi.include_dir()
    target = _library_path(command, include_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Unavailable(f"cannot create the cache directory {str(target.parent)!r}: {error}") from None
    record = target.with_suffix(".json")  # {"build_seconds": ...}, written after the library
    built_here = False
    if not target.exists():
        with _build_lock(target):
            if not target.exists():  # another process may have built it while we waited
                seconds = _compile(command, include_dir, target)
                with contextlib.suppress(OSError):
                    record.write_text(json.dumps({"build_seconds": round(seconds, 3)}))
                built_here = True
    try:
        handle = ctypes.CDLL(str(target))
    except OSError as error:
        raise Unavailable(f"cannot load {str(target)!r}: {error}") from None
    try:
        build_seconds = float(json.loads(record.read_text())["build_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        build_seconds = None
    return Library(handle, target, build_seconds, built_here)
