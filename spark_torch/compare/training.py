r"""One training run of the comparison: the network, the loss, the loop and the evaluation.

Network (the same for every neuron)::

    x [T, B, F] → nn.Linear(F, H) → ×g → neuron(H) → nn.Linear(H, C) → ×g → neuron(C) → spikes [T, B, C]

where ``g`` is the input gain of an snnTorch neuron (a scale on the ``nn.Linear`` output) and 1 for an
Izhikevich neuron (whose gain is its ``resistance``). Izhikevich layers take the whole sequence in one
call (``sequence=True``); snnTorch layers are stepped through time (``for t in range(T)``), layer by
layer, from a zero state (``reset_mem()``) in every forward pass.

Loss: cross-entropy of the output spike **counts** over the readout window (steps ``readout_start`` to
``T``; snnTorch's ``ce_count_loss`` on that window); prediction: the class with most output spikes in
the window (ties: the lowest class index). Optimiser: Adam with the parameter groups of
:func:`~spark_torch.compare.neurons.neuron_param_groups`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import IzhikevichSoma
from .neurons import NeuronSpec, neuron_param_groups, project_neuron_params
from .tasks import SpikeTask

__all__ = ["TrainSettings", "SpikingNet", "FitResult", "fit", "evaluate", "count_loss"]


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters shared by every neuron of a comparison.

    ``max_train``: use only the first N training samples (``None``: all).
    """

    hidden: int = 128
    epochs: int = 15
    batch_size: int = 64
    lr: float = 5e-3
    max_train: Optional[int] = None

    def validate(self) -> "TrainSettings":
        for name in ("hidden", "epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"`{name}` (={value!r}) must be a positive int")
        if self.max_train is not None and not (isinstance(self.max_train, int) and self.max_train > 0):
            raise ValueError(f"`max_train` (={self.max_train!r}) must be a positive int or None")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"`lr` (={self.lr!r}) must be in (0, 1)")
        return self


class SpikingNet(nn.Module):
    """``forward(x [T, B, F]) -> (hidden spikes [T, B, H], output spikes [T, B, C])``, see the module docs."""

    def __init__(self, spec: NeuronSpec, inputs: int, hidden: int, classes: int, gain: float):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.lif1 = spec.build(hidden, gain, "hidden")
        self.fc2 = nn.Linear(hidden, classes)
        self.lif2 = spec.build(classes, gain, "output")
        self.current_scale = 1.0 if spec.gain_in_layer else float(gain)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spk_hidden = self._spiking(self.lif1, self.fc1(x) * self.current_scale)
        spk_out = self._spiking(self.lif2, self.fc2(spk_hidden) * self.current_scale)
        return spk_hidden, spk_out

    @staticmethod
    def _spiking(layer: nn.Module, current: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, IzhikevichSoma):
            return layer(current)[0]             # sequence mode: starts from rest, one kernel call
        layer.reset_mem()
        return torch.stack([layer(current[t])[0] for t in range(current.shape[0])])


def count_loss(spk_out: torch.Tensor, labels: torch.Tensor, readout_start: int = 0) -> torch.Tensor:
    """Cross-entropy of the spike counts ``spk_out[readout_start:].sum(0)`` ``[B, C]`` against ``labels``."""
    return F.cross_entropy(spk_out[readout_start:].sum(0), labels)


@dataclasses.dataclass
class FitResult:
    """A trained network and its per-epoch curves (accuracies are fractions in [0, 1]).

    ``train_seconds``: wall time of the training steps only (no evaluation), summed over epochs.
    """

    net: SpikingNet
    gain: float
    seed: int
    train_loss: list
    train_accuracy: list
    val_accuracy: list
    train_seconds: float

    @property
    def epoch_seconds(self) -> float:
        return self.train_seconds / max(len(self.train_loss), 1)


def _batch(x: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 ``[B, T, F]`` rasters → float32 ``[T, B, F]`` spikes of amplitude ``scale``."""
    return x.transpose(0, 1).to(torch.float32) * scale


def fit(spec: NeuronSpec, task: SpikeTask, gain: float, seed: int, settings: TrainSettings,
        on_epoch=None) -> FitResult:
    """Train a fresh :class:`SpikingNet` on ``task.x_train`` and record validation accuracy every epoch.

    Reproducible from ``seed`` (initial weights and batch order). ``on_epoch(result)`` is called after
    each epoch (e.g. to advance a progress bar).
    """
    settings.validate()
    torch.manual_seed(seed)
    net = SpikingNet(spec, task.inputs, settings.hidden, task.classes, gain)
    optimizer = torch.optim.Adam(neuron_param_groups(net, settings.lr))
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = task.x_train[:settings.max_train], task.y_train[:settings.max_train]
    result = FitResult(net, gain, seed, [], [], [], 0.0)
    for _ in range(settings.epochs):
        net.train()
        total_loss = correct = 0.0
        started = time.perf_counter()
        for batch in torch.randperm(len(y_train), generator=generator).split(settings.batch_size):
            _, spk_out = net(_batch(x_train[batch], task.input_scale))
            loss = count_loss(spk_out, y_train[batch], task.readout_start)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            project_neuron_params(net)
            total_loss += loss.item() * len(batch)
            correct += (_predict(spk_out, task.readout_start) == y_train[batch]).sum().item()
        result.train_seconds += time.perf_counter() - started
        result.train_loss.append(total_loss / len(y_train))
        result.train_accuracy.append(correct / len(y_train))
        val = evaluate(net, task.x_val, task.y_val, task.readout_start, task.input_scale)
        result.val_accuracy.append(val["accuracy"])
        if on_epoch is not None:
            on_epoch(result)
    return result


def _predict(spk_out: torch.Tensor, readout_start: int) -> torch.Tensor:
    return spk_out[readout_start:].sum(0).argmax(1)


@torch.no_grad()
def evaluate(net: SpikingNet, x: torch.Tensor, y: torch.Tensor, readout_start: int = 0,
             input_scale: float = 1.0, batch_size: int = 256) -> dict:
    """Accuracy (fraction) and mean spikes per neuron per time step of the hidden and output layers.

    Args:
        x: uint8 rasters ``[N, T, F]``; y: int64 labels ``[N]``; input_scale: spike amplitude.
    """
    net.eval()
    correct, hidden_spikes, out_spikes = 0, 0.0, 0.0
    for batch in torch.arange(len(y)).split(batch_size):
        spk_hidden, spk_out = net(_batch(x[batch], input_scale))
        correct += (_predict(spk_out, readout_start) == y[batch]).sum().item()
        hidden_spikes += spk_hidden.sum().item()
        out_spikes += spk_out.sum().item()
    steps = x.shape[1] * len(y)
    return {"accuracy": correct / len(y), "hidden_rate": hidden_spikes / (steps * net.fc1.out_features),
            "output_rate": out_spikes / (steps * net.fc2.out_features)}
