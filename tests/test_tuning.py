"""spark_torch.tuning: the opt-in allocator setting validates its argument and reports success."""

import ctypes.util
import subprocess
import sys

import pytest

from spark_torch.tuning import keep_freed_memory_mapped


def test_keep_freed_memory_mapped_on_glibc():
    """Run in a child process: the setting is process-wide and must not leak into other tests."""
    code = "from spark_torch.tuning import keep_freed_memory_mapped as k; print(k(1 << 28))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(ctypes.util.find_library("c") is not None)


@pytest.mark.parametrize("bad", [0, -5, 2**31, 1.5, True, "1GB"])
def test_keep_freed_memory_mapped_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold_bytes"):
        keep_freed_memory_mapped(bad)
