"""The Izhikevich (2003) model and its surrogate gradient in plain, differentiable PyTorch ops: the gradient reference for the op and module.

Per step (same left-to-right arithmetic as ``reference_numpy``)::

    v*, u*   = integrate(v, u, I)                       ("euler" or "izhikevich2003")
    x        = (v* − v_pk) / (v_pk − v_r)
    s        = (v* >= v_pk)                             hard spike, as the kernel fires
    spike    = s + (sg − sg.detach()),  sg = spike_grad(x)     forward value exactly s; gradient of spike_grad
    v', u'   = where(s, c, v*), where(s, u* + d, u*)    reset with the spike detached

The time loop iterates ``current.unbind(0)`` (indexing ``current[t]`` makes the backward quadratic in T).
"""

from __future__ import annotations

import math

import snntorch.surrogate
import torch

PARAM_NAMES = (
    "potential_rest", "potential_reset", "resistance", "threshold",
    "recovery_timescale", "recovery_sensitivity", "recovery_update",
)


def _f(v, u, i, p):
    return 0.04 * v * v + 5.0 * v + 140.0 - u + p["resistance"] * i


V_LIMIT = 1e5  # mV (and mV/ms): the documented bound on v½, v* and u


def _confine(v):
    return torch.clamp(v, -V_LIMIT, V_LIMIT)


def integrate(v, u, i, p, dt, scheme):
    """One step before spike detection: ``(v*, u*)``."""
    a, b = p["recovery_timescale"], p["recovery_sensitivity"]
    if scheme == "euler":
        return _confine(v + dt * _f(v, u, i, p)), u + dt * a * (b * v - u)
    if scheme == "izhikevich2003":
        half = 0.5 * dt
        v_half = _confine(v + half * _f(v, u, i, p))
        v_star = _confine(v_half + half * _f(v_half, u, i, p))
        return v_star, u + dt * a * (b * v_star - u)
    raise ValueError(f"unknown scheme {scheme!r}")


def reference_run(current, v0, u0, params: dict, dt=1.0, scheme="euler", spike_grad=None):
    """Run ``current`` ``[T, B, *units]`` from ``(v0, u0)``; returns ``(spikes, x, v, u)``, each ``[T, B, *units]``.

    ``params`` maps the seven Spark field names to tensors broadcastable to the units. ``spike_grad``
    follows snnTorch (``None`` -> ``snntorch.surrogate.atan(alpha=2.0)``).
    """
    missing = set(PARAM_NAMES) - set(params)
    if missing:
        raise KeyError(f"params lacks {sorted(missing)}")
    spike_grad = snntorch.surrogate.atan(alpha=2.0) if spike_grad is None else spike_grad
    p = params
    v, u = v0, u0
    traces = {"spikes": [], "x": [], "v": [], "u": []}
    for i in current.unbind(0):
        v_star, u_star = integrate(v, u, i, p, dt, scheme)
        x = (v_star - p["threshold"]) / (p["threshold"] - p["potential_rest"])
        hard = (v_star >= p["threshold"]).detach()
        sg = spike_grad(x)
        spike = hard.to(x.dtype) + (sg - sg.detach())
        v = torch.where(hard, p["potential_reset"], v_star)
        u = _confine(torch.where(hard, u_star + p["recovery_update"], u_star))  # the bound on u (mV/ms)
        for k, val in zip(traces, (spike, x, v, u)):
            traces[k].append(val)
    return tuple(torch.stack(traces[k]) for k in traces)


def default_params(units=(), dtype=torch.float64, **overrides) -> dict:
    """Spark's defaults (overridable) as full ``units``-shaped tensors, ready to ``requires_grad_``."""
    values = dict(potential_rest=-65.0, potential_reset=-65.0, resistance=0.1, threshold=30.0,
                  recovery_timescale=0.02, recovery_sensitivity=0.2, recovery_update=2.0)
    values.update(overrides)
    return {k: torch.as_tensor(values[k], dtype=dtype).expand(units).clone() for k in PARAM_NAMES}


# d spike / dx of snnTorch's built-in surrogates, written from snnTorch 1.0's backward formulas, in float64.
SURROGATE_DERIVATIVES = {
    "atan": lambda x, a: a / 2 / (1 + (math.pi / 2 * a * x) ** 2),
    "fast_sigmoid": lambda x, k: 1.0 / (k * x.abs() + 1.0) ** 2,
    "sigmoid": lambda x, k: k * torch.exp(-k * x) / ((torch.exp(-k * x) + 1) ** 2),
}


def exact_surrogate(name: str, param: float):
    """snnTorch's surrogate ``name`` with parameter ``param``, float64-exact (snnTorch's forward returns float32):
    Heaviside forward, :data:`SURROGATE_DERIVATIVES` backward."""

    class Exact(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x > 0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * SURROGATE_DERIVATIVES[name](x, param)

    return Exact.apply
