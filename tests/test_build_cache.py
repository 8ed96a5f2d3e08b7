"""The native kernel's build cache as untrusted input (spark_torch.kernel.native._build): what it refuses,
what it rebuilds, and the fallback warning that names the real cause.

Every case points ``$SPARK_TORCH_CACHE_DIR`` at a private directory and calls ``_build.load()`` directly
(a Library, or Unavailable), so the process-wide library of the rest of the suite is untouched. One real
build serves the module (``good``); elsewhere ``$CXX`` is a stand-in compiler (a shell script) that copies
that library to its output, so a rebuild takes no compile. A planted library is a tiny C library whose
constructor writes a marker file: the marker must never appear. A damaged library, which could crash the
process that loads it, and an unwritable directory, which needs file permissions to apply (root ignores
them), are tried in subprocesses.
"""

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax.ffi
import pytest

from spark_torch.kernel.native import _build

pytestmark = [pytest.mark.xdist_group("build_cache"),
              pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and owners, and shell scripts as $CXX")]

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534  # the unprivileged user (and group) that root hands files to, or runs as
MARKER_ENV = "SPARK_TORCH_TEST_PLANTED_MARKER"
root_only = pytest.mark.skipif(not IS_ROOT, reason="only root can give a file to another user")

PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("SPARK_TORCH_TEST_PLANTED_MARKER");
    FILE *marker = path ? fopen(path, "w") : NULL;
    if (marker) { fputs("the planted library ran\n", marker); fclose(marker); }
}
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _record(path: Path) -> dict:
    """A build record that truthfully describes the library at ``path``."""
    return {"build_seconds": 1.5, "sha256": _sha256(path), "size": path.stat().st_size}


def _write(path: Path, content, mode: int) -> None:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    path.chmod(mode)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def _silent(folder: Path) -> str:
    """A $CXX that exits 0 and writes nothing (its ``--version`` prints nothing)."""
    return _script(folder / "silent-cxx", "exit 0\n")


def _entry(monkeypatch, directory: Path, cxx: str) -> tuple[Path, Path]:
    """The cache at ``directory`` (created private if missing) and $CXX = ``cxx``: where the library and its
    build record go there."""
    monkeypatch.setenv("SPARK_TORCH_CACHE_DIR", str(directory))
    monkeypatch.setenv("CXX", cxx)
    directory.mkdir(mode=0o700, exist_ok=True)
    target = _build._library_path(_build.find_compiler(), jax.ffi.include_dir())
    return target, target.with_suffix(".json")


def _assert_good(library, target: Path, good: Path) -> None:
    """``library`` is the good build, loaded from ``target``."""
    assert library.path == target and _sha256(target) == _sha256(good)
    assert library.handle.SparkTorchIzhikevichForward  # a symbol that the planted library lacks


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """The module's one real build, into a cache directory that does not exist yet."""
    cache = tmp_path_factory.mktemp("good") / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARK_TORCH_CACHE_DIR", str(cache))
        patch.delenv("CXX", raising=False)
        try:
            _build.find_compiler()
        except _build.Unavailable:
            pytest.skip("no C++ compiler here")
        library = _build.load()
    assert library.built_here
    return library.path


@pytest.fixture(scope="module")
def copies(good, tmp_path_factory) -> str:
    """A $CXX that "compiles" by copying the good library to its ``-o`` output."""
    return _script(tmp_path_factory.mktemp("tools") / "copying-cxx", f"""\
        [ "$1" = --version ] && {{ echo "stand-in compiler"; exit 0; }}
        while [ $# -gt 1 ]; do [ "$1" = -o ] && out="$2"; shift; done
        exec cp {shlex.quote(str(good))} "$out"
        """)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """The library an attacker plants; loading it creates the file named by $SPARK_TORCH_TEST_PLANTED_MARKER
    (checked here once, so that the marker's absence elsewhere means something)."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the planted library")
    folder = tmp_path_factory.mktemp("planted")
    (folder / "planted.c").write_text(PLANTED_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(folder / "planted.so"), str(folder / "planted.c")], check=True)
    control = folder / "control-marker"
    subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(folder / "planted.so")],
                   env={**os.environ, MARKER_ENV: str(control)}, check=True, timeout=60)
    assert control.exists()
    return folder / "planted.so"


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "planted-library-ran"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


# ---- a good build ---------------------------------------------------------------------------------------------

def test_a_build_is_recorded_and_kept_private(good):
    """The directory is created 0o700; the record holds the library's digest and size; lock and library are
    private; no temporary file is left behind."""
    cache = good.parent
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    record = json.loads(good.with_suffix(".json").read_text())
    assert record["sha256"] == _sha256(good) and record["size"] == good.stat().st_size and record["build_seconds"] > 0
    assert not good.stat().st_mode & 0o022
    assert stat.S_IMODE(good.with_suffix(".lock").stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == [good.with_suffix(s).name for s in (".json", ".lock", ".so")]


def test_a_verified_entry_is_loaded_without_a_rebuild(good, copies, monkeypatch, tmp_path):
    target, record = _entry(monkeypatch, tmp_path / "cache", copies)
    _write(target, good.read_bytes(), 0o700)
    _write(record, _record(good), 0o600)
    library = _build.load()
    _assert_good(library, target, good)
    assert not library.built_here and library.build_seconds == 1.5


# ---- planted, damaged and symlinked entries -------------------------------------------------------------------

def _plant(case: str, planted: Path, good: Path, target: Path, record: Path, elsewhere: Path) -> None:
    """Put the planted library at ``target`` with a record that would pass every check but the one ``case`` names."""
    data = planted.read_bytes()
    if case == "forged record":  # the good build's digest and size: pad the planted library to that size
        data += b"\0" * (good.stat().st_size - len(data))
    if case == "library is a symlink":
        _write(elsewhere / "elsewhere.so", data, 0o700)
        target.symlink_to(elsewhere / "elsewhere.so")
    else:
        _write(target, data, 0o666 if case == "library writable by others" else 0o700)
    if case != "no record":
        described = good if case == "forged record" else target
        _write(record, _record(described), 0o666 if case == "record writable by others" else 0o600)
    if case.endswith("of another user"):
        os.chown(target if case.startswith("library") else record, NOBODY, NOBODY)


@pytest.mark.parametrize("case", ["no record", "forged record", "library writable by others",
                                  "record writable by others", "library is a symlink",
                                  pytest.param("library of another user", marks=root_only),
                                  pytest.param("record of another user", marks=root_only)])
def test_a_planted_library_is_not_loaded_but_rebuilt(case, planted, good, copies, marker, monkeypatch, tmp_path):
    target, record = _entry(monkeypatch, tmp_path / "cache", copies)
    _plant(case, planted, good, target, record, tmp_path)
    library = _build.load()
    assert not marker.exists(), "the planted library was loaded"
    _assert_good(library, target, good)
    assert library.built_here and not target.is_symlink()
    assert json.loads(record.read_text())["sha256"] == _sha256(good)


def _planted_entry(planted: Path, monkeypatch, directory: Path) -> Path:
    """A planted library with a record that describes it truthfully, at the path a load looks for."""
    target, record = _entry(monkeypatch, directory, _silent(directory.parent))
    _write(target, planted.read_bytes(), 0o700)
    _write(record, _record(target), 0o600)
    return target


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777], ids=oct)
def test_a_cache_directory_others_can_write_is_refused(mode, planted, marker, monkeypatch, tmp_path):
    target = _planted_entry(planted, monkeypatch, tmp_path / "cache")
    (tmp_path / "cache").chmod(mode)
    with pytest.raises(_build.Unavailable) as caught:
        _build.load()
    assert not marker.exists(), "the planted library was loaded"
    message = str(caught.value)
    assert caught.value.reason == "cache" and str(tmp_path / "cache") in message
    assert "writable by its group or others" in message and f"{mode:#o}" in message
    assert _sha256(target) == _sha256(planted)  # a refused directory is left alone


@root_only
def test_a_cache_directory_of_another_user_is_refused(planted, marker, monkeypatch, tmp_path):
    target = _planted_entry(planted, monkeypatch, tmp_path / "cache")
    (tmp_path / "cache").chmod(0o755)
    os.chown(tmp_path / "cache", NOBODY, NOBODY)
    with pytest.raises(_build.Unavailable) as caught:
        _build.load()
    assert not marker.exists(), "the planted library was loaded"
    assert caught.value.reason == "cache" and str(tmp_path / "cache") in str(caught.value)
    assert f"owned by uid {NOBODY}" in str(caught.value)
    assert _sha256(target) == _sha256(planted)


_LOAD_EACH = """
import json, os, sys
from spark_torch.kernel.native import _build
results = {}
for directory in sys.argv[1:]:
    os.environ["SPARK_TORCH_CACHE_DIR"] = directory
    library = _build.load()
    results[directory] = {"path": str(library.path), "built_here": library.built_here}
print(json.dumps(results))
"""


def test_a_damaged_library_is_detected_and_rebuilt_without_a_crash(good, copies, monkeypatch, tmp_path):
    """An interrupted copy (truncated: loading it would end the process with SIGBUS) or a changed byte, under
    the record of the good build: detected by size or digest, rebuilt, never loaded (in a subprocess, in case)."""
    data, middle = good.read_bytes(), good.stat().st_size // 2
    damaged = {"half": data[:middle], "first page": data[:4096],
               "one byte": data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]}
    targets = {}
    for name, content in damaged.items():
        target, record = _entry(monkeypatch, tmp_path / name.replace(" ", "-"), copies)
        _write(target, content, 0o700)
        _write(record, _record(good), 0o600)
        targets[str(target.parent)] = target
    done = subprocess.run([sys.executable, "-c", _LOAD_EACH, *targets], env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-3000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for directory, target in targets.items():
        assert results[directory] == {"path": str(target), "built_here": True}
        assert _sha256(target) == _sha256(good)


def test_a_compiler_that_writes_nothing_fails_the_build_and_caches_nothing(monkeypatch, tmp_path):
    target, _ = _entry(monkeypatch, tmp_path / "cache", _silent(tmp_path))
    for _attempt in range(2):  # nothing is cached: the second load fails the same way
        with pytest.raises(_build.Unavailable) as caught:
            _build.load()
        assert caught.value.reason == "build" and "wrote no library" in str(caught.value)
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [target.with_suffix(".lock").name]


def test_a_symlinked_record_is_replaced_not_written_through(good, copies, monkeypatch, tmp_path):
    target, record = _entry(monkeypatch, tmp_path / "cache", copies)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    record.symlink_to(victim)
    library = _build.load()
    _assert_good(library, target, good)
    assert victim.read_text() == "precious"
    assert not record.is_symlink() and json.loads(record.read_text())["sha256"] == _sha256(good)


def test_a_symlinked_lock_is_refused(monkeypatch, tmp_path):
    target, _ = _entry(monkeypatch, tmp_path / "cache", _silent(tmp_path))
    victim = tmp_path / "created-through-the-lock"
    target.with_suffix(".lock").symlink_to(victim)
    with pytest.raises(_build.Unavailable) as caught:
        _build.load()
    assert caught.value.reason == "cache" and "symbolic link" in str(caught.value)
    assert str(tmp_path / "cache") in str(caught.value)
    assert not victim.exists() and not target.exists()


# ---- an unwritable cache directory, and the fallback warning --------------------------------------------------

def _can_run(command: list[str], **kwargs) -> str:
    """Why ``command`` (a Python that imports the package) cannot run so; "" where it can."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/", "JAX_PLATFORMS": "cpu"}
    try:
        done = subprocess.run([*command, sys.executable, "-c", "import spark_torch.kernel.native._build; "
                               "print(open('/proc/self/status').read())"], env=env, cwd="/", capture_output=True,
                              text=True, timeout=300, **kwargs)
    except OSError as error:
        return f"cannot start {sys.executable}: {error}"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return "" if "CapEff:\t0000000000000000" in done.stdout else "the process keeps its capabilities"


@pytest.fixture(scope="module")
def unprivileged() -> SimpleNamespace:
    """How to run a subprocess to which file permissions apply: as this user where it is not root; as root,
    as uid/gid 65534 where that user can run this Python and import the repository, else as root without
    capabilities (``setpriv``), which makes the kernel check permissions as for any owner."""
    if not IS_ROOT:
        return SimpleNamespace(prefix=[], kwargs={}, uid=os.geteuid())
    as_nobody = dict(user=NOBODY, group=NOBODY, extra_groups=[])
    why_not = {f"uid {NOBODY}": _can_run([], **as_nobody)}
    if not why_not[f"uid {NOBODY}"]:
        return SimpleNamespace(prefix=[], kwargs=as_nobody, uid=NOBODY)
    setpriv = [shutil.which("setpriv") or "setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    why_not["root without capabilities"] = _can_run(setpriv)
    if not why_not["root without capabilities"]:
        return SimpleNamespace(prefix=setpriv, kwargs={}, uid=0)
    pytest.skip("cannot run a process to which file permissions apply: "
                + "; ".join(f"{who}: {why}" for who, why in why_not.items()))


_UNWRITABLE = """
import json, os, sys, warnings
import torch
from spark_torch import IzhikevichSoma, kernel
from spark_torch.kernel.native import _build
directories, results = json.loads(sys.argv[1]), {}
for name in ("fresh", "locked", "built"):
    if name in directories:
        os.environ["SPARK_TORCH_CACHE_DIR"] = directories[name]
        try:
            library = _build.load()
            results[name] = {"path": str(library.path), "built_here": library.built_here}
        except Exception as error:
            results[name] = {"type": type(error).__name__, "reason": getattr(error, "reason", None),
                             "message": str(error)}
os.environ["SPARK_TORCH_CACHE_DIR"] = directories["layer"]
layer = IzhikevichSoma(units=(3,), sequence=True).double()
current = torch.full((80, 1, 3), 100.0, dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    spikes, mem = layer(current)
    again, _ = layer(current)
with kernel.use_backend("xla"):
    reference, _ = layer(current)
results["layer"] = {"backend": kernel.backend(), "spikes": int(spikes.sum()),
                    "same": bool(torch.equal(spikes, reference) and torch.equal(spikes, again)),
                    "warnings": [str(w.message) for w in caught if "native CPU kernel" in str(w.message)]}
print(json.dumps(results))
"""


def _unwritable_directories(base: Path, uid: int, cxx: str, good) -> dict:
    """Cache directories owned by ``uid``, mode 0o500: empty ("fresh", "layer"), holding the lock file
    ("locked"), holding a verified build of ``good`` ("built", where there is one)."""
    directories = {name: base / name for name in ("fresh", "locked", "layer") + (("built",) if good else ())}
    with pytest.MonkeyPatch.context() as patch:
        for name, directory in directories.items():
            target, record = _entry(patch, directory, cxx)
            if name == "locked":
                _write(target.with_suffix(".lock"), b"", 0o600)
            if name == "built":
                _write(target, good.read_bytes(), 0o700)
                _write(record, _record(good), 0o600)
            for path in (*directory.iterdir(), directory):
                if IS_ROOT:
                    os.chown(path, uid, uid)
            directory.chmod(0o500)
    return {name: str(directory) for name, directory in directories.items()}


def _remove(base: Path) -> None:
    for folder, _, _ in os.walk(base):
        os.chmod(folder, 0o700)
    shutil.rmtree(base, ignore_errors=True)


def test_an_unwritable_cache_directory_falls_back_to_xla_with_one_warning(unprivileged, request):
    try:
        good = request.getfixturevalue("good")
    except pytest.skip.Exception:  # no compiler: the cases without a good build still run
        good = None
    base = Path(tempfile.mkdtemp(prefix="spark_torch_unwritable_cache_"))
    request.addfinalizer(lambda: _remove(base))
    base.chmod(0o755)  # reachable by the unprivileged user; nothing private in it
    cxx, home = _silent(base), base / "home"
    home.mkdir()
    if IS_ROOT:
        os.chown(home, unprivileged.uid, unprivileged.uid)
    directories = _unwritable_directories(base, unprivileged.uid, cxx, good)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_TORCH_", "TORCHINDUCTOR_"))}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", SPARK_TORCH_KERNEL="auto", CXX=cxx, HOME=str(home),
               XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(home))
    done = subprocess.run([*unprivileged.prefix, sys.executable, "-c", _UNWRITABLE, json.dumps(directories)], env=env,
                          cwd=str(home), capture_output=True, text=True, timeout=600, **unprivileged.kwargs)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-3000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("fresh", "locked"):  # no lock file yet: creating it fails; a lock file: the temporary library
        assert results[name].get("type") == "Unavailable" and results[name]["reason"] == "cache", results[name]
        assert directories[name] in results[name]["message"] and "Permission denied" in results[name]["message"]
    if good:  # a verified entry needs no write
        assert results["built"]["built_here"] is False and results["built"]["path"].startswith(directories["built"])
    layer = results["layer"]
    assert layer["backend"] == "xla" and layer["same"] and layer["spikes"] > 0
    assert len(layer["warnings"]) == 1, layer["warnings"]
    assert directories["layer"] in layer["warnings"][0] and "Permission denied" in layer["warnings"][0]
    assert "install a C++ compiler" not in layer["warnings"][0]
    assert not os.listdir(directories["fresh"]) and not os.listdir(directories["layer"])


def test_the_fallback_warning_suggests_a_compiler_only_when_one_is_missing(monkeypatch, tmp_path):
    from spark_torch.kernel import _backend

    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(_build.Unavailable) as missing:
        _build.find_compiler()
    _entry(monkeypatch, tmp_path / "cache", _silent(tmp_path))
    (tmp_path / "cache").chmod(0o777)
    with pytest.raises(_build.Unavailable) as refused:
        _build.load()
    texts = {}
    for name, error in (("compiler", missing.value), ("cache", refused.value)):
        def unavailable(error=error):
            raise error

        for attribute, value in (("_native_choice", unavailable), ("_requested", "auto"), ("_active", None),
                                 ("_warned", False), ("_xla", _backend._xla)):
            monkeypatch.setattr(_backend, attribute, value)
        with pytest.warns(UserWarning, match="native CPU kernel is unavailable") as caught:
            assert _backend._resolve().name == "xla"
        texts[name] = " ".join(str(w.message) for w in caught if "native CPU kernel" in str(w.message))
    assert "/nonexistent/c++" in texts["compiler"] and "install a C++ compiler" in texts["compiler"]
    assert str(tmp_path / "cache") in texts["cache"] and "writable by its group or others" in texts["cache"]
    assert "install a C++ compiler" not in texts["cache"]


# ---- the sources themselves -------------------------------------------------------------------------------

def test_the_kernel_sources_compile_without_a_single_warning():
    """``-Wall -Wextra -Werror`` over the one translation unit (front end only: every template the library
    instantiates is checked), so that a user's build log never shows the library's own warnings."""
    try:
        command = _build.find_compiler()
    except _build.Unavailable:
        pytest.skip("no C++ compiler here")
    source = Path(_build.__file__).with_name(_build.MAIN_SOURCE)
    flags = [flag for flag in _build.FLAGS if flag not in ("-shared", "-fPIC")]
    done = subprocess.run([*command, *flags, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-isystem",
                           jax.ffi.include_dir(), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
