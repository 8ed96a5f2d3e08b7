"""Test-wide settings: strict warnings for our code, a private inductor cache, deterministic seeds."""

import os
import tempfile

# A fresh inductor/Triton cache per test session: a stale compiled backward from an earlier version
# of the custom op must never be reused (BRIDGE_NOTES item 10).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="spark_torch_inductor_"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
