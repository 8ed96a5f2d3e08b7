"""What a step call costs at the torch/JAX boundary, counted (not timed): kernel executions and tensor crossings.

An snnTorch loop calls the layer once per time step, so every conversion a call makes is paid T times.
These tests pin the counts of :data:`spark_torch.bridge.crossings` for the loop users write
(``spk, mem = layer(x_t, mem)``, then one backward), so that the per-call overhead cannot creep back.
"""

import pytest
import torch

from spark_torch import IzhikevichSoma, bridge


def _loop(layer, x, loss="sum"):
    """The snnTorch step loop over ``x`` ``[T, B, N]`` from rest, then the backward of the loss."""
    mem, spikes = layer.init_leaky(), []
    for x_t in x.unbind(0):
        spk, mem = layer(x_t, mem)
        spikes.append(spk)
    spk = torch.stack(spikes)
    out = spk.sum() + mem.sum() if loss == "sum" else (spk * torch.linspace(0, 1, spk.shape[-1])).sum()
    forward = dict(bridge.crossings)
    out.backward()
    return forward


@pytest.mark.parametrize("learnable", [(), ("threshold", "recovery_timescale")])
def test_step_loop_runs_one_kernel_per_direction_and_imports_only_the_input(learnable):
    T, B, N = 12, 3, 8
    layer = IzhikevichSoma(resistance=10.0, units=(N,), learnable=learnable)
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    _loop(layer, x)  # first loop: the parameters' views are made, the loss's scalar cotangent is kept
    bridge.crossings.clear()
    forward = _loop(layer, x)
    total = bridge.crossings
    assert x.grad is not None and x.grad.abs().sum() > 0
    # forward: one kernel execution per step; the input crosses, the state the previous step returned does
    # not, except the rest state of the first step (v and u); spikes, v, u and mem come back
    assert forward["forward"] == T and "backward" not in forward
    assert forward["to_jax"] == T + 2
    assert forward["to_torch"] == 4 * T
    # backward: one kernel execution per step; nothing crosses in (the spikes' cotangent of spk.sum() is a
    # kept scalar, the state cotangents are the arrays the next step's backward returned); out come the
    # input's and the learnables' gradients per step, and the state's except at the first step (from rest)
    assert total["backward"] == T
    assert total["to_jax"] == forward["to_jax"]
    assert total["to_torch"] - forward["to_torch"] == T * (1 + len(learnable)) + 2 * (T - 1)


def test_dense_cotangents_cross_once_per_step():
    """A weighted loss gives each step's spikes a cotangent of their own: one import per backward step."""
    T, B, N = 6, 2, 5
    layer = IzhikevichSoma(resistance=10.0, units=(N,))
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    _loop(layer, x, loss="weighted")
    bridge.crossings.clear()
    forward = _loop(layer, x, loss="weighted")
    assert bridge.crossings["to_jax"] - forward["to_jax"] == T
    assert bridge.crossings["backward"] == T


def test_inference_step_imports_the_input_only():
    T, B, N = 5, 2, 4
    layer = IzhikevichSoma(resistance=10.0, units=(N,))
    x = 3.0 * torch.rand(T, B, N)
    with torch.no_grad():
        for _ in range(2):  # the first loop makes the parameters' views
            bridge.crossings.clear()
            mem = layer.init_leaky()
            for x_t in x.unbind(0):
                _, mem = layer(x_t, mem)
    assert dict(bridge.crossings) == {"forward": T, "to_jax": T + 2, "to_torch": 4 * T}


def test_sequence_call_from_rest_imports_only_its_input():
    """A sequence layer starts every call from the same rest state (kept, with its JAX views) and the loss's
    uniform cotangents are kept scalars: per forward+backward one import, the input."""
    T, B, N = 7, 2, 4
    layer = IzhikevichSoma(resistance=10.0, units=(N,), sequence=True)
    x = (3.0 * torch.rand(T, B, N)).requires_grad_()
    for _ in range(2):
        bridge.crossings.clear()
        spk, mem = layer(x)
        (spk.sum() + mem.sum()).backward()
    assert dict(bridge.crossings) == {"to_jax": 1, "forward": 1, "backward": 1, "to_torch": 4 + 3}
