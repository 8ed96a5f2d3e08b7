r"""The neurons under comparison, each built for a given input gain.

==========================  ===============================================================  ==========
name                        layer                                                            input gain
==========================  ===============================================================  ==========
``izhikevich``              ``IzhikevichSoma(preset("RS"))`` — regular spiking, Fig. 2        R (GΩ)
``izhikevich-mixed``        hidden layer: the seven Fig. 2 classes in turn (``RS, IB, CH,    R (GΩ)
                            FS, TC, RZ, LTS, RS, …``, :func:`~spark_torch.heterogeneous_preset`);
                            output layer: RS
``izhikevich-learnable``    RS, with per-neuron learnable a, b, c, d and v_pk                R (GΩ)
``leaky``                   ``snn.Leaky(beta=0.9)``                                          scale
``leaky-learnable``         ``snn.Leaky`` with per-neuron learnable beta and threshold       scale
``synaptic``                ``snn.Synaptic(alpha=0.9, beta=0.8)``                            scale
``alpha``                   ``snn.Alpha(alpha=0.9, beta=0.8)``                               scale
==========================  ===============================================================  ==========

The Izhikevich layers integrate with ``dt = 0.25`` ms (so 100 steps are 25 ms) and run in sequence mode
(one kernel call per layer for the whole ``[T, B, N]`` input); their input gain is the layer's
``resistance`` R, so a unit ``nn.Linear`` output is a drive R·I of R mV/ms. The reference
R = 10^1.5 ≈ 31.6 GΩ makes a unit input raise ``v`` by R·dt ≈ 8 mV in one step, about a third of the
way from rest to the spike-initiation region (pilot runs on the validation splits put the best R of
every task between 10 and 100 GΩ). The snnTorch layers step through time as usual; their input gain is
a dimensionless factor on the ``nn.Linear`` output. Its reference makes the steady membrane response to
a constant unit input that of ``snn.Leaky(beta=0.9)``, 1/(1−β) = 10: reference 1 for ``leaky`` and
``alpha`` (whose response is 9.5), 0.2 for ``synaptic`` (1/((1−α)(1−β)) = 50 without it). Every layer
uses snnTorch's default surrogate, ``surrogate.atan(alpha=2)``.

Learnable neuron parameters get Adam steps relative to their size (see :func:`neuron_param_groups`)
and are projected back into the model's domain after each step (:func:`project_neuron_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn

from .. import IzhikevichSoma, PRESETS, heterogeneous_preset, preset

__all__ = ["NEURON_NAMES", "NeuronSpec", "NEURONS", "IZHIKEVICH_DT", "IZHIKEVICH_FIELDS",
           "neuron_param_groups", "project_neuron_params"]

#: ms per time step of every Izhikevich layer: 100 steps are 25 ms. The membrane then relaxes over a few
#: steps near rest (as ``snn.Leaky(beta=0.9)`` over ten), and ``u`` over 1/(a·dt) = 200 steps (RS).
IZHIKEVICH_DT = 0.25
#: a, b, c, d and v_pk: the per-neuron fields ``izhikevich-learnable`` trains.
IZHIKEVICH_FIELDS = ("recovery_timescale", "recovery_sensitivity", "potential_reset", "recovery_update",
                     "threshold")


@dataclasses.dataclass(frozen=True)
class NeuronSpec:
    """How to build one neuron kind.

    ``build(units, gain, role)`` returns a fresh spiking layer of ``units`` neurons (``role``: ``"hidden"``
    or ``"output"``). ``gain_in_layer``: the gain is a parameter of the layer (Izhikevich ``resistance``);
    otherwise the network multiplies the ``nn.Linear`` output by it. ``reference_gain``: the centre of
    the gain sweep, in ``gain_unit``.
    """

    name: str
    family: str
    description: str
    gain_unit: str
    reference_gain: float
    gain_in_layer: bool
    build: Callable[[int, float, str], nn.Module]

    def info(self) -> dict:
        return {"name": self.name, "family": self.family, "description": self.description,
                "gain_unit": self.gain_unit, "reference_gain": self.reference_gain}


def _spike_grad():
    return surrogate.atan(alpha=2.0)


def _izhikevich(config_for: Callable[[int, str, float], object], learnable=()) -> Callable:
    def build(units: int, gain: float, role: str) -> nn.Module:
        return IzhikevichSoma(config_for(units, role, gain), units=(units,), sequence=True,
                              learnable=learnable, spike_grad=_spike_grad())
    return build


def _rs(units: int, role: str, gain: float):
    return preset("RS", resistance=gain, dt=IZHIKEVICH_DT)


def _mixed(units: int, role: str, gain: float):
    if role == "output":
        return _rs(units, role, gain)
    names = [list(PRESETS)[i % len(PRESETS)] for i in range(units)]
    return heterogeneous_preset(names, resistance=gain, dt=IZHIKEVICH_DT)


def _leaky(units: int, gain: float, role: str) -> nn.Module:
    return snn.Leaky(beta=0.9, spike_grad=_spike_grad())


def _leaky_learnable(units: int, gain: float, role: str) -> nn.Module:
    return snn.Leaky(beta=torch.full((units,), 0.9), threshold=torch.ones(units), learn_beta=True,
                     learn_threshold=True, spike_grad=_spike_grad())


def _synaptic(units: int, gain: float, role: str) -> nn.Module:
    return snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=_spike_grad())


def _alpha(units: int, gain: float, role: str) -> nn.Module:
    return snn.Alpha(alpha=0.9, beta=0.8, spike_grad=_spike_grad())


_R_REF = 10.0 ** 1.5
_R, _SCALE = "GΩ (resistance R: drive R·I in mV/ms per unit input)", "dimensionless (scale on nn.Linear output)"

NEURONS: dict[str, NeuronSpec] = {s.name: s for s in (
    NeuronSpec("izhikevich", "izhikevich", "IzhikevichSoma, regular spiking (Fig. 2 RS: a=0.02, b=0.2, "
               "c=-65, d=8), dt=0.25 ms", _R, _R_REF, True, _izhikevich(_rs)),
    NeuronSpec("izhikevich-mixed", "izhikevich", "IzhikevichSoma, hidden layer cycling through the seven "
               "Fig. 2 classes (heterogeneous_preset), RS output layer", _R, _R_REF, True, _izhikevich(_mixed)),
    NeuronSpec("izhikevich-learnable", "izhikevich", "IzhikevichSoma, RS start, per-neuron learnable "
               "a, b, c, d and v_pk", _R, _R_REF, True, _izhikevich(_rs, IZHIKEVICH_FIELDS)),
    NeuronSpec("leaky", "snntorch", "snn.Leaky(beta=0.9)", _SCALE, 1.0, False, _leaky),
    NeuronSpec("leaky-learnable", "snntorch", "snn.Leaky(beta=0.9), per-neuron learn_beta and learn_threshold",
               _SCALE, 1.0, False, _leaky_learnable),
    NeuronSpec("synaptic", "snntorch", "snn.Synaptic(alpha=0.9, beta=0.8)", _SCALE, 0.2, False, _synaptic),
    NeuronSpec("alpha", "snntorch", "snn.Alpha(alpha=0.9, beta=0.8)", _SCALE, 1.0, False, _alpha),
)}
NEURON_NAMES = tuple(NEURONS)

#: bounds that learnable neuron parameters are projected into after each optimiser step. Izhikevich:
#: a > 0 keeps u relaxing towards b·v (units: a 1/ms, c mV, d mV/ms); v_pk is handled separately (it
#: must stay above c and v_r). snnTorch: beta in [0, 1], the range its forward pass clamps to anyway.
_BOUNDS = {"recovery_timescale": (1e-3, 1.0), "recovery_sensitivity": (-1.0, 1.0),
           "potential_reset": (-90.0, -30.0), "recovery_update": (0.0, 20.0), "beta": (0.0, 1.0)}


def _neuron_params(net: nn.Module):
    """``(name, parameter, layer)`` for every learnable neuron parameter of ``net`` (not the Linear layers)."""
    for layer in net.modules():
        if isinstance(layer, snn.SpikingNeuron):
            for name, param in layer.named_parameters(recurse=False):
                yield name, param, layer


def neuron_param_groups(net: nn.Module, lr: float) -> list[dict]:
    """Adam parameter groups: weights and biases at ``lr``; each learnable neuron parameter at
    ``lr · mean|initial value|``, so that every neuron field moves by about the same *fraction* of its
    size per step (a is O(0.02) 1/ms, v_pk O(30) mV, beta and the snnTorch threshold O(1))."""
    special = []
    for _name, param, _layer in _neuron_params(net):
        scale = float(param.detach().abs().mean().clamp(min=1e-3))
        special.append({"params": [param], "lr": lr * scale})
    ids = {id(g["params"][0]) for g in special}
    return [{"params": [p for p in net.parameters() if id(p) not in ids], "lr": lr}, *special]


@torch.no_grad()
def project_neuron_params(net: nn.Module) -> None:
    """Clamp learnable neuron parameters into their domain (see ``_BOUNDS``); Izhikevich ``threshold``
    stays at least 5 mV above ``potential_reset`` and ``potential_rest``; snnTorch ``threshold`` >= 0.05."""
    for name, param, layer in _neuron_params(net):
        if isinstance(layer, IzhikevichSoma) and name == "threshold":
            floor = torch.maximum(layer.potential_reset, layer.potential_rest) + 5.0
            param.copy_(torch.maximum(param, floor))
        elif name == "threshold":
            param.clamp_(min=0.05)
        elif name in _BOUNDS:
            lo, hi = _BOUNDS[name]
            param.clamp_(min=lo, max=hi)
