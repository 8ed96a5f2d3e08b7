"""spark_torch.tuning: `import spark_torch` leaves glibc's allocator and the environment alone (but for two
documented defaults); a program that opts in keeps freed memory mapped (fewer page faults), unless the
environment opts out; the explicit setters validate their argument.

Each check runs in a child process: the settings are process-wide and must not leak into other tests.
"""

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from spark_torch.tuning import GLIBC_MALLOC_ENV, KEEP_FREED_MEMORY_ENV, keep_freed_memory_mapped

GLIBC = ctypes.util.find_library("c") is not None and os.path.exists("/proc/self/status")

# Allocate, touch and free 64 MiB with torch repeatedly; report the page faults of six rounds after
# the allocator settled (glibc's aligned allocations fragment the heap for the first few rounds) and the
# resident set after the frees (and after release_freed_memory()).
_PROBE = r"""
import json, resource, sys, threading
import spark_torch, torch
from spark_torch import tuning

if sys.argv[1:] == ["opt-in"]:
    tuning.keep_freed_memory_by_default()  # what the spark-torch command line does

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def touch_and_free():
    t = torch.empty(16 << 20, dtype=torch.float32)  # 64 MiB
    t.fill_(1.0)
    del t

base = rss()
for _ in range(8):
    touch_and_free()
kept = rss() - base
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    touch_and_free()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def in_a_thread():  # 128 MiB: more than a glibc per-thread heap (64 MiB) can hold
    t = threading.Thread(target=lambda: torch.empty(32 << 20, dtype=torch.float32).fill_(1.0))
    t.start()
    t.join()

for _ in range(8):
    in_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    in_a_thread()
thread_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
tuning.release_freed_memory()
print(json.dumps({"threshold": tuning.kept_freed_memory_threshold(), "faults": faults, "kept_bytes": kept,
                  "after_release": rss() - base, "thread_faults": thread_faults}))
"""


def _probe(*args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in GLIBC_MALLOC_ENV and k != KEEP_FREED_MEMORY_ENV}
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


def _assert_glibc_defaults(probe):
    assert probe["threshold"] is None
    assert probe["faults"] > 6 * 16000  # every page of each fresh 64 MiB block faulted in again
    assert probe["kept_bytes"] < 16 << 20
    assert probe["thread_faults"] > 6 * 32000


@pytest.mark.skipif(not GLIBC, reason="glibc and /proc only")
def test_import_leaves_the_allocator_alone():
    """A library import must not change how the host program allocates memory."""
    _assert_glibc_defaults(_probe())


@pytest.mark.skipif(not GLIBC, reason="glibc and /proc only")
def test_opting_in_keeps_freed_memory_mapped_so_reuse_costs_no_page_faults():
    opted_in = _probe("opt-in")
    assert opted_in["threshold"] == 1 << 30
    # 6 x 64 MiB is 98,304 pages: most rounds reused the freed block instead of faulting pages in again
    # (an aligned block sometimes lands in fresh heap while freed ones are still coalescing).
    assert opted_in["faults"] < 3 * 16384
    assert opted_in["kept_bytes"] > 48 << 20  # the freed block stayed resident
    assert opted_in["after_release"] < 16 << 20  # ... until release_freed_memory()
    # blocks allocated on other threads (JAX's outputs) come from the same heap: 6 x 128 MiB reused
    assert opted_in["thread_faults"] < 3 * 32768


@pytest.mark.skipif(not GLIBC, reason="glibc and /proc only")
@pytest.mark.parametrize("env", [{KEEP_FREED_MEMORY_ENV: "0"}, {KEEP_FREED_MEMORY_ENV: "false"},
                                 {KEEP_FREED_MEMORY_ENV: " Off "}, {"MALLOC_MMAP_THRESHOLD_": "131072"}])
def test_environment_opts_out_of_the_command_line_setting(env):
    _assert_glibc_defaults(_probe("opt-in", **env))


_ENVIRONMENT_PROBE = r"""
import json, os, sys
before = dict(os.environ)
import spark_torch
from spark_torch import IzhikevichSoma
import torch
IzhikevichSoma(units=(3,))(torch.ones(2, 3))
after = dict(os.environ)
print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after) if before.get(k) != after.get(k)}))
"""


def test_import_changes_no_environment_variable_but_the_documented_defaults():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    out = subprocess.run([sys.executable, "-c", _ENVIRONMENT_PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    changed = json.loads(out.strip().splitlines()[-1])
    assert changed == {"OMP_WAIT_POLICY": [None, "PASSIVE"], "XLA_PYTHON_CLIENT_PREALLOCATE": [None, "false"]}


def test_keep_freed_memory_mapped_reports_success_on_glibc():
    code = "from spark_torch.tuning import keep_freed_memory_mapped as k; print(k(1 << 28))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(ctypes.util.find_library("c") is not None)


@pytest.mark.parametrize("bad", [0, -5, 2**31, 1.5, True, "1GB"])
def test_keep_freed_memory_mapped_rejects_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold_bytes"):
        keep_freed_memory_mapped(bad)


# ------------------------------------------------------------------------------------------------ import-time env
_ENV_PROBE = r"""
import os, sys
setup = sys.argv[1]
if setup == "torch_first":
    import torch
elif setup == "jax_started":
    import jax
    jax.devices()
import spark_torch
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
"""


@pytest.mark.parametrize("setup, preset, expected", [
    ("plain", {}, "PASSIVE false"),                    # both defaults chosen at import
    ("plain", {"OMP_WAIT_POLICY": "ACTIVE", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}, "ACTIVE true"),  # user's kept
    ("torch_first", {}, "None false"),                 # OpenMP already read its policy: left alone
    ("jax_started", {}, "PASSIVE None"),               # JAX's clients exist: the setting would do nothing
])
def test_import_time_defaults_respect_the_users_choice_and_what_already_started(setup, preset, expected):
    """``import spark_torch`` sets ``OMP_WAIT_POLICY=PASSIVE`` and ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
    (JAX's GPU client would take 75 % of the GPU) only where unset and where they can still take effect."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env.update(preset)
    out = subprocess.run([sys.executable, "-c", _ENV_PROBE, setup], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
