"""Fused snnTorch surrogates: recognised exactly, and the kernel's gradient equals the formula's."""

import pytest
import snntorch.surrogate as surrogate
import torch
from torch.testing import assert_close

from spark_torch import IzhikevichSoma
from spark_torch.config import SCHEMES
from spark_torch.surrogate import fused_surrogate

from reference_torch import PARAM_NAMES, exact_surrogate, reference_run

FACTORIES = {"atan": (surrogate.atan, "alpha", 3.0), "fast_sigmoid": (surrogate.fast_sigmoid, "slope", 7.0),
             "sigmoid": (surrogate.sigmoid, "slope", 4.0)}


def test_recognises_exactly_the_fusable_builtins():
    assert fused_surrogate(surrogate.atan()) == ("atan", 2.0)
    assert fused_surrogate(surrogate.fast_sigmoid(slope=7)) == ("fast_sigmoid", 7.0)
    assert fused_surrogate(surrogate.sigmoid(slope=3)) == ("sigmoid", 3.0)
    for other in (surrogate.triangular(), surrogate.straight_through_estimator(), lambda x: x,
                  surrogate.custom_surrogate(lambda i, g, s: g), surrogate.ATan.apply):
        assert fused_surrogate(other) is None
    assert IzhikevichSoma()._fused_surrogate() == ("atan", 2.0)  # snnTorch's default spike_grad
    assert IzhikevichSoma(surrogate_disable=True)._fused_surrogate() is None
    assert IzhikevichSoma(fuse_surrogate=False)._fused_surrogate() is None


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_fused_gradient_equals_formula_reference(name, scheme):
    factory, kw, param = FACTORIES[name]
    T, B, N = 25, 3, 6
    layer = IzhikevichSoma(resistance=10.0, scheme=scheme, sequence=True, units=(N,), learnable=PARAM_NAMES,
                           spike_grad=factory(**{kw: param}), recovery_update=8.0).double()
    assert layer._fused_surrogate() == (name, param)
    cur = (2 * torch.rand(T, B, N, dtype=torch.float64)).requires_grad_()
    spk, mem = layer(cur)
    params = {k: getattr(layer, k).detach().clone().requires_grad_() for k in PARAM_NAMES}
    cur_ref = cur.detach().clone().requires_grad_()
    v0 = params["potential_rest"].detach().expand(B, N)
    u0 = (params["recovery_sensitivity"] * params["potential_rest"]).detach().expand(B, N)
    spk_ref, _, v_ref, _ = reference_run(cur_ref, v0, u0, params, scheme=scheme, spike_grad=exact_surrogate(name, param))
    assert torch.equal(spk, spk_ref) and spk.sum() > 0
    w = torch.randn_like(spk)
    ((spk * w).sum() + mem.sum()).backward()
    mem_ref = (v_ref - params["potential_rest"]) / (params["threshold"] - params["potential_rest"])
    ((spk_ref * w).sum() + mem_ref.sum()).backward()
    assert_close(cur.grad, cur_ref.grad, rtol=1e-9, atol=1e-9)
    for k in PARAM_NAMES:
        assert_close(getattr(layer, k).grad, params[k].grad, rtol=1e-9, atol=1e-9, msg=k)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_fused_and_torch_paths_agree_in_float32(name):
    factory, kw, param = FACTORIES[name]
    cur = 2 * torch.rand(40, 4, 8)
    grads = []
    for fuse in (True, False):
        layer = IzhikevichSoma(resistance=10.0, sequence=True, spike_grad=factory(**{kw: param}),
                               fuse_surrogate=fuse, learnable=("threshold",), units=(8,))
        c = cur.clone().requires_grad_()
        spk, _ = layer(c)
        spk.sum().backward()
        grads.append((spk, c.grad, layer.threshold.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert_close(grads[0][2], grads[1][2], rtol=1e-4, atol=1e-4)
