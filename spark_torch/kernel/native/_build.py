"""Compile the native kernel's C++ source once per machine and load it: a cached shared library.

The library is built with the system C++ compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++`` on
``PATH``) against the XLA FFI headers shipped in jaxlib (:func:`jax.ffi.include_dir`), and cached in
``$SPARK_TORCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/spark_torch``, else ``~/.cache/spark_torch``. The
file name carries a hash of everything the binary depends on: the sources, the jaxlib version, the
compiler (its ``--version``) and flags, the machine and the CPU's feature flags (``-march=native``),
so a changed input builds a new library and a stale one is never loaded.

Trust model. Loading a shared library runs its code (its constructors run inside ``dlopen``), so the
cache is untrusted input: nothing in it is loaded unless this process can vouch for it.

* The cache directory is created with mode 0o700. An existing one is used only if it is a directory
  owned by this user (the effective uid) that neither its group nor others can write: whoever else could
  write there could plant a library at the predictable file name. Otherwise it is refused
  (:class:`Unavailable` names the directory and why), never repaired behind the user's back. Its parent
  directories are not checked: they are taken to be the user's own (``~/.cache``) or sticky (``/tmp``).
* Every build writes a *build record* next to the library (``<name>.json``: the library's SHA-256 digest,
  its size and the compile time) atomically: a private temporary file (``mkstemp``: ``O_EXCL``, 0o600)
  renamed over the record, so a symbolic link planted there is replaced, never written through.
* Before ``ctypes.CDLL``, the library and its record are each opened with ``O_NOFOLLOW`` (a symbolic link
  is refused) and checked with ``fstat``: a regular file owned by this user that its group and others
  cannot write. The library is read once through that descriptor and its size and digest must equal the
  record's; it is then loaded through the same descriptor (``/proc/self/fd/N`` where that exists, else by
  path), so the file that was checked is the file that is loaded. A truncated copy (which would kill the
  process with SIGBUS inside ``dlopen``), a planted or substituted library, or an unreadable record is
  caught here.
* An entry that is missing or fails a check is rebuilt (when the directory can be written; otherwise
  :class:`Unavailable` says what was wrong and why it could not be rebuilt). A compiler that exits 0
  without writing a library is a failed build: nothing is cached. The library is made private (0o700)
  before it is renamed into place, whatever the compiler's umask left.

:attr:`Unavailable.reason` tells the causes apart: ``"compiler"`` (no usable C++ compiler), ``"cache"``
(the cache directory or a file in it cannot be used or written) or ``"build"`` (compiling or loading
failed), so that the fallback warning suggests installing a compiler only when that is what is missing.

Concurrent builds are safe: a process compiles into a temporary file in the cache directory and
renames it into place (:func:`os.replace`, atomic), under an advisory lock (``fcntl.flock`` on
``<name>.lock``, created 0o600 and never through a symbolic link, where ``fcntl`` is available) so that a
second process waits for the first build instead of repeating it, then checks the entry it finds.

Flags: ``-O3 -march=native`` (vectorized for this CPU), ``-ffp-contract=off`` (no fused multiply-add:
every operation rounds on its own, as the formulas are written), ``-fno-trapping-math`` (lets the
selects vectorize; assumes no floating-point trap handler, changes no value). Never ``-ffast-math``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

HERE = Path(__file__).parent
SOURCES = ("izhikevich.h", "izhikevich_loops.h", "izhikevich_threads.h", "izhikevich_interface.h", "izhikevich_direct.h",
           "izhikevich_memory.h", "izhikevich_ffi.cc")
MAIN_SOURCE = "izhikevich_ffi.cc"  # includes the rest: one translation unit (FFI handlers and C entry points)
FLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC",
         "-fvisibility=hidden", "-pthread")
COMPILE_TIMEOUT_S = 600
REASONS = ("compiler", "cache", "build")  # Unavailable.reason
MAX_RECORD_BYTES = 1 << 16

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in the cache must not block the open
_LOGGER = logging.getLogger("spark_torch")
# The /proc/self/fd/N names already passed to dlopen: glibc returns an already-loaded library whose name
# matches without opening the file, so a descriptor number is never used for a second load by that name.
_dlopen_names: set[str] = set()


class Unavailable(RuntimeError):
    """The native kernel cannot be built or loaded here; the message says why, and ``reason`` which kind
    of cause: ``"compiler"`` (no usable C++ compiler), ``"cache"`` (the cache directory or a file in it
    cannot be used or written) or ``"build"`` (compiling or loading the library failed)."""

    def __init__(self, message: str, reason: str = "build"):
        if reason not in REASONS:
            raise ValueError(f"`reason` (={reason!r}) must be one of {REASONS}")
        super().__init__(message)
        self.reason = reason


class _Rejected(Exception):
    """A cache entry is missing or fails a check (the message says which): rebuild it, never load it."""


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
            raise Unavailable(f"$CXX (={cxx!r}) is not an executable compiler", "compiler")
        return command
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise Unavailable("no C++ compiler found ($CXX is not set and none of c++, g++, clang++ is on PATH)", "compiler")


def _compiler_identity(command: list[str]) -> str:
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"cannot run the C++ compiler {command[0]!r}: {error}", "compiler") from None
    if done.returncode != 0:
        raise Unavailable(f"`{shlex.join([*command, '--version'])}` failed: {done.stderr.strip()[:200]}", "compiler")
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


# ------------------------------------------------------------------------------------------- trusting the cache

def _untrusted(st: os.stat_result, what: str) -> Optional[str]:
    """Why the file or directory ``what`` (its ``stat`` result ``st``) must not be trusted, or ``None``:
    owned by another user, or writable by its group or others. Nothing to check without POSIX owners."""
    if not hasattr(os, "geteuid"):
        return None
    if st.st_uid != os.geteuid():
        return f"{what} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def _prepare_directory(directory: Path) -> None:
    """Create the cache directory (0o700) if it is missing; raise ``Unavailable("cache")`` unless it can be
    trusted (see the module docstring)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(directory)
    except OSError as error:
        raise Unavailable(f"cannot create the cache directory {str(directory)!r}: {error}", "cache") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Unavailable(f"the cache directory {str(directory)!r} is not a directory", "cache")
    problem = _untrusted(st, f"the cache directory {str(directory)!r}")
    if problem:
        raise Unavailable(f"{problem}, so nothing in it is trusted (another user could plant a library there): "
                          "use a private directory (one of yours that only you can write, e.g. `chmod 700` it, "
                          "or set $SPARK_TORCH_CACHE_DIR)", "cache")


def _open_private(path: Path, what: str) -> tuple[int, os.stat_result]:
    """``path`` opened for reading, not through a symbolic link, and its ``fstat``: a regular file that
    :func:`_untrusted` accepts; else raises :class:`_Rejected`."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except FileNotFoundError:
        raise _Rejected(f"{what} {str(path)!r} does not exist") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _Rejected(f"{what} {str(path)!r} is a symbolic link") from None
        raise _Rejected(f"cannot open {what} {str(path)!r}: {error}") from None
    try:
        st = os.fstat(fd)
    except OSError as error:
        os.close(fd)
        raise _Rejected(f"cannot read {what} {str(path)!r}: {error}") from None
    problem = None if stat.S_ISREG(st.st_mode) else f"{what} {str(path)!r} is not a regular file"
    problem = problem or _untrusted(st, f"{what} {str(path)!r}")
    if problem:
        os.close(fd)
        raise _Rejected(problem)
    return fd, st


def _read_record(record: Path) -> dict:
    """The build record's fields (``sha256``, ``size``, ``build_seconds``); raises :class:`_Rejected`."""
    fd, _ = _open_private(record, "the build record")
    try:
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as error:
        raise _Rejected(f"cannot read the build record {str(record)!r}: {error}") from None
    finally:
        os.close(fd)
    try:
        fields = json.loads(data)
        size = fields["size"]
        valid = (isinstance(fields["sha256"], str) and isinstance(size, int) and not isinstance(size, bool)
                 and len(data) <= MAX_RECORD_BYTES)
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise _Rejected(f"the build record {str(record)!r} holds no digest and size (damaged, or an older version's)")
    return fields


def _digest(fd: int) -> tuple[str, int]:
    """The SHA-256 (hex) and length of the whole file open on ``fd``."""
    os.lseek(fd, 0, os.SEEK_SET)
    digest, size = hashlib.sha256(), 0
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _open_verified(target: Path, record: Path) -> tuple[int, Optional[float]]:
    """A descriptor open on the cached library ``target``, which matches its build record ``record``, and
    the recorded compile time; raises :class:`_Rejected` saying what is missing or wrong."""
    fd, st = _open_private(target, "the cached library")
    try:
        fields = _read_record(record)
        if st.st_size != fields["size"]:
            raise _Rejected(f"the cached library {str(target)!r} has {st.st_size} bytes where its build record says "
                            f"{fields['size']} (an interrupted copy, or replaced)")
        if _digest(fd) != (fields["sha256"], st.st_size):
            raise _Rejected(f"the cached library {str(target)!r} does not match the SHA-256 digest of its build "
                            "record (damaged, or replaced)")
    except OSError as error:
        os.close(fd)
        raise _Rejected(f"cannot read the cached library {str(target)!r} or its build record: {error}") from None
    except BaseException:
        os.close(fd)
        raise
    seconds = fields.get("build_seconds")
    return fd, float(seconds) if isinstance(seconds, (int, float)) else None


def _dlopen(fd: int, target: Path) -> ctypes.CDLL:
    """Load the verified library open on ``fd``: through ``/proc/self/fd`` (the very file that was checked)
    where that exists, else by its path ``target``."""
    duplicates = []
    try:
        name = str(target)
        if os.path.isdir("/proc/self/fd"):
            while f"/proc/self/fd/{fd}" in _dlopen_names:
                fd = os.dup(fd)
                duplicates.append(fd)
            name = f"/proc/self/fd/{fd}"
            _dlopen_names.add(name)
        return ctypes.CDLL(name)
    except OSError as error:
        raise Unavailable(f"cannot load {str(target)!r}: {error}", "build") from None
    finally:
        for each in duplicates:
            os.close(each)


# ------------------------------------------------------------------------------------------------- building

@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive advisory lock on ``path`` (created 0o600, never through a symbolic link); a no-op where
    ``fcntl`` is missing. Raises ``Unavailable("cache")`` when the lock file cannot be opened or locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: os.replace alone keeps the cache consistent
        yield
        return
    where = f"the lock file {str(path)!r} in the cache directory {str(path.parent)!r}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, 0o600)
    except OSError as error:
        cause = "it is a symbolic link" if error.errno == errno.ELOOP else str(error)
        raise Unavailable(f"cannot open {where}: {cause}", "cache") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            raise Unavailable(f"cannot lock {where}: {error}", "cache") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_compiler(command: list[str], args: list[str]) -> None:
    """Run the compile command ``args``; raises ``Unavailable("build")`` when it fails."""
    _LOGGER.info("compiling the native kernel once for this machine: %s", shlex.join(args))
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"compiling the native kernel failed ({shlex.join(command)}): {error}", "build") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.strip().splitlines()[:3])[:400]
        raise Unavailable(f"compiling the native kernel failed ({shlex.join(command)}): {message}", "build")


def _seal(output: str, command: list[str]) -> tuple[str, int]:
    """Make the compiler's ``output`` private (0o700) and return its SHA-256 and size; a compiler that wrote
    nothing (no file, or an empty one) failed: ``Unavailable("build")``."""
    failed = f"the C++ compiler ({shlex.join(command)}) exited successfully but wrote no library"
    try:
        fd = os.open(output, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except OSError as error:
        raise Unavailable(f"{failed} ({error})", "build") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            raise Unavailable(f"{failed} ({output!r} is empty)", "build")
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)
        return _digest(fd)
    except OSError as error:
        raise Unavailable(f"cannot read the compiled library {output!r}: {error}", "cache") from None
    finally:
        os.close(fd)


def _write_record(record: Path, fields: dict) -> None:
    """Write the build record atomically: a private temporary file (``O_EXCL``, 0o600) renamed over
    ``record`` (which replaces a symbolic link there rather than writing through it)."""
    fd, temporary = tempfile.mkstemp(dir=record.parent, prefix=".record-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(fields, handle)
        os.replace(temporary, record)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _compile(command: list[str], include_dir: str, target: Path, record: Path) -> None:
    """Compile into a private temporary file next to ``target``, check that the compiler wrote a library,
    rename it into place and write its build record; raises :class:`Unavailable`."""
    directory = target.parent
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    except OSError as error:
        raise Unavailable(f"cannot write in the cache directory {str(directory)!r}: {error}", "cache") from None
    os.close(fd)
    try:
        start = time.perf_counter()
        _run_compiler(command, [*command, *FLAGS, "-isystem", include_dir, str(HERE / MAIN_SOURCE), "-o", temporary])
        seconds = time.perf_counter() - start
        digest, size = _seal(temporary, command)
        try:
            os.replace(temporary, target)
            _write_record(record, {"build_seconds": round(seconds, 3), "sha256": digest, "size": size})
        except OSError as error:
            raise Unavailable(f"cannot write the library into the cache directory {str(directory)!r}: {error}",
                              "cache") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _build_entry(command: list[str], include_dir: str, target: Path, record: Path,
                 problem: _Rejected) -> tuple[int, Optional[float], bool]:
    """Under the build lock: the entry that another process built meanwhile, else a fresh build; returns
    what :func:`_open_verified` returns, and whether this process compiled it."""
    try:
        with _build_lock(target.with_suffix(".lock")):
            try:
                return (*_open_verified(target, record), False)
            except _Rejected as again:  # still missing or wrong: build it
                problem = again
            _LOGGER.info("building the native kernel: %s", problem)
            _compile(command, include_dir, target, record)
            try:
                return (*_open_verified(target, record), True)
            except _Rejected as error:
                raise Unavailable(f"the library just built fails its check: {error}", "build") from None
    except Unavailable as error:
        if error.reason != "cache":
            raise
        raise Unavailable(f"{problem}, and it cannot be built there: {error}", "cache") from None


def load() -> Library:
    """Build (or find in the cache, verified) and load the native library; raises :class:`Unavailable`."""
    import jax.ffi

    command = find_compiler()
    include_dir = jax.ffi.include_dir()
    target = _library_path(command, include_dir)
    _prepare_directory(target.parent)
    record = target.with_suffix(".json")  # {"build_seconds": ..., "sha256": ..., "size": ...}
    try:
        fd, build_seconds = _open_verified(target, record)
        built_here = False
    except _Rejected as problem:
        fd, build_seconds, built_here = _build_entry(command, include_dir, target, record, problem)
    try:
        handle = _dlopen(fd, target)
    finally:
        os.close(fd)
    return Library(handle, target, build_seconds, built_here)
