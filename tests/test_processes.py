"""Processes: DistributedDataParallel (gloo, 2 processes) and DataLoader workers.

* DDP: a small net (Linear -> IzhikevichSoma(sequence=True, learnable params) -> readout) trained for 3
  SGD steps in 2 processes, each on half the batch, must end with the parameters of a 1-process run on
  the full batch. Also checked: the snnTorch-style step loop with the hidden state kept by the layer,
  where DDP's default ``broadcast_buffers=True`` copies rank 0's hidden state (registered buffers) into
  every other rank at each forward call.
* DataLoader workers that use the layer, after JAX already ran in the parent: ``spawn`` and
  ``forkserver`` work; ``fork`` is run in a subprocess under a timeout so a hang cannot block the suite.

All of it runs in ~30 s on 2 cores.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

import snntorch.surrogate as surrogate
from spark_torch import IzhikevichSoma

REPO = Path(__file__).resolve().parents[1]
N_IN, N, T, B, STEPS = 3, 8, 12, 8, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net(nn.Module):
    def __init__(self, sequence=True):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(N_IN, N)
        self.soma = IzhikevichSoma(units=(N,), resistance=10.0, sequence=sequence, init_hidden=not sequence,
                                   learnable=("threshold", "recovery_timescale"), output=True)
        self.out = nn.Linear(N, 1)

    def forward(self, x):  # x [T, b, N_IN] (sequence) or [b, N_IN] (one step)
        spk, mem = self.soma(self.fc(x))
        return spk, mem


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(T, B, N_IN, generator=g) * 4.0
    y = torch.rand(B, 1, generator=g)
    return x, y


def _loss(net, spk, mem, y):
    rate = spk.mean(0)  # [b, N]
    return ((net.out(rate) - y) ** 2).mean() + 0.1 * mem.square().mean()


def _train(model, net, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        spk, mem = model(x)
        _loss(net, spk, mem, y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _step_loop(model, x):
    """snnTorch style: one call per time step, the layer keeps the hidden state between calls."""
    outs = []
    for t in range(x.shape[0]):
        spk, mem = model(x[t])
        outs.append(mem.detach().clone())
    return torch.stack(outs)


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = _data()
        shard = slice(rank * B // world, (rank + 1) * B // world)
        net = Net()
        model = nn.parallel.DistributedDataParallel(net)
        params = _train(model, net, x[:, shard].contiguous(), y[shard].contiguous())
        results = {"params": params}
        for broadcast in (True, False):
            step_net = Net(sequence=False)
            step_model = nn.parallel.DistributedDataParallel(step_net, broadcast_buffers=broadcast)
            with torch.no_grad():
                step_net.soma.reset()
                results[f"step_mem_broadcast_{broadcast}"] = _step_loop(step_model, x[:, shard].contiguous())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.xdist_group("ddp")  # one 2-process DDP run (module fixture) for all four, on one worker
def test_ddp_two_processes_match_one_process_full_batch(ddp_results):
    x, y = _data()
    net = Net()
    expected = _train(net, net, x, y)
    r0, r1 = (r["params"] for r in ddp_results)
    assert expected.keys() == r0.keys() == r1.keys()
    for name in expected:
        assert torch.equal(r0[name], r1[name]), f"ranks disagree on {name}"
        # gradients are averaged over 2 shards in DDP and over the full batch here: equal up to summation
        # order (measured: max |diff| 5e-7 after 3 steps, parameters move by 0.04-0.35)
        torch.testing.assert_close(r0[name], expected[name], rtol=1e-5, atol=2e-6, msg=f"{name} differs")
    # the learnable neuron parameters actually moved
    assert not torch.equal(r0["soma.threshold"], torch.full((N,), 30.0))


@pytest.mark.xdist_group("ddp")
def test_ddp_parameters_bit_identical_to_one_process(ddp_results):
    """Bit-identity with one process was once observed. Here (3 steps, lr 0.5) fc.weight, fc.bias and
    soma.recovery_timescale differ by <= 5e-7: DDP averages two half-batch gradients, the 1-process run
    sums the full batch — a different float32 summation order, not a library defect. Reported as xfail
    (non-strict) when it happens; the tolerance test above is the contract."""
    x, y = _data()
    net = Net()
    expected = _train(net, net, x, y)
    mismatched = [n for n in expected if not torch.equal(ddp_results[0]["params"][n], expected[n])]
    if mismatched:
        pytest.xfail(f"not bit-identical (summation order of the gradient average): {mismatched}")


def _single_step_loop(x_shard):
    net = Net(sequence=False)
    with torch.no_grad():
        return _step_loop(net, x_shard)


@pytest.mark.xdist_group("ddp")
def test_ddp_step_loop_without_buffer_broadcast_keeps_each_rank_state(ddp_results):
    x, _ = _data()
    for rank in range(2):
        shard = slice(rank * B // 2, (rank + 1) * B // 2)
        torch.testing.assert_close(ddp_results[rank]["step_mem_broadcast_False"],
                                   _single_step_loop(x[:, shard].contiguous()), rtol=0, atol=0)


@pytest.mark.xdist_group("ddp")
def test_ddp_step_loop_with_default_buffer_broadcast_keeps_each_rank_state(ddp_results):
    """DDP's default broadcast_buffers=True broadcasts rank 0's buffers at every forward. The hidden state
    (mem, potential, recovery) is not a module buffer (spark_torch.state), so each rank keeps its own
    neurons; if it ever became one, this test catches the resulting cross-rank corruption."""
    x, _ = _data()
    for rank in range(2):
        shard = slice(rank * B // 2, (rank + 1) * B // 2)
        torch.testing.assert_close(ddp_results[rank]["step_mem_broadcast_True"],
                                   _single_step_loop(x[:, shard].contiguous()), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ DataLoader workers

class LayerDataset(Dataset):
    """Each item is a short simulation by a layer the dataset holds (so the layer crosses to the worker)."""

    def __init__(self, spike_grad=None):
        self.layer = IzhikevichSoma(units=(4,), resistance=10.0, sequence=True, spike_grad=spike_grad)

    def __len__(self):
        return 6

    def __getitem__(self, i):
        spk, mem = self.layer(torch.full((10, 1, 4), float(i)))
        return spk.sum(0)[0], mem[-1, 0]


def _expected_items(ds):
    return [ds[i] for i in range(len(ds))]


def _check_loader(ds, ctx):
    expected = _expected_items(ds)  # JAX has run in this (parent) process by now
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context=ctx, timeout=60)
    got = [item for batch in loader for item in zip(*batch)]
    assert len(got) == len(expected)
    for (s1, m1), (s2, m2) in zip(got, expected):
        assert torch.equal(s1, s2) and torch.equal(m1, m2)


@pytest.mark.parametrize("ctx", ["spawn", "forkserver"])
def test_dataloader_workers_with_picklable_spike_grad(ctx):
    _check_loader(LayerDataset(spike_grad=surrogate.StraightThroughEstimator.apply), ctx)


@pytest.mark.parametrize("ctx", ["spawn"])
def test_dataloader_workers_with_default_layer(ctx):
    _check_loader(LayerDataset(), ctx)


FORK_SCRIPT = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from spark_torch import IzhikevichSoma

    class DS(Dataset):
        def __init__(self):
            self.layer = IzhikevichSoma(units=(64,), resistance=10.0, sequence=True)
        def __len__(self):
            return 4
        def __getitem__(self, i):
            return self.layer(torch.full((20, 8, 64), float(i)))[1][-1]

    ds = DS()
    # make JAX/XLA (and its thread pools) busy in the parent before forking
    big = IzhikevichSoma(units=(1024,), resistance=10.0, sequence=True)
    for _ in range(3):
        big(torch.rand(50, 32, 1024) * 10)
    expected = [ds[i] for i in range(4)]
    got = [t for b in DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork") for t in b]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)), "fork worker results differ"
    print("FORK-OK")
""")


def _run_or_fail_on_hang(script: str, timeout: float, hang_message: str) -> tuple[int, str, str]:
    """Run ``script`` in a fresh Python (its own session, so that on a hang the whole group, the script
    and any forked workers, is killed) and fail the test with ``hang_message`` after ``timeout`` s."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-W", "ignore::RuntimeWarning", "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(hang_message)
    return proc.returncode, out, err


def test_dataloader_fork_after_jax_ran_in_parent():
    """Run in a subprocess with a timeout so that a hang fails this test instead of blocking the suite.
    Passes when fork either works or fails fast with an error that recommends spawn/forkserver."""
    returncode, out, err = _run_or_fail_on_hang(
        FORK_SCRIPT, 25, "DataLoader with multiprocessing_context='fork' hung after JAX ran in the parent")
    ok = returncode == 0 and "FORK-OK" in out
    clear_error = returncode != 0 and "spawn" in err and "Traceback" in err
    assert ok or clear_error, err[-2000:]


FORK_AFTER_IMPORT_SCRIPT = r"""
import os, torch
import spark_torch
from spark_torch import IzhikevichSoma

def run():
    spk, mem = IzhikevichSoma(units=(3,), resistance=10.0, sequence=True)(torch.full((30, 2, 3), 10.0))
    return f"spikes={int(spk.sum())} mem={mem.sum().item()!r}"

pid = os.fork()  # JAX is imported but has not started: the child may use it
if pid == 0:
    print("CHILD", run(), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("CHILD-EXIT", os.waitstatus_to_exitcode(status))
print("PARENT", run())
"""


def test_fork_after_import_runs_the_layer_in_the_child():
    """Importing spark_torch starts no JAX backend, so a child fork()-ed right after the import computes."""
    _, out, err = _run_or_fail_on_hang(FORK_AFTER_IMPORT_SCRIPT, 60,
                                       "a layer call in a child fork()-ed after `import spark_torch` hung")
    assert "CHILD-EXIT 0" in out, out + err[-2000:]
    child, parent = (line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(("CHILD ", "PARENT ")))
    assert child == parent and "spikes=0 " not in child
