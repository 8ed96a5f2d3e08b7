"""Test-wide settings: a private inductor cache, deterministic seeds, a fresh sequence-length record, and
the ``kernel_backend`` fixture that runs a test on each kernel backend available here."""

import functools
import os
import tempfile

# A fresh inductor/Triton cache per test session: a stale compiled backward from an earlier version
# of the custom op must never be reused (inductor keys its cache on the graph, not on the op's code).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="spark_torch_inductor_"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import torch  # here, not at the top: xdist's controller imports this file and runs no test

    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo_caches():
    """Each test compiles from a clean Dynamo cache: otherwise the compiled layers of earlier tests in the same
    worker count towards ``torch._dynamo.config.recompile_limit`` of ``IzhikevichSoma.forward``, and whether
    a ``fullgraph=True`` test passes would depend on which tests ran before it on its worker."""
    yield
    import sys

    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


@pytest.fixture(autouse=True)
def _fresh_length_policy(monkeypatch):
    """Each test starts with no recorded sequence lengths, so its lengths get exact loop buffers (as in a
    program that uses a few lengths) regardless of what earlier tests ran; tests/test_soak.py covers the
    padded buffers that a program with many lengths gets."""
    from spark_torch.execution import jax_executor

    monkeypatch.setattr(jax_executor, "exact_lengths", set())
    yield


@functools.cache
def _available_backends() -> tuple[str, ...]:
    """``"native"`` where the native kernel builds here (compiled once, then cached), and ``"xla"``."""
    from spark_torch.kernel import native

    try:
        native.load()
    except native.Unavailable:
        return ("xla",)
    return ("native", "xla")


def __getattr__(name):
    """``KERNEL_BACKENDS`` (``from conftest import KERNEL_BACKENDS``) is computed on first use, in the
    processes that collect tests: not at import, so that pytest-xdist's controller process, which imports
    this file but runs no test, does not load JAX and the native kernel for nothing."""
    if name == "KERNEL_BACKENDS":
        return list(_available_backends())
    raise AttributeError(name)


def pytest_generate_tests(metafunc):
    """Every test that uses ``kernel_backend`` runs once per available backend (ids ``[native-...]``,
    ``[xla-...]``)."""
    if "kernel_backend" in metafunc.fixturenames:
        metafunc.parametrize("kernel_backend", _available_backends(), indirect=True)


@pytest.fixture
def kernel_backend(request):
    """Runs the test once per available kernel backend, with that backend selected (the fixture's value
    is its name). Take it as an argument, or opt a whole file in with
    ``pytestmark = pytest.mark.usefixtures("kernel_backend")``."""
    from spark_torch import kernel

    with kernel.use_backend(request.param) as name:
        yield name


@functools.cache
def _inductor_has_a_compiler() -> bool:
    """torch.compile's default (inductor) backend compiles C++ on the CPU: it needs a working compiler."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001  (InvalidCxxCompiler, or none found)
        return False
    return True


#: for tests that compile with inductor (the others use backend="aot_eager", which needs no compiler);
#: checked when such a test runs (importing inductor's C++ builder takes seconds), see pytest_runtest_setup
needs_inductor = pytest.mark.needs_inductor


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_inductor: skipped where torch.compile's inductor backend has no "
                                       "C++ compiler")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_inductor") is not None and not _inductor_has_a_compiler():
        pytest.skip("torch.compile's inductor backend needs a C++ compiler")


# ------------------------------------------------------------------------------------------------ pytest-xdist groups
# setup.cfg runs the suite in two worker processes with ``--dist loadgroup``: tests marked
# ``@pytest.mark.xdist_group("name")`` (those that share an expensive module-scoped fixture: a DDP run, a
# native build, a training run) go to one worker, so the fixture runs once. pytest-xdist (3.8) groups by
# appending "@name" to the node ids, which pytest >= 9.2 ignores (a node id is no longer a plain attribute).
# So each worker writes its groups to a file after collection, and the scheduler below reads them.

_GROUPS_ENV = "SPARK_TORCH_TESTS_XDIST_GROUPS"


def _is_xdist_controller(config) -> bool:
    return (not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("xdist")
            and config.getoption("dist", "no") == "loadgroup" and bool(config.getoption("numprocesses", 0)))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Controller: a fresh folder for the workers' group files (the workers are started after this hook and
    inherit the environment)."""
    if _is_xdist_controller(session.config):
        os.environ[_GROUPS_ENV] = tempfile.mkdtemp(prefix="spark_torch_xdist_groups_")


def pytest_sessionfinish(session):
    folder = os.environ.get(_GROUPS_ENV)
    if folder and _is_xdist_controller(session.config):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        del os.environ[_GROUPS_ENV]


#: In the workers, modules whose tests take seconds each (subprocesses, compilation) are scheduled first
#: and the modules of millisecond tests last, so that neither worker is left with a long test at the end.
_SLOW_MODULES = ("test_notebooks.py", "test_processes.py", "test_native.py", "test_tuning.py", "test_bench.py",
                 "test_cli.py", "test_soak.py", "test_demo.py", "test_snntorch_compat.py", "test_custom_op.py",
                 "test_kernel.py", "test_properties.py")
_FAST_MODULES = ("test_config.py", "test_initializers.py", "test_presets.py", "test_persistence.py",
                 "test_readme.py", "test_layout.py", "test_cuda.py")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Worker: slow modules first (same order on every worker), and ``{node id: group}`` recorded for the
    controller's scheduler."""
    folder = os.environ.get(_GROUPS_ENV)
    if not folder or not hasattr(config, "workerinput"):
        return
    import json

    def rank(item):
        name = item.path.name
        return 0 if name in _SLOW_MODULES else 2 if name in _FAST_MODULES else 1

    items.sort(key=rank)  # stable: the collection order within each rank

    groups = {}
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names:
            groups[item.nodeid] = "_".join(names)
    path = os.path.join(folder, f"{config.workerinput['workerid']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(groups, f)
    os.replace(path + ".tmp", path)


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist", "no") != "loadgroup":
        return None
    import glob
    import json

    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        """xdist's LoadGroupScheduling, with the groups read from the workers' files: a test of a group is
        scheduled with the rest of its group, every other test on its own (as with ``--dist load``)."""

        _groups = None

        def _split_scope(self, nodeid):
            if self._groups is None:  # first call: after every worker finished collecting
                self._groups = {}
                for path in glob.glob(os.path.join(os.environ.get(_GROUPS_ENV, ""), "*.json")):
                    with open(path) as f:
                        self._groups.update(json.load(f))
            if nodeid in self._groups:
                return "@group:" + self._groups[nodeid]
            if nodeid.rfind("@") > nodeid.rfind("]"):  # a pytest that kept xdist's "@name" suffix
                return "@group:" + nodeid.split("@")[-1]
            return nodeid

    return FileGroupScheduling(config, log)
