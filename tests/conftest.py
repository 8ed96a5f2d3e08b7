"""Test-wide settings: a private inductor cache, deterministic seeds, a fresh sequence-length record, and
the ``kernel_backend`` fixture that runs a test on each kernel backend available here."""

import os
import tempfile

# A fresh inductor/Triton cache per test session: a stale compiled backward from an earlier version
# of the custom op must never be reused (inductor keys its cache on the graph, not on the op's code).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="spark_torch_inductor_"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_length_policy(monkeypatch):
    """Each test starts with no recorded sequence lengths, so its lengths get exact loop buffers (as in a
    program that uses a few lengths) regardless of what earlier tests ran; tests/test_soak.py covers the
    padded buffers that a program with many lengths gets."""
    from spark_torch import ops

    monkeypatch.setattr(ops, "_exact_lengths", set())
    yield


def _available_backends() -> list[str]:
    """``"native"`` where the native kernel builds here (compiled once, then cached), and ``"xla"``."""
    from spark_torch.kernel import native

    try:
        native.load()
    except native.Unavailable:
        return ["xla"]
    return ["native", "xla"]


KERNEL_BACKENDS = _available_backends()


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """Runs the test once per available kernel backend, with that backend selected (the fixture's value
    is its name). Take it as an argument, or opt a whole file in with
    ``pytestmark = pytest.mark.usefixtures("kernel_backend")``."""
    from spark_torch import kernel

    with kernel.use_backend(request.param) as name:
        yield name


def _inductor_has_a_compiler() -> bool:
    """torch.compile's default (inductor) backend compiles C++ on the CPU: it needs a working compiler."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001  (InvalidCxxCompiler, or none found)
        return False
    return True


#: for tests that compile with inductor (the others use backend="aot_eager", which needs no compiler)
needs_inductor = pytest.mark.skipif(not _inductor_has_a_compiler(),
                                    reason="torch.compile's inductor backend needs a C++ compiler")
