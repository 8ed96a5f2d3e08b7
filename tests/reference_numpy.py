"""An independent NumPy simulator of the Izhikevich (2003) model, for numerical reference tests.

Written without any reference to the JAX kernel. The arithmetic is spelled out in the model's
left-to-right order so that a float64 run can match another float64 implementation bit for bit:

    f(v, u)  = 0.04*v*v + 5.0*v + 140.0 - u + R*I
    euler:     v* = v + dt*f(v, u);                          u* = u + dt*a*(b*v  - u)
    paper:     vh = v + half*f(v, u); v* = vh + half*f(vh, u); u* = u + dt*a*(b*v* - u)   (half = 0.5*dt)
    bound:     vh and v* clipped to [-1e5, 1e5] mV as soon as they are computed (the documented bound)
    spike:     s  = v* >= v_pk
    reset:     v' = c if s else v*;   u' = u* + d if s else u*, clipped to [-1e5, 1e5] mV/ms

Every array (current, state, parameters) is cast to ``dtype`` first, and every constant is a
``dtype`` scalar, so a float32 run computes in float32 throughout (NumPy never promotes to float64).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULTS = {
    "potential_rest": -65.0,
    "potential_reset": -65.0,
    "resistance": 0.1,
    "threshold": 30.0,
    "recovery_timescale": 0.02,
    "recovery_sensitivity": 0.2,
    "recovery_update": 2.0,
}

#: The paper's Fig. 2 neuron classes as (a, b, c, d), and their 1000-ms euler spike counts at R·I = 10 (float64, this simulator).
FIG2_CLASSES = {
    "RS": (0.02, 0.2, -65.0, 8.0),
    "IB": (0.02, 0.2, -55.0, 4.0),
    "CH": (0.02, 0.2, -50.0, 2.0),
    "FS": (0.1, 0.2, -65.0, 2.0),
    "TC": (0.02, 0.25, -65.0, 0.05),
    "RZ": (0.1, 0.26, -65.0, 2.0),
    "LTS": (0.02, 0.25, -65.0, 2.0),
}
FIG2_COUNTS = {"RS": 22, "IB": 31, "CH": 75, "FS": 110, "TC": 201, "RZ": 143, "LTS": 69}


class Run(NamedTuple):
    """Traces ``[T, *shape]``: ``spikes`` (bool), ``v``/``u`` post-reset, ``v_star`` pre-reset."""

    spikes: np.ndarray
    v: np.ndarray
    u: np.ndarray
    v_star: np.ndarray


def fig2_params(names=tuple(FIG2_CLASSES)) -> dict:
    """The Fig. 2 classes ``names`` as one population: a dict of 1-D parameter arrays (defaults elsewhere)."""
    a, b, c, d = (np.array(col) for col in zip(*(FIG2_CLASSES[n] for n in names)))
    return dict(DEFAULTS, recovery_timescale=a, recovery_sensitivity=b, potential_reset=c, recovery_update=d)


def rest_state(params: dict, shape, dtype=np.float64):
    """``v = v_r``, ``u = b·v_r`` broadcast to ``shape``."""
    v_r = np.asarray(params["potential_rest"], dtype)
    b = np.asarray(params["recovery_sensitivity"], dtype)
    return np.broadcast_to(v_r, shape).astype(dtype), np.broadcast_to(b * v_r, shape).astype(dtype)


def simulate(current, params: dict | None = None, v0=None, u0=None, *, dt=1.0, scheme="euler",
             dtype=np.float64) -> Run:
    """Simulate ``T = len(current)`` steps of ``current`` ``[T, *shape]`` (pA).

    ``params`` maps Spark field names to floats or arrays broadcastable to ``shape`` (missing fields
    take Spark's defaults). ``v0``/``u0`` default to the rest state.
    """
    dtype = np.dtype(dtype)
    p = {k: np.asarray(v, dtype) for k, v in {**DEFAULTS, **(params or {})}.items()}
    current = np.asarray(current, dtype)
    shape = current.shape[1:]
    rv, ru = rest_state(p, shape, dtype)
    v = rv if v0 is None else np.broadcast_to(np.asarray(v0, dtype), shape).astype(dtype)
    u = ru if u0 is None else np.broadcast_to(np.asarray(u0, dtype), shape).astype(dtype)
    dt = dtype.type(dt)
    out = {k: [] for k in Run._fields}
    for i in current:
        v_star, u_star = _integrate(v, u, i, p, dt, scheme, dtype)
        s = v_star >= p["threshold"]
        v = np.where(s, p["potential_reset"], v_star).astype(dtype)
        u = _confine(np.where(s, u_star + p["recovery_update"], u_star)).astype(dtype)
        for k, val in zip(Run._fields, (s, v, u, v_star)):
            out[k].append(val)
    return Run(*(np.stack(out[k]) if out[k] else np.zeros((0, *shape), dtype) for k in Run._fields))


def _f(v, u, i, p, k):
    """dv/dt = 0.04 v² + 5 v + 140 − u + R·I, left to right; ``k`` holds dtype constants."""
    return k[0] * v * v + k[1] * v + k[2] - u + p["resistance"] * i


V_LIMIT = 1e5  # the documented bound on v½, v* (mV) and u (mV/ms) (spark_torch.kernel.V_LIMIT), stated independently


def _confine(v):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(v, -V_LIMIT, V_LIMIT)


def _integrate(v, u, i, p, dt, scheme, dtype):
    k = (dtype.type(0.04), dtype.type(5.0), dtype.type(140.0))
    a, b = p["recovery_timescale"], p["recovery_sensitivity"]
    if scheme == "euler":
        v_star = _confine(v + dt * _f(v, u, i, p, k))
        u_star = u + dt * a * (b * v - u)
    elif scheme == "izhikevich2003":
        half = dtype.type(0.5) * dt
        v_half = _confine(v + half * _f(v, u, i, p, k))
        v_star = _confine(v_half + half * _f(v_half, u, i, p, k))
        u_star = u + dt * a * (b * v_star - u)
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    return v_star.astype(dtype), u_star.astype(dtype)
